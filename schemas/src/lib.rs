//! The wire format of Esh3ar: what its log topics carry, for the platform's own stages and
//! for integrators who read and write the topics with their own Kafka clients. A leaf
//! crate: no I/O, no dependency on the rest of the workspace (the model in `esh-common`
//! converts to and from these types).
//!
//! Where things are:
//! - `../avro/*.avsc`: the Avro contracts, one a subject family: `MessageEnvelope`
//!   (`esh.messages.*`), the status topic's union of `StatusEvent`, `IngestOutcome` and
//!   `DeliveryAttempt`, `PushRequest`, `DeadLetter` and `SendRequest` (`esh.ingest.v1`).
//! - `types`: the Rust form of each record: its fields in Avro binary (`datum`, what the
//!   codec writes and reads) and its Avro value (`avro`, apache-avro's form).
//! - `registry`: the one table of subjects, versions, schema ids and schema texts that the
//!   codec and the schema-registry endpoints answer from.
//! - `codec`: the Confluent wire format (magic byte 0, the schema id as 4 bytes big-endian,
//!   the Avro binary datum); decoding resolves a record written with an earlier version of
//!   its subject to the current one (through apache-avro).
//! - `topics`: the topic names.
//!
//! Evolution rules (docs/topics.md): a new version of a subject only adds fields that have
//! a default, or a branch at the end of a union (readers of the new version read old
//! records), and never removes, renames or retypes a field, a branch or an enum symbol; it
//! gets the next version of its subject and a new schema id; ids and published schema
//! texts never change. The record type then follows the new version: its `SCHEMA_ID`,
//! fields, `write`, `read` and `to_avro` (the property tests compare the codec with
//! apache-avro under the schema of `SCHEMA_ID`).

mod avro;
pub mod codec;
mod datum;
pub mod registry;
pub mod topics;
pub mod types;

pub use codec::{decode, encode, CodecError, WireRecord};
pub use types::*;
