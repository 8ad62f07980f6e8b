//! In-process presence, recent-message cache, rate limiter and idempotency keys, with the
//! expiry semantics of their Redis counterparts. Time comes from `tokio::time::Instant`,
//! so paused-time tests drive expiry. Each map sits behind a short `std::sync::Mutex`
//! section.
//!
//! Expiry works like Redis's: an expired entry is invisible at once (every read checks its
//! deadline), and its memory is reclaimed by a sweep that every call runs for at most
//! `SWEEP_BATCH` entries, taken from a min-heap of due times. So one call never costs more
//! than a few heap operations, and the sweep keeps up because each call schedules at most
//! one entry while it reclaims up to `SWEEP_BATCH`.

use async_trait::async_trait;
use esh_common::Message;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::{
    Claim, IdempotencyKeys, Presence, RateDecision, RateLimiter, RecentMessages, StoredAnswer, FILL_WINDOW,
    RECENT_MESSAGES,
};
use crate::bus::NodeId;
use crate::error::BackendError;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Most due entries one call examines (and reclaims if expired).
const SWEEP_BATCH: usize = 8;

/// A map from string keys to values that expire. An entry is live while `now < expires`.
///
/// Reclamation: every entry has a slot `(due, key)` in the `due` min-heap with `due ==
/// entry.due <= entry.expires`. `sweep` pops due slots; an entry that expired is removed, one
/// whose deadline moved later gets a new slot at its deadline. Slots of removed entries, or
/// of entries rescheduled earlier, no longer match `entry.due` and are skipped.
struct ExpiringMap<V> {
    entries: HashMap<String, Entry<V>>,
    due: BinaryHeap<Reverse<(Instant, String)>>,
}

struct Entry<V> {
    value: V,
    expires: Instant,
    /// When the sweep looks at this entry next.
    due: Instant,
}

impl<V> Default for ExpiringMap<V> {
    fn default() -> Self {
        Self { entries: HashMap::new(), due: BinaryHeap::new() }
    }
}

impl<V> ExpiringMap<V> {
    /// The value of `key` if it is live.
    fn get(&self, key: &str, now: Instant) -> Option<&V> {
        self.entries.get(key).filter(|entry| entry.expires > now).map(|entry| &entry.value)
    }

    /// The value of `key` if it is live, to modify.
    fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut V> {
        self.entries.get_mut(key).filter(|entry| entry.expires > now).map(|entry| &mut entry.value)
    }

    /// Sets `key` to `value` until `expires`, replacing any entry it had (live or expired).
    fn insert(&mut self, key: &str, value: V, expires: Instant) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.value = value;
            Self::reschedule(&mut self.due, key, entry, expires);
            return;
        }
        self.due.push(Reverse((expires, key.to_owned())));
        self.entries.insert(key.to_owned(), Entry { value, expires, due: expires });
    }

    /// Moves the deadline of `key`, if it has an entry.
    fn set_expires(&mut self, key: &str, expires: Instant) {
        if let Some(entry) = self.entries.get_mut(key) {
            Self::reschedule(&mut self.due, key, entry, expires);
        }
    }

    fn reschedule(due: &mut BinaryHeap<Reverse<(Instant, String)>>, key: &str, entry: &mut Entry<V>, expires: Instant) {
        entry.expires = expires;
        // A later deadline keeps the earlier slot: the sweep reschedules it when it comes due.
        if expires < entry.due {
            entry.due = expires;
            due.push(Reverse((expires, key.to_owned())));
        }
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        self.entries.remove(key).map(|entry| entry.value)
    }

    /// Examines at most `SWEEP_BATCH` slots that are due, reclaiming expired entries.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP_BATCH {
            if self.due.peek().is_none_or(|Reverse((due, _))| *due > now) {
                return;
            }
            let Some(Reverse((due, key))) = self.due.pop() else { return };
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            if entry.due != due {
                continue;
            }
            if entry.expires <= now {
                self.entries.remove(&key);
            } else {
                entry.due = entry.expires;
                self.due.push(Reverse((entry.expires, key)));
            }
        }
    }

    /// Entries held, expired or not (memory use).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.entries.len()
    }

    /// Heap slots held, stale ones included (memory use).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.due.len()
    }
}

