//! The Confluent wire format: byte 0 is the magic byte `0`, bytes 1..5 the writer's schema
//! id (big-endian), the rest one Avro binary datum. A record whose id is an earlier version
//! of the reader's subject is resolved to the current schema (Avro schema resolution:
//! fields it lacks take their defaults).
//!
//! Records of the current schema, nearly all of them, are written and read directly from
//! the record types (`datum.rs`): the same bytes as apache-avro writes, and the same
//! records and errors as it reads. A record of an earlier version goes through apache-avro
//! ([`decode_by_value`]): decoded into a `Value`, resolved, then read from the value.
//!
//! Decoding untrusted bytes never panics, bytes left after the datum are refused, a datum
//! cut short is refused ([`CodecError::Truncated`]), and no length prefix in them makes
//! the decoder reserve room for more than [`MAX_ALLOCATION_BYTES`] bytes or items.

use apache_avro::types::Value;

use crate::avro::ValueReader;
use crate::datum::{Datum, Reader, Writer};
use crate::registry;

/// The name of this format, for stores of records that must tell it from another (the
/// embedded log writes it beside its journal).
pub const WIRE_FORMAT: &str = "avro-confluent-1";
/// The first byte of every record.
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_BYTES: usize = 5;
/// The longest string and the most items of a list a decoder accepts (no field of a record
/// comes near it: a broadcast's 100,000 recipients and a 64 KiB answer kept for
/// idempotency included). Set for the whole process before the first record is read.
pub const MAX_ALLOCATION_BYTES: usize = 2 << 20;

/// A record type of the contracts (only this crate's types are: they are written and read
/// through their fields, `datum.rs`).
pub trait WireRecord: Datum {
    /// The schema id it is written with: the latest version of its subjects.
    const SCHEMA_ID: u32;
    /// Its Avro value under that schema: what apache-avro writes for it, the reference the
    /// codec's own writer is checked against.
    fn to_avro(&self) -> Value;
    /// The record from a value of that schema.
    fn from_avro(value: Value) -> Result<Self, CodecError> {
        Self::read(&mut ValueReader::new(value))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record of {0} bytes is shorter than the wire-format header")]
    TooShort(usize),
    #[error("record starts with {0:#04x}, not the wire-format magic byte 0")]
    BadMagic(u8),
    #[error("unknown schema id {0}")]
    UnknownSchema(u32),
    #[error("schema id {found} is not a version of the subject of schema {expected}")]
    WrongSchema { found: u32, expected: u32 },
    #[error("invalid avro: {0}")]
    Avro(String),
    #[error("{0} bytes after the avro datum")]
    TrailingBytes(usize),
    #[error("the avro datum ends early")]
    Truncated,
    #[error("value does not have the shape of the schema: expected {0}")]
    Shape(&'static str),
}

/// The limit on what a length prefix may claim. apache-avro keeps the first limit it is
/// given for the process, and the codec's own reader follows the same.
fn allocation_limit() -> usize {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES)
}

/// The schema `id`, parsed; the allocation limit is set before the first record is read.
fn schema(id: u32) -> Result<&'static apache_avro::Schema, CodecError> {
    allocation_limit();
    registry::parsed(id).ok_or(CodecError::UnknownSchema(id))
}

/// Encodes `record` in the wire format.
pub fn encode<T: WireRecord>(record: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(MAGIC);
    bytes.extend_from_slice(&T::SCHEMA_ID.to_be_bytes());
    let mut out = Writer::after(bytes);
    record.write(&mut out);
    Ok(out.into_bytes())
}

/// The schema id a record was written with.
pub fn schema_id(bytes: &[u8]) -> Result<u32, CodecError> {
    let header: [u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(CodecError::TooShort(bytes.len()))?;
    if header[0] != MAGIC {
        return Err(CodecError::BadMagic(header[0]));
    }
    Ok(u32::from_be_bytes([
        header[1], header[2], header[3], header[4],
    ]))
}

/// Decodes a record written with `T`'s schema or an earlier version of its subject.
pub fn decode<T: WireRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    let (id, datum) = datum_of::<T>(bytes)?;
    if id == T::SCHEMA_ID {
        Reader::read_all(datum, allocation_limit())
    } else {
        read_value(id, datum)
    }
}

