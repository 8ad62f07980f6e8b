//! `GET /v1/conversations` and `GET /v1/conversations/{id}/messages`.
//!
//! The list is ordered by (updated_at, id) descending, and a conversation moves to the top
//! whenever it gets a message, so a plain keyset walk would skip a conversation that moves
//! above the cursor before the walk reaches it. The walk therefore has two passes:
//! 1. from the top down by (updated_at, id), remembering when the walk started (`since`);
//! 2. once the first pass is through, the conversations active since `since`, by id (which
//!    never changes, so this pass skips nothing either).
//!
//! Every conversation that existed when the walk started is seen: either it did not move
//! (pass 1 reaches it) or it did (pass 2 has it). One that moved may be seen twice, as
//! API.md allows. A walk that fits in one page has no second pass.
//!
//! A conversation's `updated_at` is its last message's `created_at`, stamped before the
//! message is stored, so a message stored after the walk started may carry an earlier
//! stamp. The `ActivityClock` makes "moved after the walk started" exact in this process:
//! `since` lies below the stamp of every send still in flight, and every later stamp lies
//! above it, so pass 2 takes `updated_at > since` and a conversation that was quiet
//! during the walk is not repeated. (Several ingest nodes would need the store to stamp
//! activity itself.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use esh_backends::cache::{RECENT_MESSAGES, RECENT_TTL};
use esh_common::view::MessageView;
use esh_common::{ApiError, Conversation, ConversationSummary, Message, Millis};

use crate::auth::Caller;
use crate::body::PathId;
use crate::cursor::{invalid_cursor, split_page, Cursor, PageQuery, MAX_LIMIT};
use crate::messages::before_id;
use crate::views::{self, ConversationView, ErrorBody, Page, Peer};
use crate::Ingest;
use crate::http_error::HttpError;

