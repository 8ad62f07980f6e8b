//! The wire format: round trips of every record type, the codec against apache-avro (the
//! same bytes as it writes, the same records and refusals as it reads, garbage included),
//! the Confluent framing, and the registry's pinned ids.

use apache_avro::Schema;
use esh_schemas::codec::{decode_by_value, schema_id, HEADER_BYTES, MAGIC, MAX_ALLOCATION_BYTES};
use esh_schemas::registry::{self, REGISTRATIONS};
use esh_schemas::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::High),
        Just(Priority::Normal),
        Just(Priority::Low)
    ]
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Pending),
        Just(Status::Sent),
        Just(Status::Delivered),
        Just(Status::Read),
        Just(Status::Failed)
    ]
}

prop_compose! {
    fn message()(
        id in text(), chat in any::<bool>(), sender_id in text(), recipient_id in text(),
        conversation_id in option::of(text()), content in "\\PC{0,300}", media_ids in vec(text(), 0..3),
        priority in priority(), status in status(), status_changed_at in any::<i64>(), created_at in any::<i64>(),
        error in option::of(text()), broadcast_id in option::of(text()),
    ) -> Message {
        let kind = if chat { MessageKind::Chat } else { MessageKind::OneWay };
        Message { id, kind, sender_id, recipient_id, conversation_id, content, media_ids, priority, status,
            status_changed_at, created_at, error, broadcast_id }
    }
}

prop_compose! {
    fn broadcast()(
        id in text(), sender_id in text(), recipient_ids in vec(text(), 0..20), content in text(),
        media_ids in vec(text(), 0..3), priority in priority(), first_message_id in text(), created_at in any::<i64>(),
    ) -> Broadcast {
        Broadcast { id, sender_id, recipient_ids, content, media_ids, priority, first_message_id, created_at }
    }
}

prop_compose! {
    fn idempotency()(key in text(), fingerprint in text(), status in any::<u16>(), body in text(), at in any::<i64>())
        -> IdempotencyRecord {
        IdempotencyRecord { key, fingerprint, status, body, at }
    }
}

fn envelope() -> impl Strategy<Value = MessageEnvelope> {
    let payload = prop_oneof![
        message().prop_map(Payload::Message),
        broadcast().prop_map(Payload::Broadcast)
    ];
    (payload, option::of(idempotency())).prop_map(|(payload, idempotency)| MessageEnvelope {
        payload,
        idempotency,
    })
}

prop_compose! {
    fn status_event()(
        message_id in text(), status in status(), at in any::<i64>(), error in option::of(text()),
        attempts in 0..=i32::MAX as u32, sender_id in text(), recipient_id in text(),
        conversation_id in option::of(text()), broadcast_id in option::of(text()),
    ) -> StatusEvent {
        StatusEvent { message_id, status, at, error, attempts, sender_id, recipient_id, conversation_id, broadcast_id }
    }
}

prop_compose! {
    fn outcome()(
        key in text(), sender_id in text(), message_id in option::of(text()),
        error in option::of((text(), text())), at in any::<i64>(),
    ) -> IngestOutcome {
        IngestOutcome { key, sender_id, message_id, error: error.map(|(code, message)| OutcomeError { code, message }), at }
    }
}

prop_compose! {
    fn attempt()(
        message_id in text(), attempt in 0..=i32::MAX as u32, at in any::<i64>(), push in any::<bool>(),
        outcome in text(), error in option::of(text()), sender_id in text(), recipient_id in text(),
    ) -> DeliveryAttempt {
        let channel = if push { Channel::Push } else { Channel::Socket };
        DeliveryAttempt { message_id, attempt, at, channel, outcome, error, sender_id, recipient_id }
    }
}

fn status_record() -> impl Strategy<Value = StatusRecord> {
    prop_oneof![
        status_event().prop_map(StatusRecord::Status),
        outcome().prop_map(StatusRecord::Outcome),
        attempt().prop_map(StatusRecord::Attempt)
    ]
}

prop_compose! {
    fn dead_letter()(message_id in text(), attempts in 0..=i32::MAX as u32, error in text(), failed_at in any::<i64>())
        -> DeadLetter {
        DeadLetter { message_id, attempts, error, failed_at }
    }
}

