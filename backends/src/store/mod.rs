//! The message store: query-first tables (ARCHITECTURE.md "Data model"), one per read —
//! messages by conversation and time, one-way messages by recipient and by sender,
//! conversations by participant and last activity, undelivered messages by recipient,
//! status with a version, attempts by message, dead letters by time, broadcasts by id.
//! Nothing here assumes SQL: every read is a key plus a range, every write is keyed.

mod cached_media;
mod embedded;
mod media;

pub use cached_media::{CachedMediaCatalog, MEDIA_CACHE_ENTRIES};
pub use embedded::EmbeddedMessageStore;
pub use media::MediaCatalog;

use async_trait::async_trait;
use esh_common::{
    ActivityPosition, Attempt, Broadcast, BroadcastRecipient, Conversation, ConversationSummary, DeadLetter, Message,
    Millis, StatusApplied, StatusChange, StatusCounts, User,
};

use crate::error::BackendError;
pub use esh_common::records::IdempotencyRecord;

/// How far the store projection has applied one log partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition {
    pub topic: String,
    pub partition: u32,
    /// The offset of the first record not yet applied.
    pub next_offset: u64,
}

/// One batch of log records, folded by the projection (`router/src/projection.rs`) into
/// what the store writes: each message once, with the final status its batch gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// Broadcasts accepted (their recipients' messages arrive as messages of their own).
    pub broadcasts: Vec<Broadcast>,
    /// New messages, each with the status the batch's events left it in.
    pub messages: Vec<Message>,
    /// For each of `messages`, the changes folded into it, in log order: applied as
    /// changes instead when the message turns out to be stored already (its record was
    /// appended again, by a dead-letter retry or a redone broadcast expansion).
    pub folded: Vec<Vec<StatusChange>>,
    /// Status changes of messages not among `messages`, in log order.
    pub changes: Vec<StatusChange>,
    /// Answers of sends made under an idempotency key.
    pub idempotency: Vec<IdempotencyRecord>,
    /// Delivery attempts for the messages' timelines, in log order.
    pub attempts: Vec<Attempt>,
    /// The positions applied, one per partition the batch touched.
    pub positions: Vec<LogPosition>,
    /// The stored positions the batch was folded from, one per partition it touched (0
    /// where none was stored): `project` applies the batch only if they are still the
    /// stored ones. Empty: no check.
    pub folded_from: Vec<LogPosition>,
}

