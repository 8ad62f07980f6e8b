//! The journal and what is rebuilt from it: the segment files every topic and partition
//! share, recovery on open, topics with their partitions, each partition's in-memory index
//! (offset → journal position) and tail of recent records, and reads that come from memory
//! when recent and from the journal otherwise.
//!
//! Layout: `<dir>/journal/<seq>.log` (20 digits, numbered from 0 up, one more per roll).
//! Every segment opens with a checkpoint: a topic frame per topic (name, partition count
//! and each partition's next offset), a commit frame per known group position, then a
//! checkpoint end carrying the time it was written. So the oldest remaining segment alone
//! tells what came before it, and retention can delete whole segments from the front
//! without losing topics or offsets. A segment is rolled and its successor checkpointed in
//! one write, so the successor's checkpoint time is when the segment was closed: the age
//! retention gives its records (see `writer.rs`).
//! After the checkpoint come, in the order written, records, commits and new topics.
//! The active segment is allocated ahead of its writes, so its file ends in zeros; a
//! segment is cut to its frames when it is closed and on a clean stop.
//! Only the writer thread changes the journal and the indexes; readers take a
//! partition's lock briefly to share records of the tail or to find journal positions,
//! and copy records or read files outside the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;

use super::codec::{decode, read_frame_at, zeros_from, Entry, FrameReader, Step};
use super::groups::Position;
use crate::error::BackendError;
use crate::log::Consumed;

/// The directory of the journal segments, under the log's directory.
pub(crate) const JOURNAL_DIR: &str = "journal";
/// Bytes a record costs in the tail besides its key and value.
const TAIL_RECORD_OVERHEAD: usize = 64;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Whether `name` can be a topic: Kafka's legal characters, not `.`/`..`, and not starting
/// with `__` (reserved for the log's own files).
pub(crate) fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && !name.starts_with("__")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `time` as milliseconds since the Unix epoch, as the journal writes it (0 before it).
pub(crate) fn to_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// The time `millis` (since the Unix epoch) as the journal wrote it.
fn from_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt(format!("{}: {what}", path.display()))
}

/// One journal segment file, as the writer sees it.
pub(crate) struct Segment {
    pub(crate) seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// Bytes of valid frames; the file may be longer, zeros from here on up to
    /// `allocated` (see `EmbeddedLogOptions::preallocate_bytes`).
    pub(crate) size: u64,
    /// The file's length: `size` plus the space allocated ahead of the writes.
    pub(crate) allocated: u64,
    /// Whether the segment's checkpoint is written (it opens every segment).
    pub(crate) checkpointed: bool,
    /// Bytes of the checkpoint: a segment holding no more is not rolled, however small
    /// `segment_bytes` is.
    pub(crate) checkpoint_bytes: u64,
    /// (topic id, partition) → the offset after the partition's last record here; what
    /// retention compares with the groups' committed offsets.
    pub(crate) highest: HashMap<(u32, u32), u64>,
    /// When the checkpoint was written (`None` before it is, or when a journal of an
    /// earlier version did not record it).
    pub(crate) started: Option<SystemTime>,
    /// When the segment was closed (the next one started): none of its records is younger.
    /// `None` while it is the active one.
    pub(crate) closed: Option<SystemTime>,
}

impl Segment {
    /// Creates an empty segment file and makes its name durable.
    pub(crate) fn create(dir: &Path, seq: u64) -> io::Result<Segment> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        sync_dir(dir)?;
        Ok(Segment::unread(seq, path, Arc::new(file)))
    }

    /// A segment as known before anything in it is read or written.
    fn unread(seq: u64, path: PathBuf, file: Arc<File>) -> Segment {
        Segment {
            seq,
            path,
            file,
            size: 0,
            allocated: 0,
            checkpointed: false,
            checkpoint_bytes: 0,
            highest: HashMap::new(),
            started: None,
            closed: None,
        }
    }

    /// Gives back the space allocated after the frames; returns whether there was any.
    pub(crate) fn cut_to_frames(&mut self) -> io::Result<bool> {
        if self.allocated <= self.size {
            return Ok(false);
        }
        self.file.set_len(self.size)?;
        self.allocated = self.size;
        Ok(true)
    }

    /// Notes a record of a partition stored here.
    pub(crate) fn note(&mut self, topic: u32, partition: u32, offset: u64) {
        let next = self.highest.entry((topic, partition)).or_insert(0);
        *next = (*next).max(offset + 1);
    }
}

