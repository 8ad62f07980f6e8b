//! WebSocket clients as the contract describes them (API.md "WebSocket"): each waits for
//! `hello`, acks every message it receives (one `ack` frame for all the frames read in one
//! wake-up, at most `ack_batch` ids each), pings within the heartbeat, and sends chat
//! `send` frames when told to (or by itself in ping-pong and max-rate modes).

use anyhow::{bail, Context as _};
use futures::{stream, FutureExt as _, SinkExt as _, StreamExt as _};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::api::Account;
use crate::content::{self, Stamp};
use crate::ctx::Ctx;
use crate::stats::now_us;

type Ws = WebSocketStream<TcpStream>;

/// What a workload asks a client to do.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Send a chat message to `to` for the schedule slot `sched_us`.
    Send { to: Arc<str>, seq: u64, sched_us: u64 },
    /// Start keeping the send window full (max-rate chat).
    Start,
}

/// How every client of a workload behaves.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    /// Most ids in one ack frame.
    pub(crate) ack_batch: usize,
    /// Characters of message content.
    pub(crate) size: usize,
    /// Answer every message received with a message back to its sender (chat ping-pong).
    pub(crate) ping_pong: bool,
    /// Keep this many sends to the peer unanswered at all times (max-rate chat); 0 = off.
    pub(crate) window: usize,
    /// Record in `aux` the time from connect until this many distinct messages arrived.
    pub(crate) expect: u64,
}

impl Behaviour {
    pub(crate) fn acking(ack_batch: usize, size: usize) -> Self {
        Behaviour { ack_batch: ack_batch.max(1), size, ping_pong: false, window: 0, expect: 0 }
    }
}

/// A connected client.
pub(crate) struct Client {
    /// Position of its account in the list given to `connect_all` (they connect in any order).
    pub(crate) index: usize,
    /// Its chat peer, if any.
    pub(crate) peer: Option<Arc<str>>,
    pub(crate) tx: mpsc::Sender<Cmd>,
    pub(crate) task: JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// The message object of `message` and `accepted` frames (`error` frames carry a text
    /// here, which is skipped).
    #[serde(default, borrow, deserialize_with = "object_or_nothing")]
    message: Option<FrameMessage<'a>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    heartbeat_s: Option<u64>,
}

/// A message object, or None for any other JSON value.
fn object_or_nothing<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<FrameMessage<'de>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<FrameMessage<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a message object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

#[derive(serde::Deserialize)]
struct FrameMessage<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    sender_id: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Cow<'a, str>,
}

#[derive(serde::Serialize)]
struct AckFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_ids: &'a [String],
}

/// How long a client waits before sending again after a refusal (the socket's error
/// frames carry no Retry-After).
pub(crate) const REFUSED_PAUSE: Duration = Duration::from_millis(100);

/// Sleeps until `until`, or forever when None.
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

fn config() -> WebSocketConfig {
    // Small buffers: the default 128 KiB read buffer per socket would cost the generator
    // gigabytes with 100,000 connections.
    WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(16 * 1024)
}

/// Opens the socket of `account` and waits for `hello` (30 s at most for all of it);
/// answers the socket and the heartbeat.
pub(crate) async fn connect(ctx: &Ctx, account: &Account) -> anyhow::Result<(Ws, Duration)> {
    let started = now_us();
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, open(ctx, account))
        .await
        .with_context(|| format!("no hello within {} s", CONNECT_TIMEOUT.as_secs()))??;
    ctx.stats.connect.record(now_us() - started);
    Ok(opened)
}

/// Connect + upgrade + hello must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

async fn open(ctx: &Ctx, account: &Account) -> anyhow::Result<(Ws, Duration)> {
    let stream = ctx.binds.connect(ctx.server).await.context("tcp connect")?;
    let url = format!("ws://{}/v1/ws?access_token={}", ctx.server, account.token);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config())).await.context("websocket upgrade")?;
    let heartbeat = match ws.next().await {
        Some(Ok(WsMessage::Text(text))) => {
            let frame: Frame<'_> = serde_json::from_str(text.as_str()).context("hello frame")?;
            if frame.kind != "hello" {
                bail!("first frame was {} instead of hello", frame.kind);
            }
            Duration::from_secs(frame.heartbeat_s.unwrap_or(30).max(1))
        }
        other => bail!("expected hello, got {other:?}"),
    };
    Ok((ws, heartbeat))
}

