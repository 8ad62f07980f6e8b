//! The embedded message store: one SQLite file in WAL mode with `synchronous=FULL`, so
//! every answered write survives a crash or power loss.
//!
//! - `schema`: the query-first tables, one per read (a ScyllaDB port maps them 1:1).
//! - `engine`: ONE writer thread owns the write connection; it drains the bounded queue
//!   of write requests and runs many of them in one transaction (group commit: ~100 rows
//!   per commit is ~17× the throughput of one, PERFORMANCE.md), each in its own savepoint,
//!   and answers every caller after the COMMIT. Reads use a pool of read-only connections
//!   on the blocking thread pool; WAL lets them run beside the writer.
//! - `writes` / `reads`: the operations; `codec`: columns ↔ model, checked on the way out.
//! - `devices`: the device registry (`DeviceRegistry`) on the same file and writer.
//! - `media`: the `MediaCatalog` of uploads, on the same file and writer.

mod codec;
mod devices;
mod engine;
mod media;
mod reads;
mod schema;
mod writes;

use async_trait::async_trait;
use esh_common::{
    ActivityPosition, Attempt, Broadcast, BroadcastRecipient, Conversation, ConversationSummary, DeadLetter, Message,
    Millis, StatusApplied, StatusChange, StatusCounts, User,
};
use std::path::Path;
use std::sync::Arc;

use self::engine::{Readers, Writer, READERS};
use super::{IdempotencyRecord, LogPosition, MessageStore, OneWayRole, Projection};
use crate::error::BackendError;

/// `MessageStore` on a local SQLite file.
pub struct EmbeddedMessageStore {
    writer: Writer,
    readers: Arc<Readers>,
}

impl EmbeddedMessageStore {
    /// Opens (creating if needed) the store file at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let connection = engine::open_writer(path).map_err(|failure| failure.0)?;
        schema::migrate(&connection).map_err(|failure| failure.0)?;
        let readers = Arc::new(Readers::open(path, READERS).map_err(|failure| failure.0)?);
        let writer = Writer::start(connection)?;
        Ok(EmbeddedMessageStore { writer, readers })
    }
}

impl Drop for EmbeddedMessageStore {
    /// Stops the writer thread once it has committed every queued request.
    fn drop(&mut self) {
        self.writer.stop();
    }
}

#[async_trait]
impl MessageStore for EmbeddedMessageStore {
    async fn create_user(&self, user: &User) -> Result<(), BackendError> {
        let user = user.clone();
        self.writer.write(1, move |connection| writes::create_user(connection, &user)).await
    }

    async fn update_user(&self, user: &User) -> Result<(), BackendError> {
        let user = user.clone();
        self.writer.write(1, move |connection| writes::update_user(connection, &user)).await
    }

    async fn user(&self, id: &str) -> Result<Option<User>, BackendError> {
        let id = id.to_owned();
        self.readers.read(move |connection| reads::user(connection, &id)).await
    }

