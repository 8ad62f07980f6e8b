//! The router stage: it takes messages off the log and hands them to the deliverer node
//! that holds each recipient's sockets, and tells senders about status changes.
//!
//! Three consumers, the first two run side by side by [`run`], the third by [`project_store`]:
//!
//! - the **message router**, consumer group `router` on `esh.messages.{high,normal,low}`
//!   (subscribed in that order, so high priority drains first — Req 5.2). Per batch of at
//!   most 100 records (Req 5.3) it decodes the envelopes (they carry whole messages: the
//!   store is not read), expands broadcasts into one log record per recipient, looks up
//!   presence once, and sends one bus batch per deliverer node. Offline recipients get
//!   their messages replayed when they connect and, when push is on
//!   ([`RouterConfig::push`]), a `PushRequest` on `esh.push.v1` for the push stage
//!   (`hand_off_offline`).
//! - the **store projection** (`projection`), consumer group `store` on the message topics
//!   and `esh.status.v1`: it writes the store from the log in folded batches, delivery
//!   attempts into the messages' timelines included.
//! - the **status notifier**, consumer group `notifier` on `esh.status.v1`: every
//!   `delivered`, `read` or `failed` change becomes a `status` event for the sender's nodes
//!   (Req 9.6).
//!
//! All commit offsets only after their effects are done (at-least-once, Req 4.6); every
//! effect is idempotent by message id. A transient backend error backs off and retries the
//! same batch without committing; an undecodable record is logged and skipped (committed)
//! so that it cannot wedge its partition.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use esh_backends::resolver::Backends;
use esh_backends::{BackendError, Consumed, ErrorKind, LogConsumer, NodeEvent, NodeId, Record};
use esh_common::records::{LogRecord, MessageEnvelope, PushRequest, StatusEvent, StatusRecord};
use esh_common::{topics, Broadcast, Message, Status};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Settings of the router stage.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// records per batch
    pub batch_size: usize,
    /// Most records the store projection folds into one store transaction.
    pub projection_batch: usize,
    /// How long a small projection batch waits for more records before it is written,
    /// while no read waits for the projection.
    pub projection_linger: Duration,
    /// How long it waits at most once a read waits for it (reads that must see a write
    /// wait up to this much longer).
    pub projection_read_linger: Duration,
    /// How long one poll of the log waits for records before returning an empty batch.
    pub poll_wait: Duration,
    /// Broadcast messages stored (one store transaction) and appended per step of an expansion.
    pub broadcast_chunk: usize,
    /// First wait after a transient backend error; it doubles on each further failure.
    pub retry_initial: Duration,
    /// Longest wait between retries of a failing batch.
    pub retry_max: Duration,
    /// Hands messages of offline recipients to the push stage (`esh.push.v1`); on when a
    /// push provider is configured.
    pub push: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            batch_size: 100,
            projection_batch: 2000,
            projection_linger: Duration::from_millis(25),
            projection_read_linger: Duration::from_millis(3),
            poll_wait: Duration::from_millis(50),
            broadcast_chunk: 1000,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            push: false,
        }
    }
}

/// Runs the message router (group "router" on esh.messages.high/normal/low) and the status
/// notifier (group "notifier" on esh.status.v1) until `shutdown` is cancelled; each
/// finishes the batch in hand and commits before returning. The store projection
/// ([`project_store`]) is a stage of its own.
pub async fn run(backends: Backends, config: RouterConfig, shutdown: CancellationToken) -> Result<(), BackendError> {
    // Stops both consumers when either fails for good.
    let stop = shutdown.child_token();
    let mut consumers = JoinSet::new();
    consumers.spawn(route_messages(backends.clone(), config.clone(), stop.clone()));
    consumers.spawn(notify_senders(backends, config, stop.clone()));
    let mut outcome = Ok(());
    while let Some(joined) = consumers.join_next().await {
        let result = match joined {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(%error, "router stage stopped");
            stop.cancel();
            if outcome.is_ok() {
                outcome = Err(error);
            }
        }
    }
    outcome
}

