//! What every task of a run shares: where the server is, the HTTP client, the counters,
//! the progress display and the shutdown signal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::http::{Binds, HttpClient};
use crate::stats::{now_us, Stats};

pub(crate) struct Ctx {
    pub(crate) server: SocketAddr,
    pub(crate) http: HttpClient,
    pub(crate) binds: Arc<Binds>,
    pub(crate) admin_token: String,
    /// Distinguishes this run's messages from any other's.
    pub(crate) run: u32,
    /// Prefix of the user ids this run creates.
    pub(crate) prefix: String,
    pub(crate) stats: Stats,
    pub(crate) seq: AtomicU64,
    /// While set, clients keep sending (ping-pong replies, max-rate windows).
    pub(crate) sending: AtomicBool,
    pub(crate) server_pid: Option<u32>,
    /// The generator's open-files limit (one per socket).
    pub(crate) nofile: u64,
    /// Concurrent requests while creating users and tokens, and concurrent WebSocket connects.
    pub(crate) setup_concurrency: usize,
    pub(crate) progress: Progress,
    /// Closes every client socket.
    pub(crate) shutdown: CancellationToken,
}

impl Ctx {
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed)
    }

    pub(crate) fn is_sending(&self) -> bool {
        self.sending.load(Relaxed)
    }
}

/// The terminal progress display (hidden with --no-progress or when stderr is no terminal).
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub(crate) fn new(enabled: bool) -> Self {
        let bar = ProgressBar::with_draw_target(None, if enabled { ProgressDrawTarget::stderr_with_hz(4) } else { ProgressDrawTarget::hidden() });
        Progress { bar }
    }

    /// A phase with a known amount of work.
    pub(crate) fn counted(&self, phase: &str, len: u64) {
        self.bar.reset();
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        self.bar.set_prefix(phase.to_owned());
        self.bar.set_message("");
    }

    /// A timed phase whose message is refreshed by `live_counters`.
    pub(crate) fn timed(&self, phase: &str, seconds: f64) {
        self.counted(phase, (seconds * 10.0).max(1.0) as u64);
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
    }

    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub(crate) fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }

    pub(crate) fn message(&self, text: String) {
        self.bar.set_message(text);
    }

    pub(crate) fn println(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Refreshes the progress message with the live counters every 250 ms until `stop` fires;
/// the bar advances by tenths of a second since `started_us`.
pub(crate) fn live_counters(ctx: Arc<Ctx>, started_us: u64, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let s = &ctx.stats;
                    let elapsed = (now_us().saturating_sub(started_us)) as f64 / 1e6;
                    let delivered = Stats::get(&s.delivered);
                    ctx.progress.set_position((elapsed * 10.0) as u64);
                    ctx.progress.message(format!(
                        "sent {} accepted {} delivered {} ({:.0}/s) dup {} refused {} errors {}",
                        Stats::get(&s.sent),
                        Stats::get(&s.accepted),
                        delivered,
                        delivered as f64 / elapsed.max(0.001),
                        Stats::get(&s.duplicates),
                        crate::stats::lock(&s.refused).values().sum::<u64>(),
                        Stats::get(&s.errors),
                    ));
                }
            }
        }
    })
}