prop_compose! {
    fn push_request()(
        recipient_id in text(), message_id in text(), conversation_id in option::of(text()), sender_id in text(),
        sender_display_name in text(), content_preview in text(), priority in priority(), created_at in any::<i64>(),
        media_ids in vec(text(), 0..3), devices in vec((text(), 0..=i32::MAX as u32), 0..3),
        settled_elsewhere in any::<bool>(),
    ) -> PushRequest {
        let devices = devices.into_iter().map(|(token, attempts)| PendingDevice { token, attempts }).collect();
        PushRequest { recipient_id, message_id, conversation_id, sender_id, sender_display_name, content_preview,
            priority, created_at, media_ids, devices, settled_elsewhere }
    }
}

prop_compose! {
    fn send_request()(
        request_id in text(), principal in text(), idempotency_key in option::of(text()), kind in 0..3u8, sender_id in text(),
        recipient_ids in vec(text(), 0..5), content in text(), media_ids in vec(text(), 0..3),
        priority in option::of(priority()),
    ) -> SendRequest {
        let kind = [SendKind::OneWay, SendKind::Chat, SendKind::Broadcast][kind as usize];
        SendRequest { request_id, principal, idempotency_key, kind, sender_id, recipient_ids, content, media_ids, priority }
    }
}

/// The codec against apache-avro: `record` encodes to the bytes `to_avro_datum` writes for
/// its value, and those bytes decode to it, through the codec's reader and apache-avro's.
fn round_trip<T: WireRecord + PartialEq + std::fmt::Debug>(
    record: &T,
) -> Result<(), TestCaseError> {
    let bytes = encode(record).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(bytes[0], MAGIC);
    prop_assert_eq!(schema_id(&bytes).unwrap(), T::SCHEMA_ID);
    let schema = Schema::parse_str(registry::schema_text(T::SCHEMA_ID).unwrap()).unwrap();
    let written = apache_avro::to_avro_datum(&schema, record.to_avro()).unwrap();
    prop_assert_eq!(&bytes[HEADER_BYTES..], &written[..]);
    prop_assert_eq!(&decode::<T>(&bytes).unwrap(), record);
    prop_assert_eq!(&decode_by_value::<T>(&bytes).unwrap(), record);
    Ok(())
}

/// `decode` answers `bytes` as apache-avro does (`decode_by_value`): the same record, or
/// the same error; the text of an `Avro` error aside, each decoder words its own.
fn decodes_as_apache_avro<T: WireRecord + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let ours = decode::<T>(bytes);
    let reference = decode_by_value::<T>(bytes);
    if !matches!((&ours, &reference), (Err(CodecError::Avro(_)), Err(CodecError::Avro(_)))) {
        prop_assert_eq!(ours, reference);
    }
    Ok(())
}

/// Every record type reads `bytes` as apache-avro does.
fn all_decode_as_apache_avro(bytes: &[u8]) -> Result<(), TestCaseError> {
    decodes_as_apache_avro::<MessageEnvelope>(bytes)?;
    decodes_as_apache_avro::<StatusRecord>(bytes)?;
    decodes_as_apache_avro::<DeadLetter>(bytes)?;
    decodes_as_apache_avro::<PushRequest>(bytes)?;
    decodes_as_apache_avro::<SendRequest>(bytes)
}

/// A change to a record's bytes: overwrite, insert or remove the byte at an index.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        any::<prop::sample::Index>().prop_map(Edit::Remove),
    ];
    vec(edit, 1..4)
}

/// `record` encoded, then `edits` made to its datum (the header stays whole).
fn edited<T: WireRecord>(record: &T, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = encode(record).unwrap();
    for edit in edits {
        let datum_len = bytes.len() - HEADER_BYTES;
        match edit {
            Edit::Set(at, byte) if datum_len > 0 => bytes[HEADER_BYTES + at.index(datum_len)] = *byte,
            Edit::Insert(at, byte) => bytes.insert(HEADER_BYTES + at.index(datum_len + 1), *byte),
            Edit::Remove(at) if datum_len > 0 => {
                bytes.remove(HEADER_BYTES + at.index(datum_len));
            }
            _ => {}
        }
    }
    bytes
}

/// The pieces Avro datums are made of, for garbage that gets past the first field: varints
/// (small, any, and longer than 10 bytes), strings (UTF-8 or not) and single bytes.
fn avro_pieces() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        (-3i64..24).prop_map(zigzag),
        any::<i64>().prop_map(zigzag),
        Just(vec![0xFF; 11]),
        "\\PC{0,8}".prop_map(|text| [zigzag(text.len() as i64), text.into_bytes()].concat()),
        vec(any::<u8>(), 0..8).prop_map(|bytes| [zigzag(bytes.len() as i64), bytes].concat()),
        any::<u8>().prop_map(|byte| vec![byte]),
    ];
    vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// An Avro `long`: zig-zag, then 7 bits a byte, the lowest first.
