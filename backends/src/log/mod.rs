//! The message log: topics split into partitions by key, per-partition order, consumer
//! groups with committed offsets, and redelivery of whatever a group had not committed
//! when it stopped or crashed (at-least-once).

mod embedded;
#[cfg(feature = "kafka")]
mod kafka;

pub use embedded::{EmbeddedLogOptions, EmbeddedMessageLog, LogClock, DEFAULT_GROUP_WAIT, DEFAULT_UNCLAIMED_RETENTION};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaMessageLog, KafkaSettings};

use async_trait::async_trait;
use std::time::Duration;

use crate::error::BackendError;

/// How many records of a full batch of `max` go to waiting lower-priority topics: a tenth,
/// at least one (none in a batch of one), so that a flood of high priority slows the lower
/// topics to a tenth of the rate instead of stopping them.
pub fn lower_priority_share(max: usize) -> usize {
    if max < 2 {
        0
    } else {
        (max / 10).max(1)
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Decides the partition: records with the same key keep their order.
    pub key: String,
    pub value: Vec<u8>,
}

/// A record read by a consumer, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub value: Vec<u8>,
}

#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Appends `records` to `topic`, each to its key's partition, in the given order per
    /// partition; returns only once every record is durable (survives kill -9).
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), BackendError>;

    /// Joins consumer group `group` on `topics` (listed highest priority first), creating
    /// missing topics, and returns once the new member holds its assignment (for Kafka: the
    /// group rebalanced), so records appended from then on reach the group without a wait
    /// for the member to join. The group's partitions are shared among its live members; a
    /// member starts after the group's committed offset of each partition it gets. A
    /// dropped consumer leaves the group at once.
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn LogConsumer>, BackendError>;

    /// The offset the next durable record of each partition of `topic` will get, by
    /// partition (Kafka's high watermark); empty for a topic that does not exist yet.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BackendError>;

    /// Records of `topic` appended but not yet committed by `group` (its backlog).
    async fn lag(&self, group: &str, topic: &str) -> Result<u64, BackendError>;

    /// Succeeds while the log can take appends (readiness check).
    async fn check(&self) -> Result<(), BackendError>;
}

#[async_trait]
pub trait LogConsumer: Send {
    /// Waits up to `wait` for records and returns at most `max`, drained from the topics in
    /// subscription order (a higher-priority topic's records come first), in offset order
    /// within each partition. Against starvation, when higher-priority records would fill
    /// the whole batch while a lower-priority topic has records waiting, the last
    /// [`lower_priority_share`] of the batch goes to the lower ones. Returns an empty batch
    /// when nothing arrived in time.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Consumed>, BackendError>;

    /// Commits the group's position past each given record (the highest offset per
    /// partition wins); committed records are not delivered again to the group, uncommitted
    /// ones are, after a restart or a rebalance. May return once the commit is recorded in
    /// memory and queued, before it is durable: a commit lost in a crash only means the
    /// records after the last durable one are delivered again (at-least-once).
    async fn commit(&mut self, records: &[Consumed]) -> Result<(), BackendError>;
}
