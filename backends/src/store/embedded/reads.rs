//! The reads, each a key plus a range on one table (and point reads of the rows it names),
//! run on a pooled read-only connection.

use esh_common::{
    ids, ActivityPosition, Attempt, Broadcast, BroadcastRecipient, Conversation, ConversationSummary, DeadLetter, Message,
    Millis, Status, StatusCounts, User,
};
use rusqlite::{params, Connection, OptionalExtension, Params, Row};

use super::codec::{
    attempt_from_row, broadcast_from_row, conversation_from_row, dead_letter_from_row, message_columns,
    message_from_row, parse_status, sql_int, to_u64, user_from_row,
};
use super::engine::{corrupt, Failure};
use crate::store::{IdempotencyRecord, LogPosition, OneWayRole};

/// Runs a query and decodes every row.
fn rows<T>(
    connection: &Connection,
    sql: &str,
    parameters: impl Params,
    decode: impl Fn(&Row<'_>) -> Result<T, Failure>,
) -> Result<Vec<T>, Failure> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(parameters)?;
    let mut items = Vec::new();
    while let Some(row) = rows.next()? {
        items.push(decode(row)?);
    }
    Ok(items)
}

pub(super) fn user(connection: &Connection, id: &str) -> Result<Option<User>, Failure> {
    let mut statement = connection.prepare_cached(
        "SELECT id, kind, display_name, created_at, permissions, verified, notifications_enabled \
         FROM users WHERE id = ?1",
    )?;
    let mut rows = statement.query([id])?;
    rows.next()?.map(user_from_row).transpose()
}

/// The users whose ids are in `ids_json` (a JSON array of strings), in one statement: the
/// list is walked by `json_each` and each id is one primary-key search, so the caller
/// passes it sorted (neighbouring searches then touch the same pages) and without
/// duplicates (each user comes back once per occurrence).
pub(super) fn users(connection: &Connection, ids_json: &str) -> Result<Vec<User>, Failure> {
    rows(
        connection,
        "SELECT u.id, u.kind, u.display_name, u.created_at, u.permissions, u.verified, u.notifications_enabled \
         FROM json_each(?1) AS j CROSS JOIN users AS u ON u.id = j.value",
        [ids_json],
        user_from_row,
    )
}

pub(super) fn conversation(connection: &Connection, id: &str) -> Result<Option<Conversation>, Failure> {
    let mut statement = connection
        .prepare_cached("SELECT id, business_id, mobile_id, created_at, updated_at FROM conversations WHERE id = ?1")?;
    let mut rows = statement.query([id])?;
    rows.next()?.map(conversation_from_row).transpose()
}

/// The conversation of a business and mobile pair, if they have one.
pub(super) fn pair_conversation(
    connection: &Connection,
    business_id: &str,
    mobile_id: &str,
) -> Result<Option<Conversation>, Failure> {
    let id: Option<String> = connection
        .prepare_cached("SELECT conversation_id FROM conversation_pairs WHERE business_id = ?1 AND mobile_id = ?2")?
        .query_row([business_id, mobile_id], |row| row.get(0))
        .optional()?;
    let Some(id) = id else { return Ok(None) };
    match conversation(connection, &id)? {
        Some(found) => Ok(Some(found)),
        None => Err(corrupt(format!("pair {business_id}/{mobile_id} names missing conversation {id}"))),
    }
}

pub(super) fn conversations(
    connection: &Connection,
    user: &str,
    after: Option<ActivityPosition>,
    limit: usize,
) -> Result<Vec<ConversationSummary>, Failure> {
    let snapshot = connection.unchecked_transaction()?;
    let index_row = |row: &Row<'_>| -> Result<(String, Option<String>, i64), Failure> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    };
    // The order of `ActivityPosition`: an empty conversation's missing last message sorts as ''.
    let index = match &after {
        Some(after) => rows(
            &snapshot,
            "SELECT conversation_id, last_message_id, unread FROM user_conversations \
             WHERE user_id = ?1 AND (updated_at, coalesce(last_message_id, ''), conversation_id) < (?2, ?3, ?4) \
             ORDER BY updated_at DESC, coalesce(last_message_id, '') DESC, conversation_id DESC LIMIT ?5",
            params![user, after.updated_at.0, after.last_message_id, after.conversation_id, sql_int(limit)],
            index_row,
        )?,
        None => rows(
            &snapshot,
            "SELECT conversation_id, last_message_id, unread FROM user_conversations \
             WHERE user_id = ?1 ORDER BY updated_at DESC, coalesce(last_message_id, '') DESC, conversation_id DESC \
             LIMIT ?2",
            params![user, sql_int(limit)],
            index_row,
        )?,
    };
    let mut summaries = Vec::with_capacity(index.len());
    for (conversation_id, last_message_id, unread) in index {
        let conversation = conversation(&snapshot, &conversation_id)?
            .ok_or_else(|| corrupt(format!("conversation index of {user} names missing {conversation_id}")))?;
        let last_message = match last_message_id {
            Some(id) => Some(
                message(&snapshot, &id)?
                    .ok_or_else(|| corrupt(format!("conversation {conversation_id} names missing message {id}")))?,
            ),
            None => None,
        };
        summaries.push(ConversationSummary {
            conversation,
            last_message,
            unread_count: to_u64(unread, &format!("unread count of {user} in {conversation_id}"))?,
        });
    }
    Ok(summaries)
}

