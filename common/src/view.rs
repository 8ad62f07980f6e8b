//! The JSON form of a message as API.md shows it (HTTP answers and WebSocket frames alike).

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{Message, MessageType, Priority};
use crate::status::Status;
use crate::time::Millis;

/// A media object inside a message (`{id, filename, content_type, size, url, expires_at, thumbnails}`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MediaView {
    pub id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub url: String,
    pub expires_at: Millis,
    /// `{small, medium, large}` for images, absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnails: Option<Thumbnails>,
}

/// The thumbnails of an image, each fitting in 150×150, 300×300 and 600×600.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Thumbnails {
    pub small: ThumbnailView,
    pub medium: ThumbnailView,
    pub large: ThumbnailView,
}

/// One thumbnail: a signed URL (valid as long as its media object's `url`) and its size in pixels.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ThumbnailView {
    pub url: String,
    pub width: u32,
    pub height: u32,
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MessageView<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub sender_id: &'a str,
    pub recipient_id: &'a str,
    pub conversation_id: Option<&'a str>,
    pub content: &'a str,
    pub media: Vec<MediaView>,
    pub priority: Priority,
    /// True for one-way messages: they cannot be replied to.
    pub read_only: bool,
    pub status: Status,
    pub status_changed_at: Millis,
    pub created_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<&'a str>,
}

impl<'a> MessageView<'a> {
    /// The view of `message` with its media objects already resolved (URLs signed).
    pub fn new(message: &'a Message, media: Vec<MediaView>) -> Self {
        MessageView {
            id: &message.id,
            kind: message.kind,
            sender_id: &message.sender_id,
            recipient_id: &message.recipient_id,
            conversation_id: message.conversation_id.as_deref(),
            content: &message.content,
            media,
            priority: message.priority,
            read_only: message.kind == MessageType::OneWay,
            status: message.status,
            status_changed_at: message.status_changed_at,
            created_at: message.created_at,
            error: if message.status == Status::Failed { message.error.as_deref() } else { None },
            broadcast_id: message.broadcast_id.as_deref(),
        }
    }
}
