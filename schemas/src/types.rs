//! The records of the contracts (`avro/*.avsc`) as Rust types, and their Avro values.
//! Times are milliseconds since the Unix epoch (`timestamp-millis`).

use apache_avro::types::Value;

use crate::avro::{branch, nullable, record, string, strings, timestamp, union, Fields, Symbols};
use crate::codec::{CodecError, WireRecord};
use crate::registry;

macro_rules! symbols {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $symbol:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The Avro symbol (the same word as in the JSON of the HTTP API).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $symbol),+
                }
            }
        }

        impl Symbols for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn symbol(self) -> &'static str {
                self.as_str()
            }
        }
    };
}

symbols!(MessageKind { OneWay = "one_way", Chat = "chat" });
symbols!(Priority { High = "high", Normal = "normal", Low = "low" });
symbols!(Status { Pending = "pending", Sent = "sent", Delivered = "delivered", Read = "read", Failed = "failed" });
symbols!(
    /// How a [`DeliveryAttempt`] reached for its recipient.
    Channel { Socket = "socket", Push = "push" }
);
symbols!(
    /// Which endpoint a [`SendRequest`] stands for.
    SendKind { OneWay = "one_way", Chat = "chat", Broadcast = "broadcast" }
);

/// `esh.v1.Message`: one message, as accepted (status `sent`) or as a broadcast expands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub kind: MessageKind,
    pub sender_id: String,
    pub recipient_id: String,
    pub conversation_id: Option<String>,
    pub content: String,
    pub media_ids: Vec<String>,
    pub priority: Priority,
    pub status: Status,
    pub status_changed_at: i64,
    pub created_at: i64,
    pub error: Option<String>,
    pub broadcast_id: Option<String>,
}

