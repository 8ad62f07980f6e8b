//! Receipts (ack, read) and failures from every stage go through one writer that folds
//! them into the store in batches (one transaction for many changes), invalidates the
//! cached conversations they touch, and appends the changes that took effect to
//! `esh.status.v1` (and failures to `esh.dead-letters.v1`). Callers get back their own
//! changes that took effect once all of that is durable.
//!
//! If the log refuses the events of changes the store already holds, the writer keeps them
//! and publishes them before anything else (retrying every `REPUBLISH_AFTER` while idle);
//! until then it applies nothing more and callers get an error. A retried change is then a
//! no-op in the store, but its event is still published from memory. (A crash in that
//! window loses those events; the store keeps the changes.)

use esh_common::{topics, DeadLetter, Status, StatusApplied, StatusChange};
use esh_schemas::encode;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache::RecentMessages;
use crate::error::BackendError;
use crate::log::{MessageLog, Record};
use crate::store::MessageStore;

/// Most changes folded into one store transaction (a single larger request is not split).
pub const MAX_BATCH: usize = 100;
/// How often the writer retries, while idle, to publish events the log refused.
pub const REPUBLISH_AFTER: Duration = Duration::from_secs(1);

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
        let (requests, receiver) = mpsc::channel(capacity.max(1));
        let writer = Writer { store, log, recent, unpublished: Unpublished::default() };
        let task = tokio::spawn(run(receiver, writer));
        (StatusWriter { requests }, task)
    }

    /// Applies `changes` and returns those that took effect (see `MessageStore::apply_status`),
    /// and only those of this call, even when batched with others.
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

/// Events of changes in the store that the log has not taken yet, oldest first.
#[derive(Default)]
struct Unpublished {
    status: Vec<Record>,
    dead: Vec<Record>,
}

impl Unpublished {
    fn is_empty(&self) -> bool {
        self.status.is_empty() && self.dead.is_empty()
    }
}

struct Writer {
    store: Arc<dyn MessageStore>,
    log: Arc<dyn MessageLog>,
    recent: Arc<dyn RecentMessages>,
    unpublished: Unpublished,
}