fn collect_messages(connection: &Connection, sql: &str, parameters: impl Params) -> Result<Vec<Message>, Failure> {
    rows(connection, sql, parameters, message_from_row)
}

pub(super) fn message(connection: &Connection, id: &str) -> Result<Option<Message>, Failure> {
    let mut statement =
        connection.prepare_cached(concat!("SELECT ", message_columns!(), " FROM messages m WHERE m.id = ?1"))?;
    let mut rows = statement.query([id])?;
    rows.next()?.map(message_from_row).transpose()
}

pub(super) fn messages(connection: &Connection, ids: &[String]) -> Result<Vec<Message>, Failure> {
    let snapshot = connection.unchecked_transaction()?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(message) = message(&snapshot, id)? {
            found.push(message);
        }
    }
    Ok(found)
}

/// An upper bound above every id, so that "no cursor" is the same range read as any cursor.
const ABOVE_EVERY_ID: &str = "\u{10FFFF}";
/// A lower bound below every id.
const BELOW_EVERY_ID: &str = "";

pub(super) fn conversation_messages(
    connection: &Connection,
    conversation_id: &str,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Message>, Failure> {
    collect_messages(
        connection,
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM chat_messages c CROSS JOIN messages m ON m.id = c.id \
             WHERE c.conversation_id = ?1 AND c.id < ?2 ORDER BY c.id DESC LIMIT ?3"
        ),
        params![conversation_id, before.unwrap_or(ABOVE_EVERY_ID), sql_int(limit)],
    )
}

