//! The embedded message log: the durable, partitioned log of one-process mode, with the
//! semantics of the Kafka one (per-partition order, consumer groups, committed offsets,
//! redelivery of what was not committed) and the durability of an fsync'd append.
//!
//! Every topic and partition shares one journal: a sequence of segment files holding CRC
//! framed records (with their topic id, partition and offset), consumer commits and topic
//! definitions, in the order written. One writer thread writes everything queued as one
//! group commit and makes it durable with a single `fdatasync`, however many partitions
//! it touched. Partitions are in-memory indexes into the journal (offset → position) plus
//! a tail of recent records, rebuilt by scanning the journal on open (a torn tail is cut
//! off).
//!
//! - `codec`: the key → partition hash (Kafka's murmur2) and the frames on disk.
//! - `storage`: journal segments, recovery, topics, partition indexes, tails and reads.
//! - `groups`: consumer groups, partition assignment and committed offsets.
//! - `writer`: the one thread that writes: group commit, segment rolls, retention.
//!
//! Data lives under `dir`: `journal/<seq>.log` segments (each opening with a checkpoint of
//! every topic, its partitions' next offsets, every committed offset and the time it was
//! written), `__lock`, which keeps a second process out, and `__record_format`, which
//! names the format of the records (`esh_schemas::codec::WIRE_FORMAT`): a journal without
//! it holds the JSON records of earlier versions and is refused, not misread.
//! Records become visible to consumers only once
//! durable. Consumer commits do not wait for a sync: `LogConsumer::commit` applies them in
//! memory and queues them, and they become durable with the next group commit; one lost
//! in a crash only means redelivery (at-least-once).
//!
//! Retention deletes closed segments from the oldest on (never the active one). A segment
//! goes once, for each topic it holds records of:
//! - when some consumer group knows the topic (subscribed to it or committed in it, in
//!   this run or an earlier one): every such group has durably committed past the
//!   segment's records of it. What a group has not committed is never deleted, however old;
//! - when no group knows the topic (`esh.dead-letters.v1`, topics read only by Kafka-native
//!   integrators, push events while push is off): the segment was closed at least
//!   `unclaimed_retention` ago (7 days by default, like Kafka's `retention.ms`). Without
//!   this, the first record of such a topic would hold back every later segment forever.
//!
//! The time a segment was closed is the time written in the checkpoint of the segment that
//! replaced it, read from `EmbeddedLogOptions::clock` (see `writer.rs`). A group that
//! subscribes to a topic later reads what is still stored from then on. Retention runs
//! with the writer's group commits (commits, segment rolls, and the first group once a
//! segment's retention time has passed), so an idle log frees expired segments with its
//! next append or commit (while idle, it does not grow either).

mod codec;
mod groups;
mod storage;
mod writer;

use async_trait::async_trait;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot, Notify};

use self::codec::{MAX_BODY, MAX_PARTITIONS, RECORD_OVERHEAD};
use self::groups::{Committed, Group, Groups, Position};
use self::storage::{lock, recover, valid_topic_name, SegmentFiles, Topic, JOURNAL_DIR};
use self::writer::{Request, Writer};
use super::{lower_priority_share, Consumed, LogConsumer, MessageLog, Record};
use crate::error::BackendError;

