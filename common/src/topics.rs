//! Log topic names of API.md ("Kafka topics"); the embedded log uses the same names.

use crate::model::Priority;

pub const MESSAGES_HIGH: &str = "esh.messages.high";
pub const MESSAGES_NORMAL: &str = "esh.messages.normal";
pub const MESSAGES_LOW: &str = "esh.messages.low";
pub const STATUS: &str = "esh.status.v1";
pub const PUSH: &str = "esh.push.v1";
pub const DEAD_LETTERS: &str = "esh.dead-letters.v1";
pub const INGEST: &str = "esh.ingest.v1";

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

/// Every consumer group of the platform with the topics it reads (what
/// `esh_log_consumer_lag_records` reports).
pub const CONSUMER_GROUPS: [(&str, &[&str]); 3] =
    [(ROUTER_GROUP, &MESSAGES_BY_PRIORITY), (STORE_GROUP, &PROJECTED), (NOTIFIER_GROUP, &[STATUS])];
