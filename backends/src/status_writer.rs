//! Receipts (ack, read) and failures from every stage go through one writer that folds
//! them into the store in batches (one transaction for many changes), invalidates the
//! cached conversations they touch, and appends the changes that took effect to
//! `esh.status.v1` (and failures to `esh.dead-letters.v1`). Callers get back their own
//! changes that took effect once all of that is durable.

use esh_common::{topics, DeadLetter, StatusApplied, StatusChange, Status};
use esh_schemas::encode;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache::RecentMessages;
use crate::error::BackendError;
use crate::log::{MessageLog, Record};
use crate::store::MessageStore;

/// Most changes folded into one store transaction.
pub const MAX_BATCH: usize = 100;

type Reply = oneshot::Sender<Result<Vec<StatusApplied>, String>>;

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    requests: mpsc::Sender<(Vec<StatusChange>, Reply)>,
}

impl StatusWriter {
    /// Starts the writer task. `capacity` bounds the queued requests (callers wait when it
    /// is full). The task ends when every handle is dropped, after finishing what it holds.
    pub fn start(
        store: Arc<dyn MessageStore>,
        log: Arc<dyn MessageLog>,
        recent: Arc<dyn RecentMessages>,
        capacity: usize,
    ) -> (StatusWriter, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(capacity);
        let task = tokio::spawn(run(receiver, store, log, recent));
        (StatusWriter { requests }, task)
    }

    /// Applies `changes` and returns those that took effect (see `MessageStore::apply_status`).
    pub async fn apply(&self, changes: Vec<StatusChange>) -> Result<Vec<StatusApplied>, BackendError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let closed = || BackendError::Unavailable("status writer stopped".into());
        self.requests.send((changes, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?.map_err(BackendError::Unavailable)
    }
}

async fn run(
    mut receiver: mpsc::Receiver<(Vec<StatusChange>, Reply)>,
    store: Arc<dyn MessageStore>,
    log: Arc<dyn MessageLog>,
    recent: Arc<dyn RecentMessages>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let mut size = batch[0].0.len();
        while size < MAX_BATCH {
            let Ok(next) = receiver.try_recv() else { break };
            size += next.0.len();
            batch.push(next);
        }
        let changes: Vec<StatusChange> = batch.iter().flat_map(|(changes, _)| changes.iter().cloned()).collect();
        let outcome = write(&changes, store.as_ref(), log.as_ref(), recent.as_ref()).await;
        for (requested, reply) in batch {
            let answer = match &outcome {
                Ok(applied) => {
                    let ids: HashSet<&str> = requested.iter().map(|c| c.message_id.as_str()).collect();
                    Ok(applied.iter().filter(|a| ids.contains(a.message_id.as_str())).cloned().collect())
                }
                Err(error) => Err(error.to_string()),
            };
            let _ = reply.send(answer);
        }
    }
}

async fn write(
    changes: &[StatusChange],
    store: &dyn MessageStore,
    log: &dyn MessageLog,
    recent: &dyn RecentMessages,
) -> Result<Vec<StatusApplied>, BackendError> {
    let applied = store.apply_status(changes).await?;
    if applied.is_empty() {
        return Ok(applied);
    }
    let conversations: Vec<String> = applied.iter().filter_map(|a| a.conversation_id.clone()).collect();
    if let Err(error) = recent.invalidate(&conversations).await {
        tracing::warn!(%error, "cannot invalidate cached conversations");
    }
    let events = applied.iter().map(|a| Record { key: a.message_id.clone(), value: encode(a) }).collect();
    log.append(topics::STATUS, events).await?;
    let dead: Vec<Record> = applied
        .iter()
        .filter(|a| a.status == Status::Failed)
        .filter_map(|a| changes.iter().find(|c| c.message_id == a.message_id))
        .map(|c| {
            let letter = DeadLetter {
                message_id: c.message_id.clone(),
                attempts: c.attempts,
                error: c.error.clone().unwrap_or_default(),
                failed_at: c.at,
            };
            Record { key: c.message_id.clone(), value: encode(&letter) }
        })
        .collect();
    if !dead.is_empty() {
        log.append(topics::DEAD_LETTERS, dead).await?;
    }
    Ok(applied)
}
