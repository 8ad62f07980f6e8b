//! `POST /v1/messages/batch` (API.md "Batch sends"): 1..1000 one-way messages in one
//! request, for high-volume senders.
//!
//! The whole request is refused with one error for 401, 429 (the send limit, counted once,
//! and the broadcast-recipient quota, counted per item), 400 (a malformed body or a list
//! outside 1..1000), 403 (a sender without `send`) and 503 (a deep backlog, judged at
//! normal priority). Then each item is judged alone with the rules of `POST /v1/messages`
//! and answered in request order in a `207`: `{status: 202, message}` or
//! `{status, error}`. The accepted items are committed together: one append per priority
//! topic, all at once (a batch of one priority is one append). Items of a topic whose
//! append failed answer `503 unavailable`, and their keys are freed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use esh_backends::{Record, StoredAnswer};
use esh_common::{ApiError, ErrorCode, Priority, User};
use serde_json::json;

use super::commit::prepare_message;
use super::idempotency::{KeyState, SendKey};
use super::limits::Permits;
use super::policy::{check_one_way_recipient, check_one_way_sender};
use super::request::{check_batch_size, BatchRequest, SendInput};
use crate::auth::Caller;
use crate::body::ApiJson;
use crate::views::{self, ErrorBody};
use crate::Ingest;
use crate::http_error::HttpError;

/// What became of one item.
enum Outcome {
    Answered(StoredAnswer),
    Refused(ApiError),
}

/// An item that passed its checks, holding its key until its append is settled.
struct Ready {
    index: usize,
    key: Option<SendKey>,
    topic: &'static str,
    record: Record,
    answer: StoredAnswer,
}

