//! The store conformance suite (`store_suite!`) against `EmbeddedMessageStore` (a fresh
//! SQLite file per store in a temporary directory), plus what only a file-backed store can show.

use std::future::Ready;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use esh_backends::store::EmbeddedMessageStore;
use esh_backends::testsuite::fixtures;
use esh_backends::{ErrorKind, MessageStore};
use esh_common::{Message, Millis, Status, StatusChange, User, UserKind};
use tempfile::TempDir;

/// A factory of new store files in one temporary directory, which it keeps.
fn fresh_stores() -> impl Fn() -> Ready<Arc<dyn MessageStore>> {
    let dir = temp();
    let next = AtomicUsize::new(0);
    move || {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let store = EmbeddedMessageStore::open(&dir.path().join(format!("store-{n}.sqlite3"))).expect("open store");
        std::future::ready(Arc::new(store) as Arc<dyn MessageStore>)
    }
}

fn temp() -> TempDir {
    tempfile::tempdir().expect("temporary directory")
}

esh_backends::store_suite!(fresh_stores());

fn message_to(sender: &str, recipient: &str) -> Message {
    Message { content: "kept".into(), ..fixtures::one_way(sender, recipient) }
}

/// Req 10.1: what a write answered is on disk; dropping the store finishes queued
/// writes and reopening the file finds all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_data_survives_reopening() {
    let dir = temp();
    let path = dir.path().join("data").join("store.sqlite3");
    let user = User {
        id: "biz-1".into(),
        kind: UserKind::Business,
        display_name: "Biz".into(),
        created_at: Millis::now(),
        permissions: Vec::new(),
        verified: false,
        notifications_enabled: true,
    };
    let first = message_to("biz-1", "mob-1");
    let many: Vec<Message> = (0..20).map(|_| message_to("biz-1", "mob-1")).collect();
    {
        let store = Arc::new(EmbeddedMessageStore::open(&path).expect("open store"));
        store.create_user(&user).await.expect("create user");
        store.insert_messages(std::slice::from_ref(&first)).await.expect("insert");
        // Concurrent writers share group commits; each is answered only once committed.
        let writers: Vec<_> = many
            .iter()
            .map(|message| {
                let store = Arc::clone(&store);
                let message = message.clone();
                tokio::spawn(async move { store.insert_messages(&[message]).await })
            })
            .collect();
        for writer in writers {
            writer.await.expect("task").expect("insert");
        }
        let read = StatusChange {
            message_id: first.id.clone(),
            status: Status::Read,
            at: Millis::now(),
            error: None,
            attempts: 0,
        };
        store.apply_status(&[read]).await.expect("read");
    }
    let reopened = EmbeddedMessageStore::open(&path).expect("reopen store");
    assert_eq!(reopened.user("biz-1").await.expect("read"), Some(user));
    let stored = reopened.message(&first.id).await.expect("read").expect("first message kept");
    assert_eq!(stored.status, Status::Read);
    let ids: Vec<String> = many.iter().map(|message| message.id.clone()).collect();
    assert_eq!(reopened.messages(&ids).await.expect("read").len(), 20);
    let received =
        reopened.one_way_messages("mob-1", esh_backends::OneWayRole::Recipient, None, 50).await.expect("history");
    assert_eq!(received.len(), 21);
    reopened.check().await.expect("check");
}

/// Stored data that cannot be decoded is reported as `Corrupt`, never a panic.
#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let dir = temp();
    let path = dir.path().join("store.sqlite3");
    let message = message_to("biz-2", "mob-2");
    {
        let store = EmbeddedMessageStore::open(&path).expect("open store");
        store.insert_messages(std::slice::from_ref(&message)).await.expect("insert");
    }
    damage(&path, &message.id);
    let store = EmbeddedMessageStore::open(&path).expect("reopen store");
    let error = store.message(&message.id).await.expect_err("bad status");
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert!(matches!(error, esh_backends::BackendError::Corrupt(_)), "{error}");
    let error = store.undelivered("mob-2", None, 10).await.expect_err("bad status");
    assert!(matches!(error, esh_backends::BackendError::Corrupt(_)), "{error}");
    let error = store
        .apply_status(&[StatusChange {
            message_id: message.id.clone(),
            status: Status::Read,
            at: Millis::now(),
            error: None,
            attempts: 0,
        }])
        .await
        .expect_err("bad status");
    assert!(matches!(error, esh_backends::BackendError::Corrupt(_)), "{error}");
    store.check().await.expect("the store itself still works");
}

/// Writes an unknown status into a message row behind the store's back.
fn damage(path: &Path, message_id: &str) {
    let connection = rusqlite::Connection::open(path).expect("open file");
    let changed = connection
        .execute("UPDATE messages SET status = 'teleported' WHERE id = ?1", [message_id])
        .expect("damage row");
    assert_eq!(changed, 1);
}
