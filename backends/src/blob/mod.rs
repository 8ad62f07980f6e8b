//! The blob store: media files and their thumbnails, by key. Keys are relative paths of
//! `[A-Za-z0-9._-]` segments joined by `/` (no empty, `.` or `..` segment), checked by
//! every implementation with [`check_key`], so no key can leave the store.

mod local;
#[cfg(feature = "s3")]
mod s3;

pub use local::LocalBlobStore;
#[cfg(feature = "s3")]
pub use s3::S3BlobStore;

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::BackendError;

/// A body streamed into or out of the store, chunk by chunk (never whole in memory).
pub type ByteStream<'a> = BoxStream<'a, Result<Bytes, BackendError>>;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores what `body` yields under `key`, replacing a blob of that key, and returns its
    /// size once it is durable. All or nothing: when `body` yields an error (a size limit
    /// passed, a client gone) or the store fails, that error is returned and `key` is left
    /// as it was (the partial upload is discarded).
    async fn put(&self, key: &str, content_type: &str, body: ByteStream<'_>) -> Result<u64, BackendError>;
    /// The size of the blob under `key`; `NotFound` if there is none.
    async fn size(&self, key: &str) -> Result<u64, BackendError>;
    /// The bytes of the blob under `key`, all of them or the `range` given (which must lie
    /// within the blob); `NotFound` if there is none.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream<'static>, BackendError>;
    /// Removes the blob under `key`; removing a blob that is not there succeeds.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// A URL from which anyone holding it downloads the blob directly for `valid_for`
    /// (signed by the store), or `None` when the store has no endpoint of its own: then
    /// `esh` serves the blob behind URLs it signs itself (`MediaLinks`).
    async fn presigned_get(&self, key: &str, valid_for: Duration) -> Result<Option<String>, BackendError>;
    /// Succeeds while blobs can be read and written (readiness check).
    async fn check(&self) -> Result<(), BackendError>;
}

/// Refuses keys that are not relative paths of `[A-Za-z0-9._-]` segments.
pub fn check_key(key: &str) -> Result<(), BackendError> {
    let valid_segment = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if key.len() <= 1024 && key.split('/').all(valid_segment) {
        Ok(())
    } else {
        Err(BackendError::Invalid(format!("invalid blob key {key:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_store() {
        assert!(check_key("media/01J/original").is_ok());
        for key in ["", "/etc/passwd", "media/../x", "a//b", "./a", "a/", "a\\b", "a b", "ü"] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
    }
}
