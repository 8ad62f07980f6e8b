//! What the log carries, in the model's terms: the records of the message and status
//! topics and the dead letters, and their conversion to and from the wire types of
//! `esh-schemas`, which own the format (Avro in the Confluent wire format). Every producer
//! and consumer of the log goes through [`encode`] and [`decode`] here.
//!
//! Decoding converts by moving the decoded strings and lists into the model: one decode,
//! no copies after it.

use esh_schemas as wire;
pub use esh_schemas::{CodecError, IngestOutcome, OutcomeError};

use crate::model::{
    Attempt, Broadcast, Channel, DeadLetter, Message, MessageRoute, MessageType, Priority, StatusChange,
};
use crate::status::Status;
use crate::time::Millis;

/// A model type that travels as a wire record.
pub trait LogRecord: Sized {
    type Wire: wire::WireRecord;
    fn into_wire(self) -> Self::Wire;
    fn from_wire(wire: Self::Wire) -> Result<Self, CodecError>;
}

/// Encodes a record value.
pub fn encode<T: LogRecord>(record: T) -> Result<Vec<u8>, CodecError> {
    wire::encode(&record.into_wire())
}

/// Decodes a record value; malformed bytes are an error, never a panic.
pub fn decode<T: LogRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    T::from_wire(wire::decode(bytes)?)
}

/// A record of the `esh.messages.*` topics. Its durable append is the commit point of a
/// send: it carries everything the store projection writes, the sender's idempotency
/// answer included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageEnvelope {
    /// One message to deliver (one-way or chat), with status `sent`.
    Message {
        message: Message,
        idempotency: Option<IdempotencyRecord>,
    },
    /// A broadcast to expand into one message per recipient.
    Broadcast {
        broadcast: Broadcast,
        idempotency: Option<IdempotencyRecord>,
    },
}

/// The answer a send gave under an idempotency key, kept with the send so that repeats get
/// it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A status change of a message on `esh.status.v1` (key: the message id): a receipt, a
/// failure or a retry, durable before its caller is answered. Status only moves forward:
/// consumers ignore an event that does not move the message's status forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    pub message_id: String,
    pub status: Status,
    pub at: Millis,
    pub error: Option<String>,
    /// Delivery attempts made, for failures.
    pub attempts: u32,
    pub route: MessageRoute,
}

impl StatusEvent {
    /// `message` moved to `status` at `at`.
    pub fn of(message: &Message, status: Status, at: Millis) -> StatusEvent {
        StatusEvent {
            message_id: message.id.clone(),
            status,
            at,
            error: None,
            attempts: 0,
            route: message.route(),
        }
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

/// A delivery attempt on `esh.status.v1` (key: the message id): the timeline entry, with
/// the message's sender and recipient so that a consumer of the topic can route it without
/// reading the store. The store projection writes the entry into the message's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub attempt: Attempt,
    pub sender_id: String,
    pub recipient_id: String,
}

/// A record of `esh.status.v1`: a status change, the outcome of a send consumed from
/// `esh.ingest.v1`, or a delivery attempt. Consumers skip the kinds they do not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusRecord {
    Status(StatusEvent),
    Outcome(IngestOutcome),
    Attempt(DeliveryAttempt),
}

impl StatusRecord {
    /// The status change, if this is one.
    pub fn into_status(self) -> Option<StatusEvent> {
        match self {
            StatusRecord::Status(event) => Some(event),
            StatusRecord::Outcome(_) | StatusRecord::Attempt(_) => None,
        }
    }

    /// The record's key: the message id, or an outcome's request key.
    pub fn key(&self) -> &str {
        match self {
            StatusRecord::Status(event) => &event.message_id,
            StatusRecord::Outcome(outcome) => &outcome.key,
            StatusRecord::Attempt(delivery) => &delivery.attempt.message_id,
        }
    }
}

/// A record that cannot be encoded is a fault of the platform, never of the request.
impl From<CodecError> for crate::error::ApiError {
    fn from(error: CodecError) -> Self {
        crate::error::ApiError::internal(format!("cannot encode a log record: {error}"))
    }
}

impl From<StatusEvent> for StatusRecord {
    fn from(event: StatusEvent) -> Self {
        StatusRecord::Status(event)
    }
}

impl From<DeliveryAttempt> for StatusRecord {
    fn from(delivery: DeliveryAttempt) -> Self {
        StatusRecord::Attempt(delivery)
    }
}

impl LogRecord for MessageEnvelope {
    type Wire = wire::MessageEnvelope;

