//! Counters and latency histograms shared by every task of a run, and the generator's clock.
//!
//! Every figure is keyed on the time a message was *scheduled*: messages scheduled before
//! the end of the warm-up are not counted, whenever their answer or delivery arrives.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::content::Stamp;

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Microseconds since the generator started (monotonic, shared by every task).
pub(crate) fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

/// The tokio instant of a `now_us` value.
pub(crate) fn instant_at(us: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(base() + Duration::from_micros(us))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
pub(crate) struct Hist(Mutex<Histogram<u64>>);

impl Hist {
    pub(crate) fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid");
        Hist(Mutex::new(histogram))
    }

    pub(crate) fn record(&self, micros: u64) {
        lock(&self.0).saturating_record(micros.max(1));
    }

    pub(crate) fn reset(&self) {
        lock(&self.0).reset();
    }

    /// Percentiles in milliseconds, or None when nothing was recorded.
    pub(crate) fn pcts(&self) -> Option<Pcts> {
        let h = lock(&self.0);
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        Some(Pcts {
            n: h.len(),
            mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Pcts {
    pub(crate) n: u64,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

/// The counters of one run.
pub(crate) struct Stats {
    /// Messages scheduled before this instant (µs) are warm-up and not counted.
    pub(crate) measure_from_us: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Deliveries the accepted sends should cause (1 a message, n a broadcast to n online users).
    pub(crate) expected: AtomicU64,
    /// Distinct counted messages received by their recipients.
    pub(crate) delivered: AtomicU64,
    /// Distinct messages received, warm-up included (for CPU per delivered message).
    pub(crate) delivered_all: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    /// Message frames whose content this run did not write (acked, not counted).
    pub(crate) foreign: AtomicU64,
    pub(crate) status_frames: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    /// Sockets that could not be opened.
    pub(crate) connect_failures: AtomicU64,
    pub(crate) last_delivery_us: AtomicU64,
    /// Refusals by HTTP status or error code.
    pub(crate) refused: Mutex<BTreeMap<String, u64>>,
    pub(crate) first_error: Mutex<Option<String>>,
    /// Answer latency from the moment the request or frame was written.
    pub(crate) ingest: Hist,
    /// Answer latency from the scheduled time (open loop: includes generator-side queueing).
    pub(crate) ingest_sched: Hist,
    /// Send to recipient socket, from the moment the request or frame was written.
    pub(crate) e2e: Hist,
    /// Send to recipient socket, from the scheduled time.
    pub(crate) e2e_sched: Hist,
    /// How late the generator wrote each message after its scheduled time.
    pub(crate) lateness: Hist,
    /// WebSocket connect + upgrade + hello.
    pub(crate) connect: Hist,
    /// Workload-specific (per-user completion after reconnect, reads, …).
    pub(crate) aux: Hist,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            measure_from_us: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_all: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            status_frames: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            first_error: Mutex::new(None),
            ingest: Hist::new(),
            ingest_sched: Hist::new(),
            e2e: Hist::new(),
            e2e_sched: Hist::new(),
            lateness: Hist::new(),
            connect: Hist::new(),
            aux: Hist::new(),
        }
    }

    pub(crate) fn measured(&self, sched_us: u64) -> bool {
        sched_us >= self.measure_from_us.load(Relaxed)
    }

    /// A message (or request) was written at `sent_us` for its slot at `sched_us`.
    pub(crate) fn on_sent(&self, sched_us: u64, sent_us: u64) {
        if self.measured(sched_us) {
            self.sent.fetch_add(1, Relaxed);
            self.lateness.record(sent_us.saturating_sub(sched_us));
        }
    }

    /// The platform accepted it (202 / `accepted`); `deliveries` recipients should get it.
    pub(crate) fn on_accepted(&self, sched_us: u64, sent_us: u64, deliveries: u64) {
        if self.measured(sched_us) {
            let now = now_us();
            self.accepted.fetch_add(1, Relaxed);
            self.expected.fetch_add(deliveries, Relaxed);
            self.ingest.record(now.saturating_sub(sent_us));
            self.ingest_sched.record(now.saturating_sub(sched_us));
        }
    }

    /// The platform refused it with `code` (HTTP status and error code).
    pub(crate) fn on_refused(&self, sched_us: u64, code: &str) {
        if self.measured(sched_us) {
            *lock(&self.refused).entry(code.to_owned()).or_default() += 1;
        }
    }

    /// It failed at the transport level (connection, protocol, timeout).
    pub(crate) fn on_error(&self, sched_us: u64, error: impl Display) {
        if self.measured(sched_us) {
            self.errors.fetch_add(1, Relaxed);
            self.note_error(error);
        }
    }

    pub(crate) fn note_error(&self, error: impl Display) {
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }

    /// A recipient socket received a message this run wrote; `fresh` when not seen before.
    pub(crate) fn on_delivery(&self, stamp: &Stamp, fresh: bool) {
        let now = now_us();
        if fresh {
            self.delivered_all.fetch_add(1, Relaxed);
            self.last_delivery_us.fetch_max(now, Relaxed);
        }
        if !self.measured(stamp.sched_us) {
            return;
        }
        if fresh {
            self.delivered.fetch_add(1, Relaxed);
            self.e2e.record(now.saturating_sub(stamp.sent_us));
            self.e2e_sched.record(now.saturating_sub(stamp.sched_us));
        } else {
            self.duplicates.fetch_add(1, Relaxed);
        }
    }

    /// Counts only what is scheduled from `from_us` on: everything earlier is warm-up.
    pub(crate) fn start_measuring(&self, from_us: u64) {
        self.measure_from_us.store(from_us, Relaxed);
        for counter in [&self.sent, &self.accepted, &self.errors, &self.expected, &self.delivered, &self.duplicates] {
            counter.store(0, Relaxed);
        }
        lock(&self.refused).clear();
        for hist in [&self.ingest, &self.ingest_sched, &self.e2e, &self.e2e_sched, &self.lateness] {
            hist.reset();
        }
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
