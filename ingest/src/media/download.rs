//! `GET /v1/media/{id}/content/{variant}?expires&signature`: the blobs of the local store,
//! served by `esh` to whoever holds a URL it signed (no bearer token: the signature is the
//! permission; expired or altered is 403). Content never changes under an id, so the
//! answer suits a CDN edge: `ETag` (with `If-None-Match` → 304), single `Range` requests
//! (206, or 416 outside the file), and `Cache-Control: public, max-age=<seconds the
//! signature has left>, immutable`: each signed URL is its own cache entry, kept no longer
//! than it is valid.

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use esh_backends::media_links::SignatureError;
use esh_common::{ApiError, Media, MediaVariant, Millis};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::views::ErrorBody;
use crate::Ingest;
use crate::http_error::HttpError;

/// The query of a signed URL.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct Signed {
    /// Unix seconds after which the URL is refused.
    expires: Option<String>,
    /// HMAC-SHA256 of the media id, variant and expiry (base64url).
    signature: Option<String>,
}

#[utoipa::path(get, path = "/v1/media/{id}/content/{variant}", tag = "media",
    params(("id" = String, Path, description = "media id"),
        ("variant" = String, Path, description = "original, small, medium or large"), Signed,
        ("range" = Option<String>, Header, description = "one range, `bytes=a-b`, `bytes=a-` or `bytes=-n`"),
        ("if-none-match" = Option<String>, Header, description = "an ETag of this content")),
    responses((status = 200, description = "the bytes; ETag, Accept-Ranges, Cache-Control"),
        (status = 206, description = "the range asked, with Content-Range"),
        (status = 304, description = "the ETag matches"),
        (status = 403, description = "expired, altered or missing signature", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, description = "the range lies outside the file", body = ErrorBody)))]
pub(crate) async fn content(
    State(ingest): State<Arc<Ingest>>,
    Path((id, variant)): Path<(String, String)>,
    Query(signed): Query<Signed>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let Some(variant) = MediaVariant::parse(&variant) else {
        return Err(HttpError(ApiError::not_found("unknown media variant")));
    };
    let expires_s = signed.expires.as_deref().and_then(|value| value.parse::<i64>().ok());
    let (Some(expires_s), Some(signature)) = (expires_s, signed.signature.as_deref()) else {
        return Err(HttpError(ApiError::forbidden("a signed url needs expires and signature")));
    };
    let now = Millis::now();
    ingest.media_links.signer().verify(&id, variant, expires_s, signature, now).map_err(|error| match error {
        SignatureError::Expired | SignatureError::Invalid => ApiError::forbidden(error.to_string()),
    })?;
    let media = ingest.backends.media.media(std::slice::from_ref(&id)).await?.pop();
    let Some((content_type, size)) = media.as_ref().and_then(|media| media.variant(variant)) else {
        return Err(HttpError(ApiError::not_found("unknown media")));
    };
    let media = media.as_ref().expect("found above");
    let etag = format!("\"{id}.{}\"", variant.as_str());
    let max_age = (expires_s * 1000 - now.0).max(0) / 1000;
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, format!("public, max-age={max_age}, immutable"))
        .header(header::ACCEPT_RANGES, "bytes");
    if matches(headers.get(header::IF_NONE_MATCH), &etag) {
        return response.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(internal).map_err(HttpError);
    }
    let range = match headers.get(header::RANGE).and_then(|value| value.to_str().ok()) {
        None => None,
        Some(value) => match parse_range(value, size) {
            Ranged::Whole => None,
            Ranged::Part(range) => Some(range),
            Ranged::Unsatisfiable => {
                let error = ApiError::new(esh_common::ErrorCode::InvalidRequest, "the range lies outside the file");
                let mut answer = crate::views::json(StatusCode::RANGE_NOT_SATISFIABLE, &error.body());
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    answer.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(answer);
            }
        },
    };
    let key = Media::blob_key(&id, variant);
    let body = ingest.backends.blobs.get(&key, range.clone()).await?;
    response = response
        .header(header::CONTENT_TYPE, content_type)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_DISPOSITION, disposition(media, variant));
    let response = match range {
        Some(range) => response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {}-{}/{size}", range.start, range.end - 1))
            .header(header::CONTENT_LENGTH, range.end - range.start),
        None => response.status(StatusCode::OK).header(header::CONTENT_LENGTH, size),
    };
    response.body(Body::from_stream(body)).map_err(internal).map_err(HttpError)
}

