//! Driving traffic: the open-loop schedule (slots fixed by the clock, never by answers),
//! the max-rate modes, the measurement window (CPU and memory of the server and of the
//! generator) and the drain that waits for the last deliveries.

use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ctx::{live_counters, Ctx};
use crate::stats::{instant_at, now_us, Stats};
use crate::sys::{self, ProcSample};

/// How the sends of a workload are made.
pub(crate) enum Driver {
    /// Each slot is a request (`seq`, `sched_us`) → future. Open loop spawns one task per
    /// slot (at most `inflight` at once); max rate runs `inflight` request loops.
    Request(Arc<dyn Fn(u64, u64) -> BoxFuture<'static, ()> + Send + Sync>),
    /// Each slot hands a frame to a client (`slot`); max rate calls `start` once and lets
    /// the clients keep themselves busy (windows, ping-pong).
    Frame { slot: Arc<dyn Fn(u64, u64) + Send + Sync>, start: Arc<dyn Fn() + Send + Sync> },
}

/// The traffic options every sending workload has.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct TrafficArgs {
    /// Messages a second, scheduled by the clock (open loop); 0 = as fast as the platform answers.
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) rate: f64,
    /// Seconds of measured sending.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds of sending before measuring starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// Seconds to wait after sending for the last deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) drain: f64,
    /// Characters of message content.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Requests in flight at most (open loop) or request loops (max rate).
    #[arg(long, default_value_t = 256)]
    pub(crate) inflight: usize,
    /// Most message ids in one ack frame.
    #[arg(long, default_value_t = 64)]
    pub(crate) ack_batch: usize,
}

/// Resource use of a process over the measurement window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Usage {
    pub(crate) cpu_s: f64,
    /// CPU µs per distinct message delivered in the window.
    pub(crate) cpu_us_per_delivered: Option<f64>,
    pub(crate) cpu_share_of_one_core: f64,
    /// KiB written to storage per distinct message delivered in the window.
    pub(crate) disk_written_kib_per_delivered: Option<f64>,
    pub(crate) rss_before_mib: f64,
    pub(crate) rss_after_mib: f64,
    pub(crate) rss_peak_mib: f64,
    /// CPU seconds by thread name (server only): where the time went.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) cpu_s_by_thread: BTreeMap<String, f64>,
}

/// The measurement window: opened when counting starts, closed after the drain.
pub(crate) struct Window {
    pub(crate) t0_us: u64,
    server0: Option<ProcSample>,
    threads0: HashMap<u32, (String, f64)>,
    generator0: ProcSample,
    delivered0: u64,
}

/// What a closed window measured.
pub(crate) struct Measured {
    pub(crate) elapsed_s: f64,
    pub(crate) server: Option<Usage>,
    pub(crate) generator: Usage,
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// `total` per distinct message delivered, to two decimals; none if nothing was delivered.
fn per_delivered(total: f64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| (total / delivered as f64 * 100.0).round() / 100.0)
}

fn usage(before: &ProcSample, after: &ProcSample, delivered: u64, elapsed_s: f64) -> Usage {
    let cpu_s = after.cpu_s - before.cpu_s;
    Usage {
        cpu_s: (cpu_s * 1000.0).round() / 1000.0,
        cpu_us_per_delivered: per_delivered(cpu_s * 1e6, delivered),
        cpu_share_of_one_core: (cpu_s / elapsed_s.max(1e-9) * 100.0).round() / 100.0,
        disk_written_kib_per_delivered: match (before.written_bytes, after.written_bytes) {
            (Some(before), Some(after)) => per_delivered(after.saturating_sub(before) as f64 / 1024.0, delivered),
            _ => None,
        },
        rss_before_mib: mib(before.rss_kib),
        rss_after_mib: mib(after.rss_kib),
        rss_peak_mib: mib(after.hwm_kib),
        cpu_s_by_thread: BTreeMap::new(),
    }
}

impl Window {
    pub(crate) fn open(ctx: &Ctx) -> Self {
        Window {
            t0_us: now_us(),
            server0: ctx.server_pid.and_then(sys::sample),
            threads0: ctx.server_pid.map(sys::threads).unwrap_or_default(),
            generator0: sys::self_sample(),
            delivered0: Stats::get(&ctx.stats.delivered_all),
        }
    }

    pub(crate) fn close(self, ctx: &Ctx) -> Measured {
        let elapsed_s = (now_us() - self.t0_us) as f64 / 1e6;
        let delivered = Stats::get(&ctx.stats.delivered_all) - self.delivered0;
        let server = match (self.server0, ctx.server_pid.and_then(sys::sample)) {
            (Some(before), Some(after)) => {
                let mut server = usage(&before, &after, delivered, elapsed_s);
                if let Some(pid) = ctx.server_pid {
                    server.cpu_s_by_thread = sys::thread_cpu_delta(&self.threads0, &sys::threads(pid));
                }
                Some(server)
            }
            _ => None,
        };
        let generator = usage(&self.generator0, &sys::self_sample(), delivered, elapsed_s);
        Measured { elapsed_s, server, generator }
    }
}