/// The segment files readers may read, by sequence number (the writer adds and removes).
#[derive(Default)]
pub(crate) struct SegmentFiles {
    files: RwLock<BTreeMap<u64, Arc<File>>>,
}

impl SegmentFiles {
    pub(crate) fn insert(&self, seq: u64, file: Arc<File>) {
        self.files.write().unwrap_or_else(|p| p.into_inner()).insert(seq, file);
    }

    pub(crate) fn remove(&self, seq: u64) {
        self.files.write().unwrap_or_else(|p| p.into_inner()).remove(&seq);
    }

    fn get(&self, seq: u64) -> Option<Arc<File>> {
        self.files.read().unwrap_or_else(|p| p.into_inner()).get(&seq).cloned()
    }
}

/// Where a record's frame is in the journal.
#[derive(Clone, Copy)]
pub(crate) struct Loc {
    pub(crate) segment: u64,
    pub(crate) pos: u64,
}

/// A record held in memory, recently appended. Its key and value are shared, so that a
/// reader takes them under the partition lock without copying: the copies a `Consumed`
/// needs are made after the lock is released, and a large poll does not hold up appends.
pub(crate) struct TailRecord {
    pub(crate) offset: u64,
    pub(crate) key: Arc<str>,
    pub(crate) value: Bytes,
}

/// What the lock of a partition guards.
pub(crate) struct PartitionState {
    /// The journal position of each stored record, from offset `start` on.
    locs: VecDeque<Loc>,
    /// The most recent records, contiguous up to the partition's end.
    tail: VecDeque<TailRecord>,
    tail_bytes: usize,
}

/// One partition of a topic: an index into the journal and a tail in memory.
pub(crate) struct Partition {
    /// First offset still stored (records before it were deleted by retention).
    pub(crate) start: AtomicU64,
    /// Offset of the next record; everything before it is durable and readable.
    pub(crate) end: AtomicU64,
    pub(crate) state: Mutex<PartitionState>,
}

impl Partition {
    /// An empty partition whose next record gets offset `end`.
    fn new(end: u64) -> Partition {
        Partition {
            start: AtomicU64::new(end),
            end: AtomicU64::new(end),
            state: Mutex::new(PartitionState { locs: VecDeque::new(), tail: VecDeque::new(), tail_bytes: 0 }),
        }
    }

    /// Publishes durable records written at `locs` (from offset `end` on): index, tail,
    /// then the end offset that makes them visible.
    pub(crate) fn publish(&self, locs: impl Iterator<Item = Loc>, records: Vec<TailRecord>, budget: usize) {
        let mut state = lock(&self.state);
        state.locs.extend(locs);
        for record in records {
            state.tail_bytes += record.key.len() + record.value.len() + TAIL_RECORD_OVERHEAD;
            state.tail.push_back(record);
        }
        while state.tail_bytes > budget {
            let Some(old) = state.tail.pop_front() else { break };
            state.tail_bytes -= old.key.len() + old.value.len() + TAIL_RECORD_OVERHEAD;
        }
        let end = self.start.load(Ordering::Acquire) + state.locs.len() as u64;
        self.end.store(end, Ordering::Release);
    }

