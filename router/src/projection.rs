//! The store projection: consumer group `store` on `esh.messages.{high,normal,low}` and
//! `esh.status.v1`. The log is the commit point of every send, status change and delivery
//! attempt; this consumer writes the store from it in large batches (ARCHITECTURE.md
//! "Decisions"), and is the only writer of the attempts' timelines.
//!
//! Each batch is folded before it is written ([`fold`]): a message whose `delivered` or
//! `read` is in the same batch is written once, with its final status, and no undelivered
//! entry is made for it. The folded batch and the log positions it reaches are written in
//! one store transaction (`MessageStore::project`); records below the stored positions are
//! skipped, so a batch redelivered after a crash applies nothing twice (attempts included,
//! which the store appends to the timeline however often it is given them). Then the cached
//! conversations it touched are invalidated and `Freshness` learns the new positions, which
//! releases the reads waiting for them (read-your-writes). The group's offsets are
//! committed last; they only bound the log's retention and measure the projection's lag.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use esh_backends::resolver::Backends;
use esh_backends::{BackendError, Consumed, LogPosition, Projection};

use esh_common::records::{MessageEnvelope, StatusRecord};
use esh_common::{topics, StatusChange};
use tokio_util::sync::CancellationToken;

use crate::{decoded, finish_batch, poll, subscribe, Backoff, BatchWork, RouterConfig};

/// The projection loop (also run alone by tests of stages that need the store to follow
/// the log); returns on shutdown after committing the batch in hand.
pub async fn project_store(
    backends: Backends,
    config: RouterConfig,
    shutdown: CancellationToken,
) -> Result<(), BackendError> {
    let mut backoff = Backoff::new(&config);
    let Some(mut consumer) =
        subscribe(&backends, topics::STORE_GROUP, &topics::PROJECTED, &mut backoff, &shutdown).await?
    else {
        return Ok(());
    };
    // Reads wait for the projection from now on; what the store already holds counts.
    let Some(stored) = retrying!(backoff, "read positions", &shutdown, backends.store.projected_positions()) else {
        return Ok(());
    };
    backends.freshness.advance(&stored);
    let poll_config = RouterConfig { batch_size: config.projection_batch, ..config.clone() };
    while !shutdown.is_cancelled() {
        let Some(mut records) = poll(consumer.as_mut(), &poll_config, &mut backoff, &shutdown).await? else { break };
        if records.is_empty() {
            continue;
        }
        if records.len() < config.projection_batch / 4 && !config.projection_linger.is_zero() {
            // A small batch waits a moment for more: a store transaction (its sync and the
            // pages it writes) costs far more than the records in it at moderate rates.
            // Only a read waiting for the projection makes the wait short.
            let lingering = tokio::time::Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(config.projection_linger) => {}
                _ = backends.freshness.read_waits() => {
                    tokio::time::sleep_until(lingering + config.projection_read_linger).await;
                }
            }
            let more = RouterConfig {
                batch_size: config.projection_batch - records.len(),
                poll_wait: Duration::ZERO,
                ..config.clone()
            };
            let Some(later) = poll(consumer.as_mut(), &more, &mut backoff, &shutdown).await? else { break };
            records.extend(later);
        }
        let mut work = ProjectBatch { records: &records };
        if !finish_batch(consumer.as_mut(), &records, &mut work, &backends, &config, &mut backoff, &shutdown).await? {
            return Ok(());
        }
        report_lag(&backends).await;
    }
    Ok(())
}

/// Publishes the projection's lag (records appended but not yet committed by group `store`).
async fn report_lag(backends: &Backends) {
    let mut lag = 0;
    for topic in topics::PROJECTED {
        match backends.log.lag(topics::STORE_GROUP, topic).await {
            Ok(records) => lag += records,
            Err(error) => {
                tracing::debug!(%error, "cannot read the projection's lag");
                return;
            }
        }
    }
    esh_common::telemetry::set_projection_lag(lag);
}

struct ProjectBatch<'r> {
    records: &'r [Consumed],
}

impl BatchWork for ProjectBatch<'_> {
    const STEP: &'static str = "project batch";

    fn run<'a>(
        &'a mut self,
        backends: &'a Backends,
        _config: &'a RouterConfig,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'a {
        apply(backends, self.records)
    }
}

