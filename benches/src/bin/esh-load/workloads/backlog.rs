//! Offline backlog then reconnect storm: N messages queued for U offline users, then every
//! user connects at once; measured until every message reached its socket.

use futures::{stream, StreamExt as _};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use super::{pid_note, round, since_s};
use crate::api::{self, ids, UserSpec};
use crate::content::{self, Stamp};
use crate::ctx::Ctx;
use crate::report::Report;
use crate::stats::{now_us, Stats};
use crate::traffic::{self, Window};
use crate::ws::{self, Behaviour};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct BacklogArgs {
    /// Offline mobile users.
    #[arg(long, default_value_t = 100)]
    pub(crate) users: usize,
    /// Messages queued for them in total (spread evenly).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) messages: usize,
    /// Business senders used to queue them.
    #[arg(long, default_value_t = 10)]
    pub(crate) senders: usize,
    /// Requests in flight while queueing.
    #[arg(long, default_value_t = 64)]
    pub(crate) inflight: usize,
    /// Seconds to let the pipeline settle between queueing and reconnecting.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle: f64,
    /// Seconds to wait for every message after the reconnect.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) timeout: f64,
    /// Characters of message content.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Most message ids in one ack frame.
    #[arg(long, default_value_t = 64)]
    pub(crate) ack_batch: usize,
}

pub(crate) async fn backlog(ctx: &Arc<Ctx>, args: &BacklogArgs) -> anyhow::Result<Report> {
    let users = args.users.max(1);
    let senders = api::accounts(ctx, ids(&ctx.prefix, "b", args.senders.max(1)).map(UserSpec::business).collect(), "senders").await?;
    let mobiles = api::accounts(ctx, ids(&ctx.prefix, "m", users).map(UserSpec::mobile).collect(), "users").await?;

    // Queue: message i goes to user i % users, over HTTP, `inflight` requests at a time.
    ctx.stats.start_measuring(now_us());
    ctx.progress.counted("queueing", args.messages as u64);
    let queue_started = now_us();
    stream::iter(0..args.messages)
        .for_each_concurrent(args.inflight.max(1), |i| {
            let ctx = ctx.clone();
            let token = senders[i % senders.len()].token.clone();
            let to = mobiles[i % users].id.clone();
            async move {
                let sent_us = now_us();
                let text = content::content(ctx.run, Stamp { seq: ctx.next_seq(), sched_us: sent_us, sent_us }, args.size);
                let body = format!(r#"{{"recipient_id":"{to}","content":"{text}"}}"#).into_bytes();
                ctx.stats.on_sent(sent_us, sent_us);
                match ctx.http.post("/v1/messages", &token, body).await {
                    Ok(answer) if answer.status.as_u16() == 202 => ctx.stats.on_accepted(sent_us, sent_us, 1),
                    Ok(answer) => ctx.stats.on_refused(sent_us, &answer.code()),
                    Err(error) => ctx.stats.on_error(sent_us, format_args!("{error:#}")),
                }
                ctx.progress.inc(1);
            }
        })
        .await;
    let queue_s = since_s(queue_started);
    ctx.progress.finish();
    let accepted = Stats::get(&ctx.stats.accepted);
    let queue_ingest = ctx.stats.ingest.pcts();
    ctx.progress.println(&format!("queued {accepted} messages in {queue_s:.2} s; settling {} s", args.settle));
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    // Reconnect storm: every user at once; each expects its share of what was accepted.
    let window = Window::open(ctx);
    let storm_started = now_us();
    let per_user = args.messages / users;
    let behaviour = Behaviour { expect: per_user as u64, ..Behaviour::acking(args.ack_batch, args.size) };
    let connecting = ctx.setup_concurrency.max(users);
    let clients = {
        // Everyone at once: the storm is the point.
        let results: Vec<anyhow::Result<ws::Client>> = stream::iter(mobiles.iter().cloned())
            .map(|account| {
                let ctx = ctx.clone();
                let behaviour = Arc::new(behaviour.clone());
                async move {
                    let (socket, heartbeat) = ws::connect(&ctx, &account).await?;
                    Ok(ws::spawn_client(ctx, socket, None, heartbeat, behaviour))
                }
            })
            .buffer_unordered(connecting)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<_>>>()?
    };
    let connected_s = since_s(storm_started);
    ctx.progress.timed("receiving", args.timeout);
    traffic::drain(ctx, now_us() + (args.timeout * 1e6) as u64).await;
    ctx.progress.finish();
    let last = Stats::get(&ctx.stats.last_delivery_us);
    // The server still applies the last acks: let it, inside the window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let measured = window.close(ctx);
    ws::close_all(ctx, clients, Duration::from_secs(5)).await;

    let mut report = Report::new(ctx, "backlog", args, &measured, queue_s);
    let delivered = Stats::get(&ctx.stats.delivered);
    let all_received = delivered >= accepted;
    let receive_s = last.saturating_sub(storm_started) as f64 / 1e6;
    report.delivered_per_s = if receive_s > 0.0 { round(delivered as f64 / receive_s, 1) } else { 0.0 };
    report.figure("all_received_after_reconnect_s", all_received.then(|| round(receive_s, 3)));
    report.figure("all_connected_s", round(connected_s, 3));
    report.figure("per_user_complete_ms", ctx.stats.aux.pcts());
    report.figure("queue_rate_per_s", round(accepted as f64 / queue_s.max(1e-9), 1));
    report.figure("queue_ingest_ms", queue_ingest);
    report.figure("server_cpu_us_per_delivered", measured.server.as_ref().and_then(|u| u.cpu_us_per_delivered));
    // e2e here is the time spent queued, not a latency.
    report.e2e_ms = None;
    report.e2e_from_schedule_ms = None;
    report.notes.push("accepted_per_s and ingest are for the queueing phase (closed loop); usage is for the reconnect, plus 1 s for the last acks".to_owned());
    if !all_received {
        report.notes.push(format!("only {delivered} of {accepted} messages arrived within {} s", args.timeout));
    }
    pid_note(ctx, &mut report.notes);
    Ok(report)
}
