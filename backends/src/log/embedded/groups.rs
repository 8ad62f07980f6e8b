//! Consumer groups: committed offsets (kept in memory, persisted by the writer thread in an
//! append-only, CRC-framed commit log that is compacted by atomic rewrite), the live
//! members and which member owns which partition.
//!
//! Assignment: for each topic, its partitions go round-robin to the members subscribed to
//! it, in joining order; every join or leave recomputes it and bumps the generation,
//! which members compare on each poll.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use super::codec::{decode_commit, encode_commit, FrameReader, Step};
use super::storage::{lock, sync_dir, MAX_PARTITIONS};
use crate::error::BackendError;

/// A group's position in one partition: the offset it reads next.
pub(crate) struct Position {
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// A consumer group.
pub(crate) struct Group {
    pub(crate) state: Mutex<GroupState>,
}

struct Member {
    id: u64,
    /// Subscribed topics with their partition counts.
    topics: Vec<(String, u32)>,
    notify: Arc<Notify>,
}

#[derive(Default)]
pub(crate) struct GroupState {
    /// topic → committed offset per partition (0 where never committed). A topic is
    /// present once the group subscribed to it or committed in it: the group "knows" it,
    /// and retention keeps what it has not committed.
    committed: HashMap<String, Vec<u64>>,
    members: Vec<Member>,
    next_member: u64,
    /// Bumped on every change of assignment.
    pub(crate) generation: u64,
    /// topic → owning member id per partition.
    owners: HashMap<String, Vec<u64>>,
}

impl Group {
    pub(crate) fn new() -> Group {
        Group { state: Mutex::new(GroupState::default()) }
    }
}

impl GroupState {
    /// The group's committed offset in a partition (0 when it never committed there).
    pub(crate) fn committed(&self, topic: &str, partition: u32) -> u64 {
        self.committed.get(topic).and_then(|offsets| offsets.get(partition as usize)).copied().unwrap_or(0)
    }

    /// Whether the group subscribed to or committed in `topic` (durably, once the writer
    /// recorded it).
    pub(crate) fn knows(&self, topic: &str) -> bool {
        self.committed.contains_key(topic)
    }

    /// Raises the committed offset (never lowers it); returns whether anything changed,
    /// including the topic becoming known.
    pub(crate) fn advance(&mut self, topic: &str, partition: u32, offset: u64) -> bool {
        if partition >= MAX_PARTITIONS {
            return false;
        }
        let known = self.committed.contains_key(topic);
        let offsets = self.committed.entry(topic.to_owned()).or_default();
        let index = partition as usize;
        if offsets.len() <= index {
            offsets.resize(index + 1, 0);
        }
        if offsets[index] < offset {
            offsets[index] = offset;
            return true;
        }
        !known
    }

    /// Every committed offset of the group, for compaction.
    pub(crate) fn positions(&self, group: &str, out: &mut Vec<Position>) {
        for (topic, offsets) in &self.committed {
            for (partition, offset) in offsets.iter().enumerate() {
                out.push(Position { group: group.to_owned(), topic: topic.clone(), partition: partition as u32, offset: *offset });
            }
        }
    }

    /// Adds a member on `topics`; returns its id.
    pub(crate) fn join(&mut self, topics: Vec<(String, u32)>, notify: Arc<Notify>) -> u64 {
        self.next_member += 1;
        let id = self.next_member;
        self.members.push(Member { id, topics, notify });
        self.rebalance();
        id
    }

    /// Removes a member; its partitions go to the others.
    pub(crate) fn leave(&mut self, id: u64) {
        self.members.retain(|m| m.id != id);
        self.rebalance();
    }

    /// The partitions of `topic` that `member` owns, ascending.
    pub(crate) fn owned(&self, topic: &str, member: u64) -> Vec<u32> {
        let Some(owners) = self.owners.get(topic) else { return Vec::new() };
        owners.iter().enumerate().filter(|(_, owner)| **owner == member).map(|(p, _)| p as u32).collect()
    }

    fn rebalance(&mut self) {
        self.owners.clear();
        let topics: BTreeSet<(&str, u32)> =
            self.members.iter().flat_map(|m| m.topics.iter().map(|(t, n)| (t.as_str(), *n))).collect();
        for (topic, count) in topics {
            let eligible: Vec<u64> =
                self.members.iter().filter(|m| m.topics.iter().any(|(t, _)| t == topic)).map(|m| m.id).collect();
            let owners = (0..count as usize).map(|p| eligible[p % eligible.len()]).collect();
            self.owners.insert(topic.to_owned(), owners);
        }
        self.generation += 1;
        for member in &self.members {
            member.notify.notify_one();
        }
    }
}

/// Every group by name.
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Arc<Group>>>,
}

impl Groups {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Group>> {
        lock(&self.map).get(name).cloned()
    }

    pub(crate) fn get_or_create(&self, name: &str) -> Arc<Group> {
        lock(&self.map).entry(name.to_owned()).or_insert_with(|| Arc::new(Group::new())).clone()
    }

    /// Every group, for retention and compaction.
    pub(crate) fn all(&self) -> Vec<(String, Arc<Group>)> {
        lock(&self.map).iter().map(|(name, group)| (name.clone(), group.clone())).collect()
    }
}

/// The durable record of committed offsets: one frame per commit, last one wins.
pub(crate) struct CommitLog {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    /// Frames in the file.
    frames: usize,
}

/// Frames written but not yet synced.
pub(crate) struct Staged {
    bytes: u64,
    frames: usize,
}

/// Compact when the file holds more than this many frames and 4× the live positions.
const COMPACT_AFTER: usize = 10_000;

