//! Metrics of every stage, through the `metrics` crate into one process-wide Prometheus
//! recorder (`metrics-exporter-prometheus`); `GET /metrics` renders [`prometheus`].
//!
//! Recording is lock-free on the hot path (atomic counters behind a sharded registry), so
//! a request never waits on another request to count itself. Names follow
//! `esh_<stage>_<what>_<unit>` and every label comes from a bounded set (route templates,
//! status codes, message kinds, priorities): never user, conversation or message ids.
//!
//! | name | type | labels | set by |
//! |---|---|---|---|
//! | `esh_ingest_requests_total` | counter | `route`, `code` | `ingest/src/metrics.rs` (middleware) |
//! | `esh_ingest_request_duration_seconds` | histogram | `route` | `ingest/src/metrics.rs` (middleware) |
//! | `esh_ingest_messages_accepted_total` | counter | `kind` (`one_way`, `chat`, `broadcast`) | ingest's send path |
//! | `esh_ingest_media_uploaded_total` | counter | `kind` (`image`, `video`, `audio`, `application`) | [`media_uploaded`] |
//! | `esh_ingest_media_collected_total` | counter | none | [`media_collected`] |
//! | `esh_router_lag_records` | gauge | `priority` (`high`, `normal`, `low`) | [`set_router_lag`] |
//! | `esh_store_projection_lag_records` | gauge | none | [`set_projection_lag`] |
//! | `esh_log_consumer_lag_records` | gauge | `group`, `topic` (`topics::CONSUMER_GROUPS`) | [`set_consumer_lag`] |
//! | `esh_deliverer_open_sockets` | gauge | none | [`socket_opened`], [`socket_closed`] |
//! | `esh_deliverer_dead_letters_total` | counter | none | [`dead_lettered`] |

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::Priority;

/// HTTP requests answered, by route template and status code.
pub const INGEST_REQUESTS: &str = "esh_ingest_requests_total";
/// Time to answer an HTTP request, by route template.
pub const INGEST_REQUEST_DURATION: &str = "esh_ingest_request_duration_seconds";
/// Sends answered 202 (repeats not counted), by kind.
pub const INGEST_MESSAGES_ACCEPTED: &str = "esh_ingest_messages_accepted_total";
/// Media uploads stored, by the top level of their content type.
pub const INGEST_MEDIA_UPLOADED: &str = "esh_ingest_media_uploaded_total";
/// Unreferenced uploads removed by the collector.
pub const INGEST_MEDIA_COLLECTED: &str = "esh_ingest_media_collected_total";
/// Records of `esh.messages.{priority}` not yet committed by the `router` group.
pub const ROUTER_LAG: &str = "esh_router_lag_records";
/// Records of the log not yet projected into the store.
pub const STORE_PROJECTION_LAG: &str = "esh_store_projection_lag_records";
/// Records of a topic appended but not committed by a consumer group, by group and topic.
pub const LOG_CONSUMER_LAG: &str = "esh_log_consumer_lag_records";
/// WebSocket connections open on this node.
pub const DELIVERER_OPEN_SOCKETS: &str = "esh_deliverer_open_sockets";
/// Messages dead-lettered (status `failed`) after their last unacknowledged attempt.
pub const DELIVERER_DEAD_LETTERS: &str = "esh_deliverer_dead_letters_total";

/// Upper bounds of the request latency histogram buckets, seconds.
pub const REQUEST_DURATION_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus registry; the first call installs it as the global recorder
/// of the `metrics` macros and describes every metric above.
///
/// If the embedding program installed another global recorder first, the handle renders
/// only what is recorded through it (nothing of this crate's macros).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Only an empty bucket list is refused, and this one is not empty.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(INGEST_REQUEST_DURATION.to_owned()), &REQUEST_DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        // Histogram samples wait in lock-free buckets until drained into their
        // distributions; a scrape drains them too, this bounds their memory when nobody scrapes.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("esh-metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        });
        debug_assert!(spawned.is_ok(), "cannot start the metrics upkeep thread");
        handle
    })
}

