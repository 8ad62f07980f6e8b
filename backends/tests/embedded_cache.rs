//! The cache conformance suite (`testsuite::cache`) against the in-process presence,
//! recent-message cache, rate limiter and idempotency keys, with paused tokio time and the
//! platform's real TTLs; and the in-process delivery bus.

use esh_backends::bus::EmbeddedDeliveryBus;
use esh_backends::cache::{EmbeddedIdempotencyKeys, EmbeddedPresence, EmbeddedRateLimiter, EmbeddedRecentMessages};
use esh_backends::testsuite::cache::{self as suite, Clock};
use esh_backends::{DeliveryBus, IdempotencyKeys, Presence, RateLimiter, RecentMessages};
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

esh_backends::cache_suite!(paused; presence: presence, recent: recent, rate: limiter, idempotency: idempotency);

/// The suite also holds with real time and short TTLs (how a Redis run will drive it).
#[tokio::test]
async fn req_7_3_presence_expiry_with_real_time() {
    suite::presence_expires_after_ttl_unless_refreshed(presence, &Clock::real(Duration::from_secs(2))).await;
}

#[tokio::test]
async fn req_5_5_rate_window_slides_with_real_time() {
    suite::rate_window_slides(limiter, &Clock::real(Duration::from_secs(2))).await;
}

async fn bus() -> Arc<dyn DeliveryBus> {
    Arc::new(EmbeddedDeliveryBus::new())
}

esh_backends::bus_suite!(bus());