    fn into_wire(self) -> wire::MessageEnvelope {
        let (payload, idempotency) = match self {
            MessageEnvelope::Message {
                message,
                idempotency,
            } => (wire::Payload::Message(message.into()), idempotency),
            MessageEnvelope::Broadcast {
                broadcast,
                idempotency,
            } => (wire::Payload::Broadcast(broadcast.into()), idempotency),
        };
        wire::MessageEnvelope {
            payload,
            idempotency: idempotency.map(Into::into),
        }
    }

    fn from_wire(wire: wire::MessageEnvelope) -> Result<Self, CodecError> {
        let idempotency = wire.idempotency.map(Into::into);
        Ok(match wire.payload {
            wire::Payload::Message(message) => MessageEnvelope::Message {
                message: message.into(),
                idempotency,
            },
            wire::Payload::Broadcast(broadcast) => MessageEnvelope::Broadcast {
                broadcast: broadcast.into(),
                idempotency,
            },
        })
    }
}

impl LogRecord for StatusRecord {
    type Wire = wire::StatusRecord;

    fn into_wire(self) -> wire::StatusRecord {
        match self {
            StatusRecord::Status(event) => wire::StatusRecord::Status(wire::StatusEvent {
                message_id: event.message_id,
                status: event.status.into(),
                at: event.at.0,
                error: event.error,
                attempts: event.attempts,
                sender_id: event.route.sender_id,
                recipient_id: event.route.recipient_id,
                conversation_id: event.route.conversation_id,
                broadcast_id: event.route.broadcast_id,
            }),
            StatusRecord::Outcome(outcome) => wire::StatusRecord::Outcome(outcome),
            StatusRecord::Attempt(DeliveryAttempt { attempt, sender_id, recipient_id }) => {
                wire::StatusRecord::Attempt(wire::DeliveryAttempt {
                    message_id: attempt.message_id,
                    attempt: attempt.attempt,
                    at: attempt.at.0,
                    channel: attempt.channel.into(),
                    outcome: attempt.outcome,
                    error: attempt.error,
                    sender_id,
                    recipient_id,
                })
            }
        }
    }

    fn from_wire(wire: wire::StatusRecord) -> Result<Self, CodecError> {
        Ok(match wire {
            wire::StatusRecord::Status(event) => StatusRecord::Status(StatusEvent {
                message_id: event.message_id,
                status: event.status.into(),
                at: Millis(event.at),
                error: event.error,
                attempts: event.attempts,
                route: MessageRoute {
                    sender_id: event.sender_id,
                    recipient_id: event.recipient_id,
                    conversation_id: event.conversation_id,
                    broadcast_id: event.broadcast_id,
                },
            }),
            wire::StatusRecord::Outcome(outcome) => StatusRecord::Outcome(outcome),
            wire::StatusRecord::Attempt(delivery) => StatusRecord::Attempt(DeliveryAttempt {
                attempt: Attempt {
                    message_id: delivery.message_id,
                    attempt: delivery.attempt,
                    at: Millis(delivery.at),
                    channel: delivery.channel.into(),
                    outcome: delivery.outcome,
                    error: delivery.error,
                },
                sender_id: delivery.sender_id,
                recipient_id: delivery.recipient_id,
            }),
        })
    }
}

/// Characters of the content a push notification previews (Req 3.3).
pub const PREVIEW_CHARS: usize = 100;

/// A record of `esh.push.v1` (key: the recipient id): a message whose recipient had no
/// socket when the router handled it, for the push stage to notify (Req 3.2, 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub recipient_id: String,
    pub message_id: String,
    /// The chat conversation to open; `None` for one-way messages.
    pub conversation_id: Option<String>,
    pub sender_id: String,
    /// The sender's display name when the message was routed.
    pub sender_name: String,
    /// The first [`PREVIEW_CHARS`] characters of the content, cut on a character boundary.
    pub preview: String,
    pub priority: Priority,
    pub created_at: Millis,
    /// Media attached to the message, by id.
    pub media_ids: Vec<String>,
    /// Empty: every active device of the recipient, from the first attempt. Otherwise the
    /// devices a stopping push stage had not finished, which alone are notified.
    pub devices: Vec<PendingDevice>,
    /// Another device of the message had a final answer before this request was re-queued:
    /// the message is not dead-lettered when `devices` run out of retries.
    pub settled_elsewhere: bool,
}

/// A device a re-queued [`PushRequest`] is still to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDevice {
    pub token: String,
    /// Attempts already made to it: the next one continues its retry schedule.
    pub attempts: u32,
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
            devices: Vec::new(),
            settled_elsewhere: false,
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

impl LogRecord for PushRequest {
    type Wire = wire::PushRequest;

    fn into_wire(self) -> wire::PushRequest {
        wire::PushRequest {
            recipient_id: self.recipient_id,
            message_id: self.message_id,
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            sender_display_name: self.sender_name,
            content_preview: self.preview,
            priority: self.priority.into(),
            created_at: self.created_at.0,
            media_ids: self.media_ids,
            devices: self
                .devices
                .into_iter()
                .map(|device| wire::PendingDevice { token: device.token, attempts: device.attempts })
                .collect(),
            settled_elsewhere: self.settled_elsewhere,
        }
    }

