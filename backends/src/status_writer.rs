//! Receipts (ack, read), failures, dead-letter retries and delivery attempts (socket and
//! push) from every stage go through one writer that appends them to `esh.status.v1` in
//! batches: one append for everything that queued up while the previous one was being made
//! durable (group commit), and, while statuses come often, everything that comes during a
//! short linger more ([`LINGER`] in the platform): acks are not on a message's way to its
//! recipient, and each append costs a sync of the log. That append is the commit point of a
//! status change and of an attempt; callers are answered once it is durable. Failures also
//! go to `esh.dead-letters.v1`, in the same turn.
//!
//! Nothing here reads or writes the store: the store projection (`router/src/projection.rs`)
//! applies the events, forward-only, and writes the attempts into the messages' timelines;
//! the sender notifier turns the events into `status` frames. An event that does not move
//! its message forward is harmless: every consumer ignores it.

use esh_common::records::{encode, CodecError, StatusEvent, StatusRecord};
use esh_common::{topics, DeadLetter, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio::task::JoinHandle;

use crate::error::BackendError;
use crate::log::{MessageLog, Record};

/// Most records appended in one turn (a single larger request is not split).
pub const MAX_BATCH: usize = 1000;

/// How long the platform's turns wait for more records while statuses come often (the
/// last append ended less than four lingers before the turn began).
pub const LINGER: Duration = Duration::from_millis(1);

type Reply = oneshot::Sender<Result<(), String>>;

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    requests: mpsc::Sender<(Vec<StatusRecord>, Reply)>,
}

impl StatusWriter {
    /// Starts the writer task. `capacity` bounds the queued requests (callers wait when it
    /// is full); `linger` is how long a turn waits for more while statuses come often (zero
    /// never waits: tests on paused time, whose timers would not run). The task ends when
    /// every handle is dropped, after finishing what it holds.
    pub fn start(log: Arc<dyn MessageLog>, capacity: usize, linger: Duration) -> (StatusWriter, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(run(receiver, log, linger));
        (StatusWriter { requests }, task)
    }

    /// Appends `records` (status events, delivery attempts) in the order given and returns
    /// once they are durable in the log; on an error none of this call's records may be
    /// assumed durable, and calling again is safe.
    pub async fn apply<R: Into<StatusRecord>>(&self, records: impl IntoIterator<Item = R>) -> Result<(), BackendError> {
        let records: Vec<StatusRecord> = records.into_iter().map(Into::into).collect();
        if records.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let closed = || BackendError::Unavailable("status writer stopped".into());
        self.requests.send((records, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?.map_err(BackendError::Unavailable)
    }
}

async fn run(mut receiver: mpsc::Receiver<(Vec<StatusRecord>, Reply)>, log: Arc<dyn MessageLog>, linger: Duration) {
    let mut last_append = Instant::now();
    while let Some(first) = receiver.recv().await {
        let busy = last_append.elapsed() < linger * 4;
        let mut size = first.0.len();
        let mut batch = vec![first];
        let mut lingered = false;
        loop {
            while size < MAX_BATCH {
                let Ok(next) = receiver.try_recv() else { break };
                size += next.0.len();
                batch.push(next);
            }
            if lingered || !busy || size >= MAX_BATCH {
                break;
            }
            tokio::time::sleep(linger).await;
            lingered = true;
        }
        let (requests, replies): (Vec<Vec<StatusRecord>>, Vec<Reply>) = batch.into_iter().unzip();
        let outcome = append(log.as_ref(), requests.into_iter().flatten()).await.map_err(|error| error.to_string());
        for reply in replies {
            let _ = reply.send(outcome.clone());
        }
        last_append = Instant::now();
    }
}

/// Appends the records to the status topic and the failures among them to the dead-letter
/// topic, both at once (the embedded log makes them durable in one group commit).
async fn append(log: &dyn MessageLog, records: impl Iterator<Item = StatusRecord>) -> Result<(), BackendError> {
    let mut status = Vec::new();
    let mut dead = Vec::new();
    for record in records {
        if let StatusRecord::Status(event) = &record {
            if event.status == Status::Failed {
                dead.push(dead_letter_record(event).map_err(unencodable)?);
            }
        }
        let key = record.key().to_owned();
        status.push(Record { key, value: encode(record).map_err(unencodable)? });
    }
    if dead.is_empty() {
        return log.append(topics::STATUS, status).await;
    }
    let (status, dead) = tokio::join!(log.append(topics::STATUS, status), log.append(topics::DEAD_LETTERS, dead));
    status.and(dead)
}

fn unencodable(error: CodecError) -> BackendError {
    BackendError::Corrupt(format!("cannot encode a status record: {error}"))
}

/// The `esh.dead-letters.v1` record of a failure.
fn dead_letter_record(event: &StatusEvent) -> Result<Record, CodecError> {
    let letter = DeadLetter {
        message_id: event.message_id.clone(),
        attempts: event.attempts,
        error: event.error.clone().unwrap_or_default(),
        failed_at: event.at,
    };
    Ok(Record {
        key: event.message_id.clone(),
        value: encode(letter)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_common::{MessageRoute, Millis};

    #[test]
    fn dead_letters_come_from_the_failing_event() {
        let event = StatusEvent {
            message_id: "m1".into(),
            status: Status::Failed,
            at: Millis(9),
            error: Some("ack timeout".into()),
            attempts: 7,
            route: MessageRoute { sender_id: "b".into(), recipient_id: "m".into(), conversation_id: None, broadcast_id: None },
        };
        let letter: DeadLetter =
            esh_common::records::decode(&dead_letter_record(&event).unwrap().value).unwrap();
        assert_eq!(
            (letter.attempts, letter.error.as_str(), letter.failed_at),
            (7, "ack timeout", Millis(9))
        );
    }
}