    /// Forgets the records stored in segments before `first` (deleted by retention).
    pub(crate) fn forget_before(&self, first: u64) {
        let mut state = lock(&self.state);
        let mut dropped = 0;
        while state.locs.front().is_some_and(|loc| loc.segment < first) {
            state.locs.pop_front();
            dropped += 1;
        }
        self.start.fetch_add(dropped, Ordering::AcqRel);
    }

    /// Reads up to `max` records from offset `from` on (clamped to the first stored
    /// offset), from the tail when they are there and from the journal otherwise;
    /// returns them and the offset to read next. An empty result means `from` is at the
    /// end.
    pub(crate) async fn read(
        &self,
        topic: &Topic,
        partition: u32,
        from: u64,
        max: usize,
        files: &SegmentFiles,
    ) -> Result<(Vec<Consumed>, u64), BackendError> {
        let plan = {
            let state = lock(&self.state);
            let end = self.end.load(Ordering::Acquire);
            let start = self.start.load(Ordering::Acquire);
            let from = from.max(start);
            if from >= end || max == 0 {
                return Ok((Vec::new(), from));
            }
            let tail_start = end - state.tail.len() as u64;
            if from >= tail_start {
                let shared: Vec<(u64, Arc<str>, Bytes)> = state
                    .tail
                    .range((from - tail_start) as usize..)
                    .take(max)
                    .map(|r| (r.offset, Arc::clone(&r.key), r.value.clone()))
                    .collect();
                drop(state);
                let records: Vec<Consumed> = shared
                    .into_iter()
                    .map(|(offset, key, value)| Consumed {
                        topic: topic.name.clone(),
                        partition,
                        offset,
                        key: key.as_ref().to_owned(),
                        value: value.to_vec(),
                    })
                    .collect();
                let next = from + records.len() as u64;
                return Ok((records, next));
            }
            // Files are looked up under the partition lock: retention drops a segment
            // from the index before it drops the file, so a planned read finds its file.
            let until = tail_start.min(from + max as u64);
            let mut reads = Vec::with_capacity((until - from) as usize);
            for offset in from..until {
                let Some(loc) = state.locs.get((offset - start) as usize) else { break };
                let Some(file) = files.get(loc.segment) else {
                    return Err(BackendError::Corrupt(format!("journal segment {} is missing", loc.segment)));
                };
                reads.push((offset, file, loc.pos));
            }
            reads
        };
        let (id, name) = (topic.id, topic.name.clone());
        let records = tokio::task::spawn_blocking(move || read_records(id, &name, partition, plan))
            .await
            .map_err(|e| BackendError::Unavailable(format!("log reader stopped: {e}")))??;
        let next = match records.last() {
            Some(last) => last.offset + 1,
            None => return Err(BackendError::Corrupt(format!("offset {from} of {}/{partition} is missing", topic.name))),
        };
        Ok((records, next))
    }
}

/// Reads records at known journal positions, checking each is the one expected.
fn read_records(
    topic: u32,
    name: &str,
    partition: u32,
    reads: Vec<(u64, Arc<File>, u64)>,
) -> Result<Vec<Consumed>, BackendError> {
    let mut records = Vec::with_capacity(reads.len());
    for (offset, file, pos) in reads {
        let bad = |what: &str| BackendError::Corrupt(format!("journal record {name}/{partition}@{offset}: {what}"));
        // Indexed records are whole (they were synced before being indexed).
        let body = read_frame_at(&file, pos, u64::MAX)?.map_err(bad)?;
        match decode(&body).map_err(bad)? {
            Entry::Record(r) if r.topic == topic && r.partition == partition && r.offset == offset => {
                records.push(Consumed {
                    topic: name.to_owned(),
                    partition,
                    offset,
                    key: r.key.to_owned(),
                    value: r.value.to_vec(),
                })
            }
            _ => return Err(bad("another frame is at its position")),
        }
    }
    Ok(records)
}

/// A topic: its partitions and the consumers to wake when records arrive.
pub(crate) struct Topic {
    /// What journal frames call it.
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) partitions: Vec<Partition>,
    subscribers: Mutex<Vec<Weak<Notify>>>,
}

