//! The writer thread: the only code that changes the journal. It takes requests from a
//! bounded channel and writes everything queued (up to a record and byte budget) as one
//! group commit: the records of every topic and partition, the consumer commits and any
//! new topic, in one write to the active journal segment, made durable with one
//! `fdatasync`. Then it publishes the records to readers (partition indexes, tails, end
//! offsets), wakes consumers, applies retention and answers the callers.
//!
//! A segment is rolled once the group would grow it past `segment_bytes`: the new file's
//! name is synced (one `fsync` of the journal directory, per roll) and it opens with a
//! checkpoint of every topic and committed offset, written and synced with the group. The
//! checkpoint ends with the time of the roll, which is when the old segment was closed.
//!
//! Retention deletes journal segments from the oldest on (never the active one) while
//! each is free (see the module docs of `embedded.rs`): every record of a topic some group
//! knows is below the committed offset of every group that knows it, and, when it holds
//! records of a topic no group knows, it was closed `unclaimed_retention` ago. The close
//! time is the one written in the next segment's checkpoint rather than the file's
//! modification time: it is made durable by the same `fdatasync` as the checkpoint
//! (`fdatasync` need not write a file's times), a copy or restore of the directory does not
//! change it, and it costs 8 bytes a segment. Deletions are not synced: a segment that
//! comes back after a crash is older than the checkpoint that replaced it, and recovery
//! drops it (see `recover` in `storage.rs`).
//!
//! Failures: a failed write is undone (the segment cut back) and the callers whose
//! requests it held get the error; a failed `fdatasync` leaves the page cache
//! untrustworthy, so the log stops taking requests (`check` fails) until it is reopened
//! and recovers from the journal.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

use super::codec::{encode_checkpoint_end, encode_commit, encode_record, encode_topic, partition_for};
use super::groups::{Committed, Position};
use super::storage::{to_millis, Loc, Segment, TailRecord, Topic};
use super::Shared;
use crate::error::BackendError;
use crate::log::Record;

pub(crate) type Reply = oneshot::Sender<Result<(), BackendError>>;

/// Work for the writer thread.
pub(crate) enum Request {
    /// Append `records` to `topic` (validated by the caller).
    Append { topic: Arc<Topic>, records: Vec<Record>, reply: Reply },
    /// Record group positions (validated, and already applied in memory, by the caller);
    /// answered once durable when there is a `reply`.
    Commit { positions: Vec<Position>, reply: Option<Reply> },
    /// Create topic `name` (validated by the caller) unless it exists.
    CreateTopic { name: String, reply: Reply },
}

impl Request {
    /// Whether a caller waits for its answer (a consumer's offset commit need not).
    fn has_caller(&self) -> bool {
        match self {
            Request::Append { .. } | Request::CreateTopic { .. } => true,
            Request::Commit { reply, .. } => reply.is_some(),
        }
    }

    fn weight(&self) -> (usize, usize) {
        match self {
            Request::Append { records, .. } => {
                (records.len(), records.iter().map(|r| r.key.len() + r.value.len() + 32).sum())
            }
            Request::Commit { positions, .. } => (positions.len(), positions.len() * 64),
            Request::CreateTopic { .. } => (1, 64),
        }
    }
}

/// Records of one partition written in one group.
struct Pending {
    topic: Arc<Topic>,
    partition: u32,
    /// Offset after the last record.
    next: u64,
    /// Position of each record's frame in the group's bytes.
    frames: Vec<usize>,
    records: Vec<TailRecord>,
}

fn copy_error(error: &io::Error) -> BackendError {
    BackendError::Io(io::Error::new(error.kind(), error.to_string()))
}

fn answer(replies: Vec<Reply>, outcome: impl Fn() -> Result<(), BackendError>) {
    for reply in replies {
        let _ = reply.send(outcome());
    }
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) requests: mpsc::Receiver<Request>,
    /// Journal segments, oldest first; the last is the active one; never empty.
    pub(crate) segments: Vec<Segment>,
    /// Every topic, by id.
    pub(crate) topics: Vec<Arc<Topic>>,
    /// Committed offsets as the journal holds them.
    pub(crate) committed: Committed,
    /// When the oldest segment's unclaimed records reach their retention time, if only
    /// that holds it (a commit, not time, frees a segment a group has not read).
    pub(crate) expiry: Option<SystemTime>,
    /// Commits written by groups that held nothing else, not yet synced: they become
    /// durable (and count for retention) with the next group that is synced.
    pub(crate) unsynced_commits: Vec<Position>,
    /// Bytes the active segment is extended by ahead of its writes (zero once the file
    /// system refused).
    pub(crate) preallocate: u64,
}

