//! Topics, partitions and their segment files: recovery on open, the in-memory tail and
//! sparse offset index, and reads that come from memory when recent and from the segment
//! file otherwise.
//!
//! Layout: `<dir>/<topic>/partitions` holds the partition count (written last when a topic
//! is created, so a topic without it was never used); `<dir>/<topic>/<p>/<base>.log` are
//! the segments of partition `p`, `<base>` (20 digits) being the offset of their first
//! record. Only the writer thread changes a partition; readers take its lock briefly to
//! copy from the tail or to find a file position, and read files outside the lock.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::Notify;

use super::codec::{decode_record, FrameReader, Step};
use crate::error::BackendError;
use crate::log::Consumed;

/// A sparse index entry every this many bytes of a segment.
const INDEX_INTERVAL: u64 = 4096;
/// Most partitions a topic may have (bounds what is read from disk).
pub(crate) const MAX_PARTITIONS: u32 = 4096;
/// The file holding a topic's partition count.
const PARTITIONS_FILE: &str = "partitions";
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

/// Writes `contents` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    sync_dir(dir)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt(format!("{}: {what}", path.display()))
}

/// One segment file of a partition.
pub(crate) struct Segment {
    /// Offset of its first record.
    pub(crate) base: u64,
    /// Offset after its last record.
    pub(crate) end: u64,
    /// Bytes of valid records (the file is never longer once recovered).
    pub(crate) size: u64,
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    /// (offset, file position) of a record every [`INDEX_INTERVAL`] bytes, ascending.
    index: Vec<(u64, u64)>,
    /// Where the next index entry is due.
    next_index_at: u64,
}

impl Segment {
    /// Creates an empty segment file and makes its name durable.
    pub(crate) fn create(dir: &Path, base: u64) -> io::Result<Segment> {
        let path = segment_path(dir, base);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        sync_dir(dir)?;
        Ok(Segment { base, end: base, size: 0, file: Arc::new(file), path, index: Vec::new(), next_index_at: 0 })
    }

    /// Notes a record of `offset` written at `pos` (records come in offset order).
    pub(crate) fn note(&mut self, offset: u64, pos: u64) {
        if pos >= self.next_index_at {
            self.index.push((offset, pos));
            self.next_index_at = pos + INDEX_INTERVAL;
        }
    }

    /// A file position at or before the record of `offset` (which must be in the segment).
    fn position_of(&self, offset: u64) -> u64 {
        let after = self.index.partition_point(|(o, _)| *o <= offset);
        if after == 0 { 0 } else { self.index[after - 1].1 }
    }
}

/// A record held in memory, recently appended.
pub(crate) struct TailRecord {
    pub(crate) offset: u64,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
}

/// What the lock of a partition guards.
pub(crate) struct PartitionState {
    /// Ascending and contiguous; the last is the active one; never empty.
    pub(crate) segments: Vec<Segment>,
    /// The most recent records, contiguous up to the partition's end.
    tail: VecDeque<TailRecord>,
    tail_bytes: usize,
}

impl PartitionState {
    /// Adds durable records to the in-memory tail, dropping the oldest beyond `budget` bytes.
    pub(crate) fn push_tail(&mut self, records: Vec<TailRecord>, budget: usize) {
        for record in records {
            self.tail_bytes += record.key.len() + record.value.len() + TAIL_RECORD_OVERHEAD;
            self.tail.push_back(record);
        }
        while self.tail_bytes > budget {
            let Some(old) = self.tail.pop_front() else { break };
            self.tail_bytes -= old.key.len() + old.value.len() + TAIL_RECORD_OVERHEAD;
        }
    }

    pub(crate) fn active(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }
}

/// One partition of a topic.
pub(crate) struct Partition {
    pub(crate) dir: PathBuf,
    /// First offset still stored (segments before it were deleted by retention).
    pub(crate) start: AtomicU64,
    /// Offset of the next record; everything before it is durable and readable.
    pub(crate) end: AtomicU64,
    pub(crate) state: Mutex<PartitionState>,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, rebuilding the index from its segments
    /// and truncating a torn tail of the last one. A bad record in an older segment, or a
    /// gap between segments, is corruption.
    pub(crate) fn open(dir: PathBuf) -> Result<Partition, BackendError> {
        fs::create_dir_all(&dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".log") else { continue };
            match stem.parse::<u64>() {
                Ok(base) if stem.len() == 20 => bases.push(base),
                _ => tracing::warn!(file = %dir.join(name).display(), "ignoring a file that is not a segment"),
            }
        }
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let last = i + 1 == count;
            let segment = recover_segment(&dir, base, last)?;
            if let Some(previous) = segments.last() {
                let previous: &Segment = previous;
                if previous.end != segment.base {
                    return Err(corrupt(
                        &segment.path,
                        format!("expected a segment starting at offset {}, found {}", previous.end, segment.base),
                    ));
                }
            }
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(Segment::create(&dir, 0)?);
        }
        let start = segments[0].base;
        let end = segments[segments.len() - 1].end;
        Ok(Partition {
            dir,
            start: AtomicU64::new(start),
            end: AtomicU64::new(end),
            state: Mutex::new(PartitionState { segments, tail: VecDeque::new(), tail_bytes: 0 }),
        })
    }

    /// Reads up to `max` records from offset `from` on (clamped to the first stored
    /// offset), stopping early at a segment or memory boundary; returns them and the
    /// offset to read next. An empty result means `from` is at the end.
    pub(crate) async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<(Vec<Consumed>, u64), BackendError> {
        let plan = {
            let state = lock(&self.state);
            let end = self.end.load(Ordering::Acquire);
            let from = from.max(self.start.load(Ordering::Acquire));
            if from >= end || max == 0 {
                return Ok((Vec::new(), from));
            }
            let tail_start = end - state.tail.len() as u64;
            if from >= tail_start {
                let records: Vec<Consumed> = state
                    .tail
                    .range((from - tail_start) as usize..)
                    .take(max)
                    .map(|r| Consumed {
                        topic: topic.to_owned(),
                        partition,
                        offset: r.offset,
                        key: r.key.clone(),
                        value: r.value.clone(),
                    })
                    .collect();
                let next = from + records.len() as u64;
                return Ok((records, next));
            }
            let index = state.segments.partition_point(|s| s.end <= from);
            let Some(segment) = state.segments.get(index) else {
                return Err(corrupt(&self.dir, format!("no segment holds offset {from}")));
            };
            FileRead {
                file: segment.file.clone(),
                path: segment.path.clone(),
                from_pos: segment.position_of(from),
                limit: segment.size,
                from,
                until: segment.end.min(tail_start),
            }
        };
        let topic = topic.to_owned();
        let records = tokio::task::spawn_blocking(move || plan.run(&topic, partition, max))
            .await
            .map_err(|e| BackendError::Unavailable(format!("log reader stopped: {e}")))??;
        let next = match records.last() {
            Some(last) => last.offset + 1,
            None => return Err(corrupt(&self.dir, format!("offset {from} is missing from its segment"))),
        };
        Ok((records, next))
    }
}

