//! A member of a Kafka consumer group: one librdkafka consumer subscribed to every topic
//! of the subscription, with auto-commit off.
//!
//! Reading: each partition of each subscribed topic has its own librdkafka queue, read
//! by `poll` into a buffer of that partition; a thread of the member serves the main
//! queue (group membership, heartbeats, rebalances) all the time, so the member keeps its
//! place in the group and rebalances finish whether or not the caller is polling.
//!
//! Priority: a poll fills its batch from the subscribed topics in order (highest priority
//! first) and reads a topic only once every higher one is drained: nothing of it is
//! buffered and each of its partitions owned by the member has reported its end (the
//! broker's high watermark was reached). Within a topic, the owned partitions take turns
//! to go first. Against starvation, when higher-priority records fill a whole batch while
//! lower-priority ones wait, the last tenth of the batch (at least one record) goes to the
//! waiting lower-priority records: under a flood of high-priority messages the lower
//! topics still move at a tenth of the rate. A partition that has not reported its end
//! within [`END_GRACE`] of its assignment or its last record stops holding the lower
//! topics back (a broker that stopped answering must not stop every topic).
//!
//! Commits: `commit` commits synchronously, per partition, the offset after the highest
//! record given, never below what this member committed before. A commit is sent only for
//! partitions the member owns and for records read since it got them: a partition revoked
//! by a rebalance is read by its new owner from the group's last commit, so its records
//! that this member handed out but had not committed are delivered again (the same
//! records, so the same message ids), and their late commit is dropped rather than moving
//! the new owner's position back. A commit refused because a rebalance is under way is
//! dropped the same way. Nothing is lost; a record may be processed twice, never under
//! two ids. Commits run one at a time, in order, on a thread of the member (librdkafka's
//! synchronous commit waits without end for a group coordinator that is gone), and
//! `commit` waits for its turn and answer for at most the settings' `request_timeout`: a
//! broker that disappears mid-commit makes it a `Timeout` error to retry, never a wait
//! without end. A commit that timed out may still be made when the brokers return; the
//! ones after it are made after it, so the group's position ends at the latest.
//!
//! Dropping the member leaves the group at once (librdkafka's close), so the others get its
//! partitions without waiting for the session timeout.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

use super::{kafka_error, KafkaSettings};
use crate::error::BackendError;
use crate::log::{lower_priority_share, Consumed, LogConsumer};

/// Records buffered per partition before its queue is left in librdkafka (bounded memory).
const BUFFER_LIMIT: usize = 1000;

/// How long a partition that has not reported its end since it was assigned or since its
/// last record holds lower-priority topics back (a broker that stopped answering must not
/// stop every topic).
const END_GRACE: Duration = Duration::from_secs(1);

/// The member's view of its assignment, kept by the rebalance callbacks.
#[derive(Default)]
struct Assignment {
    /// Partitions owned now.
    owned: HashSet<(String, i32)>,
    /// Partitions assigned since `poll` last looked: their reading starts anew.
    fresh: HashSet<(String, i32)>,
    /// Whether the last rebalance event was an assignment (the member is a settled member).
    assigned: bool,
}

/// The consumer's librdkafka context: follows rebalances and wakes the member.
struct Membership {
    assignment: Mutex<Assignment>,
    wake: Arc<Notify>,
}

impl Membership {
    fn assignment(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Membership {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(fac, "librdkafka: {message}"),
            _ => tracing::debug!(fac, "librdkafka: {message}"),
        }
    }
}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut assignment = self.assignment();
            for element in list.elements() {
                assignment.owned.remove(&(element.topic().to_owned(), element.partition()));
            }
            assignment.assigned = false;
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut assignment = self.assignment();
                for element in list.elements() {
                    let key = (element.topic().to_owned(), element.partition());
                    assignment.owned.insert(key.clone());
                    assignment.fresh.insert(key);
                }
                assignment.assigned = true;
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "kafka rebalance failed"),
        }
        self.wake.notify_one();
    }
}

