//! What a send may cost: the per-sender send limit and the per-business broadcast quota
//! (sliding windows in the `RateLimiter`, refunded when the request is refused later), and
//! the backlog rule (`503 overloaded`).

use std::time::Duration;

use esh_backends::resolver::Backends;
use esh_backends::{BackendError, RateDecision};
use esh_common::{topics, ApiError, ErrorCode, Priority};

use crate::Ingest;

/// Window of the per-sender send limit.
pub(crate) const SEND_WINDOW: Duration = Duration::from_secs(60);
/// Window of the per-business broadcast recipient quota.
pub(crate) const BROADCAST_WINDOW: Duration = Duration::from_secs(3600);
/// Longest `Retry-After` of a 429.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// `Retry-After` of a 503 for a deep backlog.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Rate-limit permits taken by one request, given back if it is refused.
#[derive(Default)]
pub(crate) struct Permits {
    taken: Vec<(String, u64)>,
}

impl Ingest {
    /// Counts one send of `sender` (a broadcast or a batch counts once).
    pub(crate) async fn count_send(&self, permits: &mut Permits, sender: &str) -> Result<(), ApiError> {
        let limit = self.config.rate_limit_per_minute;
        self.acquire(permits, format!("send:{sender}"), 1, limit, SEND_WINDOW).await
    }

    /// Counts `recipients` against `sender`'s broadcast-recipient quota.
    pub(crate) async fn count_recipients(
        &self,
        permits: &mut Permits,
        sender: &str,
        recipients: u64,
    ) -> Result<(), ApiError> {
        let quota = self.config.broadcast_recipients_per_hour;
        self.acquire(permits, format!("broadcast:{sender}"), recipients, quota, BROADCAST_WINDOW).await
    }

    /// Counts `cost` units against `key`; 429 with `Retry-After` (1..60 s) when over `limit`.
    async fn acquire(
        &self,
        permits: &mut Permits,
        key: String,
        cost: u64,
        limit: u64,
        window: Duration,
    ) -> Result<(), ApiError> {
        match self.backends.rate_limiter.acquire(&key, cost, limit, window).await {
            Ok(RateDecision::Allowed { permit }) => {
                permits.taken.push((key, permit));
                Ok(())
            }
            Ok(RateDecision::Limited { retry_after }) => {
                Err(ApiError::new(ErrorCode::RateLimited, "rate limit exceeded")
                    .with_retry_after(retry_after.clamp(Duration::from_secs(1), MAX_RETRY_AFTER)))
            }
            Err(error) => {
                // Limits protect the pipeline; an unreachable limiter must not stop every send.
                tracing::warn!(%error, "rate limiter unavailable, request not counted");
                Ok(())
            }
        }
    }

    /// Gives back every permit of a refused request.
    pub(crate) async fn refund(&self, permits: Permits) {
        for (key, permit) in permits.taken {
            if let Err(error) = self.backends.rate_limiter.refund(&key, permit).await {
                tracing::warn!(%error, "cannot refund rate-limit permit");
            }
        }
    }

    /// A request refused for a reason checked after the rate limit: 429 if the sender is
    /// over the limit anyway (the order of checks), else `error`; nothing stays counted.
    pub(crate) async fn refuse_after_rate_check(&self, sender_id: &str, error: ApiError) -> ApiError {
        let mut permits = Permits::default();
        let checked = self.count_send(&mut permits, sender_id).await;
        self.refund(permits).await;
        checked.err().unwrap_or(error)
    }

    /// Refuses low and normal priority when the backlog of the message topics is above
    /// `backlog_limit`, and high priority only above twice that, so that high priority
    /// keeps flowing longest. The backlog is the larger of the router's and the store
    /// projection's: either falling behind means messages are waiting.
    pub(crate) async fn check_backlog(&self, priority: Priority) -> Result<(), ApiError> {
        let backlog = self.backlog.read(&self.backends).await?;
        let limit = match priority {
            Priority::High => self.config.backlog_limit.saturating_mul(2),
            Priority::Normal | Priority::Low => self.config.backlog_limit,
        };
        if backlog > limit {
            return Err(ApiError::new(ErrorCode::Overloaded, "too many messages waiting; retry later")
                .with_retry_after(OVERLOADED_RETRY_AFTER));
        }
        Ok(())
    }
}

/// Reads the backlog for every send without a read per send: the lags of a Kafka log are
/// broker round trips, so concurrent sends share one reading. A send that finds a reading
/// in progress waits for it and takes a newer one if that one completed meanwhile, so no
/// send sees a backlog older than the reading in flight when it arrived.
#[derive(Default)]
pub(crate) struct Backlog {
    /// Held while reading.
    reading: tokio::sync::Mutex<()>,
    /// The number of readings completed, and the last one.
    latest: std::sync::Mutex<(u64, u64)>,
}

impl Backlog {
    async fn read(&self, backends: &Backends) -> Result<u64, BackendError> {
        let arrived = self.latest.lock().unwrap_or_else(|poison| poison.into_inner()).0;
        let _reading = self.reading.lock().await;
        // The first reading completed after arrival may have started before it; the second
        // started after it.
        let latest = *self.latest.lock().unwrap_or_else(|poison| poison.into_inner());
        if latest.0 >= arrived + 2 {
            return Ok(latest.1);
        }
        let log = &backends.log;
        let lags = topics::MESSAGES_BY_PRIORITY.iter().flat_map(|topic| {
            [log.lag(topics::ROUTER_GROUP, topic), log.lag(topics::STORE_GROUP, topic)]
        });
        let lags = futures::future::try_join_all(lags).await?;
        // Router and projection alternate in `lags`.
        let routing: u64 = lags.iter().step_by(2).sum();
        let projecting: u64 = lags.iter().skip(1).step_by(2).sum();
        let backlog = routing.max(projecting);
        *self.latest.lock().unwrap_or_else(|poison| poison.into_inner()) = (latest.0 + 1, backlog);
        Ok(backlog)
    }
}
