//! ingest: the HTTP API of Esh3ar (API.md) and the front door of the message pipeline.
//!
//! It authenticates (admin token, or a user token: HS256 of the platform or RS256/ES256 of
//! an integrator's identity provider; the user read from the directory,
//! cached for under 1 s: `directory`), validates, authorizes, rate-limits and deduplicates
//! sends, then commits each accepted send with one durable append to the log
//! (`esh.messages.*`) before it answers `202`. Reads (messages, history, conversations,
//! broadcasts, dead letters) come from the store, a projection of the log, after waiting
//! for it to pass what the log held when the read began (`Backends::caught_up`:
//! read-your-writes); the first page of a conversation comes from the recent-message cache.
//!
//! Where things are:
//! - `send`: the one send path of one-way messages, chat (HTTP and the WebSocket `send`
//!   frame through [`ChatIngress`]) and broadcasts: idempotency, rate limits, backlog.
//! - `media`: uploads, media objects, signed downloads, the collection of unreferenced uploads.
//! - `users`, `messages`, `conversations`, `broadcasts`, `admin`, `devices` (devices and
//!   preferences): the other endpoints.
//! - `auth` (the `Caller` extractor), `body` (the JSON body extractor), `cursor` (page
//!   limits and opaque cursors), `views` (answer shapes): shared by every handler.
//! - `log_ingest`: Kafka-native sends, the consumer of `esh.ingest.v1` (group `ingest`),
//!   through the same send path.
//! - `health`, `metrics`, `openapi`: operations endpoints; `schemas`: the schema-registry
//!   endpoints of the wire format (`/v1/schemas/...`).
//!
//! Choices where API.md leaves room:
//! - A JSON body needs `Content-Type: application/json` (or `…+json`); anything else is
//!   `415 unsupported_media_type`. Bodies that may be empty (`POST /v1/users/{id}/tokens`)
//!   need no content type when empty.
//! - `GET /v1/one-way-messages` and `GET /v1/conversations` are for business and mobile
//!   users: an admin gets `403`.
//! - The backlog (records of `esh.messages.*` not yet committed by the router) refuses low
//!   and normal priority above `backlog_limit`, high priority only above twice that.

mod admin;
mod auth;
mod body;
mod broadcasts;
mod conversations;
mod cursor;
mod devices;
mod directory;
mod health;
mod http_error;
pub mod log_ingest;
mod media;
mod messages;
mod metrics;
mod openapi;
mod schemas;
mod send;
mod users;
mod views;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use esh_backends::media_links::{MediaLinkConfig, MediaLinks};
use esh_backends::resolver::Backends;
use esh_backends::status_writer::StatusWriter;
use esh_common::auth::TokenKeys;
use esh_common::health::ReadinessProbe;
use esh_common::ingress::{ChatIngress, ChatRequest};
use esh_common::{ApiError, Message};

/// Limits of the HTTP API; every field has the default of API.md.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Sends per sender per 60 s window (`ESH_RATE_LIMIT_PER_MINUTE`, default 100).
    pub rate_limit_per_minute: u64,
    /// Broadcast recipients per business per 3600 s window (`ESH_BROADCAST_RECIPIENTS_PER_HOUR`, default 1,000,000).
    pub broadcast_recipients_per_hour: u64,
    /// Unprocessed records of the message topics above which sends are refused (default 10,000).
    pub backlog_limit: u64,
    /// Largest JSON body of every endpoint but broadcasts (default 64 KiB).
    pub max_body_bytes: usize,
    /// Largest JSON body of `POST /v1/broadcasts` (default 8 MiB).
    pub max_broadcast_body_bytes: usize,
    /// Devices a mobile user may register (`ESH_MAX_DEVICES_PER_USER`, default 10).
    pub max_devices_per_user: usize,
    /// How media URLs are signed and what they start with.
    pub media_links: MediaLinkConfig,
    /// How long an upload may wait for a message to reference it before it is removed
    /// (`ESH_MEDIA_UNREFERENCED_TTL`, default 24 h).
    pub media_unreferenced_ttl: Duration,
    /// Images thumbnailed at once, on the blocking pool (default: the CPU count).
    pub thumbnail_workers: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            rate_limit_per_minute: 100,
            broadcast_recipients_per_hour: 1_000_000,
            backlog_limit: 10_000,
            max_body_bytes: 64 * 1024,
            max_broadcast_body_bytes: 8 * 1024 * 1024,
            max_devices_per_user: 10,
            media_links: MediaLinkConfig::default(),
            media_unreferenced_ttl: Duration::from_secs(24 * 3600),
            thumbnail_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// The HTTP API with everything it stands on; shared by every request.
