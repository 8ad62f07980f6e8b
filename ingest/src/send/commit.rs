//! The commit of a send: ONE durable log append (ARCHITECTURE.md "Decisions"). The record
//! carries the whole message (or broadcast) with its id, and the answer given under the
//! sender's idempotency key, so that the store projection writes everything from it and a
//! restart can answer repeats. Nothing is written anywhere before the append: an append
//! that fails leaves nothing behind, and the client may retry.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use esh_backends::{Record, StoredAnswer};
use esh_common::records::{encode, IdempotencyRecord, MessageEnvelope};
use esh_common::view::{MediaView, MessageView};
use esh_common::{ids, topics, ApiError, Broadcast, Message, MessageType, Millis, Status, User};

use super::request::SendInput;
use crate::views::{self, BroadcastAccepted};
use crate::Ingest;

/// Tries of a log append that failed with a transient error.
const APPEND_TRIES: u32 = 3;

/// An accepted send: the answer (stored for repeats) and, when this request made it, the message.
pub(crate) struct Accepted {
    pub(crate) answer: StoredAnswer,
    pub(crate) message: Option<Message>,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.answer.status).unwrap_or(StatusCode::ACCEPTED);
        views::json_bytes(status, Bytes::from(self.answer.body))
    }
}

/// A checked send, ready for its append: the record, where it goes, and the answer it gets.
pub(crate) struct Prepared {
    pub(crate) topic: &'static str,
    pub(crate) record: Record,
    pub(crate) accepted: Accepted,
}

/// The `202` answer of a new message: the message itself, status `sent`, with its media objects.
fn message_answer(message: &Message, media: Vec<MediaView>) -> Result<String, ApiError> {
    serde_json::to_string(&MessageView::new(message, media))
        .map_err(|e| ApiError::internal(format!("cannot encode message: {e}")))
}

/// The idempotency record of an answer under `key` (already scoped to the sender).
fn remembered(key: Option<(&str, &str)>, body: &str, at: Millis) -> Option<IdempotencyRecord> {
    key.map(|(key, fingerprint)| IdempotencyRecord {
        key: key.to_owned(),
        fingerprint: fingerprint.to_owned(),
        status: 202,
        body: body.to_owned(),
        at,
    })
}

/// One new message from `sender` to `recipient` (in `conversation_id` for chat), status
/// `sent`, created at `at`, carrying `media` (the checked objects of `input.media_ids`). `key`
/// is the scoped idempotency key and the body's fingerprint.
pub(crate) fn prepare_message(
    sender: &User,
    recipient: &User,
    conversation_id: Option<String>,
    input: &SendInput,
    media: Vec<MediaView>,
    key: Option<(&str, &str)>,
    at: Millis,
) -> Result<Prepared, ApiError> {
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
        status_changed_at: at,
        created_at: at,
        error: None,
        broadcast_id: None,
    };
    let body = message_answer(&message, media)?;
    let idempotency = remembered(key, &body, at);
    let record = Record {
        key: message.partition_key(),
        value: encode(MessageEnvelope::Message { message: message.clone(), idempotency })?,
    };
    let answer = StoredAnswer { status: 202, body: body.into_bytes() };
    Ok(Prepared {
        topic: topics::messages_topic(message.priority),
        record,
        accepted: Accepted { answer, message: Some(message) },
    })
}

/// A broadcast with a reserved block of message ids, for the router to expand. Takes the
/// recipient list out of `input` (100,000 ids are not copied).
pub(crate) fn prepare_broadcast(
    sender: &User,
    input: &mut SendInput,
    key: Option<(&str, &str)>,
) -> Result<Prepared, ApiError> {
    let total = input.recipients.len();
    let broadcast = Broadcast {
        id: ids::new_id(),
        sender_id: sender.id.clone(),
        recipient_ids: std::mem::take(&mut input.recipients),
        content: input.content.clone(),
        media_ids: input.media_ids.clone(),
        priority: input.priority,
        first_message_id: ids::reserve(total as u32).to_string(),
        created_at: Millis::now(),
    };
    let accepted = BroadcastAccepted { id: broadcast.id.clone(), total: total as u64, created_at: broadcast.created_at };
    let body =
        serde_json::to_string(&accepted).map_err(|e| ApiError::internal(format!("cannot encode answer: {e}")))?;
    let idempotency = remembered(key, &body, broadcast.created_at);
    let record =
        Record { key: broadcast.id.clone(), value: encode(MessageEnvelope::Broadcast { broadcast, idempotency })? };
    let answer = StoredAnswer { status: 202, body: body.into_bytes() };
    Ok(Prepared { topic: topics::messages_topic(input.priority), record, accepted: Accepted { answer, message: None } })
}

impl Ingest {
    /// Appends records to `topic` in one call, retrying transient failures briefly; returns
    /// once they are durable. Nothing else was written, so a failure leaves nothing behind.
    pub(crate) async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), ApiError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.backends.log.append(topic, records.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if tries < APPEND_TRIES && error.kind() == esh_backends::ErrorKind::Transient => {
                    tracing::warn!(%error, topic, "log append failed, retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
