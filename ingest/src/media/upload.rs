//! `POST /v1/media`: one multipart part `file`, streamed. The declared type is judged
//! first (415), then the first bytes against it (415), then the size while the bytes come
//! in (413 as soon as the limit is passed). Images (at most 10 MiB) are gathered to be
//! decoded for their thumbnails; every other file streams straight into the blob store,
//! so a 50 MiB video never sits whole in memory. Nothing is recorded unless every blob
//! was stored; a refused upload leaves no blob behind.

use std::sync::{Arc, Mutex};

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use esh_backends::{BackendError, ByteStream};
use esh_common::{ids, ApiError, ErrorCode, Media, MediaVariant, Millis, Thumbnail};
use futures::{stream, StreamExt};
use serde_json::json;

use super::validate::{self, MediaKind, SNIFF_BYTES};
use crate::auth::Caller;
use crate::views::{self, ErrorBody};
use crate::Ingest;
use crate::http_error::HttpError;

/// Room for the multipart framing around the largest file.
pub(crate) const MAX_REQUEST_BYTES: u64 = MediaKind::LARGEST + 64 * 1024;

fn too_large(limit: u64) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("the file exceeds {limit} bytes"))
        .with_details(json!({ "limit_bytes": limit }))
}

fn multipart_error(error: MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(MediaKind::LARGEST);
    }
    ApiError::invalid(format!("malformed multipart body: {}", error.body_text()))
}

/// Another content type is `415`; no body, or multipart without a boundary, is a malformed body, `400`.
fn rejection(declared_multipart: bool, rejection: MultipartRejection) -> ApiError {
    if declared_multipart {
        return ApiError::invalid(format!("malformed multipart body: {}", rejection.body_text()));
    }
    ApiError::new(ErrorCode::UnsupportedMediaType, format!("expected multipart/form-data: {}", rejection.body_text()))
}

fn missing_file() -> ApiError {
    ApiError::invalid("expected exactly one part named file").with_details(json!({ "field": "file" }))
}

#[utoipa::path(post, path = "/v1/media", tag = "media",
    request_body(content_type = "multipart/form-data", description = "one part `file` with its filename and \
        content type: image/* (10 MiB), video/* (50 MiB), audio/* (10 MiB), application/pdf or application/msword \
        (5 MiB); the declared type must match the bytes"),
    responses((status = 201, description = "stored; images with their thumbnails", body = esh_common::view::MediaView),
        (status = 400, description = "a multipart body without a boundary, no part file, two of them, an empty file, an image that cannot be decoded", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "the admin token uploads nothing", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, description = "not multipart, a type not allowed, or bytes of another type", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn upload(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    request: Request,
) -> Result<Response, HttpError> {
    let owner = caller.user().ok_or_else(|| ApiError::forbidden("the admin token cannot upload media"))?.id.clone();
    let base = ingest.media_links.base(super::request_host(request.headers()));
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > MAX_REQUEST_BYTES) {
        return Err(HttpError(too_large(MediaKind::LARGEST)));
    }
    // No body at all (no content type) has no `file` part: malformed, like a boundary-less one.
    let declared_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default())
        .is_none_or(|value| value.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    let mut multipart =
        Multipart::from_request(request, &ingest).await.map_err(|refused| rejection(declared_multipart, refused))?;
    let mut stored: Option<Media> = None;
    let outcome = async {
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            if field.name() != Some("file") {
                continue;
            }
            if stored.is_some() {
                return Err(missing_file());
            }
            stored = Some(ingest.store_upload(&owner, field).await?);
        }
        Ok(())
    }
    .await;
    let recorded = match (outcome, &stored) {
        (Ok(()), Some(media)) => ingest.backends.media.add_media(media).await.map_err(ApiError::from),
        (Ok(()), None) => Err(missing_file()),
        (Err(error), _) => Err(error),
    };
    if let Err(error) = recorded {
        if let Some(media) = &stored {
            ingest.delete_blobs(media).await;
        }
        return Err(HttpError(error));
    }
    let media = stored.expect("recorded only with a stored upload");
    ingest.metrics.media_uploaded(media.content_type.split('/').next().unwrap_or("other"));
    let view = ingest.media_links.view(&media, &base).await?;
    Ok(views::json(StatusCode::CREATED, &view))
}

