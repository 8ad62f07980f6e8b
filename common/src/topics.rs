//! Log topic names of API.md ("Kafka topics", defined with the wire format in `esh-schemas`),
//! the message topic of each priority and the consumer groups.

use crate::model::Priority;

pub use esh_schemas::topics::{
    DEAD_LETTERS, INGEST, MESSAGES_HIGH, MESSAGES_LOW, MESSAGES_NORMAL, PUSH, STATUS,
};

/// Every topic of the platform (what a log creates at start-up when missing).
pub const ALL: [&str; 7] = [MESSAGES_HIGH, MESSAGES_NORMAL, MESSAGES_LOW, STATUS, PUSH, DEAD_LETTERS, INGEST];

/// Message topics, highest priority first (the order the router drains them in).
pub const MESSAGES_BY_PRIORITY: [&str; 3] = [MESSAGES_HIGH, MESSAGES_NORMAL, MESSAGES_LOW];

pub fn messages_topic(priority: Priority) -> &'static str {
    match priority {
        Priority::High => MESSAGES_HIGH,
        Priority::Normal => MESSAGES_NORMAL,
        Priority::Low => MESSAGES_LOW,
    }
}

/// Consumer group of the router stage on the message topics.
pub const ROUTER_GROUP: &str = "router";
/// Consumer group that turns status events into `status` frames for senders.
pub const NOTIFIER_GROUP: &str = "notifier";
/// Consumer group of the store projection (messages and statuses into the store).
pub const STORE_GROUP: &str = "store";
/// Topics the store projection applies, messages highest priority first, then statuses.
pub const PROJECTED: [&str; 4] = [MESSAGES_HIGH, MESSAGES_NORMAL, MESSAGES_LOW, STATUS];
/// Consumer group of Kafka-native ingest on `esh.ingest.v1`.
pub const INGEST_GROUP: &str = "ingest";
/// Consumer group of the push stage on `esh.push.v1`.
pub const PUSH_GROUP: &str = "push";

/// Every consumer group of the platform with the topics it reads (what
/// `esh_log_consumer_lag_records` reports).
pub const CONSUMER_GROUPS: [(&str, &[&str]); 5] =
    [
        (ROUTER_GROUP, &MESSAGES_BY_PRIORITY),
        (STORE_GROUP, &PROJECTED),
        (NOTIFIER_GROUP, &[STATUS]),
        (PUSH_GROUP, &[PUSH]),
        (INGEST_GROUP, &[INGEST]),
    ];
