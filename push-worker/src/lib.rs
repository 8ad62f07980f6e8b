//! Push notifications for recipients who are offline (Req 3): the [`PushSender`] boundary
//! that FCM (Android) and APNs (iOS) senders implement, and the [`PushNotification`] they
//! carry (sender name, the first 100 characters of the content, conversation id — Req 3.3).
//!
//! This crate holds the contract only. There is deliberately no implementation yet — no
//! FCM or APNs client and no stand-in that pretends to send: the real senders, device
//! health (a token is suspect after 3 consecutive failures, Req 3.5) and the consumer of
//! `esh.push.v1` come in a later issue. Until then offline recipients get their messages
//! replayed when they connect; the router marks where the push hand-off plugs in.

use async_trait::async_trait;
use esh_common::Message;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Characters of the content a notification previews (Req 3.3).
pub const PREVIEW_CHARS: usize = 100;

/// The platform of a registered device, which decides its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Firebase Cloud Messaging.
    Android,
    /// Apple Push Notification service.
    Ios,
}

/// A device to notify: its platform and the provider's token for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceToken {
    pub platform: Platform,
    pub token: String,
}

/// What a notification shows: who wrote, a preview and where to open it (Req 3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushNotification {
    /// The message the notification is about.
    pub message_id: String,
    /// The sender's display name.
    pub sender_name: String,
    /// The first `PREVIEW_CHARS` characters (Unicode scalar values) of the content.
    pub preview: String,
    /// The chat conversation to open; `None` for one-way messages.
    pub conversation_id: Option<String>,
}

impl PushNotification {
    /// The notification of `message`, from a sender shown as `sender_name`.
    pub fn for_message(message: &Message, sender_name: &str) -> Self {
        PushNotification {
            message_id: message.id.clone(),
            sender_name: sender_name.to_owned(),
            preview: message.content.chars().take(PREVIEW_CHARS).collect(),
            conversation_id: message.conversation_id.clone(),
        }
    }
}

/// How a provider answered one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The provider accepted the notification for the device (Req 3.7).
    Delivered,
    /// The provider says the token is unknown or expired: the device should be deactivated.
    InvalidToken,
    /// Worth retrying (provider down, throttled, timed out), after `retry_after` if the
    /// provider named a wait.
    Transient { error: String, retry_after: Option<Duration> },
}

/// One push provider (FCM, APNs); implementations are named `<Provider>PushSender`.
#[async_trait]
pub trait PushSender: Send + Sync + 'static {
    /// Sends `notification` to `device` once (no retries inside) and reports the provider's answer.
    async fn send(&self, device: &DeviceToken, notification: &PushNotification) -> PushOutcome;
    /// Succeeds while the provider's credentials work and it can be reached (readiness check).
    async fn check(&self) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use esh_common::{MessageType, Millis, Priority, Status};
    use proptest::prelude::*;

    fn message(content: String, conversation: Option<&str>) -> Message {
        Message {
            id: "01J00000000000000000000000".into(),
            kind: if conversation.is_some() { MessageType::Chat } else { MessageType::OneWay },
            sender_id: "b1".into(),
            recipient_id: "m1".into(),
            conversation_id: conversation.map(str::to_owned),
            content,
            media_ids: vec![],
            priority: Priority::Normal,
            status: Status::Sent,
            status_changed_at: Millis(0),
            created_at: Millis(0),
            error: None,
            broadcast_id: None,
        }
    }

    #[test]
    fn notification_carries_sender_preview_and_conversation_req_3_3() {
        let long = "é".repeat(150);
        let notification = PushNotification::for_message(&message(long, Some("c1")), "Acme");
        assert_eq!(notification.sender_name, "Acme");
        assert_eq!(notification.preview.chars().count(), PREVIEW_CHARS);
        assert_eq!(notification.conversation_id.as_deref(), Some("c1"));
        let short = PushNotification::for_message(&message("hi".into(), None), "Acme");
        assert_eq!(short.preview, "hi");
        assert_eq!(short.conversation_id, None);
    }

    proptest! {
        #[test]
        fn preview_is_a_prefix_of_at_most_100_chars(content in "\\PC{0,300}") {
            let notification = PushNotification::for_message(&message(content.clone(), None), "x");
            prop_assert!(content.starts_with(&notification.preview));
            prop_assert_eq!(notification.preview.chars().count(), content.chars().count().min(PREVIEW_CHARS));
        }
    }
}
