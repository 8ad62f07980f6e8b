//! PLACEHOLDER: replaced by the SQLite store.
use async_trait::async_trait;
use esh_common::*;
use std::path::Path;
use super::{MessageStore, OneWayRole};
use crate::error::BackendError;

pub struct EmbeddedMessageStore;

impl EmbeddedMessageStore {
    pub fn open(_path: &Path) -> Result<Self, BackendError> { todo!() }
}

#[async_trait]
impl MessageStore for EmbeddedMessageStore {
    async fn create_user(&self, _user: &User) -> Result<(), BackendError> { todo!() }
    async fn update_user(&self, _user: &User) -> Result<(), BackendError> { todo!() }
    async fn user(&self, _id: &str) -> Result<Option<User>, BackendError> { todo!() }
    async fn users(&self, _ids: &[String]) -> Result<Vec<User>, BackendError> { todo!() }
    async fn conversation_for_pair(&self, _b: &str, _m: &str, _new_id: &str, _now: Millis) -> Result<Conversation, BackendError> { todo!() }
    async fn conversation(&self, _id: &str) -> Result<Option<Conversation>, BackendError> { todo!() }
    async fn conversations(&self, _user: &str, _after: Option<(Millis, String)>, _limit: usize) -> Result<Vec<ConversationSummary>, BackendError> { todo!() }
    async fn insert_messages(&self, _messages: &[Message]) -> Result<(), BackendError> { todo!() }
    async fn message(&self, _id: &str) -> Result<Option<Message>, BackendError> { todo!() }
    async fn messages(&self, _ids: &[String]) -> Result<Vec<Message>, BackendError> { todo!() }
    async fn conversation_messages(&self, _c: &str, _before: Option<&str>, _limit: usize) -> Result<Vec<Message>, BackendError> { todo!() }
    async fn one_way_messages(&self, _u: &str, _role: OneWayRole, _before: Option<&str>, _limit: usize) -> Result<Vec<Message>, BackendError> { todo!() }
    async fn undelivered(&self, _r: &str, _after: Option<&str>, _limit: usize) -> Result<Vec<Message>, BackendError> { todo!() }
    async fn apply_status(&self, _changes: &[StatusChange]) -> Result<Vec<StatusApplied>, BackendError> { todo!() }
    async fn record_attempts(&self, _attempts: &[Attempt]) -> Result<(), BackendError> { todo!() }
    async fn attempts(&self, _id: &str) -> Result<Vec<Attempt>, BackendError> { todo!() }
    async fn dead_letters(&self, _after: Option<(Millis, String)>, _limit: usize) -> Result<Vec<DeadLetter>, BackendError> { todo!() }
    async fn create_broadcast(&self, _b: &Broadcast) -> Result<(), BackendError> { todo!() }
    async fn broadcast(&self, _id: &str) -> Result<Option<Broadcast>, BackendError> { todo!() }
    async fn broadcast_counts(&self, _id: &str) -> Result<Option<StatusCounts>, BackendError> { todo!() }
    async fn broadcast_recipients(&self, _id: &str, _from: usize, _limit: usize) -> Result<Vec<BroadcastRecipient>, BackendError> { todo!() }
    async fn check(&self) -> Result<(), BackendError> { todo!() }
}
