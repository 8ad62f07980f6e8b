//! The writer thread: the only code that changes files. It takes requests from a bounded
//! channel, writes everything queued (up to a record and byte budget) and makes the whole
//! group durable with one `fdatasync` per touched file (group commit), then publishes the
//! records to readers, wakes consumers and answers every caller.
//!
//! Failures: a failed write is undone (files cut back) and the group's callers get the
//! error; a failed `fdatasync` leaves the page cache untrustworthy, so the log stops
//! taking appends (`check` fails) until it is reopened, which recovers from the files.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use super::codec::{encode_record, partition_for};
use super::groups::{CommitLog, Position};
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

enum WriteError {
    /// Nothing of the group is left in the files.
    Undone(io::Error),
    /// The files may hold part of the group or lost writes: stop.
    Fatal(io::Error),
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commits: CommitLog,
    pub(crate) requests: mpsc::Receiver<Request>,
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

fn copy_error(error: &io::Error) -> BackendError {
    BackendError::Io(io::Error::new(error.kind(), error.to_string()))
}

fn answer(replies: Vec<Reply>, outcome: impl Fn() -> Result<(), BackendError>) {
    for reply in replies {
        let _ = reply.send(outcome());
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

    fn process(&mut self, group: Vec<Request>) {
        let mut appends = Vec::new();
        let mut commits = Vec::new();
        for request in group {
            match request {
                Request::Append { topic, records, reply } => appends.push((topic, records, reply)),
                Request::Commit { positions, reply } => commits.push((positions, reply)),
            }
        }
        if let Some(failure) = self.shared.failure() {
            let replies = appends.into_iter().map(|a| a.2).chain(commits.into_iter().map(|c| c.1)).collect();
            answer(replies, || Err(BackendError::Unavailable(failure.clone())));
            return;
        }
        if !appends.is_empty() {
            self.append(appends);
        }
        if !commits.is_empty() {
            self.commit(commits);
        }
    }

    fn append(&mut self, appends: Vec<(Arc<Topic>, Vec<Record>, Reply)>) {
        let mut pending: Vec<Pending> = Vec::new();
        let mut slots: HashMap<(*const Topic, u32), usize> = HashMap::new();
        let mut replies = Vec::with_capacity(appends.len());
        for (topic, records, reply) in appends {
            let count = topic.partitions.len() as u32;
            for record in records {
                let partition = partition_for(&record.key, count);
                let slot = *slots.entry((Arc::as_ptr(&topic), partition)).or_insert_with(|| {
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
            replies.push(reply);
        }
        match self.write(&mut pending) {
            Ok(()) => {
                self.publish(pending);
                answer(replies, || Ok(()));
            }
            Err(WriteError::Undone(error)) => {
                tracing::error!(%error, "log append failed; nothing of it was kept");
                answer(replies, || Err(copy_error(&error)));
            }
            Err(WriteError::Fatal(error)) => {
                tracing::error!(%error, "log files can no longer be trusted; appends stop until restart");
                self.shared.fail(format!("log stopped after a failed sync: {error}"));
                answer(replies, || Err(copy_error(&error)));
            }
        }
    }

    /// Writes every pending batch to its partition's active segment (rolling it when full),
    /// then syncs each touched file once.
    fn write(&self, pending: &mut [Pending]) -> Result<(), WriteError> {
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
                        Err(error) => return Err(undo(pending, error)),
                    }
                }
                let active = state.active();
                (active.file.clone(), active.size)
            };
            let (file, pos) = target;
            let outcome = file.write_all_at(&p.bytes, pos);
            pending[i].written = Some((file, pos));
            if let Err(error) = outcome {
                return Err(undo(pending, error));
            }
        }
        let mut synced = HashSet::new();
        for p in pending.iter() {
            let Some((file, _)) = &p.written else { continue };
            if synced.insert(Arc::as_ptr(file)) {
                file.sync_data().map_err(WriteError::Fatal)?;
            }
        }
        Ok(())
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

    fn commit(&mut self, commits: Vec<(Vec<Position>, Reply)>) {
        let mut replies = Vec::with_capacity(commits.len());
        let mut changes = Vec::new();
        for (positions, reply) in commits {
            for position in positions {
                let group = self.shared.groups.get_or_create(&position.group);
                let state = lock(&group.state);
                if !state.knows(&position.topic) || state.committed(&position.topic, position.partition) < position.offset {
                    changes.push(position);
                }
            }
            replies.push(reply);
        }
        if let Err(error) = self.commits.append(&changes) {
            tracing::error!(%error, "cannot persist committed offsets");
            answer(replies, || Err(copy_error(&error)));
            return;
        }
        let mut touched: Vec<&str> = Vec::new();
        for position in &changes {
            let group = self.shared.groups.get_or_create(&position.group);
            lock(&group.state).advance(&position.topic, position.partition, position.offset);
            if !touched.contains(&position.topic.as_str()) {
                touched.push(&position.topic);
            }
        }
        answer(replies, || Ok(()));
        self.retain(touched.into_iter());
        self.compact_if_needed();
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
                    let whole = state.segments.iter().take(state.segments.len() - 1).take_while(|s| s.end <= floor).count();
                    let removed = state.segments.drain(..whole).map(|s| s.path).collect();
                    partition.start.store(state.segments[0].base, Ordering::Release);
                    removed
                };
                // Oldest first, each durable before the next, so a crash never leaves a gap.
                for path in &removed {
                    let deleted = std::fs::remove_file(path).and_then(|()| sync_dir(&partition.dir));
                    match deleted {
                        Ok(()) => tracing::debug!(file = %path.display(), "deleted a consumed log segment"),
                        Err(error) => tracing::warn!(file = %path.display(), %error, "cannot delete a consumed log segment"),
                    }
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

/// Cuts every file already written back to its length before the group.
fn undo(pending: &[Pending], error: io::Error) -> WriteError {
    for p in pending {
        if let Some((file, pos)) = &p.written {
            if let Err(undo_error) = file.set_len(*pos) {
                tracing::error!(%undo_error, "cannot undo a failed log write");
                return WriteError::Fatal(error);
            }
        }
    }
    WriteError::Undone(error)
}