/// Exponential backoff between retries of a failing step.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(config: &RouterConfig) -> Self {
        Backoff { initial: config.retry_initial, max: config.retry_max, next: config.retry_initial }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// After `error` while doing `what`: `Err` if retrying cannot help, `Ok(false)` if
    /// `shutdown` came during the wait (stop without committing), `Ok(true)` to retry.
    async fn retry(&mut self, error: BackendError, what: &str, shutdown: &CancellationToken) -> Result<bool, BackendError> {
        if error.kind() != ErrorKind::Transient {
            return Err(error);
        }
        tracing::warn!(%error, step = what, wait_ms = self.next.as_millis() as u64, "router step failed, retrying");
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = shutdown.cancelled() => Ok(false),
            _ = tokio::time::sleep(wait) => Ok(true),
        }
    }
}

/// Awaits `$step` until it succeeds, backing off between transient failures: `Some(value)`,
/// or `None` if `$shutdown` came during a wait; a failure retrying cannot help is returned
/// with `?`. A macro rather than a function taking a closure because the step borrows its
/// state mutably and the spawned future has to stay `Send`.
macro_rules! retrying {
    ($backoff:expr, $what:expr, $shutdown:expr, $step:expr) => {
        loop {
            match $step.await {
                Ok(value) => break Some(value),
                Err(error) => {
                    if !$backoff.retry(error, $what, $shutdown).await? {
                        break None;
                    }
                }
            }
        }
    };
}

mod projection;

/// Decodes a record; an undecodable one is logged and left out: retrying cannot repair it,
/// and it must not wedge its partition (its offset is committed with its batch).
fn decoded<T: LogRecord>(record: &Consumed) -> Option<T> {
    match esh_common::records::decode::<T>(&record.value) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(
                topic = %record.topic,
                partition = record.partition,
                offset = record.offset,
                %error,
                "skipping an undecodable record"
            );
            None
        }
    }
}

/// The status change a record of `esh.status.v1` holds; the topic's other records (the
/// outcomes of Kafka-native sends, delivery attempts) are none of the notifier's business
/// and are skipped.
fn status_change(record: &Consumed) -> Option<StatusEvent> {
    decoded::<StatusRecord>(record)?.into_status()
}

pub use projection::project_store;

