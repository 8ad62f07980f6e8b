//! `BlobStore` on a local directory (the embedded default): each blob is one file at its
//! key under the root. A put writes a temporary file under `<root>/.partial`, syncs it and
//! renames it into place, so a blob is there whole or not at all, even after a crash.
//! Downloads are served by `esh` itself (no presigned URLs).

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{check_key, BlobStore, ByteStream};
use crate::error::BackendError;

/// Where unfinished uploads are written, inside the root (refused as a key's first segment).
const PARTIAL_DIR: &str = ".partial";
/// Read size of downloads.
const READ_CHUNK: usize = 64 * 1024;

pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// A store in `root`, created if missing.
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        std::fs::create_dir_all(root.join(PARTIAL_DIR))?;
        Ok(LocalBlobStore { root: root.to_path_buf() })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        check_key(key)?;
        if key.split('/').next() == Some(PARTIAL_DIR) {
            return Err(BackendError::Invalid(format!("invalid blob key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn not_found(key: &str, error: std::io::Error) -> BackendError {
    if error.kind() == std::io::ErrorKind::NotFound {
        BackendError::NotFound(format!("blob {key}"))
    } else {
        BackendError::Io(error)
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, _content_type: &str, mut body: ByteStream<'_>) -> Result<u64, BackendError> {
        let path = self.path(key)?;
        let partial = self.root.join(PARTIAL_DIR).join(esh_common::ids::new_id());
        let mut file = tokio::fs::File::create(&partial).await?;
        let written = async {
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await?;
                size += chunk.len() as u64;
            }
            file.sync_all().await?;
            Ok::<u64, BackendError>(size)
        }
        .await;
        drop(file);
        let size = match written {
            Ok(size) => size,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
        };
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        if let Err(error) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error.into());
        }
        // The rename is durable once the directory holding the name is synced.
        tokio::fs::File::open(&parent).await?.sync_all().await?;
        Ok(size)
    }

    async fn size(&self, key: &str) -> Result<u64, BackendError> {
        let path = self.path(key)?;
        let metadata = tokio::fs::metadata(&path).await.map_err(|e| not_found(key, e))?;
        Ok(metadata.len())
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream<'static>, BackendError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| not_found(key, e))?;
        let size = file.metadata().await?.len();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(BackendError::Invalid(format!("range {range:?} outside blob {key} of {size} bytes")));
        }
        file.seek(SeekFrom::Start(range.start)).await?;
        let reader = file.take(range.end - range.start);
        Ok(ReaderStream::with_capacity(reader, READ_CHUNK).map(|chunk| chunk.map_err(BackendError::Io)).boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        // Empty directories left by the last blob of a media object go too (best effort).
        if let Some(parent) = path.parent().filter(|parent| *parent != self.root) {
            let _ = tokio::fs::remove_dir(parent).await;
        }
        Ok(())
    }

    async fn presigned_get(&self, _key: &str, _valid_for: Duration) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    async fn check(&self) -> Result<(), BackendError> {
        let probe = self.root.join(PARTIAL_DIR).join(format!("check-{}", esh_common::ids::new_id()));
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await?;
        Ok(())
    }
}