fn zigzag(n: i64) -> Vec<u8> {
    let mut rest = ((n << 1) ^ (n >> 63)) as u64;
    let mut bytes = Vec::new();
    while rest > 0x7F {
        bytes.push(rest as u8 | 0x80);
        rest >>= 7;
    }
    bytes.push(rest as u8);
    bytes
}

proptest! {
    #[test]
    fn message_envelopes_round_trip(record in envelope()) { round_trip(&record)?; }

    #[test]
    fn status_records_round_trip(record in status_record()) { round_trip(&record)?; }

    #[test]
    fn dead_letters_round_trip(record in dead_letter()) { round_trip(&record)?; }

    #[test]
    fn push_requests_round_trip(record in push_request()) { round_trip(&record)?; }

    #[test]
    fn send_requests_round_trip(record in send_request()) { round_trip(&record)?; }

    /// Untrusted bytes (Kafka-native integrators write these topics): an error, never a
    /// panic, and the answer apache-avro gives.
    #[test]
    fn arbitrary_bytes_decode_as_apache_avro_decodes_them(bytes in vec(any::<u8>(), 0..512)) {
        all_decode_as_apache_avro(&bytes)?;
    }

    /// The same behind a valid header, so that the Avro decoders themselves see the garbage.
    #[test]
    fn garbage_behind_a_valid_header_decodes_as_apache_avro_decodes_it(
        id in 1u32..=6, body in vec(any::<u8>(), 0..512),
    ) {
        all_decode_as_apache_avro(&[&[MAGIC][..], &id.to_be_bytes(), &body].concat())?;
    }

    /// Garbage made of Avro's own pieces, which gets further into a datum: negative and
    /// oversized lengths, enum and union indexes out of range, varints too long, strings
    /// that are not UTF-8, array blocks of negative count.
    #[test]
    fn avro_shaped_garbage_decodes_as_apache_avro_decodes_it(id in 1u32..=6, body in avro_pieces()) {
        all_decode_as_apache_avro(&[&[MAGIC][..], &id.to_be_bytes(), &body].concat())?;
    }

    /// Records with a few bytes changed, inserted or removed, read by every record type.
    #[test]
    fn edited_records_decode_as_apache_avro_decodes_them(
        envelope in envelope(), status in status_record(), request in send_request(), edits in edits(),
    ) {
        all_decode_as_apache_avro(&edited(&envelope, &edits))?;
        all_decode_as_apache_avro(&edited(&status, &edits))?;
        all_decode_as_apache_avro(&edited(&request, &edits))?;
    }

    /// A record cut anywhere is refused (a cut before trailing optional fields must not
    /// decode as a record without them), and so is one with bytes after it.
    #[test]
    fn cut_or_padded_records_are_refused(record in envelope(), cut in any::<prop::sample::Index>(), pad in 1u8..) {
        let bytes = encode(&record).unwrap();
        let cut_at = cut.index(bytes.len());
        let expected = if cut_at < HEADER_BYTES { CodecError::TooShort(cut_at) } else { CodecError::Truncated };
        let cut_record = decode::<MessageEnvelope>(&bytes[..cut_at]);
        prop_assert_eq!(cut_record, Err(expected), "a record cut at {} of {} bytes", cut_at, bytes.len());
        let mut padded = bytes.clone();
        padded.push(pad);
        prop_assert_eq!(decode::<MessageEnvelope>(&padded), Err(CodecError::TrailingBytes(1)));
    }
}

fn dead_letter_sample() -> DeadLetter {
    DeadLetter {
        message_id: "m1".into(),
        attempts: 3,
        error: "ack timeout".into(),
        failed_at: 1_700_000_000_000,
    }
}

#[test]
fn the_header_is_magic_zero_then_the_schema_id_big_endian() {
    let bytes = encode(&dead_letter_sample()).unwrap();
    assert_eq!(&bytes[..HEADER_BYTES], &[0, 0, 0, 0, 4]);
    // The Avro datum: "m1" (zig-zag length 2 → 4), 3 (→ 6), then the error and the time.
    assert_eq!(&bytes[HEADER_BYTES..HEADER_BYTES + 4], &[4, b'm', b'1', 6]);
}

