//! `BlobStore` on S3 or any S3-compatible service, through `object_store` (Apache Arrow's
//! object-store crate): its `WriteMultipart` streams an upload part by part (a few parts in
//! flight, aborted on error: nothing is left behind), and its `Signer` makes presigned GET
//! URLs (SigV4 query signatures), so clients download straight from the bucket or its CDN.
//!
//! URL: `s3://bucket?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true`;
//! credentials come from the usual AWS variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …), as do defaults of what the URL leaves out.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};

use super::{check_key, BlobStore, ByteStream};
use crate::error::BackendError;

/// Size of each uploaded part (S3's least, but for the last); a body smaller than one part
/// is stored with a single PUT.
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploaded at once per upload: bounds the memory of one upload to about this many parts.
const PARTS_IN_FLIGHT: usize = 2;

pub struct S3BlobStore {
    store: Arc<AmazonS3>,
}

impl S3BlobStore {
    /// The store named by an `s3://bucket?endpoint=…&region=…&path_style=true` URL.
    pub fn from_url(url: &str) -> Result<Self, BackendError> {
        let unsupported = |reason: String| BackendError::UnsupportedUrl { url: url.to_owned(), reason };
        let rest = url.strip_prefix("s3://").ok_or_else(|| unsupported("expected s3://bucket".into()))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        if bucket.is_empty() || bucket.contains('/') {
            return Err(unsupported("expected s3://bucket with no path".into()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            builder = match name {
                "endpoint" => builder.with_allow_http(value.starts_with("http://")).with_endpoint(value),
                "region" => builder.with_region(value),
                "path_style" => builder.with_virtual_hosted_style_request(value != "true"),
                other => {
                    return Err(unsupported(format!("unknown parameter {other:?} (endpoint, region, path_style)")))
                }
            };
        }
        let store = builder.build().map_err(|error| unsupported(error.to_string()))?;
        Ok(S3BlobStore { store: Arc::new(store) })
    }

    fn path(key: &str) -> Result<Path, BackendError> {
        check_key(key)?;
        Path::parse(key).map_err(|error| BackendError::Invalid(error.to_string()))
    }
}

fn s3_error(error: object_store::Error) -> BackendError {
    match error {
        object_store::Error::NotFound { path, .. } => BackendError::NotFound(format!("blob {path}")),
        other => BackendError::Unavailable(format!("s3: {other}")),
    }
}

fn content_type(value: &str) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, value.to_owned().into());
    attributes
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, content_type_value: &str, mut body: ByteStream<'_>) -> Result<u64, BackendError> {
        let path = Self::path(key)?;
        // The first part is gathered in memory: a small body is one PUT.
        let mut first = BytesMut::new();
        let mut ended = true;
        while let Some(chunk) = body.next().await {
            first.extend_from_slice(&chunk?);
            if first.len() >= PART_BYTES {
                ended = false;
                break;
            }
        }
        if ended {
            let size = first.len() as u64;
            let options = PutOptions { attributes: content_type(content_type_value), ..Default::default() };
            self.store.put_opts(&path, PutPayload::from(first.freeze()), options).await.map_err(s3_error)?;
            return Ok(size);
        }
        let options = PutMultipartOptions { attributes: content_type(content_type_value), ..Default::default() };
        let upload = self.store.put_multipart_opts(&path, options).await.map_err(s3_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut size = first.len() as u64;
        writer.write(&first);
        drop(first);
        let streamed = async {
            while let Some(chunk) = body.next().await {
                let chunk: Bytes = chunk?;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(s3_error)?;
                writer.write(&chunk);
                size += chunk.len() as u64;
            }
            Ok::<(), BackendError>(())
        }
        .await;
        match streamed {
            Ok(()) => {
                writer.finish().await.map_err(s3_error)?;
                Ok(size)
            }
            Err(error) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%abort, key, "cannot abort a multipart upload");
                }
                Err(error)
            }
        }
    }

    async fn size(&self, key: &str) -> Result<u64, BackendError> {
        let meta = self.store.head(&Self::path(key)?).await.map_err(s3_error)?;
        Ok(meta.size)
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream<'static>, BackendError> {
        let path = Self::path(key)?;
        // object_store refuses an empty range: fetch none of it.
        if range.as_ref().is_some_and(|range| range.is_empty()) {
            self.size(key).await?;
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let result = self.store.get_opts(&path, options).await.map_err(s3_error)?;
        Ok(result.into_stream().map_err(s3_error).boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        match self.store.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(s3_error(error)),
        }
    }

    async fn presigned_get(&self, key: &str, valid_for: Duration) -> Result<Option<String>, BackendError> {
        let url = self.store.signed_url(http::Method::GET, &Self::path(key)?, valid_for).await.map_err(s3_error)?;
        Ok(Some(url.to_string()))
    }

    async fn check(&self) -> Result<(), BackendError> {
        // A HEAD of a key no upload uses: answered NotFound by a reachable bucket that
        // accepts our credentials.
        match self.store.head(&Path::from("health/check")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(s3_error(error)),
        }
    }
}