    fn from_wire(wire: wire::PushRequest) -> Result<Self, CodecError> {
        Ok(PushRequest {
            recipient_id: wire.recipient_id,
            message_id: wire.message_id,
            conversation_id: wire.conversation_id,
            sender_id: wire.sender_id,
            sender_name: wire.sender_display_name,
            preview: wire.content_preview,
            priority: wire.priority.into(),
            created_at: Millis(wire.created_at),
            media_ids: wire.media_ids,
            devices: wire
                .devices
                .into_iter()
                .map(|device| PendingDevice { token: device.token, attempts: device.attempts })
                .collect(),
            settled_elsewhere: wire.settled_elsewhere,
        })
    }
}

impl LogRecord for DeadLetter {
    type Wire = wire::DeadLetter;

    fn into_wire(self) -> wire::DeadLetter {
        wire::DeadLetter {
            message_id: self.message_id,
            attempts: self.attempts,
            error: self.error,
            failed_at: self.failed_at.0,
        }
    }

    fn from_wire(wire: wire::DeadLetter) -> Result<Self, CodecError> {
        Ok(DeadLetter {
            message_id: wire.message_id,
            attempts: wire.attempts,
            error: wire.error,
            failed_at: Millis(wire.failed_at),
        })
    }
}

impl From<Message> for wire::Message {
    fn from(m: Message) -> Self {
        wire::Message {
            id: m.id,
            kind: m.kind.into(),
            sender_id: m.sender_id,
            recipient_id: m.recipient_id,
            conversation_id: m.conversation_id,
            content: m.content,
            media_ids: m.media_ids,
            priority: m.priority.into(),
            status: m.status.into(),
            status_changed_at: m.status_changed_at.0,
            created_at: m.created_at.0,
            error: m.error,
            broadcast_id: m.broadcast_id,
        }
    }
}

impl From<wire::Message> for Message {
    fn from(m: wire::Message) -> Self {
        Message {
            id: m.id,
            kind: m.kind.into(),
            sender_id: m.sender_id,
            recipient_id: m.recipient_id,
            conversation_id: m.conversation_id,
            content: m.content,
            media_ids: m.media_ids,
            priority: m.priority.into(),
            status: m.status.into(),
            status_changed_at: Millis(m.status_changed_at),
            created_at: Millis(m.created_at),
            error: m.error,
            broadcast_id: m.broadcast_id,
        }
    }
}

impl From<Broadcast> for wire::Broadcast {
    fn from(b: Broadcast) -> Self {
        wire::Broadcast {
            id: b.id,
            sender_id: b.sender_id,
            recipient_ids: b.recipient_ids,
            content: b.content,
            media_ids: b.media_ids,
            priority: b.priority.into(),
            first_message_id: b.first_message_id,
            created_at: b.created_at.0,
        }
    }
}

impl From<wire::Broadcast> for Broadcast {
    fn from(b: wire::Broadcast) -> Self {
        Broadcast {
            id: b.id,
            sender_id: b.sender_id,
            recipient_ids: b.recipient_ids,
            content: b.content,
            media_ids: b.media_ids,
            priority: b.priority.into(),
            first_message_id: b.first_message_id,
            created_at: Millis(b.created_at),
        }
    }
}

impl From<IdempotencyRecord> for wire::IdempotencyRecord {
    fn from(r: IdempotencyRecord) -> Self {
        wire::IdempotencyRecord {
            key: r.key,
            fingerprint: r.fingerprint,
            status: r.status,
            body: r.body,
            at: r.at.0,
        }
    }
}

impl From<wire::IdempotencyRecord> for IdempotencyRecord {
    fn from(r: wire::IdempotencyRecord) -> Self {
        IdempotencyRecord {
            key: r.key,
            fingerprint: r.fingerprint,
            status: r.status,
            body: r.body,
            at: Millis(r.at),
        }
    }
}

/// The model's enums and the contracts' are the same words; each pair converts both ways.
macro_rules! same_symbols {
    ($model:ty, $wire:ty, $($variant:ident),+) => {
        impl From<$model> for $wire {
            fn from(value: $model) -> Self {
                match value {
                    $(<$model>::$variant => <$wire>::$variant),+
                }
            }
        }

        impl From<$wire> for $model {
            fn from(value: $wire) -> Self {
                match value {
                    $(<$wire>::$variant => <$model>::$variant),+
                }
            }
        }
    };
}

