//! The benchmark workloads, one function each; every one builds its users through the
//! API, runs, and answers a [`Report`].

mod backlog;
mod broadcast;
mod idle;
mod reads;
mod send;

pub(crate) use backlog::{backlog, BacklogArgs};
pub(crate) use broadcast::{broadcast, BroadcastArgs};
pub(crate) use idle::{idle, IdleArgs};
pub(crate) use reads::{reads, ReadsArgs};
pub(crate) use send::{chat, one_way, ChatArgs, OneWayArgs};

use crate::ctx::Ctx;
use crate::stats::now_us;

/// Seconds since `from_us`.
fn since_s(from_us: u64) -> f64 {
    (now_us().saturating_sub(from_us)) as f64 / 1e6
}

/// Rounds for display.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A note when the server's CPU and memory were not sampled.
fn pid_note(ctx: &Ctx, notes: &mut Vec<String>) {
    if ctx.server_pid.is_none() {
        notes.push("no --server-pid: server CPU and RSS not measured".to_owned());
    }
}
