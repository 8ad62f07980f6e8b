//! Pages: the `limit` rule shared by every list (1..200, default 50) and the one opaque
//! cursor format: base64url of a small versioned text, validated on the way back in (a
//! made-up or foreign cursor is `400`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use esh_common::{ids, ActivityPosition, ApiError, Millis};
use serde_json::json;
use crate::http_error::HttpError;

/// Items of a page when `limit` is absent.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// Largest `limit`.
pub(crate) const MAX_LIMIT: usize = 200;

/// `limit` as given in a query: 1..=200, default 50; anything else is `400`.
pub(crate) fn page_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else { return Ok(DEFAULT_LIMIT) };
    match raw.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ApiError::invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
            .with_details(json!({ "field": "limit" }))),
    }
}

/// A position in one of the lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Message pages: items with an id below this one (older).
    Before(String),
    /// Conversation list, first pass: items after `after` in descending order, of a walk
    /// that started at `since`.
    Activity { since: Millis, after: ActivityPosition },
    /// Conversation list, second pass: conversations active since `since`, by id after `after_id`.
    Moved { since: Millis, after_id: Option<String> },
    /// Dead letters: items after (failed_at, message id) in descending order.
    DeadLetter { failed_at: Millis, message_id: String },
    /// Broadcast recipients: from this index on.
    Index(usize),
}

const VERSION: &str = "v1";

impl Cursor {
    /// The opaque text handed to clients.
    pub(crate) fn encode(&self) -> String {
        let text = match self {
            Cursor::Before(id) => format!("{VERSION}|m|{id}"),
            Cursor::Activity { since, after } => format!(
                "{VERSION}|c|{}|{}|{}|{}",
                since.0, after.updated_at.0, after.last_message_id, after.conversation_id
            ),
            Cursor::Moved { since, after_id } => {
                format!("{VERSION}|C|{}|{}", since.0, after_id.as_deref().unwrap_or_default())
            }
            Cursor::DeadLetter { failed_at, message_id } => format!("{VERSION}|d|{}|{message_id}", failed_at.0),
            Cursor::Index(index) => format!("{VERSION}|b|{index}"),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Parses a cursor made by `encode`; anything else is `400`.
    pub(crate) fn decode(text: &str) -> Result<Cursor, ApiError> {
        Self::try_decode(text).ok_or_else(invalid_cursor)
    }

    fn try_decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text.as_bytes()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut fields = text.split('|');
        if fields.next()? != VERSION {
            return None;
        }
        let kind = fields.next()?;
        let rest: Vec<&str> = fields.collect();
        let millis = |s: &str| s.parse::<i64>().ok().map(Millis);
        let id = |s: &str| ids::is_id(s).then(|| s.to_owned());
        let conversation_id = |s: &str| ids::is_conversation_id(s).then(|| s.to_owned());
        match (kind, rest.as_slice()) {
            ("m", [message]) => Some(Cursor::Before(id(message)?)),
            ("c", [since, updated_at, last_message, conversation]) => {
                let after = ActivityPosition {
                    updated_at: millis(updated_at)?,
                    last_message_id: if last_message.is_empty() { String::new() } else { id(last_message)? },
                    conversation_id: conversation_id(conversation)?,
                };
                Some(Cursor::Activity { since: millis(since)?, after })
            }
            ("C", [since, after]) => Some(Cursor::Moved {
                since: millis(since)?,
                after_id: if after.is_empty() { None } else { Some(conversation_id(after)?) },
            }),
            ("d", [failed_at, message]) => {
                Some(Cursor::DeadLetter { failed_at: millis(failed_at)?, message_id: id(message)? })
            }
            ("b", [index]) => Some(Cursor::Index(index.parse().ok()?)),
            _ => None,
        }
    }
}

/// The answer to a cursor of the wrong list.
pub(crate) fn invalid_cursor() -> ApiError {
    ApiError::invalid("invalid cursor").with_details(json!({ "field": "cursor" }))
}

/// `?limit&cursor` of a list request, checked (`400` on bad values, before permissions).
#[derive(Debug, Clone)]
pub(crate) struct PageQuery {
    pub(crate) limit: usize,
    pub(crate) cursor: Option<Cursor>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|_| ApiError::invalid("malformed query string"))?;
        let value = |name: &str| pairs.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        let limit = page_limit(value("limit"))?;
        let cursor = match value("cursor") {
            None | Some("") => None,
            Some(text) => Some(Cursor::decode(text)?),
        };
        Ok(PageQuery { limit, cursor })
    }
}

/// Splits what a store read of `limit + 1` items returned into the page and whether more follow.
pub(crate) fn split_page<T>(mut items: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = items.len() > limit;
    items.truncate(limit);
    (items, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_page_rule() {
        assert_eq!(page_limit(None).unwrap(), 50);
        assert_eq!(page_limit(Some("1")).unwrap(), 1);
        assert_eq!(page_limit(Some("200")).unwrap(), 200);
        for bad in ["0", "201", "abc", "-1", ""] {
            assert!(page_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_made_up_ones_are_refused() {
        let id = ids::new_id();
        let conversation = ids::conversation_id("b", "m");
        let cursors = [
            Cursor::Before(id.clone()),
            Cursor::Activity {
                since: Millis(5),
                after: ActivityPosition {
                    updated_at: Millis(3),
                    last_message_id: id.clone(),
                    conversation_id: conversation.clone(),
                },
            },
            Cursor::Activity {
                since: Millis(5),
                after: ActivityPosition {
                    updated_at: Millis(3),
                    last_message_id: String::new(),
                    conversation_id: conversation.clone(),
                },
            },
            Cursor::Moved { since: Millis(5), after_id: None },
            Cursor::Moved { since: Millis(5), after_id: Some(conversation.clone()) },
            Cursor::DeadLetter { failed_at: Millis(7), message_id: id.clone() },
            Cursor::Index(42),
        ];
        for cursor in cursors {
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for bad in ["abc", "", "!!!", &URL_SAFE_NO_PAD.encode("v1|m|nope"), &URL_SAFE_NO_PAD.encode("v2|b|1")] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
