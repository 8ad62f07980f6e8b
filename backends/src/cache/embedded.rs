//! In-process presence, recent-message cache, rate limiter and idempotency keys, with the
//! expiry semantics of their Redis counterparts. Time comes from `tokio::time::Instant`,
//! so paused-time tests drive expiry. Each map sits behind a short `std::sync::Mutex`
//! section; expired entries are dropped when touched and by an occasional sweep.

use async_trait::async_trait;
use esh_common::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::{Claim, IdempotencyKeys, Presence, RateDecision, RateLimiter, RecentMessages, StoredAnswer, RECENT_MESSAGES};
use crate::bus::NodeId;
use crate::error::BackendError;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Entries touched between sweeps of expired entries.
const SWEEP_EVERY: u64 = 1024;

#[derive(Default)]
pub struct EmbeddedPresence {
    /// user → connection → (node, expiry)
    users: Mutex<(HashMap<String, HashMap<String, (NodeId, Instant)>>, u64)>,
}

impl EmbeddedPresence {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Presence for EmbeddedPresence {
    async fn register(&self, user: &str, node: &NodeId, connection: &str, ttl: Duration) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut guard = lock(&self.users);
        let (users, touches) = &mut *guard;
        *touches += 1;
        if *touches % SWEEP_EVERY == 0 {
            users.retain(|_, connections| {
                connections.retain(|_, (_, expiry)| *expiry > now);
                !connections.is_empty()
            });
        }
        users.entry(user.to_owned()).or_default().insert(connection.to_owned(), (node.clone(), now + ttl));
        Ok(())
    }

    async fn unregister(&self, user: &str, connection: &str) -> Result<(), BackendError> {
        let mut guard = lock(&self.users);
        if let Some(connections) = guard.0.get_mut(user) {
            connections.remove(connection);
            if connections.is_empty() {
                guard.0.remove(user);
            }
        }
        Ok(())
    }

    async fn locate(&self, users: &[String]) -> Result<HashMap<String, Vec<NodeId>>, BackendError> {
        let now = Instant::now();
        let guard = lock(&self.users);
        let mut found = HashMap::new();
        for user in users {
            let Some(connections) = guard.0.get(user) else { continue };
            let mut nodes: Vec<NodeId> =
                connections.values().filter(|(_, expiry)| *expiry > now).map(|(node, _)| node.clone()).collect();
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

#[derive(Default)]
pub struct EmbeddedRecentMessages {
    conversations: Mutex<HashMap<String, (Vec<Message>, Instant)>>,
}

impl EmbeddedRecentMessages {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RecentMessages for EmbeddedRecentMessages {
    async fn get(&self, conversation_id: &str) -> Result<Option<Vec<Message>>, BackendError> {
        let now = Instant::now();
        let mut conversations = lock(&self.conversations);
        match conversations.get(conversation_id) {
            Some((messages, expiry)) if *expiry > now => Ok(Some(messages.clone())),
            Some(_) => {
                conversations.remove(conversation_id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, conversation_id: &str, mut messages: Vec<Message>, ttl: Duration) -> Result<(), BackendError> {
        let now = Instant::now();
        let excess = messages.len().saturating_sub(RECENT_MESSAGES);
        messages.drain(..excess);
        let mut conversations = lock(&self.conversations);
        if conversations.len() % SWEEP_EVERY as usize == 0 {
            conversations.retain(|_, (_, expiry)| *expiry > now);
        }
        conversations.insert(conversation_id.to_owned(), (messages, now + ttl));
        Ok(())
    }

    async fn invalidate(&self, conversation_ids: &[String]) -> Result<(), BackendError> {
        let mut conversations = lock(&self.conversations);
        for id in conversation_ids {
            conversations.remove(id);
        }
        Ok(())
    }
}

/// Sliding-window log: per key, the (time, cost, permit) of each counted acquisition.
#[derive(Default)]
pub struct EmbeddedRateLimiter {
    keys: Mutex<(HashMap<String, VecDeque<(Instant, u64, u64)>>, u64)>,
}

impl EmbeddedRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimiter for EmbeddedRateLimiter {
    async fn acquire(&self, key: &str, cost: u64, limit: u64, window: Duration) -> Result<RateDecision, BackendError> {
        let now = Instant::now();
        let mut guard = lock(&self.keys);
        let (keys, next_permit) = &mut *guard;
        let events = keys.entry(key.to_owned()).or_default();
        while events.front().is_some_and(|(at, _, _)| *at + window <= now) {
            events.pop_front();
        }
        let used: u64 = events.iter().map(|(_, cost, _)| cost).sum();
        if used + cost <= limit {
            *next_permit += 1;
            events.push_back((now, cost, *next_permit));
            return Ok(RateDecision::Allowed { permit: *next_permit });
        }
        // Wait until enough of the oldest units leave the window.
        let mut freed = 0;
        let mut retry_after = window;
        for (at, units, _) in events.iter() {
            freed += units;
            if used - freed + cost <= limit {
                retry_after = (*at + window).saturating_duration_since(now);
                break;
            }
        }
        Ok(RateDecision::Limited { retry_after })
    }

    async fn refund(&self, key: &str, permit: u64) -> Result<(), BackendError> {
        if let Some(events) = lock(&self.keys).0.get_mut(key) {
            events.retain(|(_, _, p)| *p != permit);
        }
        Ok(())
    }
}

enum KeyState {
    InFlight,
    Done(StoredAnswer),
}

#[derive(Default)]
pub struct EmbeddedIdempotencyKeys {
    keys: Mutex<HashMap<String, (String, KeyState, Instant)>>,
}

impl EmbeddedIdempotencyKeys {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl IdempotencyKeys for EmbeddedIdempotencyKeys {
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim, BackendError> {
        let now = Instant::now();
        let mut keys = lock(&self.keys);
        if keys.len() % SWEEP_EVERY as usize == 0 {
            keys.retain(|_, (_, _, expiry)| *expiry > now);
        }
        match keys.get(key) {
            Some((held, state, expiry)) if *expiry > now => Ok(match state {
                KeyState::InFlight => Claim::InFlight { fingerprint: held.clone() },
                KeyState::Done(answer) => Claim::Done { fingerprint: held.clone(), answer: answer.clone() },
            }),
            _ => {
                keys.insert(key.to_owned(), (fingerprint.to_owned(), KeyState::InFlight, now + ttl));
                Ok(Claim::New)
            }
        }
    }

    async fn complete(&self, key: &str, answer: StoredAnswer) -> Result<(), BackendError> {
        if let Some((_, state, _)) = lock(&self.keys).get_mut(key) {
            *state = KeyState::Done(answer);
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), BackendError> {
        lock(&self.keys).remove(key);
        Ok(())
    }
}