impl Topic {
    /// A topic whose partitions' next offsets are `ends` (one per partition).
    pub(crate) fn new(id: u32, name: &str, ends: &[u64]) -> Topic {
        Topic {
            id,
            name: name.to_owned(),
            partitions: ends.iter().map(|end| Partition::new(*end)).collect(),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// The next offset of each partition.
    pub(crate) fn ends(&self) -> Vec<u64> {
        self.partitions.iter().map(|p| p.end.load(Ordering::Acquire)).collect()
    }

    /// Wakes `notify` whenever records are appended to this topic.
    pub(crate) fn subscribe(&self, notify: &Arc<Notify>) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.push(Arc::downgrade(notify));
    }

    /// Wakes every live subscriber (a wake-up is kept for one that is not waiting yet).
    pub(crate) fn wake(&self) {
        lock(&self.subscribers).retain(|s| match s.upgrade() {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
    }
}

/// What a scan of the journal rebuilt.
pub(crate) struct Recovered {
    /// Ascending by sequence number; the last is the active one; never empty.
    pub(crate) segments: Vec<Segment>,
    /// Every topic, by id.
    pub(crate) topics: Vec<Arc<Topic>>,
    /// Committed positions in the order written (the highest wins).
    pub(crate) commits: Vec<Position>,
}

/// Opens (or creates) the journal in `dir` and rebuilds topics, partition indexes,
/// committed offsets and when each segment was closed from it. A bad frame in the last
/// segment is a torn tail, cut off; in an older one it is corruption. Segments older than
/// a gap in the numbering are leftovers of retention (their deletion was not yet durable)
/// and are deleted.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, BackendError> {
    fs::create_dir_all(dir)?;
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else { continue };
        match stem.parse::<u64>() {
            Ok(seq) if stem.len() == 20 => seqs.push(seq),
            _ => tracing::warn!(file = %dir.join(name).display(), "ignoring a file that is not a journal segment"),
        }
    }
    seqs.sort_unstable();
    let contiguous_from = (1..seqs.len()).rev().find(|&i| seqs[i - 1] + 1 != seqs[i]).unwrap_or(0);
    for seq in seqs.drain(..contiguous_from) {
        let path = segment_path(dir, seq);
        tracing::info!(file = %path.display(), "deleting a journal segment retention had already let go");
        fs::remove_file(&path)?;
    }

    let mut scan = Scan { topics: Vec::new(), commits: Vec::new() };
    let mut segments = Vec::with_capacity(seqs.len() + 1);
    let count = seqs.len();
    for (i, seq) in seqs.into_iter().enumerate() {
        segments.push(scan.segment(dir, seq, i + 1 == count)?);
    }
    if segments.is_empty() {
        segments.push(Segment::create(dir, 0)?);
    }
    for i in 1..segments.len() {
        // A segment was closed when the next one started. When that is not recorded (the
        // next segment's checkpoint was torn in a crash and cut off, or an earlier version
        // wrote the journal), the file's modification time stands in: its last write, so
        // no record in it is younger (a copied file looks younger and is kept longer).
        let closed = match segments[i].started {
            Some(started) => Some(started),
            None => segments[i - 1].file.metadata().and_then(|m| m.modified()).ok(),
        };
        segments[i - 1].closed = closed;
    }
    Ok(Recovered { segments, topics: scan.topics, commits: scan.commits })
}

/// The state a recovery scan builds up, segment after segment.
struct Scan {
    topics: Vec<Arc<Topic>>,
    commits: Vec<Position>,
}

impl Scan {
    /// Replays one segment into the state; see [`recover`].
    fn segment(&mut self, dir: &Path, seq: u64, last: bool) -> Result<Segment, BackendError> {
        let path = segment_path(dir, seq);
        // The writer appends through this read-write handle.
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
        let file_len = file.metadata()?.len();
        let mut segment = Segment::unread(seq, path.clone(), file.clone());
        segment.allocated = file_len;
        let mut reader = FrameReader::new(&file, 0, file_len);
        let bad = loop {
            match reader.next()? {
                Step::End => break None,
                Step::Bad { pos, reason } => break Some((pos, reason.to_owned())),
                Step::Frame { pos, body } => {
                    let applied = match decode(body) {
                        Ok(entry) => self.apply(&mut segment, entry, pos),
                        Err(reason) => Err(reason.to_owned()),
                    };
                    if let Err(reason) = applied {
                        break Some((pos, reason));
                    }
                    segment.size = reader.position();
                    if segment.checkpointed && segment.checkpoint_bytes == 0 {
                        segment.checkpoint_bytes = segment.size;
                    }
                }
            }
        };
        // Zeros after the last frame of the active segment are space allocated ahead of the
        // writes (closed segments are cut to their frames before the next one is created).
        let bad = match bad {
            Some((pos, _)) if last && zeros_from(&file, pos, file_len)? => None,
            other => other,
        };
        if let Some((pos, reason)) = bad {
            if !last {
                return Err(corrupt(&path, format!("{reason} at byte {pos}")));
            }
            tracing::warn!(
                file = %path.display(),
                byte = pos,
                dropped_bytes = file_len - pos,
                %reason,
                "truncating a torn tail of the journal"
            );
            file.set_len(pos)?;
            file.sync_all()?;
            segment.allocated = pos;
        }
        if !segment.checkpointed {
            if !last {
                return Err(corrupt(&path, "segment without a checkpoint"));
            }
            // Cut short while being started: it holds nothing its checkpoint would not
            // repeat, so it starts again.
            file.set_len(0)?;
            file.sync_all()?;
            segment.size = 0;
            segment.allocated = 0;
        }
        Ok(segment)
    }

