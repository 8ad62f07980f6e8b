//! The tables, one per read (ARCHITECTURE.md "Data model"). Every read is a key plus a
//! range and every write is keyed, so that each table maps onto a ScyllaDB table:
//! the `WITHOUT ROWID` tables are clustered by their primary key exactly like a
//! ScyllaDB partition key plus clustering columns.

use rusqlite::Connection;

use super::engine::{corrupt, Failure};

/// The schema version this build writes (`PRAGMA user_version`).
const VERSION: i64 = 3;

const SCHEMA: &str = r"
-- Users by id.
CREATE TABLE IF NOT EXISTS users (
    id TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,
    display_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    permissions TEXT NOT NULL,
    verified INTEGER NOT NULL,
    notifications_enabled INTEGER NOT NULL
) WITHOUT ROWID;

-- Messages by id, with their status row (status, status_changed_at, error, version).
-- A rowid table: rows carry up to 16 KB of content, too big to cluster well.
CREATE TABLE IF NOT EXISTS messages (
    id TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    conversation_id TEXT,
    broadcast_id TEXT,
    priority TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_changed_at INTEGER NOT NULL,
    error TEXT,
    version INTEGER NOT NULL,
    media_ids TEXT NOT NULL,
    content TEXT NOT NULL
);

-- Chat messages by conversation, in id (= time) order.
CREATE TABLE IF NOT EXISTS chat_messages (
    conversation_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (conversation_id, id)
) WITHOUT ROWID;

-- One-way messages by recipient.
CREATE TABLE IF NOT EXISTS received_messages (
    recipient_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (recipient_id, id)
) WITHOUT ROWID;

-- One-way messages by sender (a business's broadcasts' messages included).
CREATE TABLE IF NOT EXISTS sent_messages (
    sender_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (sender_id, id)
) WITHOUT ROWID;

-- Messages whose status is `sent`, by recipient.
CREATE TABLE IF NOT EXISTS undelivered (
    recipient_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (recipient_id, id)
) WITHOUT ROWID;

-- Conversations by id; updated_at and last_message_id follow the newest message.
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT NOT NULL PRIMARY KEY,
    business_id TEXT NOT NULL,
    mobile_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_message_id TEXT
) WITHOUT ROWID;

-- The one conversation of a business and mobile pair.
CREATE TABLE IF NOT EXISTS conversation_pairs (
    business_id TEXT NOT NULL,
    mobile_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (business_id, mobile_id)
) WITHOUT ROWID;

-- Each participant's conversations by last activity, with that participant's unread count.
CREATE TABLE IF NOT EXISTS user_conversations (
    user_id TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    conversation_id TEXT NOT NULL,
    last_message_id TEXT,
    unread INTEGER NOT NULL,
    PRIMARY KEY (user_id, updated_at, conversation_id)
) WITHOUT ROWID;

-- Delivery attempts by message, in the order recorded.
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;

-- Dead letters by time (present while their message is `failed`).
CREATE TABLE IF NOT EXISTS dead_letters (
    failed_at INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (failed_at, message_id)
) WITHOUT ROWID;

-- Broadcasts by id; the recipient list is one JSON array, kept last in the row.
CREATE TABLE IF NOT EXISTS broadcasts (
    id TEXT NOT NULL PRIMARY KEY,
    sender_id TEXT NOT NULL,
    priority TEXT NOT NULL,
    first_message_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    media_ids TEXT NOT NULL,
    content TEXT NOT NULL,
    recipient_ids TEXT NOT NULL
);

-- A broadcast's message counts by status (a counter table); recipients without a
-- message row yet are counted as `sent`.
CREATE TABLE IF NOT EXISTS early_statuses (
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    at INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS idempotency (
    at INTEGER NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (at, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS projected_positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;

-- Devices by user, for the push fan-out and `GET /v1/devices`.
CREATE TABLE IF NOT EXISTS user_devices (
    user_id TEXT NOT NULL,
    token TEXT NOT NULL,
    platform TEXT NOT NULL,
    active INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, token)
) WITHOUT ROWID;

-- The one user holding each device token.
CREATE TABLE IF NOT EXISTS device_tokens (
    token TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL
) WITHOUT ROWID;

-- Uploaded media by id; `thumbnails` is a JSON array.
CREATE TABLE IF NOT EXISTS media (
    id TEXT NOT NULL PRIMARY KEY,
    owner_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    thumbnails TEXT NOT NULL
) WITHOUT ROWID;

-- Who may read a media object besides its uploader: the participants of the stored
-- messages that reference it.
CREATE TABLE IF NOT EXISTS media_participants (
    media_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (media_id, user_id)
) WITHOUT ROWID;

-- Uploads no stored message references yet, by upload time (collected after a while).
CREATE TABLE IF NOT EXISTS unreferenced_media (
    created_at INTEGER NOT NULL,
    media_id TEXT NOT NULL,
    PRIMARY KEY (created_at, media_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS broadcast_counts (
    broadcast_id TEXT NOT NULL,
    status TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (broadcast_id, status)
) WITHOUT ROWID;
";

/// Creates the tables if they are missing; refuses a file written by a newer schema.
pub(super) fn migrate(connection: &Connection) -> Result<(), Failure> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > VERSION {
        return Err(corrupt(format!("store schema version {version} is newer than this build's {VERSION}")));
    }
    if version == VERSION {
        return Ok(());
    }
    connection.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {VERSION}; COMMIT;"))?;
    Ok(())
}
