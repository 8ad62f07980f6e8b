//! Broadcasts: the answer latency of `POST /v1/broadcasts` with 1,000 or 100,000
//! recipients and, with --online, the fan-out to their sockets.

use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use super::{pid_note, round};
use crate::api::{self, ids, UserSpec};
use crate::content::{self, Stamp};
use crate::ctx::Ctx;
use crate::report::Report;
use crate::stats::{now_us, Stats};
use crate::traffic::{self, Window};
use crate::ws::{self, Behaviour};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct BroadcastArgs {
    /// Recipients of each broadcast (mobile users).
    #[arg(long, default_value_t = 1000)]
    pub(crate) recipients: usize,
    /// Broadcasts sent, one after the other.
    #[arg(long, default_value_t = 10)]
    pub(crate) count: usize,
    /// Seconds between the starts of two broadcasts.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) interval: f64,
    /// Connect every recipient and measure the fan-out (each recipient acks).
    #[arg(long)]
    pub(crate) online: bool,
    /// Seconds to wait after the last broadcast for deliveries.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) drain: f64,
    /// Characters of message content.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Most message ids in one ack frame.
    #[arg(long, default_value_t = 64)]
    pub(crate) ack_batch: usize,
}

pub(crate) async fn broadcast(ctx: &Arc<Ctx>, args: &BroadcastArgs) -> anyhow::Result<Report> {
    let n = args.recipients.clamp(1, 100_000);
    let sender = api::accounts(ctx, vec![UserSpec::business(format!("{}-b0", ctx.prefix))], "sender").await?;
    let mobiles = api::accounts(ctx, ids(&ctx.prefix, "m", n).map(UserSpec::mobile).collect(), "recipients").await?;
    let clients = if args.online {
        ws::connect_all(ctx, &mobiles, None, &Behaviour::acking(args.ack_batch, args.size), "connecting").await?
    } else {
        Vec::new()
    };
    // The recipient list is the same for every broadcast: build its JSON once.
    let mut prefix = String::from(r#"{"recipient_ids":["#);
    for (i, m) in mobiles.iter().enumerate() {
        if i > 0 {
            prefix.push(',');
        }
        prefix.push('"');
        prefix.push_str(&m.id);
        prefix.push('"');
    }
    prefix.push_str(r#"],"content":""#);
    let token = sender[0].token.clone();

    ctx.stats.start_measuring(now_us());
    let window = Window::open(ctx);
    ctx.progress.counted("broadcasts", args.count as u64);
    let deliveries = if args.online { n as u64 } else { 0 };
    let started = now_us();
    for k in 0..args.count {
        let sched_us = started + (k as f64 * args.interval * 1e6) as u64;
        if sched_us > now_us() {
            tokio::time::sleep_until(crate::stats::instant_at(sched_us)).await;
        }
        let sent_us = now_us();
        let stamp = Stamp { seq: ctx.next_seq(), sched_us: sent_us, sent_us };
        let mut body = prefix.clone();
        body.push_str(&content::content(ctx.run, stamp, args.size));
        body.push_str("\"}");
        ctx.stats.on_sent(sent_us, sent_us);
        match ctx.http.post("/v1/broadcasts", &token, body.into_bytes()).await {
            Ok(answer) if answer.status.as_u16() == 202 => ctx.stats.on_accepted(sent_us, sent_us, deliveries),
            Ok(answer) => ctx.stats.on_refused(sent_us, &answer.code()),
            Err(error) => ctx.stats.on_error(sent_us, format_args!("{error:#}")),
        }
        ctx.progress.inc(1);
    }
    let send_s = (now_us() - started) as f64 / 1e6;
    ctx.progress.finish();
    if args.online {
        ctx.progress.println("broadcasts answered, waiting for the fan-out");
        traffic::drain(ctx, now_us() + (args.drain * 1e6) as u64).await;
        // The server still applies the last acks: let it, inside the window.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let measured = window.close(ctx);
    ws::close_all(ctx, clients, Duration::from_secs(10)).await;

    let mut report = Report::new(ctx, "broadcast", args, &measured, send_s);
    report.figure("answer_p50_ms", report.ingest_ms.map(|p| p.p50));
    report.figure("answer_p99_ms", report.ingest_ms.map(|p| p.p99));
    report.figure("answer_max_ms", report.ingest_ms.map(|p| p.max));
    if args.online {
        let last = Stats::get(&ctx.stats.last_delivery_us);
        report.figure("fan_out_s", round(last.saturating_sub(started) as f64 / 1e6, 3));
        report.figure("delivered_per_s", report.delivered_per_s);
        report.figure("server_cpu_us_per_delivered", measured.server.as_ref().and_then(|u| u.cpu_us_per_delivered));
        report.notes.push("e2e is from the broadcast request to each recipient socket".to_owned());
    } else {
        report.notes.push("recipients offline: only the answer latency is measured".to_owned());
    }
    pid_note(ctx, &mut report.notes);
    Ok(report)
}
