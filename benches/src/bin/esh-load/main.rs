//! `esh-load`: the Esh3ar load generator. It drives a running deployment through its
//! public contract only (API.md: HTTP for users, tokens, sends and reads; the WebSocket
//! for delivery, acks and chat), like real integrators and mobile clients would, and
//! reports throughput, answer and end-to-end latency percentiles, losses and duplicates,
//! and the CPU and memory of the server (--server-pid) and of the generator itself.
//!
//! Every message content carries the run id, a sequence number and its send times, so
//! recipients compute latency and spot losses and duplicates on their own. Sends follow an
//! open-loop schedule (latency is also given from the scheduled time, so back-pressure is
//! not hidden). The runtime is single-threaded by default to leave the cores to the server.
//!
//! Modules: `ctx` (shared state), `http` (lean HTTP/1.1 pool), `ws` (socket clients),
//! `api` (users and tokens), `messages` (one-way sends over HTTP, one or a batch a request),
//! `traffic` (schedule, window, drain), `stats`, `content`,
//! `sys` (/proc, getrusage, rlimit), `report` (table and JSON), `workloads`.

mod api;
mod content;
mod ctx;
mod http;
mod messages;
mod report;
mod stats;
mod sys;
mod traffic;
mod workloads;
mod ws;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, Progress};
use crate::http::{Binds, HttpClient};
use crate::stats::Stats;

#[derive(Debug, Parser)]
#[command(name = "esh-load", about = "Load generator for Esh3ar: drives a running platform through its public HTTP and WebSocket API")]
struct Cli {
    /// The platform's HTTP and WebSocket listener.
    #[arg(long, env = "ESH_HTTP_ADDR", default_value = "127.0.0.1:8080", global = true)]
    addr: String,
    /// The admin bearer token (creates users and tokens).
    #[arg(long, env = "ESH_ADMIN_TOKEN", hide_env_values = true, global = true, default_value = "")]
    admin_token: String,
    /// Pid of the server process: its CPU time and RSS are read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Appends the report as one JSON line to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// A free-form label stored in the report.
    #[arg(long, global = true)]
    label: Option<String>,
    /// Runtime worker threads; 1 = a current-thread runtime (the least CPU).
    #[arg(long, default_value_t = 1, global = true)]
    workers: usize,
    /// Local addresses 127.0.0.1..N the client sockets are bound to in turn (ephemeral ports).
    #[arg(long, default_value_t = 4, global = true)]
    local_addrs: u8,
    /// Prefix of the user ids (default: a fresh one per run; fix it to reuse seeded users).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// Concurrent requests while creating users, and concurrent socket connects.
    #[arg(long, default_value_t = 64, global = true)]
    setup_concurrency: usize,
    /// Open-files limit to raise to.
    #[arg(long, default_value_t = 1_048_576, global = true)]
    nofile: u64,
    /// No progress bar.
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// One-way messages (POST /v1/messages, or POST /v1/messages/batch with --batch) to random online mobile users.
    OneWay(workloads::OneWayArgs),
    /// Chat over the socket between business–mobile pairs (fixed rate, max rate, or --ping-pong).
    Chat(workloads::ChatArgs),
    /// Broadcasts (POST /v1/broadcasts): answer latency, and fan-out with --online.
    Broadcast(workloads::BroadcastArgs),
    /// Messages queued for offline users, then every user reconnects at once.
    Backlog(workloads::BacklogArgs),
    /// Idle sockets: server memory per connection.
    Idle(workloads::IdleArgs),
    /// Conversation list and history reads against a (seeded) large store.
    Reads(workloads::ReadsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let nofile = sys::raise_nofile(cli.nofile);
    let mut builder = if cli.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(cli.workers);
        builder
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(run(cli, nofile))
}

async fn run(cli: Cli, nofile: u64) -> anyhow::Result<()> {
    let server: SocketAddr = cli
        .addr
        .to_socket_addrs()
        .with_context(|| format!("bad --addr {}", cli.addr))?
        .next()
        .with_context(|| format!("--addr {} resolves to nothing", cli.addr))?;
    if cli.admin_token.is_empty() {
        anyhow::bail!("the admin token is needed: set ESH_ADMIN_TOKEN or --admin-token");
    }
    let run_id: u32 = rand::random();
    let binds = Arc::new(Binds::new(server, cli.local_addrs));
    let ctx = Arc::new(Ctx {
        server,
        http: HttpClient::new(server, binds.clone())?,
        binds,
        admin_token: cli.admin_token.clone(),
        run: run_id,
        prefix: cli.prefix.clone().unwrap_or_else(|| format!("ld{run_id:08x}")),
        stats: Stats::new(),
        seq: AtomicU64::new(0),
        sending: AtomicBool::new(false),
        server_pid: cli.server_pid,
        nofile,
        setup_concurrency: cli.setup_concurrency,
        progress: Progress::new(!cli.no_progress),
        shutdown: CancellationToken::new(),
    });
    ctx.progress.println(&format!("esh-load: server {server}, users {}-*, open-files limit {nofile}", ctx.prefix));

    let mut report = match &cli.workload {
        Workload::OneWay(args) => workloads::one_way(&ctx, args).await?,
        Workload::Chat(args) => workloads::chat(&ctx, args).await?,
        Workload::Broadcast(args) => workloads::broadcast(&ctx, args).await?,
        Workload::Backlog(args) => workloads::backlog(&ctx, args).await?,
        Workload::Idle(args) => workloads::idle(&ctx, args).await?,
        Workload::Reads(args) => workloads::reads(&ctx, args).await?,
    };
    report.label = cli.label.clone();
    report.generator_workers = cli.workers.max(1);
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        report.append_json(path).with_context(|| format!("appending to {}", path.display()))?;
    }
    Ok(())
}
