//! The fast, expiring state: presence, the recent-message cache, rate limits and
//! idempotency keys. Redis in distributed mode, in-process in the embedded default, with
//! the same expiry semantics. Every method that takes a `ttl` or `window` measures it with
//! `tokio::time`, so tests can pause time.

mod embedded;

pub use embedded::{EmbeddedIdempotencyKeys, EmbeddedPresence, EmbeddedRateLimiter, EmbeddedRecentMessages};

use async_trait::async_trait;
use esh_common::Message;
use std::collections::HashMap;
use std::time::Duration;

use crate::bus::NodeId;
use crate::error::BackendError;

/// Presence time-to-live, refreshed by heartbeats (Req 7.3).
pub const PRESENCE_TTL: Duration = Duration::from_secs(300);
/// How many recent messages of a conversation are cached (Req 8.1).
pub const RECENT_MESSAGES: usize = 50;
/// How long cached recent messages live (Req 8.1).
pub const RECENT_TTL: Duration = Duration::from_secs(300);
/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a `RecentMessages::fill_token` stays usable (a store read takes far less).
pub const FILL_WINDOW: Duration = Duration::from_secs(10);

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Registers (or refreshes) connection `connection` of `user` on `node`; it expires
    /// `ttl` after the last call unless unregistered first.
    async fn register(&self, user: &str, node: &NodeId, connection: &str, ttl: Duration) -> Result<(), BackendError>;
    /// Removes one connection; unknown connections are ignored.
    async fn unregister(&self, user: &str, connection: &str) -> Result<(), BackendError>;
    /// For each of `users` with at least one unexpired connection, the nodes holding them.
    async fn locate(&self, users: &[String]) -> Result<HashMap<String, Vec<NodeId>>, BackendError>;
    /// Succeeds while presence can be read and written (readiness check).
    async fn check(&self) -> Result<(), BackendError>;
}

#[async_trait]
pub trait RecentMessages: Send + Sync + 'static {
    /// The cached newest messages of a conversation (oldest first), if cached within `ttl`.
    async fn get(&self, conversation_id: &str) -> Result<Option<Vec<Message>>, BackendError>;
    /// Caches the newest messages of a conversation (the last `RECENT_MESSAGES` of those given,
    /// oldest first) for `ttl`, unconditionally: a reader filling from the store uses `fill`.
    async fn put(&self, conversation_id: &str, messages: Vec<Message>, ttl: Duration) -> Result<(), BackendError>;
    /// Drops the entries of these conversations (called on every write to them, Req 10.4).
    async fn invalidate(&self, conversation_ids: &[String]) -> Result<(), BackendError>;
    /// A token to take before reading a conversation from the store to `fill` the cache.
    async fn fill_token(&self, conversation_id: &str) -> Result<u64, BackendError>;
    /// Caches like `put` unless the conversation was invalidated after `token` was taken (the
    /// read may predate that write); a token older than `FILL_WINDOW` may be refused. Says
    /// whether it cached.
    async fn fill(&self, conversation_id: &str, token: u64, messages: Vec<Message>, ttl: Duration)
        -> Result<bool, BackendError>;
}

/// The outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Counted; the permit undoes it with `refund` if the request is refused later.
    Allowed { permit: u64 },
    /// Not counted: retry after this long (more than zero, at most the window).
    Limited { retry_after: Duration },
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts `cost` units for `key` if the units counted in the last `window` plus `cost`
    /// stay within `limit` (a sliding window: "any 60 s window"); otherwise counts nothing
    /// and says when enough units will have left the window.
    async fn acquire(&self, key: &str, cost: u64, limit: u64, window: Duration) -> Result<RateDecision, BackendError>;
    /// Uncounts an allowed acquisition (the request was refused for another reason).
    async fn refund(&self, key: &str, permit: u64) -> Result<(), BackendError>;
}

/// The answer stored for a completed request, replayed to repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The state of an idempotency key when it is claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now held by the caller, who must `complete` or `release` it.
    New,
    /// Another request holds the key and has not answered yet.
    InFlight { fingerprint: String },
    /// A request with this key already answered.
    Done { fingerprint: String, answer: StoredAnswer },
}

#[async_trait]
pub trait IdempotencyKeys: Send + Sync + 'static {
    /// Claims `key` (already scoped to its sender) for a request whose body has `fingerprint`,
    /// remembered for `ttl`; or reports the request that holds it.
    async fn claim(&self, key: &str, fingerprint: &str, ttl: Duration) -> Result<Claim, BackendError>;
    /// Stores the answer of the request holding `key`; repeats get it until the key expires.
    async fn complete(&self, key: &str, answer: StoredAnswer) -> Result<(), BackendError>;
    /// Frees a claimed key whose request had no effect, so that a repeat is processed afresh.
    async fn release(&self, key: &str) -> Result<(), BackendError>;
}