/// One partition as the member reads it.
struct PartitionReader {
    partition: i32,
    queue: PartitionQueue<Membership>,
    /// Read from the queue, not handed out yet, in offset order.
    buffer: VecDeque<Consumed>,
    owned: bool,
    /// The partition reported its end since the last record read.
    at_end: bool,
    /// When the partition was assigned or its last record was read.
    waiting_since: Instant,
    /// First offset read since the member got the partition (commits below it are stale).
    epoch_start: Option<u64>,
    /// Highest offset read.
    last_read: Option<u64>,
    /// The offset this member last committed.
    committed: u64,
}

impl PartitionReader {
    /// Drained: nothing buffered and the end reached (or not reported within
    /// [`END_GRACE`]), or not owned at all.
    fn drained(&self) -> bool {
        !self.owned || (self.buffer.is_empty() && (self.at_end || self.waiting_since.elapsed() >= END_GRACE))
    }

    /// Moves what the queue holds into the buffer, without waiting.
    fn fill(&mut self, topic: &str) {
        while self.buffer.len() < BUFFER_LIMIT {
            let Some(result) = self.queue.poll(Duration::ZERO) else { return };
            match result {
                Ok(message) => {
                    let offset = message.offset().max(0) as u64;
                    // A partition read again from an earlier offset (it was revoked and
                    // assigned again): what is buffered from there on comes again.
                    if self.last_read.is_some_and(|last| offset <= last) {
                        self.buffer.retain(|r| r.offset < offset);
                    }
                    self.last_read = Some(offset);
                    self.epoch_start.get_or_insert(offset);
                    self.at_end = false;
                    self.waiting_since = Instant::now();
                    self.buffer.push_back(Consumed {
                        topic: topic.to_owned(),
                        partition: self.partition as u32,
                        offset,
                        key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                        value: message.payload().unwrap_or_default().to_vec(),
                    });
                }
                Err(KafkaError::PartitionEOF(_)) => self.at_end = true,
                Err(error) => tracing::warn!(%error, topic, partition = self.partition, "kafka read failed"),
            }
        }
    }
}

struct TopicReader {
    name: String,
    partitions: Vec<PartitionReader>,
    /// Which partition goes first in the next batch (fairness).
    turn: usize,
}

impl TopicReader {
    fn drained(&self) -> bool {
        self.partitions.iter().all(PartitionReader::drained)
    }

    fn buffered(&self) -> bool {
        self.partitions.iter().any(|p| !p.buffer.is_empty())
    }

    /// Takes up to `max` buffered records into `out`, the partitions in turn.
    fn take(&mut self, max: usize, out: &mut Vec<Consumed>) {
        let count = self.partitions.len();
        if count == 0 {
            return;
        }
        let first = self.turn % count;
        self.turn = (first + 1) % count;
        for k in 0..count {
            let reader = &mut self.partitions[(first + k) % count];
            while out.len() < max {
                let Some(record) = reader.buffer.pop_front() else { break };
                out.push(record);
            }
        }
    }

    /// Puts records taken back at the front of their partitions' buffers.
    fn give_back(&mut self, records: Vec<Consumed>) {
        for record in records.into_iter().rev() {
            if let Some(reader) = self.partitions.iter_mut().find(|p| p.partition as u32 == record.partition) {
                reader.buffer.push_front(record);
            }
        }
    }
}

/// A member of a consumer group (see the module docs).
pub(super) struct KafkaConsumer {
    consumer: Option<Arc<BaseConsumer<Membership>>>,
    /// Serves the main queue (membership, rebalances) until `stop`.
    driver: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Subscribed topics, highest priority first.
    topics: Vec<TopicReader>,
    wake: Arc<Notify>,
    /// The member's committer thread, which ends when this is dropped.
    commits: Option<std::sync::mpsc::Sender<Commit>>,
    /// Longest a commit waits for its turn and the broker's answer.
    commit_timeout: Duration,
}

/// A commit for the committer thread, and where its answer goes.
type Commit = (TopicPartitionList, oneshot::Sender<KafkaResult<()>>);

/// Makes the commits it is sent, one at a time, until the sender is dropped.
fn start_committer(consumer: Arc<BaseConsumer<Membership>>) -> std::io::Result<std::sync::mpsc::Sender<Commit>> {
    let (commits, sent) = std::sync::mpsc::channel::<Commit>();
    std::thread::Builder::new().name("esh-kafka-commit".into()).spawn(move || {
        for (list, answer) in sent {
            let _ = answer.send(consumer.commit(&list, CommitMode::Sync));
        }
    })?;
    Ok(commits)
}

