//! The write requests, each run by the writer thread inside its batch transaction.
//! Every write is keyed; the only reads are point or prefix reads of the row being changed.

use esh_common::{
    Attempt, Broadcast, Conversation, Message, Millis, Priority, Status, StatusApplied, StatusChange, User,
};

use crate::store::{LogPosition, Projection};
use rusqlite::{params, Connection, OptionalExtension};

use super::codec::{channel_name, encode_list, encode_permissions, kind_name, parse_status, priority_name, to_u64};
use super::engine::{corrupt, Failure};
use crate::error::BackendError;

pub(super) fn create_user(connection: &Connection, user: &User) -> Result<(), Failure> {
    let inserted = connection
        .prepare_cached(
            "INSERT OR IGNORE INTO users \
             (id, kind, display_name, created_at, permissions, verified, notifications_enabled) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            user.id,
            user.kind.as_str(),
            user.display_name,
            user.created_at.0,
            encode_permissions(&user.permissions),
            user.verified,
            user.notifications_enabled,
        ])?;
    if inserted == 0 {
        return Err(Failure(BackendError::Conflict(format!("user {} exists", user.id))));
    }
    Ok(())
}

pub(super) fn update_user(connection: &Connection, user: &User) -> Result<(), Failure> {
    let updated = connection
        .prepare_cached(
            "UPDATE users SET kind = ?2, display_name = ?3, created_at = ?4, permissions = ?5, verified = ?6, \
             notifications_enabled = ?7 WHERE id = ?1",
        )?
        .execute(params![
            user.id,
            user.kind.as_str(),
            user.display_name,
            user.created_at.0,
            encode_permissions(&user.permissions),
            user.verified,
            user.notifications_enabled,
        ])?;
    if updated == 0 {
        return Err(Failure(BackendError::NotFound(format!("user {}", user.id))));
    }
    Ok(())
}

/// The conversation of the pair, created with both participants' index rows if missing.
/// Run by the single writer, so two racing callers get the same one.
pub(super) fn conversation_for_pair(
    connection: &Connection,
    business_id: &str,
    mobile_id: &str,
    new_id: &str,
    now: Millis,
) -> Result<Conversation, Failure> {
    if let Some(existing) = super::reads::pair_conversation(connection, business_id, mobile_id)? {
        return Ok(existing);
    }
    let inserted = connection
        .prepare_cached(
            "INSERT OR IGNORE INTO conversations (id, business_id, mobile_id, created_at, updated_at, last_message_id) \
             VALUES (?1, ?2, ?3, ?4, ?4, NULL)",
        )?
        .execute(params![new_id, business_id, mobile_id, now.0])?;
    if inserted == 0 {
        return Err(Failure(BackendError::Conflict(format!("conversation {new_id} exists for another pair"))));
    }
    connection
        .prepare_cached("INSERT INTO conversation_pairs (business_id, mobile_id, conversation_id) VALUES (?1, ?2, ?3)")?
        .execute(params![business_id, mobile_id, new_id])?;
    let mut index = connection.prepare_cached(
        "INSERT OR IGNORE INTO user_conversations (user_id, updated_at, conversation_id, last_message_id, unread) \
         VALUES (?1, ?2, ?3, NULL, 0)",
    )?;
    index.execute(params![business_id, now.0, new_id])?;
    index.execute(params![mobile_id, now.0, new_id])?;
    Ok(Conversation {
        id: new_id.to_owned(),
        business_id: business_id.to_owned(),
        mobile_id: mobile_id.to_owned(),
        created_at: now,
        updated_at: now,
    })
}

/// Stores new messages and what follows from them; ids already stored are skipped whole,
/// so counters move only for rows that are really new.
pub(super) fn insert_messages(connection: &Connection, messages: &[Message]) -> Result<(), Failure> {
    for message in messages {
        insert_message(connection, message)?;
    }
    Ok(())
}