#[utoipa::path(post, path = "/v1/messages/batch", tag = "messages", request_body = BatchRequest,
    responses(
        (status = 207, description = "one result per item, in request order: `{status: 202, message}` or `{status, error}`",
            body = serde_json::Value),
        (status = 400, description = "malformed body or a list outside 1..1000", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "the sender lacks `send`", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_batch(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    body: Result<ApiJson<BatchRequest>, HttpError>,
) -> Result<Response, HttpError> {
    let request = body.map(|ApiJson(request)| request).map_err(|rejection| rejection.0);
    // On a task of its own, like every send: a client that hangs up cannot cut it short.
    ingest.detached(move |ingest| async move { ingest.batch(&caller, request).await }).await.map_err(HttpError)
}

impl Ingest {
    async fn batch(&self, caller: &Caller, request: Result<BatchRequest, ApiError>) -> Result<Response, ApiError> {
        let Some(sender) = caller.user() else {
            request?;
            return Err(ApiError::forbidden("the admin token cannot send messages"));
        };
        let mut permits = Permits::default();
        self.count_send(&mut permits, &sender.id).await?;
        let items = match self.admit(sender, request, &mut permits).await {
            Ok(items) => items,
            Err(error) => {
                self.refund(permits).await;
                return Err(error);
            }
        };
        let outcomes = self.judge_and_commit(sender, items).await;
        if outcomes.iter().all(|outcome| matches!(outcome, Outcome::Refused(e) if e.code == ErrorCode::Unavailable)) {
            // Nothing could be committed: the request as a whole failed.
            self.refund(permits).await;
            return Err(ApiError::new(ErrorCode::Unavailable, "the log is unavailable")
                .with_retry_after(std::time::Duration::from_secs(1)));
        }
        Ok(multi_status(&outcomes))
    }

    /// The whole-request checks after the send limit: body, size, permission, quota, backlog.
    async fn admit(
        &self,
        sender: &User,
        request: Result<BatchRequest, ApiError>,
        permits: &mut Permits,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let request = request?;
        check_batch_size(&request.messages)?;
        check_one_way_sender(sender)?;
        self.count_recipients(permits, &sender.id, request.messages.len() as u64).await?;
        self.check_backlog(Priority::Normal).await?;
        Ok(request.messages)
    }

    /// Judges each item alone, commits the accepted ones, and settles their keys.
    async fn judge_and_commit(&self, sender: &User, items: Vec<serde_json::Value>) -> Vec<Outcome> {
        let inputs: Vec<Result<SendInput, ApiError>> = items.into_iter().map(SendInput::batch_item).collect();
        let recipient_ids: Vec<&str> =
            inputs.iter().filter_map(|input| input.as_ref().ok()).map(|input| input.recipients[0].as_str()).collect();
        let recipients = match self.directory.users(&recipient_ids).await {
            Ok(recipients) => recipients,
            Err(error) => {
                let error = ApiError::from(error);
                return inputs.iter().map(|_| Outcome::Refused(error.clone())).collect();
            }
        };
        let stamp = self.activity.stamp();
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut ready = Vec::new();
        for (index, input) in inputs.into_iter().enumerate() {
            let judged = match input {
                Ok(input) => self.judge(sender, &input, &recipients, index, stamp.at).await,
                Err(error) => Err(error),
            };
            outcomes.push(match judged {
                Ok(Judged::Ready(item)) => {
                    ready.push(item);
                    // Replaced once its append is settled.
                    Outcome::Refused(ApiError::internal("not committed"))
                }
                Ok(Judged::Replay(answer)) => Outcome::Answered(answer),
                Err(error) => Outcome::Refused(error),
            });
        }
        self.commit_ready(ready, &mut outcomes).await;
        drop(stamp);
        outcomes
    }

    /// The rules of `POST /v1/messages` for one item: 409 (key), 400 (media), 404 and 403 (recipient).
    async fn judge(
        &self,
        sender: &User,
        input: &SendInput,
        recipients: &std::collections::HashMap<String, User>,
        index: usize,
        at: esh_common::Millis,
    ) -> Result<Judged, ApiError> {
        let key = SendKey::of(&sender.id, input);
        if let Some(SendKey { key, fingerprint }) = &key {
            if let KeyState::Replay(answer) = self.claim_key(key, fingerprint).await? {
                return Ok(Judged::Replay(answer));
            }
        }
        let media = if input.media_ids.is_empty() {
            Ok(Vec::new())
        } else {
            self.check_media(sender, &input.media_ids).await
        };
        let checked = media.and_then(|media| {
            let recipient = recipients.get(&input.recipients[0]).ok_or_else(|| ApiError::not_found("unknown recipient"))?;
            check_one_way_recipient(recipient)?;
            prepare_message(sender, recipient, None, input, media, key.as_ref().map(SendKey::parts), at)
        });
        match checked {
            Ok(prepared) => Ok(Judged::Ready(Ready {
                index,
                key,
                topic: prepared.topic,
                record: prepared.record,
                answer: prepared.accepted.answer,
            })),
            Err(error) => {
                if let Some(SendKey { key, .. }) = &key {
                    self.settle_key(key, None).await;
                }
                Err(error)
            }
        }
    }

    /// Appends the ready items, one append per topic, all at once; records each item's outcome.
    async fn commit_ready(&self, ready: Vec<Ready>, outcomes: &mut [Outcome]) {
        let mut by_topic: BTreeMap<&'static str, Vec<Ready>> = BTreeMap::new();
        for item in ready {
            by_topic.entry(item.topic).or_default().push(item);
        }
        let appends = by_topic.into_iter().map(|(topic, items)| async move {
            let records = items.iter().map(|item| item.record.clone()).collect();
            (self.append(topic, records).await, items)
        });
        for (appended, items) in futures::future::join_all(appends).await {
            for item in items {
                let answer = appended.as_ref().ok().map(|()| item.answer.clone());
                if let Some(SendKey { key, .. }) = &item.key {
                    self.settle_key(key, answer.clone()).await;
                }
                outcomes[item.index] = match (answer, &appended) {
                    (Some(answer), _) => {
                        self.metrics.accepted("batch");
                        Outcome::Answered(answer)
                    }
                    (None, Err(error)) => Outcome::Refused(error.clone()),
                    (None, Ok(())) => Outcome::Refused(ApiError::internal("not committed")),
                };
            }
        }
    }
}

enum Judged {
    Ready(Ready),
    Replay(StoredAnswer),
}

/// The `207` answer: each item's stored `202` body, or its error body with its status.
fn multi_status(outcomes: &[Outcome]) -> Response {
    let items: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Answered(answer) => {
                let message: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                json!({ "status": answer.status, "message": message })
            }
            Outcome::Refused(error) => {
                let mut item = error.body();
                item["status"] = json!(error.code.http_status());
                item
            }
        })
        .collect();
    views::json(StatusCode::MULTI_STATUS, &json!({ "items": items }))
}
