//! How values are written into columns and read back. Everything read is checked:
//! unknown enum names and malformed JSON are `Corrupt`, never a panic.

use esh_common::{
    Attempt, Broadcast, Channel, Conversation, DeadLetter, Message, MessageType, Millis, Permission, Priority, Status,
    User, UserKind,
};
use rusqlite::Row;

use super::engine::{corrupt, Failure};

/// The message columns in the order `message_from_row` reads them (table alias `m`).
macro_rules! message_columns {
    () => {
        "m.id, m.kind, m.sender_id, m.recipient_id, m.conversation_id, m.broadcast_id, m.priority, \
         m.created_at, m.status, m.status_changed_at, m.error, m.media_ids, m.content"
    };
}
pub(super) use message_columns;

pub(super) fn kind_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::OneWay => "one_way",
        MessageType::Chat => "chat",
    }
}

fn parse_kind(text: &str) -> Option<MessageType> {
    match text {
        "one_way" => Some(MessageType::OneWay),
        "chat" => Some(MessageType::Chat),
        _ => None,
    }
}

pub(super) fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

fn parse_priority(text: &str) -> Option<Priority> {
    match text {
        "high" => Some(Priority::High),
        "normal" => Some(Priority::Normal),
        "low" => Some(Priority::Low),
        _ => None,
    }
}

pub(super) fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Socket => "socket",
        Channel::Push => "push",
    }
}

fn parse_channel(text: &str) -> Option<Channel> {
    match text {
        "socket" => Some(Channel::Socket),
        "push" => Some(Channel::Push),
        _ => None,
    }
}

pub(super) fn parse_status(text: &str, owner: &str) -> Result<Status, Failure> {
    Status::parse(text).ok_or_else(|| corrupt(format!("{owner}: unknown status {text:?}")))
}

/// A list of strings (media ids, recipients) as a JSON array.
pub(super) fn encode_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(super) fn decode_list(text: &str, owner: &str) -> Result<Vec<String>, Failure> {
    serde_json::from_str(text).map_err(|error| corrupt(format!("{owner}: bad list: {error}")))
}

pub(super) fn encode_permissions(permissions: &[Permission]) -> String {
    serde_json::to_string(permissions).unwrap_or_else(|_| "[]".into())
}

pub(super) fn to_u64(value: i64, owner: &str) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| corrupt(format!("{owner}: negative number {value}")))
}

fn to_u32(value: i64, owner: &str) -> Result<u32, Failure> {
    u32::try_from(value).map_err(|_| corrupt(format!("{owner}: number out of range {value}")))
}

/// Columns: id, kind, display_name, created_at, permissions, verified, notifications_enabled.
pub(super) fn user_from_row(row: &Row<'_>) -> Result<User, Failure> {
    let id: String = row.get(0)?;
    // Borrowed, not copied: a broadcast check decodes 100,000 users at once.
    let kind = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
    let permissions = row.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?;
    Ok(User {
        kind: UserKind::parse(kind).ok_or_else(|| corrupt(format!("user {id}: unknown kind {kind:?}")))?,
        display_name: row.get(2)?,
        created_at: Millis(row.get(3)?),
        permissions: if permissions == "[]" {
            Vec::new()
        } else {
            serde_json::from_str(permissions).map_err(|error| corrupt(format!("user {id}: bad permissions: {error}")))?
        },
        verified: row.get(5)?,
        notifications_enabled: row.get(6)?,
        id,
    })
}

/// Columns: `message_columns!()`.
pub(super) fn message_from_row(row: &Row<'_>) -> Result<Message, Failure> {
    let id: String = row.get(0)?;
    let kind: String = row.get(1)?;
    let priority: String = row.get(6)?;
    let status: String = row.get(8)?;
    let media_ids: String = row.get(11)?;
    Ok(Message {
        kind: parse_kind(&kind).ok_or_else(|| corrupt(format!("message {id}: unknown type {kind:?}")))?,
        sender_id: row.get(2)?,
        recipient_id: row.get(3)?,
        conversation_id: row.get(4)?,
        broadcast_id: row.get(5)?,
        priority: parse_priority(&priority)
            .ok_or_else(|| corrupt(format!("message {id}: unknown priority {priority:?}")))?,
        created_at: Millis(row.get(7)?),
        status: parse_status(&status, &format!("message {id}"))?,
        status_changed_at: Millis(row.get(9)?),
        error: row.get(10)?,
        media_ids: decode_list(&media_ids, &format!("message {id}"))?,
        content: row.get(12)?,
        id,
    })
}

/// Columns: id, business_id, mobile_id, created_at, updated_at.
pub(super) fn conversation_from_row(row: &Row<'_>) -> Result<Conversation, Failure> {
    Ok(Conversation {
        id: row.get(0)?,
        business_id: row.get(1)?,
        mobile_id: row.get(2)?,
        created_at: Millis(row.get(3)?),
        updated_at: Millis(row.get(4)?),
    })
}

/// Columns: attempt, at, channel, outcome, error.
pub(super) fn attempt_from_row(message_id: &str, row: &Row<'_>) -> Result<Attempt, Failure> {
    let owner = format!("attempt of {message_id}");
    let channel: String = row.get(2)?;
    Ok(Attempt {
        message_id: message_id.to_owned(),
        attempt: to_u32(row.get(0)?, &owner)?,
        at: Millis(row.get(1)?),
        channel: parse_channel(&channel).ok_or_else(|| corrupt(format!("{owner}: unknown channel {channel:?}")))?,
        outcome: row.get(3)?,
        error: row.get(4)?,
    })
}

/// Columns: failed_at, message_id, attempts, error.
pub(super) fn dead_letter_from_row(row: &Row<'_>) -> Result<DeadLetter, Failure> {
    let message_id: String = row.get(1)?;
    Ok(DeadLetter {
        failed_at: Millis(row.get(0)?),
        attempts: to_u32(row.get(2)?, &format!("dead letter {message_id}"))?,
        error: row.get(3)?,
        message_id,
    })
}

/// Columns: id, sender_id, priority, first_message_id, created_at, media_ids, content, recipient_ids.
pub(super) fn broadcast_from_row(row: &Row<'_>) -> Result<Broadcast, Failure> {
    let id: String = row.get(0)?;
    let owner = format!("broadcast {id}");
    let priority: String = row.get(2)?;
    let media_ids: String = row.get(5)?;
    let recipient_ids: String = row.get(7)?;
    Ok(Broadcast {
        sender_id: row.get(1)?,
        priority: parse_priority(&priority)
            .ok_or_else(|| corrupt(format!("{owner}: unknown priority {priority:?}")))?,
        first_message_id: row.get(3)?,
        created_at: Millis(row.get(4)?),
        media_ids: decode_list(&media_ids, &owner)?,
        content: row.get(6)?,
        recipient_ids: decode_list(&recipient_ids, &owner)?,
        id,
    })
}

/// A `usize` limit or offset as an SQL integer.
pub(super) fn sql_int(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
