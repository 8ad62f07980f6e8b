//! `GET /health/live` and `GET /health/ready`.
//!
//! Readiness checks the store, the log, the cache and the blob store at once, each bounded
//! by `CHECK_TIMEOUT`. The store and the log carry every send, so either failing is `down`
//! (503, take this instance out of rotation); the cache only speeds reads up and reads
//! fall back to the store without it (Req 8.7), and without blobs only uploads and
//! downloads fail while messages flow, so either failing is `degraded` (200). The
//! `push` check asks the configured providers for credentials: failing is `degraded`
//! (offline users still get their messages on connect); without credentials it says push is
//! off (`ok: false`, no effect on `status`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use esh_backends::BackendError;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::views;
use crate::Ingest;

/// Longest a single dependency check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The `push` check's error while no provider is configured.
const PUSH_OFF: &str = "push notifications are off: no provider credentials configured";

/// One dependency's check.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Check {
    ok: bool,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The body of `GET /health/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ok`, `degraded` (a dependency with a fallback fails) or `down`.
    status: &'static str,
    checks: BTreeMap<&'static str, Check>,
}

/// The body of `GET /health/live`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Liveness {
    status: &'static str,
}

#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "the process runs", body = Liveness)))]
pub(crate) async fn live() -> Response {
    views::json(StatusCode::OK, &Liveness { status: "ok" })
}

async fn check(probe: impl Future<Output = Result<(), BackendError>>) -> Check {
    let start = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe).await;
    let latency_ms = start.elapsed().as_millis() as u64;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    };
    Check { ok: error.is_none(), latency_ms, error }
}

#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, description = "ok or degraded", body = Readiness),
        (status = 503, description = "down: the store or the log fails", body = Readiness)))]
pub(crate) async fn ready(State(ingest): State<Arc<Ingest>>) -> Response {
    let backends = &ingest.backends;
    let push_probe = ingest.push.get();
    let push_check = async {
        match push_probe {
            Some(probe) => check(async { probe.check().await.map_err(BackendError::Unavailable) }).await,
            None => Check { ok: false, latency_ms: 0, error: Some(PUSH_OFF.into()) },
        }
    };
    let (store, log, cache, blobs, push) = tokio::join!(
        check(backends.store.check()),
        check(backends.log.check()),
        check(backends.presence.check()),
        check(backends.blobs.check()),
        push_check
    );
    let down = !store.ok || !log.ok;
    let status = if down {
        "down"
    } else if !cache.ok || !blobs.ok || (push_probe.is_some() && !push.ok) {
        "degraded"
    } else {
        "ok"
    };
    let checks = BTreeMap::from([("store", store), ("log", log), ("cache", cache), ("blobs", blobs), ("push", push)]);
    let code = if down { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    views::json(code, &Readiness { status, checks })
}
