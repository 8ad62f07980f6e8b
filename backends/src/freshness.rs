//! Read-your-writes over a store that is a projection of the log (ARCHITECTURE.md
//! "Decisions"): a read first waits, bounded, until the store projection has applied every
//! record of the projected topics that was durable when the read began. Whatever was
//! answered `202` (or `204` for a receipt) before the read is then in the store.
//!
//! The projection (`router/src/projection.rs`) reports the positions it committed with
//! [`Freshness::advance`]; a process that runs no projection of its own reads the
//! positions from the store instead (`MessageStore::projected_positions`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use esh_common::topics;
use tokio::sync::{watch, Notify};

use crate::error::BackendError;
use crate::log::MessageLog;
use crate::store::{LogPosition, MessageStore};

/// How long a read waits for the projection before it gives up (`503 unavailable`).
pub const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a process without a local projection asks the store for its positions.
const STORE_POLL: Duration = Duration::from_millis(5);

/// The next offset to apply of each partition, by topic.
type Applied = HashMap<String, Vec<u64>>;

/// Adds positions to `applied`, keeping the furthest of each partition.
fn merge(applied: &mut Applied, positions: impl IntoIterator<Item = LogPosition>) {
    for position in positions {
        let partitions = applied.entry(position.topic).or_default();
        let index = position.partition as usize;
        if partitions.len() <= index {
            partitions.resize(index + 1, 0);
        }
        partitions[index] = partitions[index].max(position.next_offset);
    }
}

/// The store projection's applied positions, as far as this process knows them.
pub struct Freshness {
    applied: Mutex<Applied>,
    /// Bumped on every advance, to wake waiters.
    version: watch::Sender<u64>,
    /// A projection in this process reports here.
    local: AtomicBool,
    /// A read waits for the local projection to advance.
    read_waiting: Notify,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            applied: Mutex::new(HashMap::new()),
            version: watch::Sender::new(0),
            local: AtomicBool::new(false),
            read_waiting: Notify::new(),
        }
    }
}

impl Freshness {
    /// Records positions the store has committed (called by a projection in this process).
    pub fn advance(&self, positions: &[LogPosition]) {
        self.local.store(true, Ordering::Release);
        merge(&mut self.applied.lock().unwrap_or_else(|poison| poison.into_inner()), positions.iter().cloned());
        self.version.send_modify(|version| *version += 1);
    }

    /// Waits until the store holds every record of the projected topics that was durable
    /// when this was called; `Timeout` after `timeout` (the projection is down or far behind).
    pub async fn wait(
        &self,
        log: &dyn MessageLog,
        store: &dyn MessageStore,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let head = head(log).await?;
        let mut changes = self.version.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if self.local.load(Ordering::Acquire) {
                    if self.passed(&head) {
                        return Ok(());
                    }
                    self.read_waiting.notify_one();
                    // The sender lives as long as `self`: an error cannot happen here.
                    let _ = changes.changed().await;
                } else {
                    let mut applied = Applied::new();
                    merge(&mut applied, store.projected_positions().await?);
                    if covers(&applied, &head) {
                        return Ok(());
                    }
                    tokio::time::sleep(STORE_POLL).await;
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| Err(BackendError::Timeout("the store projection is behind the log".into())))
    }

    /// Returns once a read waits for the local projection (at once if one began waiting
    /// since the last call): the projection then writes what it holds without lingering.
    pub async fn read_waits(&self) {
        self.read_waiting.notified().await;
    }

    fn passed(&self, head: &[LogPosition]) -> bool {
        covers(&self.applied.lock().unwrap_or_else(|poison| poison.into_inner()), head)
    }
}

/// The end offset of every non-empty partition of the projected topics.
async fn head(log: &dyn MessageLog) -> Result<Vec<LogPosition>, BackendError> {
    let mut head = Vec::new();
    for topic in topics::PROJECTED {
        for (partition, end) in log.end_offsets(topic).await?.into_iter().enumerate() {
            if end > 0 {
                head.push(LogPosition { topic: topic.to_owned(), partition: partition as u32, next_offset: end });
            }
        }
    }
    Ok(head)
}

fn covers(applied: &Applied, head: &[LogPosition]) -> bool {
    head.iter().all(|end| {
        let next = applied.get(&end.topic).and_then(|partitions| partitions.get(end.partition as usize));
        next.is_some_and(|next| *next >= end.next_offset)
    })
}