/// One registered connection.
struct Connection {
    node: NodeId,
    expires: Instant,
}

/// Presence: per user, their connections; a user's entry lives as long as their latest
/// connection, and expired connections of a user are dropped whenever the user is touched.
#[derive(Default)]
pub struct EmbeddedPresence {
    users: Mutex<ExpiringMap<HashMap<String, Connection>>>,
}

impl EmbeddedPresence {
    /// An empty presence map.
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.users).held()
    }
}

/// The latest deadline among `connections`, if any.
fn latest(connections: &HashMap<String, Connection>) -> Option<Instant> {
    connections.values().map(|connection| connection.expires).max()
}

#[async_trait]
impl Presence for EmbeddedPresence {
    async fn register(&self, user: &str, node: &NodeId, connection: &str, ttl: Duration) -> Result<(), BackendError> {
        let now = Instant::now();
        let expires = now + ttl;
        let mut users = lock(&self.users);
        users.sweep(now);
        let Some(connections) = users.get_mut(user, now) else {
            let connections = HashMap::from([(connection.to_owned(), Connection { node: node.clone(), expires })]);
            users.insert(user, connections, expires);
            return Ok(());
        };
        connections.retain(|_, held| held.expires > now);
        connections.insert(connection.to_owned(), Connection { node: node.clone(), expires });
        let until = latest(connections).unwrap_or(expires);
        users.set_expires(user, until);
        Ok(())
    }

    async fn unregister(&self, user: &str, connection: &str) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut users = lock(&self.users);
        users.sweep(now);
        let Some(connections) = users.get_mut(user, now) else { return Ok(()) };
        connections.remove(connection);
        connections.retain(|_, held| held.expires > now);
        match latest(connections) {
            Some(until) => users.set_expires(user, until),
            None => {
                users.remove(user);
            }
        }
        Ok(())
    }

    async fn locate(&self, users: &[String]) -> Result<HashMap<String, Vec<NodeId>>, BackendError> {
        let now = Instant::now();
        let mut present = lock(&self.users);
        present.sweep(now);
        let mut found = HashMap::new();
        for user in users {
            let Some(connections) = present.get(user, now) else { continue };
            let mut nodes: Vec<NodeId> = connections
                .values()
                .filter(|connection| connection.expires > now)
                .map(|connection| connection.node.clone())
                .collect();
            nodes.sort();
            nodes.dedup();
            if !nodes.is_empty() {
                found.insert(user.clone(), nodes);
            }
        }
        Ok(found)
    }

    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Invalidations numbered in order; each conversation's latest is remembered for
/// `FILL_WINDOW`, so that `fill` can tell whether its conversation was invalidated after its
/// token was taken. Memory is bounded by the conversations written within the window, not by
/// the writes.
#[derive(Default)]
struct Invalidations {
    /// The number of the latest invalidation (0: none yet); a token is this number.
    last: u64,
    /// Conversation → (number of its latest invalidation, when that is forgotten).
    latest: HashMap<String, (u64, Instant)>,
    /// Each conversation of `latest` once, roughly in the order they are due to be forgotten
    /// (one invalidated again goes to the back when its old due time comes).
    queue: VecDeque<(Instant, String)>,
    /// The highest number forgotten: tokens below it are refused, since an invalidation
    /// after them may be forgotten.
    forgotten: u64,
}

impl Invalidations {
    fn record(&mut self, conversation: &str, now: Instant) {
        self.last += 1;
        let until = now + FILL_WINDOW;
        match self.latest.get_mut(conversation) {
            Some(latest) => *latest = (self.last, until),
            None => {
                self.latest.insert(conversation.to_owned(), (self.last, until));
                self.queue.push_back((until, conversation.to_owned()));
            }
        }
    }

