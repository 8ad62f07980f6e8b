//! One WebSocket connection: authentication before the upgrade, then a reader (this task)
//! and a writer task joined by a bounded outbound queue.
//!
//! Life of a connection: `hello` → attach to the registry (replay mode) → register presence
//! → replay the undelivered messages from the store while already reading client frames →
//! live frames. Presence is registered before the store is read, so a message routed in
//! between is either in the replay or held as a live frame (and deduplicated by id); a
//! routed copy that reaches the bus only after the replay is dropped by the registry, which
//! remembers the replayed ids for `replay_window` (the reader forgets them then). When
//! the reader ends — client close, error, silence for 3 × heartbeat, a frame over the limit,
//! abuse, or shutdown (close 1001) — the connection leaves the registry and presence.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::Json;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use esh_backends::cache::PRESENCE_TTL;
use esh_backends::BackendError;
use esh_common::{ApiError, Status};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::frames::{self, ClientFrame, FrameError};
use crate::tracker::{Command, Delivery};
use crate::Deliverer;

/// The smallest message size tungstenite itself accepts: larger than our own frame limit so
/// that we see oversized frames and close with 1009 ourselves.
const TRANSPORT_LIMIT: usize = 1 << 20;
/// How long the close frame may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub(crate) struct WsParams {
    access_token: Option<String>,
}

/// `GET /v1/ws`: 401 with the JSON error body before the upgrade unless the token is valid
/// and names an existing user.
pub(crate) async fn upgrade(
    State(deliverer): State<Arc<Deliverer>>,
    headers: HeaderMap,
    query: Result<Query<WsParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query_token = query.ok().and_then(|Query(params)| params.access_token);
    let user = match deliverer.authenticate(&headers, query_token.as_deref()).await {
        Ok(user) => user,
        Err(error) => return refusal(error),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return refusal(ApiError::invalid(format!("expected a websocket upgrade: {}", rejection.body_text())))
        }
    };
    let limit = TRANSPORT_LIMIT.max(deliverer.config.max_frame_bytes.saturating_mul(2));
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(deliverer.config.read_buffer_bytes)
        .on_upgrade(move |socket| serve(deliverer, socket, user))
}

/// A refused upgrade: the error's status and the contract's JSON error body.
fn refusal(error: ApiError) -> Response {
    let status = StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(error.body())).into_response()
}

impl Deliverer {
    /// The id of the user a request's token names (`Authorization: Bearer` first, then
    /// `?access_token=`), who must exist.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<String, ApiError> {
        let token = match headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value = value.to_str().map_err(|_| ApiError::unauthenticated("invalid authorization header"))?;
                bearer(value).ok_or_else(|| ApiError::unauthenticated("expected a bearer token"))?
            }
            None => query_token.filter(|t| !t.is_empty()).ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?,
        };
        let claims = self.keys.verify(token)?;
        match self.backends.store.user(&claims.sub).await {
            Ok(Some(user)) => Ok(user.id),
            Ok(None) => Err(ApiError::unauthenticated("unknown user")),
            Err(error) => Err(error.into()),
        }
    }
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Serves one upgraded socket of `user` until it closes.
async fn serve(deliverer: Arc<Deliverer>, socket: WebSocket, user: String) {
    let _running = deliverer.tasks.token();
    let connection = deliverer.next_connection.fetch_add(1, Ordering::Relaxed);
    let presence_id = format!("{}:{connection}", deliverer.config.node_id);
    let (sink, stream) = socket.split();
    let (outbound, queue) = mpsc::channel(deliverer.config.outbound_queue.max(1));
    let (close, close_signal) = oneshot::channel();
    // Cancelled by shutdown, or by the writer when the socket can no longer be written.
    let ended = deliverer.shutdown.child_token();
    deliverer.tasks.spawn(write_loop(
        sink,
        queue,
        close_signal,
        deliverer.shutdown.clone(),
        ended.clone(),
        deliverer.config.write_batch.max(1),
    ));

    let heartbeat_s = deliverer.config.heartbeat.as_secs();
    if outbound.send(frames::hello(&user, heartbeat_s)).await.is_err() {
        return;
    }
    deliverer.registry.attach(&user, connection, outbound.clone());
    let node = &deliverer.config.node_id;
    if let Err(error) = deliverer.backends.presence.register(&user, node, &presence_id, PRESENCE_TTL).await {
        tracing::warn!(%error, "cannot register presence; live messages may wait for the next connection");
    }

    let now = Instant::now();
    let mut reader = Reader {
        deliverer: deliverer.clone(),
        user: user.clone(),
        presence_id: presence_id.clone(),
        connection,
        outbound: outbound.clone(),
        close: Some(close),
        last_seen: now,
        last_refresh: now,
        invalid_since: now,
        invalid_count: 0,
    };
    let replay = replay(deliverer.clone(), user.clone(), connection, outbound);
    reader.run(stream, replay, ended).await;
    drop(reader);

    if deliverer.registry.detach(&user, connection) {
        let _ = deliverer.tracker.send(Command::Disconnected { user: user.clone() }).await;
    }
    if let Err(error) = deliverer.backends.presence.unregister(&user, &presence_id).await {
        tracing::warn!(%error, "cannot unregister presence; it expires on its own");
    }
}