#[test]
fn the_framing_is_checked_before_the_datum() {
    let bytes = encode(&dead_letter_sample()).unwrap();
    assert_eq!(
        decode::<DeadLetter>(&bytes[..3]),
        Err(CodecError::TooShort(3))
    );
    let mut json = b"{\"message_id\":\"m1\"}".to_vec();
    assert_eq!(decode::<DeadLetter>(&json), Err(CodecError::BadMagic(b'{')));
    json[0] = 0;
    json[1..5].copy_from_slice(&999u32.to_be_bytes());
    assert_eq!(
        decode::<DeadLetter>(&json),
        Err(CodecError::UnknownSchema(999))
    );
    // A record of another subject is not read as this one, however its bytes look.
    assert_eq!(
        decode::<StatusRecord>(&bytes),
        Err(CodecError::WrongSchema {
            found: 4,
            expected: 6
        })
    );
}

/// No length prefix makes a decoder reserve room for more than `MAX_ALLOCATION_BYTES`
/// bytes or items, and none may be negative; one within the limit that the datum does not
/// fill is a cut datum.
#[test]
fn lengths_are_checked_before_anything_is_reserved() {
    let limit = MAX_ALLOCATION_BYTES as i64;
    // A dead letter starts with a string (its message id).
    let dead_letter = |length: i64| [&[MAGIC, 0, 0, 0, 4][..], &zigzag(length)].concat();
    for length in [limit + 1, -1, i64::MIN] {
        assert!(matches!(decode::<DeadLetter>(&dead_letter(length)), Err(CodecError::Avro(_))), "{length}");
    }
    assert_eq!(decode::<DeadLetter>(&dead_letter(limit)), Err(CodecError::Truncated));
    // A send request's recipients come after two empty strings, a null, an enum index and
    // an empty string:
    // an array block gives its count (negative: followed by its size in bytes).
    let recipients = |block: &[u8]| [&[MAGIC, 0, 0, 0, 5, 0, 0, 0, 0, 0][..], block].concat();
    for count in [limit + 1, -(limit + 1), i64::MIN] {
        let block = [zigzag(count), zigzag(8)].concat();
        assert!(matches!(decode::<SendRequest>(&recipients(&block)), Err(CodecError::Avro(_))), "{count}");
    }
    assert_eq!(decode::<SendRequest>(&recipients(&zigzag(limit))), Err(CodecError::Truncated));
}

/// What apache-avro reads, the codec reads too, written or not as apache-avro writes it:
/// numbers padded with empty 7-bit groups, and arrays in several blocks, sized or not.
#[test]
fn datums_apache_avro_would_not_write_read_the_same() {
    let letter = dead_letter_sample();
    let canonical = encode(&letter).unwrap();
    // "m1", then attempts 3 as a 3-byte varint.
    let padded = [&canonical[..8], &[0x86, 0x80, 0x00], &canonical[9..]].concat();
    assert_eq!(decode::<DeadLetter>(&padded), Ok(letter));
    assert_eq!(decode_by_value::<DeadLetter>(&padded), decode::<DeadLetter>(&padded));

    let text = |s: &str| [zigzag(s.len() as i64), s.as_bytes().to_vec()].concat();
    let request = [
        &[MAGIC, 0, 0, 0, 5][..],
        &text("r1"),
        &text("crm"),
        &[0, 2], // no idempotency key; kind chat
        &text("b1"),
        // Recipients: a block of one, a sized block of two, the end.
        &zigzag(1),
        &text("m1"),
        &zigzag(-2),
        &zigzag(6),
        &text("m2"),
        &text("m3"),
        &[0, 0, 0, 0], // end of recipients; no content; no media; no priority
    ]
    .concat();
    let decoded = decode::<SendRequest>(&request).unwrap();
    assert_eq!(decoded.recipient_ids, ["m1", "m2", "m3"]);
    assert_eq!(decode_by_value::<SendRequest>(&request), Ok(decoded));
}

