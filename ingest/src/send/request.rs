//! What a send request says, checked without any backend: the request bodies of every send
//! endpoint, their limits, and the idempotency fingerprint (API.md "Precise rules").

use std::collections::HashSet;
use std::fmt::Write;

use axum::http::HeaderValue;
use esh_common::{topics, ApiError, Priority};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::body::JsonBody;
use crate::media::MAX_MEDIA_PER_MESSAGE;
use crate::IngestConfig;

/// Longest content, in Unicode scalar values.
pub(crate) const MAX_CONTENT_CHARS: usize = 4096;
/// Most recipients of one broadcast.
pub(crate) const MAX_BROADCAST_RECIPIENTS: usize = 100_000;
/// Most messages of one batch.
pub(crate) const MAX_BATCH_MESSAGES: usize = 1000;
/// Longest idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 256;
/// The idempotency header.
pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// `POST /v1/messages`, and one item of `POST /v1/messages/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct OneWayRequest {
    /// A mobile user.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub(crate) recipient_id: String,
    /// 1..4096 Unicode scalar values.
    #[schema(min_length = 1, max_length = 4096)]
    pub(crate) content: String,
    /// Default `normal`.
    pub(crate) priority: Option<Priority>,
    /// Up to 10 media objects uploaded before by the sender (`POST /v1/media`), or of a
    /// message the sender took part in; others are 400.
    #[schema(max_items = 10)]
    pub(crate) media_ids: Option<Vec<String>>,
    /// Same as the `Idempotency-Key` header (the header wins; both and different is 400); 1..256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub(crate) idempotency_key: Option<String>,
}

impl JsonBody for OneWayRequest {}

/// `POST /v1/messages/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct BatchRequest {
    /// 1..1000 one-way messages, each judged alone.
    #[schema(min_items = 1, max_items = 1000)]
    pub(crate) messages: Vec<serde_json::Value>,
}

impl JsonBody for BatchRequest {
    fn limit(config: &IngestConfig) -> usize {
        config.max_broadcast_body_bytes
    }
}

/// `POST /v1/chat/messages` (and the WebSocket `send` frame).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChatMessageRequest {
    /// The other participant: a business with `chat` or a verified mobile user.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub(crate) to: String,
    /// 1..4096 Unicode scalar values.
    #[schema(min_length = 1, max_length = 4096)]
    pub(crate) content: String,
    /// Default `normal`.
    pub(crate) priority: Option<Priority>,
    /// As in `POST /v1/messages`.
    #[schema(max_items = 10)]
    pub(crate) media_ids: Option<Vec<String>>,
    /// As in `POST /v1/messages`; 1..256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub(crate) idempotency_key: Option<String>,
}

impl JsonBody for ChatMessageRequest {}

/// `POST /v1/broadcasts`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct BroadcastRequest {
    /// 1..100000 existing mobile users, no duplicates.
    #[schema(min_items = 1, max_items = 100_000)]
    pub(crate) recipient_ids: Vec<String>,
    /// 1..4096 Unicode scalar values.
    #[schema(min_length = 1, max_length = 4096)]
    pub(crate) content: String,
    /// Default `normal`.
    pub(crate) priority: Option<Priority>,
    /// As in `POST /v1/messages`.
    #[schema(max_items = 10)]
    pub(crate) media_ids: Option<Vec<String>>,
    /// As in `POST /v1/messages`; 1..256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub(crate) idempotency_key: Option<String>,
}

impl JsonBody for BroadcastRequest {
    fn limit(config: &IngestConfig) -> usize {
        config.max_broadcast_body_bytes
    }
}

/// A send endpoint's body: what it asks for, checked (the header's idempotency key, if
/// any, wins over the body's).
pub(crate) trait SendBody {
    fn input(self, header_key: Option<&HeaderValue>) -> Result<SendInput, ApiError>;
}

impl SendBody for OneWayRequest {
    fn input(self, header_key: Option<&HeaderValue>) -> Result<SendInput, ApiError> {
        let recipients = vec![self.recipient_id];
        SendInput::new(SendKind::OneWay, recipients, self.content, self.priority, self.media_ids, self.idempotency_key, header_key)
    }
}

impl SendBody for ChatMessageRequest {
    fn input(self, header_key: Option<&HeaderValue>) -> Result<SendInput, ApiError> {
        let recipients = vec![self.to];
        SendInput::new(SendKind::Chat, recipients, self.content, self.priority, self.media_ids, self.idempotency_key, header_key)
    }
}

