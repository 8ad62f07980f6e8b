//! The records of the contracts (`avro/*.avsc`) as Rust types: each with its fields in
//! schema order for the codec (`impl Datum`: written, and read from bytes or from a
//! resolved value) and its Avro value (`to_avro`, what apache-avro would write, the
//! reference of the tests). Times are milliseconds since the Unix epoch (`timestamp-millis`).

use apache_avro::types::Value;

use crate::avro::{branch, nullable, record, string, strings, timestamp};
use crate::codec::{CodecError, WireRecord};
use crate::datum::{Datum, Source, Symbols, Writer};
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
}

impl Datum for Message {
    fn write(&self, out: &mut Writer) {
        out.string(&self.id);
        out.symbol(self.kind);
        out.string(&self.sender_id);
        out.string(&self.recipient_id);
        out.nullable_string(self.conversation_id.as_deref());
        out.string(&self.content);
        out.strings(&self.media_ids);
        out.symbol(self.priority);
        out.symbol(self.status);
        out.timestamp(self.status_changed_at);
        out.timestamp(self.created_at);
        out.nullable_string(self.error.as_deref());
        out.nullable_string(self.broadcast_id.as_deref());
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
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
}

impl Datum for Broadcast {
    fn write(&self, out: &mut Writer) {
        out.string(&self.id);
        out.string(&self.sender_id);
        out.strings(&self.recipient_ids);
        out.string(&self.content);
        out.strings(&self.media_ids);
        out.symbol(self.priority);
        out.string(&self.first_message_id);
        out.timestamp(self.created_at);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
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
}

impl Datum for IdempotencyRecord {
    fn write(&self, out: &mut Writer) {
        out.string(&self.key);
        out.string(&self.fingerprint);
        out.int(i32::from(self.status));
        out.string(&self.body);
        out.timestamp(self.at);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            Ok(IdempotencyRecord {
                key: f.string()?,
                fingerprint: f.string()?,
                status: f.int_as("http status")?,
                body: f.string()?,
                at: f.timestamp()?,
            })
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
}

impl Datum for MessageEnvelope {
    fn write(&self, out: &mut Writer) {
        match &self.payload {
            Payload::Message(message) => {
                out.branch(0);
                message.write(out);
            }
            Payload::Broadcast(broadcast) => {
                out.branch(1);
                broadcast.write(out);
            }
        }
        out.nullable(self.idempotency.as_ref(), |out, record| record.write(out));
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            // `union` hands over branch 0 or 1 only.
            let payload = f.union(2, |f, branch| match branch {
                0 => Message::read(f).map(Payload::Message),
                _ => Broadcast::read(f).map(Payload::Broadcast),
            })?;
            Ok(MessageEnvelope { payload, idempotency: f.nullable(IdempotencyRecord::read)? })
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
}

impl Datum for StatusEvent {
    fn write(&self, out: &mut Writer) {
        out.string(&self.message_id);
        out.symbol(self.status);
        out.timestamp(self.at);
        out.nullable_string(self.error.as_deref());
        out.int(i32::try_from(self.attempts).unwrap_or(i32::MAX));
        out.string(&self.sender_id);
        out.string(&self.recipient_id);
        out.nullable_string(self.conversation_id.as_deref());
        out.nullable_string(self.broadcast_id.as_deref());
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            Ok(StatusEvent {
                message_id: f.string()?,
                status: f.symbol()?,
                at: f.timestamp()?,
                error: f.nullable_string()?,
                attempts: f.int_as("attempts")?,
                sender_id: f.string()?,
                recipient_id: f.string()?,
                conversation_id: f.nullable_string()?,
                broadcast_id: f.nullable_string()?,
            })
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
}

impl Datum for OutcomeError {
    fn write(&self, out: &mut Writer) {
        out.string(&self.code);
        out.string(&self.message);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| Ok(OutcomeError { code: f.string()?, message: f.string()? }))
    }
}

impl Datum for IngestOutcome {
    fn write(&self, out: &mut Writer) {
        out.string(&self.key);
        out.string(&self.sender_id);
        out.nullable_string(self.message_id.as_deref());
        out.nullable(self.error.as_ref(), |out, error| error.write(out));
        out.timestamp(self.at);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            Ok(IngestOutcome {
                key: f.string()?,
                sender_id: f.string()?,
                message_id: f.nullable_string()?,
                error: f.nullable(OutcomeError::read)?,
                at: f.timestamp()?,
            })
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

}

impl Datum for DeliveryAttempt {
    fn write(&self, out: &mut Writer) {
        out.string(&self.message_id);
        out.int(i32::try_from(self.attempt).unwrap_or(i32::MAX));
        out.timestamp(self.at);
        out.symbol(self.channel);
        out.string(&self.outcome);
        out.nullable_string(self.error.as_deref());
        out.string(&self.sender_id);
        out.string(&self.recipient_id);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            Ok(DeliveryAttempt {
                message_id: f.string()?,
                attempt: f.int_as("attempt")?,
                at: f.timestamp()?,
                channel: f.symbol()?,
                outcome: f.string()?,
                error: f.nullable_string()?,
                sender_id: f.string()?,
                recipient_id: f.string()?,
            })
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
}

impl Datum for StatusRecord {
    fn write(&self, out: &mut Writer) {
        match self {
            StatusRecord::Status(event) => {
                out.branch(0);
                event.write(out);
            }
            StatusRecord::Outcome(outcome) => {
                out.branch(1);
                outcome.write(out);
            }
            StatusRecord::Attempt(attempt) => {
                out.branch(2);
                attempt.write(out);
            }
        }
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        // `union` hands over branch 0, 1 or 2 only.
        input.union(3, |input, branch| match branch {
            0 => StatusEvent::read(input).map(StatusRecord::Status),
            1 => IngestOutcome::read(input).map(StatusRecord::Outcome),
            _ => DeliveryAttempt::read(input).map(StatusRecord::Attempt),
        })
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
}

impl Datum for DeadLetter {
    fn write(&self, out: &mut Writer) {
        out.string(&self.message_id);
        out.int(i32::try_from(self.attempts).unwrap_or(i32::MAX));
        out.string(&self.error);
        out.timestamp(self.failed_at);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            Ok(DeadLetter {
                message_id: f.string()?,
                attempts: f.int_as("attempts")?,
                error: f.string()?,
                failed_at: f.timestamp()?,
            })
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
    /// Since version 2; empty in a record of version 1.
    pub devices: Vec<PendingDevice>,
    /// Since version 2; false in a record of version 1.
    pub settled_elsewhere: bool,
}

/// `esh.v1.PendingDevice`: a device a re-queued [`PushRequest`] is still to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDevice {
    pub token: String,
    /// Attempts already made to it.
    pub attempts: u32,
}

impl PendingDevice {
    fn to_avro(&self) -> Value {
        record([
            ("token", string(&self.token)),
            ("attempts", Value::Int(i32::try_from(self.attempts).unwrap_or(i32::MAX))),
        ])
    }
}

impl Datum for PendingDevice {
    fn write(&self, out: &mut Writer) {
        out.string(&self.token);
        out.int(i32::try_from(self.attempts).unwrap_or(i32::MAX));
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| Ok(PendingDevice { token: f.string()?, attempts: f.int_as("attempts")? }))
    }
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
            ("devices", Value::Array(self.devices.iter().map(PendingDevice::to_avro).collect())),
            ("settled_elsewhere", Value::Boolean(self.settled_elsewhere)),
        ])
    }
}

impl Datum for PushRequest {
    fn write(&self, out: &mut Writer) {
        out.string(&self.recipient_id);
        out.string(&self.message_id);
        out.nullable_string(self.conversation_id.as_deref());
        out.string(&self.sender_id);
        out.string(&self.sender_display_name);
        out.string(&self.content_preview);
        out.symbol(self.priority);
        out.timestamp(self.created_at);
        out.strings(&self.media_ids);
        out.array(&self.devices, |out, device| device.write(out));
        out.boolean(self.settled_elsewhere);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
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
                devices: f.array(PendingDevice::read)?,
                settled_elsewhere: f.boolean()?,
            })
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
}

impl Datum for SendRequest {
    fn write(&self, out: &mut Writer) {
        out.string(&self.request_id);
        out.string(&self.principal);
        out.nullable_string(self.idempotency_key.as_deref());
        out.symbol(self.kind);
        out.string(&self.sender_id);
        out.strings(&self.recipient_ids);
        out.string(&self.content);
        out.strings(&self.media_ids);
        out.nullable(self.priority, Writer::symbol);
    }

    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError> {
        input.record(|f| {
            Ok(SendRequest {
                request_id: f.string()?,
                principal: f.string()?,
                idempotency_key: f.nullable_string()?,
                kind: f.symbol()?,
                sender_id: f.string()?,
                recipient_ids: f.strings()?,
                content: f.string()?,
                media_ids: f.strings()?,
                priority: f.nullable(|f| f.symbol())?,
            })
        })
    }
}
