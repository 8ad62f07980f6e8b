//! What the log carries: the record types of the message, status and dead-letter topics
//! and their codec. No I/O.
//!
//! Records are encoded as JSON today; the Avro contracts (`*.avsc`) and the Confluent wire
//! format for Kafka-native integrators replace this codec behind the same functions.

use esh_common::{Broadcast, DeadLetter, Message, MessageRoute, Millis, Status, StatusChange};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A record of the `esh.messages.*` topics. Its durable append is the commit point of a
/// send: it carries everything the store projection writes, the sender's idempotency
/// answer included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageEnvelope {
    /// One message to deliver (one-way or chat), with status `sent`.
    Message {
        message: Message,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyRecord>,
    },
    /// A broadcast to expand into one message per recipient.
    Broadcast {
        broadcast: Broadcast,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyRecord>,
    },
}

/// The answer a send gave under an idempotency key, kept with the send so that repeats get
/// it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The key, scoped to its sender (`{sender}:{key}`).
    pub key: String,
    /// Hash of the request body (what makes two requests "the same").
    pub fingerprint: String,
    /// The HTTP status and body answered.
    pub status: u16,
    pub body: String,
    pub at: Millis,
}

/// A record of `esh.status.v1` (key: the message id): a receipt, a failure or a retry of a
/// message, durable before its caller is answered. Status only moves forward: consumers
/// ignore an event that does not move the message's status forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub message_id: String,
    pub status: Status,
    pub at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Delivery attempts made, for failures.
    #[serde(default)]
    pub attempts: u32,
    #[serde(flatten)]
    pub route: MessageRoute,
}

impl StatusEvent {
    /// `message` moved to `status` at `at`.
    pub fn of(message: &Message, status: Status, at: Millis) -> StatusEvent {
        StatusEvent { message_id: message.id.clone(), status, at, error: None, attempts: 0, route: message.route() }
    }

    /// The change the store applies.
    pub fn change(&self) -> StatusChange {
        StatusChange {
            message_id: self.message_id.clone(),
            status: self.status,
            at: self.at,
            error: self.error.clone(),
            attempts: self.attempts,
        }
    }
}

/// A record of `esh.dead-letters.v1`.
pub type DeadLetterEvent = DeadLetter;

#[derive(Debug, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct CodecError(String);

/// Encodes a record value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain types into memory cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a record value; malformed bytes are an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_common::{MessageType, Millis, Priority, Status};
    use proptest::prelude::*;

    fn message(content: String) -> Message {
        Message {
            id: esh_common::ids::new_id(),
            kind: MessageType::Chat,
            sender_id: "b1".into(),
            recipient_id: "m1".into(),
            conversation_id: Some("c1".into()),
            content,
            media_ids: vec![],
            priority: Priority::High,
            status: Status::Sent,
            status_changed_at: Millis(5),
            created_at: Millis(5),
            error: None,
            broadcast_id: None,
        }
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(content in "\\PC{0,200}") {
            let envelope = MessageEnvelope::Message { message: message(content), idempotency: None };
            prop_assert_eq!(decode::<MessageEnvelope>(&encode(&envelope)).unwrap(), envelope);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<MessageEnvelope>(&bytes);
        }
    }
}

/// What a Kafka-native send asks for: a record of `esh.ingest.v1` (key: the sender id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// The integrator's id of this request: the key of its outcome when it has no
    /// idempotency key, and its idempotency key then.
    pub request_id: String,
    /// The integrator producing the record; it must be allowed to act for `sender_id`.
    pub principal: String,
    pub sender_id: String,
    pub kind: SendRequestKind,
    /// One recipient for one-way and chat sends, 1..100,000 for broadcasts.
    pub recipient_ids: Vec<String>,
    pub content: String,
    #[serde(default)]
    pub priority: Option<esh_common::Priority>,
    #[serde(default)]
    pub media_ids: Vec<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Which HTTP send a [`SendRequest`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendRequestKind {
    OneWay,
    Chat,
    Broadcast,
}

/// The outcome of a [`SendRequest`], on `esh.status.v1` keyed by `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// The request's idempotency key, else its request id.
    pub key: String,
    pub sender_id: String,
    /// The accepted message (or broadcast) id; `None` when refused.
    pub message_id: Option<String>,
    /// Why it was refused; `None` when accepted.
    pub error: Option<OutcomeError>,
    pub at: Millis,
}

/// A refusal: the error code and message HTTP would answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeError {
    pub code: String,
    pub message: String,
}
