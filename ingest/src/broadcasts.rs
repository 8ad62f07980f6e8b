//! `GET /v1/broadcasts/{id}` and `GET /v1/broadcasts/{id}/messages`: for the sender and admins.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use esh_common::{ApiError, Broadcast, BroadcastRecipient};

use crate::auth::Caller;
use crate::body::PathId;
use crate::cursor::{invalid_cursor, split_page, Cursor, PageQuery};
use crate::views::{self, BroadcastView, ErrorBody, Page};
use crate::Ingest;
use crate::http_error::HttpError;

impl Ingest {
    /// The broadcast with this id if the caller may see it: 404 unknown, 403 not its sender.
    async fn visible_broadcast(&self, caller: &Caller, id: &str) -> Result<Broadcast, ApiError> {
        self.backends.caught_up().await?;
        let broadcast =
            self.backends.store.broadcast(id).await?.ok_or_else(|| ApiError::not_found("unknown broadcast"))?;
        if !(caller.is_admin() || caller.is(&broadcast.sender_id)) {
            return Err(ApiError::forbidden("only the sender may read this broadcast"));
        }
        Ok(broadcast)
    }
}

#[utoipa::path(get, path = "/v1/broadcasts/{id}", tag = "broadcasts",
    params(("id" = String, Path, description = "broadcast id")),
    responses((status = 200, description = "counts add up to total", body = BroadcastView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, HttpError> {
    let broadcast = ingest.visible_broadcast(&caller, &id).await?;
    let counts = ingest
        .backends
        .store
        .broadcast_counts(&broadcast.id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown broadcast"))?;
    let view = BroadcastView { id: broadcast.id, total: broadcast.recipient_ids.len() as u64, counts };
    Ok(views::json(StatusCode::OK, &view))
}

#[utoipa::path(get, path = "/v1/broadcasts/{id}/messages", tag = "broadcasts",
    params(("id" = String, Path, description = "broadcast id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "1..200, default 50"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "next_cursor of the previous page (opaque; only cursors the server issued are accepted)")),
    responses((status = 200, description = "recipients in request order", body = Page<BroadcastRecipient>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn messages(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
    query: PageQuery,
) -> Result<Response, HttpError> {
    let from = match query.cursor {
        None => 0,
        Some(Cursor::Index(index)) => index,
        Some(_) => return Err(HttpError(invalid_cursor())),
    };
    let broadcast = ingest.visible_broadcast(&caller, &id).await?;
    let recipients = ingest.backends.store.broadcast_recipients(&broadcast.id, from, query.limit + 1).await?;
    let (items, more) = split_page(recipients, query.limit);
    let next_cursor = more.then(|| Cursor::Index(from + items.len()).encode());
    Ok(views::json(StatusCode::OK, &Page { items, next_cursor }))
}