impl KafkaConsumer {
    /// Joins `group` on `topics` (name, partition count; highest priority first) and
    /// returns once the member got its first assignment (possibly empty, when the group
    /// has more members than partitions).
    pub(super) async fn join(
        settings: &KafkaSettings,
        group: &str,
        topics: Vec<(String, i32)>,
    ) -> Result<KafkaConsumer, BackendError> {
        let wake = Arc::new(Notify::new());
        let membership = Membership { assignment: Mutex::default(), wake: wake.clone() };
        let config = settings.client(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "true"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "500"),
            ("fetch.wait.max.ms", "100"),
        ]);
        let consumer: Arc<BaseConsumer<Membership>> = Arc::new(
            config
                .create_with_context(membership)
                .map_err(|error| kafka_error("cannot create a kafka consumer", error))?,
        );
        let mut readers = Vec::with_capacity(topics.len());
        for (name, count) in &topics {
            let mut partitions = Vec::with_capacity(*count as usize);
            for partition in 0..*count {
                let mut queue = consumer.split_partition_queue(name, partition).ok_or_else(|| {
                    BackendError::Unavailable(format!("cannot read partition {partition} of {name} on its own"))
                })?;
                let wake = wake.clone();
                queue.set_nonempty_callback(move || wake.notify_one());
                partitions.push(PartitionReader {
                    partition,
                    queue,
                    buffer: VecDeque::new(),
                    owned: false,
                    at_end: false,
                    waiting_since: Instant::now(),
                    epoch_start: None,
                    last_read: None,
                    committed: 0,
                });
            }
            readers.push(TopicReader { name: name.clone(), partitions, turn: 0 });
        }
        let names: Vec<&str> = topics.iter().map(|(name, _)| name.as_str()).collect();
        consumer.subscribe(&names).map_err(|error| kafka_error("cannot subscribe", error))?;

        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new().name("esh-kafka-member".into()).spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match consumer.poll(Duration::from_millis(100)) {
                        // Only a partition added after the member joined lands here: it is
                        // read (from the group's commit) by the members that join next.
                        Some(Ok(message)) => tracing::error!(
                            topic = message.topic(),
                            partition = message.partition(),
                            "record of a partition this member does not read; restart the consumers after adding partitions"
                        ),
                        Some(Err(error)) => tracing::warn!(%error, "kafka consumer error"),
                        None => {}
                    }
                }
            })?
        };
        let commits = start_committer(consumer.clone())?;
        let mut member = KafkaConsumer {
            consumer: Some(consumer),
            driver: Some(driver),
            stop,
            topics: readers,
            wake,
            commits: Some(commits),
            commit_timeout: settings.request_timeout,
        };
        member.wait_assigned(settings.join_timeout).await?;
        Ok(member)
    }

    fn membership(&self) -> &Membership {
        self.consumer.as_ref().expect("consumer until dropped").context()
    }

    /// Waits until the member holds an assignment.
    async fn wait_assigned(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.membership().assignment().assigned {
            if tokio::time::timeout_at(deadline, self.wake.notified()).await.is_err() {
                return Err(BackendError::Timeout(format!("no partition assignment within {timeout:?}")));
            }
        }
        Ok(())
    }

    /// Applies assignment changes to the partition readers: a partition no longer owned
    /// forgets what it buffered; one assigned anew reads from the group's commit again.
    fn reconcile(&mut self) {
        let (owned, fresh) = {
            let mut assignment = self.membership().assignment();
            (assignment.owned.clone(), std::mem::take(&mut assignment.fresh))
        };
        for topic in &mut self.topics {
            for reader in &mut topic.partitions {
                let key = (topic.name.clone(), reader.partition);
                reader.owned = owned.contains(&key);
                if !reader.owned {
                    reader.buffer.clear();
                    reader.last_read = None;
                }
                if !reader.owned || fresh.contains(&key) {
                    reader.at_end = false;
                    reader.waiting_since = Instant::now();
                    reader.epoch_start = None;
                    reader.committed = 0;
                }
            }
        }
    }

    /// Builds a batch of at most `max` from the buffers (the priority scheme of the module docs).
    fn take(&mut self, max: usize) -> Vec<Consumed> {
        let mut out = Vec::with_capacity(max.min(BUFFER_LIMIT));
        let mut blocked = self.topics.len();
        for i in 0..self.topics.len() {
            if i > 0 && !self.topics[i - 1].drained() {
                blocked = i;
                break;
            }
            self.topics[i].take(max, &mut out);
        }
        let share = lower_priority_share(max);
        if out.len() == max && share > 0 && blocked < self.topics.len() {
            let mut lower = Vec::with_capacity(share);
            for topic in &mut self.topics[blocked..] {
                if lower.len() < share && topic.buffered() {
                    topic.take(share, &mut lower);
                }
            }
            if !lower.is_empty() {
                let returned = out.split_off(max - lower.len());
                for topic in &mut self.topics[..blocked] {
                    let own: Vec<Consumed> = returned.iter().filter(|r| r.topic == topic.name).cloned().collect();
                    topic.give_back(own);
                }
                out.extend(lower);
            }
        }
        out
    }
}