/// Joins `group` on `topics`, retrying transient failures; `None` on shutdown.
async fn subscribe(
    backends: &Backends,
    group: &str,
    topics: &[&str],
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<Option<Box<dyn LogConsumer>>, BackendError> {
    Ok(retrying!(backoff, "subscribe", shutdown, backends.log.subscribe(group, topics)))
}

/// Polls one batch, retrying transient failures; `None` on shutdown.
async fn poll(
    consumer: &mut dyn LogConsumer,
    config: &RouterConfig,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<Consumed>>, BackendError> {
    Ok(retrying!(backoff, "poll", shutdown, consumer.poll(config.batch_size, config.poll_wait)))
}

/// Commits `records`, retrying transient failures; `false` on shutdown (they are redelivered).
async fn commit(
    consumer: &mut dyn LogConsumer,
    records: &[Consumed],
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<bool, BackendError> {
    Ok(retrying!(backoff, "commit", shutdown, consumer.commit(records)).is_some())
}

/// The effects of one decoded batch, run again after a transient failure until they succeed.
trait BatchWork {
    /// Names the step in retry logs.
    const STEP: &'static str;

    /// Does the batch's effects; must be safe to call again after an error.
    fn run<'a>(
        &'a mut self,
        backends: &'a Backends,
        config: &'a RouterConfig,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'a;
}

/// Finishes one polled batch: runs `work` until it succeeds (retrying transient failures),
/// then commits `records` and resets the backoff. `false` on shutdown: nothing more is
/// committed and the records are redelivered.
async fn finish_batch<W: BatchWork>(
    consumer: &mut dyn LogConsumer,
    records: &[Consumed],
    work: &mut W,
    backends: &Backends,
    config: &RouterConfig,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<bool, BackendError> {
    if retrying!(backoff, W::STEP, shutdown, work.run(backends, config)).is_none() {
        return Ok(false);
    }
    if !commit(consumer, records, backoff, shutdown).await? {
        return Ok(false);
    }
    backoff.reset();
    Ok(true)
}

/// The message router loop.
async fn route_messages(backends: Backends, config: RouterConfig, shutdown: CancellationToken) -> Result<(), BackendError> {
    let mut backoff = Backoff::new(&config);
    let Some(mut consumer) =
        subscribe(&backends, topics::ROUTER_GROUP, &topics::MESSAGES_BY_PRIORITY, &mut backoff, &shutdown).await?
    else {
        return Ok(());
    };
    while !shutdown.is_cancelled() {
        let Some(records) = poll(consumer.as_mut(), &config, &mut backoff, &shutdown).await? else { break };
        if records.is_empty() {
            continue;
        }
        let mut batch = RouteBatch::decode(&records);
        if !finish_batch(consumer.as_mut(), &records, &mut batch, &backends, &config, &mut backoff, &shutdown).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// The work of one batch of message records. `run` may be called again after an error and
/// resumes where it stopped (a broadcast's finished chunks are not redone).
#[derive(Debug, Default)]
struct RouteBatch {
    /// Broadcasts still to expand: the topic they came from and the next recipient index.
    broadcasts: VecDeque<(Broadcast, String, usize)>,
    /// Messages to hand to their recipients' nodes, in record order (high priority first).
    messages: Vec<Message>,
}

impl BatchWork for RouteBatch {
    const STEP: &'static str = "route batch";

    fn run<'a>(
        &'a mut self,
        backends: &'a Backends,
        config: &'a RouterConfig,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'a {
        RouteBatch::run(self, backends, config)
    }
}

impl RouteBatch {
    /// Decodes the records; undecodable ones are logged and left out (their offsets are
    /// committed with the batch).
    fn decode(records: &[Consumed]) -> Self {
        let mut batch = RouteBatch::default();
        for record in records {
            match decoded::<MessageEnvelope>(record) {
                Some(MessageEnvelope::Message { message, .. }) => batch.messages.push(message),
                Some(MessageEnvelope::Broadcast { broadcast, .. }) => {
                    batch.broadcasts.push_back((broadcast, record.topic.clone(), 0));
                }
                None => {}
            }
        }
        batch
    }

    async fn run(&mut self, backends: &Backends, config: &RouterConfig) -> Result<(), BackendError> {
        while let Some((broadcast, topic, next)) = self.broadcasts.front_mut() {
            let total = broadcast.recipient_ids.len();
            let end = (*next + config.broadcast_chunk.max(1)).min(total);
            expand_broadcast(backends, broadcast, topic, *next..end).await?;
            *next = end;
            if end >= total {
                self.broadcasts.pop_front();
            }
        }
        if !self.messages.is_empty() {
            deliver(backends, config, &self.messages).await?;
            self.messages.clear();
        }
        Ok(())
    }
}

/// Appends one record per recipient in `range` of `broadcast` to `topic`, keyed like any
/// one-way message, for the router to deliver and the store projection to keep. Their ids
/// are derived from the broadcast's reserved block, so an expansion redone after a crash
/// makes the same messages again (the projection keeps each id once).
async fn expand_broadcast(
    backends: &Backends,
    broadcast: &Broadcast,
    topic: &str,
    range: std::ops::Range<usize>,
) -> Result<(), BackendError> {
    let messages: Vec<Message> = range.clone().filter_map(|index| broadcast.message(index)).collect();
    if messages.len() < range.len() {
        tracing::error!(
            broadcast = %broadcast.id,
            first_message_id = %broadcast.first_message_id,
            skipped = range.len() - messages.len(),
            "broadcast recipients without a derivable message id are skipped"
        );
    }
    if messages.is_empty() {
        return Ok(());
    }
    let records = messages
        .into_iter()
        .map(|message| {
            let key = message.partition_key();
            let value = esh_common::records::encode(MessageEnvelope::Message {
                message,
                idempotency: None,
            })
            .map_err(|e| {
                BackendError::Corrupt(format!("cannot encode a broadcast message: {e}"))
            })?;
            Ok(Record { key, value })
        })
        .collect::<Result<_, BackendError>>()?;
    backends.log.append(topic, records).await
}

/// Hands `messages` to the deliverer nodes of their recipients. The records carry whole
/// messages, so nothing is read from the store; a message redelivered after a crash may
/// reach a socket twice, under its one id (the client acks by id).
async fn deliver(backends: &Backends, config: &RouterConfig, messages: &[Message]) -> Result<(), BackendError> {
    // Duplicates inside one batch (a record appended twice) are delivered once.
    let mut seen = HashSet::with_capacity(messages.len());
    let pending: Vec<&Message> = messages.iter().filter(|m| seen.insert(m.id.as_str())).collect();
    if pending.is_empty() {
        return Ok(());
    }

    let located = locate(backends, pending.iter().map(|m| m.recipient_id.as_str())).await?;

    let mut by_node: HashMap<&NodeId, Vec<NodeEvent>> = HashMap::new();
    let mut offline = Vec::new();
    for message in pending {
        match located.get(&message.recipient_id) {
            Some(nodes) if !nodes.is_empty() => {
                for node in nodes {
                    by_node.entry(node).or_default().push(NodeEvent::Message(message.clone()));
                }
            }
            _ => offline.push(message),
        }
    }
    for (node, events) in by_node {
        backends.bus.send(node, events).await?;
    }
    if config.push {
        hand_off_offline(backends, &offline).await?;
    }
    Ok(())
}

/// Push hand-off (Req 3.2): one `PushRequest` on `esh.push.v1` (key: the recipient) for
/// each message whose recipient has no socket anywhere, with the sender's display name
/// (one read of the senders a batch). The message also waits in the store and is replayed
/// on the next connect. A batch redone after a crash hands its messages off again; the
/// push stage notifies each message id once per batch.
async fn hand_off_offline(backends: &Backends, offline: &[&Message]) -> Result<(), BackendError> {
    if offline.is_empty() {
        return Ok(());
    }
    let mut senders: Vec<String> = offline.iter().map(|m| m.sender_id.clone()).collect();
    senders.sort_unstable();
    senders.dedup();
    let names: HashMap<String, String> =
        backends.store.users(&senders).await?.into_iter().map(|user| (user.id, user.display_name)).collect();
    let records = offline
        .iter()
        .map(|message| {
            let name = names.get(&message.sender_id).map_or(message.sender_id.as_str(), String::as_str);
            let value = esh_common::records::encode(PushRequest::of(message, name))
                .map_err(|e| BackendError::Corrupt(format!("cannot encode a push request: {e}")))?;
            Ok(Record { key: message.recipient_id.clone(), value })
        })
        .collect::<Result<_, BackendError>>()?;
    backends.log.append(topics::PUSH, records).await
}

/// The status notifier loop.
async fn notify_senders(backends: Backends, config: RouterConfig, shutdown: CancellationToken) -> Result<(), BackendError> {
    let mut backoff = Backoff::new(&config);
    let Some(mut consumer) = subscribe(&backends, topics::NOTIFIER_GROUP, &[topics::STATUS], &mut backoff, &shutdown).await?
    else {
        return Ok(());
    };
    let mut seen = StatusSeen::default();
    while !shutdown.is_cancelled() {
        let Some(records) = poll(consumer.as_mut(), &config, &mut backoff, &shutdown).await? else { break };
        if records.is_empty() {
            continue;
        }
        let mut events = SenderNotices(sender_notices(&records, &mut seen));
        if !finish_batch(consumer.as_mut(), &records, &mut events, &backends, &config, &mut backoff, &shutdown).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// The last status the notifier saw of recent messages, so that an event that does not
/// move its message forward (a `delivered` racing a `read`, a repeated receipt) tells the
/// sender nothing. Events of one message share a partition, so they arrive in log order.
#[derive(Default)]
struct StatusSeen {
    last: HashMap<String, Status>,
}

impl StatusSeen {
    /// Messages remembered; past this the memory starts afresh (a forgotten message's
    /// next receipt is then passed on: at worst a repeated frame, never a lost one).
    const CAPACITY: usize = 100_000;

    fn moves_forward(&mut self, event: &StatusEvent) -> bool {
        if let Some(last) = self.last.get(&event.message_id) {
            if !last.can_move_to(event.status) {
                return false;
            }
        }
        if self.last.len() >= Self::CAPACITY {
            self.last.clear();
        }
        self.last.insert(event.message_id.clone(), event.status);
        true
    }
}

/// The status events senders hear about: `delivered`, `read` and `failed` (the `202` or
/// `accepted` already said `sent`), each only if it moves its message forward.
/// Undecodable records are logged and skipped.
fn sender_notices(records: &[Consumed], seen: &mut StatusSeen) -> Vec<StatusEvent> {
    records
        .iter()
        .filter_map(status_change)
        .filter(|event| seen.moves_forward(event))
        .filter(|event| matches!(event.status, Status::Delivered | Status::Read | Status::Failed))
        .collect()
}

/// The status events of one batch, to tell their senders about.
struct SenderNotices(Vec<StatusEvent>);

impl BatchWork for SenderNotices {
    const STEP: &'static str = "notify senders";

    fn run<'a>(
        &'a mut self,
        backends: &'a Backends,
        _config: &'a RouterConfig,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'a {
        notify(backends, &self.0)
    }
}

/// The nodes holding sockets of each of `users` (asked once per distinct user).
async fn locate<'a>(
    backends: &Backends,
    users: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Vec<NodeId>>, BackendError> {
    let mut distinct: Vec<String> = users.map(str::to_owned).collect();
    distinct.sort_unstable();
    distinct.dedup();
    backends.presence.locate(&distinct).await
}

/// Sends each event to every node holding a socket of the message's sender.
async fn notify(backends: &Backends, events: &[StatusEvent]) -> Result<(), BackendError> {
    if events.is_empty() {
        return Ok(());
    }
    let located = locate(backends, events.iter().map(|e| e.route.sender_id.as_str())).await?;
    let mut by_node: HashMap<&NodeId, Vec<NodeEvent>> = HashMap::new();
    for event in events {
        for node in located.get(&event.route.sender_id).into_iter().flatten() {
            by_node.entry(node).or_default().push(NodeEvent::Status {
                user: event.route.sender_id.clone(),
                message_id: event.message_id.clone(),
                status: event.status,
                at: event.at,
            });
        }
    }
    for (node, events) in by_node {
        backends.bus.send(node, events).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed(value: Vec<u8>) -> Consumed {
        Consumed { topic: topics::MESSAGES_NORMAL.into(), partition: 0, offset: 7, key: "k".into(), value }
    }

    #[test]
    fn undecodable_records_are_left_out_of_the_batch() {
        let batch = RouteBatch::decode(&[consumed(b"{not json".to_vec()), consumed(vec![0xff, 0x00])]);
        assert!(batch.messages.is_empty() && batch.broadcasts.is_empty());
    }

    #[test]
    fn only_delivered_read_and_failed_reach_senders_req_9_6() {
        let records: Vec<Consumed> = Status::ALL
            .iter()
            .map(|s| consumed(encoded(event(&format!("m-{s:?}"), *s))))
            .collect();
        let kept: Vec<Status> = sender_notices(&records, &mut StatusSeen::default())
            .iter()
            .map(|e| e.status)
            .collect();
        assert_eq!(kept, [Status::Delivered, Status::Read, Status::Failed]);
    }

    fn encoded(event: StatusEvent) -> Vec<u8> {
        esh_common::records::encode(StatusRecord::Status(event)).unwrap()
    }

    /// The outcomes of Kafka-native sends and the delivery attempts share the topic; the
    /// notifier skips them.
    #[test]
    fn ingest_outcomes_and_attempts_on_the_status_topic_reach_no_sender() {
        let outcome = esh_common::records::IngestOutcome {
            key: "k1".into(),
            sender_id: "b".into(),
            message_id: Some("m1".into()),
            error: None,
            at: 1,
        };
        let attempt = esh_common::Attempt {
            message_id: "m1".into(),
            attempt: 1,
            at: esh_common::Millis(1),
            channel: esh_common::Channel::Socket,
            outcome: "delivered".into(),
            error: None,
        };
        let attempt =
            esh_common::records::DeliveryAttempt { attempt, sender_id: "b".into(), recipient_id: "u".into() };
        let records = [
            consumed(esh_common::records::encode(StatusRecord::Outcome(outcome)).unwrap()),
            consumed(esh_common::records::encode(StatusRecord::Attempt(attempt)).unwrap()),
            consumed(encoded(event("m1", Status::Delivered))),
        ];
        let kept: Vec<Status> = sender_notices(&records, &mut StatusSeen::default())
            .iter()
            .map(|e| e.status)
            .collect();
        assert_eq!(kept, [Status::Delivered]);
    }

    fn event(id: &str, status: Status) -> StatusEvent {
        let route = esh_common::MessageRoute {
            sender_id: "b".into(),
            recipient_id: "u".into(),
            conversation_id: None,
            broadcast_id: None,
        };
        StatusEvent { message_id: id.into(), status, at: esh_common::Millis(1), error: None, attempts: 0, route }
    }

    #[test]
    fn a_receipt_that_does_not_move_forward_tells_the_sender_nothing() {
        // An HTTP read racing a socket ack: `read` is appended first, `delivered` after it.
        let records: Vec<Consumed> = [Status::Read, Status::Delivered, Status::Read]
            .iter()
            .map(|s| consumed(encoded(event("m1", *s))))
            .collect();
        let kept: Vec<Status> =
            sender_notices(&records, &mut StatusSeen::default()).iter().map(|e| e.status).collect();
        assert_eq!(kept, [Status::Read]);
    }
}
