//! The cache conformance suite (`testsuite::cache`) against the in-process presence,
//! recent-message cache, rate limiter and idempotency keys, with paused tokio time and the
//! platform's real TTLs; and the in-process delivery bus.

use esh_backends::bus::EmbeddedDeliveryBus;
use esh_backends::cache::{EmbeddedIdempotencyKeys, EmbeddedPresence, EmbeddedRateLimiter, EmbeddedRecentMessages};
use esh_backends::testsuite::cache::{self as suite, Clock};
use esh_backends::{DeliveryBus, IdempotencyKeys, NodeEvent, Presence, RateLimiter, RecentMessages};
use esh_common::{Millis, Status};
use std::sync::Arc;
use std::time::Duration;

async fn presence() -> Arc<dyn Presence> {
    Arc::new(EmbeddedPresence::new())
}

async fn recent() -> Arc<dyn RecentMessages> {
    Arc::new(EmbeddedRecentMessages::new())
}

async fn limiter() -> Arc<dyn RateLimiter> {
    Arc::new(EmbeddedRateLimiter::new())
}

async fn idempotency() -> Arc<dyn IdempotencyKeys> {
    Arc::new(EmbeddedIdempotencyKeys::new())
}

/// One paused-time test per suite case: `name => case(factory)`.
macro_rules! suite_tests {
    ($($name:ident => $case:ident($factory:ident);)*) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            suite::$case($factory, &Clock::paused()).await;
        }
    )*};
}

suite_tests! {
    req_7_3_presence_register_locate_unregister => presence_register_locate_unregister(presence);
    req_7_3_presence_many_connections_and_nodes => presence_many_connections_and_nodes(presence);
    req_7_3_presence_expires_after_ttl_unless_refreshed => presence_expires_after_ttl_unless_refreshed(presence);
    req_7_3_presence_connections_expire_separately => presence_connections_expire_separately(presence);
    req_8_1_recent_put_get_invalidate => recent_put_get_invalidate(recent);
    req_8_1_recent_keeps_the_newest_fifty => recent_keeps_the_newest_fifty(recent);
    req_8_1_recent_expires_after_ttl => recent_expires_after_ttl(recent);
    req_10_4_recent_fill_after_invalidation_is_refused => recent_fill_after_invalidation_is_refused(recent);
    req_5_5_rate_allows_the_limit_then_limits => rate_allows_the_limit_then_limits(limiter);
    req_5_5_rate_window_slides => rate_window_slides(limiter);
    req_5_5_rate_refund_makes_room => rate_refund_makes_room(limiter);
    req_5_5_rate_costs_count_units => rate_costs_count_units(limiter);
    req_5_5_rate_keys_are_independent => rate_keys_are_independent(limiter);
    idempotency_claim_in_flight_then_done => idempotency_claim_in_flight_then_done(idempotency);
    idempotency_release_frees_the_key => idempotency_release_frees_the_key(idempotency);
    idempotency_keys_expire_after_24_hours => idempotency_keys_expire(idempotency);
}

/// The suite also holds with real time and short TTLs (how a Redis run will drive it).
#[tokio::test]
async fn req_7_3_presence_expiry_with_real_time() {
    suite::presence_expires_after_ttl_unless_refreshed(presence, &Clock::real(Duration::from_secs(2))).await;
}

#[tokio::test]
async fn req_5_5_rate_window_slides_with_real_time() {
    suite::rate_window_slides(limiter, &Clock::real(Duration::from_secs(2))).await;
}

fn status(message_id: &str, at: i64) -> NodeEvent {
    NodeEvent::Status { user: "b1".into(), message_id: message_id.into(), status: Status::Delivered, at: Millis(at) }
}

#[tokio::test]
async fn bus_delivers_to_the_subscribed_node_in_order() {
    let bus = EmbeddedDeliveryBus::new();
    let (node_a, node_b) = ("node-a".to_owned(), "node-b".to_owned());
    let mut a = bus.subscribe(&node_a, 4).await.unwrap();
    let mut b = bus.subscribe(&node_b, 4).await.unwrap();

    bus.send(&node_a, vec![status("m1", 1), status("m2", 2)]).await.unwrap();
    bus.send(&node_b, vec![status("m3", 3)]).await.unwrap();
    bus.send(&node_a, vec![status("m4", 4)]).await.unwrap();
    bus.send(&node_a, Vec::new()).await.unwrap();

    assert_eq!(a.recv().await.unwrap(), vec![status("m1", 1), status("m2", 2)]);
    assert_eq!(a.recv().await.unwrap(), vec![status("m4", 4)]);
    assert!(a.try_recv().is_err(), "nothing else, and no empty batch");
    assert_eq!(b.recv().await.unwrap(), vec![status("m3", 3)], "each node gets only its own events");
}

#[tokio::test]
async fn bus_drops_events_for_unknown_or_stopped_nodes() {
    let bus = EmbeddedDeliveryBus::new();
    bus.send(&"nobody".to_owned(), vec![status("m1", 1)]).await.expect("an unknown node is not an error");

    let node = "node-a".to_owned();
    let stopped = bus.subscribe(&node, 1).await.unwrap();
    drop(stopped);
    bus.send(&node, vec![status("m1", 1)]).await.expect("a stopped node is not an error");

    // A node that subscribes again gets what is sent afterwards.
    let mut again = bus.subscribe(&node, 1).await.unwrap();
    bus.send(&node, vec![status("m2", 2)]).await.unwrap();
    assert_eq!(again.recv().await.unwrap(), vec![status("m2", 2)]);
}

#[tokio::test]
async fn bus_senders_wait_while_a_node_is_full() {
    let bus = Arc::new(EmbeddedDeliveryBus::new());
    let node = "node-a".to_owned();
    let mut receiver = bus.subscribe(&node, 1).await.unwrap();
    bus.send(&node, vec![status("m1", 1)]).await.unwrap();
    let sending = tokio::spawn({
        let (bus, node) = (bus.clone(), node.clone());
        async move { bus.send(&node, vec![status("m2", 2)]).await }
    });
    tokio::task::yield_now().await;
    assert!(!sending.is_finished(), "the second batch waits for room");
    assert_eq!(receiver.recv().await.unwrap(), vec![status("m1", 1)]);
    sending.await.unwrap().unwrap();
    assert_eq!(receiver.recv().await.unwrap(), vec![status("m2", 2)]);
}
