//! One-way messages over HTTP to random online users, and chat over the socket (open
//! loop at a fixed rate, max rate with a window of unanswered sends, or ping-pong).

use futures::FutureExt as _;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::pid_note;
use crate::api::{self, ids, UserSpec};
use crate::ctx::Ctx;
use crate::messages::{self, Endpoint};
use crate::report::Report;
use crate::stats::now_us;
use crate::traffic::{self, Driver, TrafficArgs};
use crate::ws::{self, Behaviour, Cmd};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct OneWayArgs {
    /// Online mobile recipients (one WebSocket each).
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: usize,
    /// Business senders (POST /v1/messages, each sender's rate counts against ESH_RATE_LIMIT_PER_MINUTE).
    #[arg(long, default_value_t = 20)]
    pub(crate) senders: usize,
    /// Messages a request, sent with POST /v1/messages/batch (1..1000); without it, one
    /// POST /v1/messages a message. --rate still counts messages, --inflight requests.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) batch: Option<u16>,
    /// Every message carries an image (`media_ids`): each sender uploads one PNG before the
    /// run (POST /v1/media), and recipients get its media object with signed URLs.
    #[arg(long)]
    pub(crate) media: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) traffic: TrafficArgs,
}

/// A sender's token, and the media id its messages carry (with `--media`).
type SenderToken = (Arc<str>, Option<Arc<str>>);

/// One-way messages from `senders` businesses to random ones of `clients` online mobiles,
/// one a request or `--batch` a request.
pub(crate) async fn one_way(ctx: &Arc<Ctx>, args: &OneWayArgs) -> anyhow::Result<Report> {
    let senders = api::accounts(ctx, ids(&ctx.prefix, "b", args.senders.max(1)).map(UserSpec::business).collect(), "senders").await?;
    let mobiles = api::accounts(ctx, ids(&ctx.prefix, "m", args.clients.max(1)).map(UserSpec::mobile).collect(), "recipients").await?;
    let clients = ws::connect_all(ctx, &mobiles, None, &Behaviour::acking(args.traffic.ack_batch, args.traffic.size), "connecting").await?;
    let mut media = Vec::new();
    if args.media {
        for sender in &senders {
            media.push(Some(Arc::<str>::from(api::upload_image(ctx, sender).await?)));
        }
    }

    let (endpoint, per_request) = match args.batch {
        Some(n) => (Endpoint::Batch, usize::from(n)),
        None => (Endpoint::One, 1),
    };
    // The schedule has a slot per request: --rate messages a second make rate / n requests.
    let t = &TrafficArgs { rate: args.traffic.rate / per_request as f64, ..args.traffic.clone() };
    // Each sender's token and the media its messages carry.
    let tokens: Arc<Vec<SenderToken>> = Arc::new(
        senders.iter().enumerate().map(|(i, a)| (Arc::from(a.token.as_str()), media.get(i).cloned().flatten())).collect(),
    );
    let recipients: Arc<Vec<Arc<str>>> = Arc::new(mobiles.iter().map(|a| a.id.clone()).collect());
    let requests = AtomicUsize::new(0);
    let size = t.size;
    let request_ctx = ctx.clone();
    let driver = Driver::Request(Arc::new(move |seq, sched_us| {
        // Senders in turn by request (not by seq, which advances by the batch size).
        let (token, media) = tokens[requests.fetch_add(1, Relaxed) % tokens.len()].clone();
        // The slot's seq is the first message's; the others take the next ones.
        let to = std::iter::once(seq)
            .chain(std::iter::repeat_with(|| request_ctx.next_seq()))
            .take(per_request)
            .map(|seq| (recipients[rand::random::<usize>() % recipients.len()].clone(), seq))
            .collect();
        messages::post(request_ctx.clone(), endpoint, token, media, to, sched_us, size).boxed()
    }));
    let (measured, send_s) = traffic::run(ctx, t, driver).await;
    ws::close_all(ctx, clients, Duration::from_secs(5)).await;

    let mut report = Report::new(ctx, "one-way", args, &measured, send_s);
    report.figure("delivered_per_s", report.delivered_per_s);
    report.figure("e2e_p99_ms", report.e2e_ms.map(|p| p.p99));
    report.figure("ingest_p99_ms", report.ingest_ms.map(|p| p.p99));
    report.figure("server_cpu_us_per_delivered", measured.server.as_ref().and_then(|u| u.cpu_us_per_delivered));
    report.figure("generator_cpu_us_per_delivered", measured.generator.cpu_us_per_delivered);
    report.figure("messages_per_request", per_request);
    if args.media {
        report.notes.push("media: every message carries one image (600×400 PNG with its thumbnails)".to_owned());
    }
    if let Some(n) = args.batch {
        report.notes.push(format!("batch: {n} messages a request (POST /v1/messages/batch), latency of each from its request's write"));
    }
    if t.rate == 0.0 {
        report.notes.push(format!("max rate: {} request loops, latency measured from each write (closed loop)", t.inflight));
    }
    pid_note(ctx, &mut report.notes);
    Ok(report)
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct ChatArgs {
    /// Business–mobile pairs, both sides online (2 sockets a pair).
    #[arg(long, default_value_t = 500)]
    pub(crate) pairs: usize,
    /// Each pair bounces one message back and forth (closed loop; --rate is ignored).
    #[arg(long)]
    pub(crate) ping_pong: bool,
    /// With --rate 0: sends each socket keeps unanswered.
    #[arg(long, default_value_t = 4)]
    pub(crate) window: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) traffic: TrafficArgs,
}

