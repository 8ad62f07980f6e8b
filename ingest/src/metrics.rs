//! `GET /metrics`: the Prometheus text of every stage of this process, recorded through the
//! `metrics` crate (names, labels and who sets what: `common/src/telemetry.rs`).
//!
//! This stage records:
//! - `esh_ingest_requests_total{route,code}`
//! - `esh_ingest_request_duration_seconds{route}` (histogram)
//! - `esh_ingest_messages_accepted_total{kind}` (kind: one_way, chat, broadcast)
//! - `esh_ingest_media_uploaded_total{kind}`, `esh_ingest_media_collected_total`
//! - `esh_router_lag_records{priority}` and `esh_log_consumer_lag_records{group,topic}` of
//!   every consumer group, refreshed by [`render`] from `MessageLog::lag`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use esh_common::{telemetry, topics, Priority};
use tokio::time::Instant;

use crate::Ingest;

/// Longest the lag refresh of a scrape may wait for the log; past it the scrape answers
/// with the previous values.
const LAG_REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// The stage's handle on the process's recorder; recording takes no lock of its own.
pub(crate) struct Metrics {
    handle: &'static metrics_exporter_prometheus::PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { handle: telemetry::prometheus() }
    }
}

impl Metrics {
    /// Counts an accepted send of this kind.
    pub(crate) fn accepted(&self, kind: &'static str) {
        telemetry::message_accepted(kind);
    }

    /// Counts a stored upload by the top level of its content type.
    pub(crate) fn media_uploaded(&self, top_level: &str) {
        let kind = match top_level {
            "image" => "image",
            "video" => "video",
            "audio" => "audio",
            _ => "application",
        };
        telemetry::media_uploaded(kind);
    }

    /// Counts collected uploads.
    pub(crate) fn media_collected(&self, count: u64) {
        if count > 0 {
            telemetry::media_collected(count);
        }
    }
}

/// Middleware: counts and times every request by its route template.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    telemetry::request_answered(&route, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

impl Ingest {
    /// Sets `esh_log_consumer_lag_records` of every consumer group and topic, and
    /// `esh_router_lag_records` of each priority, from the log.
    ///
    /// Refreshed on each scrape rather than by a periodic task: the value is as fresh as
    /// the scrape that reads it, nothing runs while nobody scrapes, and there is no task to
    /// stop in the shutdown order of `server/src/platform.rs`. The router group's lag is
    /// what the backlog check of the send path reads too (`ingest/src/send/limits.rs`).
    async fn refresh_lag(&self) {
        let log = &self.backends.log;
        for (group, topics) in topics::CONSUMER_GROUPS {
            for topic in topics {
                match tokio::time::timeout(LAG_REFRESH_TIMEOUT, log.lag(group, topic)).await {
                    Ok(Ok(records)) => {
                        telemetry::set_consumer_lag(group, topic, records);
                        if group == topics::ROUTER_GROUP {
                            if let Some(priority) = [Priority::High, Priority::Normal, Priority::Low]
                                .into_iter()
                                .find(|p| topics::messages_topic(*p) == *topic)
                            {
                                telemetry::set_router_lag(priority, records);
                            }
                        }
                    }
                    Ok(Err(error)) => tracing::warn!(%error, group, topic, "cannot read a consumer lag"),
                    Err(_) => tracing::warn!(group, topic, "a consumer lag took too long to read"),
                }
            }
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn render(State(ingest): State<Arc<Ingest>>) -> Response {
    ingest.refresh_lag().await;
    let mut response = (StatusCode::OK, ingest.metrics.handle.render()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