impl CommitLog {
    /// Opens (or creates) the commit log in `dir` and returns the positions it holds, in
    /// the order written. A torn tail is cut off.
    pub(crate) fn open(dir: &Path) -> Result<(CommitLog, Vec<Position>), BackendError> {
        fs::create_dir_all(dir)?;
        let path = dir.join("commits.log");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let len = file.metadata()?.len();
        let mut positions = Vec::new();
        let mut reader = FrameReader::new(&file, 0, len);
        let bad = loop {
            match reader.next()? {
                Step::End => break None,
                Step::Bad { pos, reason } => break Some((pos, reason)),
                Step::Frame { pos, body } => match decode_commit(body) {
                    Ok(c) => positions.push(Position {
                        group: c.group.to_owned(),
                        topic: c.topic.to_owned(),
                        partition: c.partition,
                        offset: c.offset,
                    }),
                    Err(reason) => break Some((pos, reason)),
                },
            }
        };
        let size = match bad {
            None => len,
            Some((pos, reason)) => {
                tracing::warn!(file = %path.display(), byte = pos, %reason, "truncating a torn tail of the commit log");
                file.set_len(pos)?;
                file.sync_all()?;
                pos
            }
        };
        sync_dir(dir)?;
        let frames = positions.len();
        Ok((CommitLog { path, file: Arc::new(file), size, frames }, positions))
    }

    /// Writes `positions` after the last durable frame without syncing (the writer syncs
    /// it with the group's other files, then calls [`CommitLog::confirm`]); on failure the
    /// file is cut back to where it was.
    pub(crate) fn stage(&mut self, positions: &[Position]) -> io::Result<Staged> {
        let mut bytes = Vec::with_capacity(positions.len() * 64);
        for p in positions {
            encode_commit(&mut bytes, &p.group, &p.topic, p.partition, p.offset);
        }
        if let Err(error) = self.file.write_all_at(&bytes, self.size) {
            let _ = self.file.set_len(self.size);
            return Err(error);
        }
        Ok(Staged { bytes: bytes.len() as u64, frames: positions.len() })
    }

    /// The file to sync after [`CommitLog::stage`].
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Counts staged frames as durable once synced.
    pub(crate) fn confirm(&mut self, staged: Staged) {
        self.size += staged.bytes;
        self.frames += staged.frames;
    }

    /// Whether the file holds many more frames than `live` positions.
    pub(crate) fn wants_compaction(&self, live: usize) -> bool {
        self.frames > COMPACT_AFTER && self.frames > live.saturating_mul(4)
    }

    /// Rewrites the file with only `live` positions (write aside, fsync, rename, fsync dir).
    pub(crate) fn compact(&mut self, live: &[Position]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(live.len() * 64);
        for p in live {
            encode_commit(&mut bytes, &p.group, &p.topic, p.partition, p.offset);
        }
        super::storage::write_atomically(&self.path, &bytes)?;
        self.file = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
        self.size = bytes.len() as u64;
        self.frames = live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(group: &str, partition: u32, offset: u64) -> Position {
        Position { group: group.into(), topic: "t".into(), partition, offset }
    }

    #[test]
    fn partitions_go_round_robin_and_move_when_members_leave() {
        let mut state = GroupState::default();
        let a = state.join(vec![("t".into(), 4), ("u".into(), 1)], Arc::new(Notify::new()));
        assert_eq!(state.owned("t", a), [0, 1, 2, 3]);
        let b = state.join(vec![("t".into(), 4)], Arc::new(Notify::new()));
        assert_eq!(state.owned("t", a), [0, 2]);
        assert_eq!(state.owned("t", b), [1, 3]);
        assert_eq!(state.owned("u", a), [0], "only members subscribed to a topic share it");
        let generation = state.generation;
        state.leave(a);
        assert!(state.generation > generation);
        assert_eq!(state.owned("t", b), [0, 1, 2, 3]);
        assert!(state.owned("u", b).is_empty());
    }

    #[test]
    fn committed_offsets_only_move_forward() {
        let mut state = GroupState::default();
        assert!(!state.knows("t"));
        assert!(state.advance("t", 1, 0), "becoming known is a change");
        assert!(state.knows("t"));
        assert!(state.advance("t", 1, 10));
        assert!(!state.advance("t", 1, 5));
        assert_eq!(state.committed("t", 1), 10);
        assert_eq!(state.committed("t", 0), 0);
        assert!(!state.advance("t", MAX_PARTITIONS, 1), "hostile partition numbers are ignored");
    }

    /// The commit log keeps only live positions after compaction and reads back the same
    /// state after a reopen (last write wins).
    #[test]
    fn the_commit_log_compacts_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, positions) = CommitLog::open(dir.path()).unwrap();
        assert!(positions.is_empty());
        for offset in 1..=(COMPACT_AFTER as u64 / 2 + 1) {
            let staged = log.stage(&[position("router", 0, offset), position("notifier", 1, offset * 2)]).unwrap();
            log.confirm(staged);
        }
        assert!(log.wants_compaction(2));
        let live = [position("router", 0, 5001), position("notifier", 1, 10002)];
        log.compact(&live).unwrap();
        assert!(!log.wants_compaction(2));
        let staged = log.stage(&[position("router", 0, 6000)]).unwrap();
        log.confirm(staged);
        drop(log);
        let (_, positions) = CommitLog::open(dir.path()).unwrap();
        let read: Vec<(String, u32, u64)> = positions.into_iter().map(|p| (p.group, p.partition, p.offset)).collect();
        assert_eq!(read, [("router".into(), 0, 5001), ("notifier".into(), 1, 10002), ("router".into(), 0, 6000)]);
    }
}