async fn run(mut receiver: mpsc::Receiver<(Vec<StatusChange>, Reply)>, mut writer: Writer) {
    loop {
        let first = if writer.unpublished.is_empty() {
            receiver.recv().await
        } else {
            match tokio::time::timeout(REPUBLISH_AFTER, receiver.recv()).await {
                Ok(request) => request,
                Err(_) => {
                    if let Err(error) = writer.publish_unpublished().await {
                        tracing::warn!(%error, "cannot publish applied status changes yet");
                    }
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut size = first.0.len();
        let mut batch = vec![first];
        while size < MAX_BATCH {
            let Ok(next) = receiver.try_recv() else { break };
            size += next.0.len();
            batch.push(next);
        }
        let (requests, replies): (Vec<Vec<StatusChange>>, Vec<Reply>) = batch.into_iter().unzip();
        let changes: Vec<StatusChange> = requests.iter().flatten().cloned().collect();
        match writer.write(&changes).await {
            Ok(applied) => {
                for (own, reply) in credit(&requests, &applied).into_iter().zip(replies) {
                    let _ = reply.send(Ok(own));
                }
            }
            Err(error) => {
                let error = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
    if let Err(error) = writer.publish_unpublished().await {
        let lost = writer.unpublished.status.len();
        tracing::error!(%error, lost, "status events of applied changes were not published");
    }
}

impl Writer {
    async fn write(&mut self, changes: &[StatusChange]) -> Result<Vec<StatusApplied>, BackendError> {
        // Events an earlier batch could not publish go first; while the log refuses them,
        // nothing more is applied, so the store never runs far ahead of the topic.
        self.publish_unpublished().await?;
        let applied = self.store.apply_status(changes).await?;
        if applied.is_empty() {
            return Ok(applied);
        }
        let mut conversations: Vec<String> = applied.iter().filter_map(|a| a.conversation_id.clone()).collect();
        conversations.sort();
        conversations.dedup();
        if !conversations.is_empty() {
            if let Err(error) = self.recent.invalidate(&conversations).await {
                tracing::warn!(%error, "cannot invalidate cached conversations");
            }
        }
        let published = self.publish(status_records(&applied), dead_letter_records(changes, &applied)).await;
        if let Err(error) = published {
            return Err(BackendError::Unavailable(format!("status changes applied but not yet published: {error}")));
        }
        Ok(applied)
    }

    async fn publish_unpublished(&mut self) -> Result<(), BackendError> {
        if self.unpublished.is_empty() {
            return Ok(());
        }
        let Unpublished { status, dead } = std::mem::take(&mut self.unpublished);
        self.publish(status, dead).await
    }

    /// Appends status events then dead letters; whatever the log refuses is kept to retry.
    async fn publish(&mut self, status: Vec<Record>, dead: Vec<Record>) -> Result<(), BackendError> {
        if !status.is_empty() {
            if let Err(error) = self.log.append(topics::STATUS, status.clone()).await {
                self.unpublished = Unpublished { status, dead };
                return Err(error);
            }
        }
        if !dead.is_empty() {
            if let Err(error) = self.log.append(topics::DEAD_LETTERS, dead.clone()).await {
                self.unpublished = Unpublished { status: Vec::new(), dead };
                return Err(error);
            }
        }
        Ok(())
    }
}

fn status_records(applied: &[StatusApplied]) -> Vec<Record> {
    applied.iter().map(|a| Record { key: a.message_id.clone(), value: encode(a) }).collect()
}

/// A dead letter for each applied failure, from the failing change (its error and attempts).
fn dead_letter_records(changes: &[StatusChange], applied: &[StatusApplied]) -> Vec<Record> {
    let mut failures: HashMap<&str, &StatusChange> = HashMap::new();
    for change in changes.iter().filter(|c| c.status == Status::Failed) {
        failures.entry(change.message_id.as_str()).or_insert(change);
    }
    applied
        .iter()
        .filter(|a| a.status == Status::Failed)
        .filter_map(|a| failures.get(a.message_id.as_str()))
        .map(|change| {
            let letter = DeadLetter {
                message_id: change.message_id.clone(),
                attempts: change.attempts,
                error: change.error.clone().unwrap_or_default(),
                failed_at: change.at,
            };
            Record { key: change.message_id.clone(), value: encode(&letter) }
        })
        .collect()
}

/// Splits `applied` among the requests of a batch: each applied change goes to the first
/// request that asked for that message and status (the store applies changes in order, so a
/// later identical request was a no-op), or failing that the first that named the message.
fn credit(requests: &[Vec<StatusChange>], applied: &[StatusApplied]) -> Vec<Vec<StatusApplied>> {
    let mut exact: HashMap<(&str, Status), VecDeque<usize>> = HashMap::new();
    let mut by_message: HashMap<&str, usize> = HashMap::new();
    for (index, changes) in requests.iter().enumerate() {
        for change in changes {
            exact.entry((change.message_id.as_str(), change.status)).or_default().push_back(index);
            by_message.entry(change.message_id.as_str()).or_insert(index);
        }
    }
    let mut credited = vec![Vec::new(); requests.len()];
    for change in applied {
        let owner = exact
            .get_mut(&(change.message_id.as_str(), change.status))
            .and_then(VecDeque::pop_front)
            .or_else(|| by_message.get(change.message_id.as_str()).copied());
        if let Some(index) = owner {
            credited[index].push(change.clone());
        }
    }
    credited
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_common::Millis;

    fn change(id: &str, status: Status) -> StatusChange {
        StatusChange { message_id: id.into(), status, at: Millis(1), error: None, attempts: 0 }
    }

    fn applied(id: &str, previous: Status, status: Status) -> StatusApplied {
        StatusApplied {
            message_id: id.into(),
            sender_id: "b".into(),
            recipient_id: "m".into(),
            conversation_id: None,
            broadcast_id: None,
            previous,
            status,
            at: Millis(1),
            version: 2,
        }
    }

    #[test]
    fn each_applied_change_goes_to_the_request_that_made_it() {
        let requests = vec![
            vec![change("m1", Status::Delivered)],
            vec![change("m1", Status::Delivered), change("m2", Status::Read)],
            vec![change("m1", Status::Read)],
        ];
        let done = vec![
            applied("m1", Status::Sent, Status::Delivered),
            applied("m2", Status::Sent, Status::Read),
            applied("m1", Status::Delivered, Status::Read),
        ];
        let credited = credit(&requests, &done);
        assert_eq!(credited[0], vec![done[0].clone()]);
        assert_eq!(credited[1], vec![done[1].clone()], "its repeat of m1 delivered was a no-op");
        assert_eq!(credited[2], vec![done[2].clone()]);
    }

    #[test]
    fn dead_letters_come_from_the_failing_change() {
        let mut failed = change("m1", Status::Failed);
        failed.error = Some("ack timeout".into());
        failed.attempts = 7;
        let changes = vec![change("m1", Status::Delivered), failed];
        let records = dead_letter_records(&changes, &[applied("m1", Status::Sent, Status::Failed)]);
        let letter: DeadLetter = esh_schemas::decode(&records[0].value).unwrap();
        assert_eq!((letter.attempts, letter.error.as_str()), (7, "ack timeout"));
    }
}