pub(super) fn one_way_messages(
    connection: &Connection,
    user: &str,
    role: OneWayRole,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Message>, Failure> {
    let sql = match role {
        OneWayRole::Recipient => concat!(
            "SELECT ",
            message_columns!(),
            " FROM received_messages o CROSS JOIN messages m ON m.id = o.id \
             WHERE o.recipient_id = ?1 AND o.id < ?2 ORDER BY o.id DESC LIMIT ?3"
        ),
        OneWayRole::Sender => concat!(
            "SELECT ",
            message_columns!(),
            " FROM sent_messages o CROSS JOIN messages m ON m.id = o.id \
             WHERE o.sender_id = ?1 AND o.id < ?2 ORDER BY o.id DESC LIMIT ?3"
        ),
    };
    collect_messages(connection, sql, params![user, before.unwrap_or(ABOVE_EVERY_ID), sql_int(limit)])
}

pub(super) fn undelivered(
    connection: &Connection,
    recipient_id: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Message>, Failure> {
    collect_messages(
        connection,
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM undelivered u CROSS JOIN messages m ON m.id = u.id \
             WHERE u.recipient_id = ?1 AND u.id > ?2 ORDER BY u.id LIMIT ?3"
        ),
        params![recipient_id, after.unwrap_or(BELOW_EVERY_ID), sql_int(limit)],
    )
}

pub(super) fn attempts(connection: &Connection, message_id: &str) -> Result<Vec<Attempt>, Failure> {
    rows(
        connection,
        "SELECT attempt, at, channel, outcome, error FROM attempts WHERE message_id = ?1 ORDER BY seq",
        [message_id],
        |row| attempt_from_row(message_id, row),
    )
}

pub(super) fn dead_letters(
    connection: &Connection,
    after: Option<(Millis, String)>,
    limit: usize,
) -> Result<Vec<DeadLetter>, Failure> {
    let limit = sql_int(limit);
    match after {
        Some((time, id)) => rows(
            connection,
            "SELECT failed_at, message_id, attempts, error FROM dead_letters \
             WHERE (failed_at, message_id) < (?1, ?2) ORDER BY failed_at DESC, message_id DESC LIMIT ?3",
            params![time.0, id, limit],
            dead_letter_from_row,
        ),
        None => rows(
            connection,
            "SELECT failed_at, message_id, attempts, error FROM dead_letters \
             ORDER BY failed_at DESC, message_id DESC LIMIT ?1",
            params![limit],
            dead_letter_from_row,
        ),
    }
}

pub(super) fn broadcast(connection: &Connection, id: &str) -> Result<Option<Broadcast>, Failure> {
    let mut statement = connection.prepare_cached(
        "SELECT id, sender_id, priority, first_message_id, created_at, media_ids, content, recipient_ids \
         FROM broadcasts WHERE id = ?1",
    )?;
    let mut rows = statement.query([id])?;
    rows.next()?.map(broadcast_from_row).transpose()
}

/// One range read of the counter rows.
pub(super) fn broadcast_counts(connection: &Connection, id: &str) -> Result<Option<StatusCounts>, Failure> {
    let mut statement =
        connection.prepare_cached("SELECT status, count FROM broadcast_counts WHERE broadcast_id = ?1")?;
    let mut rows = statement.query([id])?;
    let mut counts = StatusCounts::default();
    let mut any = false;
    while let Some(row) = rows.next()? {
        any = true;
        let owner = format!("counts of broadcast {id}");
        let status = parse_status(&row.get::<_, String>(0)?, &owner)?;
        let count = to_u64(row.get(1)?, &owner)?;
        let slot = match status {
            Status::Pending => &mut counts.pending,
            Status::Sent => &mut counts.sent,
            Status::Delivered => &mut counts.delivered,
            Status::Read => &mut counts.read,
            Status::Failed => &mut counts.failed,
        };
        *slot = count;
    }
    Ok(any.then_some(counts))
}

pub(super) fn broadcast_recipients(
    connection: &Connection,
    id: &str,
    from: usize,
    limit: usize,
) -> Result<Vec<BroadcastRecipient>, Failure> {
    let snapshot = connection.unchecked_transaction()?;
    let Some(broadcast) = broadcast(&snapshot, id)? else { return Ok(Vec::new()) };
    let mut status_of = snapshot.prepare_cached("SELECT status FROM messages WHERE id = ?1")?;
    let mut page = Vec::new();
    for (index, recipient_id) in broadcast.recipient_ids.iter().enumerate().skip(from).take(limit) {
        let message_id = u32::try_from(index)
            .ok()
            .and_then(|index| ids::nth_in_block(&broadcast.first_message_id, index))
            .ok_or_else(|| corrupt(format!("broadcast {id}: bad first message id {:?}", broadcast.first_message_id)))?;
        let stored: Option<String> = status_of.query_row([&message_id], |row| row.get(0)).optional()?;
        let status = match stored {
            Some(text) => parse_status(&text, &format!("message {message_id}"))?,
            None => Status::Sent,
        };
        page.push(BroadcastRecipient { recipient_id: recipient_id.clone(), message_id, status });
    }
    Ok(page)
}

pub(super) fn projected_positions(connection: &Connection) -> Result<Vec<LogPosition>, Failure> {
    let mut statement = connection.prepare_cached("SELECT topic, partition, next_offset FROM projected_positions")?;
    let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?, row.get::<_, i64>(2)?)))?;
    let mut positions = Vec::new();
    for row in rows {
        let (topic, partition, next_offset) = row?;
        let next_offset = to_u64(next_offset, &format!("position of {topic}/{partition}"))?;
        positions.push(LogPosition { topic, partition, next_offset });
    }
    Ok(positions)
}

pub(super) fn idempotency_records(connection: &Connection, since: Millis) -> Result<Vec<IdempotencyRecord>, Failure> {
    let mut statement = connection
        .prepare_cached("SELECT at, key, fingerprint, status, body FROM idempotency WHERE at >= ?1 ORDER BY at, key")?;
    let rows = statement.query_map([since.0], |row| {
        Ok(IdempotencyRecord {
            at: Millis(row.get(0)?),
            key: row.get(1)?,
            fingerprint: row.get(2)?,
            status: row.get(3)?,
            body: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