pub struct Ingest {
    backends: Backends,
    keys: TokenKeys,
    admin_token: String,
    status_writer: StatusWriter,
    config: IngestConfig,
    metrics: metrics::Metrics,
    /// Users as the request path sees them (cached, under 1 s stale).
    directory: directory::Directory,
    /// Tokens already verified.
    verified: auth::VerifiedTokens,
    activity: conversations::ActivityClock,
    /// The backlog of the message topics, read once for concurrent sends.
    backlog: send::limits::Backlog,
    /// The push providers' readiness, once the platform has configured them (`/health/ready`).
    push: std::sync::OnceLock<Arc<dyn ReadinessProbe>>,
    /// Media objects with signed URLs.
    media_links: MediaLinks,
    /// The bounded pool that makes thumbnails.
    thumbnailer: media::Thumbnailer,
    /// This instance, for work that must outlive the request that started it.
    me: std::sync::Weak<Ingest>,
}

impl Ingest {
    /// An API over these backends; `admin_token` is the value of `ESH_ADMIN_TOKEN`.
    pub fn new(
        backends: Backends,
        keys: TokenKeys,
        admin_token: String,
        status_writer: StatusWriter,
        config: IngestConfig,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Ingest {
            media_links: MediaLinks::new(backends.media.clone(), backends.blobs.clone(), &config.media_links),
            thumbnailer: media::Thumbnailer::new(config.thumbnail_workers),
            directory: directory::Directory::new(backends.store.clone()),
            verified: auth::VerifiedTokens::default(),
            backends,
            keys,
            admin_token,
            status_writer,
            config,
            metrics: metrics::Metrics::default(),
            activity: conversations::ActivityClock::default(),
            backlog: send::limits::Backlog::default(),
            push: std::sync::OnceLock::new(),
            me: me.clone(),
        })
    }

    /// Reports the push providers' readiness as the `push` check of `/health/ready`;
    /// without it the check says push is off. Only the first call counts.
    pub fn set_push_check(&self, probe: Arc<dyn ReadinessProbe>) {
        let _ = self.push.set(probe);
    }

    /// Every HTTP route of API.md this crate serves, plus /health/*, /metrics,
    /// /v1/openapi.json, the schema registry under /v1/schemas and JSON 404/405 fallbacks.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/users", post(users::create))
            .route("/v1/users/{id}", get(users::get).patch(users::update))
            .route("/v1/users/{id}/tokens", post(users::issue_token))
            .route("/v1/messages", post(send::post_one_way))
            .route("/v1/messages/batch", post(send::post_batch))
            .route("/v1/broadcasts", post(send::post_broadcast))
            .route("/v1/chat/messages", post(send::post_chat))
            .route("/v1/broadcasts/{id}", get(broadcasts::get))
            .route("/v1/broadcasts/{id}/messages", get(broadcasts::messages))
            .route("/v1/messages/{id}", get(messages::get))
            .route("/v1/messages/{id}/delivered", post(messages::delivered))
            .route("/v1/messages/{id}/read", post(messages::read))
            .route("/v1/messages/{id}/attempts", get(messages::attempts))
            .route("/v1/one-way-messages", get(messages::one_way_history))
            .route("/v1/conversations", get(conversations::list))
            .route("/v1/conversations/{id}/messages", get(conversations::messages))
            .route("/v1/devices", post(devices::register).get(devices::list))
            .route("/v1/devices/{token}", delete(devices::remove))
            .route("/v1/me/preferences", get(devices::preferences).put(devices::set_preferences))
            .route("/v1/media", post(media::upload).layer(DefaultBodyLimit::max(media::MAX_REQUEST_BYTES as usize)))
            .route("/v1/media/{id}", get(media::get))
            .route("/v1/media/{id}/content/{variant}", get(media::content))
            .route("/v1/admin/dead-letters", get(admin::dead_letters))
            .route("/v1/admin/dead-letters/{message_id}/retry", post(admin::retry))
            .route("/health/live", get(health::live))
            .route("/health/ready", get(health::ready))
            .route("/metrics", get(metrics::render))
            .route("/v1/openapi.json", get(openapi::document))
            .route("/v1/schemas/ids/{id}", get(schemas::by_id))
            .route("/v1/schemas/subjects", get(schemas::subjects))
            .route(
                "/v1/schemas/subjects/{subject}/versions",
                get(schemas::versions),
            )
            .route(
                "/v1/schemas/subjects/{subject}/versions/{version}",
                get(schemas::version),
            )
            .fallback(views::not_found)
            .layer(axum::middleware::from_fn(views::json_errors))
            .layer(axum::middleware::from_fn(metrics::track))
            .with_state(self.clone())
    }
}

#[async_trait]
impl ChatIngress for Ingest {
    async fn send_chat(&self, sender_id: &str, request: ChatRequest) -> Result<Message, ApiError> {
        send::send_chat(self, sender_id, request).await
    }
}
