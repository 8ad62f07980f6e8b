//! Media (API.md "Media"): uploads (`upload`: streamed, validated by `validate`, images
//! thumbnailed by `thumbnails`), `GET /v1/media/{id}`, downloads of the local store's
//! blobs behind signed URLs (`download`), the check of `media_ids` in sends, and the
//! collection of uploads no message references (`collect_unreferenced_media`).
//!
//! Upload-then-attach is a small saga. The upload stores the blobs, then records the
//! media object (unreferenced). A send may attach media its sender uploaded (and that is
//! younger than `unreferenced_ttl - ATTACH_MARGIN`) or media of a message the sender took
//! part in; anything else is 400. The store projection marks media referenced in the same
//! transaction that stores the message. The collector removes records still unreferenced
//! after `unreferenced_ttl`, once the projection has caught up with the log, then their
//! blobs: a send accepted before that has been projected (so its media are referenced),
//! and one checked later refuses such old uploads. A message never refers to a missing blob.

pub(crate) mod download;
mod thumbnails;
pub(crate) mod upload;
mod validate;

pub(crate) use download::content;
pub(crate) use thumbnails::Thumbnailer;
pub(crate) use upload::{upload, MAX_REQUEST_BYTES};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use esh_common::view::MediaView;
use esh_common::{ApiError, Media, Message, Millis, User};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::body::PathId;
use crate::views::{self, ErrorBody};
use crate::Ingest;
use crate::http_error::HttpError;

/// Most media ids in one message.
pub(crate) const MAX_MEDIA_PER_MESSAGE: usize = 10;
/// Uploads this close to collection cannot be attached any more (a send checked before
/// is appended and projected well within it).
const ATTACH_MARGIN: Duration = Duration::from_secs(300);
/// Records removed per round of the collector.
const COLLECT_BATCH: usize = 500;

/// The `Host` of a request, for absolute URLs when no public URL is configured.
pub(crate) fn request_host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|value| value.to_str().ok()).filter(|host| !host.is_empty())
}

#[utoipa::path(get, path = "/v1/media/{id}", tag = "media",
    params(("id" = String, Path, description = "media id")),
    responses((status = 200, description = "the media object with URLs signed for 1 hour", body = MediaView),
        (status = 401, body = ErrorBody),
        (status = 403, description = "neither the uploader nor a participant of a message that references it", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let media = ingest.backends.media.media(std::slice::from_ref(&id)).await?.pop();
    let Some(media) = media else { return Err(HttpError(ApiError::not_found("unknown media"))) };
    let allowed = match caller.user() {
        None => caller.is_admin(),
        Some(user) if user.id == media.owner_id => true,
        Some(user) => {
            // Participants are recorded by the projection: see every message sent before.
            ingest.backends.caught_up().await?;
            ingest.backends.media.is_participant(&id, &user.id).await?
        }
    };
    if !allowed {
        let refusal = ApiError::forbidden("only the uploader and participants of its messages may read this media");
        return Err(HttpError(refusal));
    }
    let view = ingest.media_links.view(&media, &ingest.media_links.base(request_host(&headers))).await?;
    Ok(views::json(StatusCode::OK, &view))
}

impl Ingest {
    /// The media objects of `ids` (in that order) for a send's answer; 400 unless `sender`
    /// may attach every one of them (see the module docs). Sends without media do not come here.
    pub(crate) async fn check_media(&self, sender: &User, ids: &[String]) -> Result<Vec<MediaView>, ApiError> {
        let found = self.backends.media.media(ids).await?;
        let unknown: Vec<&String> = ids.iter().filter(|id| !found.iter().any(|media| &media.id == *id)).collect();
        if !unknown.is_empty() {
            return Err(ApiError::invalid("unknown media ids")
                .with_details(json!({ "field": "media_ids", "unknown_ids": unknown })));
        }
        let fresh_after = Millis::now().plus_ms(-(self.attach_window().as_millis() as i64));
        let mut refused = Vec::new();
        let mut caught_up = false;
        for media in &found {
            if media.owner_id == sender.id && media.created_at > fresh_after {
                continue;
            }
            if !caught_up {
                self.backends.caught_up().await?;
                caught_up = true;
            }
            if !self.backends.media.is_participant(&media.id, &sender.id).await? {
                refused.push(media.id.as_str());
            }
        }
        if !refused.is_empty() {
            return Err(ApiError::invalid("media ids the sender may not use")
                .with_details(json!({ "field": "media_ids", "refused_ids": refused })));
        }
        let base = self.media_links.base(None);
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(media) = found.iter().find(|media| &media.id == id) {
                views.push(self.media_links.view(media, &base).await?);
            }
        }
        Ok(views)
    }

    /// How long after its upload a media object may be attached by its uploader alone.
    fn attach_window(&self) -> Duration {
        let ttl = self.config.media_unreferenced_ttl;
        ttl.saturating_sub(ATTACH_MARGIN.min(ttl / 2))
    }

    /// The media objects of `messages` (one list each), URLs signed for the request's host.
    pub(crate) async fn media_of<'m>(
        &self,
        messages: impl IntoIterator<Item = &'m Message>,
        headers: &HeaderMap,
    ) -> Result<Vec<Vec<MediaView>>, ApiError> {
        let base = self.media_links.base(request_host(headers));
        Ok(self.media_links.resolve(messages, &base).await?)
    }

    /// Removes uploads no message referenced within `media_unreferenced_ttl`, every
    /// quarter of that time (at least every 15 minutes), until `shutdown`.
    pub async fn collect_unreferenced_media(self: Arc<Self>, shutdown: CancellationToken) {
        let ttl = self.config.media_unreferenced_ttl;
        let mut ticks = tokio::time::interval((ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(900)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.collect_once(Millis::now().plus_ms(-(ttl.as_millis() as i64))).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "unreferenced media collected"),
                Err(error) => tracing::warn!(%error, "cannot collect unreferenced media"),
            }
        }
    }

    /// Removes the uploads made before `before` that no message references; returns how many.
    pub(crate) async fn collect_once(&self, before: Millis) -> Result<usize, ApiError> {
        // Every send accepted so far is in the store, its media referenced.
        self.backends.caught_up().await?;
        let mut removed = 0;
        loop {
            let candidates: Vec<Media> = self.backends.media.unreferenced(before, COLLECT_BATCH).await?;
            let ids: Vec<String> = candidates.iter().map(|media| media.id.clone()).collect();
            let gone = self.backends.media.remove_unreferenced(&ids).await?;
            for media in candidates.iter().filter(|media| gone.contains(&media.id)) {
                self.delete_blobs(media).await;
            }
            removed += gone.len();
            self.metrics.media_collected(gone.len() as u64);
            if candidates.len() < COLLECT_BATCH {
                return Ok(removed);
            }
        }
    }
}