fn internal(error: axum::http::Error) -> ApiError {
    ApiError::internal(format!("cannot build the answer: {error}"))
}

/// `inline; filename="…"` with the name reduced to printable ASCII without quotes.
fn disposition(media: &Media, variant: MediaVariant) -> String {
    let name: String = media
        .filename
        .chars()
        .map(|c| if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' { c } else { '_' })
        .collect();
    match variant {
        MediaVariant::Original => format!("inline; filename=\"{name}\""),
        _ => format!("inline; filename=\"{}-{name}\"", variant.as_str()),
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn matches(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(value) = if_none_match.and_then(|value| value.to_str().ok()) else { return false };
    value.split(',').map(|tag| tag.trim().trim_start_matches("W/")).any(|tag| tag == "*" || tag == etag)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No usable range (malformed, or several ranges): the whole file (RFC 9110 allows ignoring it).
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

fn parse_range(value: &str, size: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ranged::Whole };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ranged::Whole };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (true, _, Some(suffix)) if suffix > 0 && size > 0 => Ranged::Part(size.saturating_sub(suffix)..size),
        (true, _, _) => Ranged::Unsatisfiable,
        (false, Some(start), _) if start >= size => Ranged::Unsatisfiable,
        (false, Some(start), None) if last.trim().is_empty() => Ranged::Part(start..size),
        (false, Some(start), Some(end)) if end >= start => Ranged::Part(start..end.saturating_add(1).min(size)),
        _ => Ranged::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ranged::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ranged::Part(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Ranged::Part(0..100));
        assert_eq!(parse_range("bytes=50-1000", 100), Ranged::Part(50..100));
        assert_eq!(parse_range("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(parse_range("bytes=9-1", 100), Ranged::Whole);
        assert_eq!(parse_range("items=0-1", 100), Ranged::Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Ranged::Whole);
    }

    /// Byte positions near a small file's size, anywhere, and at the edge of `u64`.
    fn position() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![0u64..1_200, any::<u64>(), Just(u64::MAX), Just(u64::MAX - 1)]
    }

    proptest::proptest! {
        /// Any header value, garbage included: no panic, and a part is a non-empty slice of the file.
        #[test]
        fn any_range_header_names_a_part_of_the_file_or_none(value in ".{0,40}", size in 0u64..1_000) {
            if let Ranged::Part(part) = parse_range(&value, size) {
                proptest::prop_assert!(part.start < part.end && part.end <= size, "{value:?} {size} {part:?}");
            }
        }

        /// Every single range of RFC 9110, at any numbers (u64::MAX included).
        #[test]
        fn single_ranges_are_clamped_to_the_file(start in position(), end in position(), size in 0u64..1_000) {
            let expected = if start >= size {
                Ranged::Unsatisfiable
            } else if end < start {
                Ranged::Whole
            } else {
                Ranged::Part(start..end.saturating_add(1).min(size))
            };
            proptest::prop_assert_eq!(parse_range(&format!("bytes={start}-{end}"), size), expected);
            let open = if start >= size { Ranged::Unsatisfiable } else { Ranged::Part(start..size) };
            proptest::prop_assert_eq!(parse_range(&format!("bytes={start}-"), size), open);
            let suffix = match end == 0 || size == 0 {
                true => Ranged::Unsatisfiable,
                false => Ranged::Part(size.saturating_sub(end)..size),
            };
            proptest::prop_assert_eq!(parse_range(&format!("bytes=-{end}"), size), suffix);
        }
    }

    #[test]
    fn etags_match_lists_weak_tags_and_stars() {
        let etag = "\"m1.original\"";
        assert!(matches(Some(&HeaderValue::from_static("\"m1.original\"")), etag));
        assert!(matches(Some(&HeaderValue::from_static("\"x\", W/\"m1.original\"")), etag));
        assert!(matches(Some(&HeaderValue::from_static("*")), etag));
        assert!(!matches(Some(&HeaderValue::from_static("\"m1.small\"")), etag));
        assert!(!matches(None, etag));
    }
}
