//! The wire format: round trips of every record type, the Confluent framing, garbage that
//! must be an error and never a panic, and the registry's pinned ids.

use esh_schemas::codec::{schema_id, HEADER_BYTES, MAGIC};
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
        media_ids in vec(text(), 0..3),
    ) -> PushRequest {
        PushRequest { recipient_id, message_id, conversation_id, sender_id, sender_display_name, content_preview,
            priority, created_at, media_ids }
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

fn round_trip<T: WireRecord + PartialEq + std::fmt::Debug>(
    record: &T,
) -> Result<(), TestCaseError> {
    let bytes = encode(record).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(bytes[0], MAGIC);
    prop_assert_eq!(schema_id(&bytes).unwrap(), T::SCHEMA_ID);
    prop_assert_eq!(&decode::<T>(&bytes).unwrap(), record);
    Ok(())
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

    /// Untrusted bytes (Kafka-native integrators write these topics): an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode::<MessageEnvelope>(&bytes);
        let _ = decode::<StatusRecord>(&bytes);
        let _ = decode::<SendRequest>(&bytes);
    }

    /// The same behind a valid header, so that the Avro decoder itself sees the garbage.
    #[test]
    fn garbage_behind_a_valid_header_never_panics(id in 1u32..=6, body in vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![MAGIC];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&body);
        let _ = decode::<MessageEnvelope>(&bytes);
        let _ = decode::<StatusRecord>(&bytes);
        let _ = decode::<DeadLetter>(&bytes);
        let _ = decode::<PushRequest>(&bytes);
        let _ = decode::<SendRequest>(&bytes);
    }

    /// A record with bytes after it is refused, and so is one cut anywhere (a cut before
    /// trailing optional fields must not decode as a record without them).
    #[test]
    fn cut_or_padded_records_are_refused(record in envelope(), cut in any::<prop::sample::Index>(), pad in 1u8..) {
        let bytes = encode(&record).unwrap();
        let cut_at = cut.index(bytes.len());
        prop_assert!(decode::<MessageEnvelope>(&bytes[..cut_at]).is_err(), "a record cut at {} of {} bytes", cut_at, bytes.len());
        let mut padded = bytes.clone();
        padded.push(pad);
        prop_assert!(decode::<MessageEnvelope>(&padded).is_err());
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
        ]
    );
    assert_eq!(MessageEnvelope::SCHEMA_ID, 1);
    assert_eq!(StatusRecord::SCHEMA_ID, 6);
    assert_eq!(PushRequest::SCHEMA_ID, 3);
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
