//! The one send path: `POST /v1/messages` (one-way), `POST /v1/chat/messages` and the
//! WebSocket `send` frame (chat, through `ChatIngress`), `POST /v1/broadcasts`.
//!
//! Order of checks (API.md "Precise rules"): 401 (the `Caller` extractor), 429 (rate
//! limit), 400 (body), 403 (permission), 404 (recipient), 409 (idempotency conflict), then
//! 503 when the backlog is too deep. A request refused after its rate-limit permit was
//! counted gets the permit back; a repeat of an answered request (same sender, same
//! idempotency key, same body) gets the identical answer and counts nothing.
//!
//! Effects, once every check passed: one-way and chat messages are inserted into the store
//! (status `sent`) and then appended to `esh.messages.{priority}`; a broadcast is stored
//! with its reserved block of message ids and appended as one `Broadcast` record, which the
//! router expands. The answer goes out only after both writes are durable.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use esh_backends::cache::IDEMPOTENCY_TTL;
use esh_backends::{Claim, RateDecision, Record, StoredAnswer};
use esh_common::ingress::ChatRequest;
use esh_common::view::MessageView;
use esh_common::{
    ids, topics, ApiError, Broadcast, ErrorCode, Message, MessageType, Millis, Permission, Priority, Status, User,
    UserKind,
};
use esh_schemas::{encode, MessageEnvelope};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{ApiJson, JsonBody};
use crate::views::{self, BroadcastAccepted, ErrorBody};
use crate::{Ingest, IngestConfig};

/// Longest content, in Unicode scalar values.
pub(crate) const MAX_CONTENT_CHARS: usize = 4096;
/// Most recipients of one broadcast.
pub(crate) const MAX_BROADCAST_RECIPIENTS: usize = 100_000;
/// Longest idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 256;
/// Window of the per-sender send limit.
const SEND_WINDOW: Duration = Duration::from_secs(60);
/// Window of the per-business broadcast recipient quota.
const BROADCAST_WINDOW: Duration = Duration::from_secs(3600);
/// Longest `Retry-After` of a 429.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// `Retry-After` of a 503 for a deep backlog.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a repeat polls the key of a request still in flight, and for how long at most.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(10);
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);
/// Fewest users looked up per store call when checking broadcast recipients.
const USER_LOOKUP_MIN_CHUNK: usize = 2_000;
/// Tries of a log append after the message is already in the store.
const APPEND_TRIES: u32 = 3;
/// The idempotency header.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// `POST /v1/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct OneWayRequest {
    /// A mobile user.
    recipient_id: String,
    /// 1..4096 Unicode scalar values.
    #[schema(min_length = 1, max_length = 4096)]
    content: String,
    /// Default `normal`.
    priority: Option<Priority>,
    /// Media uploaded before (none are known yet: a non-empty list is 400).
    #[schema(max_items = 0)]
    media_ids: Option<Vec<String>>,
    /// Same as the `Idempotency-Key` header (the header wins; both and different is 400); 1..256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
}

impl JsonBody for OneWayRequest {}

/// `POST /v1/chat/messages` (and the WebSocket `send` frame).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChatMessageRequest {
    /// The other participant: a business with `chat` or a verified mobile user.
    to: String,
    /// 1..4096 Unicode scalar values.
    #[schema(min_length = 1, max_length = 4096)]
    content: String,
    /// Default `normal`.
    priority: Option<Priority>,
    /// As in `POST /v1/messages`.
    #[schema(max_items = 0)]
    media_ids: Option<Vec<String>>,
    /// As in `POST /v1/messages`; 1..256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
}

impl JsonBody for ChatMessageRequest {}

/// `POST /v1/broadcasts`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct BroadcastRequest {
    /// 1..100000 existing mobile users, no duplicates.
    #[schema(min_items = 1, max_items = 100_000)]
    recipient_ids: Vec<String>,
    /// 1..4096 Unicode scalar values.
    #[schema(min_length = 1, max_length = 4096)]
    content: String,
    /// Default `normal`.
    priority: Option<Priority>,
    /// As in `POST /v1/messages`.
    #[schema(max_items = 0)]
    media_ids: Option<Vec<String>>,
    /// As in `POST /v1/messages`; 1..256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
}