/// Whether retention may delete a closed segment.
enum Verdict {
    /// Nothing in it is still wanted.
    Free,
    /// Kept until every group that knows its topics has committed past its records there
    /// (for good when the retention time is too long to count).
    Held,
    /// Its records of topics no group knows are kept until then.
    Until(SystemTime),
}

/// Marks the writer stopped however its thread ends.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

/// One group being assembled: the bytes to write and who to tell.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    pending: Vec<Pending>,
    slots: HashMap<(u32, u32), usize>,
    topics: Vec<Arc<Topic>>,
    commits: Vec<Position>,
    replies: Vec<Reply>,
}

impl Writer {
    /// Runs until every request sender is gone and the queue is drained.
    pub(crate) fn run(mut self) {
        let _alive = AliveGuard(self.shared.clone());
        let now = self.shared.options.clock.now();
        let closed = self.segments.len() - 1;
        for segment in self.segments.iter_mut().take(closed) {
            // Only when neither the journal nor the file tells (see `recover`): counted
            // from now, so nothing goes early.
            segment.closed.get_or_insert(now);
        }
        self.retain();
        let options = &self.shared.options;
        let (max_records, max_bytes, wait) = (options.max_group_records, options.max_group_bytes, options.group_wait);
        // When the last group that held requests of several waiting callers ended: waiting
        // for more only pays while callers overlap (a lone caller's next request cannot come
        // before its answer, so it would only wait).
        let mut last_shared_group_end: Option<Instant> = None;
        while let Some(first) = self.requests.blocking_recv() {
            let busy = last_shared_group_end.is_some_and(|end| end.elapsed() < wait * 4);
            let (mut records, mut bytes) = first.weight();
            let mut group = vec![first];
            let mut waited = false;
            loop {
                while records < max_records && bytes < max_bytes {
                    let Ok(next) = self.requests.try_recv() else { break };
                    let (r, b) = next.weight();
                    records += r;
                    bytes += b;
                    group.push(next);
                }
                if waited || !busy || wait.is_zero() || records >= max_records || bytes >= max_bytes {
                    break;
                }
                std::thread::sleep(wait);
                waited = true;
            }
            let shared = group.iter().filter(|request| request.has_caller()).count() > 1;
            self.process(group);
            if shared {
                last_shared_group_end = Some(Instant::now());
            }
        }
        // A clean stop leaves the file as long as its frames.
        if let Err(error) = self.active().cut_to_frames() {
            tracing::warn!(%error, "cannot cut the journal's allocated space off at a stop");
        }
        if !self.unsynced_commits.is_empty() {
            // A clean stop leaves every commit durable (a restart redelivers nothing).
            if let Err(error) = self.active().file.sync_data() {
                tracing::warn!(%error, "cannot sync the last offset commits; their records may be redelivered");
            }
        }
        tracing::debug!("embedded log writer stopped");
    }

    /// Writes, syncs and publishes one group.
    fn process(&mut self, group: Vec<Request>) {
        let mut batch = Batch::default();
        for request in group {
            match request {
                Request::Append { topic, records, reply } => {
                    self.encode_records(&mut batch, &topic, records);
                    batch.replies.push(reply);
                }
                Request::Commit { positions, reply } => {
                    for position in positions {
                        self.encode_commit(&mut batch, position);
                    }
                    batch.replies.extend(reply);
                }
                Request::CreateTopic { name, reply } => {
                    self.encode_topic(&mut batch, &name);
                    batch.replies.push(reply);
                }
            }
        }
        if let Some(failure) = self.shared.failure() {
            answer(batch.replies, || Err(BackendError::Unavailable(failure.clone())));
            return;
        }
        if batch.bytes.is_empty() {
            answer(batch.replies, || Ok(()));
            return;
        }

        // Offset commits alone are not worth a sync of their own: losing one in a crash only
        // redelivers records (at-least-once), and the next append's sync makes them durable.
        let commits_only = batch.pending.is_empty() && batch.topics.is_empty();
        let segments = self.segments.len();
        let base = match self.write(&batch.bytes) {
            Ok(base) => base,
            Err(error) => {
                answer(batch.replies, || Err(copy_error(&error)));
                return;
            }
        };
        if commits_only && self.segments.len() == segments {
            self.active().size = base + batch.bytes.len() as u64;
            self.unsynced_commits.extend(batch.commits);
            answer(batch.replies, || Ok(()));
            return;
        }
        // One sync for the whole group, whatever topics and partitions it touched.
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.active().file.sync_data() {
            tracing::error!(%error, "the journal can no longer be trusted; the log stops until restart");
            self.shared.fail(format!("log stopped after a failed sync: {error}"));
            answer(batch.replies, || Err(copy_error(&error)));
            return;
        }
        self.active().size = base + batch.bytes.len() as u64;

        for topic in batch.topics {
            self.shared.add_topic(topic.clone());
            self.topics.push(topic);
        }
        self.publish(base, batch.pending);
        // A roll closed a segment, whose retention time starts now; a commit may free the
        // oldest segments; time may have freed the oldest's unclaimed records.
        let rolled = self.segments.len() != segments;
        let synced_commits = !batch.commits.is_empty() || !self.unsynced_commits.is_empty();
        let retain = rolled
            || synced_commits
            || self.expiry.is_some_and(|expiry| self.shared.options.clock.now() >= expiry);
        for position in self.unsynced_commits.drain(..).chain(batch.commits) {
            self.committed.advance(&position);
        }
        // Retention before answering: a caller that sees its call done also sees the space
        // freed by the commits before it (deletions are rare, one per consumed segment).
        if retain {
            self.retain();
        }
        answer(batch.replies, || Ok(()));
    }

