//! The `BlobStore` conformance suite against the local directory store (Req 2.3).

use std::sync::Arc;

use esh_backends::blob::LocalBlobStore;
use esh_backends::testsuite::blob::OpenedBlobStore;

async fn open_local() -> OpenedBlobStore {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    OpenedBlobStore { store: Arc::new(store), keep: Box::new(dir) }
}

esh_backends::blob_store_suite!(open_local());