#[async_trait::async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Consumed>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.reconcile();
            for topic in &mut self.topics {
                let name = topic.name.clone();
                for reader in topic.partitions.iter_mut().filter(|r| r.owned) {
                    reader.fill(&name);
                }
            }
            let batch = self.take(max);
            let now = tokio::time::Instant::now();
            if !batch.is_empty() || now >= deadline {
                return Ok(batch);
            }
            // Woken by a queue becoming non-empty or by a rebalance (a wake-up sent since
            // the last look is kept, so none is lost), or when a higher topic's grace ends.
            let _ = tokio::time::timeout_at(deadline.min(now + END_GRACE / 4), self.wake.notified()).await;
        }
    }

    async fn commit(&mut self, records: &[Consumed]) -> Result<(), BackendError> {
        let mut highest: HashMap<(&str, u32), u64> = HashMap::new();
        for record in records {
            let next = highest.entry((record.topic.as_str(), record.partition)).or_insert(0);
            *next = (*next).max(record.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        let mut sent = Vec::new();
        for ((topic, partition), next) in highest {
            let Some(reader) = self.topics.iter().find(|t| t.name == topic) else {
                return Err(BackendError::NotFound(format!("topic {topic:?} is not subscribed")));
            };
            let Some(reader) = reader.partitions.iter().find(|p| p.partition as u32 == partition) else {
                return Err(BackendError::Conflict(format!("{topic} has no partition {partition}")));
            };
            let current = reader.owned && reader.epoch_start.is_some_and(|start| next > start);
            if !current || next <= reader.committed {
                continue;
            }
            list.add_partition_offset(topic, partition as i32, Offset::Offset(next as i64))
                .map_err(|error| kafka_error("bad commit", error))?;
            sent.push((topic.to_owned(), partition, next));
        }
        if sent.is_empty() {
            return Ok(());
        }
        let (answer, answered) = oneshot::channel();
        let stopped = || BackendError::Unavailable("the kafka committer stopped".into());
        let committer = self.commits.as_ref().expect("committer until dropped");
        committer.send((list, answer)).map_err(|_| stopped())?;
        let timeout = self.commit_timeout;
        let answer = tokio::time::timeout(timeout, answered)
            .await
            .map_err(|_| BackendError::Timeout(format!("kafka commit not answered within {timeout:?}")))?
            .map_err(|_| stopped())?;
        match answer {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId,
            )) => {
                // The partitions move to another member, which reads them from the last commit.
                tracing::debug!("commit dropped: the group is rebalancing");
                return Ok(());
            }
            Err(error) => return Err(kafka_error("cannot commit", error)),
        }
        for (topic, partition, next) in sent {
            let reader = self
                .topics
                .iter_mut()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.iter_mut().find(|p| p.partition as u32 == partition));
            if let Some(reader) = reader {
                reader.committed = reader.committed.max(next);
            }
        }
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(driver) = self.driver.take() {
            if driver.join().is_err() {
                tracing::error!("kafka member thread panicked");
            }
        }
        // The committer ends after the commit in hand (not waited for: it may wait for a
        // coordinator that is gone, and then holds the consumer until it is answered).
        self.commits.take();
        // The partition queues go first; the consumer's own drop then leaves the group.
        self.topics.clear();
        self.consumer.take();
    }
}
