//! The writer thread: the only code that changes files. It takes requests from a bounded
//! channel, writes everything queued (up to a record and byte budget: appends to their
//! partitions' active segments, commits to the commit log), makes the whole group durable
//! with one `fdatasync` per touched file (group commit): a group touching one or two files
//! syncs them on the writer thread; a larger one shares its files out, two a thread, to
//! as few sync threads as it needs, so the syncs overlap (their waits for the disk and, on
//! ext4, one journal commit) without waking a thread per file. Then it publishes the
//! records to readers, wakes consumers and answers every caller.
//!
//! Failures: a failed write is undone (files cut back) and the callers whose requests it
//! held get the error; a failed `fdatasync` leaves the page cache untrustworthy, so the
//! log stops taking requests (`check` fails) until it is reopened and recovers from the
//! files.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

use super::codec::{encode_record, partition_for};
use super::groups::{CommitLog, Position, Staged};
use super::storage::{lock, sync_dir, Segment, TailRecord, Topic};
use super::Shared;
use crate::error::BackendError;
use crate::log::Record;

pub(crate) type Reply = oneshot::Sender<Result<(), BackendError>>;

/// Work for the writer thread.
pub(crate) enum Request {
    /// Append `records` to `topic` (validated by the caller).
    Append { topic: Arc<Topic>, records: Vec<Record>, reply: Reply },
    /// Persist group positions (validated by the caller).
    Commit { positions: Vec<Position>, reply: Reply },
}

impl Request {
    fn weight(&self) -> (usize, usize) {
        match self {
            Request::Append { records, .. } => {
                (records.len(), records.iter().map(|r| r.key.len() + r.value.len() + 32).sum())
            }
            Request::Commit { positions, .. } => (positions.len(), positions.len() * 64),
        }
    }
}

/// Records of one partition written in one group.
struct Pending {
    topic: Arc<Topic>,
    partition: u32,
    /// Offset of the first record.
    first: u64,
    /// Offset after the last record.
    next: u64,
    bytes: Vec<u8>,
    /// Position of each record's frame in `bytes`.
    frames: Vec<usize>,
    records: Vec<TailRecord>,
    /// Where `bytes` went, once written.
    written: Option<(Arc<File>, u64)>,
}

fn copy_error(error: &io::Error) -> BackendError {
    BackendError::Io(io::Error::new(error.kind(), error.to_string()))
}

fn answer(replies: Vec<Reply>, outcome: impl Fn() -> Result<(), BackendError>) {
    for reply in replies {
        let _ = reply.send(outcome());
    }
}

/// Groups that touch at most this many files sync them on the writer thread, one after
/// the other: waking a helper and being woken back costs more CPU than the overlap saves.
const INLINE_SYNC_FILES: usize = 2;

/// Files each sync thread takes from a larger group (the writer keeps a share too), so a
/// group wakes as few threads as it needs rather than one per file.
const FILES_PER_SYNC_THREAD: usize = 2;

/// Files to sync and where to report the outcome (the first error).
type SyncJob = (Vec<Arc<File>>, std_mpsc::Sender<io::Result<()>>);

/// Syncs every file (data and the size needed to read it); the first error wins, but every
/// file is still synced.
fn sync_all(files: &[Arc<File>]) -> io::Result<()> {
    let mut outcome = Ok(());
    for file in files {
        if let Err(error) = file.sync_data() {
            outcome = outcome.and(Err(error));
        }
    }
    outcome
}

/// A sync thread with its own queue: only the threads a group needs are woken.
struct Helper {
    jobs: Option<std_mpsc::Sender<SyncJob>>,
    thread: Option<JoinHandle<()>>,
}

/// Threads that `fdatasync` files in parallel with the writer when a group touches many
/// files (on ext4 concurrent syncs share one journal commit).
pub(crate) struct Syncer {
    helpers: Vec<Helper>,
}