/// `# HELP` lines of every metric, and the series that exist before their first event.
fn describe() {
    metrics::describe_counter!(INGEST_REQUESTS, "HTTP requests answered, by route template and status code.");
    metrics::describe_histogram!(
        INGEST_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route template."
    );
    metrics::describe_counter!(INGEST_MESSAGES_ACCEPTED, "Sends answered 202 (repeats not counted), by kind.");
    metrics::describe_gauge!(ROUTER_LAG, "Records of esh.messages.{priority} not yet committed by the router group.");
    metrics::describe_gauge!(STORE_PROJECTION_LAG, "Records of the log not yet projected into the store.");
    metrics::describe_gauge!(LOG_CONSUMER_LAG, "Records of a topic appended but not committed by a consumer group.");
    metrics::describe_gauge!(DELIVERER_OPEN_SOCKETS, "WebSocket connections open on this node.");
    metrics::describe_counter!(DELIVERER_DEAD_LETTERS, "Messages dead-lettered after their last unacknowledged attempt.");
    // Registered at zero so that a scrape shows them before their first event.
    metrics::gauge!(STORE_PROJECTION_LAG).increment(0.0);
    metrics::gauge!(DELIVERER_OPEN_SOCKETS).increment(0.0);
    metrics::counter!(DELIVERER_DEAD_LETTERS).increment(0);
}

/// The label value of a priority.
fn priority_label(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// Sets the router's backlog on the message topic of `priority`.
pub fn set_router_lag(priority: Priority, records: u64) {
    metrics::gauge!(ROUTER_LAG, "priority" => priority_label(priority)).set(records as f64);
}

/// Sets how many records of the log the store projection has not applied yet; the
/// projection calls it after each batch it applies (and may call it as often as it likes:
/// it is one atomic store).
pub fn set_projection_lag(records: u64) {
    metrics::gauge!(STORE_PROJECTION_LAG).set(records as f64);
}

/// Sets the lag of consumer group `group` on `topic` (both from `topics::CONSUMER_GROUPS`).
pub fn set_consumer_lag(group: &'static str, topic: &'static str, records: u64) {
    metrics::gauge!(LOG_CONSUMER_LAG, "group" => group, "topic" => topic).set(records as f64);
}

/// One more WebSocket connection on this node.
pub fn socket_opened() {
    metrics::gauge!(DELIVERER_OPEN_SOCKETS).increment(1.0);
}

/// One WebSocket connection fewer on this node.
pub fn socket_closed() {
    metrics::gauge!(DELIVERER_OPEN_SOCKETS).decrement(1.0);
}

/// One message dead-lettered.
pub fn dead_lettered() {
    metrics::counter!(DELIVERER_DEAD_LETTERS).increment(1);
}

/// Counts an accepted send of this kind (`one_way`, `chat`, `broadcast`).
pub fn message_accepted(kind: &'static str) {
    metrics::counter!(INGEST_MESSAGES_ACCEPTED, "kind" => kind).increment(1);
}

/// Counts a stored upload; `kind` is `image`, `video`, `audio` or `application`.
pub fn media_uploaded(kind: &'static str) {
    metrics::counter!(INGEST_MEDIA_UPLOADED, "kind" => kind).increment(1);
}

/// Counts uploads removed because no message referenced them in time.
pub fn media_collected(count: u64) {
    metrics::counter!(INGEST_MEDIA_COLLECTED).increment(count);
}

/// Counts and times one answered HTTP request.
pub fn request_answered(route: &str, code: u16, seconds: f64) {
    let route = route.to_owned();
    metrics::counter!(INGEST_REQUESTS, "route" => route.clone(), "code" => code.to_string()).increment(1);
    metrics::histogram!(INGEST_REQUEST_DURATION, "route" => route).record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_rendered_under_its_name() {
        let handle = prometheus();
        set_router_lag(Priority::High, 7);
        set_projection_lag(3);
        set_consumer_lag("router", "esh.messages.high", 7);
        socket_opened();
        socket_opened();
        socket_closed();
        dead_lettered();
        request_answered("/v1/users/{id}", 404, 0.002);
        let text = handle.render();
        assert!(text.contains(r#"esh_router_lag_records{priority="high"} 7"#), "{text}");
        assert!(text.contains("esh_store_projection_lag_records 3"), "{text}");
        assert!(text.contains(r#"esh_log_consumer_lag_records{group="router",topic="esh.messages.high"} 7"#), "{text}");
        assert!(text.contains("esh_deliverer_open_sockets 1"), "{text}");
        assert!(text.contains("esh_deliverer_dead_letters_total 1"), "{text}");
        assert!(text.contains(r#"esh_ingest_requests_total{route="/v1/users/{id}",code="404"} 1"#), "{text}");
        assert!(
            text.contains(r#"esh_ingest_request_duration_seconds_bucket{route="/v1/users/{id}",le="0.0025"} 1"#),
            "{text}"
        );
        assert!(text.contains("# TYPE esh_ingest_request_duration_seconds histogram"), "{text}");
    }
}