    /// Applies one frame; `Err` says why it cannot be (a torn tail or corruption).
    fn apply(&mut self, segment: &mut Segment, entry: Entry<'_>, pos: u64) -> Result<(), String> {
        match entry {
            Entry::Topic(t) => match self.topics.get(t.id as usize) {
                Some(known) if known.name == t.name && known.partitions.len() == t.ends.len() => {}
                Some(known) => return Err(format!("topic {} redefined as {:?}", known.name, t.name)),
                None if t.id as usize == self.topics.len() && valid_topic_name(t.name) => {
                    self.topics.push(Arc::new(Topic::new(t.id, t.name, &t.ends)));
                }
                None => return Err(format!("topic id {} out of sequence", t.id)),
            },
            Entry::CheckpointEnd { started_ms } => {
                segment.checkpointed = true;
                segment.started = started_ms.map(from_millis);
            }
            Entry::Commit(c) => {
                let Some(topic) = self.topics.get(c.topic as usize) else {
                    return Err(format!("commit to unknown topic id {}", c.topic));
                };
                if c.partition < topic.partitions.len() as u32 {
                    self.commits.push(Position {
                        group: c.group.to_owned(),
                        topic: topic.name.clone(),
                        partition: c.partition,
                        offset: c.offset,
                    });
                }
            }
            Entry::Record(r) => {
                if !segment.checkpointed {
                    return Err("record inside a checkpoint".into());
                }
                let Some(partition) = self.topics.get(r.topic as usize).and_then(|t| t.partitions.get(r.partition as usize))
                else {
                    return Err(format!("record of unknown partition {}/{}", r.topic, r.partition));
                };
                let end = partition.end.load(Ordering::Acquire);
                if r.offset != end {
                    return Err(format!("offset {} where {end} was expected", r.offset));
                }
                let mut state = lock(&partition.state);
                state.locs.push_back(Loc { segment: segment.seq, pos });
                partition.end.store(end + 1, Ordering::Release);
                segment.note(r.topic, r.partition, r.offset);
            }
        }
        Ok(())
    }
}