/// Why a replay stopped early.
#[derive(Debug)]
pub(crate) enum ReplayError {
    /// The store could not be read.
    Store(BackendError),
    /// The socket is gone.
    Closed,
}

/// Sends `user`'s undelivered messages, oldest first, to one socket, then the live frames
/// held meanwhile that the replay did not already send, and switches the socket to live,
/// leaving it a record of the newest replayed ids whose routed copies are still to come.
/// True when that record was left (the caller forgets it after `replay_window`).
pub(crate) async fn replay(
    deliverer: Arc<Deliverer>,
    user: String,
    connection: u64,
    outbound: mpsc::Sender<Utf8Bytes>,
) -> Result<bool, ReplayError> {
    let page_size = deliverer.config.replay_page.max(1);
    let keep = deliverer.config.replay_hold.max(1);
    let mut sent: HashSet<String> = HashSet::new();
    // The newest `keep` replayed ids (pages come in id order): routed copies in flight are
    // of the newest messages.
    let mut newest: VecDeque<String> = VecDeque::new();
    let mut after: Option<String> = None;
    loop {
        if after.is_none() {
            // Everything accepted before the socket attached is in the store after this:
            // presence was registered first, so what is appended later is routed here live.
            deliverer.backends.caught_up().await.map_err(ReplayError::Store)?;
        }
        let page = deliverer.backends.store.undelivered(&user, after.as_deref(), page_size).await.map_err(ReplayError::Store)?;
        let mut deliveries = Vec::with_capacity(page.len());
        let mut media = crate::dispatch::media_of(&deliverer.media, &page).await.into_iter();
        for message in &page {
            let frame = frames::message(message, media.next().unwrap_or_default());
            outbound.send(frame.clone()).await.map_err(|_| ReplayError::Closed)?;
            sent.insert(message.id.clone());
            if newest.len() == keep {
                newest.pop_front();
            }
            newest.push_back(message.id.clone());
            deliveries.push(Delivery { user: user.clone(), message_id: message.id.clone(), frame, route: message.route() });
        }
        if !deliveries.is_empty() && deliverer.tracker.send(Command::Sent(deliveries)).await.is_err() {
            return Err(ReplayError::Closed);
        }
        if page.len() < page_size {
            break;
        }
        after = page.last().map(|m| m.id.clone());
    }
    let window = deliverer.config.replay_window;
    let mut record: HashSet<String> = if window.is_zero() { HashSet::new() } else { newest.into_iter().collect() };
    let until = Instant::now() + window;
    loop {
        let recording = !record.is_empty();
        let Some(held) = deliverer.registry.end_replay(&user, connection, &mut record, until) else {
            return Ok(recording);
        };
        for held in held {
            if let Some(id) = &held.message_id {
                if sent.contains(id) {
                    // The routed copy came while replaying: nothing is left to expect.
                    if held.routed {
                        record.remove(id);
                    }
                    continue;
                }
            }
            outbound.send(held.frame).await.map_err(|_| ReplayError::Closed)?;
        }
    }
}