    /// Forgets invalidations older than `FILL_WINDOW`, examining at most `budget` conversations.
    fn forget(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget {
            if self.queue.front().is_none_or(|(until, _)| *until > now) {
                return;
            }
            let Some((_, conversation)) = self.queue.pop_front() else { return };
            let Some(&(number, until)) = self.latest.get(&conversation) else { continue };
            if until <= now {
                self.latest.remove(&conversation);
                self.forgotten = self.forgotten.max(number);
            } else {
                self.queue.push_back((until, conversation));
            }
        }
    }

    /// Whether a read that began when `token` was taken may be cached.
    fn fresh(&self, conversation: &str, token: u64) -> bool {
        token >= self.forgotten && self.latest.get(conversation).is_none_or(|(number, _)| *number <= token)
    }
}

#[derive(Default)]
struct Recent {
    conversations: ExpiringMap<Vec<Message>>,
    invalidations: Invalidations,
}

impl Recent {
    fn sweep(&mut self, now: Instant, extra: usize) {
        self.conversations.sweep(now);
        self.invalidations.forget(now, SWEEP_BATCH + extra);
    }

    fn put(&mut self, conversation_id: &str, mut messages: Vec<Message>, expires: Instant) {
        let excess = messages.len().saturating_sub(RECENT_MESSAGES);
        messages.drain(..excess);
        self.conversations.insert(conversation_id, messages, expires);
    }
}

/// The recent-message cache, with fill tokens that keep a slow reader from caching what a
/// write made stale.
#[derive(Default)]
pub struct EmbeddedRecentMessages {
    state: Mutex<Recent>,
}

impl EmbeddedRecentMessages {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.conversations.held(), state.invalidations.queue.len())
    }
}

#[async_trait]
impl RecentMessages for EmbeddedRecentMessages {
    async fn get(&self, conversation_id: &str) -> Result<Option<Vec<Message>>, BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now, 0);
        Ok(state.conversations.get(conversation_id, now).cloned())
    }

    async fn put(&self, conversation_id: &str, messages: Vec<Message>, ttl: Duration) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now, 0);
        state.put(conversation_id, messages, now + ttl);
        Ok(())
    }

    async fn invalidate(&self, conversation_ids: &[String]) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now, conversation_ids.len());
        for id in conversation_ids {
            state.conversations.remove(id);
            state.invalidations.record(id, now);
        }
        Ok(())
    }

    async fn fill_token(&self, _conversation_id: &str) -> Result<u64, BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now, 0);
        Ok(state.invalidations.last)
    }

    async fn fill(
        &self,
        conversation_id: &str,
        token: u64,
        messages: Vec<Message>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now, 0);
        if !state.invalidations.fresh(conversation_id, token) {
            return Ok(false);
        }
        state.put(conversation_id, messages, now + ttl);
        Ok(true)
    }
}

/// One counted acquisition.
struct Event {
    at: Instant,
    cost: u64,
    permit: u64,
}

/// The counted acquisitions of one key inside its window, oldest first, and their sum.
#[derive(Default)]
struct Window {
    events: VecDeque<Event>,
    used: u64,
}

impl Window {
    /// Drops the acquisitions that left the window ending now.
    fn slide(&mut self, now: Instant, window: Duration) {
        while let Some(event) = self.events.front() {
            if event.at + window > now {
                return;
            }
            self.used = self.used.saturating_sub(event.cost);
            self.events.pop_front();
        }
    }

    /// How long until `cost` more units fit under `limit` (the window has slid to now).
    fn retry_after(&self, cost: u64, limit: u64, window: Duration, now: Instant) -> Duration {
        if cost > limit {
            return window;
        }
        let mut remaining = self.used;
        for event in &self.events {
            remaining = remaining.saturating_sub(event.cost);
            if remaining.saturating_add(cost) <= limit {
                return (event.at + window).saturating_duration_since(now);
            }
        }
        window
    }
}

/// Sliding-window log: per key, each counted acquisition with its time, cost and permit.
/// A key's entry lives until its newest acquisition leaves the window.
#[derive(Default)]
pub struct EmbeddedRateLimiter {
    state: Mutex<Limits>,
}