impl JsonBody for BroadcastRequest {
    fn limit(config: &IngestConfig) -> usize {
        config.max_broadcast_body_bytes
    }
}

/// Which send endpoint a request came through (part of the idempotency fingerprint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendKind {
    OneWay,
    Chat,
    Broadcast,
}

impl SendKind {
    fn as_str(self) -> &'static str {
        match self {
            SendKind::OneWay => "one_way",
            SendKind::Chat => "chat",
            SendKind::Broadcast => "broadcast",
        }
    }
}

/// A send request that passed every check that needs no store.
#[derive(Debug, Clone)]
pub(crate) struct SendInput {
    kind: SendKind,
    recipients: Vec<String>,
    content: String,
    priority: Priority,
    key: Option<String>,
    media_ids: Vec<String>,
}

impl SendInput {
    fn new(
        kind: SendKind,
        recipients: Vec<String>,
        content: String,
        priority: Option<Priority>,
        media_ids: Option<Vec<String>>,
        body_key: Option<String>,
        header_key: Option<&HeaderValue>,
    ) -> Result<SendInput, ApiError> {
        let key = idempotency_key(header_key, body_key)?;
        let chars = content.chars().count();
        if !(1..=MAX_CONTENT_CHARS).contains(&chars) {
            return Err(ApiError::invalid(format!("content must have 1 to {MAX_CONTENT_CHARS} characters"))
                .with_details(json!({ "field": "content" })));
        }
        let mut media_ids = media_ids.unwrap_or_default();
        if !media_ids.is_empty() {
            // Media upload comes with a later issue: no media id is known yet.
            media_ids.truncate(100);
            return Err(ApiError::invalid("unknown media ids")
                .with_details(json!({ "field": "media_ids", "unknown_ids": media_ids })));
        }
        media_ids.sort();
        if kind == SendKind::Broadcast {
            check_broadcast_recipients(&recipients)?;
        }
        Ok(SendInput { kind, recipients, content, priority: priority.unwrap_or_default(), key, media_ids })
    }

    /// Hash of everything that makes two requests "the same body": endpoint, recipients,
    /// content, priority and the set of media ids.
    fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(self.kind.as_str().as_bytes());
        field(&(self.recipients.len() as u64).to_le_bytes());
        for recipient in &self.recipients {
            field(recipient.as_bytes());
        }
        field(self.content.as_bytes());
        field(topics::messages_topic(self.priority).as_bytes());
        for media in &self.media_ids {
            field(media.as_bytes());
        }
        hash.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// The key of a request: the header wins; header and body field both given and different is 400.
fn idempotency_key(header: Option<&HeaderValue>, body: Option<String>) -> Result<Option<String>, ApiError> {
    let invalid = |message: &str| ApiError::invalid(message).with_details(json!({ "field": "idempotency_key" }));
    let header = match header {
        Some(value) => Some(value.to_str().map_err(|_| invalid("idempotency key must be visible ascii"))?.to_owned()),
        None => None,
    };
    let key = match (header, body) {
        (Some(header), Some(body)) if header != body => {
            return Err(invalid("the Idempotency-Key header and idempotency_key differ"));
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => return Ok(None),
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(invalid("idempotency key must have 1 to 256 bytes"));
    }
    Ok(Some(key))
}

fn check_broadcast_recipients(recipients: &[String]) -> Result<(), ApiError> {
    if !(1..=MAX_BROADCAST_RECIPIENTS).contains(&recipients.len()) {
        return Err(ApiError::invalid(format!("recipient_ids must have 1 to {MAX_BROADCAST_RECIPIENTS} ids"))
            .with_details(json!({ "field": "recipient_ids" })));
    }
    let mut seen = HashSet::with_capacity(recipients.len());
    let mut duplicates: Vec<&str> = Vec::new();
    for recipient in recipients {
        if !seen.insert(recipient.as_str()) && duplicates.len() < 100 && !duplicates.contains(&recipient.as_str()) {
            duplicates.push(recipient);
        }
    }
    if !duplicates.is_empty() {
        return Err(ApiError::invalid("recipient_ids has duplicates")
            .with_details(json!({ "field": "recipient_ids", "duplicate_ids": duplicates })));
    }
    Ok(())
}

/// An accepted send: the answer (stored for repeats) and, when this request made it, the message.
pub(crate) struct Accepted {
    answer: StoredAnswer,
    message: Option<Message>,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.answer.status).unwrap_or(StatusCode::ACCEPTED);
        views::json_bytes(status, Bytes::from(self.answer.body))
    }
}