/// Connects every account (at most `ctx.setup_concurrency` at once) and starts its client;
/// `peers[i]` is the chat peer of `accounts[i]` for window mode. A socket that cannot be
/// opened is counted (`connect_failures`) and left out; fails only when none opened.
pub(crate) async fn connect_all(ctx: &Arc<Ctx>, accounts: &[Account], peers: Option<&[Arc<str>]>, behaviour: &Behaviour, what: &str) -> anyhow::Result<Vec<Client>> {
    ctx.progress.counted(what, accounts.len() as u64);
    let behaviour = Arc::new(behaviour.clone());
    let results: Vec<anyhow::Result<Client>> = stream::iter(accounts.iter().enumerate())
        .map(|(i, account)| {
            let ctx = ctx.clone();
            let behaviour = behaviour.clone();
            let peer = peers.and_then(|p| p.get(i).cloned());
            let account = account.clone();
            async move {
                let connected = connect(&ctx, &account).await;
                ctx.progress.inc(1);
                let (ws, heartbeat) = connected.with_context(|| format!("connecting {}", account.id))?;
                let mut client = spawn_client(ctx, ws, peer, heartbeat, behaviour);
                client.index = i;
                Ok(client)
            }
        })
        .buffer_unordered(ctx.setup_concurrency.max(1))
        .collect()
        .await;
    ctx.progress.finish();
    let mut clients = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(client) => clients.push(client),
            Err(error) => {
                ctx.stats.connect_failures.fetch_add(1, Relaxed);
                ctx.stats.note_error(format_args!("{error:#}"));
            }
        }
    }
    if clients.is_empty() && !accounts.is_empty() {
        bail!("no socket could be opened: {}", crate::stats::lock(&ctx.stats.first_error).clone().unwrap_or_default());
    }
    Ok(clients)
}

/// Starts the task that serves one connected socket.
pub(crate) fn spawn_client(ctx: Arc<Ctx>, ws: Ws, peer: Option<Arc<str>>, heartbeat: Duration, behaviour: Arc<Behaviour>) -> Client {
    let (tx, rx) = mpsc::channel(256);
    let client_peer = peer.clone();
    let state = ClientState {
        connected_us: now_us(),
        ctx,
        behaviour,
        peer,
        seen: HashSet::new(),
        acks: Vec::new(),
        out: Vec::new(),
        outstanding: 0,
        paused_until: None,
        received: 0,
    };
    let task = tokio::spawn(state.run(ws, rx, heartbeat));
    Client { index: 0, peer: client_peer, tx, task }
}

struct ClientState {
    ctx: Arc<Ctx>,
    behaviour: Arc<Behaviour>,
    peer: Option<Arc<str>>,
    connected_us: u64,
    /// Sequence numbers received (duplicate detection).
    seen: HashSet<u64>,
    acks: Vec<String>,
    out: Vec<String>,
    /// Sends not yet answered (window mode).
    outstanding: usize,
    /// After a refusal (overloaded, rate limited) the window waits until then, as a client would.
    paused_until: Option<tokio::time::Instant>,
    received: u64,
}

impl ClientState {
    async fn run(mut self, mut ws: Ws, mut rx: mpsc::Receiver<Cmd>, heartbeat: Duration) {
        let half = heartbeat / 2;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let mut commands_open = true;
        self.refill();
        loop {
            if let Err(error) = self.flush(&mut ws).await {
                self.ctx.stats.note_error(format_args!("socket write: {error}"));
                self.ctx.stats.disconnects.fetch_add(1, Relaxed);
                return;
            }
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => {
                    let _ = ws.close(None).await;
                    return;
                }
                frame = ws.next() => {
                    if !self.on_frame(frame) {
                        return;
                    }
                    // Drain what is already readable so that one ack answers all of it.
                    while let Some(frame) = ws.next().now_or_never() {
                        if !self.on_frame(frame) {
                            return;
                        }
                    }
                }
                command = rx.recv(), if commands_open => match command {
                    Some(Cmd::Send { to, seq, sched_us }) => self.send(&to, seq, sched_us),
                    Some(Cmd::Start) => self.refill(),
                    None => commands_open = false,
                },
                _ = ping.tick() => self.out.push(r#"{"type":"ping"}"#.to_owned()),
                _ = sleep_until_some(self.paused_until) => {
                    self.paused_until = None;
                    self.refill();
                }
            }
        }
    }