/// Decodes as [`decode`] does, but always through apache-avro's `Value`: the path of
/// records of earlier versions, and the reference the codec's own reader is checked against.
pub fn decode_by_value<T: WireRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    let (id, datum) = datum_of::<T>(bytes)?;
    read_value(id, datum)
}

/// The writer's schema id and the datum of a record of `T`'s subject.
fn datum_of<T: WireRecord>(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    let id = schema_id(bytes)?;
    if registry::schema_text(id).is_none() {
        return Err(CodecError::UnknownSchema(id));
    }
    if id != T::SCHEMA_ID && !registry::same_subject(id, T::SCHEMA_ID) {
        return Err(CodecError::WrongSchema { found: id, expected: T::SCHEMA_ID });
    }
    Ok((id, &bytes[HEADER_BYTES..]))
}

/// `T` from a datum of schema `id` through apache-avro, resolved to `T`'s schema when `id`
/// is an earlier version.
fn read_value<T: WireRecord>(id: u32, mut datum: &[u8]) -> Result<T, CodecError> {
    let reader = if id == T::SCHEMA_ID { None } else { Some(schema(T::SCHEMA_ID)?) };
    let value = read_datum(schema(id)?, reader, &mut datum)?;
    if !datum.is_empty() {
        return Err(CodecError::TrailingBytes(datum.len()));
    }
    T::from_avro(value)
}

/// One datum of `writer`, resolved to `reader` when given. A datum cut short is refused:
/// apache-avro reads a union index from an exhausted reader as branch 0 (null), so
/// without this check a record cut before its trailing optional fields would decode as a
/// different record.
pub(crate) fn read_datum(
    writer: &apache_avro::Schema,
    reader: Option<&apache_avro::Schema>,
    datum: &mut &[u8],
) -> Result<Value, CodecError> {
    let mut watched = EndWatch { rest: datum, hit_end: false };
    let value = apache_avro::from_avro_datum(writer, &mut watched, reader);
    if watched.hit_end {
        return Err(CodecError::Truncated);
    }
    value.map_err(|e| CodecError::Avro(e.to_string()))
}

/// A reader over the datum that remembers whether a read asked for bytes past its end.
struct EndWatch<'a, 'b> {
    rest: &'a mut &'b [u8],
    hit_end: bool,
}

