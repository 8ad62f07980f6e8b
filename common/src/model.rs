//! The domain types of the contract (API.md). Their serde form is the JSON the API answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::status::Status;
use crate::time::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    Business,
    Mobile,
    Admin,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Business => "business",
            UserKind::Mobile => "mobile",
            UserKind::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<UserKind> {
        [UserKind::Business, UserKind::Mobile, UserKind::Admin].into_iter().find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Send,
    Chat,
}

/// A user of the directory. `permissions` matter for businesses, `verified` and
/// `notifications_enabled` for mobile users (the API shows only the ones of its kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub kind: UserKind,
    pub display_name: String,
    pub created_at: Millis,
    pub permissions: Vec<Permission>,
    pub verified: bool,
    pub notifications_enabled: bool,
}

impl User {
    pub fn has(&self, permission: Permission) -> bool {
        self.kind == UserKind::Business && self.permissions.contains(&permission)
    }

    /// Whether `id` is 1..64 chars of `[A-Za-z0-9_.:-]`.
    pub fn is_valid_id(id: &str) -> bool {
        (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    OneWay,
    Chat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// A message as stored and as carried by the log. `media_ids` are resolved to media
/// objects (with freshly signed URLs) when the message is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub sender_id: String,
    pub recipient_id: String,
    pub conversation_id: Option<String>,
    pub content: String,
    pub media_ids: Vec<String>,
    pub priority: Priority,
    pub status: Status,
    pub status_changed_at: Millis,
    pub created_at: Millis,
    pub error: Option<String>,
    /// The broadcast this one-way message is part of.
    pub broadcast_id: Option<String>,
}

impl Message {
    /// The log partition key: the conversation id for chat, `ow:{business}:{mobile}` for
    /// one-way messages, so that each pair's messages stay in order.
    pub fn partition_key(&self) -> String {
        match &self.conversation_id {
            Some(conversation) => conversation.clone(),
            None => one_way_key(&self.sender_id, &self.recipient_id),
        }
    }
}

/// Who a message's status changes concern: enough to route and project a status event
/// without reading the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRoute {
    pub sender_id: String,
    pub recipient_id: String,
    pub conversation_id: Option<String>,
    pub broadcast_id: Option<String>,
}

impl Message {
    /// Moves the message to `change`'s status if that moves it forward; says whether it did.
    pub fn apply(&mut self, change: &StatusChange) -> bool {
        if !self.status.can_move_to(change.status) {
            return false;
        }
        self.status = change.status;
        self.status_changed_at = change.at;
        self.error = if change.status == Status::Failed { change.error.clone() } else { None };
        true
    }

    pub fn route(&self) -> MessageRoute {
        MessageRoute {
            sender_id: self.sender_id.clone(),
            recipient_id: self.recipient_id.clone(),
            conversation_id: self.conversation_id.clone(),
            broadcast_id: self.broadcast_id.clone(),
        }
    }
}

pub fn one_way_key(business: &str, mobile: &str) -> String {
    format!("ow:{business}:{mobile}")
}

/// A conversation between one business and one mobile user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    pub id: String,
    pub business_id: String,
    pub mobile_id: String,
    pub created_at: Millis,
    /// Time of the last message (created_at until the first one).
    pub updated_at: Millis,
}

impl Conversation {
    pub fn has_participant(&self, user: &str) -> bool {
        self.business_id == user || self.mobile_id == user
    }

    pub fn peer_of(&self, user: &str) -> &str {
        if self.business_id == user {
            &self.mobile_id
        } else {
            &self.business_id
        }
    }
}

/// One line of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    pub last_message: Option<Message>,
    /// Messages of the conversation addressed to the viewing user that are not read.
    pub unread_count: u64,
}

impl ConversationSummary {
    /// Where this line stands in the list.
    pub fn position(&self) -> ActivityPosition {
        ActivityPosition {
            updated_at: self.conversation.updated_at,
            last_message_id: self.last_message.as_ref().map(|message| message.id.clone()).unwrap_or_default(),
            conversation_id: self.conversation.id.clone(),
        }
    }
}

/// A place in a conversation list, which is ordered by this key descending: last activity,
/// then, within one millisecond, the last message id (ids are time-ordered, so the most recent
/// message wins the tie), then the conversation id. An empty conversation has no last message
/// id (empty here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityPosition {
    pub updated_at: Millis,
    pub last_message_id: String,
    pub conversation_id: String,
}

/// A requested status change, applied only if it moves the status forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub message_id: String,
    pub status: Status,
    pub at: Millis,
    /// Why the message failed (with `Failed`).
    pub error: Option<String>,
    /// Delivery attempts made (with `Failed`, for the dead-letter entry).
    pub attempts: u32,
}

/// A status change that took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusApplied {
    pub message_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub conversation_id: Option<String>,
    pub broadcast_id: Option<String>,
    pub previous: Status,
    pub status: Status,
    pub at: Millis,
    /// The status row's version after the change (optimistic concurrency, Req 10.2).
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Socket,
    Push,
}