    /// Writes the pending frames and acks with one flush.
    async fn flush(&mut self, ws: &mut Ws) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        if self.out.is_empty() && self.acks.is_empty() {
            return Ok(());
        }
        for frame in self.out.drain(..) {
            ws.feed(WsMessage::text(frame)).await?;
        }
        for chunk in self.acks.chunks(self.behaviour.ack_batch) {
            let frame = serde_json::to_string(&AckFrame { kind: "ack", message_ids: chunk }).unwrap_or_default();
            ws.feed(WsMessage::text(frame)).await?;
        }
        self.acks.clear();
        ws.flush().await
    }

    fn send(&mut self, to: &str, seq: u64, sched_us: u64) {
        let sent_us = now_us();
        let stamp = Stamp { seq, sched_us, sent_us };
        let text = content::content(self.ctx.run, stamp, self.behaviour.size);
        self.ctx.stats.on_sent(sched_us, sent_us);
        self.out.push(format!(r#"{{"type":"send","ref":"{}","to":"{to}","content":"{text}"}}"#, content::reference(stamp)));
    }

    /// Window mode: tops the unanswered sends up to the window while the run is sending.
    fn refill(&mut self) {
        if self.behaviour.window == 0 || !self.ctx.is_sending() || self.paused_until.is_some() {
            return;
        }
        let Some(peer) = self.peer.clone() else { return };
        while self.outstanding < self.behaviour.window {
            let seq = self.ctx.next_seq();
            self.send(&peer, seq, now_us());
            self.outstanding += 1;
        }
    }

    /// Handles one read; false when the socket is finished.
    fn on_frame(&mut self, frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) -> bool {
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                self.on_text(text.as_str());
                true
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                if !self.ctx.shutdown.is_cancelled() {
                    self.ctx.stats.disconnects.fetch_add(1, Relaxed);
                }
                false
            }
            Some(Ok(_)) => true,
            Some(Err(error)) => {
                if !self.ctx.shutdown.is_cancelled() {
                    self.ctx.stats.note_error(format_args!("socket read: {error}"));
                    self.ctx.stats.disconnects.fetch_add(1, Relaxed);
                }
                false
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        let stats = &self.ctx.stats;
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
            stats.note_error(format_args!("unparsable frame: {text:.200}"));
            return;
        };
        match frame.kind.as_ref() {
            "message" => {
                let Some(message) = frame.message else { return };
                self.acks.push(message.id.into_owned());
                let Some(stamp) = content::parse(&message.content, self.ctx.run) else {
                    stats.foreign.fetch_add(1, Relaxed);
                    return;
                };
                let fresh = self.seen.insert(stamp.seq);
                stats.on_delivery(&stamp, fresh);
                if !fresh {
                    return;
                }
                self.received += 1;
                if self.behaviour.expect > 0 && self.received == self.behaviour.expect {
                    stats.aux.record(now_us().saturating_sub(self.connected_us));
                }
                if self.behaviour.ping_pong && self.ctx.is_sending() {
                    let seq = self.ctx.next_seq();
                    self.send(&message.sender_id, seq, now_us());
                }
            }
            "accepted" => {
                if let Some(stamp) = frame.reference.as_deref().and_then(content::parse_reference) {
                    stats.on_accepted(stamp.sched_us, stamp.sent_us, 1);
                    self.answered();
                }
            }
            "error" => {
                let code = frame.code.as_deref().unwrap_or("error");
                match frame.reference.as_deref().and_then(content::parse_reference) {
                    Some(stamp) => {
                        stats.on_refused(stamp.sched_us, &format!("ws {code}"));
                        if self.paused_until.is_none() {
                            self.paused_until = Some(tokio::time::Instant::now() + REFUSED_PAUSE);
                        }
                        self.answered();
                    }
                    None => stats.on_refused(now_us(), &format!("ws {code}")),
                }
            }
            "status" => {
                stats.status_frames.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    fn answered(&mut self) {
        if self.behaviour.window > 0 {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.refill();
        }
    }
}

/// Closes every client and waits (at most `wait`) for their sockets to close.
pub(crate) async fn close_all(ctx: &Ctx, clients: Vec<Client>, wait: Duration) {
    ctx.shutdown.cancel();
    let tasks = clients.into_iter().map(|c| c.task);
    let _ = tokio::time::timeout(wait, futures::future::join_all(tasks)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_frames_of_the_contract() {
        let message: Frame<'_> = serde_json::from_str(
            r#"{"type":"message","message":{"id":"01J","sender_id":"b1","recipient_id":"m1","content":"hi","media":[]}}"#,
        )
        .expect("message frame");
        assert_eq!(message.kind, "message");
        let inner = message.message.expect("message object");
        assert_eq!((inner.id.as_ref(), inner.sender_id.as_ref(), inner.content.as_ref()), ("01J", "b1", "hi"));

        // An error frame's `message` is a text, not a message.
        let error: Frame<'_> =
            serde_json::from_str(r#"{"type":"error","ref":"1.2.3","code":"overloaded","message":"retry later"}"#).expect("error frame");
        assert!(error.message.is_none());
        assert_eq!(error.code.as_deref(), Some("overloaded"));
        assert_eq!(error.reference.as_deref(), Some("1.2.3"));

        let hello: Frame<'_> = serde_json::from_str(r#"{"type":"hello","user_id":"m1","heartbeat_s":30}"#).expect("hello");
        assert_eq!(hello.heartbeat_s, Some(30));
    }
}
