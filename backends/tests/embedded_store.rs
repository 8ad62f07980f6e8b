//! The store conformance suite against `EmbeddedMessageStore` (a fresh SQLite file per
//! store in a temporary directory), plus what only a file-backed store can show.

use std::future::Ready;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use esh_backends::store::EmbeddedMessageStore;
use esh_backends::testsuite::fixtures;
use esh_backends::testsuite::store as suite;
use esh_backends::{ErrorKind, MessageStore};
use esh_common::{Message, Millis, Status, StatusChange, User, UserKind};
use tempfile::TempDir;

/// Opens a new store file in `dir` on every call.
fn fresh(dir: &TempDir) -> impl Fn() -> Ready<Arc<dyn MessageStore>> + '_ {
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

#[tokio::test]
async fn users_crud() {
    let dir = temp();
    suite::users_crud(fresh(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_for_pair_is_atomic() {
    let dir = temp();
    suite::conversation_for_pair_is_atomic(fresh(&dir)).await;
}

#[tokio::test]
async fn insert_is_idempotent() {
    let dir = temp();
    suite::insert_is_idempotent(fresh(&dir)).await;
}

#[tokio::test]
async fn history_pages_newest_first() {
    let dir = temp();
    suite::history_pages_newest_first(fresh(&dir)).await;
}

#[tokio::test]
async fn one_way_history_for_recipient_and_sender() {
    let dir = temp();
    suite::one_way_history_for_recipient_and_sender(fresh(&dir)).await;
}

#[tokio::test]
async fn conversation_list_order_and_unread() {
    let dir = temp();
    suite::conversation_list_order_and_unread(fresh(&dir)).await;
}

#[tokio::test]
async fn apply_status_moves_forward_only() {
    let dir = temp();
    suite::apply_status_moves_forward_only(fresh(&dir)).await;
}

#[tokio::test]
async fn undelivered_follows_status() {
    let dir = temp();
    suite::undelivered_follows_status(fresh(&dir)).await;
}

#[tokio::test]
async fn dead_letters_follow_failures() {
    let dir = temp();
    suite::dead_letters_follow_failures(fresh(&dir)).await;
}

#[tokio::test]
async fn attempts_append_in_order() {
    let dir = temp();
    suite::attempts_append_in_order(fresh(&dir)).await;
}

#[tokio::test]
async fn broadcast_counts_add_up() {
    let dir = temp();
    suite::broadcast_counts_add_up(fresh(&dir)).await;
}

#[tokio::test]
async fn broadcast_recipients_pages() {
    let dir = temp();
    suite::broadcast_recipients_pages(fresh(&dir)).await;
}

#[tokio::test]
async fn check_succeeds() {
    let dir = temp();
    suite::check_succeeds(fresh(&dir)).await;
}

/// Every suite on one shared store, as a ScyllaDB keyspace would be shared: the suites
/// must not see each other's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_suites_share_one_store() {
    let dir = temp();
    let shared: Arc<dyn MessageStore> =
        Arc::new(EmbeddedMessageStore::open(&dir.path().join("shared.sqlite3")).expect("open store"));
    suite::all(|| std::future::ready(Arc::clone(&shared))).await;
}

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
