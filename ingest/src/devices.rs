//! Devices and preferences (API.md "Devices and preferences"): `POST /v1/devices`,
//! `GET /v1/devices`, `DELETE /v1/devices/{token}`, `GET|PUT /v1/me/preferences`. Mobile
//! users only; the registry is `DeviceRegistry` (`backends/src/devices`).
//!
//! Choices where API.md leaves room: a token is 1..4096 visible ASCII characters; a user
//! holds at most `IngestConfig::max_devices_per_user` devices (more is `409 conflict`);
//! deleting a token the caller does not hold is `404`, also when it is not a token at all
//! (nobody can hold it); registering an own token again makes
//! it active again (the app vouches for it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use esh_common::{ApiError, Device, Millis, Platform, User, UserKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::body::{ApiJson, JsonBody, PathId};
use crate::views::{self, ErrorBody};
use crate::Ingest;
use crate::http_error::HttpError;

/// Longest device token, in characters (FCM tokens are ~160, APNs tokens 64).
const MAX_TOKEN: usize = 4096;

/// `POST /v1/devices`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct RegisterDevice {
    platform: Platform,
    /// The provider's token: 1..4096 visible ASCII characters.
    #[schema(min_length = 1, max_length = 4096)]
    token: String,
}

impl JsonBody for RegisterDevice {}

/// `PUT /v1/me/preferences`, and its answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Preferences {
    notifications_enabled: bool,
}

impl JsonBody for Preferences {}

/// The body of `GET /v1/devices`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DevicesView {
    items: Vec<Device>,
}

fn is_token(token: &str) -> bool {
    (1..=MAX_TOKEN).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

fn check_token(token: &str) -> Result<(), ApiError> {
    if is_token(token) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("token must have 1 to {MAX_TOKEN} visible ASCII characters"))
            .with_details(json!({ "field": "token" })))
    }
}

/// The caller when it is a mobile user; `403` otherwise.
fn mobile(caller: &Caller) -> Result<&User, ApiError> {
    caller
        .user()
        .filter(|user| user.kind == UserKind::Mobile)
        .ok_or_else(|| ApiError::forbidden("only mobile users have devices and preferences"))
}

#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = RegisterDevice,
    responses((status = 201, description = "registered (or moved from another user)", body = Device),
        (status = 200, description = "the caller already had this token", body = Device),
        (status = 403, description = "mobile users only", body = ErrorBody),
        (status = 409, description = "the user holds the most devices allowed", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn register(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    ApiJson(request): ApiJson<RegisterDevice>,
) -> Result<Response, HttpError> {
    check_token(&request.token)?;
    let user = mobile(&caller)?;
    let max = ingest.config.max_devices_per_user;
    let registered =
        ingest.backends.devices.register(&user.id, request.platform, &request.token, Millis::now(), max).await?;
    let status = if registered.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(views::json(status, &registered.device))
}

#[utoipa::path(get, path = "/v1/devices", tag = "devices",
    responses((status = 200, body = DevicesView), (status = 403, description = "mobile users only", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(State(ingest): State<Arc<Ingest>>, caller: Caller) -> Result<Response, HttpError> {
    let user = mobile(&caller)?;
    let items = ingest.backends.devices.devices(&user.id).await?;
    Ok(views::json(StatusCode::OK, &DevicesView { items }))
}

#[utoipa::path(delete, path = "/v1/devices/{token}", tag = "devices",
    params(("token" = String, Path, description = "the device token, URL-encoded: 1..4096 visible ASCII characters", pattern = "^[!-~]{1,4096}$")),
    responses((status = 204, description = "removed"), (status = 403, description = "mobile users only", body = ErrorBody),
        (status = 404, description = "the caller holds no such token", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn remove(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(token): PathId,
) -> Result<StatusCode, HttpError> {
    let user = mobile(&caller)?;
    if is_token(&token) && ingest.backends.devices.remove(&user.id, &token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError(ApiError::not_found("no such device")))
    }
}

#[utoipa::path(get, path = "/v1/me/preferences", tag = "devices",
    responses((status = 200, body = Preferences), (status = 403, description = "mobile users only", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn preferences(caller: Caller) -> Result<Response, HttpError> {
    let user = mobile(&caller)?;
    Ok(views::json(StatusCode::OK, &Preferences { notifications_enabled: user.notifications_enabled }))
}

#[utoipa::path(put, path = "/v1/me/preferences", tag = "devices", request_body = Preferences,
    responses((status = 200, body = Preferences), (status = 403, description = "mobile users only", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set_preferences(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    ApiJson(request): ApiJson<Preferences>,
) -> Result<Response, HttpError> {
    let id = mobile(&caller)?.id.clone();
    let store = &ingest.backends.store;
    let mut user = store.user(&id).await?.ok_or_else(|| ApiError::not_found("unknown user"))?;
    user.notifications_enabled = request.notifications_enabled;
    store.update_user(&user).await?;
    ingest.directory.forget(&id);
    Ok(views::json(StatusCode::OK, &Preferences { notifications_enabled: user.notifications_enabled }))
}