/// A chat client's command queue, its peer, and whether it is the business side.
type ChatSocket = (mpsc::Sender<Cmd>, Arc<str>, bool);

/// Chat between `pairs` business–mobile pairs over the socket (`send` frames).
pub(crate) async fn chat(ctx: &Arc<Ctx>, args: &ChatArgs) -> anyhow::Result<Report> {
    // Ping-pong paces itself: no clock-scheduled sends on top.
    let t = &TrafficArgs { rate: if args.ping_pong { 0.0 } else { args.traffic.rate }, ..args.traffic.clone() };
    let pairs = args.pairs.max(1);
    let businesses = api::accounts(ctx, ids(&ctx.prefix, "b", pairs).map(UserSpec::business).collect(), "businesses").await?;
    let mobiles = api::accounts(ctx, ids(&ctx.prefix, "m", pairs).map(UserSpec::mobile).collect(), "mobiles").await?;
    let accounts: Vec<_> = businesses.iter().chain(mobiles.iter()).cloned().collect();
    // Business i talks with mobile i.
    let peers: Vec<Arc<str>> = mobiles.iter().chain(businesses.iter()).map(|a| a.id.clone()).collect();
    let max_rate = t.rate == 0.0 && !args.ping_pong;
    let behaviour = Behaviour {
        ping_pong: args.ping_pong,
        window: if max_rate { args.window.max(1) } else { 0 },
        ..Behaviour::acking(t.ack_batch, t.size)
    };
    let clients = ws::connect_all(ctx, &accounts, Some(&peers), &behaviour, "connecting").await?;

    let sockets: Arc<Vec<ChatSocket>> = Arc::new(
        clients.iter().filter_map(|c| Some((c.tx.clone(), c.peer.clone()?, c.index < pairs))).collect(),
    );
    let slot_ctx = ctx.clone();
    let slot = {
        let sockets = sockets.clone();
        Arc::new(move |seq: u64, sched_us: u64| {
            let (tx, peer, _) = &sockets[rand::random::<usize>() % sockets.len()];
            if tx.try_send(Cmd::Send { to: peer.clone(), seq, sched_us }).is_err() {
                slot_ctx.stats.on_refused(sched_us, "generator client queue full");
            }
        })
    };
    let start_ctx = ctx.clone();
    let ping_pong = args.ping_pong;
    let start = Arc::new(move || {
        for (tx, peer, business) in sockets.iter() {
            // Ping-pong: each business serves first.
            let command = match (ping_pong, business) {
                (true, true) => Cmd::Send { to: peer.clone(), seq: start_ctx.next_seq(), sched_us: now_us() },
                (true, false) => continue,
                (false, _) => Cmd::Start,
            };
            let _ = tx.try_send(command);
        }
    });
    let (measured, send_s) = traffic::run(ctx, t, Driver::Frame { slot, start }).await;
    ws::close_all(ctx, clients, Duration::from_secs(5)).await;

    let mut report = Report::new(ctx, if args.ping_pong { "chat-ping-pong" } else { "chat" }, args, &measured, send_s);
    report.figure("delivered_per_s", report.delivered_per_s);
    report.figure("e2e_p99_ms", report.e2e_ms.map(|p| p.p99));
    report.figure("ingest_p99_ms", report.ingest_ms.map(|p| p.p99));
    report.figure("server_cpu_us_per_delivered", measured.server.as_ref().and_then(|u| u.cpu_us_per_delivered));
    report.figure("generator_cpu_us_per_delivered", measured.generator.cpu_us_per_delivered);
    if args.ping_pong {
        report.notes.push(format!("ping-pong: {pairs} messages in flight, each reply written on receipt"));
    } else if max_rate {
        report.notes.push(format!("max rate: each socket keeps {} sends unanswered, latency from each write", args.window.max(1)));
    }
    pid_note(ctx, &mut report.notes);
    Ok(report)
}
