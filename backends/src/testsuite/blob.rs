//! Conformance of `BlobStore`. Each case is a public async fn taking the store under test;
//! [`blob_store_suite!`](crate::blob_store_suite) expands to one `#[tokio::test]` per case
//! for an implementation:
//!
//! ```ignore
//! esh_backends::blob_store_suite!(open_local());
//! ```
//!
//! where `open_local()` is a future of an [`OpenedBlobStore`] (the store, and whatever must
//! live as long as it: a temporary directory, a server process). Cases use keys unique to
//! the run, so they may share one bucket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{stream, StreamExt};

use crate::blob::{BlobStore, ByteStream};
use crate::error::{BackendError, ErrorKind};

/// A store under test and what keeps it alive.
pub struct OpenedBlobStore {
    pub store: Arc<dyn BlobStore>,
    pub keep: Box<dyn std::any::Any + Send>,
}

/// Expands to one `#[tokio::test]` per case of this suite, each opening its store with `$open`.
#[macro_export]
macro_rules! blob_store_suite {
    ($open:expr) => {
        $crate::blob_store_suite!(@cases $open;
            put_then_get_returns_the_bytes_and_size,
            large_bodies_are_streamed_in_parts,
            ranges_return_exactly_the_bytes_asked,
            a_failing_body_leaves_nothing_behind,
            put_replaces_and_a_failed_replace_keeps_the_old_blob,
            delete_is_idempotent,
            missing_blobs_are_not_found,
            keys_that_leave_the_store_are_refused,
            empty_blobs_are_stored,
            presigned_urls_serve_the_bytes_and_refuse_tampering,
            check_succeeds,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let opened: $crate::testsuite::blob::OpenedBlobStore = $open.await;
            $crate::testsuite::blob::$case(opened.store.as_ref()).await;
            drop(opened);
        }
    )*};
}

fn unique(name: &str) -> String {
    format!("suite/{}/{name}", esh_common::ids::new_id())
}

/// `size` bytes that differ from one position to the next (so a misplaced range shows).
fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8).collect()
}

/// `bytes` as a stream of `chunk`-sized pieces.
fn body(bytes: &[u8], chunk: usize) -> ByteStream<'static> {
    let chunks: Vec<Result<Bytes, BackendError>> =
        bytes.chunks(chunk.max(1)).map(|piece| Ok(Bytes::copy_from_slice(piece))).collect();
    stream::iter(chunks).boxed()
}

/// `bytes` then an error, as a client that goes away mid-upload.
fn failing_body(bytes: &[u8]) -> ByteStream<'static> {
    body(bytes, 64 * 1024).chain(stream::once(async { Err(BackendError::Invalid("body cut off".into())) })).boxed()
}

async fn read(store: &dyn BlobStore, key: &str, range: Option<std::ops::Range<u64>>) -> Result<Vec<u8>, BackendError> {
    let mut stream = store.get(key, range).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes)
}

fn assert_not_found<T: std::fmt::Debug>(outcome: Result<T, BackendError>) {
    match outcome {
        Err(error) => assert_eq!(error.kind(), ErrorKind::NotFound, "{error}"),
        Ok(value) => panic!("expected NotFound, got {value:?}"),
    }
}

pub async fn put_then_get_returns_the_bytes_and_size(store: &dyn BlobStore) {
    let key = unique("small");
    let bytes = pattern(100_000, 1);
    assert_eq!(store.put(&key, "image/png", body(&bytes, 4096)).await.unwrap(), bytes.len() as u64);
    assert_eq!(store.size(&key).await.unwrap(), bytes.len() as u64);
    assert_eq!(read(store, &key, None).await.unwrap(), bytes);
}

/// A body bigger than one S3 part (5 MiB) goes up in parts and comes back whole.
pub async fn large_bodies_are_streamed_in_parts(store: &dyn BlobStore) {
    let key = unique("large");
    let bytes = pattern(12 * 1024 * 1024 + 17, 2);
    assert_eq!(store.put(&key, "video/mp4", body(&bytes, 64 * 1024)).await.unwrap(), bytes.len() as u64);
    assert_eq!(store.size(&key).await.unwrap(), bytes.len() as u64);
    assert!(read(store, &key, None).await.unwrap() == bytes, "the large blob came back different");
}

pub async fn ranges_return_exactly_the_bytes_asked(store: &dyn BlobStore) {
    let key = unique("ranges");
    let bytes = pattern(10_000, 3);
    store.put(&key, "audio/mpeg", body(&bytes, 1000)).await.unwrap();
    for range in [0..1u64, 0..10_000, 1234..5678, 9_999..10_000, 5000..5000] {
        let got = read(store, &key, Some(range.clone())).await.unwrap();
        assert_eq!(got, bytes[range.start as usize..range.end as usize], "range {range:?}");
    }
}

pub async fn a_failing_body_leaves_nothing_behind(store: &dyn BlobStore) {
    for size in [1000, 6 * 1024 * 1024] {
        let key = unique("failed");
        let error = store.put(&key, "video/mp4", failing_body(&pattern(size, 4))).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Permanent, "the body's own error comes back: {error}");
        assert_not_found(store.size(&key).await);
        assert_not_found(read(store, &key, None).await);
    }
}

