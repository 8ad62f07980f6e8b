//! Conformance of `Presence`, `RecentMessages`, `RateLimiter` and `IdempotencyKeys`.
//!
//! Each case is a public async fn taking a factory of the implementation under test (an
//! async closure returning `Arc<dyn Trait>`) and a [`Clock`]. Cases use keys unique to the
//! run, so they may share one server. Time-dependent cases let time pass through the clock:
//! [`Clock::paused`] uses the platform's real TTLs (5 min presence, 24 h idempotency, 60 s
//! rate window…) and `tokio::time::advance` (run them under
//! `#[tokio::test(start_paused = true)]`); [`Clock::real`] uses one short TTL for everything
//! and real sleeps, for servers that expire entries on their own clock (Redis).
//!
//! [`cache_suite!`](crate::cache_suite) expands to one `#[tokio::test]` per case, with
//! either clock:
//!
//! ```ignore
//! esh_backends::cache_suite!(paused; presence: presence, recent: recent, rate: limiter, idempotency: keys);
//! esh_backends::cache_suite!(real(Duration::from_secs(2)); presence: …);
//! ```

use esh_common::{ids, Message, MessageType, Millis, Priority, Status};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::NodeId;
use crate::cache::{
    Claim, IdempotencyKeys, Presence, RateDecision, RateLimiter, RecentMessages, StoredAnswer, IDEMPOTENCY_TTL,
    PRESENCE_TTL, RECENT_MESSAGES, RECENT_TTL,
};

/// Lets the given time pass.
pub type Advance = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How the suites let time pass, and the durations they use.
#[derive(Clone)]
pub struct Clock {
    advance: Advance,
    /// The presence time-to-live the cases register with.
    pub presence_ttl: Duration,
    /// The recent-message time-to-live the cases put with.
    pub recent_ttl: Duration,
    /// The idempotency-key time-to-live the cases claim with.
    pub idempotency_ttl: Duration,
    /// The rate-limit window.
    pub rate_window: Duration,
    /// How much real time may pass unasked between two steps (zero when time is paused).
    pub slack: Duration,
}

impl Clock {
    /// The platform's durations, with paused tokio time (`tokio::time::advance`).
    pub fn paused() -> Self {
        Self {
            advance: Arc::new(|by| Box::pin(tokio::time::advance(by))),
            presence_ttl: PRESENCE_TTL,
            recent_ttl: RECENT_TTL,
            idempotency_ttl: IDEMPOTENCY_TTL,
            rate_window: Duration::from_secs(60),
            slack: Duration::ZERO,
        }
    }

    /// `ttl` for every time-to-live and window, and real sleeps; steps may take up to
    /// `ttl / 8` (so `ttl` of a second or more suits a server on the local network).
    pub fn real(ttl: Duration) -> Self {
        Self {
            advance: Arc::new(|by| Box::pin(tokio::time::sleep(by))),
            presence_ttl: ttl,
            recent_ttl: ttl,
            idempotency_ttl: ttl,
            rate_window: ttl,
            slack: ttl / 8,
        }
    }

    /// Lets `by` pass.
    pub async fn advance(&self, by: Duration) {
        (self.advance)(by).await;
    }
}

