//! The schema registry of the platform: every (subject, version, schema id, schema text)
//! there is. The codec writes each record type with the id of its subject's latest version
//! and reads any version of the same subject; `GET /v1/schemas/...` answers from here.
//!
//! Ids are fixed for good once published (a test pins them): a record in a log, or in an
//! integrator's hands, names its writer schema by id alone.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;

/// `avro/message_envelope.avsc`: the value of the three message topics.
pub const MESSAGE_ENVELOPE_V1: &str = include_str!("../avro/message_envelope.avsc");
/// `avro/status.avsc`: the union `[StatusEvent, IngestOutcome]`, the first value of `esh.status.v1`.
pub const STATUS_V1: &str = include_str!("../avro/status.avsc");
/// `avro/status_v2.avsc`: version 1's union with `DeliveryAttempt` appended.
pub const STATUS_V2: &str = include_str!("../avro/status_v2.avsc");
/// `avro/push_request.avsc`.
pub const PUSH_REQUEST_V1: &str = include_str!("../avro/push_request.avsc");
/// `avro/push_request_v2.avsc`: version 1 with the pending devices of a re-queued request.
pub const PUSH_REQUEST_V2: &str = include_str!("../avro/push_request_v2.avsc");
/// `avro/dead_letter.avsc`.
pub const DEAD_LETTER_V1: &str = include_str!("../avro/dead_letter.avsc");
/// `avro/send_request.avsc`.
pub const SEND_REQUEST_V1: &str = include_str!("../avro/send_request.avsc");

pub const MESSAGE_ENVELOPE_ID: u32 = 1;
/// Version 1 of `esh.status.v1-value`; records written before version 2 name it.
pub const STATUS_V1_ID: u32 = 2;
/// Version 1 of `esh.push.v1-value`; records written before version 2 name it.
pub const PUSH_REQUEST_V1_ID: u32 = 3;
pub const DEAD_LETTER_ID: u32 = 4;
pub const SEND_REQUEST_ID: u32 = 5;
/// The latest version of `esh.status.v1-value` (2), which status records are written with.
pub const STATUS_ID: u32 = 6;
/// The latest version of `esh.push.v1-value` (2), which push requests are written with.
pub const PUSH_REQUEST_ID: u32 = 7;

/// One version of a subject, as a schema registry holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// `<topic>-value`.
    pub subject: &'static str,
    /// 1 for the first version of the subject, one more for each later one.
    pub version: u32,
    /// Unique to the schema text: subjects with the same schema share its id.
    pub id: u32,
    /// The schema as JSON, as published.
    pub schema: &'static str,
}

/// Every registration, by subject and version. A new version is appended, never edited in.
pub const REGISTRATIONS: &[Registration] = &[
    Registration {
        subject: "esh.messages.high-value",
        version: 1,
        id: MESSAGE_ENVELOPE_ID,
        schema: MESSAGE_ENVELOPE_V1,
    },
    Registration {
        subject: "esh.messages.normal-value",
        version: 1,
        id: MESSAGE_ENVELOPE_ID,
        schema: MESSAGE_ENVELOPE_V1,
    },
    Registration {
        subject: "esh.messages.low-value",
        version: 1,
        id: MESSAGE_ENVELOPE_ID,
        schema: MESSAGE_ENVELOPE_V1,
    },
    Registration {
        subject: "esh.status.v1-value",
        version: 1,
        id: STATUS_V1_ID,
        schema: STATUS_V1,
    },
    Registration {
        subject: "esh.push.v1-value",
        version: 1,
        id: PUSH_REQUEST_V1_ID,
        schema: PUSH_REQUEST_V1,
    },
    Registration {
        subject: "esh.dead-letters.v1-value",
        version: 1,
        id: DEAD_LETTER_ID,
        schema: DEAD_LETTER_V1,
    },
    Registration {
        subject: "esh.ingest.v1-value",
        version: 1,
        id: SEND_REQUEST_ID,
        schema: SEND_REQUEST_V1,
    },
    Registration {
        subject: "esh.status.v1-value",
        version: 2,
        id: STATUS_ID,
        schema: STATUS_V2,
    },
    Registration {
        subject: "esh.push.v1-value",
        version: 2,
        id: PUSH_REQUEST_ID,
        schema: PUSH_REQUEST_V2,
    },
];

/// The schema text of `id`.
pub fn schema_text(id: u32) -> Option<&'static str> {
    REGISTRATIONS.iter().find(|r| r.id == id).map(|r| r.schema)
}

/// Subjects, in registration order, each once.
pub fn subjects() -> Vec<&'static str> {
    let mut subjects: Vec<&'static str> = Vec::new();
    for registration in REGISTRATIONS {
        if !subjects.contains(&registration.subject) {
            subjects.push(registration.subject);
        }
    }
    subjects
}

/// The versions of `subject`, oldest first (empty when it is unknown).
pub fn versions(subject: &str) -> Vec<&'static Registration> {
    REGISTRATIONS
        .iter()
        .filter(|r| r.subject == subject)
        .collect()
}

/// The latest version of `subject`.
pub fn latest(subject: &str) -> Option<&'static Registration> {
    versions(subject).into_iter().max_by_key(|r| r.version)
}

/// Whether a record written with schema `writer` can be read as `reader`: both are
/// versions of one subject (the evolution rules make the later one read the earlier).
pub fn same_subject(writer: u32, reader: u32) -> bool {
    REGISTRATIONS.iter().filter(|w| w.id == writer).any(|w| {
        REGISTRATIONS
            .iter()
            .any(|r| r.id == reader && r.subject == w.subject)
    })
}

/// The parsed schema of `id`.
pub(crate) fn parsed(id: u32) -> Option<&'static Schema> {
    static PARSED: LazyLock<HashMap<u32, Schema>> = LazyLock::new(|| {
        REGISTRATIONS
            .iter()
            .map(|r| {
                // The texts are constants of this crate; the registry tests parse every one.
                let schema = Schema::parse_str(r.schema)
                    .unwrap_or_else(|e| panic!("schema {} does not parse: {e}", r.id));
                (r.id, schema)
            })
            .collect()
    });
    PARSED.get(&id)
}
