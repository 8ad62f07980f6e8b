//! `esh`: runs the platform (`esh`, `esh serve`) or talks to a running one (`esh listen`,
//! `esh send`, `esh chat`, `esh broadcast`, `esh user create`, `esh token`).
//!
//! Logs go to stderr (filtered by `RUST_LOG`); answers and frames go to stdout as JSON.
//! `esh serve` prints one stable line `esh3ar listening on http://<addr>` to stdout once
//! its listener is bound (README.md), the real port included when asked for port 0.
//! SIGTERM or SIGINT stops the platform in order and the process exits 0.

mod client;

use anyhow::Context;
use clap::{Parser, Subcommand};
use esh_server::{Config, Platform};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// jemalloc instead of glibc malloc: on the max-one-way load it costs about 14 % less server
// CPU a message (glibc's _int_malloc and malloc_consolidate were hot in `perf`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "esh", version, about = "Esh3ar messaging platform: `esh` alone runs every stage in one process")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every stage in one process (the default when no subcommand is given).
    Serve(Box<Config>),
    #[command(flatten)]
    Client(client::Command),
}

fn main() -> std::process::ExitCode {
    let command = match Cli::parse().command {
        None => Command::Serve(Box::new(Config::from_env().unwrap_or_else(|error| error.exit()))),
        Some(command) => command,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(config) = &command {
        init_logging("info");
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        builder.worker_threads(config.async_workers(cores));
    } else {
        init_logging("warn");
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("esh: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match command {
            Command::Serve(config) => serve(*config).await,
            Command::Client(command) => client::run(command).await,
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("esh: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// What the line announcing the bound address starts with.
const LISTENING_PREFIX: &str = "esh3ar listening on http://";

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let data_dir = config.data_dir.clone();
    let platform = Platform::start_with_shutdown(config, shutdown.clone()).await.context("cannot start")?;
    if let Some(token) = platform.generated_admin_token() {
        println!(
            "admin token (generated now, shown once, kept in {}): {token}",
            data_dir.join("admin_token").display()
        );
    }
    // A stable line: scripts and `server/tests/common/mod.rs` read the bound address from it.
    println!("{LISTENING_PREFIX}{}", platform.addr());
    tokio::spawn(stop_on_signal(shutdown));
    platform.wait().await.context("stopped with an error")
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut terminate, mut interrupt) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot listen for signals; stop the process with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal: exiting without finishing the shutdown");
    std::process::exit(130);
}