/// Writes one polled batch: skips what the store already applied, folds the rest, writes
/// it with the positions, then invalidates the cache and releases waiting readers.
async fn apply(backends: &Backends, records: &[Consumed]) -> Result<(), BackendError> {
    // Read afresh for every batch: after a rebalance another member may have moved them.
    let stored = backends.store.projected_positions().await?;
    let applied: HashMap<(&str, u32), u64> =
        stored.iter().map(|p| ((p.topic.as_str(), p.partition), p.next_offset)).collect();
    let projection = fold(records, &applied);
    let took_effect = backends.store.project(&projection).await?;

    let mut conversations: HashSet<String> =
        projection.messages.iter().filter_map(|m| m.conversation_id.clone()).collect();
    conversations.extend(took_effect.into_iter().filter_map(|change| change.conversation_id));
    if !conversations.is_empty() {
        let conversations: Vec<String> = conversations.into_iter().collect();
        if let Err(error) = backends.recent.invalidate(&conversations).await {
            tracing::warn!(%error, "cannot invalidate cached conversations");
        }
    }
    backends.freshness.advance(&projection.positions);
    Ok(())
}

/// Folds a batch (in poll order: messages of higher priority first, then statuses and
/// attempts) into what the store writes. `applied` holds the next offset to apply of each partition;
/// records below it are left out, but still count toward the positions written.
pub(crate) fn fold(records: &[Consumed], applied: &HashMap<(&str, u32), u64>) -> Projection {
    let mut projection = Projection::default();
    let mut new_messages: HashMap<String, usize> = HashMap::new();
    // Changes of messages whose record is not (yet) in the batch, by message in order of
    // first appearance: a record that comes later takes its message's changes before it.
    let mut loose: HashMap<String, Vec<StatusChange>> = HashMap::new();
    let mut loose_order: Vec<String> = Vec::new();
    // From where each partition was folded, and how far it got (never below that start, so
    // that a redelivery of records applied long ago cannot move a position back).
    let mut folded_from: HashMap<(&str, u32), u64> = HashMap::new();
    let mut positions: HashMap<(&str, u32), u64> = HashMap::new();
    for record in records {
        let partition = (record.topic.as_str(), record.partition);
        let from = *folded_from.entry(partition).or_insert_with(|| applied.get(&partition).copied().unwrap_or(0));
        let next = positions.entry(partition).or_insert(from);
        *next = (*next).max(record.offset + 1);
        if record.offset < from {
            continue;
        }
        if record.topic == topics::STATUS {
            let event = match decoded::<StatusRecord>(record) {
                Some(StatusRecord::Status(event)) => event,
                Some(StatusRecord::Attempt(delivery)) => {
                    projection.attempts.push(delivery.attempt);
                    continue;
                }
                Some(StatusRecord::Outcome(_)) | None => continue,
            };
            let change = event.change();
            match new_messages.get(&change.message_id) {
                Some(&index) => {
                    projection.messages[index].apply(&change);
                    projection.folded[index].push(change);
                }
                None => {
                    let changes = loose.entry(change.message_id.clone()).or_default();
                    if changes.is_empty() {
                        loose_order.push(change.message_id.clone());
                    }
                    changes.push(change);
                }
            }
            continue;
        }
        match decoded::<MessageEnvelope>(record) {
            Some(MessageEnvelope::Message { message, idempotency }) => {
                projection.idempotency.extend(idempotency);
                if !new_messages.contains_key(&message.id) {
                    let mut message = message;
                    let earlier = loose.remove(&message.id).unwrap_or_default();
                    for change in &earlier {
                        message.apply(change);
                    }
                    new_messages.insert(message.id.clone(), projection.messages.len());
                    projection.messages.push(message);
                    projection.folded.push(earlier);
                }
            }
            Some(MessageEnvelope::Broadcast { broadcast, idempotency }) => {
                projection.idempotency.extend(idempotency);
                projection.broadcasts.push(broadcast);
            }
            None => {}
        }
    }
    projection.changes = loose_order.iter().filter_map(|id| loose.remove(id)).flatten().collect();
    let listed = |map: HashMap<(&str, u32), u64>| -> Vec<LogPosition> {
        map.into_iter()
            .map(|((topic, partition), next_offset)| LogPosition { topic: topic.to_owned(), partition, next_offset })
            .collect()
    };
    projection.positions = listed(positions);
    projection.folded_from = listed(folded_from);
    projection
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_backends::testsuite::fixtures;
    use esh_common::records::{encode, DeliveryAttempt, StatusEvent, StatusRecord};
    use esh_common::{Attempt, Channel, Message, Millis, Status};

    fn message(id: &str) -> Message {
        Message { id: id.into(), ..fixtures::one_way("b", "m") }
    }

    fn record(topic: &str, partition: u32, offset: u64, value: Vec<u8>) -> Consumed {
        Consumed { topic: topic.into(), partition, offset, key: "k".into(), value }
    }

    fn sent(id: &str, offset: u64) -> Consumed {
        let envelope = MessageEnvelope::Message {
            message: message(id),
            idempotency: None,
        };
        record(
            topics::MESSAGES_NORMAL,
            0,
            offset,
            encode(envelope).unwrap(),
        )
    }

    fn status(id: &str, status: Status, offset: u64) -> Consumed {
        record(
            topics::STATUS,
            1,
            offset,
            encode(StatusRecord::Status(StatusEvent::of(
                &message(id),
                status,
                Millis(5),
            )))
            .unwrap(),
        )
    }

    fn attempt(id: &str, number: u32, offset: u64) -> Consumed {
        let attempt = Attempt {
            message_id: id.into(),
            attempt: number,
            at: Millis(5),
            channel: Channel::Socket,
            outcome: "timeout".into(),
            error: None,
        };
        let delivery = DeliveryAttempt { attempt, sender_id: "b".into(), recipient_id: "m".into() };
        record(topics::STATUS, 1, offset, encode(StatusRecord::Attempt(delivery)).unwrap())
    }

    #[test]
    fn a_message_acked_in_its_own_batch_is_written_once_with_its_final_status() {
        let records =
            [sent("m1", 0), sent("m2", 1), status("m1", Status::Delivered, 0), status("m1", Status::Read, 1)];
        let projection = fold(&records, &HashMap::new());
        let statuses: Vec<(&str, Status)> =
            projection.messages.iter().map(|m| (m.id.as_str(), m.status)).collect();
        assert_eq!(statuses, [("m1", Status::Read), ("m2", Status::Sent)]);
        assert!(projection.changes.is_empty(), "nothing is inserted and then updated");
    }

    #[test]
    fn a_message_record_takes_the_changes_before_it_so_that_their_order_holds() {
        // A dead-letter retry: `sent` is appended, then the message again, then its ack.
        let records = [status("m1", Status::Sent, 7), sent("m1", 3), status("m1", Status::Delivered, 8)];
        let projection = fold(&records, &HashMap::new());
        let folded: Vec<Status> = projection.folded[0].iter().map(|c| c.status).collect();
        assert_eq!(folded, [Status::Sent, Status::Delivered], "applied in log order if the message is stored");
        assert!(projection.changes.is_empty());
    }

    #[test]
    fn statuses_of_earlier_messages_become_changes_in_log_order() {
        let records = [status("old", Status::Delivered, 3), status("old", Status::Read, 4)];
        let projection = fold(&records, &HashMap::new());
        let changes: Vec<Status> = projection.changes.iter().map(|c| c.status).collect();
        assert_eq!(changes, [Status::Delivered, Status::Read]);
        assert_eq!(
            projection.positions,
            [LogPosition { topic: topics::STATUS.into(), partition: 1, next_offset: 5 }]
        );
    }

    #[test]
    fn records_below_the_applied_positions_are_skipped_but_positions_still_move() {
        let records = [sent("m1", 0), sent("m2", 1), sent("m3", 2)];
        let applied = HashMap::from([((topics::MESSAGES_NORMAL, 0), 2)]);
        let projection = fold(&records, &applied);
        let ids: Vec<&str> = projection.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m3"], "a redelivered batch applies nothing twice");
        assert_eq!(projection.positions[0].next_offset, 3);
        assert_eq!(projection.folded_from[0].next_offset, 2, "the store checks it is still 2");

        let old = fold(&records, &HashMap::from([((topics::MESSAGES_NORMAL, 0), 7)]));
        assert!(old.messages.is_empty());
        assert_eq!(old.positions[0].next_offset, 7, "records applied long ago do not move the position back");
    }

    /// Req 4.7: attempts go to the timeline in log order, each once: those below the
    /// applied positions were written with them.
    #[test]
    fn attempts_are_projected_in_log_order_and_never_twice() {
        let timeline = |projection: &Projection| -> Vec<(String, u32)> {
            projection.attempts.iter().map(|a| (a.message_id.clone(), a.attempt)).collect()
        };
        let records =
            [attempt("m1", 1, 3), status("m1", Status::Delivered, 4), attempt("m1", 2, 5), attempt("m2", 1, 6)];
        let projection = fold(&records, &HashMap::new());
        assert_eq!(timeline(&projection), [("m1".into(), 1), ("m1".into(), 2), ("m2".into(), 1)]);
        assert_eq!(projection.changes.len(), 1, "the status between them is a change as before");

        let replayed = fold(&records, &HashMap::from([((topics::STATUS, 1), 5)]));
        assert_eq!(timeline(&replayed), [("m1".into(), 2), ("m2".into(), 1)]);
        assert!(replayed.changes.is_empty());
    }

    #[test]
    fn undecodable_records_are_skipped() {
        let records = [record(topics::MESSAGES_NORMAL, 0, 0, b"{not json".to_vec()), sent("m1", 1)];
        let projection = fold(&records, &HashMap::new());
        assert_eq!(projection.messages.len(), 1);
        assert_eq!(projection.positions[0].next_offset, 2);
    }
}
