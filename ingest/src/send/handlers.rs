//! The HTTP send endpoints and the WebSocket `send` frame: each turns its body into a
//! `SendInput` and runs the one send path (`Ingest::send`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use esh_common::ingress::ChatRequest;
use esh_common::view::MessageView;
use esh_common::{ApiError, Message};

use super::commit::Accepted;
use super::request::{
    BroadcastRequest, ChatMessageRequest, OneWayRequest, SendBody, SendInput, SendKind, IDEMPOTENCY_HEADER,
};
use crate::auth::Caller;
use crate::body::ApiJson;
use crate::views::{BroadcastAccepted, ErrorBody};
use crate::Ingest;
use crate::http_error::HttpError;

#[utoipa::path(post, path = "/v1/messages", tag = "messages", request_body = OneWayRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, description = "idempotency key, scoped to the sender: 1..256 visible ASCII characters; equal to `idempotency_key` when both are given")),
    responses((status = 202, description = "accepted, status sent", body = MessageView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_one_way(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<OneWayRequest>, HttpError>,
) -> Result<Accepted, HttpError> {
    ingest.send_body(caller, &headers, body.map_err(|rejection| rejection.0)).await.map_err(HttpError)
}

#[utoipa::path(post, path = "/v1/chat/messages", tag = "messages", request_body = ChatMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, description = "idempotency key, scoped to the sender: 1..256 visible ASCII characters; equal to `idempotency_key` when both are given")),
    responses((status = 202, description = "accepted, status sent, with its conversation_id", body = MessageView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_chat(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<ChatMessageRequest>, HttpError>,
) -> Result<Accepted, HttpError> {
    ingest.send_body(caller, &headers, body.map_err(|rejection| rejection.0)).await.map_err(HttpError)
}

#[utoipa::path(post, path = "/v1/broadcasts", tag = "broadcasts", request_body = BroadcastRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, description = "idempotency key, scoped to the sender: 1..256 visible ASCII characters; equal to `idempotency_key` when both are given")),
    responses((status = 202, description = "accepted; the router creates one message per recipient", body = BroadcastAccepted),
        (status = 400, description = "bad body, duplicates, or unknown recipients (details.unknown_ids)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_broadcast(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<ApiJson<BroadcastRequest>, HttpError>,
) -> Result<Accepted, HttpError> {
    ingest.send_body(caller, &headers, body.map_err(|rejection| rejection.0)).await.map_err(HttpError)
}

impl Ingest {
    /// Runs the send a JSON body asks for (or refuses it with the error its body gave).
    async fn send_body<B: SendBody>(
        &self,
        caller: Caller,
        headers: &HeaderMap,
        body: Result<ApiJson<B>, ApiError>,
    ) -> Result<Accepted, ApiError> {
        let input = body.and_then(|ApiJson(request)| request.input(headers.get(IDEMPOTENCY_HEADER)));
        self.send_detached(caller, input).await
    }
}

/// `ChatIngress::send_chat`: the WebSocket `send` frame, through the same path as HTTP.
pub(crate) async fn send_chat(ingest: &Ingest, sender_id: &str, request: ChatRequest) -> Result<Message, ApiError> {
    let sender = ingest.directory.user(sender_id).await?.ok_or_else(|| ApiError::unauthenticated("unknown user"))?;
    let input = SendInput::new(
        SendKind::Chat,
        vec![request.to],
        request.content,
        request.priority,
        Some(request.media_ids),
        request.idempotency_key,
        None,
    );
    let accepted = ingest.send_detached(Caller::User(sender), input).await?;
    if let Some(message) = accepted.message {
        return Ok(message);
    }
    // A repeat: the stored answer names the message made by the first request.
    let answer: serde_json::Value = serde_json::from_slice(&accepted.answer.body)
        .map_err(|e| ApiError::internal(format!("undecodable stored answer: {e}")))?;
    let id = answer["id"].as_str().ok_or_else(|| ApiError::internal("stored answer without message id"))?;
    ingest.load_message(id).await
}

