//! Who may send what to whom (API.md "Messages" rules): the `send` and `chat`
//! permissions, verified mobile users, and recipients that exist and are of the right kind.
//! Users come from the cached directory (`crate::directory`), so a send reads no store.

use esh_common::{ApiError, Permission, User, UserKind};
use serde_json::json;

use crate::Ingest;

/// Fewest users looked up per store call when checking broadcast recipients.
const USER_LOOKUP_MIN_CHUNK: usize = 2_000;

impl Ingest {
    /// The recipient of a one-way message or chat: 404 if unknown.
    pub(crate) async fn recipient(&self, id: &str) -> Result<User, ApiError> {
        self.directory.user(id).await?.ok_or_else(|| ApiError::not_found("unknown recipient"))
    }

    /// Every broadcast recipient must be an existing mobile user; else 400 listing up to 100
    /// others. `recipients` has no duplicates. Read from the store in chunks (one range of
    /// sorted ids each, one per core): 100,000 users would only churn the directory's cache.
    pub(crate) async fn check_broadcast_recipients_exist(&self, recipients: &[String]) -> Result<(), ApiError> {
        let mut sorted = recipients.to_vec();
        sorted.sort_unstable();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let chunk = sorted.len().div_ceil(cores).max(USER_LOOKUP_MIN_CHUNK);
        let store = &self.backends.store;
        let found = futures::future::try_join_all(sorted.chunks(chunk).map(|ids| store.users(ids))).await?;
        let mut mobile: Vec<&str> =
            found.iter().flatten().filter(|user| user.kind == UserKind::Mobile).map(|user| user.id.as_str()).collect();
        if mobile.len() == sorted.len() {
            // Each chunk answered at most its own ids, each once: the same count is all of them.
            return Ok(());
        }
        mobile.sort_unstable();
        let unknown: Vec<&String> =
            recipients.iter().filter(|id| mobile.binary_search(&id.as_str()).is_err()).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let count = unknown.len();
        let listed: Vec<&String> = unknown.into_iter().take(100).collect();
        Err(ApiError::invalid("every recipient must be an existing mobile user")
            .with_details(json!({ "field": "recipient_ids", "unknown_ids": listed, "unknown_count": count })))
    }
}

/// One-way senders: a business with `send`.
pub(crate) fn check_one_way_sender(sender: &User) -> Result<(), ApiError> {
    if sender.has(Permission::Send) {
        return Ok(());
    }
    Err(ApiError::forbidden("one-way messages need a business with the send permission"))
}

/// One-way recipients: mobile users only.
pub(crate) fn check_one_way_recipient(recipient: &User) -> Result<(), ApiError> {
    if recipient.kind == UserKind::Mobile {
        return Ok(());
    }
    Err(ApiError::forbidden("one-way messages go to mobile users only"))
}

/// Chat senders: a business with `chat` or a verified mobile user.
pub(crate) fn check_chat_sender(sender: &User) -> Result<(), ApiError> {
    match sender.kind {
        UserKind::Business if sender.has(Permission::Chat) => Ok(()),
        UserKind::Business => Err(ApiError::forbidden("chat needs a business with the chat permission")),
        UserKind::Mobile if sender.verified => Ok(()),
        UserKind::Mobile => Err(ApiError::forbidden("chat needs a verified mobile user")),
        UserKind::Admin => Err(ApiError::forbidden("admins cannot chat")),
    }
}

/// The (business, mobile) pair of a chat, or 403 if it is not one business with `chat`
/// and one verified mobile user.
pub(crate) fn chat_pair<'a>(sender: &'a User, recipient: &'a User) -> Result<(&'a User, &'a User), ApiError> {
    let (business, mobile) = match (sender.kind, recipient.kind) {
        (UserKind::Business, UserKind::Mobile) => (sender, recipient),
        (UserKind::Mobile, UserKind::Business) => (recipient, sender),
        _ => return Err(ApiError::forbidden("a chat pairs one business and one mobile user")),
    };
    if !business.has(Permission::Chat) {
        return Err(ApiError::forbidden("the business does not have the chat permission"));
    }
    if !mobile.verified {
        return Err(ApiError::forbidden("the mobile user is not verified"));
    }
    Ok((business, mobile))
}