    async fn users(&self, ids: &[String]) -> Result<Vec<User>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Sorted (cheap when the caller already sorted) and deduplicated, then handed to the
        // reader as one JSON array: one allocation instead of a copy of every id.
        let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let ids_json = serde_json::to_string(&sorted)
            .map_err(|error| BackendError::Unavailable(format!("cannot encode user ids: {error}")))?;
        self.readers.read(move |connection| reads::users(connection, &ids_json)).await
    }

    async fn conversation_for_pair(
        &self,
        business_id: &str,
        mobile_id: &str,
        new_id: &str,
        now: Millis,
    ) -> Result<Conversation, BackendError> {
        let (business_id, mobile_id) = (business_id.to_owned(), mobile_id.to_owned());
        // Most calls find the pair: answer those without a trip through the writer.
        let (business, mobile) = (business_id.clone(), mobile_id.clone());
        let existing =
            self.readers.read(move |connection| reads::pair_conversation(connection, &business, &mobile)).await?;
        if let Some(existing) = existing {
            return Ok(existing);
        }
        let new_id = new_id.to_owned();
        self.writer
            .write(1, move |connection| {
                writes::conversation_for_pair(connection, &business_id, &mobile_id, &new_id, now)
            })
            .await
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, BackendError> {
        let id = id.to_owned();
        self.readers.read(move |connection| reads::conversation(connection, &id)).await
    }

    async fn conversations(
        &self,
        user: &str,
        after: Option<ActivityPosition>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, BackendError> {
        let user = user.to_owned();
        self.readers.read(move |connection| reads::conversations(connection, &user, after, limit)).await
    }

    async fn insert_messages(&self, messages: &[Message]) -> Result<(), BackendError> {
        if messages.is_empty() {
            return Ok(());
        }
        let messages = messages.to_vec();
        self.writer.write(messages.len(), move |connection| writes::insert_messages(connection, &messages)).await
    }

    async fn message(&self, id: &str) -> Result<Option<Message>, BackendError> {
        let id = id.to_owned();
        self.readers.read(move |connection| reads::message(connection, &id)).await
    }

    async fn messages(&self, ids: &[String]) -> Result<Vec<Message>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.readers.read(move |connection| reads::messages(connection, &ids)).await
    }

    async fn conversation_messages(
        &self,
        conversation_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let conversation_id = conversation_id.to_owned();
        let before = before.map(str::to_owned);
        self.readers
            .read(move |connection| {
                reads::conversation_messages(connection, &conversation_id, before.as_deref(), limit)
            })
            .await
    }

    async fn one_way_messages(
        &self,
        user: &str,
        role: OneWayRole,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let user = user.to_owned();
        let before = before.map(str::to_owned);
        self.readers
            .read(move |connection| reads::one_way_messages(connection, &user, role, before.as_deref(), limit))
            .await
    }

    async fn undelivered(
        &self,
        recipient: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        let recipient = recipient.to_owned();
        let after = after.map(str::to_owned);
        self.readers.read(move |connection| reads::undelivered(connection, &recipient, after.as_deref(), limit)).await
    }

    async fn apply_status(&self, changes: &[StatusChange]) -> Result<Vec<StatusApplied>, BackendError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let changes = changes.to_vec();
        self.writer.write(changes.len(), move |connection| writes::apply_status(connection, &changes, false)).await
    }

    async fn record_attempts(&self, attempts: &[Attempt]) -> Result<(), BackendError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let attempts = attempts.to_vec();
        self.writer.write(attempts.len(), move |connection| writes::record_attempts(connection, &attempts)).await
    }

    async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, BackendError> {
        let message_id = message_id.to_owned();
        self.readers.read(move |connection| reads::attempts(connection, &message_id)).await
    }

    async fn dead_letters(
        &self,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        self.readers.read(move |connection| reads::dead_letters(connection, after, limit)).await
    }

    async fn create_broadcast(&self, broadcast: &Broadcast) -> Result<(), BackendError> {
        // The recipient list is encoded here, off the writer thread, and travels as one
        // string instead of a copy of every id.
        let row = writes::BroadcastRow::new(broadcast);
        let weight = 1 + broadcast.recipient_ids.len() / 1000;
        self.writer.write(weight, move |connection| writes::create_broadcast(connection, &row)).await
    }

    async fn project(&self, batch: &Projection) -> Result<Vec<StatusApplied>, BackendError> {
        // Recipient lists are encoded here, off the writer thread.
        let broadcasts: Vec<writes::BroadcastRow> = batch.broadcasts.iter().map(writes::BroadcastRow::new).collect();
        let weight = batch.messages.len()
            + batch.changes.len()
            + batch.attempts.len()
            + batch.broadcasts.iter().map(|b| 1 + b.recipient_ids.len() / 1000).sum::<usize>();
        let batch = Projection { broadcasts: Vec::new(), ..batch.clone() };
        self.writer.write(weight, move |connection| writes::project(connection, &batch, &broadcasts)).await
    }

    async fn projected_positions(&self) -> Result<Vec<LogPosition>, BackendError> {
        self.readers.read(reads::projected_positions).await
    }

    async fn idempotency_records(&self, since: Millis) -> Result<Vec<IdempotencyRecord>, BackendError> {
        self.readers.read(move |connection| reads::idempotency_records(connection, since)).await
    }

    async fn broadcast(&self, id: &str) -> Result<Option<Broadcast>, BackendError> {
        let id = id.to_owned();
        self.readers.read(move |connection| reads::broadcast(connection, &id)).await
    }

    async fn broadcast_counts(&self, id: &str) -> Result<Option<StatusCounts>, BackendError> {
        let id = id.to_owned();
        self.readers.read(move |connection| reads::broadcast_counts(connection, &id)).await
    }

    async fn broadcast_recipients(
        &self,
        id: &str,
        from: usize,
        limit: usize,
    ) -> Result<Vec<BroadcastRecipient>, BackendError> {
        let id = id.to_owned();
        self.readers.read(move |connection| reads::broadcast_recipients(connection, &id, from, limit)).await
    }

    async fn check(&self) -> Result<(), BackendError> {
        if !self.writer.is_running() {
            return Err(BackendError::Unavailable("store writer stopped".into()));
        }
        self.readers
            .read(|connection| {
                connection
                    .prepare_cached("SELECT count(*) FROM sqlite_schema")?
                    .query_row([], |row| row.get::<_, i64>(0))?;
                Ok(())
            })
            .await
    }
}