/// Runs the slots at `rate` a second from now until `until_us`, each slot taking one of
/// `inflight`'s permits (released by the slot's task); returns the slots run.
///
/// It runs on a blocking thread that sleeps with nanosleep (1 µs timer slack): tokio's
/// timer has a 1 ms granularity, which would make sends up to 1 ms late and spoil
/// sub-millisecond latency figures. Slots are handed to the runtime through its handle.
fn open_loop(ctx: &Arc<Ctx>, rate: f64, until_us: u64, inflight: &Arc<Semaphore>, driver: &Driver, runtime: &Handle) -> u64 {
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let start = now_us();
    let interval = 1e6 / rate;
    let mut slots = 0u64;
    loop {
        let due = start + (slots as f64 * interval) as u64;
        if due >= until_us {
            return slots;
        }
        let now = now_us();
        if due > now {
            std::thread::sleep(Duration::from_micros(due - now));
        }
        let seq = ctx.next_seq();
        match driver {
            Driver::Request(request) => {
                // Waits (late, and measured as such) when every permit is taken.
                let Ok(permit) = runtime.block_on(inflight.clone().acquire_owned()) else { return slots };
                let work = request(seq, due);
                runtime.spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Driver::Frame { slot, .. } => slot(seq, due),
        }
        slots += 1;
    }
}

/// Sends for warm-up + duration (open loop at `rate`, or max rate), then drains; returns
/// the window measured after the warm-up and the seconds of measured sending.
pub(crate) async fn run(ctx: &Arc<Ctx>, args: &TrafficArgs, driver: Driver) -> (Measured, f64) {
    let start = now_us();
    let measure_from = start + (args.warmup * 1e6) as u64;
    let until = measure_from + (args.duration * 1e6) as u64;
    ctx.stats.start_measuring(measure_from);
    ctx.progress.timed("sending", args.warmup + args.duration);
    let stop_counters = CancellationToken::new();
    let counters = live_counters(ctx.clone(), start, stop_counters.clone());
    ctx.sending.store(true, Relaxed);
    let inflight = Arc::new(Semaphore::new(args.inflight.max(1)));

    let sender = {
        let ctx = ctx.clone();
        let inflight = inflight.clone();
        let rate = args.rate;
        let loops = args.inflight.max(1);
        tokio::spawn(async move {
            if rate > 0.0 {
                let runtime = Handle::current();
                let _ = tokio::task::spawn_blocking(move || open_loop(&ctx, rate, until, &inflight, &driver, &runtime)).await;
                return;
            }
            match &driver {
                Driver::Request(request) => {
                    let tasks: Vec<_> = (0..loops)
                        .map(|_| {
                            let ctx = ctx.clone();
                            let request = request.clone();
                            tokio::spawn(async move {
                                while now_us() < until {
                                    let seq = ctx.next_seq();
                                    request(seq, now_us()).await;
                                }
                            })
                        })
                        .collect();
                    futures::future::join_all(tasks).await;
                }
                Driver::Frame { start, .. } => {
                    start();
                    tokio::time::sleep_until(instant_at(until)).await;
                }
            }
        })
    };

    tokio::time::sleep_until(instant_at(measure_from)).await;
    let window = Window::open(ctx);
    let _ = sender.await;
    ctx.sending.store(false, Relaxed);
    let send_s = (now_us() - measure_from) as f64 / 1e6;

    // Drain: every request answered, then every expected delivery (or the timeout).
    let deadline = now_us() + (args.drain * 1e6) as u64;
    let _ = tokio::time::timeout_at(instant_at(deadline), inflight.acquire_many(args.inflight.max(1) as u32)).await;
    ctx.progress.println("sending done, draining");
    drain(ctx, deadline).await;
    stop_counters.cancel();
    let _ = counters.await;
    ctx.progress.finish();
    (window.close(ctx), send_s)
}

/// Waits until every send was answered and every expected delivery arrived, or until
/// `deadline_us`.
pub(crate) async fn drain(ctx: &Ctx, deadline_us: u64) {
    let stats = &ctx.stats;
    let answered = || {
        Stats::get(&stats.accepted) + Stats::get(&stats.errors) + crate::stats::lock(&stats.refused).values().sum::<u64>()
    };
    while now_us() < deadline_us && (Stats::get(&stats.delivered) < Stats::get(&stats.expected) || answered() < Stats::get(&stats.sent)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