/// Settings of the embedded log; `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct EmbeddedLogOptions {
    /// Partitions of each new topic (1..=4096); existing topics keep their count.
    pub partitions: u32,
    /// A journal segment file is rolled once it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Bytes a journal segment is extended by ahead of its writes (allocated, reading as
    /// zeros): a sync after a write into that space need not also record a new file
    /// length, which makes it cheaper. Zero extends the file write by write. Recovery takes
    /// zeros where a frame would start in the active segment as its end.
    pub preallocate_bytes: u64,
    /// Bytes of recent records kept in memory per partition for readers.
    pub tail_bytes: usize,
    /// Most records the writer makes durable with one sync (group commit).
    pub max_group_records: usize,
    /// Most bytes the writer makes durable with one sync (group commit).
    pub max_group_bytes: usize,
    /// How long the writer waits for more requests before it syncs a group that is not
    /// full, while requests of several callers come at once (a group that held requests
    /// of two or more callers ended less than four waits before this one began): one sync
    /// costs far more than this wait, so at moderate rates fewer, larger groups save CPU,
    /// for up to this much more latency on each append. A lone caller never waits. Zero
    /// never waits.
    pub group_wait: Duration,
    /// Requests queued for the writer before callers wait.
    pub queue_capacity: usize,
    /// Largest key plus value of one record.
    pub max_record_bytes: usize,
    /// How long records of topics no consumer group knows are kept, counted from when
    /// their segment was closed (see the module docs); the records of topics some group
    /// knows are kept until every such group committed past them, whatever this says.
    pub unclaimed_retention: Duration,
    /// Where the log reads the wall-clock time that retention goes by.
    pub clock: LogClock,
}

/// The writer's default [`EmbeddedLogOptions::group_wait`].
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_micros(500);

/// Seven days, Kafka's default `retention.ms`.
pub const DEFAULT_UNCLAIMED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The wall clock of the embedded log: the time written when a journal segment is closed
/// and compared with it by retention. A wall clock (not `tokio::time`) because the time is
/// kept in the journal across restarts; the system clock by default, a settable one in
/// tests, which move days ahead without waiting.
#[derive(Clone)]
pub struct LogClock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl LogClock {
    /// The system's wall clock.
    pub fn system() -> LogClock {
        LogClock(Arc::new(SystemTime::now))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> LogClock {
        LogClock(Arc::new(now))
    }

    /// The current time by this clock.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for LogClock {
    fn default() -> Self {
        LogClock::system()
    }
}

impl std::fmt::Debug for LogClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LogClock").field(&self.now()).finish()
    }
}

impl Default for EmbeddedLogOptions {
    fn default() -> Self {
        EmbeddedLogOptions {
            partitions: 8,
            segment_bytes: 64 << 20,
            preallocate_bytes: 8 << 20,
            tail_bytes: 1 << 20,
            max_group_records: 1000,
            max_group_bytes: 4 << 20,
            group_wait: DEFAULT_GROUP_WAIT,
            queue_capacity: 1024,
            max_record_bytes: 8 << 20,
            unclaimed_retention: DEFAULT_UNCLAIMED_RETENTION,
            clock: LogClock::system(),
        }
    }
}

/// What the callers and the writer thread share.
pub(crate) struct Shared {
    dir: PathBuf,
    options: EmbeddedLogOptions,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// The journal segments readers may read.
    files: SegmentFiles,
    groups: Groups,
    /// Why the writer stopped taking appends, if it did.
    failure: Mutex<Option<String>>,
    writer_alive: AtomicBool,
    /// Group syncs made since the log was opened.
    syncs: AtomicU64,
}

impl Shared {
    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Makes a topic visible, once its definition is durable.
    fn add_topic(&self, topic: Arc<Topic>) {
        self.topics.write().unwrap_or_else(|p| p.into_inner()).insert(topic.name.clone(), topic);
    }

    fn journal_dir(&self) -> PathBuf {
        self.dir.join(JOURNAL_DIR)
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn fail(&self, reason: String) {
        lock(&self.failure).get_or_insert(reason);
    }
}

/// Owns the writer thread; the last handle (log or consumer) to go stops it.
struct Core {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// Holds the directory lock until the writer is done.
    _lock: File,
}

impl Drop for Core {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued, then return.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("embedded log writer panicked");
            }
        }
    }
}

fn stopped() -> BackendError {
    BackendError::Unavailable("embedded log writer stopped".into())
}

