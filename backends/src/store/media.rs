//! The media catalog: what was uploaded (`Media`, keyed by id), who may read it besides
//! its uploader (the participants of the messages that reference it, keyed by media id),
//! and the uploads no message references yet, by upload time, for their collection.

use async_trait::async_trait;
use esh_common::{Media, Millis};

use crate::error::BackendError;

#[async_trait]
pub trait MediaCatalog: Send + Sync + 'static {
    /// Records an upload whose blobs are stored; it counts as unreferenced until a stored
    /// message references it. `Conflict` if the id exists.
    async fn add_media(&self, media: &Media) -> Result<(), BackendError>;
    /// The media objects among `ids` that exist, in no particular order.
    async fn media(&self, ids: &[String]) -> Result<Vec<Media>, BackendError>;
    /// Whether `user` sent or received a stored message that references `media_id`
    /// (recorded with the message, in the same transaction, by `MessageStore::project`
    /// and `insert_messages`).
    async fn is_participant(&self, media_id: &str, user: &str) -> Result<bool, BackendError>;
    /// Uploads made before `before` that no stored message references, oldest first, at most `limit`.
    async fn unreferenced(&self, before: Millis, limit: usize) -> Result<Vec<Media>, BackendError>;
    /// Removes the records among `ids` that are still unreferenced, in one transaction, and
    /// returns their ids: their blobs may then be deleted. Ids unknown or referenced are skipped.
    async fn remove_unreferenced(&self, ids: &[String]) -> Result<Vec<String>, BackendError>;
}
