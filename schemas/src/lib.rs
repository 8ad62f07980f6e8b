//! What the log carries: the record types of the message, status, push and dead-letter
//! topics and their codec. No I/O.
//!
//! Records are encoded as JSON today; the Avro contracts (`*.avsc`) and the Confluent wire
//! format for Kafka-native integrators replace this codec behind the same functions.

use esh_common::{Broadcast, DeadLetter, Message, MessageRoute, Millis, Priority, Status, StatusChange};
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

/// Characters of the content a push notification previews (Req 3.3).
pub const PREVIEW_CHARS: usize = 100;

/// A record of `esh.push.v1` (key: the recipient id): a message whose recipient had no
/// socket when the router handled it, for the push stage to notify (Req 3.2, 3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    pub recipient_id: String,
    pub message_id: String,
    /// The chat conversation to open; `None` for one-way messages.
    #[serde(default)]
    pub conversation_id: Option<String>,
    pub sender_id: String,
    /// The sender's display name when the message was routed.
    pub sender_name: String,
    /// The first [`PREVIEW_CHARS`] characters of the content, cut on a character boundary.
    pub preview: String,
    pub priority: Priority,
    pub created_at: Millis,
    /// Media attached to the message, by id: the notification says there are attachments
    /// without carrying them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_ids: Vec<String>,
}

impl PushRequest {
    /// The push request of `message`, sent by a user shown as `sender_name`.
    pub fn of(message: &Message, sender_name: &str) -> PushRequest {
        PushRequest {
            recipient_id: message.recipient_id.clone(),
            message_id: message.id.clone(),
            conversation_id: message.conversation_id.clone(),
            sender_id: message.sender_id.clone(),
            sender_name: sender_name.to_owned(),
            preview: preview(&message.content),
            priority: message.priority,
            created_at: message.created_at,
            media_ids: message.media_ids.clone(),
        }
    }
}

/// The first [`PREVIEW_CHARS`] characters (Unicode scalar values) of `content`.
pub fn preview(content: &str) -> String {
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => content[..end].to_owned(),
        None => content.to_owned(),
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

    #[test]
    fn previews_keep_100_multi_byte_characters_req_3_3() {
        let content = "é🙂".repeat(80);
        let cut = preview(&content);
        assert_eq!(cut.chars().count(), PREVIEW_CHARS);
        assert_eq!(cut, "é🙂".repeat(50));
        assert_eq!(preview("short"), "short");
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(content in "\\PC{0,200}") {
            let envelope = MessageEnvelope::Message { message: message(content), idempotency: None };
            prop_assert_eq!(decode::<MessageEnvelope>(&encode(&envelope)).unwrap(), envelope);
        }

        #[test]
        fn push_requests_round_trip_with_previews_cut_on_char_boundaries_req_3_3(content in "\\PC{0,300}") {
            let request = PushRequest::of(&message(content.clone()), "Acme");
            prop_assert!(content.starts_with(&request.preview));
            prop_assert_eq!(request.preview.chars().count(), content.chars().count().min(PREVIEW_CHARS));
            prop_assert_eq!(decode::<PushRequest>(&encode(&request)).unwrap(), request);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<MessageEnvelope>(&bytes);
            let _ = decode::<PushRequest>(&bytes);
        }
    }
}