/// One delivery attempt of a message (Req 4.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    #[serde(skip)]
    pub message_id: String,
    pub attempt: u32,
    pub at: Millis,
    pub channel: Channel,
    /// `delivered`, `timeout`, `disconnected`, …
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub message_id: String,
    pub attempts: u32,
    pub error: String,
    pub failed_at: Millis,
}

/// A broadcast as accepted: its per-recipient message ids are `ids::nth_in_block(first_message_id, i)`
/// for the i-th recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcast {
    pub id: String,
    pub sender_id: String,
    pub recipient_ids: Vec<String>,
    pub content: String,
    pub media_ids: Vec<String>,
    pub priority: Priority,
    pub first_message_id: String,
    pub created_at: Millis,
}

impl Broadcast {
    /// The message of the `index`th recipient, as the router creates it.
    pub fn message(&self, index: usize) -> Option<Message> {
        let recipient = self.recipient_ids.get(index)?;
        Some(Message {
            id: crate::ids::nth_in_block(&self.first_message_id, index as u32)?,
            kind: MessageType::OneWay,
            sender_id: self.sender_id.clone(),
            recipient_id: recipient.clone(),
            conversation_id: None,
            content: self.content.clone(),
            media_ids: self.media_ids.clone(),
            priority: self.priority,
            status: Status::Sent,
            status_changed_at: self.created_at,
            created_at: self.created_at,
            error: None,
            broadcast_id: Some(self.id.clone()),
        })
    }
}

/// Message counts of a broadcast by status; they add up to its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct StatusCounts {
    pub pending: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub failed: u64,
}

/// One recipient of a broadcast and the state of its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BroadcastRecipient {
    pub recipient_id: String,
    pub message_id: String,
    pub status: Status,
}

/// The platform of a registered device, which decides its push provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Firebase Cloud Messaging.
    Android,
    /// Apple Push Notification service.
    Ios,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
        }
    }

    pub fn parse(text: &str) -> Option<Platform> {
        [Platform::Android, Platform::Ios].into_iter().find(|p| p.as_str() == text)
    }
}

/// A device registered for push notifications (API.md "Devices and preferences"). A token
/// belongs to one user at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    #[serde(skip)]
    pub user_id: String,
    pub platform: Platform,
    /// The provider's token for the device (FCM registration token, APNs device token).
    pub token: String,
    /// Inactive devices get no notifications: the provider declared the token unregistered,
    /// or it failed `failures` times in a row (Req 3.5).
    pub active: bool,
    /// Consecutive failed notifications; a success resets it.
    pub failures: u32,
    pub created_at: Millis,
}

/// One stored form of a media object: the uploaded file, or one of its thumbnails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaVariant {
    Original,
    Small,
    Medium,
    Large,
}

impl MediaVariant {
    /// The thumbnail sizes, smallest first.
    pub const THUMBNAILS: [MediaVariant; 3] = [MediaVariant::Small, MediaVariant::Medium, MediaVariant::Large];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaVariant::Original => "original",
            MediaVariant::Small => "small",
            MediaVariant::Medium => "medium",
            MediaVariant::Large => "large",
        }
    }

    pub fn parse(text: &str) -> Option<MediaVariant> {
        [MediaVariant::Original, MediaVariant::Small, MediaVariant::Medium, MediaVariant::Large]
            .into_iter()
            .find(|variant| variant.as_str() == text)
    }

    /// The square a thumbnail fits in (API.md: 150, 300, 600); `None` for the original.
    pub fn bound(self) -> Option<u32> {
        match self {
            MediaVariant::Original => None,
            MediaVariant::Small => Some(150),
            MediaVariant::Medium => Some(300),
            MediaVariant::Large => Some(600),
        }
    }
}

/// A thumbnail of an image, stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub variant: MediaVariant,
    pub width: u32,
    pub height: u32,
    pub content_type: String,
    pub size: u64,
}

/// An uploaded file (API.md "Media"). Its blobs are under `blob_key(id, variant)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub id: String,
    /// The user who uploaded it.
    pub owner_id: String,
    /// The file name as uploaded, reduced to its last path component.
    pub filename: String,
    /// The declared content type, checked against the bytes.
    pub content_type: String,
    pub size: u64,
    pub created_at: Millis,
    /// The three thumbnails of an image, smallest first; empty for other media.
    pub thumbnails: Vec<Thumbnail>,
}

impl Media {
    /// The key of a variant's blob in the blob store.
    pub fn blob_key(id: &str, variant: MediaVariant) -> String {
        format!("media/{id}/{}", variant.as_str())
    }

    /// The content type and size of a stored variant, if it exists.
    pub fn variant(&self, variant: MediaVariant) -> Option<(&str, u64)> {
        match variant {
            MediaVariant::Original => Some((&self.content_type, self.size)),
            _ => self
                .thumbnails
                .iter()
                .find(|thumbnail| thumbnail.variant == variant)
                .map(|thumbnail| (thumbnail.content_type.as_str(), thumbnail.size)),
        }
    }
}
