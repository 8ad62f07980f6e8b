//! How the WebSocket gateway hands a client's `send` frame to ingest without depending on
//! it: the server wires ingest in as a `ChatIngress`.

use async_trait::async_trait;
use serde::Deserialize;

use crate::error::ApiError;
use crate::model::{Message, Priority};

/// A chat send, as `POST /v1/chat/messages` and the `send` frame carry it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatRequest {
    pub to: String,
    pub content: String,
    #[serde(default)]
    pub media_ids: Vec<String>,
    pub priority: Option<Priority>,
    pub idempotency_key: Option<String>,
}

#[async_trait]
pub trait ChatIngress: Send + Sync + 'static {
    /// Sends a chat message from user `sender_id` with every check of
    /// `POST /v1/chat/messages` (rate limit, validation, permissions, idempotency) and
    /// returns the accepted message (status `sent`, durable in the log).
    async fn send_chat(&self, sender_id: &str, request: ChatRequest) -> Result<Message, ApiError>;
}