#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "1..200, default 50"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "next_cursor of the previous page (opaque; only cursors the server issued are accepted)")),
    responses((status = 200, description = "most recently active first", body = Page<ConversationView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "admins have no conversations", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    query: PageQuery,
) -> Result<Response, HttpError> {
    let cursor = match &query.cursor {
        None | Some(Cursor::Activity { .. } | Cursor::Moved { .. }) => query.cursor.clone(),
        Some(_) => return Err(HttpError(invalid_cursor())),
    };
    let user = caller.participant()?;
    // Before the walk's `since` is taken: every message answered before now is then in
    // the store, and any still in flight is stamped in `activity`.
    ingest.backends.caught_up().await?;
    let store = &ingest.backends.store;
    let limit = query.limit;
    let (summaries, next_cursor) = match cursor {
        None | Some(Cursor::Activity { .. }) => {
            let (since, after) = match cursor {
                Some(Cursor::Activity { since, after }) => (since, Some(after)),
                _ => (ingest.activity.since(), None),
            };
            let first_page = after.is_none();
            let (page, more) = split_page(store.conversations(&user.id, after, limit + 1).await?, limit);
            let next = match page.last() {
                Some(last) if more => Some(Cursor::Activity { since, after: last.position() }),
                // The walk is through pass 1: pass 2 if anything moved meanwhile.
                _ if !first_page && !ingest.moved_since(&user.id, since, None, 1).await?.is_empty() => {
                    Some(Cursor::Moved { since, after_id: None })
                }
                _ => None,
            };
            (page, next)
        }
        Some(Cursor::Moved { since, after_id }) => {
            let moved = ingest.moved_since(&user.id, since, after_id.as_deref(), limit + 1).await?;
            let (page, more) = split_page(moved, limit);
            let next = match page.last() {
                Some(last) if more => Some(Cursor::Moved { since, after_id: Some(last.conversation.id.clone()) }),
                _ => None,
            };
            (page, next)
        }
        Some(_) => return Err(HttpError(invalid_cursor())),
    };
    let peer_ids: Vec<String> = summaries.iter().map(|s| s.conversation.peer_of(&user.id).to_owned()).collect();
    let names: HashMap<String, String> =
        store.users(&peer_ids).await?.into_iter().map(|peer| (peer.id, peer.display_name)).collect();
    let mut media = ingest.media_of(summaries.iter().filter_map(|s| s.last_message.as_ref()), &headers).await?.into_iter();
    let items: Vec<ConversationView<'_>> = summaries
        .iter()
        .map(|summary| {
            let conversation = &summary.conversation;
            let peer_id = conversation.peer_of(&user.id);
            ConversationView {
                id: &conversation.id,
                business_id: &conversation.business_id,
                mobile_id: &conversation.mobile_id,
                peer: Peer { id: peer_id.to_owned(), display_name: names.get(peer_id).cloned().unwrap_or_default() },
                last_message: summary
                    .last_message
                    .as_ref()
                    .map(|message| MessageView::new(message, media.next().unwrap_or_default())),
                unread_count: summary.unread_count,
                updated_at: conversation.updated_at,
            }
        })
        .collect();
    Ok(views::json(StatusCode::OK, &Page { items, next_cursor: next_cursor.map(|cursor| cursor.encode()) }))
}

impl Ingest {
    /// `user`'s conversations active after `since` with an id above `after_id`, by id,
    /// at most `limit` (pass 2 of the walk).
    async fn moved_since(
        &self,
        user: &str,
        since: Millis,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, ApiError> {
        let mut moved = Vec::new();
        let mut position = None;
        loop {
            let batch = self.backends.store.conversations(user, position.take(), MAX_LIMIT).await?;
            let full = batch.len() == MAX_LIMIT;
            let mut reached_older = false;
            for summary in batch {
                let conversation = &summary.conversation;
                if conversation.updated_at <= since {
                    reached_older = true;
                    break;
                }
                position = Some(summary.position());
                if after_id.is_none_or(|after| conversation.id.as_str() > after) {
                    moved.push(summary);
                }
            }
            if reached_older || !full || position.is_none() {
                break;
            }
        }
        moved.sort_by(|a, b| a.conversation.id.cmp(&b.conversation.id));
        moved.truncate(limit);
        Ok(moved)
    }
}

#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = String, Path, description = "conversation id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "1..200, default 50"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "next_cursor of the previous page (older messages) (opaque; only cursors the server issued are accepted)")),
    responses((status = 200, description = "chat messages, oldest first, starting from the newest", body = Page<MessageView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "not a participant", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn messages(
    State(ingest): State<Arc<Ingest>>,
    caller: Caller,
    headers: HeaderMap,
    PathId(id): PathId,
    query: PageQuery,
) -> Result<Response, HttpError> {
    let before = before_id(&query)?;
    ingest.backends.caught_up().await?;
    let conversation =
        ingest.backends.store.conversation(&id).await?.ok_or_else(|| ApiError::not_found("unknown conversation"))?;
    if !caller.user().is_some_and(|user| conversation.has_participant(&user.id)) {
        return Err(HttpError(ApiError::forbidden("only the participants may read a conversation")));
    }
    if before.is_none() && query.limit <= RECENT_MESSAGES {
        let newest_first = ingest.recent_messages(&conversation, query.limit).await?;
        return ingest.message_page(newest_first, query.limit, &headers).await.map_err(HttpError);
    }
    let messages = ingest.backends.store.conversation_messages(&conversation.id, before, query.limit + 1).await?;
    ingest.message_page(messages, query.limit, &headers).await.map_err(HttpError)
}

impl Ingest {
    /// The newest messages of a conversation, newest first, enough for a first page of
    /// `limit` (≤ `RECENT_MESSAGES`) plus one more when older ones exist: from the
    /// recent-message cache, filled from the store on a miss. A cache that fails or holds an
    /// entry older than the conversation's last activity is bypassed (Req 8.7).
    async fn recent_messages(&self, conversation: &Conversation, limit: usize) -> Result<Vec<Message>, ApiError> {
        let recent = &self.backends.recent;
        match recent.get(&conversation.id).await {
            Ok(Some(cached)) if is_current(&cached, conversation) => {
                let mut newest_first = cached;
                newest_first.reverse();
                // A full cache entry may have older messages behind it: say so with one more.
                if newest_first.len() >= RECENT_MESSAGES && newest_first.len() <= limit {
                    if let Some(oldest) = newest_first.last() {
                        let older =
                            self.backends.store.conversation_messages(&conversation.id, Some(&oldest.id), 1).await?;
                        newest_first.extend(older);
                    }
                }
                return Ok(newest_first);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "recent-message cache unavailable, reading the store"),
        }
        // Taken before the read, so a write (or receipt) racing with it keeps the stale read out of the cache.
        let fill_token = recent.fill_token(&conversation.id).await;
        let newest_first =
            self.backends.store.conversation_messages(&conversation.id, None, RECENT_MESSAGES + 1).await?;
        let mut oldest_first: Vec<Message> = newest_first.iter().take(RECENT_MESSAGES).cloned().collect();
        oldest_first.reverse();
        let filled = match fill_token {
            Ok(token) => recent.fill(&conversation.id, token, oldest_first, RECENT_TTL).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = filled {
            tracing::warn!(%error, "cannot fill the recent-message cache");
        }
        Ok(newest_first)
    }
}

/// Whether a cached entry (oldest first) has the conversation's last message.
fn is_current(cached: &[Message], conversation: &Conversation) -> bool {
    match cached.last() {
        Some(newest) => newest.created_at >= conversation.updated_at,
        None => conversation.updated_at <= conversation.created_at,
    }
}

/// The stamps of messages between their `created_at` and their store insert, and the
/// `since` of conversation-list walks: every stamp in flight when a walk starts is above
/// its `since`, and so is every stamp issued after.
#[derive(Default)]
pub(crate) struct ActivityClock {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    /// stamp → sends in flight with it
    in_flight: BTreeMap<i64, usize>,
    /// The latest `since` handed out; later stamps are above it.
    last_since: i64,
}

/// A send in flight; it leaves the clock when dropped.
pub(crate) struct Stamp<'a> {
    clock: &'a ActivityClock,
    pub(crate) at: Millis,
}

impl ActivityClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stamps a new message with the current time (at least 1 ms after the last `since`),
    /// until the returned guard is dropped.
    pub(crate) fn stamp(&self) -> Stamp<'_> {
        let mut state = self.lock();
        let at = Millis(Millis::now().0.max(state.last_since + 1));
        *state.in_flight.entry(at.0).or_default() += 1;
        Stamp { clock: self, at }
    }

    /// The start of a walk: below every stamp in flight and every stamp issued later.
    fn since(&self) -> Millis {
        let mut state = self.lock();
        let now = Millis::now().0;
        let since = match state.in_flight.keys().next() {
            Some(earliest) => now.min(earliest - 1),
            None => now,
        };
        state.last_since = state.last_since.max(since);
        Millis(since)
    }
}

impl Drop for Stamp<'_> {
    fn drop(&mut self) {
        let mut state = self.clock.lock();
        if let Some(count) = state.in_flight.get_mut(&self.at.0) {
            *count -= 1;
            if *count == 0 {
                state.in_flight.remove(&self.at.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_lies_below_stamps_in_flight_and_stamps_issued_later() {
        let clock = ActivityClock::default();
        let first = clock.stamp();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let second = clock.stamp();
        assert!(clock.since() < first.at);
        drop(first);
        assert!(clock.since() < second.at);
        drop(second);
        let since = clock.since();
        assert!(since >= Millis::now().plus_ms(-1));
        // Even within the same millisecond, a later stamp is above it.
        assert!(clock.stamp().at > since);
    }
}