impl Message {
    fn to_avro(&self) -> Value {
        record([
            ("id", string(&self.id)),
            ("kind", self.kind.to_avro()),
            ("sender_id", string(&self.sender_id)),
            ("recipient_id", string(&self.recipient_id)),
            (
                "conversation_id",
                nullable(self.conversation_id.as_deref(), string),
            ),
            ("content", string(&self.content)),
            ("media_ids", strings(&self.media_ids)),
            ("priority", self.priority.to_avro()),
            ("status", self.status.to_avro()),
            ("status_changed_at", timestamp(self.status_changed_at)),
            ("created_at", timestamp(self.created_at)),
            ("error", nullable(self.error.as_deref(), string)),
            (
                "broadcast_id",
                nullable(self.broadcast_id.as_deref(), string),
            ),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(Message {
            id: f.string()?,
            kind: f.symbol()?,
            sender_id: f.string()?,
            recipient_id: f.string()?,
            conversation_id: f.nullable_string()?,
            content: f.string()?,
            media_ids: f.strings()?,
            priority: f.symbol()?,
            status: f.symbol()?,
            status_changed_at: f.timestamp()?,
            created_at: f.timestamp()?,
            error: f.nullable_string()?,
            broadcast_id: f.nullable_string()?,
        })
    }
}

/// `esh.v1.Broadcast`: the i-th recipient's message id is the i-th id of the block that
/// starts at `first_message_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub id: String,
    pub sender_id: String,
    pub recipient_ids: Vec<String>,
    pub content: String,
    pub media_ids: Vec<String>,
    pub priority: Priority,
    pub first_message_id: String,
    pub created_at: i64,
}

impl Broadcast {
    fn to_avro(&self) -> Value {
        record([
            ("id", string(&self.id)),
            ("sender_id", string(&self.sender_id)),
            ("recipient_ids", strings(&self.recipient_ids)),
            ("content", string(&self.content)),
            ("media_ids", strings(&self.media_ids)),
            ("priority", self.priority.to_avro()),
            ("first_message_id", string(&self.first_message_id)),
            ("created_at", timestamp(self.created_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(Broadcast {
            id: f.string()?,
            sender_id: f.string()?,
            recipient_ids: f.strings()?,
            content: f.string()?,
            media_ids: f.strings()?,
            priority: f.symbol()?,
            first_message_id: f.string()?,
            created_at: f.timestamp()?,
        })
    }
}

/// `esh.v1.IdempotencyRecord`: the answer a send gave under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key, scoped to its sender (`{sender}:{key}`).
    pub key: String,
    /// Hash of the request body (what makes two requests "the same").
    pub fingerprint: String,
    /// The HTTP status and body answered.
    pub status: u16,
    pub body: String,
    pub at: i64,
}

impl IdempotencyRecord {
    fn to_avro(&self) -> Value {
        record([
            ("key", string(&self.key)),
            ("fingerprint", string(&self.fingerprint)),
            ("status", Value::Int(i32::from(self.status))),
            ("body", string(&self.body)),
            ("at", timestamp(self.at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(IdempotencyRecord {
            key: f.string()?,
            fingerprint: f.string()?,
            status: u16::try_from(f.int()?).map_err(|_| CodecError::Shape("http status"))?,
            body: f.string()?,
            at: f.timestamp()?,
        })
    }
}

/// What a [`MessageEnvelope`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Message(Message),
    Broadcast(Broadcast),
}

/// `esh.v1.MessageEnvelope`, the value of `esh.messages.{high,normal,low}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEnvelope {
    pub payload: Payload,
    pub idempotency: Option<IdempotencyRecord>,
}

impl WireRecord for MessageEnvelope {
    const SCHEMA_ID: u32 = registry::MESSAGE_ENVELOPE_ID;

    fn to_avro(&self) -> Value {
        let payload = match &self.payload {
            Payload::Message(message) => branch(0, message.to_avro()),
            Payload::Broadcast(broadcast) => branch(1, broadcast.to_avro()),
        };
        record([
            ("payload", payload),
            (
                "idempotency",
                nullable(self.idempotency.as_ref(), IdempotencyRecord::to_avro),
            ),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        let payload = match union(f.next()?)? {
            (0, message) => Payload::Message(Message::from_avro(message)?),
            (1, broadcast) => Payload::Broadcast(Broadcast::from_avro(broadcast)?),
            _ => return Err(CodecError::Shape("payload")),
        };
        Ok(MessageEnvelope {
            payload,
            idempotency: f.nullable(IdempotencyRecord::from_avro)?,
        })
    }
}

/// `esh.v1.StatusEvent`: a status change of a message, with who it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    pub message_id: String,
    pub status: Status,
    pub at: i64,
    pub error: Option<String>,
    /// Delivery attempts made, for failures.
    pub attempts: u32,
    pub sender_id: String,
    pub recipient_id: String,
    pub conversation_id: Option<String>,
    pub broadcast_id: Option<String>,
}

impl StatusEvent {
    fn to_avro(&self) -> Value {
        record([
            ("message_id", string(&self.message_id)),
            ("status", self.status.to_avro()),
            ("at", timestamp(self.at)),
            ("error", nullable(self.error.as_deref(), string)),
            (
                "attempts",
                Value::Int(i32::try_from(self.attempts).unwrap_or(i32::MAX)),
            ),
            ("sender_id", string(&self.sender_id)),
            ("recipient_id", string(&self.recipient_id)),
            (
                "conversation_id",
                nullable(self.conversation_id.as_deref(), string),
            ),
            (
                "broadcast_id",
                nullable(self.broadcast_id.as_deref(), string),
            ),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(StatusEvent {
            message_id: f.string()?,
            status: f.symbol()?,
            at: f.timestamp()?,
            error: f.nullable_string()?,
            attempts: u32::try_from(f.int()?).map_err(|_| CodecError::Shape("attempts"))?,
            sender_id: f.string()?,
            recipient_id: f.string()?,
            conversation_id: f.nullable_string()?,
            broadcast_id: f.nullable_string()?,
        })
    }
}

/// `esh.v1.OutcomeError`: the code and message of the contract's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeError {
    pub code: String,
    pub message: String,
}

/// `esh.v1.IngestOutcome`: what became of a [`SendRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The request's idempotency key, or its request id when it has none.
    pub key: String,
    pub sender_id: String,
    /// The accepted message (the broadcast id for a broadcast); `None` on refusal.
    pub message_id: Option<String>,
    /// Why it was refused; `None` on success.
    pub error: Option<OutcomeError>,
    pub at: i64,
}

impl IngestOutcome {
    fn to_avro(&self) -> Value {
        let error =
            |e: &OutcomeError| record([("code", string(&e.code)), ("message", string(&e.message))]);
        record([
            ("key", string(&self.key)),
            ("sender_id", string(&self.sender_id)),
            ("message_id", nullable(self.message_id.as_deref(), string)),
            ("error", nullable(self.error.as_ref(), error)),
            ("at", timestamp(self.at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        let error = |value: Value| {
            let mut e = Fields::of(value)?;
            Ok(OutcomeError {
                code: e.string()?,
                message: e.string()?,
            })
        };
        Ok(IngestOutcome {
            key: f.string()?,
            sender_id: f.string()?,
            message_id: f.nullable_string()?,
            error: f.nullable(error)?,
            at: f.timestamp()?,
        })
    }
}

/// `esh.v1.DeliveryAttempt`: one delivery attempt of a message and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub message_id: String,
    /// 1 for the first send; push attempts are numbered per device.
    pub attempt: u32,
    pub at: i64,
    pub channel: Channel,
    /// `delivered`, `timeout`, `disconnected` (socket); the provider's answer (push).
    pub outcome: String,
    pub error: Option<String>,
    pub sender_id: String,
    pub recipient_id: String,
}

impl DeliveryAttempt {
    fn to_avro(&self) -> Value {
        record([
            ("message_id", string(&self.message_id)),
            ("attempt", Value::Int(i32::try_from(self.attempt).unwrap_or(i32::MAX))),
            ("at", timestamp(self.at)),
            ("channel", self.channel.to_avro()),
            ("outcome", string(&self.outcome)),
            ("error", nullable(self.error.as_deref(), string)),
            ("sender_id", string(&self.sender_id)),
            ("recipient_id", string(&self.recipient_id)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(DeliveryAttempt {
            message_id: f.string()?,
            attempt: u32::try_from(f.int()?).map_err(|_| CodecError::Shape("attempt"))?,
            at: f.timestamp()?,
            channel: f.symbol()?,
            outcome: f.string()?,
            error: f.nullable_string()?,
            sender_id: f.string()?,
            recipient_id: f.string()?,
        })
    }
}

/// The value of `esh.status.v1`: the union `[StatusEvent, IngestOutcome, DeliveryAttempt]`
/// (the last branch since version 2). Consumers take the branches they care about and skip
/// the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusRecord {
    Status(StatusEvent),
    Outcome(IngestOutcome),
    Attempt(DeliveryAttempt),
}

impl WireRecord for StatusRecord {
    const SCHEMA_ID: u32 = registry::STATUS_ID;

    fn to_avro(&self) -> Value {
        match self {
            StatusRecord::Status(event) => branch(0, event.to_avro()),
            StatusRecord::Outcome(outcome) => branch(1, outcome.to_avro()),
            StatusRecord::Attempt(attempt) => branch(2, attempt.to_avro()),
        }
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        match union(value)? {
            (0, event) => StatusEvent::from_avro(event).map(StatusRecord::Status),
            (1, outcome) => IngestOutcome::from_avro(outcome).map(StatusRecord::Outcome),
            (2, attempt) => DeliveryAttempt::from_avro(attempt).map(StatusRecord::Attempt),
            _ => Err(CodecError::Shape("status record")),
        }
    }
}

/// `esh.v1.DeadLetter`, the value of `esh.dead-letters.v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub attempts: u32,
    pub error: String,
    pub failed_at: i64,
}

impl WireRecord for DeadLetter {
    const SCHEMA_ID: u32 = registry::DEAD_LETTER_ID;

    fn to_avro(&self) -> Value {
        record([
            ("message_id", string(&self.message_id)),
            (
                "attempts",
                Value::Int(i32::try_from(self.attempts).unwrap_or(i32::MAX)),
            ),
            ("error", string(&self.error)),
            ("failed_at", timestamp(self.failed_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(DeadLetter {
            message_id: f.string()?,
            attempts: u32::try_from(f.int()?).map_err(|_| CodecError::Shape("attempts"))?,
            error: f.string()?,
            failed_at: f.timestamp()?,
        })
    }
}

/// `esh.v1.PushRequest`, the value of `esh.push.v1`: a notification for an offline recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub recipient_id: String,
    pub message_id: String,
    pub conversation_id: Option<String>,
    pub sender_id: String,
    pub sender_display_name: String,
    pub content_preview: String,
    pub priority: Priority,
    pub created_at: i64,
    pub media_ids: Vec<String>,
}

impl WireRecord for PushRequest {
    const SCHEMA_ID: u32 = registry::PUSH_REQUEST_ID;

    fn to_avro(&self) -> Value {
        record([
            ("recipient_id", string(&self.recipient_id)),
            ("message_id", string(&self.message_id)),
            (
                "conversation_id",
                nullable(self.conversation_id.as_deref(), string),
            ),
            ("sender_id", string(&self.sender_id)),
            ("sender_display_name", string(&self.sender_display_name)),
            ("content_preview", string(&self.content_preview)),
            ("priority", self.priority.to_avro()),
            ("created_at", timestamp(self.created_at)),
            ("media_ids", strings(&self.media_ids)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(PushRequest {
            recipient_id: f.string()?,
            message_id: f.string()?,
            conversation_id: f.nullable_string()?,
            sender_id: f.string()?,
            sender_display_name: f.string()?,
            content_preview: f.string()?,
            priority: f.symbol()?,
            created_at: f.timestamp()?,
            media_ids: f.strings()?,
        })
    }
}

/// `esh.v1.SendRequest`, the value of `esh.ingest.v1`: a send made over Kafka, one shape
/// for the three send endpoints (`kind`); `recipient_ids` holds the one recipient of a
/// one-way or chat message, or a broadcast's recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Chosen by the integrator; the outcome's key when there is no idempotency key.
    pub request_id: String,
    /// The integrator producing the record, which must be allowed to act for `sender_id`.
    pub principal: String,
    pub idempotency_key: Option<String>,
    pub kind: SendKind,
    pub sender_id: String,
    pub recipient_ids: Vec<String>,
    pub content: String,
    pub media_ids: Vec<String>,
    /// `None` for the endpoint's default.
    pub priority: Option<Priority>,
}

impl SendRequest {
    /// The key of this request's [`IngestOutcome`].
    pub fn outcome_key(&self) -> &str {
        self.idempotency_key.as_deref().unwrap_or(&self.request_id)
    }
}

impl WireRecord for SendRequest {
    const SCHEMA_ID: u32 = registry::SEND_REQUEST_ID;

    fn to_avro(&self) -> Value {
        record([
            ("request_id", string(&self.request_id)),
            ("principal", string(&self.principal)),
            (
                "idempotency_key",
                nullable(self.idempotency_key.as_deref(), string),
            ),
            ("kind", self.kind.to_avro()),
            ("sender_id", string(&self.sender_id)),
            ("recipient_ids", strings(&self.recipient_ids)),
            ("content", string(&self.content)),
            ("media_ids", strings(&self.media_ids)),
            ("priority", nullable(self.priority, Priority::to_avro)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::of(value)?;
        Ok(SendRequest {
            request_id: f.string()?,
            principal: f.string()?,
            idempotency_key: f.nullable_string()?,
            kind: f.symbol()?,
            sender_id: f.string()?,
            recipient_ids: f.strings()?,
            content: f.string()?,
            media_ids: f.strings()?,
            priority: f.nullable(Priority::from_avro)?,
        })
    }
}
