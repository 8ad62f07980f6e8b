//! Dead letters: `GET /v1/admin/dead-letters` (newest first) and
//! `POST /v1/admin/dead-letters/{message_id}/retry` (back to `sent`, appended to its topic again).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use esh_backends::Record;
use esh_common::records::{encode, MessageEnvelope, StatusEvent};
use esh_common::{topics, ApiError, DeadLetter, Millis, Status};

use crate::auth::Caller;
use crate::body::PathId;
use crate::cursor::{invalid_cursor, split_page, Cursor, PageQuery};
use crate::views::{self, ErrorBody, Page, RetriedView};
use crate::Ingest;
use crate::http_error::HttpError;

#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "1..200, default 50"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "next_cursor of the previous page (opaque; only cursors the server issued are accepted)")),
    responses((status = 200, description = "newest first", body = Page<DeadLetter>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn dead_letters(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    query: PageQuery,
) -> Result<Response, HttpError> {
    let after = match query.cursor {
        None => None,
        Some(Cursor::DeadLetter { failed_at, message_id }) => Some((failed_at, message_id)),
        Some(_) => return Err(HttpError(invalid_cursor())),
    };
    caller.require_admin()?;
    ingest.backends.caught_up().await?;
    let letters = ingest.backends.store.dead_letters(after, query.limit + 1).await?;
    let (items, more) = split_page(letters, query.limit);
    let next_cursor = match items.last() {
        Some(last) if more => {
            Some(Cursor::DeadLetter { failed_at: last.failed_at, message_id: last.message_id.clone() }.encode())
        }
        _ => None,
    };
    Ok(views::json(StatusCode::OK, &Page { items, next_cursor }))
}

#[utoipa::path(post, path = "/v1/admin/dead-letters/{message_id}/retry", tag = "admin",
    params(("message_id" = String, Path, description = "id of the failed message")),
    responses((status = 202, description = "back to sent, delivered again", body = RetriedView),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the message is not dead", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn retry(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    PathId(message_id): PathId,
) -> Result<Response, HttpError> {
    caller.require_admin()?;
    let mut message = ingest.load_message(&message_id).await?;
    if message.status != Status::Failed {
        return Err(HttpError(ApiError::conflict("the message is not dead-lettered")));
    }
    // The status record is the retry's commit point; the message record then routes it
    // again. If that second append fails the answer is 503 and the message, `sent` again,
    // waits in the recipient's undelivered messages for the next connect.
    let retried = StatusEvent::of(&message, Status::Sent, Millis::now());
    ingest.status_writer.apply(vec![retried.clone()]).await?;
    message.apply(&retried.change());
    let topic = topics::messages_topic(message.priority);
    let record = Record {
        key: message.partition_key(),
        value: encode(MessageEnvelope::Message {
            message,
            idempotency: None,
        })?,
    };
    ingest.append(topic, vec![record]).await?;
    Ok(views::json(StatusCode::ACCEPTED, &RetriedView { message_id, status: Status::Sent }))
}