impl Syncer {
    /// Starts `helpers` sync threads (0: the writer syncs every file itself, one by one).
    pub(crate) fn start(helpers: usize) -> io::Result<Syncer> {
        let mut started = Vec::with_capacity(helpers);
        for i in 0..helpers {
            let (jobs, queue) = std_mpsc::channel::<SyncJob>();
            let thread = std::thread::Builder::new().name(format!("esh-log-sync-{i}")).spawn(move || {
                while let Ok((files, done)) = queue.recv() {
                    let _ = done.send(sync_all(&files));
                }
            })?;
            started.push(Helper { jobs: Some(jobs), thread: Some(thread) });
        }
        Ok(Syncer { helpers: started })
    }

    /// Syncs every file (data and the size needed to read it), in parallel when there are
    /// many; the first error wins.
    fn sync(&self, files: &[Arc<File>]) -> io::Result<()> {
        if files.len() <= INLINE_SYNC_FILES || self.helpers.is_empty() {
            return sync_all(files);
        }
        let per = FILES_PER_SYNC_THREAD;
        // The writer keeps the first share; the rest go to as few helpers as needed.
        let (mine, rest) = files.split_at(per.min(files.len()));
        let (done, results) = std_mpsc::channel();
        let mut delegated = 0;
        let mut outcome = Ok(());
        let mut helpers = self.helpers.iter();
        for chunk in rest.chunks(per) {
            let sent = helpers
                .next()
                .and_then(|helper| helper.jobs.as_ref())
                .is_some_and(|jobs| jobs.send((chunk.to_vec(), done.clone())).is_ok());
            if sent {
                delegated += 1;
            } else {
                outcome = outcome.and(sync_all(chunk));
            }
        }
        outcome = outcome.and(sync_all(mine));
        for _ in 0..delegated {
            let result = results.recv().unwrap_or_else(|_| Err(io::Error::other("a sync thread stopped")));
            outcome = outcome.and(result);
        }
        outcome
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        for helper in &mut self.helpers {
            helper.jobs.take();
        }
        for helper in &mut self.helpers {
            if let Some(thread) = helper.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commits: CommitLog,
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) syncer: Syncer,
    /// Live positions at the last compaction (or open).
    pub(crate) live_positions: usize,
}

/// Marks the writer stopped however its thread ends.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.writer_alive.store(false, Ordering::Release);
    }
}

impl Writer {
    /// Runs until every request sender is gone and the queue is drained.
    pub(crate) fn run(mut self) {
        let _alive = AliveGuard(self.shared.clone());
        let topics: Vec<String> = self.shared.topic_names();
        self.retain(topics.iter().map(String::as_str));
        let options = &self.shared.options;
        let (max_records, max_bytes) = (options.max_group_records, options.max_group_bytes);
        while let Some(first) = self.requests.blocking_recv() {
            let (mut records, mut bytes) = first.weight();
            let mut group = vec![first];
            while records < max_records && bytes < max_bytes {
                let Ok(next) = self.requests.try_recv() else { break };
                let (r, b) = next.weight();
                records += r;
                bytes += b;
                group.push(next);
            }
            self.process(group);
        }
        tracing::debug!("embedded log writer stopped");
    }

