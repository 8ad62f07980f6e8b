//! The one send path: `POST /v1/messages` (one-way), `POST /v1/messages/batch`,
//! `POST /v1/chat/messages` and the WebSocket `send` frame (chat, through `ChatIngress`),
//! `POST /v1/broadcasts`.
//!
//! Order of checks (API.md "Precise rules"): 401 (the `Caller` extractor), 429 (rate
//! limit), 400 (body, then media ids: only sends with media read the catalog), 403 (permission), 404 (recipient), 409 (idempotency conflict), then
//! 503 when the backlog is too deep. A request refused after its rate-limit permit was
//! counted gets the permit back; a repeat of an answered request (same sender, same
//! idempotency key, same body) gets the identical answer and counts nothing.
//!
//! Once every check passed, a send is committed by ONE durable log append and by nothing
//! else (`commit`): the store is a projection of the log (`router/src/projection.rs`).
//!
//! - `request`: bodies, limits and fingerprints, checked without any backend;
//! - `policy`: permissions and recipients; `limits`: rate limits, quota and backlog;
//! - `idempotency`: claiming, settling and restoring keys;
//! - `commit`: the record and the append; `handlers`: the HTTP endpoints; `batch`: bulk sends.

pub(crate) mod batch;
mod commit;
pub(crate) mod handlers;
mod idempotency;
pub(crate) mod limits;
mod policy;
mod request;

pub(crate) use batch::post_batch;
pub(crate) use handlers::{post_broadcast, post_chat, post_one_way, send_chat};
pub(crate) use request::{SendInput, SendKind};

use std::future::Future;
use std::sync::Arc;

use esh_common::{ids, ApiError, ErrorCode, User};

use self::commit::{prepare_broadcast, prepare_message, Accepted, Prepared};
use self::idempotency::{KeyState, SendKey};
use self::limits::Permits;
use self::policy::{chat_pair, check_chat_sender, check_one_way_recipient, check_one_way_sender};
use crate::auth::Caller;
use crate::Ingest;

impl Ingest {
    /// Runs `work` on a task of its own, so that a caller that goes away (a closed
    /// connection drops the handler) cannot cut a send off between its effect and the
    /// settling of its idempotency key and rate-limit permits.
    async fn detached<T, F, Fut>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Ingest>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let Some(ingest) = self.me.upgrade() else {
            return Err(ApiError::new(ErrorCode::Unavailable, "ingest is shutting down"));
        };
        tokio::spawn(work(ingest)).await.map_err(|error| ApiError::internal(format!("send task failed: {error}")))?
    }

    /// Runs a send on a task of its own (`detached`).
    async fn send_detached(&self, caller: Caller, input: Result<SendInput, ApiError>) -> Result<Accepted, ApiError> {
        self.detached(move |ingest| async move { ingest.send(&caller, input).await }).await
    }

    /// Runs a send request (already parsed, or the error its body gave) from `caller`.
    pub(crate) async fn send(&self, caller: &Caller, input: Result<SendInput, ApiError>) -> Result<Accepted, ApiError> {
        let Some(sender) = caller.user() else {
            // The admin token is nobody: it has no rate limit and cannot send.
            input?;
            return Err(ApiError::forbidden("the admin token cannot send messages"));
        };
        let mut input = match input {
            Ok(input) => input,
            Err(error) => return Err(self.refuse_after_rate_check(&sender.id, error).await),
        };
        let send_key = SendKey::of(&sender.id, &input);
        if let Some(SendKey { key, fingerprint }) = &send_key {
            match self.claim_key(key, fingerprint).await {
                Ok(KeyState::Held) => {}
                Ok(KeyState::Replay(answer)) => return Ok(Accepted { answer, message: None }),
                Err(error) if error.code == ErrorCode::Conflict => {
                    return Err(self.refuse_after_rate_check(&sender.id, error).await)
                }
                Err(error) => return Err(error),
            }
        }
        let key = send_key.as_ref().map(SendKey::parts);
        let mut permits = Permits::default();
        let outcome = self.send_counted(sender, &mut input, key, &mut permits).await;
        if outcome.is_err() {
            self.refund(permits).await;
        }
        if let Some(SendKey { key, .. }) = &send_key {
            self.settle_key(key, outcome.as_ref().ok().map(|accepted| accepted.answer.clone())).await;
        }
        if let Ok(accepted) = &outcome {
            self.metrics.accepted(input.kind.as_str());
            debug_assert_eq!(accepted.answer.status, 202);
        }
        outcome
    }

    /// Counts the request against the sender's limits, checks it, and commits it.
    async fn send_counted(
        &self,
        sender: &User,
        input: &mut SendInput,
        key: Option<(&str, &str)>,
        permits: &mut Permits,
    ) -> Result<Accepted, ApiError> {
        self.count_send(permits, &sender.id).await?;
        if input.kind == SendKind::Broadcast {
            self.count_recipients(permits, &sender.id, input.recipients.len() as u64).await?;
        }
        // Only sends with media read the media catalog.
        let media = if input.media_ids.is_empty() {
            Vec::new()
        } else {
            self.check_media(sender, &input.media_ids).await?
        };
        // Chat activity in flight, for conversation-list walks (see `conversations`).
        let stamp = self.activity.stamp();
        let prepared: Prepared = match input.kind {
            SendKind::OneWay => {
                check_one_way_sender(sender)?;
                let recipient = self.recipient(&input.recipients[0]).await?;
                check_one_way_recipient(&recipient)?;
                self.check_backlog(input.priority).await?;
                prepare_message(sender, &recipient, None, input, media, key, stamp.at)?
            }
            SendKind::Chat => {
                check_chat_sender(sender)?;
                let recipient = self.recipient(&input.recipients[0]).await?;
                let (business, mobile) = chat_pair(sender, &recipient)?;
                self.check_backlog(input.priority).await?;
                let conversation_id = ids::conversation_id(&business.id, &mobile.id);
                prepare_message(sender, &recipient, Some(conversation_id), input, media, key, stamp.at)?
            }
            SendKind::Broadcast => {
                check_one_way_sender(sender)?;
                self.check_broadcast_recipients_exist(&input.recipients).await?;
                self.check_backlog(input.priority).await?;
                prepare_broadcast(sender, input, key)?
            }
        };
        self.append(prepared.topic, vec![prepared.record]).await?;
        drop(stamp);
        Ok(prepared.accepted)
    }
}