impl SendBody for BroadcastRequest {
    fn input(self, header_key: Option<&HeaderValue>) -> Result<SendInput, ApiError> {
        let recipients = self.recipient_ids;
        SendInput::new(SendKind::Broadcast, recipients, self.content, self.priority, self.media_ids, self.idempotency_key, header_key)
    }
}

/// Which send endpoint a request came through (part of the idempotency fingerprint; batch
/// items are one-way messages like any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendKind {
    OneWay,
    Chat,
    Broadcast,
}

impl SendKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SendKind::OneWay => "one_way",
            SendKind::Chat => "chat",
            SendKind::Broadcast => "broadcast",
        }
    }
}

/// A send request that passed every check that needs no backend.
#[derive(Debug, Clone)]
pub(crate) struct SendInput {
    pub(crate) kind: SendKind,
    pub(crate) recipients: Vec<String>,
    pub(crate) content: String,
    pub(crate) priority: Priority,
    pub(crate) key: Option<String>,
    pub(crate) media_ids: Vec<String>,
}

impl SendInput {
    pub(crate) fn new(
        kind: SendKind,
        recipients: Vec<String>,
        content: String,
        priority: Option<Priority>,
        media_ids: Option<Vec<String>>,
        body_key: Option<String>,
        header_key: Option<&HeaderValue>,
    ) -> Result<SendInput, ApiError> {
        let key = idempotency_key(header_key, body_key)?;
        let chars = content.chars().count();
        if !(1..=MAX_CONTENT_CHARS).contains(&chars) {
            return Err(ApiError::invalid(format!("content must have 1 to {MAX_CONTENT_CHARS} characters"))
                .with_details(json!({ "field": "content" })));
        }
        let mut media_ids = media_ids.unwrap_or_default();
        media_ids.sort();
        media_ids.dedup();
        if media_ids.len() > MAX_MEDIA_PER_MESSAGE {
            return Err(ApiError::invalid(format!("a message carries at most {MAX_MEDIA_PER_MESSAGE} media"))
                .with_details(json!({ "field": "media_ids" })));
        }
        if kind == SendKind::Broadcast {
            check_broadcast_recipients(&recipients)?;
        }
        Ok(SendInput { kind, recipients, content, priority: priority.unwrap_or_default(), key, media_ids })
    }

    /// One item of a batch: the rules of `POST /v1/messages` (a wrong type is the item's 400).
    pub(crate) fn batch_item(item: serde_json::Value) -> Result<SendInput, ApiError> {
        let request: OneWayRequest = serde_path_to_error::deserialize(item).map_err(|error| {
            let field = error.path().to_string();
            ApiError::invalid(format!("invalid message: {}", error.inner())).with_details(json!({ "field": field }))
        })?;
        request.input(None)
    }

    /// Hash of everything that makes two requests "the same body": endpoint, recipients,
    /// content, priority and the set of media ids.
    pub(crate) fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(self.kind.as_str().as_bytes());
        field(&(self.recipients.len() as u64).to_le_bytes());
        for recipient in &self.recipients {
            field(recipient.as_bytes());
        }
        field(self.content.as_bytes());
        field(topics::messages_topic(self.priority).as_bytes());
        for media in &self.media_ids {
            field(media.as_bytes());
        }
        hash.finalize().iter().fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
    }
}