/// One `#[tokio::test]` per case of the cache suites, in a module `cache_suite`:
/// `paused` runs them with paused tokio time and the platform's real TTLs
/// ([`Clock::paused`]), `real(ttl)` with real sleeps and `ttl` ([`Clock::real`]). Each of
/// `presence`, `recent`, `rate` and `idempotency` is an async factory (an async fn or
/// closure, in the caller's scope) of the implementation under test. The caller needs `tokio`.
#[macro_export]
macro_rules! cache_suite {
    (paused; $($factories:tt)*) => {
        $crate::cache_suite!(@suite {#[tokio::test(start_paused = true)]} $crate::testsuite::cache::Clock::paused(); $($factories)*);
    };
    (real($ttl:expr); $($factories:tt)*) => {
        $crate::cache_suite!(@suite {#[tokio::test]} $crate::testsuite::cache::Clock::real($ttl); $($factories)*);
    };
    (@suite {#[$test:meta]} $clock:expr; presence: $presence:expr, recent: $recent:expr, rate: $rate:expr, idempotency: $idempotency:expr $(,)?) => {
        mod cache_suite {
            #[allow(unused_imports)]
            use super::*;
            $crate::cache_suite!(@cases {#[$test]} $clock; $presence;
                presence_register_locate_unregister, presence_many_connections_and_nodes,
                presence_expires_after_ttl_unless_refreshed, presence_connections_expire_separately);
            $crate::cache_suite!(@cases {#[$test]} $clock; $recent;
                recent_put_get_invalidate, recent_keeps_the_newest_fifty, recent_expires_after_ttl,
                recent_fill_after_invalidation_is_refused);
            $crate::cache_suite!(@cases {#[$test]} $clock; $rate;
                rate_allows_the_limit_then_limits, rate_window_slides, rate_refund_makes_room,
                rate_costs_count_units, rate_keys_are_independent);
            $crate::cache_suite!(@cases {#[$test]} $clock; $idempotency;
                idempotency_claim_in_flight_then_done, idempotency_release_frees_the_key, idempotency_keys_expire);
        }
    };
    (@cases {#[$test:meta]} $clock:expr; $factory:expr; $($case:ident),*) => {$(
        #[$test]
        async fn $case() {
            $crate::testsuite::cache::$case($factory, &$clock).await;
        }
    )*};
}

/// A key no other case or run uses.
fn unique(name: &str) -> String {
    format!("esh-suite:{name}:{}", ids::new_id())
}

fn nodes(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// The nodes `locate` reports for `user`, sorted (the contract promises no order).
async fn nodes_of(presence: &dyn Presence, user: &str) -> Vec<NodeId> {
    let found = presence.locate(&[user.to_owned()]).await.expect("locate");
    let mut nodes = found.get(user).cloned().unwrap_or_default();
    nodes.sort();
    nodes
}

/// Register, locate and unregister one connection (Req 7.3).
pub async fn presence_register_locate_unregister(new: impl AsyncFn() -> Arc<dyn Presence>, clock: &Clock) {
    let presence = new().await;
    presence.check().await.expect("presence is ready");
    let (user, other) = (unique("user"), unique("other"));
    let node = "node-a".to_owned();
    let connection = unique("conn");

    presence.register(&user, &node, &connection, clock.presence_ttl).await.expect("register");
    let found = presence.locate(&[user.clone(), other.clone()]).await.expect("locate");
    assert_eq!(found, HashMap::from([(user.clone(), vec![node.clone()])]), "only the registered user is located");

    presence.unregister(&user, &connection).await.expect("unregister");
    assert!(presence.locate(std::slice::from_ref(&user)).await.expect("locate").is_empty(), "unregistered users are offline");
    presence.unregister(&user, &connection).await.expect("unregistering again is harmless");
    presence.unregister(&other, "never-registered").await.expect("unknown connections are ignored");
    assert!(presence.locate(&[]).await.expect("locate nobody").is_empty());
}

/// Several connections of a user on several nodes; several users in one lookup (Req 7.3).
pub async fn presence_many_connections_and_nodes(new: impl AsyncFn() -> Arc<dyn Presence>, clock: &Clock) {
    let presence = new().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (c1, c2, c3, c4) = (unique("c1"), unique("c2"), unique("c3"), unique("c4"));
    let ttl = clock.presence_ttl;
    presence.register(&alice, &"node-a".to_owned(), &c1, ttl).await.expect("register");
    presence.register(&alice, &"node-b".to_owned(), &c2, ttl).await.expect("register");
    presence.register(&alice, &"node-a".to_owned(), &c3, ttl).await.expect("register");
    presence.register(&bob, &"node-c".to_owned(), &c4, ttl).await.expect("register");

    let found = presence.locate(&[alice.clone(), bob.clone()]).await.expect("locate");
    assert_eq!(found.len(), 2);
    let mut alice_nodes = found[&alice].clone();
    alice_nodes.sort();
    assert_eq!(alice_nodes, nodes(&["node-a", "node-b"]), "each node once, however many connections it holds");
    assert_eq!(found[&bob], nodes(&["node-c"]));

    presence.unregister(&alice, &c1).await.expect("unregister");
    assert_eq!(nodes_of(&*presence, &alice).await, nodes(&["node-a", "node-b"]), "c3 still holds alice on node-a");
    presence.unregister(&alice, &c3).await.expect("unregister");
    assert_eq!(nodes_of(&*presence, &alice).await, nodes(&["node-b"]));
    // A connection that moves to another node is found there only.
    presence.register(&alice, &"node-d".to_owned(), &c2, ttl).await.expect("register");
    assert_eq!(nodes_of(&*presence, &alice).await, nodes(&["node-d"]));
    presence.unregister(&alice, &c2).await.expect("unregister");
    assert_eq!(nodes_of(&*presence, &alice).await, Vec::<NodeId>::new());
    assert_eq!(nodes_of(&*presence, &bob).await, nodes(&["node-c"]), "other users are untouched");
}

/// A connection expires `ttl` after its last registration; registering again refreshes it (Req 7.3).
pub async fn presence_expires_after_ttl_unless_refreshed(new: impl AsyncFn() -> Arc<dyn Presence>, clock: &Clock) {
    let presence = new().await;
    let ttl = clock.presence_ttl;
    let (user, connection, node) = (unique("user"), unique("conn"), "node-a".to_owned());

    presence.register(&user, &node, &connection, ttl).await.expect("register");
    clock.advance(ttl * 3 / 4).await;
    assert_eq!(nodes_of(&*presence, &user).await, nodes(&["node-a"]), "online before the ttl");
    presence.register(&user, &node, &connection, ttl).await.expect("heartbeat");
    clock.advance(ttl * 3 / 4).await;
    assert_eq!(nodes_of(&*presence, &user).await, nodes(&["node-a"]), "the heartbeat refreshed the ttl");
    clock.advance(ttl / 2).await;
    assert!(nodes_of(&*presence, &user).await.is_empty(), "offline once the ttl passed without a heartbeat");

    // Registering after expiry makes the user online again.
    presence.register(&user, &node, &connection, ttl).await.expect("register");
    assert_eq!(nodes_of(&*presence, &user).await, nodes(&["node-a"]));
}

/// Each connection of a user expires on its own (Req 7.3).
pub async fn presence_connections_expire_separately(new: impl AsyncFn() -> Arc<dyn Presence>, clock: &Clock) {
    let presence = new().await;
    let ttl = clock.presence_ttl;
    let user = unique("user");
    presence.register(&user, &"node-a".to_owned(), &unique("c1"), ttl).await.expect("register");
    clock.advance(ttl / 2).await;
    presence.register(&user, &"node-b".to_owned(), &unique("c2"), ttl).await.expect("register");
    clock.advance(ttl * 3 / 4).await;
    assert_eq!(nodes_of(&*presence, &user).await, nodes(&["node-b"]), "the first connection expired, not the second");
    clock.advance(ttl / 2).await;
    assert!(nodes_of(&*presence, &user).await.is_empty());
}

/// A chat message of `conversation`, with a fresh (time-ordered) id.
fn message(conversation: &str, content: String) -> Message {
    Message {
        id: ids::new_id(),
        kind: MessageType::Chat,
        sender_id: "suite-business".into(),
        recipient_id: "suite-mobile".into(),
        conversation_id: Some(conversation.to_owned()),
        content,
        media_ids: Vec::new(),
        priority: Priority::Normal,
        status: Status::Sent,
        status_changed_at: Millis(1),
        created_at: Millis(1),
        error: None,
        broadcast_id: None,
    }
}

fn messages(conversation: &str, count: usize) -> Vec<Message> {
    (0..count).map(|i| message(conversation, format!("message {i}"))).collect()
}

/// Put, get and invalidate; other conversations are untouched (Req 8.1, 10.4).
pub async fn recent_put_get_invalidate(new: impl AsyncFn() -> Arc<dyn RecentMessages>, clock: &Clock) {
    let recent = new().await;
    let ttl = clock.recent_ttl;
    let (first, second) = (unique("conv"), unique("conv"));
    assert_eq!(recent.get(&first).await.expect("get"), None, "nothing cached yet");

    let cached = messages(&first, 3);
    recent.put(&first, cached.clone(), ttl).await.expect("put");
    recent.put(&second, messages(&second, 2), ttl).await.expect("put");
    assert_eq!(recent.get(&first).await.expect("get"), Some(cached), "the same messages in the same order");

    let replaced = messages(&first, 4);
    recent.put(&first, replaced.clone(), ttl).await.expect("put");
    assert_eq!(recent.get(&first).await.expect("get"), Some(replaced), "a put replaces the entry");

    recent.put(&first, Vec::new(), ttl).await.expect("put");
    assert_eq!(recent.get(&first).await.expect("get"), Some(Vec::new()), "an empty conversation is cached too");

    recent.invalidate(&[first.clone(), unique("never-cached")]).await.expect("invalidate");
    assert_eq!(recent.get(&first).await.expect("get"), None, "a write drops the entry (Req 10.4)");
    assert_eq!(recent.get(&second).await.expect("get").map(|m| m.len()), Some(2), "others stay cached");
    recent.invalidate(&[]).await.expect("invalidating nothing is harmless");
}

/// At most the newest `RECENT_MESSAGES` are kept, oldest first (Req 8.1).
pub async fn recent_keeps_the_newest_fifty(new: impl AsyncFn() -> Arc<dyn RecentMessages>, clock: &Clock) {
    let recent = new().await;
    let conversation = unique("conv");
    let all = messages(&conversation, RECENT_MESSAGES + 10);
    recent.put(&conversation, all.clone(), clock.recent_ttl).await.expect("put");
    let cached = recent.get(&conversation).await.expect("get").expect("cached");
    assert_eq!(cached.len(), RECENT_MESSAGES);
    assert_eq!(cached, all[10..].to_vec(), "the newest 50, oldest first");

    let exactly = messages(&conversation, RECENT_MESSAGES);
    recent.put(&conversation, exactly.clone(), clock.recent_ttl).await.expect("put");
    assert_eq!(recent.get(&conversation).await.expect("get"), Some(exactly));
}

/// Entries expire `ttl` after their put; a new put starts a new ttl (Req 8.1).
pub async fn recent_expires_after_ttl(new: impl AsyncFn() -> Arc<dyn RecentMessages>, clock: &Clock) {
    let recent = new().await;
    let ttl = clock.recent_ttl;
    let conversation = unique("conv");
    recent.put(&conversation, messages(&conversation, 2), ttl).await.expect("put");
    clock.advance(ttl * 3 / 4).await;
    assert!(recent.get(&conversation).await.expect("get").is_some(), "cached within the ttl");
    clock.advance(ttl / 2).await;
    assert_eq!(recent.get(&conversation).await.expect("get"), None, "expired after the ttl");

    recent.put(&conversation, messages(&conversation, 1), ttl).await.expect("put");
    clock.advance(ttl * 3 / 4).await;
    recent.put(&conversation, messages(&conversation, 1), ttl).await.expect("put again");
    clock.advance(ttl * 3 / 4).await;
    assert!(recent.get(&conversation).await.expect("get").is_some(), "the second put started a new ttl");
    clock.advance(ttl / 2).await;
    assert_eq!(recent.get(&conversation).await.expect("get"), None);
}

/// A fill whose store read may predate a write is refused; others fill the cache (Req 10.4).
pub async fn recent_fill_after_invalidation_is_refused(new: impl AsyncFn() -> Arc<dyn RecentMessages>, clock: &Clock) {
    let recent = new().await;
    let ttl = clock.recent_ttl;
    let (conversation, other) = (unique("conv"), unique("conv"));

    // Reader takes a token and reads the store; a writer then writes and invalidates.
    let token = recent.fill_token(&conversation).await.expect("token");
    let read_before_write = messages(&conversation, 2);
    recent.invalidate(std::slice::from_ref(&conversation)).await.expect("invalidate");
    let cached = recent.fill(&conversation, token, read_before_write, ttl).await.expect("fill");
    assert!(!cached, "a read that may predate the write is not cached");
    assert_eq!(recent.get(&conversation).await.expect("get"), None);

    let token = recent.fill_token(&conversation).await.expect("token");
    let fresh = messages(&conversation, 3);
    // Writes to other conversations do not spoil this fill.
    recent.invalidate(std::slice::from_ref(&other)).await.expect("invalidate");
    assert!(recent.fill(&conversation, token, fresh.clone(), ttl).await.expect("fill"), "a fresh read is cached");
    assert_eq!(recent.get(&conversation).await.expect("get"), Some(fresh));

    let all = messages(&other, RECENT_MESSAGES + 1);
    let token = recent.fill_token(&other).await.expect("token");
    assert!(recent.fill(&other, token, all.clone(), ttl).await.expect("fill"));
    assert_eq!(recent.get(&other).await.expect("get"), Some(all[1..].to_vec()), "fill keeps the newest 50 too");
}

/// The default per-sender limit of API.md (`ESH_RATE_LIMIT_PER_MINUTE`).
const LIMIT: u64 = 100;

fn permit(decision: RateDecision) -> u64 {
    match decision {
        RateDecision::Allowed { permit } => permit,
        RateDecision::Limited { retry_after } => panic!("expected to be allowed, limited for {retry_after:?}"),
    }
}

/// The wait of a refusal, checked to be within `(0, window]` and whole seconds `1..=60`
/// for a 60 s window (API.md "Retry-After is a whole number of seconds, 1..60").
fn retry_after(decision: RateDecision, window: Duration) -> Duration {
    let RateDecision::Limited { retry_after } = decision else { panic!("expected to be limited, was allowed") };
    assert!(!retry_after.is_zero() && retry_after <= window, "retry after {retry_after:?} within (0, {window:?}]");
    let whole_seconds = retry_after.as_secs_f64().ceil() as u64;
    assert!((1..=window.as_secs_f64().ceil() as u64).contains(&whole_seconds));
    retry_after
}

/// `actual` is `expected` give or take the clock's slack (real time only shortens a wait).
fn assert_about(actual: Duration, expected: Duration, clock: &Clock, what: &str) {
    assert!(
        actual <= expected && actual + clock.slack >= expected,
        "{what}: {actual:?} should be {expected:?} (slack {:?})",
        clock.slack
    );
}

/// Takes `count` units one at a time, all of which must be allowed.
async fn take(limiter: &dyn RateLimiter, key: &str, count: u64, window: Duration) -> Vec<u64> {
    let mut permits = Vec::new();
    for _ in 0..count {
        permits.push(permit(limiter.acquire(key, 1, LIMIT, window).await.expect("acquire")));
    }
    permits
}

/// 100 sends in a window are allowed, the 101st is limited until the first leaves the
/// window, and refused sends do not count (Req 5.5, API.md "Rate limit").
pub async fn rate_allows_the_limit_then_limits(new: impl AsyncFn() -> Arc<dyn RateLimiter>, clock: &Clock) {
    let limiter = new().await;
    let window = clock.rate_window;
    let key = unique("sender");
    let permits = take(&*limiter, &key, LIMIT, window).await;
    assert_eq!(permits.iter().collect::<HashSet<_>>().len(), permits.len(), "every permit is distinct");

    let first = retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);
    assert_about(first, window, clock, "the first send leaves the window a full window after it");

    clock.advance(window / 2).await;
    for _ in 0..5 {
        let wait = retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);
        assert_about(wait, window / 2, clock, "half the window later");
    }
    clock.advance(window / 2 + clock.slack).await;
    // Every counted send left the window; the refused ones were never counted.
    take(&*limiter, &key, LIMIT, window).await;
    retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);
}

/// The window slides: once the oldest send leaves it, exactly one more is allowed (Req 5.5).
pub async fn rate_window_slides(new: impl AsyncFn() -> Arc<dyn RateLimiter>, clock: &Clock) {
    let limiter = new().await;
    let window = clock.rate_window;
    let key = unique("sender");
    take(&*limiter, &key, 1, window).await;
    clock.advance(window / 4).await;
    take(&*limiter, &key, LIMIT - 1, window).await;
    let wait = retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);
    assert_about(wait, window * 3 / 4, clock, "until the oldest send leaves the window");

    clock.advance(window * 3 / 4 + window / 8).await;
    take(&*limiter, &key, 1, window).await;
    let wait = retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);
    assert_about(wait, window / 8, clock, "until the next batch leaves the window");
    // Not a fixed window: the 99 later sends still count a full window after the first.
}

/// A refund undoes one allowed acquisition, once; unknown permits change nothing (Req 5.5).
pub async fn rate_refund_makes_room(new: impl AsyncFn() -> Arc<dyn RateLimiter>, clock: &Clock) {
    let limiter = new().await;
    let window = clock.rate_window;
    let (key, other) = (unique("sender"), unique("sender"));
    let permits = take(&*limiter, &key, LIMIT, window).await;
    take(&*limiter, &other, 1, window).await;

    limiter.refund(&key, u64::MAX).await.expect("refunding an unknown permit");
    limiter.refund(&unique("never-used"), permits[0]).await.expect("refunding on another key");
    retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);

    limiter.refund(&key, permits[LIMIT as usize / 2]).await.expect("refund");
    limiter.refund(&key, permits[LIMIT as usize / 2]).await.expect("refund twice");
    take(&*limiter, &key, 1, window).await;
    retry_after(limiter.acquire(&key, 1, LIMIT, window).await.expect("acquire"), window);
    take(&*limiter, &other, LIMIT - 1, window).await;
}

/// Acquisitions of several units (the broadcast quota counts recipients): a refused one
/// counts nothing, the wait is until enough units leave (Req 5.5, API.md "Limits").
pub async fn rate_costs_count_units(new: impl AsyncFn() -> Arc<dyn RateLimiter>, clock: &Clock) {
    let limiter = new().await;
    let window = clock.rate_window;
    let key = unique("business");
    let quota = 1000;
    let acquire = |cost: u64| {
        let limiter = limiter.clone();
        let key = key.clone();
        async move { limiter.acquire(&key, cost, quota, window).await.expect("acquire") }
    };
    let big = permit(acquire(600).await);
    let wait = retry_after(acquire(500).await, window);
    assert_about(wait, window, clock, "500 more fit only once the 600 leave");
    clock.advance(window / 2).await;
    permit(acquire(400).await);
    let wait = retry_after(acquire(1).await, window);
    assert_about(wait, window / 2, clock, "the 600 leave first, and that is enough");

    limiter.refund(&key, big).await.expect("refund");
    permit(acquire(500).await);
    retry_after(acquire(101).await, window);
    permit(acquire(100).await);
    retry_after(acquire(1).await, window);

    let fresh = unique("business");
    let decision = limiter.acquire(&fresh, quota + 1, quota, window).await.expect("acquire");
    retry_after(decision, window);
    permit(limiter.acquire(&fresh, quota, quota, window).await.expect("acquire"));
}

/// Keys are limited independently (Req 5.5: per sender).
pub async fn rate_keys_are_independent(new: impl AsyncFn() -> Arc<dyn RateLimiter>, clock: &Clock) {
    let limiter = new().await;
    let window = clock.rate_window;
    let (a, b) = (unique("sender-a"), unique("sender-b"));
    take(&*limiter, &a, LIMIT, window).await;
    retry_after(limiter.acquire(&a, 1, LIMIT, window).await.expect("acquire"), window);
    take(&*limiter, &b, LIMIT, window).await;
    retry_after(limiter.acquire(&b, 1, LIMIT, window).await.expect("acquire"), window);
}

fn answer(body: &str) -> StoredAnswer {
    StoredAnswer { status: 202, body: body.as_bytes().to_vec() }
}

/// New, then InFlight with the holder's fingerprint, then Done with the answer; keys are
/// independent (API.md "Idempotency").
pub async fn idempotency_claim_in_flight_then_done(new: impl AsyncFn() -> Arc<dyn IdempotencyKeys>, clock: &Clock) {
    let keys = new().await;
    let ttl = clock.idempotency_ttl;
    let (key, other) = (unique("sender:key"), unique("sender:key"));
    assert_eq!(keys.claim(&key, "body-1", ttl).await.expect("claim"), Claim::New);
    assert_eq!(
        keys.claim(&key, "body-1", ttl).await.expect("claim"),
        Claim::InFlight { fingerprint: "body-1".into() },
        "a repeat while the first is in flight"
    );
    assert_eq!(
        keys.claim(&key, "body-2", ttl).await.expect("claim"),
        Claim::InFlight { fingerprint: "body-1".into() },
        "the holder's fingerprint, so that a different body is told apart"
    );
    assert_eq!(keys.claim(&other, "body-2", ttl).await.expect("claim"), Claim::New, "keys are independent");

    keys.complete(&key, answer("first")).await.expect("complete");
    let done = Claim::Done { fingerprint: "body-1".into(), answer: answer("first") };
    assert_eq!(keys.claim(&key, "body-1", ttl).await.expect("claim"), done, "repeats get the stored answer");
    assert_eq!(keys.claim(&key, "body-2", ttl).await.expect("claim"), done);
    assert_eq!(
        keys.claim(&other, "body-2", ttl).await.expect("claim"),
        Claim::InFlight { fingerprint: "body-2".into() }
    );
}

/// A released key is free again, for any body (API.md "Idempotency").
pub async fn idempotency_release_frees_the_key(new: impl AsyncFn() -> Arc<dyn IdempotencyKeys>, clock: &Clock) {
    let keys = new().await;
    let ttl = clock.idempotency_ttl;
    let key = unique("sender:key");
    assert_eq!(keys.claim(&key, "body-1", ttl).await.expect("claim"), Claim::New);
    keys.release(&key).await.expect("release");
    assert_eq!(keys.claim(&key, "body-2", ttl).await.expect("claim"), Claim::New, "processed afresh");
    assert_eq!(
        keys.claim(&key, "body-1", ttl).await.expect("claim"),
        Claim::InFlight { fingerprint: "body-2".into() }
    );
    keys.release(&unique("never-claimed")).await.expect("releasing an unknown key is harmless");
}

/// A key is remembered for its ttl from the claim, then free (API.md: 24 h).
pub async fn idempotency_keys_expire(new: impl AsyncFn() -> Arc<dyn IdempotencyKeys>, clock: &Clock) {
    let keys = new().await;
    let ttl = clock.idempotency_ttl;
    let (done, in_flight) = (unique("sender:key"), unique("sender:key"));
    assert_eq!(keys.claim(&done, "body-1", ttl).await.expect("claim"), Claim::New);
    assert_eq!(keys.claim(&in_flight, "body-1", ttl).await.expect("claim"), Claim::New);
    keys.complete(&done, answer("first")).await.expect("complete");
    clock.advance(ttl * 3 / 4).await;
    assert!(matches!(keys.claim(&done, "body-1", ttl).await.expect("claim"), Claim::Done { .. }));
    assert!(matches!(keys.claim(&in_flight, "body-1", ttl).await.expect("claim"), Claim::InFlight { .. }));
    clock.advance(ttl / 2).await;
    assert_eq!(keys.claim(&done, "body-2", ttl).await.expect("claim"), Claim::New, "forgotten after the ttl");
    assert_eq!(keys.claim(&in_flight, "body-2", ttl).await.expect("claim"), Claim::New);
}