#[derive(Default)]
struct Limits {
    keys: ExpiringMap<Window>,
    last_permit: u64,
}

impl EmbeddedRateLimiter {
    /// A limiter with nothing counted.
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.state).keys.held()
    }
}

#[async_trait]
impl RateLimiter for EmbeddedRateLimiter {
    async fn acquire(&self, key: &str, cost: u64, limit: u64, window: Duration) -> Result<RateDecision, BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let Limits { keys, last_permit } = &mut *state;
        keys.sweep(now);
        let used = match keys.get_mut(key, now) {
            Some(counted) => {
                counted.slide(now, window);
                counted.used
            }
            None => 0,
        };
        if used.saturating_add(cost) > limit {
            let retry_after = match keys.get(key, now) {
                Some(counted) => counted.retry_after(cost, limit, window, now),
                None => window,
            };
            debug_assert!(!retry_after.is_zero() || window.is_zero());
            return Ok(RateDecision::Limited { retry_after });
        }
        *last_permit += 1;
        let event = Event { at: now, cost, permit: *last_permit };
        match keys.get_mut(key, now) {
            Some(counted) => {
                counted.used += cost;
                counted.events.push_back(event);
                keys.set_expires(key, now + window);
            }
            None => keys.insert(key, Window { events: VecDeque::from([event]), used: cost }, now + window),
        }
        Ok(RateDecision::Allowed { permit: *last_permit })
    }

    async fn refund(&self, key: &str, permit: u64) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.keys.sweep(now);
        let Some(counted) = state.keys.get_mut(key, now) else { return Ok(()) };
        let Some(position) = counted.events.iter().position(|event| event.permit == permit) else { return Ok(()) };
        if let Some(event) = counted.events.remove(position) {
            counted.used = counted.used.saturating_sub(event.cost);
        }
        if counted.events.is_empty() {
            state.keys.remove(key);
        }
        Ok(())
    }
}

enum KeyState {
    InFlight,
    Done(StoredAnswer),
}

/// Idempotency keys: the fingerprint of the request holding each key and its answer once
/// complete, for the key's time-to-live from its claim.
#[derive(Default)]
pub struct EmbeddedIdempotencyKeys {
    keys: Mutex<ExpiringMap<(String, KeyState)>>,
}

impl EmbeddedIdempotencyKeys {
    /// No key claimed.
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.keys).held()
    }
}

#[async_trait]
impl IdempotencyKeys for EmbeddedIdempotencyKeys {
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim, BackendError> {
        let now = Instant::now();
        let mut keys = lock(&self.keys);
        keys.sweep(now);
        if let Some((held, state)) = keys.get(key, now) {
            return Ok(match state {
                KeyState::InFlight => Claim::InFlight { fingerprint: held.clone() },
                KeyState::Done(answer) => Claim::Done { fingerprint: held.clone(), answer: answer.clone() },
            });
        }
        keys.insert(key, (fingerprint.to_owned(), KeyState::InFlight), now + ttl);
        Ok(Claim::New)
    }