/// The reading half of a connection and what it needs to answer frames.
struct Reader {
    deliverer: Arc<Deliverer>,
    user: String,
    presence_id: String,
    connection: u64,
    outbound: mpsc::Sender<Utf8Bytes>,
    /// Tells the writer to close the socket with a code (taken once).
    close: Option<oneshot::Sender<CloseFrame>>,
    last_seen: Instant,
    last_refresh: Instant,
    /// Start of the current one-second window of invalid frames, and their count in it.
    invalid_since: Instant,
    invalid_count: u32,
}

impl Reader {
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        replay: impl std::future::Future<Output = Result<bool, ReplayError>>,
        ended: CancellationToken,
    ) {
        let silence_limit = self.deliverer.config.heartbeat * 3;
        let idle = tokio::time::sleep(silence_limit);
        tokio::pin!(idle);
        tokio::pin!(replay);
        let mut replaying = true;
        // Armed after a replay that left a record in the registry; boxed so that a socket
        // without one pays nothing.
        let mut forget: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                _ = ended.cancelled() => break,
                _ = &mut idle => {
                    let quiet_until = self.last_seen + silence_limit;
                    if Instant::now() >= quiet_until {
                        self.close_with(close_code::NORMAL, "heartbeat timeout");
                        break;
                    }
                    idle.as_mut().reset(quiet_until);
                }
                _ = async { if let Some(sleep) = forget.as_mut() { sleep.await } }, if forget.is_some() => {
                    forget = None;
                    self.deliverer.registry.forget_replayed(&self.user, self.connection);
                }
                outcome = &mut replay, if replaying => {
                    replaying = false;
                    match outcome {
                        Ok(recorded) => {
                            if recorded {
                                forget = Some(Box::pin(tokio::time::sleep(self.deliverer.config.replay_window)));
                            }
                        }
                        Err(ReplayError::Closed) => break,
                        Err(ReplayError::Store(error)) => {
                            tracing::warn!(%error, "cannot replay undelivered messages; closing so the client retries");
                            self.close_with(close_code::AGAIN, "undelivered messages unavailable, reconnect later");
                            break;
                        }
                    }
                }
                message = stream.next() => match message {
                    None => break,
                    Some(Err(error)) => {
                        if is_too_long(&error) {
                            self.close_with(close_code::SIZE, "frame too large");
                        }
                        tracing::debug!(%error, "websocket read failed");
                        break;
                    }
                    Some(Ok(message)) => {
                        self.last_seen = Instant::now();
                        self.refresh_presence().await;
                        if !self.handle(message).await {
                            break;
                        }
                    }
                },
            }
        }
    }

    /// Handles one client message; false when the connection is to end.
    async fn handle(&mut self, message: Message) -> bool {
        let limit = self.deliverer.config.max_frame_bytes;
        match message {
            Message::Text(text) => {
                if text.len() > limit {
                    self.close_with(close_code::SIZE, "frame too large");
                    return false;
                }
                match frames::parse(&text) {
                    Ok(frame) => self.on_frame(frame).await,
                    Err(error) => self.refuse(error).await,
                }
            }
            Message::Binary(bytes) => {
                if bytes.len() > limit {
                    self.close_with(close_code::SIZE, "frame too large");
                    return false;
                }
                self.refuse(FrameError::new("binary frames are not supported; send json text frames")).await
            }
            // tungstenite answers protocol pings itself; both count as activity.
            Message::Ping(_) | Message::Pong(_) => true,
            Message::Close(_) => false,
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> bool {
        match frame {
            ClientFrame::Ack { message_ids } => self.receipts(message_ids, Status::Delivered).await,
            ClientFrame::Read { message_ids } => self.receipts(message_ids, Status::Read).await,
            ClientFrame::Ping => self.reply(frames::pong()).await,
            ClientFrame::Send { reference, request } => {
                let answer = match self.deliverer.ingress.send_chat(&self.user, request).await {
                    Ok(message) => {
                        let media = crate::dispatch::media_of(&self.deliverer.media, [&message]).await;
                        frames::accepted(reference.as_deref(), &message, media.into_iter().next().unwrap_or_default())
                    }
                    Err(error) => frames::error(reference.as_deref(), &error),
                };
                self.reply(answer).await
            }
        }
    }

    /// Passes receipts to the tracker, which stops their retries on every socket and has
    /// them written (only the recipient's receipts count).
    async fn receipts(&mut self, message_ids: Vec<String>, status: Status) -> bool {
        if message_ids.is_empty() {
            return true;
        }
        let command = Command::Receipts { user: self.user.clone(), message_ids, status };
        // The tracker only stops at shutdown; the connection is closing then anyway.
        self.deliverer.tracker.send(command).await.is_ok()
    }

    /// Answers a refused frame with an `error` frame; closes the socket (1008) when the
    /// client sends more than the allowed invalid frames in a second.
    async fn refuse(&mut self, error: FrameError) -> bool {
        let now = Instant::now();
        if now.duration_since(self.invalid_since) >= Duration::from_secs(1) {
            self.invalid_since = now;
            self.invalid_count = 0;
        }
        self.invalid_count += 1;
        if self.invalid_count > self.deliverer.config.max_invalid_frames_per_s {
            self.close_with(close_code::POLICY, "too many invalid frames");
            return false;
        }
        self.reply(frames::error(error.reference.as_deref(), &error.to_api_error())).await
    }

    /// Queues a direct answer; a client that leaves it unread for a heartbeat is closed.
    async fn reply(&mut self, frame: Utf8Bytes) -> bool {
        match tokio::time::timeout(self.deliverer.config.heartbeat, self.outbound.send(frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.close_with(close_code::POLICY, "client too slow");
                false
            }
        }
    }

    /// Re-registers presence when the last registration is older than `presence_refresh`.
    async fn refresh_presence(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_refresh) < self.deliverer.config.presence_refresh {
            return;
        }
        self.last_refresh = now;
        let presence = &self.deliverer.backends.presence;
        if let Err(error) = presence.register(&self.user, &self.deliverer.config.node_id, &self.presence_id, PRESENCE_TTL).await {
            tracing::warn!(%error, "cannot refresh presence");
        }
    }

    fn close_with(&mut self, code: u16, reason: &'static str) {
        if let Some(close) = self.close.take() {
            let _ = close.send(CloseFrame { code, reason: Utf8Bytes::from_static(reason) });
        }
    }
}