pub async fn put_replaces_and_a_failed_replace_keeps_the_old_blob(store: &dyn BlobStore) {
    let key = unique("replaced");
    store.put(&key, "image/png", body(b"first", 2)).await.unwrap();
    store.put(&key, "image/png", body(b"second", 2)).await.unwrap();
    assert_eq!(read(store, &key, None).await.unwrap(), b"second");
    assert!(store.put(&key, "image/png", failing_body(b"third")).await.is_err());
    assert_eq!(read(store, &key, None).await.unwrap(), b"second");
}

pub async fn delete_is_idempotent(store: &dyn BlobStore) {
    let key = unique("deleted");
    store.put(&key, "application/pdf", body(b"%PDF-1.4", 3)).await.unwrap();
    store.delete(&key).await.unwrap();
    assert_not_found(store.size(&key).await);
    store.delete(&key).await.unwrap();
    store.delete(&unique("never-stored")).await.unwrap();
}

pub async fn missing_blobs_are_not_found(store: &dyn BlobStore) {
    let key = unique("missing");
    assert_not_found(store.size(&key).await);
    assert_not_found(read(store, &key, None).await);
}

pub async fn keys_that_leave_the_store_are_refused(store: &dyn BlobStore) {
    for key in ["../outside", "suite/../../outside", "/absolute", "a//b", ""] {
        let outcome = store.put(key, "image/png", body(b"x", 1)).await;
        assert!(matches!(outcome, Err(BackendError::Invalid(_))), "{key:?}: {outcome:?}");
        assert!(matches!(store.get(key, None).await, Err(BackendError::Invalid(_))), "{key:?}");
        assert!(matches!(store.delete(key).await, Err(BackendError::Invalid(_))), "{key:?}");
    }
}

pub async fn empty_blobs_are_stored(store: &dyn BlobStore) {
    let key = unique("empty");
    assert_eq!(store.put(&key, "text/plain", body(b"", 1)).await.unwrap(), 0);
    assert_eq!(store.size(&key).await.unwrap(), 0);
    assert_eq!(read(store, &key, None).await.unwrap(), b"");
}

/// A store that presigns: its URL serves the blob over plain HTTP to anyone holding it, and
/// an altered signature is refused (403). A store that does not presign answers `None` for
/// every key, and `esh` serves its blobs (tested with the download endpoint).
pub async fn presigned_urls_serve_the_bytes_and_refuse_tampering(store: &dyn BlobStore) {
    let key = unique("presigned");
    let bytes = pattern(3000, 5);
    store.put(&key, "image/jpeg", body(&bytes, 1000)).await.unwrap();
    let Some(url) = store.presigned_get(&key, Duration::from_secs(3600)).await.unwrap() else {
        assert_eq!(store.presigned_get(&unique("other"), Duration::from_secs(60)).await.unwrap(), None);
        return;
    };
    let client = reqwest::Client::new();
    let answer = client.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{url}");
    assert_eq!(answer.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let ranged = client.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &bytes[10..20]);
    let signature = url.find("X-Amz-Signature=").expect("a SigV4 query signature") + "X-Amz-Signature=".len();
    let mut altered = url.clone().into_bytes();
    altered[signature] = if altered[signature] == b'0' { b'1' } else { b'0' };
    let altered = String::from_utf8(altered).unwrap();
    assert_eq!(client.get(&altered).send().await.unwrap().status(), 403, "{altered}");
}

pub async fn check_succeeds(store: &dyn BlobStore) {
    store.check().await.unwrap();
}

/// An S3-compatible server for tests: the URL of `ESH_TEST_S3` when set (credentials in
/// the AWS variables), else a fresh `s3s-fs` (a real S3 server that checks signatures,
/// presigned URLs included) on a free port with a temporary directory and bucket
/// `esh-test`, stopped when the returned guard is dropped.
pub fn s3_test_server() -> (String, Box<dyn std::any::Any + Send>) {
    if let Ok(url) = std::env::var("ESH_TEST_S3") {
        return (url, Box::new(()));
    }
    s3s_fs::start()
}

mod s3s_fs {
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::Once;
    use std::time::{Duration, Instant};

    const ACCESS_KEY: &str = "esh-test-access-key";
    const SECRET_KEY: &str = "esh-test-secret-key";
    const INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --locked --features binary";

    /// A running `s3s-fs`, killed when dropped, and its directory.
    struct Server {
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(super) fn start() -> (String, Box<dyn std::any::Any + Send>) {
        // Every server of the process takes the same credentials, set once before any
        // client reads them.
        static CREDENTIALS: Once = Once::new();
        CREDENTIALS.call_once(|| {
            std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        });
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("esh-test")).expect("bucket directory");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run s3s-fs ({error}); install it with `{INSTALL}`"));
        let server = Server { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("s3://esh-test?endpoint=http://127.0.0.1:{port}&region=us-east-1&path_style=true");
        (url, Box::new(server))
    }
}
