//! Consumer groups: committed offsets (in memory as members commit them; in the journal
//! once the writer's next group commit syncs them, and repeated in every new segment's
//! checkpoint so that retention never drops them), the live members and which member owns
//! which partition.
//!
//! Assignment: for each topic, its partitions go round-robin to the members subscribed to
//! it, in joining order; every join or leave recomputes it and bumps the generation,
//! which members compare on each poll.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use super::codec::MAX_PARTITIONS;
use super::storage::lock;

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

/// A group's committed offsets in one topic ([`GroupState::committed`]).
pub(crate) struct TopicOffsets<'a>(&'a [u64]);

impl TopicOffsets<'_> {
    pub(crate) fn at(&self, partition: u32) -> u64 {
        self.0.get(partition as usize).copied().unwrap_or(0)
    }
}

impl GroupState {
    /// The group's committed offsets in a topic, by partition; a partition past the end
    /// (or every one, when it never committed there) is at 0. One lookup serves every
    /// partition of the topic.
    pub(crate) fn committed(&self, topic: &str) -> TopicOffsets<'_> {
        TopicOffsets(self.committed.get(topic).map_or(&[], Vec::as_slice))
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
}

/// The committed offsets the journal holds (durable), kept by the writer thread: what
/// retention goes by and what every new segment's checkpoint repeats. Group members work
/// from [`GroupState`], which is ahead of this by the commits not yet synced.
#[derive(Default)]
pub(crate) struct Committed {
    /// group → topic → committed offset per partition.
    groups: HashMap<String, HashMap<String, Vec<u64>>>,
}

impl Committed {
    /// Whether `position` moves its group forward (or makes the topic known to it).
    pub(crate) fn moves(&self, position: &Position) -> bool {
        let Some(offsets) = self.groups.get(&position.group).and_then(|topics| topics.get(&position.topic)) else {
            return true;
        };
        offsets.get(position.partition as usize).copied().unwrap_or(0) < position.offset
    }

    /// Raises a committed offset (never lowers it).
    pub(crate) fn advance(&mut self, position: &Position) {
        if position.partition >= MAX_PARTITIONS {
            return;
        }
        let offsets =
            self.groups.entry(position.group.clone()).or_default().entry(position.topic.clone()).or_default();
        let index = position.partition as usize;
        if offsets.len() <= index {
            offsets.resize(index + 1, 0);
        }
        offsets[index] = offsets[index].max(position.offset);
    }

    /// The lowest committed offset of a partition among the groups that know its topic;
    /// `None` when no group does (then time decides: `Writer::verdict` in `writer.rs`).
    pub(crate) fn floor(&self, topic: &str, partition: u32) -> Option<u64> {
        self.groups
            .values()
            .filter_map(|topics| topics.get(topic))
            .map(|offsets| offsets.get(partition as usize).copied().unwrap_or(0))
            .min()
    }

    /// Every committed position, for a checkpoint.
    pub(crate) fn positions(&self) -> impl Iterator<Item = Position> + '_ {
        self.groups.iter().flat_map(|(group, topics)| {
            topics.iter().flat_map(move |(topic, offsets)| {
                offsets.iter().enumerate().map(move |(partition, offset)| Position {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: partition as u32,
                    offset: *offset,
                })
            })
        })
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
        assert_eq!(state.committed("t").at(1), 10);
        assert_eq!(state.committed("t").at(0), 0);
        assert!(!state.advance("t", MAX_PARTITIONS, 1), "hostile partition numbers are ignored");
    }

    /// Retention's floor is the slowest group that knows the topic; a topic no group
    /// knows has none (its records are kept for the unclaimed retention time instead).
    #[test]
    fn the_floor_is_the_slowest_group_that_knows_the_topic() {
        let mut committed = Committed::default();
        assert_eq!(committed.floor("t", 0), None);
        assert!(committed.moves(&position("router", 0, 0)), "becoming known is a move");
        committed.advance(&position("router", 0, 10));
        committed.advance(&position("notifier", 1, 3));
        assert_eq!(committed.floor("t", 0), Some(0), "the notifier knows t but never committed in partition 0");
        committed.advance(&position("notifier", 0, 4));
        assert_eq!(committed.floor("t", 0), Some(4));
        assert!(!committed.moves(&position("router", 0, 9)));
        committed.advance(&position("router", 0, 9));
        assert_eq!(committed.floor("t", 0), Some(4), "offsets never go back");
        assert_eq!(committed.positions().count(), 3);
    }
}