    /// Writes, syncs and publishes one group.
    fn process(&mut self, group: Vec<Request>) {
        let mut append_replies = Vec::new();
        let mut commit_replies = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let mut slots: HashMap<(*const Topic, u32), usize> = HashMap::new();
        let mut positions = Vec::new();
        for request in group {
            match request {
                Request::Append { topic, records, reply } => {
                    encode(&mut pending, &mut slots, &topic, records);
                    append_replies.push(reply);
                }
                Request::Commit { positions: mut more, reply } => {
                    positions.append(&mut more);
                    commit_replies.push(reply);
                }
            }
        }
        if let Some(failure) = self.shared.failure() {
            answer(append_replies, || Err(BackendError::Unavailable(failure.clone())));
            answer(commit_replies, || Err(BackendError::Unavailable(failure.clone())));
            return;
        }

        // Write; what fails to write is undone and answered at once.
        let mut files: Vec<Arc<File>> = Vec::new();
        if !pending.is_empty() {
            match self.write(&mut pending) {
                Ok(()) => {
                    for (file, _) in pending.iter().filter_map(|p| p.written.as_ref()) {
                        if !files.iter().any(|f| Arc::ptr_eq(f, file)) {
                            files.push(file.clone());
                        }
                    }
                }
                Err(error) => {
                    answer(std::mem::take(&mut append_replies), || Err(copy_error(&error)));
                    pending.clear();
                }
            }
        }
        let changes = self.changed(positions);
        let mut staged: Option<Staged> = None;
        if !changes.is_empty() {
            match self.commits.stage(&changes) {
                Ok(s) => {
                    staged = Some(s);
                    files.push(self.commits.file().clone());
                }
                Err(error) => {
                    tracing::error!(%error, "cannot write committed offsets");
                    answer(std::mem::take(&mut commit_replies), || Err(copy_error(&error)));
                }
            }
        }

        // One sync per touched file, all at once.
        if let Err(error) = self.syncer.sync(&files) {
            tracing::error!(%error, "log files can no longer be trusted; the log stops until restart");
            self.shared.fail(format!("log stopped after a failed sync: {error}"));
            answer(append_replies, || Err(copy_error(&error)));
            answer(commit_replies, || Err(copy_error(&error)));
            return;
        }

        self.publish(pending);
        answer(append_replies, || Ok(()));
        if let Some(staged) = staged {
            self.commits.confirm(staged);
            let mut touched: Vec<&str> = Vec::new();
            for position in &changes {
                let group = self.shared.groups.get_or_create(&position.group);
                lock(&group.state).advance(&position.topic, position.partition, position.offset);
                if !touched.contains(&position.topic.as_str()) {
                    touched.push(&position.topic);
                }
            }
            // Retention before answering: a caller that sees its commit done also sees
            // the space freed (deletions are rare, one per consumed segment).
            self.retain(touched.into_iter());
            self.compact_if_needed();
        }
        answer(commit_replies, || Ok(()));
    }

    /// The positions that move a group forward (or make a topic known to it).
    fn changed(&self, positions: Vec<Position>) -> Vec<Position> {
        positions
            .into_iter()
            .filter(|position| {
                let group = self.shared.groups.get_or_create(&position.group);
                let state = lock(&group.state);
                !state.knows(&position.topic) || state.committed(&position.topic, position.partition) < position.offset
            })
            .collect()
    }

    /// Writes every pending batch to its partition's active segment, rolling it when
    /// full; on failure cuts every file written back and returns the error.
    fn write(&self, pending: &mut [Pending]) -> io::Result<()> {
        let segment_bytes = self.shared.options.segment_bytes;
        for i in 0..pending.len() {
            let p = &pending[i];
            let partition = &p.topic.partitions[p.partition as usize];
            let target = {
                let mut state = lock(&partition.state);
                let active = state.active();
                if active.size > 0 && active.size + p.bytes.len() as u64 > segment_bytes {
                    debug_assert_eq!(active.end, p.first);
                    match Segment::create(&partition.dir, p.first) {
                        Ok(segment) => state.segments.push(segment),
                        Err(error) => return Err(self.undo(pending, error)),
                    }
                }
                let active = state.active();
                (active.file.clone(), active.size)
            };
            let (file, pos) = target;
            let outcome = file.write_all_at(&p.bytes, pos);
            pending[i].written = Some((file, pos));
            if let Err(error) = outcome {
                return Err(self.undo(pending, error));
            }
        }
        Ok(())
    }

    /// Cuts every file already written back to its length before the group. If even that
    /// fails, the files cannot be trusted: the log stops.
    fn undo(&self, pending: &[Pending], error: io::Error) -> io::Error {
        tracing::error!(%error, "log append failed; undoing it");
        for p in pending {
            if let Some((file, pos)) = &p.written {
                if let Err(undo_error) = file.set_len(*pos) {
                    tracing::error!(%undo_error, "cannot undo a failed log write; the log stops until restart");
                    self.shared.fail(format!("log stopped after a failed write: {error}"));
                    break;
                }
            }
        }
        error
    }

