//! The push stage: notifications for recipients who are offline (Req 3).
//!
//! The router appends a [`PushRequest`] to `esh.push.v1` for every message whose recipient
//! has no socket. [`stage::run`] is consumer group `push` on that topic: for each request it
//! reads the recipient (mobile, notifications enabled — Req 3.6) and its active devices, and
//! sends the notification to every one of them (Req 3.2, 3.4) through the [`PushSender`] of
//! the device's platform, a bounded number at a time. Each attempt is a status record on
//! `esh.status.v1` that the store projection puts in the message's timeline (channel
//! `push`, Req 3.7); a provider's answer moves the device's health
//! (Req 3.5: unregistered → inactive at once, 3 failures in a row → inactive, a success
//! resets the count). Retryable answers (5xx, throttling, timeouts) are retried with the
//! socket delivery's schedule (`common/src/retry.rs`); when it runs out on every device of a
//! message still `sent`, the message is dead-lettered like an unacknowledged delivery.
//! Offsets are committed once the attempts, device changes and failures are durable. A
//! push never marks a message `delivered`: only the device's ack does.
//!
//! Where things are:
//! - [`PushSender`], [`PushNotification`], [`PushOutcome`] (this file): the provider boundary.
//! - `fcm`: [`FcmPushSender`], FCM HTTP v1 with a service account (OAuth2 JWT-bearer grant).
//! - `apns`: [`ApnsPushSender`], APNs over HTTP/2 with an ES256 provider token.
//! - `stage`: the consumer of `esh.push.v1`, [`PushConfig`], [`Senders`].
//!
//! Without provider credentials there is no sender and the stage does not run; it never
//! pretends to send.

mod apns;
mod fcm;
mod stage;

pub use apns::{ApnsConfig, ApnsPushSender};
pub use fcm::{FcmConfig, FcmPushSender, ServiceAccount};
pub use stage::{run, PushConfig, Senders};

use std::time::Duration;

use async_trait::async_trait;
use esh_common::view::MediaView;
use esh_common::{Device, Priority};
pub use esh_common::records::{PushRequest, PREVIEW_CHARS};

/// Why a provider sender could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("unreadable {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("cannot build the http client: {0}")]
    Client(String),
}

/// What a notification shows and carries (Req 3.3). In privacy mode only the ids travel:
/// the app fetches the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNotification {
    pub message_id: String,
    /// The chat conversation to open; `None` for one-way messages.
    pub conversation_id: Option<String>,
    /// The sender's display name and the preview; `None` in privacy mode.
    pub display: Option<Display>,
    pub priority: Priority,
}

/// The visible part of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Display {
    pub sender_name: String,
    /// At most [`PREVIEW_CHARS`] characters of the content.
    pub preview: String,
    /// Attachments of the message (shown as a count; the app loads them).
    pub media_count: usize,
    /// A signed URL (valid one hour) of the first image attachment's medium thumbnail
    /// (300×300), which the providers show in the notification.
    pub image_url: Option<String>,
}

impl PushNotification {
    /// The notification of `request`, whose attachments are `media` (their signed views);
    /// `privacy` keeps only the ids.
    pub fn of(request: &PushRequest, media: &[MediaView], privacy: bool) -> Self {
        let display = (!privacy).then(|| Display {
            sender_name: request.sender_name.clone(),
            // The router already cut it; a record from elsewhere is held to the same rule.
            preview: esh_common::records::preview(&request.preview),
            media_count: request.media_ids.len(),
            image_url: media.iter().find_map(|view| view.thumbnails.as_ref()).map(|t| t.medium.url.clone()),
        });
        PushNotification {
            message_id: request.message_id.clone(),
            conversation_id: request.conversation_id.clone(),
            display,
            priority: request.priority,
        }
    }

    /// The ids the app needs to open the message: `message_id`, and `conversation_id` for chat.
    fn ids(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut ids = serde_json::Map::new();
        ids.insert("message_id".into(), self.message_id.clone().into());
        if let Some(conversation) = &self.conversation_id {
            ids.insert("conversation_id".into(), conversation.clone().into());
        }
        ids
    }
}

/// How a provider answered one notification to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted for delivery to the device (Req 3.7). The message stays `sent` until the
    /// device acknowledges it.
    Accepted,
    /// The token is unregistered or invalid: the device is deactivated at once.
    Unregistered { reason: String },
    /// The provider asks to slow down; retry after `retry_after` if it named a wait.
    Throttled { retry_after: Option<Duration> },
    /// The provider failed or could not be reached in time; worth retrying.
    Unavailable { error: String },
    /// Refused for good (a malformed request, credentials refused after one refresh).
    Rejected { error: String },
}