    fn active(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Encodes `records` into the batch, each in its key's partition, assigning offsets.
    fn encode_records(&self, batch: &mut Batch, topic: &Arc<Topic>, records: Vec<Record>) {
        let count = topic.partitions.len() as u32;
        for record in records {
            let partition = partition_for(&record.key, count);
            let slot = *batch.slots.entry((topic.id, partition)).or_insert_with(|| {
                let next = topic.partitions[partition as usize].end.load(Ordering::Acquire);
                batch.pending.push(Pending {
                    topic: topic.clone(),
                    partition,
                    next,
                    frames: Vec::new(),
                    records: Vec::new(),
                });
                batch.pending.len() - 1
            });
            let p = &mut batch.pending[slot];
            p.frames.push(batch.bytes.len());
            encode_record(&mut batch.bytes, topic.id, partition, p.next, &record.key, &record.value);
            p.records.push(TailRecord { offset: p.next, key: record.key.into(), value: record.value.into() });
            p.next += 1;
        }
    }

    /// Encodes a commit frame when `position` moves its group forward.
    fn encode_commit(&self, batch: &mut Batch, position: Position) {
        if !self.committed.moves(&position) {
            return;
        }
        let Some(topic) = self.shared.topic(&position.topic) else { return };
        encode_commit(&mut batch.bytes, &position.group, topic.id, position.partition, position.offset);
        batch.commits.push(position);
    }

    /// Encodes the definition of topic `name` unless it exists (or is in the batch).
    fn encode_topic(&self, batch: &mut Batch, name: &str) {
        if self.shared.topic(name).is_some() || batch.topics.iter().any(|t| t.name == name) {
            return;
        }
        let id = (self.topics.len() + batch.topics.len()) as u32;
        let ends = vec![0; self.shared.options.partitions as usize];
        encode_topic(&mut batch.bytes, id, name, &ends);
        batch.topics.push(Arc::new(Topic::new(id, name, &ends)));
    }

    /// Writes `bytes` to the active segment (after rolling it, when full, and after its
    /// checkpoint, when not yet written); returns the file position of `bytes`. On
    /// failure the segment is cut back.
    fn write(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let segment_bytes = self.shared.options.segment_bytes;
        let active = &self.segments[self.segments.len() - 1];
        let full = active.size + bytes.len() as u64 > segment_bytes;
        let roll = active.checkpointed && full && active.size > active.checkpoint_bytes;
        let now = if roll || !active.checkpointed { Some(self.shared.options.clock.now()) } else { None };
        if roll {
            let unsynced_commits = !self.unsynced_commits.is_empty();
            let active = self.active();
            // A closed segment ends at its last frame: recovery takes zeros after the frames
            // for the end only in the active segment.
            let cut = active.cut_to_frames()?;
            if cut || unsynced_commits {
                // A closed segment ends synced: only the active one may have a torn tail.
                active.file.sync_all()?;
            }
            let next = active.seq + 1;
            let segment = Segment::create(&self.shared.journal_dir(), next)?;
            self.shared.files.insert(segment.seq, segment.file.clone());
            self.active().closed = now;
            self.segments.push(segment);
        }
        let checkpoint = match now {
            Some(now) if !self.active().checkpointed => self.checkpoint(now),
            _ => Vec::new(),
        };
        let written = (checkpoint.len() + bytes.len()) as u64;
        self.preallocate_for(written);
        let active = self.active();
        let at = active.size;
        let outcome = if checkpoint.is_empty() {
            active.file.write_all_at(bytes, at)
        } else {
            active.file.write_all_at(&[checkpoint.as_slice(), bytes].concat(), at)
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "log append failed; undoing it");
            match active.file.set_len(at) {
                Ok(()) => active.allocated = at,
                Err(undo_error) => {
                    tracing::error!(%undo_error, "cannot undo a failed log write; the log stops until restart");
                    self.shared.fail(format!("log stopped after a failed write: {error}"));
                }
            }
            return Err(error);
        }
        active.allocated = active.allocated.max(at + written);
        if !checkpoint.is_empty() {
            // Before the sync that makes it durable: a failed sync stops the log anyway.
            active.checkpointed = true;
            active.started = now;
            active.size += checkpoint.len() as u64;
            active.checkpoint_bytes = active.size;
        }
        Ok(active.size)
    }