/// Which side of one-way messages a history read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneWayRole {
    /// Messages the user received (mobile).
    Recipient,
    /// Messages the user sent, broadcasts included (business).
    Sender,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Adds a user; `Conflict` if the id is taken.
    async fn create_user(&self, user: &User) -> Result<(), BackendError>;
    /// Replaces the stored user with the same id; `NotFound` if there is none.
    async fn update_user(&self, user: &User) -> Result<(), BackendError>;
    /// The user with this id.
    async fn user(&self, id: &str) -> Result<Option<User>, BackendError>;
    /// The users among `ids` that exist, in no particular order.
    async fn users(&self, ids: &[String]) -> Result<Vec<User>, BackendError>;

    /// The conversation of this business and mobile user; created atomically with `new_id`
    /// at `now` if the pair has none (two racing callers get the same conversation).
    async fn conversation_for_pair(
        &self,
        business_id: &str,
        mobile_id: &str,
        new_id: &str,
        now: Millis,
    ) -> Result<Conversation, BackendError>;
    /// The conversation with this id.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, BackendError>;
    /// `user`'s conversations ordered by their `ActivityPosition` descending, starting
    /// strictly after `after` (the last item of the previous page), with last message and
    /// unread count.
    async fn conversations(
        &self,
        user: &str,
        after: Option<ActivityPosition>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, BackendError>;

    /// Stores messages with their status (version 1), conversation activity, unread counts
    /// and undelivered entries, all in one transaction (Req 10.1). A message whose id is
    /// already stored is skipped, so inserting again is harmless (Req 10.3).
    async fn insert_messages(&self, messages: &[Message]) -> Result<(), BackendError>;
    /// The message with this id, with its current status.
    async fn message(&self, id: &str) -> Result<Option<Message>, BackendError>;
    /// The stored messages among `ids`, in no particular order.
    async fn messages(&self, ids: &[String]) -> Result<Vec<Message>, BackendError>;
    /// Chat messages of a conversation with id < `before`, newest first, at most `limit`.
    async fn conversation_messages(
        &self,
        conversation_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError>;
    /// One-way messages of `user` in `role` with id < `before`, newest first, at most `limit`.
    async fn one_way_messages(
        &self,
        user: &str,
        role: OneWayRole,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError>;
    /// Messages to `recipient` whose status is `sent` (not yet delivered), with id > `after`,
    /// oldest first, at most `limit`.
    async fn undelivered(&self, recipient: &str, after: Option<&str>, limit: usize)
        -> Result<Vec<Message>, BackendError>;

    /// Applies status changes in one transaction. Each takes effect only if it moves the
    /// message's status forward (`Status::can_move_to`), checked and written against the
    /// status row's version (optimistic concurrency, Req 10.2); changes to unknown messages
    /// and no-op changes are skipped. `Failed` adds a dead letter, leaving `Failed` removes
    /// it; unread counts and broadcast counts follow. Returns the changes that took effect.
    async fn apply_status(&self, changes: &[StatusChange]) -> Result<Vec<StatusApplied>, BackendError>;

    /// Appends delivery attempts to their messages' timelines (Req 4.7). Each call appends:
    /// an attempt recorded twice is listed twice. In production only the projection writes
    /// attempts, through [`MessageStore::project`], which applies each log record once.
    async fn record_attempts(&self, attempts: &[Attempt]) -> Result<(), BackendError>;
    /// The attempts of a message, oldest first.
    async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, BackendError>;
    /// Dead letters newest first (by failed_at then message id), starting strictly after `after`.
    async fn dead_letters(
        &self,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BackendError>;

    /// Records a broadcast as accepted, with all its recipients; `Conflict` if the id exists.
    async fn create_broadcast(&self, broadcast: &Broadcast) -> Result<(), BackendError>;
    /// The broadcast with this id (recipients included).
    async fn broadcast(&self, id: &str) -> Result<Option<Broadcast>, BackendError>;
    /// Counts of the broadcast's messages by status; recipients whose message is not yet
    /// created count as `sent`, so the counts always add up to the total.
    async fn broadcast_counts(&self, id: &str) -> Result<Option<StatusCounts>, BackendError>;
    /// Recipients of a broadcast in request order from index `from`, at most `limit`.
    async fn broadcast_recipients(
        &self,
        id: &str,
        from: usize,
        limit: usize,
    ) -> Result<Vec<BroadcastRecipient>, BackendError>;

    /// Applies one folded batch of the log in ONE transaction, together with its
    /// `positions`: after a crash the projection resumes exactly after what was applied
    /// (Req 10.1, 10.3). Broadcasts and messages already stored are skipped; changes apply
    /// as `apply_status` does, and a change to a message not stored yet is kept and folded
    /// into the message when it arrives (a status record may be read before its message's
    /// record: they are on different topics); attempts are appended as `record_attempts`
    /// does. `Conflict`, with nothing applied, when a position of `batch.folded_from` is no
    /// longer the stored one: another projection member applied some of these records
    /// meanwhile (a rebalance), and the batch must be folded again from the new positions.
    /// Returns the changes that took effect.
    async fn project(&self, batch: &Projection) -> Result<Vec<StatusApplied>, BackendError>;
    /// The positions applied so far, one per partition ever applied.
    async fn projected_positions(&self) -> Result<Vec<LogPosition>, BackendError>;
    /// The idempotency answers recorded at or after `since`, oldest first.
    async fn idempotency_records(&self, since: Millis) -> Result<Vec<IdempotencyRecord>, BackendError>;

    /// Succeeds while the store can be read and written (readiness check).
    async fn check(&self) -> Result<(), BackendError>;
}