same_symbols!(MessageType, wire::MessageKind, OneWay, Chat);
same_symbols!(Priority, wire::Priority, High, Normal, Low);
same_symbols!(Status, wire::Status, Pending, Sent, Delivered, Read, Failed);
same_symbols!(Channel, wire::Channel, Socket, Push);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(content: String, priority: Priority, status: Status) -> Message {
        Message {
            id: crate::ids::new_id(),
            kind: MessageType::Chat,
            sender_id: "b1".into(),
            recipient_id: "m1".into(),
            conversation_id: Some("c1".into()),
            content,
            media_ids: vec!["media-1".into()],
            priority,
            status,
            status_changed_at: Millis(6),
            created_at: Millis(5),
            error: Some("e".into()),
            broadcast_id: None,
        }
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop_oneof![
            Just(Priority::High),
            Just(Priority::Normal),
            Just(Priority::Low)
        ]
    }

    fn status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(content in "\\PC{0,200}", priority in priority(), status in status(), keyed in any::<bool>()) {
            let idempotency = keyed.then(|| IdempotencyRecord {
                key: "b1:k".into(), fingerprint: "f".into(), status: 202, body: "{}".into(), at: Millis(9),
            });
            let envelope = MessageEnvelope::Message { message: message(content, priority, status), idempotency };
            prop_assert_eq!(decode::<MessageEnvelope>(&encode(envelope.clone()).unwrap()).unwrap(), envelope);
        }

        #[test]
        fn status_events_round_trip(status in status(), attempts in 0u32..1000, error in proptest::option::of("\\PC{0,50}")) {
            let mut event = StatusEvent::of(&message("x".into(), Priority::Low, Status::Sent), status, Millis(7));
            event.attempts = attempts;
            event.error = error;
            let record = StatusRecord::Status(event);
            prop_assert_eq!(decode::<StatusRecord>(&encode(record.clone()).unwrap()).unwrap(), record);
        }

        #[test]
        fn delivery_attempts_round_trip(attempt in 1u32..100, push: bool, error in proptest::option::of("\\PC{0,50}")) {
            let channel = if push { Channel::Push } else { Channel::Socket };
            let outcome = "timeout".to_owned();
            let attempt = Attempt { message_id: "m1".into(), attempt, at: Millis(7), channel, outcome, error };
            let delivery = DeliveryAttempt { attempt, sender_id: "b".into(), recipient_id: "u".into() };
            let record = StatusRecord::Attempt(delivery);
            prop_assert_eq!(decode::<StatusRecord>(&encode(record.clone()).unwrap()).unwrap(), record);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<MessageEnvelope>(&bytes);
            let _ = decode::<StatusRecord>(&bytes);
        }
    }

    #[test]
    fn broadcasts_and_dead_letters_round_trip() {
        let broadcast = Broadcast {
            id: "bc1".into(),
            sender_id: "b1".into(),
            recipient_ids: vec!["m1".into(), "m2".into()],
            content: "hello".into(),
            media_ids: vec![],
            priority: Priority::Low,
            first_message_id: crate::ids::new_id(),
            created_at: Millis(3),
        };
        let envelope = MessageEnvelope::Broadcast {
            broadcast,
            idempotency: None,
        };
        assert_eq!(
            decode::<MessageEnvelope>(&encode(envelope.clone()).unwrap()).unwrap(),
            envelope
        );
        let letter = DeadLetter {
            message_id: "m1".into(),
            attempts: 5,
            error: "ack timeout".into(),
            failed_at: Millis(4),
        };
        assert_eq!(
            decode::<DeadLetter>(&encode(letter.clone()).unwrap()).unwrap(),
            letter
        );
    }

    /// An attempt is keyed by its message, like a status change, and is not one.
    #[test]
    fn a_delivery_attempt_is_keyed_by_its_message_and_is_no_status_change() {
        let attempt = Attempt {
            message_id: "m1".into(),
            attempt: 1,
            at: Millis(3),
            channel: Channel::Socket,
            outcome: "delivered".into(),
            error: None,
        };
        let record = StatusRecord::from(DeliveryAttempt { attempt, sender_id: "b1".into(), recipient_id: "u1".into() });
        assert_eq!(record.key(), "m1");
        assert_eq!(record.into_status(), None);
    }

    /// Consumers of status changes see an ingest outcome as what it is, not as garbage.
    #[test]
    fn an_ingest_outcome_is_not_a_status_change() {
        let outcome = StatusRecord::Outcome(IngestOutcome {
            key: "k".into(),
            sender_id: "b1".into(),
            message_id: Some("m1".into()),
            error: None,
            at: 1,
        });
        let decoded = decode::<StatusRecord>(&encode(outcome.clone()).unwrap()).unwrap();
        assert_eq!(decoded, outcome);
        assert_eq!(decoded.into_status(), None);
    }
}
