//! Writes what the tracker gathered — delivery attempts, receipts and failures — in batches:
//! one `StatusWriter::apply` for everything that queued up while the previous batch was
//! being written (PERFORMANCE.md: status changes are the bigger half of the write load).
//! Attempts are status records like the rest: the store projection puts them in the
//! timeline. Receipts for messages the tracker could not vouch for are checked against the
//! store first (one read per batch): only the recipient's receipts count.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use esh_backends::status_writer::StatusWriter;
use esh_backends::{BackendError, ErrorKind};
use esh_backends::resolver::Backends;
use esh_common::records::{DeliveryAttempt, StatusEvent, StatusRecord};
use esh_common::{Millis, Status};
use tokio::sync::mpsc;

/// Effects to write.
#[derive(Debug, Default)]
pub(crate) struct Persist {
    /// Attempt outcomes for the messages' timelines.
    pub(crate) attempts: Vec<DeliveryAttempt>,
    /// Status changes known to be legitimate (receipts of the recipient, failures).
    pub(crate) changes: Vec<StatusEvent>,
    /// Receipts (user, message ids, status) that count only for messages addressed to the user.
    pub(crate) unverified: Vec<(String, Vec<String>, Status)>,
}

impl Persist {
    pub(crate) fn is_empty(&self) -> bool {
        self.attempts.is_empty() && self.changes.is_empty() && self.unverified.is_empty()
    }

    fn absorb(&mut self, other: Persist) {
        self.attempts.extend(other.attempts);
        self.changes.extend(other.changes);
        self.unverified.extend(other.unverified);
    }
}

/// Tries of one write before its effects are given up (and logged).
const TRIES: u32 = 4;
/// Wait before the second try; doubled for each further one.
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Runs until every sender is gone, writing what it receives in batches.
pub(crate) async fn run(mut receiver: mpsc::Receiver<Persist>, backends: Backends, status_writer: StatusWriter) {
    let mut received = Vec::new();
    while receiver.recv_many(&mut received, 256).await > 0 {
        let mut batch = Persist::default();
        for effects in received.drain(..) {
            batch.absorb(effects);
        }
        write(batch, &backends, &status_writer).await;
    }
}

/// One append for the batch: attempts first, then status changes (an ack settles its
/// attempt, then moves the message).
async fn write(batch: Persist, backends: &Backends, status_writer: &StatusWriter) {
    let Persist { attempts, changes, unverified } = batch;
    let mut records: Vec<StatusRecord> = attempts.into_iter().map(StatusRecord::Attempt).collect();
    records.extend(changes.into_iter().map(StatusRecord::Status));
    if !unverified.is_empty() {
        records.extend(verify(unverified, backends).await.into_iter().map(StatusRecord::Status));
    }
    if records.is_empty() {
        return;
    }
    if let Err(error) = with_retries(|| status_writer.apply(records.clone())).await {
        tracing::error!(%error, count = records.len(), "cannot append delivery attempts, receipts and failures");
    }
}

/// The receipts among `unverified` whose message is addressed to the user who sent them.
/// Read once the store holds every message sent so far (a receipt may race the projection).
async fn verify(unverified: Vec<(String, Vec<String>, Status)>, backends: &Backends) -> Vec<StatusEvent> {
    let ids: Vec<String> = unverified.iter().flat_map(|(_, ids, _)| ids.iter().cloned()).collect();
    let read = with_retries(|| async {
        backends.caught_up().await?;
        backends.store.messages(&ids).await
    });
    let messages: HashMap<String, esh_common::Message> = match read.await {
        Ok(messages) => messages.into_iter().map(|m| (m.id.clone(), m)).collect(),
        Err(error) => {
            tracing::error!(%error, count = ids.len(), "cannot check receipts; they are dropped");
            return Vec::new();
        }
    };
    let now = Millis::now();
    let mut changes = Vec::new();
    for (user, ids, status) in unverified {
        for id in ids {
            if let Some(message) = messages.get(&id).filter(|message| message.recipient_id == user) {
                changes.push(StatusEvent::of(message, status, now));
            }
        }
    }
    changes
}

async fn with_retries<T, F, Fut>(mut operation: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut wait = FIRST_WAIT;
    let mut tries = 1;
    loop {
        match operation().await {
            Err(error) if error.kind() == ErrorKind::Transient && tries < TRIES => {
                tracing::warn!(%error, "delivery bookkeeping failed, retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            outcome => return outcome,
        }
    }
}