/// Rate-limit permits taken by one request, given back if it is refused.
#[derive(Default)]
struct Permits {
    taken: Vec<(String, u64)>,
}

/// What became of an idempotency key.
enum KeyState {
    /// This request holds the key and must complete or release it.
    Held,
    /// An identical request answered already: this is its answer.
    Replay(StoredAnswer),
    /// The key belongs to a request with a different body.
    Conflict,
}

#[utoipa::path(post, path = "/v1/messages", tag = "messages", request_body = OneWayRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, description = "idempotency key, scoped to the sender: 1..256 visible ASCII characters; equal to `idempotency_key` when both are given")),
    responses((status = 202, description = "accepted, status sent", body = MessageView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_one_way(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<OneWayRequest>, ApiError>,
) -> Result<Accepted, ApiError> {
    let input = body.and_then(|ApiJson(request)| {
        SendInput::new(
            SendKind::OneWay,
            vec![request.recipient_id],
            request.content,
            request.priority,
            request.media_ids,
            request.idempotency_key,
            headers.get(IDEMPOTENCY_HEADER),
        )
    });
    ingest.send_detached(caller, input).await
}

#[utoipa::path(post, path = "/v1/chat/messages", tag = "messages", request_body = ChatMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, description = "idempotency key, scoped to the sender: 1..256 visible ASCII characters; equal to `idempotency_key` when both are given")),
    responses((status = 202, description = "accepted, status sent, with its conversation_id", body = MessageView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_chat(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<ChatMessageRequest>, ApiError>,
) -> Result<Accepted, ApiError> {
    let input = body.and_then(|ApiJson(request)| {
        SendInput::new(
            SendKind::Chat,
            vec![request.to],
            request.content,
            request.priority,
            request.media_ids,
            request.idempotency_key,
            headers.get(IDEMPOTENCY_HEADER),
        )
    });
    ingest.send_detached(caller, input).await
}

#[utoipa::path(post, path = "/v1/broadcasts", tag = "broadcasts", request_body = BroadcastRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, description = "idempotency key, scoped to the sender: 1..256 visible ASCII characters; equal to `idempotency_key` when both are given")),
    responses((status = 202, description = "accepted; the router creates one message per recipient", body = BroadcastAccepted),
        (status = 400, description = "bad body, duplicates, or unknown recipients (details.unknown_ids)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_broadcast(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<BroadcastRequest>, ApiError>,
) -> Result<Accepted, ApiError> {
    let input = body.and_then(|ApiJson(request)| {
        SendInput::new(
            SendKind::Broadcast,
            request.recipient_ids,
            request.content,
            request.priority,
            request.media_ids,
            request.idempotency_key,
            headers.get(IDEMPOTENCY_HEADER),
        )
    });
    ingest.send_detached(caller, input).await
}

/// `ChatIngress::send_chat`: the WebSocket `send` frame, through the same path as HTTP.
pub(crate) async fn send_chat(ingest: &Ingest, sender_id: &str, request: ChatRequest) -> Result<Message, ApiError> {
    let sender =
        ingest.backends.store.user(sender_id).await?.ok_or_else(|| ApiError::unauthenticated("unknown user"))?;
    let input = SendInput::new(
        SendKind::Chat,
        vec![request.to],
        request.content,
        request.priority,
        Some(request.media_ids),
        request.idempotency_key,
        None,
    );
    let accepted = ingest.send_detached(Caller::User(sender), input).await?;
    if let Some(message) = accepted.message {
        return Ok(message);
    }
    // A repeat: the stored answer names the message made by the first request.
    let answer: serde_json::Value = serde_json::from_slice(&accepted.answer.body)
        .map_err(|e| ApiError::internal(format!("undecodable stored answer: {e}")))?;
    let id = answer["id"].as_str().ok_or_else(|| ApiError::internal("stored answer without message id"))?;
    ingest.backends.store.message(id).await?.ok_or_else(|| ApiError::internal("stored answer names an unknown message"))
}

impl Ingest {
    /// Runs `send` on a task of its own, so that a caller that goes away (a closed
    /// connection drops the handler) cannot cut a send off between its effects and the
    /// settling of its idempotency key and rate-limit permits.
    async fn send_detached(&self, caller: Caller, input: Result<SendInput, ApiError>) -> Result<Accepted, ApiError> {
        let Some(ingest) = self.me.upgrade() else {
            return Err(ApiError::new(ErrorCode::Unavailable, "ingest is shutting down"));
        };
        tokio::spawn(async move { ingest.send(&caller, input).await })
            .await
            .map_err(|error| ApiError::internal(format!("send task failed: {error}")))?
    }

    /// Runs a send request (already parsed, or the error its body gave) from `caller`.
    async fn send(&self, caller: &Caller, input: Result<SendInput, ApiError>) -> Result<Accepted, ApiError> {
        let Some(sender) = caller.user() else {
            // The admin token is nobody: it has no rate limit and cannot send.
            input?;
            return Err(ApiError::forbidden("the admin token cannot send messages"));
        };
        let mut input = match input {
            Ok(input) => input,
            Err(error) => return Err(self.refuse_after_rate_check(&sender.id, error).await),
        };
        let scoped_key = input.key.as_ref().map(|key| format!("{}:{key}", sender.id));
        if let Some(key) = &scoped_key {
            match self.claim_key(key, &input.fingerprint()).await? {
                KeyState::Held => {}
                KeyState::Replay(answer) => return Ok(Accepted { answer, message: None }),
                KeyState::Conflict => {
                    let conflict = ApiError::conflict("idempotency key already used with a different body")
                        .with_details(json!({ "field": "idempotency_key" }));
                    return Err(self.refuse_after_rate_check(&sender.id, conflict).await);
                }
            }
        }
        let mut permits = Permits::default();
        let outcome = self.send_counted(sender, &mut input, &mut permits).await;
        if outcome.is_err() {
            self.refund(permits).await;
        }
        if let Some(key) = &scoped_key {
            let idempotency = &self.backends.idempotency;
            let settled = match &outcome {
                Ok(accepted) => idempotency.complete(key, accepted.answer.clone()).await,
                Err(_) => idempotency.release(key).await,
            };
            if let Err(error) = settled {
                tracing::warn!(%error, "cannot settle idempotency key");
            }
        }
        if let Ok(accepted) = &outcome {
            self.metrics.accepted(input.kind.as_str());
            debug_assert_eq!(accepted.answer.status, 202);
        }
        outcome
    }

    /// Counts the request against the sender's limits, then checks and performs it.
    async fn send_counted(
        &self,
        sender: &User,
        input: &mut SendInput,
        permits: &mut Permits,
    ) -> Result<Accepted, ApiError> {
        let limit = self.config.rate_limit_per_minute;
        self.acquire(permits, format!("send:{}", sender.id), 1, limit, SEND_WINDOW).await?;
        if input.kind == SendKind::Broadcast {
            let quota = self.config.broadcast_recipients_per_hour;
            let cost = input.recipients.len() as u64;
            self.acquire(permits, format!("broadcast:{}", sender.id), cost, quota, BROADCAST_WINDOW).await?;
        }
        match input.kind {
            SendKind::OneWay => {
                if !sender.has(Permission::Send) {
                    return Err(ApiError::forbidden("one-way messages need a business with the send permission"));
                }
                let recipient = self.recipient(&input.recipients[0]).await?;
                if recipient.kind != UserKind::Mobile {
                    return Err(ApiError::forbidden("one-way messages go to mobile users only"));
                }
                self.check_backlog(input.priority).await?;
                self.deliver(sender, &recipient, None, input).await
            }
            SendKind::Chat => {
                check_chat_sender(sender)?;
                let recipient = self.recipient(&input.recipients[0]).await?;
                let (business, mobile) = chat_pair(sender, &recipient)?;
                self.check_backlog(input.priority).await?;
                let now = Millis::now();
                let conversation =
                    self.backends.store.conversation_for_pair(&business.id, &mobile.id, &ids::new_id(), now).await?;
                self.deliver(sender, &recipient, Some(conversation.id), input).await
            }
            SendKind::Broadcast => {
                if !sender.has(Permission::Send) {
                    return Err(ApiError::forbidden("broadcasts need a business with the send permission"));
                }
                self.check_broadcast_recipients_exist(&input.recipients).await?;
                self.check_backlog(input.priority).await?;
                self.broadcast(sender, input).await
            }
        }
    }

    /// Stores one message (status `sent`), then appends it to its priority topic.
    async fn deliver(
        &self,
        sender: &User,
        recipient: &User,
        conversation_id: Option<String>,
        input: &SendInput,
    ) -> Result<Accepted, ApiError> {
        // Chat activity in flight, for conversation-list walks (see `conversations`).
        let stamp = self.activity.stamp();
        let now = stamp.at;
        let message = Message {
            id: ids::new_id(),
            kind: if conversation_id.is_some() { MessageType::Chat } else { MessageType::OneWay },
            sender_id: sender.id.clone(),
            recipient_id: recipient.id.clone(),
            conversation_id,
            content: input.content.clone(),
            media_ids: input.media_ids.clone(),
            priority: input.priority,
            status: Status::Sent,
            status_changed_at: now,
            created_at: now,
            error: None,
            broadcast_id: None,
        };
        self.backends.store.insert_messages(std::slice::from_ref(&message)).await?;
        if let Some(conversation) = &message.conversation_id {
            if let Err(error) = self.backends.recent.invalidate(std::slice::from_ref(conversation)).await {
                tracing::warn!(%error, "cannot invalidate cached conversation");
            }
        }
        let record = Record {
            key: message.partition_key(),
            value: encode(&MessageEnvelope::Message { message: message.clone() }),
        };
        self.append(topics::messages_topic(message.priority), record).await?;
        drop(stamp);
        let body = serde_json::to_vec(&MessageView::new(&message, Vec::new()))
            .map_err(|e| ApiError::internal(format!("cannot encode message: {e}")))?;
        Ok(Accepted { answer: StoredAnswer { status: 202, body }, message: Some(message) })
    }

    /// Stores a broadcast with its reserved message ids and appends one record for the router.
    /// Takes the recipient list out of `input` (100,000 ids are not copied).
    async fn broadcast(&self, sender: &User, input: &mut SendInput) -> Result<Accepted, ApiError> {
        let total = input.recipients.len();
        let first_message_id = ids::reserve(total as u32).to_string();
        let broadcast = Broadcast {
            id: ids::new_id(),
            sender_id: sender.id.clone(),
            recipient_ids: std::mem::take(&mut input.recipients),
            content: input.content.clone(),
            media_ids: input.media_ids.clone(),
            priority: input.priority,
            first_message_id,
            created_at: Millis::now(),
        };
        self.backends.store.create_broadcast(&broadcast).await?;
        let accepted =
            BroadcastAccepted { id: broadcast.id.clone(), total: total as u64, created_at: broadcast.created_at };
        let record = Record { key: broadcast.id.clone(), value: encode(&MessageEnvelope::Broadcast { broadcast }) };
        self.append(topics::messages_topic(input.priority), record).await?;
        let body =
            serde_json::to_vec(&accepted).map_err(|e| ApiError::internal(format!("cannot encode answer: {e}")))?;
        Ok(Accepted { answer: StoredAnswer { status: 202, body }, message: None })
    }

    /// Appends one record whose effect is already in the store, retrying briefly: if the log
    /// stays down the request answers 503 (the stored message is still replayed on connect).
    pub(crate) async fn append(&self, topic: &str, record: Record) -> Result<(), ApiError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.backends.log.append(topic, vec![record.clone()]).await {
                Ok(()) => return Ok(()),
                Err(error) if tries < APPEND_TRIES && error.kind() == esh_backends::ErrorKind::Transient => {
                    tracing::warn!(%error, topic, "log append failed, retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn recipient(&self, id: &str) -> Result<User, ApiError> {
        self.backends.store.user(id).await?.ok_or_else(|| ApiError::not_found("unknown recipient"))
    }

    /// Every broadcast recipient must be an existing mobile user; else 400 listing up to 100 others.
    /// `recipients` has no duplicates (`check_broadcast_recipients`).
    async fn check_broadcast_recipients_exist(&self, recipients: &[String]) -> Result<(), ApiError> {
        // Sorted, each chunk is one range of ids, looked up in key order; the chunks run
        // at once, one per core (the store's reader pool bounds the parallelism).
        let mut sorted = recipients.to_vec();
        sorted.sort_unstable();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let chunk = sorted.len().div_ceil(cores).max(USER_LOOKUP_MIN_CHUNK);
        let store = &self.backends.store;
        let found = futures::future::try_join_all(sorted.chunks(chunk).map(|ids| store.users(ids))).await?;
        let mut mobile: Vec<&str> =
            found.iter().flatten().filter(|user| user.kind == UserKind::Mobile).map(|user| user.id.as_str()).collect();
        if mobile.len() == sorted.len() {
            // Each chunk answered at most its own ids, each once: the same count is all of them.
            return Ok(());
        }
        mobile.sort_unstable();
        let unknown: Vec<&String> =
            recipients.iter().filter(|id| mobile.binary_search(&id.as_str()).is_err()).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let count = unknown.len();
        let listed: Vec<&String> = unknown.into_iter().take(100).collect();
        Err(ApiError::invalid("every recipient must be an existing mobile user")
            .with_details(json!({ "field": "recipient_ids", "unknown_ids": listed, "unknown_count": count })))
    }

    /// Refuses low and normal priority when the router's backlog on the message topics is
    /// above `backlog_limit`, and high priority only above twice that, so that high
    /// priority keeps flowing longest.
    async fn check_backlog(&self, priority: Priority) -> Result<(), ApiError> {
        let mut backlog = 0u64;
        for topic in topics::MESSAGES_BY_PRIORITY {
            backlog += self.backends.log.lag(topics::ROUTER_GROUP, topic).await?;
        }
        let limit = match priority {
            Priority::High => self.config.backlog_limit.saturating_mul(2),
            Priority::Normal | Priority::Low => self.config.backlog_limit,
        };
        if backlog > limit {
            return Err(ApiError::new(ErrorCode::Overloaded, "too many messages waiting; retry later")
                .with_retry_after(OVERLOADED_RETRY_AFTER));
        }
        Ok(())
    }

    /// Claims an idempotency key, waiting while an identical request holding it is in flight.
    async fn claim_key(&self, key: &str, fingerprint: &str) -> Result<KeyState, ApiError> {
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        loop {
            let claim = self.backends.idempotency.claim(key, fingerprint, IDEMPOTENCY_TTL).await?;
            match claim {
                Claim::New => return Ok(KeyState::Held),
                Claim::Done { fingerprint: held, answer } if held == fingerprint => {
                    return Ok(KeyState::Replay(answer))
                }
                Claim::InFlight { fingerprint: held } if held == fingerprint => {
                    if Instant::now() >= deadline {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            "the first request with this key is still running",
                        )
                        .with_retry_after(Duration::from_secs(1)));
                    }
                    tokio::time::sleep(IN_FLIGHT_POLL).await;
                }
                Claim::Done { .. } | Claim::InFlight { .. } => return Ok(KeyState::Conflict),
            }
        }
    }

    /// Counts `cost` units against `key`; 429 with `Retry-After` (1..60 s) when over `limit`.
    async fn acquire(
        &self,
        permits: &mut Permits,
        key: String,
        cost: u64,
        limit: u64,
        window: Duration,
    ) -> Result<(), ApiError> {
        match self.backends.rate_limiter.acquire(&key, cost, limit, window).await {
            Ok(RateDecision::Allowed { permit }) => {
                permits.taken.push((key, permit));
                Ok(())
            }
            Ok(RateDecision::Limited { retry_after }) => {
                Err(ApiError::new(ErrorCode::RateLimited, "rate limit exceeded")
                    .with_retry_after(retry_after.clamp(Duration::from_secs(1), MAX_RETRY_AFTER)))
            }
            Err(error) => {
                // Limits protect the pipeline; an unreachable limiter must not stop every send.
                tracing::warn!(%error, "rate limiter unavailable, request not counted");
                Ok(())
            }
        }
    }

    async fn refund(&self, permits: Permits) {
        for (key, permit) in permits.taken {
            if let Err(error) = self.backends.rate_limiter.refund(&key, permit).await {
                tracing::warn!(%error, "cannot refund rate-limit permit");
            }
        }
    }

    /// A request refused for a reason checked after the rate limit: 429 if the sender is
    /// over the limit anyway (the order of checks), else `error`; nothing stays counted.
    async fn refuse_after_rate_check(&self, sender_id: &str, error: ApiError) -> ApiError {
        let mut permits = Permits::default();
        let limit = self.config.rate_limit_per_minute;
        let checked = self.acquire(&mut permits, format!("send:{sender_id}"), 1, limit, SEND_WINDOW).await;
        self.refund(permits).await;
        checked.err().unwrap_or(error)
    }
}

/// Chat senders: a business with `chat` or a verified mobile user.
fn check_chat_sender(sender: &User) -> Result<(), ApiError> {
    match sender.kind {
        UserKind::Business if sender.has(Permission::Chat) => Ok(()),
        UserKind::Business => Err(ApiError::forbidden("chat needs a business with the chat permission")),
        UserKind::Mobile if sender.verified => Ok(()),
        UserKind::Mobile => Err(ApiError::forbidden("chat needs a verified mobile user")),
        UserKind::Admin => Err(ApiError::forbidden("admins cannot chat")),
    }
}

/// The (business, mobile) pair of a chat, or 403 if it is not one business with `chat`
/// and one verified mobile user.
fn chat_pair<'a>(sender: &'a User, recipient: &'a User) -> Result<(&'a User, &'a User), ApiError> {
    let (business, mobile) = match (sender.kind, recipient.kind) {
        (UserKind::Business, UserKind::Mobile) => (sender, recipient),
        (UserKind::Mobile, UserKind::Business) => (recipient, sender),
        _ => return Err(ApiError::forbidden("a chat pairs one business and one mobile user")),
    };
    if !business.has(Permission::Chat) {
        return Err(ApiError::forbidden("the business does not have the chat permission"));
    }
    if !mobile.verified {
        return Err(ApiError::forbidden("the mobile user is not verified"));
    }
    Ok((business, mobile))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: SendKind, recipients: &[&str], content: &str, priority: Option<Priority>) -> SendInput {
        let recipients = recipients.iter().map(|r| r.to_string()).collect();
        SendInput::new(kind, recipients, content.into(), priority, None, None, None).unwrap()
    }

    #[test]
    fn fingerprints_differ_by_endpoint_recipients_content_and_priority() {
        let base = input(SendKind::OneWay, &["m1"], "hi", None);
        assert_eq!(base.fingerprint(), input(SendKind::OneWay, &["m1"], "hi", Some(Priority::Normal)).fingerprint());
        for other in [
            input(SendKind::Chat, &["m1"], "hi", None),
            input(SendKind::OneWay, &["m2"], "hi", None),
            input(SendKind::OneWay, &["m1"], "hi!", None),
            input(SendKind::OneWay, &["m1"], "hi", Some(Priority::High)),
        ] {
            assert_ne!(base.fingerprint(), other.fingerprint());
        }
    }

    #[test]
    fn content_is_counted_in_unicode_scalar_values() {
        let make =
            |content: String| SendInput::new(SendKind::OneWay, vec!["m".into()], content, None, None, None, None);
        assert!(make("é".repeat(4096)).is_ok());
        assert!(make("é".repeat(4097)).is_err());
        assert!(make(String::new()).is_err());
    }

    #[test]
    fn header_key_wins_and_must_match_the_body() {
        let header = HeaderValue::from_static("k1");
        assert_eq!(idempotency_key(Some(&header), None).unwrap().as_deref(), Some("k1"));
        assert_eq!(idempotency_key(Some(&header), Some("k1".into())).unwrap().as_deref(), Some("k1"));
        assert_eq!(idempotency_key(None, Some("k2".into())).unwrap().as_deref(), Some("k2"));
        assert!(idempotency_key(Some(&header), Some("k2".into())).is_err());
        assert!(idempotency_key(None, Some(String::new())).is_err());
    }

    #[test]
    fn broadcast_recipients_are_bounded_and_unique() {
        assert!(check_broadcast_recipients(&[]).is_err());
        assert!(check_broadcast_recipients(&["a".into(), "b".into()]).is_ok());
        let error = check_broadcast_recipients(&["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert_eq!(error.details.unwrap()["duplicate_ids"], json!(["a"]));
    }
}
