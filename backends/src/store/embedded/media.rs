//! `MediaCatalog` on the embedded store: tables `media` (by id), `media_participants` (by
//! media id, then user) and `unreferenced_media` (by upload time), see `schema`. The
//! participants of a message's media are written with the message (`record_media_use`).

use async_trait::async_trait;
use esh_common::{Media, Message, Millis};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::engine::{corrupt, Failure};
use super::EmbeddedMessageStore;
use crate::error::BackendError;
use crate::store::MediaCatalog;

fn media_from_row(row: &Row<'_>) -> Result<Media, Failure> {
    let id: String = row.get(0)?;
    let thumbnails: String = row.get(6)?;
    Ok(Media {
        owner_id: row.get(1)?,
        filename: row.get(2)?,
        content_type: row.get(3)?,
        size: u64::try_from(row.get::<_, i64>(4)?).map_err(|_| corrupt(format!("media {id}: negative size")))?,
        created_at: Millis(row.get(5)?),
        thumbnails: serde_json::from_str(&thumbnails).map_err(|e| corrupt(format!("media {id}: thumbnails: {e}")))?,
        id,
    })
}

const MEDIA_COLUMNS: &str = "id, owner_id, filename, content_type, size, created_at, thumbnails";

fn media_by_id(connection: &Connection, id: &str) -> Result<Option<Media>, Failure> {
    let mut statement = connection.prepare_cached(&format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id = ?1"))?;
    let mut rows = statement.query([id])?;
    rows.next()?.map(media_from_row).transpose()
}

fn add_media(connection: &Connection, media: &Media, thumbnails: &str) -> Result<(), Failure> {
    let inserted = connection
        .prepare_cached(&format!("INSERT OR IGNORE INTO media ({MEDIA_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"))?
        .execute(params![
            media.id,
            media.owner_id,
            media.filename,
            media.content_type,
            media.size as i64,
            media.created_at.0,
            thumbnails
        ])?;
    if inserted == 0 {
        return Err(Failure(BackendError::Conflict(format!("media {} exists", media.id))));
    }
    connection
        .prepare_cached("INSERT INTO unreferenced_media (created_at, media_id) VALUES (?1, ?2)")?
        .execute(params![media.created_at.0, media.id])?;
    Ok(())
}

/// A new stored message's media: its sender and recipient may read them, and they are no
/// longer unreferenced. Called for each message the store inserts.
pub(super) fn record_media_use(connection: &Connection, message: &Message) -> Result<(), Failure> {
    for media_id in &message.media_ids {
        let mut participant = connection
            .prepare_cached("INSERT OR IGNORE INTO media_participants (media_id, user_id) VALUES (?1, ?2)")?;
        participant.execute(params![media_id, message.sender_id])?;
        participant.execute(params![media_id, message.recipient_id])?;
        connection
            .prepare_cached(
                "DELETE FROM unreferenced_media WHERE media_id = ?1 \
                 AND created_at = (SELECT created_at FROM media WHERE id = ?1)",
            )?
            .execute([media_id])?;
    }
    Ok(())
}

fn remove_unreferenced(connection: &Connection, ids: &[String]) -> Result<Vec<String>, Failure> {
    let mut removed = Vec::new();
    for id in ids {
        let still_unreferenced = connection
            .prepare_cached(
                "DELETE FROM unreferenced_media WHERE media_id = ?1 \
                 AND created_at = (SELECT created_at FROM media WHERE id = ?1)",
            )?
            .execute([id])?;
        if still_unreferenced == 1 {
            connection.prepare_cached("DELETE FROM media WHERE id = ?1")?.execute([id])?;
            removed.push(id.clone());
        }
    }
    Ok(removed)
}

#[async_trait]
impl MediaCatalog for EmbeddedMessageStore {
    async fn add_media(&self, media: &Media) -> Result<(), BackendError> {
        let thumbnails = serde_json::to_string(&media.thumbnails)
            .map_err(|e| BackendError::Invalid(format!("cannot encode thumbnails: {e}")))?;
        let media = media.clone();
        self.writer.write(1, move |connection| add_media(connection, &media, &thumbnails)).await
    }

    async fn media(&self, ids: &[String]) -> Result<Vec<Media>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.readers
            .read(move |connection| {
                let mut found = Vec::with_capacity(ids.len());
                for id in &ids {
                    found.extend(media_by_id(connection, id)?);
                }
                Ok(found)
            })
            .await
    }

    async fn is_participant(&self, media_id: &str, user: &str) -> Result<bool, BackendError> {
        let (media_id, user) = (media_id.to_owned(), user.to_owned());
        self.readers
            .read(move |connection| {
                let found = connection
                    .prepare_cached("SELECT 1 FROM media_participants WHERE media_id = ?1 AND user_id = ?2")?
                    .query_row(params![media_id, user], |_| Ok(()))
                    .optional()?;
                Ok(found.is_some())
            })
            .await
    }

    async fn unreferenced(&self, before: Millis, limit: usize) -> Result<Vec<Media>, BackendError> {
        self.readers
            .read(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT media_id FROM unreferenced_media WHERE created_at < ?1 ORDER BY created_at, media_id LIMIT ?2",
                )?;
                let ids: Vec<String> =
                    statement.query_map(params![before.0, limit as i64], |row| row.get(0))?.collect::<Result<_, _>>()?;
                let mut found = Vec::with_capacity(ids.len());
                for id in &ids {
                    found.extend(media_by_id(connection, id)?);
                }
                Ok(found)
            })
            .await
    }

    async fn remove_unreferenced(&self, ids: &[String]) -> Result<Vec<String>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.writer.write(ids.len(), move |connection| remove_unreferenced(connection, &ids)).await
    }
}
