//! Untrusted bytes through every decoder of the wire format: an error or a record, never a
//! panic, and a record decoded from them encodes to bytes that decode to it again.

#![no_main]

use esh_schemas::{decode, encode, DeadLetter, MessageEnvelope, PushRequest, SendRequest, StatusRecord, WireRecord};
use libfuzzer_sys::fuzz_target;

fn check<T: WireRecord + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(record) = decode::<T>(bytes) {
        let again = encode(&record).expect("a decoded record encodes");
        assert_eq!(decode::<T>(&again).expect("and decodes again"), record);
    }
}

fuzz_target!(|bytes: &[u8]| {
    check::<MessageEnvelope>(bytes);
    check::<StatusRecord>(bytes);
    check::<DeadLetter>(bytes);
    check::<PushRequest>(bytes);
    check::<SendRequest>(bytes);
});