/// Stores one new message and what follows from it; false if its id was already stored
/// (then nothing changes).
fn insert_message(connection: &Connection, message: &Message) -> Result<bool, Failure> {
    let inserted = connection
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (id, kind, sender_id, recipient_id, conversation_id, broadcast_id, \
             priority, created_at, status, status_changed_at, error, version, media_ids, content) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?13)",
        )?
        .execute(params![
            message.id,
            kind_name(message.kind),
            message.sender_id,
            message.recipient_id,
            message.conversation_id,
            message.broadcast_id,
            priority_name(message.priority),
            message.created_at.0,
            message.status.as_str(),
            message.status_changed_at.0,
            message.error,
            encode_list(&message.media_ids),
            message.content,
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    if !message.media_ids.is_empty() {
        super::media::record_media_use(connection, message)?;
    }
    match &message.conversation_id {
        Some(conversation_id) => {
            connection
                .prepare_cached("INSERT OR IGNORE INTO chat_messages (conversation_id, id) VALUES (?1, ?2)")?
                .execute(params![conversation_id, message.id])?;
            record_activity(connection, conversation_id, message)?;
        }
        None => {
            connection
                .prepare_cached("INSERT OR IGNORE INTO received_messages (recipient_id, id) VALUES (?1, ?2)")?
                .execute(params![message.recipient_id, message.id])?;
            connection
                .prepare_cached("INSERT OR IGNORE INTO sent_messages (sender_id, id) VALUES (?1, ?2)")?
                .execute(params![message.sender_id, message.id])?;
        }
    }
    if message.status == Status::Sent {
        add_undelivered(connection, &message.recipient_id, &message.id)?;
    }
    if let Some(broadcast_id) = &message.broadcast_id {
        // The counts already hold this recipient as `sent`.
        move_broadcast_count(connection, broadcast_id, Status::Sent, message.status)?;
    }
    if message.status == Status::Failed {
        add_dead_letter(
            connection,
            message.status_changed_at,
            &message.id,
            0,
            message.error.as_deref().unwrap_or_default(),
        )?;
    }
    Ok(true)
}

/// A new chat message: the conversation's last activity for both participants (if the
/// message is its newest) and the recipient's unread count (unless it is already read).
fn record_activity(connection: &Connection, conversation_id: &str, message: &Message) -> Result<(), Failure> {
    let conversation = connection
        .prepare_cached("SELECT business_id, mobile_id, updated_at, last_message_id FROM conversations WHERE id = ?1")?
        .query_row([conversation_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    let Some((business_id, mobile_id, updated_at, last_message_id)) = conversation else {
        tracing::warn!(message = %message.id, conversation = %conversation_id, "chat message for an unknown conversation");
        return Ok(());
    };
    let newest = last_message_id.as_deref().is_none_or(|last| message.id.as_str() > last);
    let (new_updated_at, new_last) = if newest {
        (updated_at.max(message.created_at.0), Some(message.id.as_str()))
    } else {
        (updated_at, last_message_id.as_deref())
    };
    if newest {
        connection
            .prepare_cached("UPDATE conversations SET updated_at = ?2, last_message_id = ?3 WHERE id = ?1")?
            .execute(params![conversation_id, new_updated_at, new_last])?;
    }
    let unread = i64::from(message.status != Status::Read);
    let mut participants = vec![business_id, mobile_id];
    participants.dedup();
    for participant in participants {
        let added = if participant == message.recipient_id { unread } else { 0 };
        // The row is keyed by its activity time: moving it re-keys it.
        let updated = connection
            .prepare_cached(
                "UPDATE user_conversations SET updated_at = ?4, last_message_id = ?5, unread = unread + ?6 \
                 WHERE user_id = ?1 AND updated_at = ?2 AND conversation_id = ?3",
            )?
            .execute(params![participant, updated_at, conversation_id, new_updated_at, new_last, added])?;
        if updated == 0 {
            tracing::warn!(conversation = %conversation_id, user = %participant, "conversation index row missing; recreated");
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO user_conversations \
                     (user_id, updated_at, conversation_id, last_message_id, unread) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![participant, new_updated_at, conversation_id, new_last, added])?;
        }
    }
    Ok(())
}

fn add_undelivered(connection: &Connection, recipient_id: &str, message_id: &str) -> Result<(), Failure> {
    connection
        .prepare_cached("INSERT OR IGNORE INTO undelivered (recipient_id, id) VALUES (?1, ?2)")?
        .execute(params![recipient_id, message_id])?;
    Ok(())
}

fn add_dead_letter(
    connection: &Connection,
    failed_at: Millis,
    message_id: &str,
    attempts: u32,
    error: &str,
) -> Result<(), Failure> {
    connection
        .prepare_cached(
            "INSERT OR REPLACE INTO dead_letters (failed_at, message_id, attempts, error) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![failed_at.0, message_id, attempts, error])?;
    Ok(())
}

/// One message of a broadcast moves from `from` to `to` in its counts.
fn move_broadcast_count(connection: &Connection, broadcast_id: &str, from: Status, to: Status) -> Result<(), Failure> {
    if from == to {
        return Ok(());
    }
    let mut counter = connection.prepare_cached(
        "UPDATE broadcast_counts SET count = max(count + ?3, 0) WHERE broadcast_id = ?1 AND status = ?2",
    )?;
    counter.execute(params![broadcast_id, from.as_str(), -1])?;
    counter.execute(params![broadcast_id, to.as_str(), 1])?;
    Ok(())
}

/// The current status row of a message and the ids a `StatusApplied` names.
struct StatusRow {
    sender_id: String,
    recipient_id: String,
    conversation_id: Option<String>,
    broadcast_id: Option<String>,
    status: String,
    status_changed_at: i64,
    version: i64,
}

/// Applies the changes in order; each is checked against the status row it read and
/// written only if that row's version is unchanged (the single writer makes that check
/// always pass here; it is what a lightweight transaction does in ScyllaDB).
///
/// A change to a message not stored yet is dropped, unless `keep_early`: then it is kept in
/// `early_statuses` and folded into the message when `project` inserts it.
pub(super) fn apply_status(
    connection: &Connection,
    changes: &[StatusChange],
    keep_early: bool,
) -> Result<Vec<StatusApplied>, Failure> {
    let mut applied = Vec::new();
    for change in changes {
        let current = connection
            .prepare_cached(
                "SELECT sender_id, recipient_id, conversation_id, broadcast_id, status, status_changed_at, version \
                 FROM messages WHERE id = ?1",
            )?
            .query_row([&change.message_id], |row| {
                Ok(StatusRow {
                    sender_id: row.get(0)?,
                    recipient_id: row.get(1)?,
                    conversation_id: row.get(2)?,
                    broadcast_id: row.get(3)?,
                    status: row.get(4)?,
                    status_changed_at: row.get(5)?,
                    version: row.get(6)?,
                })
            })
            .optional()?;
        let Some(current) = current else {
            if keep_early {
                keep_early_status(connection, change)?;
            }
            continue;
        };
        let previous = parse_status(&current.status, &format!("message {}", change.message_id))?;
        if !previous.can_move_to(change.status) {
            continue;
        }
        let error = if change.status == Status::Failed { change.error.as_deref() } else { None };
        let written = connection
            .prepare_cached(
                "UPDATE messages SET status = ?3, status_changed_at = ?4, error = ?5, version = version + 1 \
                 WHERE id = ?1 AND version = ?2",
            )?
            .execute(params![change.message_id, current.version, change.status.as_str(), change.at.0, error])?;
        if written == 0 {
            // Someone else changed the row since it was read: that change wins.
            continue;
        }
        let version = to_u64(current.version, &format!("message {}", change.message_id))? + 1;

        if previous == Status::Sent {
            connection
                .prepare_cached("DELETE FROM undelivered WHERE recipient_id = ?1 AND id = ?2")?
                .execute(params![current.recipient_id, change.message_id])?;
        }
        if change.status == Status::Sent {
            add_undelivered(connection, &current.recipient_id, &change.message_id)?;
        }
        if change.status == Status::Read {
            if let Some(conversation_id) = &current.conversation_id {
                mark_one_read(connection, conversation_id, &current.recipient_id)?;
            }
        }
        if let Some(broadcast_id) = &current.broadcast_id {
            move_broadcast_count(connection, broadcast_id, previous, change.status)?;
        }
        if previous == Status::Failed {
            connection
                .prepare_cached("DELETE FROM dead_letters WHERE failed_at = ?1 AND message_id = ?2")?
                .execute(params![current.status_changed_at, change.message_id])?;
        }
        if change.status == Status::Failed {
            add_dead_letter(
                connection,
                change.at,
                &change.message_id,
                change.attempts,
                change.error.as_deref().unwrap_or_default(),
            )?;
        }
        applied.push(StatusApplied {
            message_id: change.message_id.clone(),
            sender_id: current.sender_id,
            recipient_id: current.recipient_id,
            conversation_id: current.conversation_id,
            broadcast_id: current.broadcast_id,
            previous,
            status: change.status,
            at: change.at,
            version,
        });
    }
    Ok(applied)
}

/// One message to `reader` in the conversation became read.
fn mark_one_read(connection: &Connection, conversation_id: &str, reader: &str) -> Result<(), Failure> {
    let updated_at: Option<i64> = connection
        .prepare_cached("SELECT updated_at FROM conversations WHERE id = ?1")?
        .query_row([conversation_id], |row| row.get(0))
        .optional()?;
    let Some(updated_at) = updated_at else { return Ok(()) };
    connection
        .prepare_cached(
            "UPDATE user_conversations SET unread = max(unread - 1, 0) \
             WHERE user_id = ?1 AND updated_at = ?2 AND conversation_id = ?3",
        )?
        .execute(params![reader, updated_at, conversation_id])?;
    Ok(())
}

pub(super) fn record_attempts(connection: &Connection, attempts: &[Attempt]) -> Result<(), Failure> {
    for attempt in attempts {
        let next: i64 = connection
            .prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM attempts WHERE message_id = ?1")?
            .query_row([&attempt.message_id], |row| row.get(0))?;
        connection
            .prepare_cached(
                "INSERT INTO attempts (message_id, seq, attempt, at, channel, outcome, error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                attempt.message_id,
                next,
                attempt.attempt,
                attempt.at.0,
                channel_name(attempt.channel),
                attempt.outcome,
                attempt.error,
            ])?;
    }
    Ok(())
}

/// A broadcast as its `broadcasts` row stores it: the lists already JSON-encoded.
pub(super) struct BroadcastRow {
    id: String,
    sender_id: String,
    priority: Priority,
    first_message_id: String,
    created_at: Millis,
    media_ids: String,
    content: String,
    recipient_ids: String,
    total: usize,
}

impl BroadcastRow {
    pub(super) fn new(broadcast: &Broadcast) -> BroadcastRow {
        BroadcastRow {
            id: broadcast.id.clone(),
            sender_id: broadcast.sender_id.clone(),
            priority: broadcast.priority,
            first_message_id: broadcast.first_message_id.clone(),
            created_at: broadcast.created_at,
            media_ids: encode_list(&broadcast.media_ids),
            content: broadcast.content.clone(),
            recipient_ids: encode_list(&broadcast.recipient_ids),
            total: broadcast.recipient_ids.len(),
        }
    }
}

/// Keeps a change whose message is not stored yet, after the ones kept before it.
fn keep_early_status(connection: &Connection, change: &StatusChange) -> Result<(), Failure> {
    connection
        .prepare_cached(
            "INSERT INTO early_statuses (message_id, seq, status, at, error, attempts) \
             SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM early_statuses WHERE message_id = ?1",
        )?
        .execute(params![change.message_id, change.status.as_str(), change.at.0, change.error, change.attempts])?;
    Ok(())
}

/// Takes the changes kept for a message that is being inserted, oldest first.
fn take_early_statuses(connection: &Connection, message_id: &str) -> Result<Vec<StatusChange>, Failure> {
    let mut statement = connection.prepare_cached(
        "SELECT status, at, error, attempts FROM early_statuses WHERE message_id = ?1 ORDER BY seq",
    )?;
    let rows = statement.query_map([message_id], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, Option<String>>(2)?, row.get::<_, u32>(3)?))
    })?;
    let mut changes = Vec::new();
    for row in rows {
        let (status, at, error, attempts) = row?;
        let status = parse_status(&status, &format!("early status of {message_id}"))?;
        changes.push(StatusChange { message_id: message_id.to_owned(), status, at: Millis(at), error, attempts });
    }
    if !changes.is_empty() {
        connection
            .prepare_cached("DELETE FROM early_statuses WHERE message_id = ?1")?
            .execute([message_id])?;
    }
    Ok(changes)
}

