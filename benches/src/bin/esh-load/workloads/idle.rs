//! Idle connections: opens C sockets that only ping, and reports the server's memory per
//! connection (RSS after − RSS before, over C).

use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use super::{pid_note, round, since_s};
use crate::api::{self, ids, Account, UserSpec};
use crate::ctx::Ctx;
use crate::report::Report;
use crate::stats::now_us;
use crate::sys;
use crate::traffic::Window;
use crate::ws::{self, Behaviour};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct IdleArgs {
    /// Sockets to open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Distinct users they belong to (0 = one user per socket).
    #[arg(long, default_value_t = 0)]
    pub(crate) users: usize,
    /// Seconds to hold them open before measuring.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) hold: f64,
}

pub(crate) async fn idle(ctx: &Arc<Ctx>, args: &IdleArgs) -> anyhow::Result<Report> {
    let connections = args.connections.max(1);
    if connections as u64 + 200 > ctx.nofile {
        anyhow::bail!(
            "{connections} sockets need more open files than this process may have ({}); the server needs as many",
            ctx.nofile
        );
    }
    let users = if args.users == 0 { connections } else { args.users.min(connections) };
    let accounts = api::accounts(ctx, ids(&ctx.prefix, "m", users).map(UserSpec::mobile).collect(), "users").await?;
    let sockets: Vec<Account> = (0..connections).map(|i| accounts[i % users].clone()).collect();
    // Let the server settle after creating users before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ctx.server_pid.and_then(sys::sample);
    let generator_before = sys::self_sample();
    let window = Window::open(ctx);
    let started = now_us();
    let clients = ws::connect_all(ctx, &sockets, None, &Behaviour::acking(64, 64), "connecting").await?;
    let connect_s = since_s(started);
    ctx.progress.timed("holding", args.hold);
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    ctx.progress.finish();
    let after = ctx.server_pid.and_then(sys::sample);
    let generator_after = sys::self_sample();
    let measured = window.close(ctx);
    let still_open = clients.iter().filter(|c| !c.task.is_finished()).count();
    ws::close_all(ctx, clients, Duration::from_secs(30)).await;

    let mut report = Report::new(ctx, "idle", args, &measured, connect_s);
    report.figure("connections", connections);
    report.figure("still_open_after_hold", still_open);
    report.figure("connect_rate_per_s", round(connections as f64 / connect_s.max(1e-9), 1));
    if let (Some(before), Some(after)) = (before, after) {
        let delta_kib = after.rss_kib as f64 - before.rss_kib as f64;
        report.figure("server_rss_delta_mib", round(delta_kib / 1024.0, 1));
        report.figure("server_kib_per_connection", round(delta_kib / connections as f64, 2));
        report.figure("server_rss_after_mib", round(after.rss_kib as f64 / 1024.0, 1));
        report.figure("server_rss_for_100k_gib", round(after.rss_kib as f64 / 1024.0 / 1024.0 + (delta_kib / connections as f64) * (100_000usize.saturating_sub(connections)) as f64 / 1024.0 / 1024.0, 2));
    }
    report.figure(
        "generator_kib_per_connection",
        round((generator_after.rss_kib as f64 - generator_before.rss_kib as f64) / connections as f64, 2),
    );
    pid_note(ctx, &mut report.notes);
    Ok(report)
}
