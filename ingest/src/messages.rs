//! One message (`GET /v1/messages/{id}`, receipts, attempts) and one-way history.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use esh_backends::OneWayRole;
use esh_common::records::StatusEvent;
use esh_common::view::MessageView;
use esh_common::{ApiError, Message, Millis, Status, UserKind};

use crate::auth::Caller;
use crate::body::PathId;
use crate::cursor::{invalid_cursor, split_page, Cursor, PageQuery};
use crate::views::{self, AttemptsView, ErrorBody, Page};
use crate::Ingest;
use crate::http_error::HttpError;

impl Ingest {
    /// The message with this id, or 404; sees every send answered before the call.
    pub(crate) async fn load_message(&self, id: &str) -> Result<Message, ApiError> {
        self.backends.caught_up().await?;
        self.backends.store.message(id).await?.ok_or_else(|| ApiError::not_found("unknown message"))
    }
}

impl Ingest {
    /// A page of messages from a store read of `limit + 1` items, newest first: the page is
    /// answered oldest first, with media objects, and its cursor leads to the items older
    /// than its oldest one.
    pub(crate) async fn message_page(
        &self,
        newest_first: Vec<Message>,
        limit: usize,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let (mut messages, more) = split_page(newest_first, limit);
        messages.reverse();
        let next_cursor =
            if more { messages.first().map(|oldest| Cursor::Before(oldest.id.clone()).encode()) } else { None };
        let media = self.media_of(&messages, headers).await?;
        let items: Vec<MessageView<'_>> =
            messages.iter().zip(media).map(|(message, media)| MessageView::new(message, media)).collect();
        Ok(views::json(StatusCode::OK, &Page { items, next_cursor }))
    }
}

/// The `before` id of a message-page cursor; other cursors are 400.
pub(crate) fn before_id(query: &PageQuery) -> Result<Option<&str>, ApiError> {
    match &query.cursor {
        None => Ok(None),
        Some(Cursor::Before(id)) => Ok(Some(id)),
        Some(_) => Err(invalid_cursor()),
    }
}

#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "message id")),
    responses((status = 200, body = MessageView), (status = 401, body = ErrorBody),
        (status = 403, description = "neither sender nor recipient", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Response, HttpError> {
    let message = ingest.load_message(&id).await?;
    if !(caller.is_admin() || caller.is(&message.sender_id) || caller.is(&message.recipient_id)) {
        return Err(HttpError(ApiError::forbidden("only the sender and the recipient may read this message")));
    }
    let media = ingest.media_of([&message], &headers).await?.pop().unwrap_or_default();
    Ok(views::json(StatusCode::OK, &MessageView::new(&message, media)))
}

#[utoipa::path(post, path = "/v1/messages/{id}/delivered", tag = "messages",
    params(("id" = String, Path, description = "message id")),
    responses((status = 204, description = "delivered (a receipt that does not move the status is a no-op)"),
        (status = 401, body = ErrorBody), (status = 403, description = "not the recipient", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delivered(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode, HttpError> {
    ingest.receipt(&caller, &id, Status::Delivered).await.map_err(HttpError)
}

#[utoipa::path(post, path = "/v1/messages/{id}/read", tag = "messages",
    params(("id" = String, Path, description = "message id")),
    responses((status = 204, description = "read (implies delivered)"),
        (status = 401, body = ErrorBody), (status = 403, description = "not the recipient", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode, HttpError> {
    ingest.receipt(&caller, &id, Status::Read).await.map_err(HttpError)
}

impl Ingest {
    /// A receipt of the recipient, appended to the status topic by the status writer
    /// (durable before 204; the store projection applies it, forward-only).
    /// `read` from `sent` is one forward move, so it implies `delivered`.
    async fn receipt(&self, caller: &Caller, id: &str, status: Status) -> Result<StatusCode, ApiError> {
        let message = self.load_message(id).await?;
        if !caller.is(&message.recipient_id) {
            return Err(ApiError::forbidden("only the recipient may acknowledge a message"));
        }
        if message.status.can_move_to(status) {
            self.status_writer.apply(vec![StatusEvent::of(&message, status, Millis::now())]).await?;
        }
        Ok(StatusCode::NO_CONTENT)
    }
}

#[utoipa::path(get, path = "/v1/messages/{id}/attempts", tag = "messages",
    params(("id" = String, Path, description = "message id")),
    responses((status = 200, body = AttemptsView), (status = 401, body = ErrorBody),
        (status = 403, description = "not the sender", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn attempts(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, HttpError> {
    let message = ingest.load_message(&id).await?;
    if !(caller.is_admin() || caller.is(&message.sender_id)) {
        return Err(HttpError(ApiError::forbidden("only the sender may read delivery attempts")));
    }
    let items = ingest.backends.store.attempts(&message.id).await?;
    Ok(views::json(StatusCode::OK, &AttemptsView { items }))
}

#[utoipa::path(get, path = "/v1/one-way-messages", tag = "messages",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "1..200, default 50"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "next_cursor of the previous page (opaque; only cursors the server issued are accepted)")),
    responses((status = 200, description = "mobile: received; business: sent, broadcasts included; oldest first", body = Page<MessageView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "admins have no one-way history", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn one_way_history(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    query: PageQuery,
) -> Result<Response, HttpError> {
    let before = before_id(&query)?;
    let user = caller.participant()?;
    let role = match user.kind {
        UserKind::Business => OneWayRole::Sender,
        _ => OneWayRole::Recipient,
    };
    ingest.backends.caught_up().await?;
    let messages = ingest.backends.store.one_way_messages(&user.id, role, before, query.limit + 1).await?;
    ingest.message_page(messages, query.limit, &headers).await.map_err(HttpError)
}