    /// Makes written records visible: index, tail, end offset; then wakes consumers.
    fn publish(&self, pending: Vec<Pending>) {
        let budget = self.shared.options.tail_bytes;
        let mut touched: Vec<Arc<Topic>> = Vec::new();
        for p in pending {
            let Some((_, pos)) = p.written else { continue };
            let partition = &p.topic.partitions[p.partition as usize];
            {
                let mut state = lock(&partition.state);
                let active = state.active();
                for (i, frame) in p.frames.iter().enumerate() {
                    active.note(p.first + i as u64, pos + *frame as u64);
                }
                active.size = pos + p.bytes.len() as u64;
                active.end = p.next;
                state.push_tail(p.records, budget);
                partition.end.store(p.next, Ordering::Release);
            }
            if !touched.iter().any(|t| Arc::ptr_eq(t, &p.topic)) {
                touched.push(p.topic);
            }
        }
        for topic in touched {
            topic.wake();
        }
    }

    /// Deletes the segments of `topics` that every group knowing the topic has committed
    /// past (never the active segment; nothing while no group knows the topic).
    fn retain<'a>(&self, topics: impl Iterator<Item = &'a str>) {
        let groups = self.shared.groups.all();
        for name in topics {
            let Some(topic) = self.shared.topic(name) else { continue };
            for (p, partition) in topic.partitions.iter().enumerate() {
                let mut floor: Option<u64> = None;
                for (_, group) in &groups {
                    let state = lock(&group.state);
                    if state.knows(name) {
                        let committed = state.committed(name, p as u32);
                        floor = Some(floor.map_or(committed, |f| f.min(committed)));
                    }
                }
                let Some(floor) = floor else { break };
                let removed: Vec<std::path::PathBuf> = {
                    let mut state = lock(&partition.state);
                    let whole =
                        state.segments.iter().take(state.segments.len() - 1).take_while(|s| s.end <= floor).count();
                    let removed = state.segments.drain(..whole).map(|s| s.path).collect();
                    partition.start.store(state.segments[0].base, Ordering::Release);
                    removed
                };
                // Oldest first, each durable before the next, so a crash never leaves a gap.
                for path in &removed {
                    if let Err(error) = std::fs::remove_file(path).and_then(|()| sync_dir(&partition.dir)) {
                        tracing::warn!(file = %path.display(), %error, "cannot delete a consumed log segment");
                        break;
                    }
                    tracing::debug!(file = %path.display(), "deleted a consumed log segment");
                }
            }
        }
    }

    fn compact_if_needed(&mut self) {
        if !self.commits.wants_compaction(self.live_positions) {
            return;
        }
        let mut live = Vec::new();
        for (name, group) in self.shared.groups.all() {
            lock(&group.state).positions(&name, &mut live);
        }
        match self.commits.compact(&live) {
            Ok(()) => self.live_positions = live.len(),
            Err(error) => tracing::warn!(%error, "cannot compact the commit log; it keeps growing"),
        }
    }
}

/// Encodes `records` into the pending batch of each one's partition, assigning offsets.
fn encode(
    pending: &mut Vec<Pending>,
    slots: &mut HashMap<(*const Topic, u32), usize>,
    topic: &Arc<Topic>,
    records: Vec<Record>,
) {
    let count = topic.partitions.len() as u32;
    for record in records {
        let partition = partition_for(&record.key, count);
        let slot = *slots.entry((Arc::as_ptr(topic), partition)).or_insert_with(|| {
            let first = topic.partitions[partition as usize].end.load(Ordering::Acquire);
            pending.push(Pending {
                topic: topic.clone(),
                partition,
                first,
                next: first,
                bytes: Vec::new(),
                frames: Vec::new(),
                records: Vec::new(),
                written: None,
            });
            pending.len() - 1
        });
        let p = &mut pending[slot];
        p.frames.push(p.bytes.len());
        encode_record(&mut p.bytes, p.next, &record.key, &record.value);
        p.records.push(TailRecord { offset: p.next, key: record.key, value: record.value });
        p.next += 1;
    }
}