impl Core {
    /// Hands `request` to the writer and waits for its answer.
    async fn call(&self, request: impl FnOnce(writer::Reply) -> Request) -> Result<(), BackendError> {
        if let Some(failure) = self.shared.failure() {
            return Err(BackendError::Unavailable(failure));
        }
        let Some(requests) = &self.requests else { return Err(stopped()) };
        let (reply, answer) = oneshot::channel();
        requests.send(request(reply)).await.map_err(|_| stopped())?;
        if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
            // A current-thread runtime may be a test with a paused clock, which jumps to the
            // next timer whenever the runtime idles, e.g. while the writer syncs. Waiting on
            // the blocking pool holds the clock still; multi-thread runtimes (the server)
            // skip the extra thread hop.
            return tokio::task::spawn_blocking(move || answer.blocking_recv())
                .await
                .map_err(|_| stopped())?
                .map_err(|_| stopped())?;
        }
        answer.await.map_err(|_| stopped())?
    }

    /// Hands `request` to the writer without waiting for its outcome.
    async fn queue(&self, request: Request) -> Result<(), BackendError> {
        if let Some(failure) = self.shared.failure() {
            return Err(BackendError::Unavailable(failure));
        }
        let Some(requests) = &self.requests else { return Err(stopped()) };
        requests.send(request).await.map_err(|_| stopped())
    }

    /// The topic `name`, created (durably, with the configured partition count) when new.
    async fn topic(&self, name: &str) -> Result<Arc<Topic>, BackendError> {
        if let Some(topic) = self.shared.topic(name) {
            return Ok(topic);
        }
        if !valid_topic_name(name) {
            return Err(BackendError::Conflict(format!("invalid topic name {name:?}")));
        }
        self.call(|reply| Request::CreateTopic { name: name.to_owned(), reply }).await?;
        self.shared.topic(name).ok_or_else(|| BackendError::Unavailable(format!("topic {name:?} was not created")))
    }
}

/// The file naming the format of the records in a log directory.
const RECORD_FORMAT_FILE: &str = "__record_format";

