//! The user directory: `POST /v1/users`, `PATCH /v1/users/{id}`, `GET /v1/users/{id}`,
//! `POST /v1/users/{id}/tokens`.
//!
//! Fields that do not apply to a user's kind (`permissions` of a mobile user, `verified` of a
//! business) are accepted and ignored: the user keeps the defaults of its kind.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use esh_common::{ApiError, Millis, Permission, User, UserKind};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{ApiJson, JsonBody, PathId};
use crate::views::{self, ErrorBody, TokenView, UserView};
use crate::Ingest;
use crate::http_error::HttpError;

/// Longest display name, in characters.
const MAX_DISPLAY_NAME: usize = 128;
/// Token lifetimes: 60 s .. 30 days, default one day.
const MIN_TTL_S: u64 = 60;
const MAX_TTL_S: u64 = 2_592_000;
const DEFAULT_TTL_S: u64 = 86_400;

/// `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateUserRequest {
    /// 1..64 characters of `[A-Za-z0-9_.:-]`.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", min_length = 1, max_length = 64)]
    id: String,
    kind: UserKind,
    /// 1..128 characters.
    #[schema(min_length = 1, max_length = 128)]
    display_name: String,
    /// Business users: a subset of `send`, `chat` (default none).
    permissions: Option<Vec<Permission>>,
    /// Mobile users (default false).
    verified: Option<bool>,
}

impl JsonBody for CreateUserRequest {}

/// `PATCH /v1/users/{id}`: any of the fields.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct UpdateUserRequest {
    /// 1..128 characters.
    #[schema(min_length = 1, max_length = 128)]
    display_name: Option<String>,
    permissions: Option<Vec<Permission>>,
    verified: Option<bool>,
}

impl JsonBody for UpdateUserRequest {}

/// `POST /v1/users/{id}/tokens` (the body may be empty).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct TokenRequest {
    /// Lifetime in seconds, 60..2592000, default 86400.
    #[schema(minimum = 60, maximum = 2_592_000, default = 86_400)]
    ttl_s: Option<u64>,
}

impl JsonBody for TokenRequest {
    const OPTIONAL: bool = true;
}

fn check_display_name(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if (1..=MAX_DISPLAY_NAME).contains(&chars) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("display_name must have 1 to {MAX_DISPLAY_NAME} characters"))
            .with_details(json!({ "field": "display_name" })))
    }
}

/// A permission set without repeats, in a stable order.
fn normalized(mut permissions: Vec<Permission>) -> Vec<Permission> {
    permissions.sort();
    permissions.dedup();
    permissions
}

/// Keeps only the fields that apply to the user's kind.
fn fit_to_kind(mut user: User) -> User {
    if user.kind != UserKind::Business {
        user.permissions.clear();
    }
    if user.kind != UserKind::Mobile {
        user.verified = false;
    }
    user
}

#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "admin only", body = ErrorBody), (status = 409, description = "the id is taken", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateUserRequest>,
) -> Result<Response, HttpError> {
    if !User::is_valid_id(&request.id) {
        return Err(HttpError(ApiError::invalid("id must have 1 to 64 characters of [A-Za-z0-9_.:-]")
            .with_details(json!({ "field": "id" }))));
    }
    check_display_name(&request.display_name)?;
    caller.require_admin()?;
    let user = fit_to_kind(User {
        id: request.id,
        kind: request.kind,
        display_name: request.display_name,
        created_at: Millis::now(),
        permissions: normalized(request.permissions.unwrap_or_default()),
        verified: request.verified.unwrap_or(false),
        notifications_enabled: true,
    });
    ingest.backends.store.create_user(&user).await.map_err(|error| match error.kind() {
        esh_backends::ErrorKind::Conflict => ApiError::conflict("a user with this id exists"),
        _ => error.into(),
    })?;
    ingest.directory.forget(&user.id);
    Ok(views::json(StatusCode::CREATED, &UserView::from(&user)))
}

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", request_body = UpdateUserRequest,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "admin only", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
    ApiJson(request): ApiJson<UpdateUserRequest>,
) -> Result<Response, HttpError> {
    if let Some(name) = &request.display_name {
        check_display_name(name)?;
    }
    caller.require_admin()?;
    let store = &ingest.backends.store;
    let mut user = store.user(&id).await?.ok_or_else(|| ApiError::not_found("unknown user"))?;
    if let Some(name) = request.display_name {
        user.display_name = name;
    }
    if let Some(permissions) = request.permissions {
        user.permissions = normalized(permissions);
    }
    if let Some(verified) = request.verified {
        user.verified = verified;
    }
    let user = fit_to_kind(user);
    store.update_user(&user).await?;
    ingest.directory.forget(&user.id);
    Ok(views::json(StatusCode::OK, &UserView::from(&user)))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody),
        (status = 403, description = "another user", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, HttpError> {
    if let (false, Some(user)) = (caller.is_admin(), caller.user()) {
        if user.id != id {
            return Err(HttpError(ApiError::forbidden("users may read only themselves")));
        }
        // The caller was just read from the directory.
        return Ok(views::json(StatusCode::OK, &UserView::from(user)));
    }
    let user = ingest.backends.store.user(&id).await?.ok_or_else(|| ApiError::not_found("unknown user"))?;
    Ok(views::json(StatusCode::OK, &UserView::from(&user)))
}

#[utoipa::path(post, path = "/v1/users/{id}/tokens", tag = "users",
    request_body(content = Option<TokenRequest>, description = "may be empty (then no content type is needed)"),
    params(("id" = String, Path, description = "user id")),
    responses((status = 201, body = TokenView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "admin only", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn issue_token(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Response, HttpError> {
    let ttl_s = request.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(MIN_TTL_S..=MAX_TTL_S).contains(&ttl_s) {
        return Err(HttpError(ApiError::invalid(format!("ttl_s must be from {MIN_TTL_S} to {MAX_TTL_S}"))
            .with_details(json!({ "field": "ttl_s" }))));
    }
    caller.require_admin()?;
    let user = ingest.backends.store.user(&id).await?.ok_or_else(|| ApiError::not_found("unknown user"))?;
    let (token, expires_at) = ingest.keys.issue(&user.id, user.kind, ttl_s)?;
    Ok(views::json(StatusCode::CREATED, &TokenView { token, expires_at }))
}