impl PushOutcome {
    /// The outcome's name in the attempt timeline.
    pub fn name(&self) -> &'static str {
        match self {
            PushOutcome::Accepted => "accepted",
            PushOutcome::Unregistered { .. } => "unregistered",
            PushOutcome::Throttled { .. } => "throttled",
            PushOutcome::Unavailable { .. } => "unavailable",
            PushOutcome::Rejected { .. } => "rejected",
        }
    }

    /// The error shown in the timeline, if any.
    pub fn error(&self) -> Option<String> {
        match self {
            PushOutcome::Accepted => None,
            PushOutcome::Unregistered { reason } => Some(reason.clone()),
            PushOutcome::Throttled { retry_after: Some(wait) } => {
                Some(format!("throttled, retry after {} s", wait.as_secs()))
            }
            PushOutcome::Throttled { retry_after: None } => Some("throttled".into()),
            PushOutcome::Unavailable { error } | PushOutcome::Rejected { error } => Some(error.clone()),
        }
    }
}

/// One push provider; implementations are named `<Provider>PushSender`.
#[async_trait]
pub trait PushSender: Send + Sync + 'static {
    /// Sends `notification` to `device` once (no retries inside, but a credential the
    /// provider refuses is renewed and the send made again, once) and maps the answer.
    async fn send(&self, device: &Device, notification: &PushNotification) -> PushOutcome;
    /// Succeeds while the provider's credentials can be obtained (readiness check).
    async fn check(&self) -> Result<(), String>;
}

/// `Retry-After` in whole seconds (the form both providers use).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The outcome of a request that got no answer (timeout, refused connection).
fn unreachable(error: &reqwest::Error) -> PushOutcome {
    let what = if error.is_timeout() { "timed out" } else { "unreachable" };
    PushOutcome::Unavailable { error: format!("provider {what}: {error}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_common::view::{ThumbnailView, Thumbnails};
    use esh_common::Millis;

    fn request(content: &str) -> PushRequest {
        PushRequest {
            recipient_id: "m1".into(),
            message_id: "01J00000000000000000000000".into(),
            conversation_id: Some("c1".into()),
            sender_id: "b1".into(),
            sender_name: "Acme".into(),
            preview: content.into(),
            priority: Priority::High,
            created_at: Millis(1),
            media_ids: vec!["media-1".into()],
            devices: Vec::new(),
            settled_elsewhere: false,
        }
    }

    fn image(id: &str) -> MediaView {
        let thumbnail =
            |size: &str| ThumbnailView { url: format!("https://cdn.test/{id}/{size}?sig=1"), width: 1, height: 1 };
        MediaView {
            id: id.into(),
            filename: format!("{id}.png"),
            content_type: "image/png".into(),
            size: 10,
            url: format!("https://cdn.test/{id}/original?sig=1"),
            expires_at: Millis(3_600_000),
            thumbnails: Some(Thumbnails {
                small: thumbnail("small"),
                medium: thumbnail("medium"),
                large: thumbnail("large"),
            }),
        }
    }

    #[test]
    fn notifications_carry_sender_preview_and_conversation_req_3_3() {
        let notification = PushNotification::of(&request(&"ü".repeat(150)), &[], false);
        let display = notification.display.expect("shown");
        assert_eq!(display.sender_name, "Acme");
        assert_eq!(display.preview, "ü".repeat(PREVIEW_CHARS));
        assert_eq!(display.media_count, 1);
        assert_eq!(display.image_url, None);
        assert_eq!(notification.conversation_id.as_deref(), Some("c1"));
    }

    #[test]
    fn notifications_show_the_first_image_attachment_as_its_medium_thumbnail() {
        let pdf = MediaView { content_type: "application/pdf".into(), thumbnails: None, ..image("doc") };
        let notification = PushNotification::of(&request("look"), &[pdf, image("p1"), image("p2")], false);
        let display = notification.display.expect("shown");
        assert_eq!(display.image_url.as_deref(), Some("https://cdn.test/p1/medium?sig=1"));
    }

    #[test]
    fn privacy_mode_keeps_only_the_ids() {
        let notification = PushNotification::of(&request("secret"), &[image("p1")], true);
        assert_eq!(notification.display, None);
        let ids = serde_json::Value::Object(notification.ids());
        assert_eq!(ids, serde_json::json!({"message_id": "01J00000000000000000000000", "conversation_id": "c1"}));
    }
}