/// How long idempotency answers are kept: as long as the key store remembers a key.
const IDEMPOTENCY_KEEP_MS: i64 = crate::cache::IDEMPOTENCY_TTL.as_millis() as i64;

/// Everything of one folded log batch, and the positions it reached, in the open
/// transaction (`MessageStore::project`).
pub(super) fn project(
    connection: &Connection,
    batch: &Projection,
    broadcasts: &[BroadcastRow],
) -> Result<Vec<StatusApplied>, Failure> {
    for expected in &batch.folded_from {
        let stored: Option<i64> = connection
            .prepare_cached("SELECT next_offset FROM projected_positions WHERE topic = ?1 AND partition = ?2")?
            .query_row(params![expected.topic, expected.partition], |row| row.get(0))
            .optional()?;
        if stored.unwrap_or(0) != stored_offset(expected)? {
            return Err(Failure(BackendError::Conflict(format!(
                "{}/{} was applied past {} meanwhile: fold the batch again",
                expected.topic, expected.partition, expected.next_offset
            ))));
        }
    }
    for broadcast in broadcasts {
        if broadcast_exists(connection, &broadcast.id)? {
            continue;
        }
        create_broadcast(connection, broadcast)?;
    }
    let mut applied = Vec::new();
    for (index, message) in batch.messages.iter().enumerate() {
        if let Some(conversation_id) = &message.conversation_id {
            ensure_conversation(connection, conversation_id, message)?;
        }
        let early = take_early_statuses(connection, &message.id)?;
        let mut folded = std::borrow::Cow::Borrowed(message);
        for change in &early {
            folded.to_mut().apply(change);
        }
        if !insert_message(connection, &folded)? {
            // A record of a message already stored (a dead-letter retry appends it again,
            // a broadcast expansion may be redone): the changes folded into it apply as
            // changes, in order, to the status it really has.
            let changes = batch.folded.get(index).map_or(&[][..], Vec::as_slice);
            applied.extend(apply_status(connection, changes, false)?);
        }
    }
    applied.extend(apply_status(connection, &batch.changes, true)?);
    record_attempts(connection, &batch.attempts)?;
    let mut oldest_kept = i64::MAX;
    for record in &batch.idempotency {
        connection
            .prepare_cached(
                "INSERT OR IGNORE INTO idempotency (at, key, fingerprint, status, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![record.at.0, record.key, record.fingerprint, record.status, record.body])?;
        oldest_kept = oldest_kept.min(record.at.0 - IDEMPOTENCY_KEEP_MS);
    }
    if oldest_kept != i64::MAX {
        // Expired answers leave as new ones arrive: one range delete on the primary key.
        connection.prepare_cached("DELETE FROM idempotency WHERE at < ?1")?.execute([oldest_kept])?;
    }
    for position in &batch.positions {
        let next_offset = stored_offset(position)?;
        connection
            .prepare_cached(
                "INSERT OR REPLACE INTO projected_positions (topic, partition, next_offset) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![position.topic, position.partition, next_offset])?;
    }
    Ok(applied)
}

/// A position's offset as the `projected_positions` table keeps it.
fn stored_offset(position: &LogPosition) -> Result<i64, Failure> {
    i64::try_from(position.next_offset).map_err(|_| corrupt("log offset out of range"))
}

fn broadcast_exists(connection: &Connection, id: &str) -> Result<bool, Failure> {
    Ok(connection
        .prepare_cached("SELECT 1 FROM broadcasts WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Creates the conversation of a chat message on its first message. The id is derived
/// from the pair (`ids::conversation_id`), which also tells which participant is the business.
fn ensure_conversation(connection: &Connection, conversation_id: &str, message: &Message) -> Result<(), Failure> {
    if super::reads::conversation(connection, conversation_id)?.is_some() {
        return Ok(());
    }
    let (sender, recipient) = (message.sender_id.as_str(), message.recipient_id.as_str());
    let (business, mobile) = if esh_common::ids::conversation_id(sender, recipient) == conversation_id {
        (sender, recipient)
    } else if esh_common::ids::conversation_id(recipient, sender) == conversation_id {
        (recipient, sender)
    } else {
        return Err(corrupt(format!("message {} names conversation {conversation_id} of another pair", message.id)));
    };
    conversation_for_pair(connection, business, mobile, conversation_id, message.created_at)?;
    Ok(())
}

pub(super) fn create_broadcast(connection: &Connection, broadcast: &BroadcastRow) -> Result<(), Failure> {
    let inserted = connection
        .prepare_cached(
            "INSERT OR IGNORE INTO broadcasts \
             (id, sender_id, priority, first_message_id, created_at, media_ids, content, recipient_ids) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            broadcast.id,
            broadcast.sender_id,
            priority_name(broadcast.priority),
            broadcast.first_message_id,
            broadcast.created_at.0,
            broadcast.media_ids,
            broadcast.content,
            broadcast.recipient_ids,
        ])?;
    if inserted == 0 {
        return Err(Failure(BackendError::Conflict(format!("broadcast {} exists", broadcast.id))));
    }
    let total = i64::try_from(broadcast.total).map_err(|_| corrupt("broadcast too large"))?;
    let mut counter = connection
        .prepare_cached("INSERT OR REPLACE INTO broadcast_counts (broadcast_id, status, count) VALUES (?1, ?2, ?3)")?;
    for status in Status::ALL {
        let count = if status == Status::Sent { total } else { 0 };
        counter.execute(params![broadcast.id, status.as_str(), count])?;
    }
    Ok(())
}
