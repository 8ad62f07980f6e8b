//! The `BlobStore` conformance suite against S3 (Req 2.3, 2.6): a real S3-compatible
//! server (`testsuite::blob::s3_test_server`: `ESH_TEST_S3`, else a fresh `s3s-fs`).
#![cfg(feature = "s3")]

use std::sync::Arc;

use esh_backends::blob::S3BlobStore;
use esh_backends::testsuite::blob::{s3_test_server, OpenedBlobStore};

async fn open_s3() -> OpenedBlobStore {
    let (url, keep) = s3_test_server();
    OpenedBlobStore { store: Arc::new(S3BlobStore::from_url(&url).unwrap()), keep }
}

esh_backends::blob_store_suite!(open_s3());

#[test]
fn urls_without_a_bucket_or_with_unknown_parameters_are_refused() {
    assert!(S3BlobStore::from_url("s3://").is_err());
    assert!(S3BlobStore::from_url("s3://bucket/path").is_err());
    assert!(S3BlobStore::from_url("s3://bucket?colour=blue").is_err());
}