/// Whether a read error is tungstenite refusing a message over its size limit.
fn is_too_long(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Message too long") || text.contains("Space limit exceeded")
}

/// The writer task: writes queued frames in batches (several frames, one flush) until the
/// queue closes, the reader asks for a close, the socket fails or the server shuts down
/// (close 1001).
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Utf8Bytes>,
    mut close_signal: oneshot::Receiver<CloseFrame>,
    shutdown: CancellationToken,
    ended: CancellationToken,
    batch_size: usize,
) {
    let going_away = || CloseFrame { code: close_code::AWAY, reason: Utf8Bytes::from_static("server shutting down") };
    let mut batch = Vec::with_capacity(batch_size);
    let closing = loop {
        let count = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Some(going_away()),
            signal = &mut close_signal => break signal.ok(),
            count = queue.recv_many(&mut batch, batch_size) => count,
        };
        if count == 0 {
            break None;
        }
        let write = async {
            for frame in batch.drain(..) {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Some(going_away()),
            signal = &mut close_signal => break signal.ok(),
            written = write => if let Err(error) = written {
                tracing::debug!(%error, "websocket write failed");
                break None;
            },
        }
    };
    // Sends our close frame, or completes the close handshake the client started.
    let finish = async {
        if let Some(frame) = closing {
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, finish).await;
    ended.cancel();
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