    /// Makes room for `bytes` more in the active segment: when they would pass its
    /// allocated end, it is extended by `preallocate` bytes beyond them.
    fn preallocate_for(&mut self, bytes: u64) {
        let preallocate = self.preallocate;
        let active = self.active();
        let end = active.size + bytes;
        if preallocate == 0 || end <= active.allocated {
            return;
        }
        let target = end + preallocate;
        let from = active.allocated;
        match allocate(&active.file, from, target - from) {
            Ok(()) => active.allocated = target,
            Err(error) => {
                // Writes extend the file as they go, at the price of costlier syncs.
                tracing::warn!(%error, "cannot allocate journal space ahead of writes; extending the file write by write");
                self.preallocate = 0;
            }
        }
    }

    /// The frames that open a segment: every topic with its partitions' next offsets,
    /// every committed position, then the checkpoint end with the time `now`.
    fn checkpoint(&self, now: SystemTime) -> Vec<u8> {
        let mut bytes = Vec::new();
        for topic in &self.topics {
            encode_topic(&mut bytes, topic.id, &topic.name, &topic.ends());
        }
        for position in self.committed.positions() {
            let Some(topic) = self.shared.topic(&position.topic) else { continue };
            encode_commit(&mut bytes, &position.group, topic.id, position.partition, position.offset);
        }
        encode_checkpoint_end(&mut bytes, to_millis(now));
        bytes
    }

    /// Makes written records visible: index, tail, end offset; then wakes consumers.
    fn publish(&mut self, base: u64, pending: Vec<Pending>) {
        let budget = self.shared.options.tail_bytes;
        let active = self.active();
        let seq = active.seq;
        let mut touched: Vec<Arc<Topic>> = Vec::new();
        for p in pending {
            active.note(p.topic.id, p.partition, p.next - 1);
            let locs = p.frames.iter().map(|frame| Loc { segment: seq, pos: base + *frame as u64 });
            p.topic.partitions[p.partition as usize].publish(locs, p.records, budget);
            if !touched.iter().any(|t| Arc::ptr_eq(t, &p.topic)) {
                touched.push(p.topic);
            }
        }
        for topic in touched {
            topic.wake();
        }
    }

    /// Whether retention may delete the closed `segment` (see the module docs).
    fn verdict(&self, segment: &Segment) -> Verdict {
        let mut unclaimed = false;
        for ((topic, partition), next) in &segment.highest {
            let Some(topic) = self.topics.get(*topic as usize) else { return Verdict::Held };
            match self.committed.floor(&topic.name, *partition) {
                Some(floor) if floor >= *next => {}
                Some(_) => return Verdict::Held,
                None => unclaimed = true,
            }
        }
        if !unclaimed {
            return Verdict::Free;
        }
        let retention = self.shared.options.unclaimed_retention;
        match segment.closed.and_then(|closed| closed.checked_add(retention)) {
            Some(until) => Verdict::Until(until),
            // A retention too long to add to a time keeps the records for good.
            None => Verdict::Held,
        }
    }

    /// Deletes free segments from the oldest on and notes when the first one kept frees
    /// itself, if time alone holds it (see the module docs).
    fn retain(&mut self) {
        let closed = self.segments.len() - 1;
        let mut now = None;
        let mut count = 0;
        self.expiry = None;
        for segment in &self.segments[..closed] {
            match self.verdict(segment) {
                Verdict::Free => {}
                Verdict::Held => break,
                Verdict::Until(until) => {
                    let now = *now.get_or_insert_with(|| self.shared.options.clock.now());
                    if now < until {
                        self.expiry = Some(until);
                        break;
                    }
                }
            }
            count += 1;
        }
        if count == 0 {
            return;
        }
        let removed: Vec<Segment> = self.segments.drain(..count).collect();
        let first = self.segments[0].seq;
        // Indexes first, then files: a reader that planned under a partition lock still
        // finds its file (see `Partition::read`).
        for topic in &self.topics {
            for partition in &topic.partitions {
                partition.forget_before(first);
            }
        }
        for segment in &removed {
            self.shared.files.remove(segment.seq);
        }
        for path in removed.into_iter().map(|s| s.path) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(file = %path.display(), "deleted a journal segment retention let go"),
                Err(error) => tracing::warn!(file = %path.display(), %error, "cannot delete a journal segment"),
            }
        }
    }
}

/// Allocates `len` bytes of `file` from `offset` on (reading as zeros), growing its length.
fn allocate(file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let offset = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::fcntl::posix_fallocate(file.as_raw_fd(), offset, len).map_err(io::Error::from)
}