impl std::io::Read for EndWatch<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !buf.is_empty() && self.rest.len() < buf.len() {
            self.hit_end = true;
        }
        self.rest.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Channel, DeliveryAttempt, Priority, PushRequest, Status, StatusEvent, StatusRecord};
    use apache_avro::schema_compatibility::SchemaCompatibility;
    use apache_avro::Schema;

    /// An earlier form of the status topic's value: a `StatusEvent` alone, without the
    /// fields added since (each with a default), as the evolution rules allow.
    const EARLIER_STATUS: &str = r#"{
        "type": "record", "name": "StatusEvent", "namespace": "esh.v1",
        "fields": [
            {"name": "message_id", "type": "string"},
            {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["pending", "sent", "delivered", "read", "failed"]}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "sender_id", "type": "string"},
            {"name": "recipient_id", "type": "string"}
        ]
    }"#;

    #[test]
    fn a_record_of_an_earlier_version_decodes_with_the_current_schema() {
        let earlier = Schema::parse_str(EARLIER_STATUS).unwrap();
        let current = schema(registry::STATUS_ID).unwrap();
        assert!(SchemaCompatibility::can_read(&earlier, current).is_ok());
        let written = apache_avro::to_avro_datum(
            &earlier,
            crate::avro::record([
                ("message_id", Value::String("m1".into())),
                ("status", Value::Enum(2, "delivered".into())),
                ("at", Value::TimestampMillis(7)),
                ("sender_id", Value::String("b1".into())),
                ("recipient_id", Value::String("u1".into())),
            ]),
        )
        .unwrap();
        let value = read_datum(&earlier, Some(current), &mut written.as_slice()).unwrap();
        let expected = StatusEvent {
            message_id: "m1".into(),
            status: Status::Delivered,
            at: 7,
            error: None,
            attempts: 0,
            sender_id: "b1".into(),
            recipient_id: "u1".into(),
            conversation_id: None,
            broadcast_id: None,
        };
        assert_eq!(
            StatusRecord::from_avro(value).unwrap(),
            StatusRecord::Status(expected)
        );
    }

    /// The rule the test above relies on: dropping a field without a default breaks readers.
    #[test]
    fn a_new_field_without_a_default_cannot_read_earlier_records() {
        let earlier = Schema::parse_str(EARLIER_STATUS).unwrap();
        let stricter = Schema::parse_str(&EARLIER_STATUS.replace(
            r#"{"name": "recipient_id", "type": "string"}"#,
            r#"{"name": "recipient_id", "type": "string"}, {"name": "extra", "type": "string"}"#,
        ))
        .unwrap();
        assert!(SchemaCompatibility::can_read(&earlier, &stricter).is_err());
    }

    fn event() -> StatusRecord {
        StatusRecord::Status(StatusEvent {
            message_id: "m1".into(),
            status: Status::Read,
            at: 7,
            error: None,
            attempts: 0,
            sender_id: "b1".into(),
            recipient_id: "u1".into(),
            conversation_id: Some("c1".into()),
            broadcast_id: None,
        })
    }

    fn attempt() -> StatusRecord {
        StatusRecord::Attempt(DeliveryAttempt {
            message_id: "m1".into(),
            attempt: 2,
            at: 8,
            channel: Channel::Push,
            outcome: "unavailable".into(),
            error: Some("android: provider timed out".into()),
            sender_id: "b1".into(),
            recipient_id: "u1".into(),
        })
    }

    /// Version 2 of the status subject appended `DeliveryAttempt` to version 1's union: a
    /// record written with version 1 (id 2) decodes as before.
    #[test]
    fn a_status_record_of_version_1_decodes_with_version_2() {
        let (v1, v2) = (schema(registry::STATUS_V1_ID).unwrap(), schema(registry::STATUS_ID).unwrap());
        assert!(SchemaCompatibility::can_read(v1, v2).is_ok());
        let mut bytes = vec![MAGIC];
        bytes.extend_from_slice(&registry::STATUS_V1_ID.to_be_bytes());
        bytes.extend(apache_avro::to_avro_datum(v1, event().to_avro()).unwrap());
        assert_eq!(decode::<StatusRecord>(&bytes).unwrap(), event());
    }

    /// Version 2 of the push subject added the pending devices of a re-queued request: a
    /// request written with version 1 (id 3) decodes as one for every device, none settled.
    #[test]
    fn a_push_request_of_version_1_decodes_with_version_2() {
        let v1 = schema(registry::PUSH_REQUEST_V1_ID).unwrap();
        assert!(SchemaCompatibility::can_read(v1, schema(registry::PUSH_REQUEST_ID).unwrap()).is_ok());
        let request = PushRequest {
            recipient_id: "u1".into(),
            message_id: "m1".into(),
            conversation_id: None,
            sender_id: "b1".into(),
            sender_display_name: "Acme".into(),
            content_preview: "hi".into(),
            priority: Priority::High,
            created_at: 7,
            media_ids: vec!["md1".into()],
            devices: Vec::new(),
            settled_elsewhere: false,
        };
        let Value::Record(mut fields) = request.to_avro() else { unreachable!() };
        fields.truncate(9);
        let mut bytes = vec![MAGIC];
        bytes.extend_from_slice(&registry::PUSH_REQUEST_V1_ID.to_be_bytes());
        bytes.extend(apache_avro::to_avro_datum(v1, Value::Record(fields)).unwrap());
        assert_eq!(decode::<PushRequest>(&bytes).unwrap(), request);
    }

    /// What a consumer pinned to version 1 sees of version 2's records (docs/topics.md):
    /// status events and outcomes resolve to its schema unchanged; an attempt has no branch
    /// there, so resolving it is an error (Avro schema resolution), which it must skip.
    #[test]
    fn a_reader_pinned_to_version_1_reads_version_2_but_its_attempts() {
        let (v1, v2) = (schema(registry::STATUS_V1_ID).unwrap(), schema(registry::STATUS_ID).unwrap());
        assert!(SchemaCompatibility::can_read(v2, v1).is_err(), "version 1 cannot read every version 2 record");
        let written = apache_avro::to_avro_datum(v2, event().to_avro()).unwrap();
        let value = read_datum(v2, Some(v1), &mut written.as_slice()).unwrap();
        assert_eq!(StatusRecord::from_avro(value).unwrap(), event());
        let written = apache_avro::to_avro_datum(v2, attempt().to_avro()).unwrap();
        assert!(read_datum(v2, Some(v1), &mut written.as_slice()).is_err());
    }
}
