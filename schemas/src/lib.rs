//! What the log carries: the record types of the message, status and dead-letter topics
//! and their codec. No I/O.
//!
//! Records are encoded as JSON today; the Avro contracts (`*.avsc`) and the Confluent wire
//! format for Kafka-native integrators replace this codec behind the same functions.

use esh_common::{Broadcast, DeadLetter, Message, StatusApplied};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A record of the `esh.messages.*` topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageEnvelope {
    /// One message to deliver (one-way or chat); it is already in the store.
    Message { message: Message },
    /// A broadcast to expand into one message per recipient.
    Broadcast { broadcast: Broadcast },
}

/// A record of `esh.status.v1`: a status change that took effect.
pub type StatusEvent = StatusApplied;

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
            let envelope = MessageEnvelope::Message { message: message(content) };
            prop_assert_eq!(decode::<MessageEnvelope>(&encode(&envelope)).unwrap(), envelope);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<MessageEnvelope>(&bytes);
        }
    }
}