/// Refuses a directory whose records are in another format than this version writes (a
/// journal from before the file existed holds JSON records); marks a new one.
fn check_record_format(dir: &Path) -> Result<(), BackendError> {
    let path = dir.join(RECORD_FORMAT_FILE);
    let wanted = esh_schemas::codec::WIRE_FORMAT;
    match fs::read_to_string(&path) {
        Ok(found) if found.trim() == wanted => Ok(()),
        Ok(found) => Err(BackendError::Corrupt(format!(
            "{} holds records in the format {:?}, not {wanted:?}, which this version does not read",
            dir.display(),
            found.trim()
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let journal = dir.join(JOURNAL_DIR);
            if journal.exists() && fs::read_dir(&journal)?.next().is_some() {
                return Err(BackendError::Corrupt(format!(
                    "{} holds the JSON records of an earlier version, which this one does not read",
                    dir.display()
                )));
            }
            let mut file = File::create(&path)?;
            file.write_all(wanted.as_bytes())?;
            file.sync_all()?;
            storage::sync_dir(dir)?;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// The durable embedded log (see the module docs).
pub struct EmbeddedMessageLog {
    core: Arc<Core>,
}

impl EmbeddedMessageLog {
    /// Opens (or creates) the log in `dir`, new topics getting `partitions` partitions,
    /// with the default options; recovers from a crash (torn tails are cut off).
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, BackendError> {
        Self::open_with(dir, EmbeddedLogOptions { partitions, ..EmbeddedLogOptions::default() })
    }

    /// Opens (or creates) the log in `dir` with `options`; fails with `Unavailable` when
    /// another process has it open and with `Corrupt` when its files are damaged beyond a
    /// torn tail.
    pub fn open_with(dir: &Path, options: EmbeddedLogOptions) -> Result<Self, BackendError> {
        if !(1..=MAX_PARTITIONS).contains(&options.partitions) {
            return Err(BackendError::Conflict(format!(
                "log partitions must be between 1 and {MAX_PARTITIONS}, not {}",
                options.partitions
            )));
        }
        let mut options = options;
        options.max_record_bytes = options.max_record_bytes.min(MAX_BODY - RECORD_OVERHEAD);
        options.queue_capacity = options.queue_capacity.max(1);
        options.max_group_records = options.max_group_records.max(1);
        fs::create_dir_all(dir)?;
        let lock_file = OpenOptions::new().write(true).create(true).truncate(false).open(dir.join("__lock"))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(BackendError::Unavailable(format!("log directory {} is in use", dir.display())))
            }
            Err(fs::TryLockError::Error(error)) => return Err(error.into()),
        }

        // The per-partition layout of earlier versions always had this directory; its
        // records are not in the journal, so opening it would silently drop them.
        if dir.join("__consumer_offsets").exists() {
            return Err(BackendError::Corrupt(format!(
                "{} holds the per-partition layout of an earlier embedded log, which this one does not read",
                dir.display()
            )));
        }
        check_record_format(dir)?;
        let recovered = recover(&dir.join(JOURNAL_DIR))?;
        let topics: HashMap<String, Arc<Topic>> =
            recovered.topics.iter().map(|topic| (topic.name.clone(), topic.clone())).collect();
        let groups = Groups::default();
        let mut committed = Committed::default();
        for position in &recovered.commits {
            lock(&groups.get_or_create(&position.group).state).advance(
                &position.topic,
                position.partition,
                position.offset,
            );
            committed.advance(position);
        }
        let files = SegmentFiles::default();
        for segment in &recovered.segments {
            files.insert(segment.seq, segment.file.clone());
        }

        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            options,
            topics: RwLock::new(topics),
            files,
            groups,
            failure: Mutex::new(None),
            writer_alive: AtomicBool::new(true),
            syncs: AtomicU64::new(0),
        });
        let (requests, receiver) = mpsc::channel(shared.options.queue_capacity);
        let writer = Writer {
            shared: shared.clone(),
            requests: receiver,
            segments: recovered.segments,
            topics: recovered.topics,
            committed,
            expiry: None,
            unsynced_commits: Vec::new(),
            preallocate: shared.options.preallocate_bytes,
        };
        let thread = std::thread::Builder::new().name("esh-log-writer".into()).spawn(move || writer.run())?;
        Ok(EmbeddedMessageLog {
            core: Arc::new(Core { shared, requests: Some(requests), thread: Some(thread), _lock: lock_file }),
        })
    }

    /// Group syncs (`fdatasync`s of the journal) made since the log was opened.
    pub fn syncs(&self) -> u64 {
        self.core.shared.syncs.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl MessageLog for EmbeddedMessageLog {
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), BackendError> {
        if records.is_empty() {
            return Ok(());
        }
        let limit = self.core.shared.options.max_record_bytes;
        if let Some(big) = records.iter().find(|r| r.key.len() + r.value.len() > limit) {
            return Err(BackendError::Conflict(format!(
                "a record of {} bytes exceeds the log's {limit}-byte limit",
                big.key.len() + big.value.len()
            )));
        }
        let topic = self.core.topic(topic).await?;
        self.core.call(|reply| Request::Append { topic, records, reply }).await
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn LogConsumer>, BackendError> {
        if group.is_empty() || group.len() > usize::from(u16::MAX) {
            return Err(BackendError::Conflict("a consumer group name must have 1 to 65535 bytes".into()));
        }
        let mut subscribed: Vec<Arc<Topic>> = Vec::with_capacity(topics.len());
        for name in topics {
            if subscribed.iter().any(|t| t.name == *name) {
                continue;
            }
            subscribed.push(self.core.topic(name).await?);
        }
        let shared = &self.core.shared;
        let handle = shared.groups.get_or_create(group);
        // Make the group known on each topic durably, so retention keeps its backlog.
        let unknown: Vec<Position> = {
            let state = lock(&handle.state);
            subscribed
                .iter()
                .filter(|topic| !state.knows(&topic.name))
                .flat_map(|topic| {
                    topic.partitions.iter().enumerate().map(|(p, partition)| Position {
                        group: group.to_owned(),
                        topic: topic.name.clone(),
                        partition: p as u32,
                        offset: partition.start.load(Ordering::Acquire),
                    })
                })
                .collect()
        };
        let unknown_in_memory: Vec<(String, u32, u64)> =
            unknown.iter().map(|p| (p.topic.clone(), p.partition, p.offset)).collect();
        if !unknown.is_empty() {
            // Known durably before the first poll, so retention keeps the group's backlog.
            self.core.call(|reply| Request::Commit { positions: unknown, reply: Some(reply) }).await?;
            let mut state = lock(&handle.state);
            for position in &unknown_in_memory {
                state.advance(&position.0, position.1, position.2);
            }
        }
        let notify = Arc::new(Notify::new());
        for topic in &subscribed {
            topic.subscribe(&notify);
        }
        let member_topics = subscribed.iter().map(|t| (t.name.clone(), t.partitions.len() as u32)).collect();
        let member = lock(&handle.state).join(member_topics, notify.clone());
        Ok(Box::new(EmbeddedConsumer {
            core: self.core.clone(),
            group_name: group.to_owned(),
            group: handle,
            member,
            notify,
            owned: vec![Vec::new(); subscribed.len()],
            turn: vec![0; subscribed.len()],
            topics: subscribed,
            generation: 0,
        }))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BackendError> {
        let Some(topic) = self.core.shared.topic(topic) else { return Ok(Vec::new()) };
        Ok(topic.partitions.iter().map(|partition| partition.end.load(Ordering::Acquire)).collect())
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<u64, BackendError> {
        let shared = &self.core.shared;
        let Some(topic) = shared.topic(topic) else { return Ok(0) };
        let group = shared.groups.get(group);
        let state = group.as_ref().map(|g| lock(&g.state));
        let committed = state.as_ref().map(|s| s.committed(&topic.name));
        let lag = topic
            .partitions
            .iter()
            .enumerate()
            .map(|(p, partition)| {
                let committed = committed.as_ref().map_or(0, |c| c.at(p as u32));
                let start = partition.start.load(Ordering::Acquire);
                partition.end.load(Ordering::Acquire).saturating_sub(committed.max(start))
            })
            .sum();
        Ok(lag)
    }

    async fn check(&self) -> Result<(), BackendError> {
        let shared = &self.core.shared;
        if !shared.writer_alive.load(Ordering::Acquire) {
            return Err(stopped());
        }
        if let Some(failure) = shared.failure() {
            return Err(BackendError::Unavailable(failure));
        }
        let probe = shared.dir.join("__check");
        tokio::task::spawn_blocking(move || {
            File::create(&probe)?.write_all(b"ok")?;
            fs::remove_file(&probe)
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("log check stopped: {e}")))?
        .map_err(|e| BackendError::Unavailable(format!("log directory is not writable: {e}")))
    }
}

/// A member of a consumer group.
struct EmbeddedConsumer {
    core: Arc<Core>,
    group_name: String,
    group: Arc<Group>,
    member: u64,
    /// Woken by appends to the subscribed topics and by rebalances.
    notify: Arc<Notify>,
    /// Subscribed topics, highest priority first.
    topics: Vec<Arc<Topic>>,
    /// The group generation `owned` reflects.
    generation: u64,
    /// Per topic: owned partitions with the offset to read next.
    owned: Vec<Vec<(u32, u64)>>,
    /// Per topic: which owned partition the next poll starts with (fairness).
    turn: Vec<usize>,
}

impl EmbeddedConsumer {
    /// Picks up a new assignment: a partition kept keeps its position (or the committed
    /// offset if the group moved past it); a new one starts at the committed offset.
    fn refresh(&mut self) {
        let state = lock(&self.group.state);
        if state.generation == self.generation {
            return;
        }
        self.generation = state.generation;
        for (i, topic) in self.topics.iter().enumerate() {
            let previous = std::mem::take(&mut self.owned[i]);
            let committed = state.committed(&topic.name);
            self.owned[i] = state
                .owned(&topic.name, self.member)
                .into_iter()
                .map(|p| {
                    let committed = committed.at(p);
                    let kept = previous.iter().find(|(q, _)| *q == p).map(|(_, position)| *position);
                    (p, kept.map_or(committed, |position| position.max(committed)))
                })
                .collect();
        }
    }

    /// Takes up to `max` available records without waiting: topics in priority order,
    /// owned partitions in turn within a topic, and the share of a full batch that
    /// `LogConsumer::poll` keeps for lower-priority topics ([`lower_priority_share`]).
    async fn take(&mut self, max: usize) -> Result<Vec<Consumed>, BackendError> {
        let share = lower_priority_share(max);
        let mut out = Vec::new();
        let mut filled_at = None;
        for i in 0..self.topics.len() {
            if self.take_topic(i, max - share, &mut out).await? {
                return Ok(out);
            }
            if out.len() >= max - share {
                filled_at = Some(i);
                break;
            }
        }
        let Some(filled_at) = filled_at else { return Ok(out) };
        // The lower topics get the rest first, then the batch fills in priority order again.
        for i in (filled_at + 1..self.topics.len()).chain(filled_at..self.topics.len()) {
            if out.len() >= max || self.take_topic(i, max, &mut out).await? {
                break;
            }
        }
        Ok(out)
    }

    /// Reads topic `i` into `out` until it holds `limit` records or the topic has nothing
    /// more; returns whether a read failed after some records were taken (hand them out).
    async fn take_topic(&mut self, i: usize, limit: usize, out: &mut Vec<Consumed>) -> Result<bool, BackendError> {
        let count = self.owned[i].len();
        if count == 0 || out.len() >= limit {
            return Ok(false);
        }
        let first = self.turn[i] % count;
        self.turn[i] = (first + 1) % count;
        let topic = self.topics[i].clone();
        for k in 0..count {
            let slot = (first + k) % count;
            let (partition, mut position) = self.owned[i][slot];
            let source = &topic.partitions[partition as usize];
            let mut failure = None;
            while out.len() < limit {
                match source.read(&topic, partition, position, limit - out.len(), &self.core.shared.files).await {
                    Ok((records, next)) => {
                        position = next;
                        if records.is_empty() {
                            break;
                        }
                        out.extend(records);
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            self.owned[i][slot].1 = position;
            if let Some(error) = failure {
                if out.is_empty() {
                    return Err(error);
                }
                // Hand out what was read; the failing partition is retried next poll.
                tracing::error!(%error, topic = %topic.name, partition, "cannot read the log");
                return Ok(true);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Consumed>, BackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.refresh();
            let records = self.take(max).await?;
            if !records.is_empty() || max == 0 {
                return Ok(records);
            }
            // A wake-up sent since the last check is kept, so none is lost.
            if tokio::time::timeout_at(deadline, self.notify.notified()).await.is_err() {
                return Ok(records);
            }
        }
    }

    async fn commit(&mut self, records: &[Consumed]) -> Result<(), BackendError> {
        let mut highest: HashMap<(&str, u32), u64> = HashMap::new();
        for record in records {
            let next = highest.entry((record.topic.as_str(), record.partition)).or_insert(0);
            *next = (*next).max(record.offset + 1);
        }
        let mut positions = Vec::with_capacity(highest.len());
        for ((topic, partition), offset) in highest {
            let Some(stored) = self.core.shared.topic(topic) else {
                return Err(BackendError::NotFound(format!("topic {topic:?}")));
            };
            let end = stored.partitions.get(partition as usize).map(|p| p.end.load(Ordering::Acquire));
            if end.is_none_or(|end| offset > end) {
                return Err(BackendError::Conflict(format!(
                    "cannot commit offset {} of {topic}/{partition}: no such record",
                    offset - 1
                )));
            }
            positions.push(Position { group: self.group_name.clone(), topic: topic.to_owned(), partition, offset });
        }
        if positions.is_empty() {
            return Ok(());
        }
        // In memory now (lag, rebalances); durable with the writer's next group commit.
        {
            let mut state = lock(&self.group.state);
            for position in &positions {
                state.advance(&position.topic, position.partition, position.offset);
            }
        }
        self.core.queue(Request::Commit { positions, reply: None }).await
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        lock(&self.group.state).leave(self.member);
    }
}