#[test]
fn a_status_topic_record_is_any_branch_of_the_union() {
    let outcome = StatusRecord::Outcome(IngestOutcome {
        key: "req-1".into(),
        sender_id: "b1".into(),
        message_id: None,
        error: Some(OutcomeError {
            code: "forbidden".into(),
            message: "no send permission".into(),
        }),
        at: 5,
    });
    let bytes = encode(&outcome).unwrap();
    assert_eq!(schema_id(&bytes).unwrap(), registry::STATUS_ID);
    // The union's branch index (zig-zag 1 → 2) comes first.
    assert_eq!(bytes[HEADER_BYTES], 2);
    assert_eq!(decode::<StatusRecord>(&bytes).unwrap(), outcome);

    let attempt = StatusRecord::Attempt(DeliveryAttempt {
        message_id: "m1".into(),
        attempt: 1,
        at: 6,
        channel: Channel::Socket,
        outcome: "delivered".into(),
        error: None,
        sender_id: "b1".into(),
        recipient_id: "u1".into(),
    });
    let bytes = encode(&attempt).unwrap();
    // The third branch, appended by version 2 (zig-zag 2 → 4).
    assert_eq!(bytes[HEADER_BYTES], 4);
    assert_eq!(decode::<StatusRecord>(&bytes).unwrap(), attempt);
}

#[test]
fn a_send_requests_outcome_is_keyed_by_its_idempotency_key_or_else_its_id() {
    let request = SendRequest {
        request_id: "r1".into(),
        principal: "crm".into(),
        idempotency_key: None,
        kind: SendKind::Chat,
        sender_id: "b1".into(),
        recipient_ids: vec!["m1".into()],
        content: "hi".into(),
        media_ids: vec![],
        priority: None,
    };
    assert_eq!(request.outcome_key(), "r1");
    assert_eq!(
        SendRequest {
            idempotency_key: Some("k".into()),
            ..request
        }
        .outcome_key(),
        "k"
    );
}

/// Ids are forever: a record names its writer schema by id alone.
#[test]
fn schema_ids_are_pinned() {
    let table: Vec<(&str, u32, u32)> = REGISTRATIONS
        .iter()
        .map(|r| (r.subject, r.version, r.id))
        .collect();
    assert_eq!(
        table,
        [
            ("esh.messages.high-value", 1, 1),
            ("esh.messages.normal-value", 1, 1),
            ("esh.messages.low-value", 1, 1),
            ("esh.status.v1-value", 1, 2),
            ("esh.push.v1-value", 1, 3),
            ("esh.dead-letters.v1-value", 1, 4),
            ("esh.ingest.v1-value", 1, 5),
            ("esh.status.v1-value", 2, 6),
            ("esh.push.v1-value", 2, 7),
        ]
    );
    assert_eq!(MessageEnvelope::SCHEMA_ID, 1);
    assert_eq!(StatusRecord::SCHEMA_ID, 6);
    assert_eq!(PushRequest::SCHEMA_ID, 7);
    assert_eq!(DeadLetter::SCHEMA_ID, 4);
    assert_eq!(SendRequest::SCHEMA_ID, 5);
}

#[test]
fn the_registry_is_consistent() {
    let topics = [
        topics::MESSAGES_HIGH,
        topics::MESSAGES_NORMAL,
        topics::MESSAGES_LOW,
        topics::STATUS,
        topics::PUSH,
        topics::DEAD_LETTERS,
        topics::INGEST,
    ];
    let subjects: Vec<String> = topics
        .iter()
        .map(|topic| format!("{topic}-value"))
        .collect();
    assert_eq!(
        registry::subjects(),
        subjects,
        "one subject per topic, named <topic>-value"
    );
    for registration in REGISTRATIONS {
        apache_avro::Schema::parse_str(registration.schema).unwrap();
        for other in REGISTRATIONS {
            // One id, one text; versions of a subject are numbered 1, 2, … without gaps.
            assert_eq!(
                registration.id == other.id,
                registration.schema == other.schema
            );
            if registration.subject == other.subject {
                assert_eq!(
                    registration.version == other.version,
                    registration.id == other.id
                );
            }
        }
        let versions = registry::versions(registration.subject);
        assert!(versions
            .iter()
            .enumerate()
            .all(|(i, r)| r.version == i as u32 + 1));
        // Every later version reads every earlier one (the evolution rules).
        for earlier in &versions {
            let writer = apache_avro::Schema::parse_str(earlier.schema).unwrap();
            let reader = apache_avro::Schema::parse_str(registration.schema).unwrap();
            if earlier.version <= registration.version {
                assert!(
                    apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                        &writer, &reader
                    )
                    .is_ok()
                );
            }
        }
    }
    assert_eq!(
        registry::latest("esh.status.v1-value").map(|r| r.id),
        Some(registry::STATUS_ID)
    );
    assert_eq!(registry::latest("esh.nope-value"), None);
    assert_eq!(registry::schema_text(0), None);
}
