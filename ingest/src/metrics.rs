//! `GET /metrics`: a few Prometheus series of this stage, labels from bounded sets only
//! (route templates, status codes, message kinds; never user or conversation ids).
//!
//! - `esh_ingest_requests_total{route,code}`
//! - `esh_ingest_request_duration_seconds{route}` (histogram)
//! - `esh_ingest_messages_accepted_total{kind}` (kind: one_way, chat, broadcast)

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::Ingest;

/// Upper bounds of the latency histogram buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
struct Histogram {
    /// Observations at or below each bucket bound.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Series {
    requests: BTreeMap<(String, u16), u64>,
    durations: BTreeMap<String, Histogram>,
    accepted: BTreeMap<&'static str, u64>,
}

/// The stage's counters; one short lock per request.
#[derive(Default)]
pub(crate) struct Metrics {
    series: Mutex<Series>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Counts an accepted send of this kind.
    pub(crate) fn accepted(&self, kind: &'static str) {
        *self.lock().accepted.entry(kind).or_default() += 1;
    }

    fn observe(&self, route: &str, code: u16, seconds: f64) {
        let mut series = self.lock();
        *series.requests.entry((route.to_owned(), code)).or_default() += 1;
        let histogram = series.durations.entry(route.to_owned()).or_default();
        histogram.count += 1;
        histogram.sum += seconds;
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// The Prometheus text exposition of every series.
    fn text(&self) -> String {
        let series = self.lock();
        let mut out = String::new();
        out.push_str("# HELP esh_ingest_requests_total HTTP requests answered, by route template and status code.\n");
        out.push_str("# TYPE esh_ingest_requests_total counter\n");
        for ((route, code), count) in &series.requests {
            let _ = writeln!(out, "esh_ingest_requests_total{{route=\"{route}\",code=\"{code}\"}} {count}");
        }
        out.push_str("# HELP esh_ingest_request_duration_seconds Time to answer an HTTP request.\n");
        out.push_str("# TYPE esh_ingest_request_duration_seconds histogram\n");
        for (route, histogram) in &series.durations {
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                let _ = writeln!(
                    out,
                    "esh_ingest_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "esh_ingest_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(out, "esh_ingest_request_duration_seconds_sum{{route=\"{route}\"}} {}", histogram.sum);
            let _ = writeln!(out, "esh_ingest_request_duration_seconds_count{{route=\"{route}\"}} {}", histogram.count);
        }
        out.push_str("# HELP esh_ingest_messages_accepted_total Sends answered 202 (repeats not counted).\n");
        out.push_str("# TYPE esh_ingest_messages_accepted_total counter\n");
        for (kind, count) in &series.accepted {
            let _ = writeln!(out, "esh_ingest_messages_accepted_total{{kind=\"{kind}\"}} {count}");
        }
        out
    }
}

/// Middleware: counts and times every request by its route template.
pub(crate) async fn track(State(ingest): State<Arc<Ingest>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    ingest.metrics.observe(&route, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn render(State(ingest): State<Arc<Ingest>>) -> Response {
    let mut response = (StatusCode::OK, ingest.metrics.text()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
