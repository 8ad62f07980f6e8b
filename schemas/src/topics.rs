//! Log topic names (API.md "Kafka topics"); the embedded log uses the same names. The
//! schema-registry subject of a topic's values is `<topic>-value`.

pub const MESSAGES_HIGH: &str = "esh.messages.high";
pub const MESSAGES_NORMAL: &str = "esh.messages.normal";
pub const MESSAGES_LOW: &str = "esh.messages.low";
pub const STATUS: &str = "esh.status.v1";
pub const PUSH: &str = "esh.push.v1";
pub const DEAD_LETTERS: &str = "esh.dead-letters.v1";
pub const INGEST: &str = "esh.ingest.v1";