    async fn complete(&self, key: &str, answer: StoredAnswer) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut keys = lock(&self.keys);
        keys.sweep(now);
        if let Some((_, state)) = keys.get_mut(key, now) {
            *state = KeyState::Done(answer);
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut keys = lock(&self.keys);
        keys.sweep(now);
        keys.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Memory reclamation; the behaviour itself is checked by `testsuite::cache`.
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_sweep_reclaims_at_most_a_batch_per_call() {
        let mut map = ExpiringMap::default();
        let now = Instant::now();
        for i in 0..100 {
            map.insert(&format!("k{i}"), i, now + SECOND);
        }
        map.sweep(now + SECOND);
        assert_eq!(map.held(), 100 - SWEEP_BATCH);
        for _ in 0..100 {
            map.sweep(now + SECOND);
        }
        assert_eq!((map.held(), map.slots()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshed_entries_survive_the_sweep_and_keep_one_slot() {
        let mut map = ExpiringMap::default();
        let start = Instant::now();
        map.insert("k", 1, start + SECOND);
        for step in 1..=10u32 {
            // Refresh before each deadline, then sweep at the old deadline.
            map.set_expires("k", start + SECOND * (step + 1));
            map.sweep(start + SECOND * step);
            assert_eq!(map.get("k", start + SECOND * step), Some(&1));
            assert_eq!(map.slots(), 1);
        }
        // A shorter deadline takes effect at once and is reclaimed on time.
        map.set_expires("k", start + SECOND * 10 + SECOND / 2);
        map.sweep(start + SECOND * 11);
        assert_eq!((map.held(), map.get("k", start + SECOND * 11)), (0, None));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_presence_is_reclaimed_by_later_calls() {
        let presence = EmbeddedPresence::new();
        let node = "n1".to_owned();
        for i in 0..1000 {
            presence.register(&format!("u{i}"), &node, "c", SECOND).await.unwrap();
        }
        tokio::time::advance(SECOND).await;
        for _ in 0..1000 / SWEEP_BATCH + 1 {
            presence.locate(&[]).await.unwrap();
        }
        assert_eq!(presence.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_rate_windows_are_reclaimed_by_later_calls() {
        let limiter = EmbeddedRateLimiter::new();
        for i in 0..1000 {
            limiter.acquire(&format!("k{i}"), 1, 10, SECOND).await.unwrap();
        }
        tokio::time::advance(SECOND).await;
        for _ in 0..1000 / SWEEP_BATCH + 1 {
            limiter.acquire("other", 1, 1_000_000, SECOND).await.unwrap();
        }
        assert_eq!(limiter.held(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_idempotency_keys_and_recent_entries_are_reclaimed() {
        let keys = EmbeddedIdempotencyKeys::new();
        let recent = EmbeddedRecentMessages::new();
        for i in 0..1000 {
            keys.claim(&format!("k{i}"), "f", SECOND).await.unwrap();
            recent.put(&format!("c{i}"), Vec::new(), SECOND).await.unwrap();
        }
        recent.invalidate(&["c0".to_owned()]).await.unwrap();
        tokio::time::advance(FILL_WINDOW).await;
        for _ in 0..1000 / SWEEP_BATCH + 1 {
            keys.release("none").await.unwrap();
            recent.get("none").await.unwrap();
        }
        assert_eq!(keys.held(), 0);
        assert_eq!(recent.held(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_conversation_is_remembered_once_and_until_its_latest_invalidation_is_old() {
        let recent = EmbeddedRecentMessages::new();
        let hot = ["hot".to_owned()];
        for _ in 0..1000 {
            recent.invalidate(&hot).await.unwrap();
        }
        assert_eq!(recent.held(), (0, 1), "one entry however often it is written");
        tokio::time::advance(FILL_WINDOW / 2).await;
        let token = recent.fill_token("hot").await.unwrap();
        recent.invalidate(&hot).await.unwrap();
        tokio::time::advance(FILL_WINDOW / 2).await;
        recent.get("hot").await.unwrap();
        assert_eq!(recent.held(), (0, 1), "the latest invalidation is still young");
        assert!(!recent.fill("hot", token, Vec::new(), SECOND).await.unwrap(), "written after the token");
        tokio::time::advance(FILL_WINDOW / 2).await;
        recent.get("hot").await.unwrap();
        assert_eq!(recent.held(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn fill_tokens_older_than_forgotten_invalidations_are_refused() {
        let recent = EmbeddedRecentMessages::new();
        let token = recent.fill_token("c1").await.unwrap();
        recent.invalidate(&["c2".to_owned()]).await.unwrap();
        tokio::time::advance(FILL_WINDOW).await;
        recent.get("c1").await.unwrap();
        // The invalidation of c2 is forgotten, so an old token cannot prove c1 was not hit.
        assert!(!recent.fill("c1", token, Vec::new(), SECOND).await.unwrap());
        let token = recent.fill_token("c1").await.unwrap();
        assert!(recent.fill("c1", token, Vec::new(), SECOND).await.unwrap());
    }
}
