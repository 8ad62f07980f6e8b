//! The shapes of the answers (besides `common::view::MessageView`), and the JSON error body
//! for everything axum would otherwise answer in plain text (unknown routes, wrong methods).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use esh_common::view::MessageView;
use esh_common::{ApiError, ErrorCode, Millis, Permission, StatusCounts, User, UserKind};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http_error::HttpError;

/// A page of a list: `next_cursor` leads on (to older items for message pages), null at the end.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

/// A user as the API shows it: `permissions` for businesses, `verified` and
/// `notifications_enabled` for mobile users.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserView {
    pub(crate) id: String,
    pub(crate) kind: UserKind,
    pub(crate) display_name: String,
    pub(crate) created_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) permissions: Option<Vec<Permission>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) notifications_enabled: Option<bool>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        let mobile = user.kind == UserKind::Mobile;
        UserView {
            id: user.id.clone(),
            kind: user.kind,
            display_name: user.display_name.clone(),
            created_at: user.created_at,
            permissions: (user.kind == UserKind::Business).then(|| user.permissions.clone()),
            verified: mobile.then_some(user.verified),
            notifications_enabled: mobile.then_some(user.notifications_enabled),
        }
    }
}

/// `201` of `POST /v1/users/{id}/tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    pub(crate) token: String,
    pub(crate) expires_at: Millis,
}

/// `202` of `POST /v1/broadcasts`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BroadcastAccepted {
    pub(crate) id: String,
    pub(crate) total: u64,
    pub(crate) created_at: Millis,
}

/// `GET /v1/broadcasts/{id}`: counts add up to `total`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BroadcastView {
    pub(crate) id: String,
    pub(crate) total: u64,
    pub(crate) counts: StatusCounts,
}

/// The other participant of a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Peer {
    pub(crate) id: String,
    pub(crate) display_name: String,
}

/// One line of `GET /v1/conversations`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConversationView<'a> {
    pub(crate) id: &'a str,
    pub(crate) business_id: &'a str,
    pub(crate) mobile_id: &'a str,
    pub(crate) peer: Peer,
    pub(crate) last_message: Option<MessageView<'a>>,
    /// Messages addressed to the caller that are not read.
    pub(crate) unread_count: u64,
    pub(crate) updated_at: Millis,
}

/// `GET /v1/messages/{id}/attempts`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AttemptsView {
    pub(crate) items: Vec<esh_common::Attempt>,
}

/// `202` of `POST /v1/admin/dead-letters/{message_id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RetriedView {
    pub(crate) message_id: String,
    /// Always `sent`.
    pub(crate) status: esh_common::Status,
}

/// The error body of every 4xx/5xx answer (for the OpenAPI document).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// `{code, message, details?}` of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// snake_case code: invalid_request, unauthenticated, forbidden, not_found, conflict, …
    pub(crate) code: String,
    pub(crate) message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<serde_json::Value>,
}

/// A JSON answer with this status.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, body),
        Err(error) => HttpError(ApiError::internal(format!("cannot encode answer: {error}"))).into_response(),
    }
}

/// Already-encoded JSON with this status.
pub(crate) fn json_bytes(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The fallback of unknown routes.
pub(crate) async fn not_found() -> HttpError {
    HttpError(ApiError::not_found("no such route"))
}

/// Rewrites error answers that are not JSON (axum's 405, stray rejections) into the JSON
/// error body, keeping their status and headers (`Allow`, `Retry-After`).
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => ErrorCode::InvalidRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        _ if status.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    let message = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let (mut parts, _) = response.into_parts();
    let rewritten = json(status, &ApiError::new(code, message).body());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let (_, body) = rewritten.into_parts();
    Response::from_parts(parts, body)
}