impl Ingest {
    /// Streams one `file` part into the blob store (thumbnails too, for images).
    async fn store_upload(&self, owner: &str, mut field: Field<'_>) -> Result<Media, ApiError> {
        let filename = validate::filename(field.file_name());
        let declared = validate::canonical(field.content_type().unwrap_or_default());
        let kind = validate::kind_of(&declared)?;
        let limit = kind.limit();
        let mut head = BytesMut::new();
        let mut ended = true;
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            head.extend_from_slice(&chunk);
            if head.len() as u64 > limit {
                return Err(too_large(limit));
            }
            if head.len() >= SNIFF_BYTES {
                ended = false;
                break;
            }
        }
        if head.is_empty() {
            return Err(ApiError::invalid("the file is empty").with_details(json!({ "field": "file" })));
        }
        validate::check_bytes(&declared, &head)?;
        let id = ids::new_id();
        let mut media = Media {
            id: id.clone(),
            owner_id: owner.to_owned(),
            filename,
            content_type: declared.clone(),
            size: 0,
            created_at: Millis::now(),
            thumbnails: Vec::new(),
        };
        let original = Media::blob_key(&id, MediaVariant::Original);
        if kind == MediaKind::Image {
            let mut whole = head;
            if !ended {
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if (whole.len() + chunk.len()) as u64 > limit {
                        return Err(too_large(limit));
                    }
                    whole.extend_from_slice(&chunk);
                }
            }
            let whole = whole.freeze();
            let made = self.thumbnailer.make(whole.clone()).await?;
            let stored = async {
                media.size = self.backends.blobs.put(&original, &declared, single(whole)).await?;
                for thumbnail in made {
                    let key = Media::blob_key(&id, thumbnail.variant);
                    let size = self.backends.blobs.put(&key, thumbnail.content_type, single(thumbnail.bytes)).await?;
                    media.thumbnails.push(Thumbnail {
                        variant: thumbnail.variant,
                        width: thumbnail.width,
                        height: thumbnail.height,
                        content_type: thumbnail.content_type.to_owned(),
                        size,
                    });
                }
                Ok::<(), BackendError>(())
            }
            .await;
            if let Err(error) = stored {
                self.delete_blobs(&media).await;
                return Err(error.into());
            }
            return Ok(media);
        }
        // The limit is enforced by the stream the store reads: passing it fails the put,
        // which leaves nothing behind, and the refusal is answered at once.
        let refusal: Mutex<Option<ApiError>> = Mutex::new(None);
        let mut size = head.len() as u64;
        let rest = if ended { stream::empty().boxed() } else { field.boxed() };
        let body: ByteStream<'_> = stream::once(async { Ok(head.freeze()) })
            .chain(rest.map(|chunk: Result<Bytes, MultipartError>| {
                let refuse = |error: ApiError| {
                    let message = error.message.clone();
                    *refusal.lock().expect("refusal lock") = Some(error);
                    Err(BackendError::Invalid(message))
                };
                match chunk {
                    Err(error) => refuse(multipart_error(error)),
                    Ok(chunk) => {
                        size += chunk.len() as u64;
                        if size > limit {
                            refuse(too_large(limit))
                        } else {
                            Ok(chunk)
                        }
                    }
                }
            }))
            .boxed();
        match self.backends.blobs.put(&original, &declared, body).await {
            Ok(stored) => {
                media.size = stored;
                Ok(media)
            }
            Err(error) => Err(refusal.lock().expect("refusal lock").take().unwrap_or_else(|| error.into())),
        }
    }

    /// Deletes every blob of `media` (best effort: a blob left behind is only space).
    pub(crate) async fn delete_blobs(&self, media: &Media) {
        let variants = std::iter::once(MediaVariant::Original).chain(media.thumbnails.iter().map(|t| t.variant));
        for variant in variants {
            if let Err(error) = self.backends.blobs.delete(&Media::blob_key(&media.id, variant)).await {
                tracing::warn!(%error, media = %media.id, "cannot delete a media blob");
            }
        }
    }
}

/// One chunk as a body.
fn single(bytes: Bytes) -> ByteStream<'static> {
    stream::once(async move { Ok(bytes) }).boxed()
}