/// The key of a request: the header wins; header and body field both given and different is 400.
fn idempotency_key(header: Option<&HeaderValue>, body: Option<String>) -> Result<Option<String>, ApiError> {
    let invalid = |message: &str| ApiError::invalid(message).with_details(json!({ "field": "idempotency_key" }));
    let header = match header {
        Some(value) => Some(value.to_str().map_err(|_| invalid("idempotency key must be visible ascii"))?.to_owned()),
        None => None,
    };
    let key = match (header, body) {
        (Some(header), Some(body)) if header != body => {
            return Err(invalid("the Idempotency-Key header and idempotency_key differ"));
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => return Ok(None),
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(invalid("idempotency key must have 1 to 256 bytes"));
    }
    Ok(Some(key))
}

fn check_broadcast_recipients(recipients: &[String]) -> Result<(), ApiError> {
    if !(1..=MAX_BROADCAST_RECIPIENTS).contains(&recipients.len()) {
        return Err(ApiError::invalid(format!("recipient_ids must have 1 to {MAX_BROADCAST_RECIPIENTS} ids"))
            .with_details(json!({ "field": "recipient_ids" })));
    }
    let mut seen = HashSet::with_capacity(recipients.len());
    let mut duplicates: Vec<&str> = Vec::new();
    for recipient in recipients {
        if !seen.insert(recipient.as_str()) && duplicates.len() < 100 && !duplicates.contains(&recipient.as_str()) {
            duplicates.push(recipient);
        }
    }
    if !duplicates.is_empty() {
        return Err(ApiError::invalid("recipient_ids has duplicates")
            .with_details(json!({ "field": "recipient_ids", "duplicate_ids": duplicates })));
    }
    Ok(())
}

/// A batch's message list must have 1..1000 items (else the whole request is 400).
pub(crate) fn check_batch_size(messages: &[serde_json::Value]) -> Result<(), ApiError> {
    if !(1..=MAX_BATCH_MESSAGES).contains(&messages.len()) {
        return Err(ApiError::invalid(format!("messages must have 1 to {MAX_BATCH_MESSAGES} items"))
            .with_details(json!({ "field": "messages" })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: SendKind, recipients: &[&str], content: &str, priority: Option<Priority>) -> SendInput {
        let recipients = recipients.iter().map(|r| r.to_string()).collect();
        SendInput::new(kind, recipients, content.into(), priority, None, None, None).unwrap()
    }

    #[test]
    fn fingerprints_differ_by_endpoint_recipients_content_and_priority() {
        let base = input(SendKind::OneWay, &["m1"], "hi", None);
        assert_eq!(base.fingerprint(), input(SendKind::OneWay, &["m1"], "hi", Some(Priority::Normal)).fingerprint());
        for other in [
            input(SendKind::Chat, &["m1"], "hi", None),
            input(SendKind::OneWay, &["m2"], "hi", None),
            input(SendKind::OneWay, &["m1"], "hi!", None),
            input(SendKind::OneWay, &["m1"], "hi", Some(Priority::High)),
        ] {
            assert_ne!(base.fingerprint(), other.fingerprint());
        }
    }

    #[test]
    fn a_batch_item_is_a_one_way_message_with_its_own_errors() {
        let item = SendInput::batch_item(json!({"recipient_id": "m1", "content": "hi", "extra": 1})).unwrap();
        assert_eq!(item.fingerprint(), input(SendKind::OneWay, &["m1"], "hi", None).fingerprint());
        let error = SendInput::batch_item(json!({"recipient_id": "m1", "content": 5})).unwrap_err();
        assert_eq!(error.details.unwrap()["field"], "content");
        assert!(SendInput::batch_item(json!({"recipient_id": "m1", "content": ""})).is_err());
        assert!(SendInput::batch_item(json!("not an object")).is_err());
    }

    #[test]
    fn content_is_counted_in_unicode_scalar_values() {
        let make =
            |content: String| SendInput::new(SendKind::OneWay, vec!["m".into()], content, None, None, None, None);
        assert!(make("é".repeat(4096)).is_ok());
        assert!(make("é".repeat(4097)).is_err());
        assert!(make(String::new()).is_err());
    }

    #[test]
    fn header_key_wins_and_must_match_the_body() {
        let header = HeaderValue::from_static("k1");
        assert_eq!(idempotency_key(Some(&header), None).unwrap().as_deref(), Some("k1"));
        assert_eq!(idempotency_key(Some(&header), Some("k1".into())).unwrap().as_deref(), Some("k1"));
        assert_eq!(idempotency_key(None, Some("k2".into())).unwrap().as_deref(), Some("k2"));
        assert!(idempotency_key(Some(&header), Some("k2".into())).is_err());
        assert!(idempotency_key(None, Some(String::new())).is_err());
    }

    #[test]
    fn broadcast_recipients_are_bounded_and_unique() {
        assert!(check_broadcast_recipients(&[]).is_err());
        assert!(check_broadcast_recipients(&["a".into(), "b".into()]).is_ok());
        let error = check_broadcast_recipients(&["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert_eq!(error.details.unwrap()["duplicate_ids"], json!(["a"]));
    }

    #[test]
    fn batches_hold_1_to_1000_messages() {
        assert!(check_batch_size(&[]).is_err());
        assert!(check_batch_size(&vec![json!({}); 1000]).is_ok());
        assert!(check_batch_size(&vec![json!({}); 1001]).is_err());
    }
}