/// A read from a segment file, planned under the partition lock and run outside it.
struct FileRead {
    file: Arc<File>,
    path: PathBuf,
    from_pos: u64,
    limit: u64,
    from: u64,
    until: u64,
}

impl FileRead {
    fn run(self, topic: &str, partition: u32, max: usize) -> Result<Vec<Consumed>, BackendError> {
        let mut reader = FrameReader::new(&self.file, self.from_pos, self.limit);
        let mut records = Vec::new();
        let mut expected: Option<u64> = None;
        while records.len() < max {
            let body = match reader.next()? {
                Step::Frame { body, .. } => body,
                Step::End => break,
                Step::Bad { pos, reason } => return Err(corrupt(&self.path, format!("{reason} at byte {pos}"))),
            };
            let record = decode_record(body).map_err(|reason| corrupt(&self.path, reason))?;
            if expected.is_some_and(|e| e != record.offset) {
                return Err(corrupt(&self.path, format!("offset {} out of sequence", record.offset)));
            }
            expected = Some(record.offset + 1);
            if record.offset >= self.until {
                break;
            }
            if record.offset < self.from {
                continue;
            }
            records.push(Consumed {
                topic: topic.to_owned(),
                partition,
                offset: record.offset,
                key: record.key.to_owned(),
                value: record.value.to_vec(),
            });
        }
        Ok(records)
    }
}

/// Scans one segment: its valid records, index and end. A bad record in the last segment
/// is a torn tail, cut off; in an older one it is corruption.
fn recover_segment(dir: &Path, base: u64, last: bool) -> Result<Segment, BackendError> {
    let path = segment_path(dir, base);
    // The writer appends through this read-write handle.
    let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
    let file_len = file.metadata()?.len();
    let mut segment = Segment {
        base,
        end: base,
        size: 0,
        file: file.clone(),
        path: path.clone(),
        index: Vec::new(),
        next_index_at: 0,
    };
    let mut reader = FrameReader::new(&file, 0, file_len);
    let bad = loop {
        match reader.next()? {
            Step::End => break None,
            Step::Bad { pos, reason } => break Some((pos, reason.to_owned())),
            Step::Frame { pos, body } => match decode_record(body) {
                Ok(record) if record.offset == segment.end => {
                    segment.note(record.offset, pos);
                    segment.end += 1;
                    segment.size = reader.position();
                }
                Ok(record) => break Some((pos, format!("offset {} where {} was expected", record.offset, segment.end))),
                Err(reason) => break Some((pos, reason.to_owned())),
            },
        }
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
            "truncating a torn tail of the log"
        );
        file.set_len(pos)?;
        file.sync_all()?;
    }
    Ok(segment)
}

/// A topic: its partitions and the consumers to wake when records arrive.
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) partitions: Vec<Partition>,
    subscribers: Mutex<Vec<Weak<Notify>>>,
}

impl Topic {
    /// Opens the topic stored in `dir`, or `None` when its creation never finished.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<Option<Topic>, BackendError> {
        let count_path = dir.join(PARTITIONS_FILE);
        let text = match fs::read_to_string(&count_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let count: u32 = match text.trim().parse() {
            Ok(n) if (1..=MAX_PARTITIONS).contains(&n) => n,
            _ => return Err(corrupt(&count_path, format!("bad partition count {:?}", text.trim()))),
        };
        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            let partition_dir = dir.join(p.to_string());
            if !partition_dir.is_dir() {
                return Err(corrupt(&partition_dir, "partition directory is missing"));
            }
            partitions.push(Partition::open(partition_dir)?);
        }
        Ok(Some(Topic { name: name.to_owned(), partitions, subscribers: Mutex::new(Vec::new()) }))
    }

    /// Creates the topic `name` with `count` partitions under `dir`, durably.
    pub(crate) fn create(root: &Path, name: &str, count: u32) -> Result<Topic, BackendError> {
        let dir = root.join(name);
        fs::create_dir_all(&dir)?;
        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            partitions.push(Partition::open(dir.join(p.to_string()))?);
        }
        sync_dir(&dir)?;
        write_atomically(&dir.join(PARTITIONS_FILE), count.to_string().as_bytes())?;
        sync_dir(root)?;
        Ok(Topic { name: name.to_owned(), partitions, subscribers: Mutex::new(Vec::new()) })
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
