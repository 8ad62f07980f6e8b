//! Conformance of `MessageStore`: what every store (embedded SQLite, ScyllaDB) must keep.
//!
//! Each suite takes a factory for a store and uses ids of its own (fresh ULIDs), so the
//! suites may share one database; none relies on how a store keeps its rows. A suite
//! panics (assert) on the first broken rule. `all` runs every suite.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use esh_common::{
    ids, Attempt, Broadcast, Channel, Conversation, Message, MessageType, Millis, Permission, Priority, Status,
    StatusChange, StatusCounts, User, UserKind,
};

use crate::error::ErrorKind;
use crate::store::{IdempotencyRecord, LogPosition, MessageStore, OneWayRole, Projection};

/// A fresh id with a readable prefix, unique across runs.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", ids::new_id())
}

fn new_user(kind: UserKind) -> User {
    User {
        id: unique(kind.as_str()),
        kind,
        display_name: format!("{} user", kind.as_str()),
        created_at: Millis::now(),
        permissions: if kind == UserKind::Business { vec![Permission::Send, Permission::Chat] } else { Vec::new() },
        verified: kind == UserKind::Mobile,
        notifications_enabled: true,
    }
}

/// A business and a mobile user with their conversation, created at `at`.
async fn new_pair(store: &dyn MessageStore, at: Millis) -> (User, User, Conversation) {
    let business = new_user(UserKind::Business);
    let mobile = new_user(UserKind::Mobile);
    store.create_user(&business).await.expect("create business");
    store.create_user(&mobile).await.expect("create mobile");
    let conversation =
        store.conversation_for_pair(&business.id, &mobile.id, &ids::new_id(), at).await.expect("conversation");
    (business, mobile, conversation)
}

fn chat(conversation: &Conversation, sender: &str, at: Millis) -> Message {
    Message {
        id: ids::new_id(),
        kind: MessageType::Chat,
        sender_id: sender.to_owned(),
        recipient_id: conversation.peer_of(sender).to_owned(),
        conversation_id: Some(conversation.id.clone()),
        content: format!("chat at {}", at.0),
        media_ids: vec![unique("media")],
        priority: Priority::Normal,
        status: Status::Sent,
        status_changed_at: at,
        created_at: at,
        error: None,
        broadcast_id: None,
    }
}

fn one_way(sender: &str, recipient: &str, at: Millis) -> Message {
    Message {
        id: ids::new_id(),
        kind: MessageType::OneWay,
        sender_id: sender.to_owned(),
        recipient_id: recipient.to_owned(),
        conversation_id: None,
        content: format!("one-way at {}", at.0),
        media_ids: Vec::new(),
        priority: Priority::High,
        status: Status::Sent,
        status_changed_at: at,
        created_at: at,
        error: None,
        broadcast_id: None,
    }
}

fn change(message_id: &str, status: Status, at: Millis) -> StatusChange {
    StatusChange { message_id: message_id.to_owned(), status, at, error: None, attempts: 0 }
}

fn failure(message_id: &str, at: Millis, error: &str, attempts: u32) -> StatusChange {
    StatusChange { message_id: message_id.to_owned(), status: Status::Failed, at, error: Some(error.into()), attempts }
}

fn ids_of(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|message| message.id.clone()).collect()
}

fn newest_first(messages: &[Message]) -> Vec<String> {
    let mut ids = ids_of(messages);
    ids.reverse();
    ids
}

fn total(counts: &StatusCounts) -> u64 {
    counts.pending + counts.sent + counts.delivered + counts.read + counts.failed
}

async fn status_of(store: &dyn MessageStore, id: &str) -> Status {
    store.message(id).await.expect("read message").expect("message exists").status
}

async fn unread(store: &dyn MessageStore, user: &str, conversation_id: &str) -> u64 {
    let list = store.conversations(user, None, 200).await.expect("conversation list");
    list.iter().find(|summary| summary.conversation.id == conversation_id).expect("conversation listed").unread_count
}

/// One `#[tokio::test]` per property of the `MessageStore` suite, in a module
/// `store_suite`. `$factory` is an expression (evaluated in the caller's scope, once per
/// test) giving the factory the properties call for each store they need:
/// `impl Fn() -> impl Future<Output = Arc<dyn MessageStore>>`; it keeps whatever the
/// stores need alive (a temporary directory, a connection). The caller needs `tokio`.
#[macro_export]
macro_rules! store_suite {
    ($factory:expr) => {
        $crate::store_suite!(@properties $factory;
            users_crud,
            conversation_for_pair_is_atomic,
            insert_is_idempotent,
            history_pages_newest_first,
            one_way_history_for_recipient_and_sender,
            conversation_list_order_and_unread,
            conversations_active_in_one_millisecond_list_newest_message_first,
            apply_status_moves_forward_only,
            undelivered_follows_status,
            dead_letters_follow_failures,
            attempts_append_in_order,
            broadcast_counts_add_up,
            broadcast_recipients_pages,
            projection_writes_each_message_once_with_its_positions,
            projection_keeps_statuses_that_arrive_before_their_message,
            projection_statuses_only_move_forward,
            projection_applies_statuses_folded_into_a_stored_message,
            projection_creates_chat_conversations_and_broadcasts,
            projection_keeps_idempotency_answers,
            projection_appends_attempts_to_their_timelines,
            projection_refuses_a_batch_folded_from_positions_that_moved,
            check_succeeds,
        );
    };
    (@properties $factory:expr; $($property:ident,)*) => {
        mod store_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    $crate::testsuite::store::$property($factory).await;
                }
            )*
        }
    };
}

/// Users: create, read, read many, update; a taken id is `Conflict`, a missing one `NotFound`.
pub async fn users_crud<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let business = new_user(UserKind::Business);
    let mobile = new_user(UserKind::Mobile);
    store.create_user(&business).await.expect("create business");
    store.create_user(&mobile).await.expect("create mobile");
    assert_eq!(store.user(&business.id).await.expect("read"), Some(business.clone()));
    assert_eq!(store.user(&unique("nobody")).await.expect("read missing"), None);

    let mut many = store.users(&[mobile.id.clone(), unique("nobody"), business.id.clone()]).await.expect("read many");
    many.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![business.clone(), mobile.clone()];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(many, expected, "users() returns the existing ones only");

    let mut taken = new_user(UserKind::Mobile);
    taken.id = business.id.clone();
    let error = store.create_user(&taken).await.expect_err("duplicate id");
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(store.user(&business.id).await.expect("read"), Some(business.clone()), "duplicate changed nothing");

    let mut updated = business.clone();
    updated.display_name = "Renamed".into();
    updated.permissions = vec![Permission::Send];
    store.update_user(&updated).await.expect("update");
    assert_eq!(store.user(&business.id).await.expect("read"), Some(updated));

    let mut preferences = mobile.clone();
    preferences.notifications_enabled = false;
    store.update_user(&preferences).await.expect("update preferences");
    assert_eq!(store.user(&mobile.id).await.expect("read"), Some(preferences));

    let error = store.update_user(&new_user(UserKind::Mobile)).await.expect_err("update missing");
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

/// Req 1.11: one conversation per pair, even when ten callers race to create it.
pub async fn conversation_for_pair_is_atomic<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let business = new_user(UserKind::Business);
    let mobile = new_user(UserKind::Mobile);
    store.create_user(&business).await.expect("create business");
    store.create_user(&mobile).await.expect("create mobile");
    let now = Millis::now();

    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let store = Arc::clone(&store);
        let (business, mobile) = (business.id.clone(), mobile.id.clone());
        racers.spawn(async move { store.conversation_for_pair(&business, &mobile, &ids::new_id(), now).await });
    }
    let mut seen = Vec::new();
    while let Some(joined) = racers.join_next().await {
        seen.push(joined.expect("task").expect("conversation_for_pair"));
    }
    let first = seen[0].clone();
    assert!(seen.iter().all(|conversation| *conversation == first), "racing callers got different conversations");
    assert_eq!(first.business_id, business.id);
    assert_eq!(first.mobile_id, mobile.id);
    assert_eq!((first.created_at, first.updated_at), (now, now));
    assert_eq!(store.conversation(&first.id).await.expect("read"), Some(first.clone()));
    assert_eq!(store.conversation(&ids::new_id()).await.expect("read missing"), None);

    let again = store.conversation_for_pair(&business.id, &mobile.id, &ids::new_id(), now.plus_ms(5)).await;
    assert_eq!(again.expect("existing pair"), first, "a later call returns the same conversation unchanged");

    let other_mobile = new_user(UserKind::Mobile);
    store.create_user(&other_mobile).await.expect("create mobile");
    let other =
        store.conversation_for_pair(&business.id, &other_mobile.id, &ids::new_id(), now).await.expect("second pair");
    assert_ne!(other.id, first.id);

    // Both participants list it once, with nothing in it yet (Req 1.13, 1.14).
    for user in [&business.id, &mobile.id] {
        let list = store.conversations(user, None, 50).await.expect("list");
        let mine: Vec<_> = list.iter().filter(|summary| summary.conversation.id == first.id).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].last_message, None);
        assert_eq!(mine[0].unread_count, 0);
    }
    assert_eq!(store.conversations(&mobile.id, None, 50).await.expect("list").len(), 1);
    assert_eq!(store.conversations(&business.id, None, 50).await.expect("list").len(), 2);
}

/// Req 10.3: inserting a message again (also twice in one batch) stores it once and
/// moves no counter a second time.
pub async fn insert_is_idempotent<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let (business, mobile, conversation) = new_pair(store.as_ref(), now).await;
    let message = chat(&conversation, &business.id, now.plus_ms(1));
    let direct = one_way(&business.id, &mobile.id, now.plus_ms(2));

    store.insert_messages(&[message.clone(), direct.clone()]).await.expect("insert");
    store.insert_messages(&[message.clone(), direct.clone()]).await.expect("insert again");
    store.insert_messages(&[message.clone(), message.clone()]).await.expect("insert twice in a batch");

    // Req 10.7: readable at once, exactly as given.
    assert_eq!(store.message(&message.id).await.expect("read"), Some(message.clone()));
    assert_eq!(store.message(&direct.id).await.expect("read"), Some(direct.clone()));
    let history = store.conversation_messages(&conversation.id, None, 50).await.expect("history");
    assert_eq!(ids_of(&history), vec![message.id.clone()]);
    assert_eq!(unread(store.as_ref(), &mobile.id, &conversation.id).await, 1);
    assert_eq!(unread(store.as_ref(), &business.id, &conversation.id).await, 0);
    let undelivered = store.undelivered(&mobile.id, None, 50).await.expect("undelivered");
    assert_eq!(ids_of(&undelivered), vec![message.id.clone(), direct.id.clone()]);
    let received = store.one_way_messages(&mobile.id, OneWayRole::Recipient, None, 50).await.expect("received");
    assert_eq!(ids_of(&received), vec![direct.id.clone()]);
    let sent = store.one_way_messages(&business.id, OneWayRole::Sender, None, 50).await.expect("sent");
    assert_eq!(ids_of(&sent), vec![direct.id.clone()]);

    // A re-insert does not undo a status change either.
    store.apply_status(&[change(&message.id, Status::Read, now.plus_ms(3))]).await.expect("read");
    store.insert_messages(std::slice::from_ref(&message)).await.expect("insert after read");
    assert_eq!(status_of(store.as_ref(), &message.id).await, Status::Read);
    assert_eq!(unread(store.as_ref(), &mobile.id, &conversation.id).await, 0);

    // A broadcast's message inserted twice leaves its counts alone.
    let broadcast = Broadcast {
        id: ids::new_id(),
        sender_id: business.id.clone(),
        recipient_ids: vec![mobile.id.clone()],
        content: "hello".into(),
        media_ids: Vec::new(),
        priority: Priority::Low,
        first_message_id: ids::reserve(1).to_string(),
        created_at: now,
    };
    store.create_broadcast(&broadcast).await.expect("create broadcast");
    let part = broadcast.message(0).expect("first message");
    store.insert_messages(std::slice::from_ref(&part)).await.expect("insert");
    store.apply_status(&[change(&part.id, Status::Delivered, now.plus_ms(4))]).await.expect("delivered");
    store.insert_messages(std::slice::from_ref(&part)).await.expect("insert again");
    let counts = store.broadcast_counts(&broadcast.id).await.expect("counts").expect("broadcast exists");
    assert_eq!(counts, StatusCounts { delivered: 1, ..StatusCounts::default() });

    // A message inserted with another status than `sent` keeps it.
    let mut delivered = one_way(&business.id, &mobile.id, now.plus_ms(5));
    delivered.status = Status::Delivered;
    store.insert_messages(std::slice::from_ref(&delivered)).await.expect("insert delivered");
    assert_eq!(store.message(&delivered.id).await.expect("read"), Some(delivered.clone()));
    let undelivered = store.undelivered(&mobile.id, None, 50).await.expect("undelivered");
    assert!(!ids_of(&undelivered).contains(&delivered.id), "only `sent` messages are undelivered");
}

/// Req 1.7, API.md "Pages": history newest first below a `before` cursor; new messages
/// arriving during a walk cause no skipped or repeated items.
pub async fn history_pages_newest_first<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let start = Millis::now();
    let (business, mobile, conversation) = new_pair(store.as_ref(), start).await;
    let (_, _, other_conversation) = new_pair(store.as_ref(), start).await;
    let messages: Vec<Message> = (0..25)
        .map(|i| {
            let sender = if i % 3 == 0 { &mobile.id } else { &business.id };
            chat(&conversation, sender, start.plus_ms(i))
        })
        .collect();
    for chunk in messages.chunks(7) {
        store.insert_messages(chunk).await.expect("insert");
    }
    let noise = chat(&other_conversation, &other_conversation.business_id, start.plus_ms(3));
    store.insert_messages(&[noise]).await.expect("insert elsewhere");

    let expected = newest_first(&messages);
    let first = store.conversation_messages(&conversation.id, None, 10).await.expect("first page");
    assert_eq!(ids_of(&first), expected[..10].to_vec());
    assert_eq!(first[0], messages[24], "pages carry whole messages");

    // Walk with a page size of 10 while new messages keep arriving on top.
    let mut walked = Vec::new();
    let mut before: Option<String> = None;
    let mut arrivals = 0;
    loop {
        let page = store.conversation_messages(&conversation.id, before.as_deref(), 10).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        walked.extend(ids_of(&page));
        before = page.last().map(|message| message.id.clone());
        let late = chat(&conversation, &business.id, start.plus_ms(100 + arrivals));
        store.insert_messages(&[late]).await.expect("insert during the walk");
        arrivals += 1;
    }
    assert_eq!(walked, expected, "walk skipped or repeated messages");
    let before_oldest = store.conversation_messages(&conversation.id, Some(&messages[0].id), 10).await.expect("end");
    assert!(before_oldest.is_empty());
    let all = store.conversation_messages(&conversation.id, None, 200).await.expect("all");
    assert_eq!(all.len(), 25 + usize::try_from(arrivals).unwrap_or_default());
    assert!(all.iter().all(|message| message.conversation_id.as_deref() == Some(conversation.id.as_str())));
}

/// Req 1.8: one-way history for the recipient (mobile) and the sender (business, its
/// broadcasts' messages included), newest first with a `before` cursor; chat stays out.
pub async fn one_way_history_for_recipient_and_sender<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let (business, first_mobile, conversation) = new_pair(store.as_ref(), now).await;
    let second_mobile = new_user(UserKind::Mobile);
    store.create_user(&second_mobile).await.expect("create mobile");

    let to_first = one_way(&business.id, &first_mobile.id, now.plus_ms(1));
    let to_second = one_way(&business.id, &second_mobile.id, now.plus_ms(2));
    let chatted = chat(&conversation, &business.id, now.plus_ms(3));
    store.insert_messages(&[to_first.clone(), to_second.clone(), chatted]).await.expect("insert");

    let broadcast = Broadcast {
        id: ids::new_id(),
        sender_id: business.id.clone(),
        recipient_ids: vec![first_mobile.id.clone(), second_mobile.id.clone()],
        content: "to everyone".into(),
        media_ids: vec![unique("media")],
        priority: Priority::Normal,
        first_message_id: ids::reserve(2).to_string(),
        created_at: now.plus_ms(4),
    };
    store.create_broadcast(&broadcast).await.expect("create broadcast");
    let parts: Vec<Message> = (0..2).map(|i| broadcast.message(i).expect("part")).collect();
    store.insert_messages(&parts).await.expect("insert broadcast messages");

    let received = store.one_way_messages(&first_mobile.id, OneWayRole::Recipient, None, 50).await.expect("received");
    assert_eq!(ids_of(&received), vec![parts[0].id.clone(), to_first.id.clone()]);
    assert_eq!(received[0], parts[0]);
    assert_eq!(received[0].broadcast_id.as_deref(), Some(broadcast.id.as_str()));
    let sent = store.one_way_messages(&business.id, OneWayRole::Sender, None, 50).await.expect("sent");
    assert_eq!(
        ids_of(&sent),
        vec![parts[1].id.clone(), parts[0].id.clone(), to_second.id.clone(), to_first.id.clone()],
        "a business's sent list holds its broadcasts' messages"
    );
    let page = store.one_way_messages(&business.id, OneWayRole::Sender, Some(&parts[0].id), 1).await.expect("page");
    assert_eq!(ids_of(&page), vec![to_second.id.clone()]);
    let page = store.one_way_messages(&first_mobile.id, OneWayRole::Recipient, Some(&to_first.id), 10).await;
    assert!(page.expect("last page").is_empty());
    assert!(store.one_way_messages(&first_mobile.id, OneWayRole::Sender, None, 50).await.expect("none").is_empty());
    assert!(store.one_way_messages(&business.id, OneWayRole::Recipient, None, 50).await.expect("none").is_empty());
}

/// A new business with a conversation, made at `at`, with each of `count` new mobile users.
async fn business_with_conversations(store: &dyn MessageStore, count: usize, at: Millis) -> (User, Vec<Conversation>) {
    let business = new_user(UserKind::Business);
    store.create_user(&business).await.expect("create business");
    let mut conversations = Vec::with_capacity(count);
    for _ in 0..count {
        let mobile = new_user(UserKind::Mobile);
        store.create_user(&mobile).await.expect("create mobile");
        let conversation =
            store.conversation_for_pair(&business.id, &mobile.id, &ids::new_id(), at).await.expect("conversation");
        conversations.push(conversation);
    }
    (business, conversations)
}

/// Req 1.13/1.14, API.md "Pages": the list is ordered by `ActivityPosition` descending,
/// walks with the cursor of the last item, shows the last message, and counts messages
/// addressed to the viewer that are not read (each read counts once).
pub async fn conversation_list_order_and_unread<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let start = Millis::now();
    let (business, conversations) = business_with_conversations(store.as_ref(), 4, start).await;
    // Activity: c0 at +10, c1 at +20, c2 at +30, then c0 again at +40 and +41; c3 stays empty.
    let to_c0 = chat(&conversations[0], &business.id, start.plus_ms(10));
    // Made (so its id is older) before to_c1, stored only at the end.
    let late = chat(&conversations[1], &business.id, start.plus_ms(15));
    let to_c1 = chat(&conversations[1], &business.id, start.plus_ms(20));
    let from_c2 = chat(&conversations[2], &conversations[2].mobile_id, start.plus_ms(30));
    store.insert_messages(&[to_c0.clone(), to_c1.clone(), from_c2.clone()]).await.expect("insert");
    let again_c0 = chat(&conversations[0], &business.id, start.plus_ms(40));
    let reply_c0 = chat(&conversations[0], &conversations[0].mobile_id, start.plus_ms(41));
    store.insert_messages(std::slice::from_ref(&again_c0)).await.expect("insert");
    store.insert_messages(std::slice::from_ref(&reply_c0)).await.expect("insert");

    let list = store.conversations(&business.id, None, 50).await.expect("list");
    let order: Vec<&str> = list.iter().map(|summary| summary.conversation.id.as_str()).collect();
    let expected =
        [&conversations[0].id, &conversations[2].id, &conversations[1].id, &conversations[3].id].map(String::as_str);
    assert_eq!(order, expected, "most recently active first");
    assert_eq!(list[0].conversation.updated_at, start.plus_ms(41), "updated_at is the last message's time");
    assert_eq!(list[0].last_message.as_ref(), Some(&reply_c0), "last message is the newest, whole");
    assert_eq!(list[3].conversation.updated_at, start, "an empty conversation keeps its creation time");
    assert_eq!(list[3].last_message, None);
    let unread_by_business: Vec<u64> = list.iter().map(|summary| summary.unread_count).collect();
    assert_eq!(unread_by_business, vec![1, 1, 0, 0], "the business counts only what it received");

    // The walk with one item per page meets every conversation once, in the same order.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = store.conversations(&business.id, after.clone(), 1).await.expect("page");
        let Some(item) = page.first() else { break };
        assert_eq!(page.len(), 1);
        walked.push(item.conversation.id.clone());
        after = Some(item.position());
    }
    assert_eq!(walked, expected.map(str::to_owned).to_vec());

    // The mobile side of c0: two messages from the business, unread.
    let mobile = conversations[0].mobile_id.clone();
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 2);
    let mobile_list = store.conversations(&mobile, None, 50).await.expect("list");
    assert_eq!(mobile_list.len(), 1);
    assert_eq!(mobile_list[0].last_message.as_ref(), Some(&reply_c0));

    // Delivered is not read; read drops the count once, even when repeated.
    store.apply_status(&[change(&to_c0.id, Status::Delivered, start.plus_ms(50))]).await.expect("delivered");
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 2);
    store.apply_status(&[change(&to_c0.id, Status::Read, start.plus_ms(51))]).await.expect("read");
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 1);
    store
        .apply_status(&[
            change(&to_c0.id, Status::Read, start.plus_ms(52)),
            change(&to_c0.id, Status::Read, start.plus_ms(53)),
        ])
        .await
        .expect("read again");
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 1, "a repeated read counts once");
    // Reading the viewer's own message does not touch the viewer's count.
    store.apply_status(&[change(&reply_c0.id, Status::Read, start.plus_ms(54))]).await.expect("read reply");
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 1);
    assert_eq!(unread(store.as_ref(), &business.id, &conversations[0].id).await, 0);
    // A failed message stays unread; read status changes do not reorder the list.
    store.apply_status(&[failure(&again_c0.id, start.plus_ms(55), "timeout", 7)]).await.expect("fail");
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 1);
    store.apply_status(&[change(&again_c0.id, Status::Sent, start.plus_ms(56))]).await.expect("retry");
    store.apply_status(&[change(&again_c0.id, Status::Read, start.plus_ms(57))]).await.expect("read");
    assert_eq!(unread(store.as_ref(), &mobile, &conversations[0].id).await, 0);
    let list = store.conversations(&business.id, None, 50).await.expect("list");
    let order: Vec<&str> = list.iter().map(|summary| summary.conversation.id.as_str()).collect();
    assert_eq!(order, expected);
    assert_eq!(list[0].last_message.as_ref().map(|message| message.status), Some(Status::Read));

    // A message inserted late (older than the newest) counts but does not move the list.
    store.insert_messages(std::slice::from_ref(&late)).await.expect("insert late");
    let list = store.conversations(&business.id, None, 50).await.expect("list");
    let c1 = list.iter().find(|summary| summary.conversation.id == conversations[1].id).expect("listed");
    assert_eq!(c1.last_message.as_ref(), Some(&to_c1));
    assert_eq!(c1.conversation.updated_at, start.plus_ms(20));
    assert_eq!(unread(store.as_ref(), &conversations[1].mobile_id, &conversations[1].id).await, 2);
    let history = store.conversation_messages(&conversations[1].id, None, 10).await.expect("history");
    assert_eq!(ids_of(&history), vec![to_c1.id.clone(), late.id.clone()]);
}

/// Req 1.14: "most recently active first" holds within one millisecond too: conversations
/// whose last messages share a timestamp list the newest message (ids are time-ordered)
/// first, whatever their conversation ids, and the walk keeps that order.
pub async fn conversations_active_in_one_millisecond_list_newest_message_first<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let at = Millis::now();
    let (business, conversations) = business_with_conversations(store.as_ref(), 6, at).await;
    let messages: Vec<Message> = conversations.iter().map(|conversation| chat(conversation, &business.id, at)).collect();
    store.insert_messages(&messages).await.expect("insert");
    let expected: Vec<String> =
        messages.iter().rev().map(|message| message.conversation_id.clone().expect("chat")).collect();
    let list = store.conversations(&business.id, None, 50).await.expect("list");
    let order: Vec<String> = list.iter().map(|summary| summary.conversation.id.clone()).collect();
    assert_eq!(order, expected, "newest message first within one millisecond");
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = store.conversations(&business.id, after.clone(), 2).await.expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.position());
        walked.extend(page.iter().map(|summary| summary.conversation.id.clone()));
    }
    assert_eq!(walked, expected, "the walk keeps the order");
}

/// Req 9, Req 10.2: status only moves forward, each change bumps the version, changes
/// in one batch apply in order, unknown messages are skipped, failed → sent is allowed.
pub async fn apply_status_moves_forward_only<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let (business, mobile, conversation) = new_pair(store.as_ref(), now).await;
    let message = chat(&conversation, &business.id, now.plus_ms(1));
    store.insert_messages(std::slice::from_ref(&message)).await.expect("insert");

    let applied = store.apply_status(&[change(&message.id, Status::Delivered, now.plus_ms(2))]).await.expect("apply");
    assert_eq!(applied.len(), 1);
    let delivered = &applied[0];
    assert_eq!(delivered.message_id, message.id);
    assert_eq!((delivered.previous, delivered.status, delivered.version), (Status::Sent, Status::Delivered, 2));
    assert_eq!(delivered.sender_id, business.id);
    assert_eq!(delivered.recipient_id, mobile.id);
    assert_eq!(delivered.conversation_id.as_deref(), Some(conversation.id.as_str()));
    assert_eq!(delivered.broadcast_id, None);
    assert_eq!(delivered.at, now.plus_ms(2));

    let applied = store.apply_status(&[change(&message.id, Status::Read, now.plus_ms(3))]).await.expect("apply");
    assert_eq!(
        applied.iter().map(|a| (a.previous, a.status, a.version)).collect::<Vec<_>>(),
        vec![(Status::Delivered, Status::Read, 3)]
    );
    // Going back is a no-op, and so is failing a read message.
    let backwards = [
        change(&message.id, Status::Delivered, now.plus_ms(4)),
        change(&message.id, Status::Sent, now.plus_ms(4)),
        failure(&message.id, now.plus_ms(4), "late", 1),
        change(&ids::new_id(), Status::Delivered, now.plus_ms(4)),
    ];
    assert!(store.apply_status(&backwards).await.expect("apply").is_empty());
    let stored = store.message(&message.id).await.expect("read").expect("exists");
    assert_eq!((stored.status, stored.status_changed_at), (Status::Read, now.plus_ms(3)), "Req 9.7");

    // Several changes for one message in one batch apply in order.
    let second = one_way(&business.id, &mobile.id, now.plus_ms(5));
    store.insert_messages(std::slice::from_ref(&second)).await.expect("insert");
    let batch = [
        change(&second.id, Status::Delivered, now.plus_ms(6)),
        change(&second.id, Status::Read, now.plus_ms(7)),
        change(&second.id, Status::Delivered, now.plus_ms(8)),
    ];
    let applied = store.apply_status(&batch).await.expect("apply");
    assert_eq!(
        applied.iter().map(|a| (a.previous, a.status, a.version)).collect::<Vec<_>>(),
        vec![(Status::Sent, Status::Delivered, 2), (Status::Delivered, Status::Read, 3)]
    );
    assert_eq!(applied[1].conversation_id, None);

    // Failed keeps its error (Req 9.5); failed → sent (reprocessing) is allowed and clears it.
    let third = one_way(&business.id, &mobile.id, now.plus_ms(9));
    store.insert_messages(std::slice::from_ref(&third)).await.expect("insert");
    let applied = store.apply_status(&[failure(&third.id, now.plus_ms(10), "no ack", 7)]).await.expect("fail");
    assert_eq!(applied.len(), 1);
    let failed = store.message(&third.id).await.expect("read").expect("exists");
    assert_eq!((failed.status, failed.error.as_deref()), (Status::Failed, Some("no ack")));
    assert!(store
        .apply_status(&[change(&third.id, Status::Delivered, now.plus_ms(11))])
        .await
        .expect("no-op")
        .is_empty());
    let applied = store.apply_status(&[change(&third.id, Status::Sent, now.plus_ms(12))]).await.expect("retry");
    assert_eq!(
        applied.iter().map(|a| (a.previous, a.status, a.version)).collect::<Vec<_>>(),
        vec![(Status::Failed, Status::Sent, 3)]
    );
    let retried = store.message(&third.id).await.expect("read").expect("exists");
    assert_eq!((retried.status, retried.error), (Status::Sent, None));
    let applied = store.apply_status(&[change(&third.id, Status::Delivered, now.plus_ms(13))]).await.expect("deliver");
    assert_eq!(applied[0].version, 4, "versions keep increasing");

    // pending → sent.
    let mut pending = one_way(&business.id, &mobile.id, now.plus_ms(14));
    pending.status = Status::Pending;
    store.insert_messages(std::slice::from_ref(&pending)).await.expect("insert");
    let applied = store.apply_status(&[change(&pending.id, Status::Sent, now.plus_ms(15))]).await.expect("sent");
    assert_eq!(applied.iter().map(|a| (a.previous, a.version)).collect::<Vec<_>>(), vec![(Status::Pending, 2)]);
}

/// Req 1.3: a recipient's undelivered messages are exactly those whose status is `sent`,
/// oldest first after an `after` cursor.
pub async fn undelivered_follows_status<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let (business, mobile, conversation) = new_pair(store.as_ref(), now).await;
    let mut messages = vec![
        one_way(&business.id, &mobile.id, now.plus_ms(1)),
        chat(&conversation, &business.id, now.plus_ms(2)),
        one_way(&business.id, &mobile.id, now.plus_ms(3)),
        chat(&conversation, &business.id, now.plus_ms(4)),
    ];
    let mut pending = one_way(&business.id, &mobile.id, now.plus_ms(5));
    pending.status = Status::Pending;
    messages.push(pending.clone());
    let from_mobile = chat(&conversation, &mobile.id, now.plus_ms(6));
    messages.push(from_mobile.clone());
    store.insert_messages(&messages).await.expect("insert");

    let waiting = store.undelivered(&mobile.id, None, 50).await.expect("undelivered");
    assert_eq!(ids_of(&waiting), ids_of(&messages[..4]), "sent messages, oldest first");
    assert_eq!(waiting[1], messages[1]);
    let after = store.undelivered(&mobile.id, Some(&messages[1].id), 1).await.expect("after");
    assert_eq!(ids_of(&after), vec![messages[2].id.clone()]);
    assert_eq!(ids_of(&store.undelivered(&business.id, None, 50).await.expect("undelivered")), vec![from_mobile.id]);

    store
        .apply_status(&[
            change(&messages[0].id, Status::Delivered, now.plus_ms(10)),
            change(&messages[1].id, Status::Read, now.plus_ms(10)),
            failure(&messages[2].id, now.plus_ms(10), "no ack", 7),
            change(&pending.id, Status::Sent, now.plus_ms(10)),
        ])
        .await
        .expect("apply");
    let waiting = store.undelivered(&mobile.id, None, 50).await.expect("undelivered");
    assert_eq!(ids_of(&waiting), vec![messages[3].id.clone(), pending.id.clone()]);
    assert_eq!(waiting[1].status, Status::Sent);

    store.apply_status(&[change(&messages[2].id, Status::Sent, now.plus_ms(11))]).await.expect("retry");
    let waiting = store.undelivered(&mobile.id, None, 50).await.expect("undelivered");
    assert_eq!(ids_of(&waiting), vec![messages[2].id.clone(), messages[3].id.clone(), pending.id.clone()]);
}

/// Req 4.2, 4.5: a failure adds a dead letter, reprocessing (failed → sent) removes it;
/// dead letters are listed newest first (failed_at, then message id) with a cursor.
pub async fn dead_letters_follow_failures<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let (business, mobile, _) = new_pair(store.as_ref(), now).await;
    let messages: Vec<Message> = (0..4).map(|i| one_way(&business.id, &mobile.id, now.plus_ms(i))).collect();
    store.insert_messages(&messages).await.expect("insert");
    let mine: HashSet<String> = ids_of(&messages).into_iter().collect();
    // Walk every dead letter one per page and keep this suite's own.
    let walk = |store: Arc<dyn MessageStore>, mine: HashSet<String>| async move {
        let mut found = Vec::new();
        let mut after: Option<(Millis, String)> = None;
        loop {
            let page = store.dead_letters(after.clone(), 1).await.expect("page");
            let Some(letter) = page.into_iter().next() else { break };
            after = Some((letter.failed_at, letter.message_id.clone()));
            if mine.contains(&letter.message_id) {
                found.push(letter);
            }
        }
        found
    };

    store
        .apply_status(&[
            failure(&messages[0].id, now.plus_ms(100), "first", 7),
            failure(&messages[1].id, now.plus_ms(300), "second", 6),
            failure(&messages[2].id, now.plus_ms(200), "third", 7),
            failure(&messages[3].id, now.plus_ms(300), "fourth", 7),
        ])
        .await
        .expect("fail");
    let letters = walk(Arc::clone(&store), mine.clone()).await;
    let order: Vec<&str> = letters.iter().map(|letter| letter.message_id.as_str()).collect();
    assert_eq!(order, vec![&messages[3].id, &messages[1].id, &messages[2].id, &messages[0].id]);
    assert_eq!(letters[1].attempts, 6);
    assert_eq!(letters[1].error, "second");
    assert_eq!(letters[1].failed_at, now.plus_ms(300));
    let top = store.dead_letters(None, 500).await.expect("page");
    let listed: Vec<&str> =
        top.iter().filter(|letter| mine.contains(&letter.message_id)).map(|l| l.message_id.as_str()).collect();
    assert_eq!(listed, order, "one page lists them in the same order");

    // Reprocessing removes the letter; failing again adds a new one at the new time.
    store.apply_status(&[change(&messages[1].id, Status::Sent, now.plus_ms(400))]).await.expect("retry");
    let letters = walk(Arc::clone(&store), mine.clone()).await;
    let order: Vec<&str> = letters.iter().map(|letter| letter.message_id.as_str()).collect();
    assert_eq!(order, vec![&messages[3].id, &messages[2].id, &messages[0].id]);
    store.apply_status(&[failure(&messages[1].id, now.plus_ms(500), "again", 7)]).await.expect("fail again");
    let letters = walk(Arc::clone(&store), mine.clone()).await;
    assert_eq!(letters.len(), 4);
    assert_eq!((letters[0].message_id.as_str(), letters[0].error.as_str()), (messages[1].id.as_str(), "again"));
    assert_eq!(letters[0].failed_at, now.plus_ms(500));
    // A no-op change (failed → delivered) leaves the letter alone.
    store.apply_status(&[change(&messages[0].id, Status::Delivered, now.plus_ms(600))]).await.expect("no-op");
    assert_eq!(walk(Arc::clone(&store), mine).await.len(), 4);
}

/// Req 4.7: attempts are appended to their message's timeline, oldest first.
pub async fn attempts_append_in_order<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let (business, mobile, _) = new_pair(store.as_ref(), now).await;
    let message = one_way(&business.id, &mobile.id, now);
    let other = one_way(&business.id, &mobile.id, now.plus_ms(1));
    store.insert_messages(&[message.clone(), other.clone()]).await.expect("insert");
    let attempt = |message_id: &str, attempt: u32, outcome: &str, error: Option<&str>| Attempt {
        message_id: message_id.to_owned(),
        attempt,
        at: now.plus_ms(i64::from(attempt) * 1000),
        channel: if attempt == 3 { Channel::Push } else { Channel::Socket },
        outcome: outcome.to_owned(),
        error: error.map(str::to_owned),
    };
    let first =
        vec![attempt(&message.id, 1, "timeout", Some("no ack in 5s")), attempt(&other.id, 1, "delivered", None)];
    let second = vec![attempt(&message.id, 2, "disconnected", None), attempt(&message.id, 3, "delivered", None)];
    store.record_attempts(&first).await.expect("record");
    store.record_attempts(&second).await.expect("record");
    assert_eq!(
        store.attempts(&message.id).await.expect("attempts"),
        vec![first[0].clone(), second[0].clone(), second[1].clone()]
    );
    assert_eq!(store.attempts(&other.id).await.expect("attempts"), vec![first[1].clone()]);
    assert!(store.attempts(&ids::new_id()).await.expect("attempts").is_empty());
    // The same attempt number recorded again (a reconnect starts afresh) is kept too.
    store.record_attempts(&[attempt(&other.id, 1, "timeout", None)]).await.expect("record");
    assert_eq!(store.attempts(&other.id).await.expect("attempts").len(), 2);
}

fn broadcast_to(sender: &str, recipients: &[String], at: Millis) -> Broadcast {
    Broadcast {
        id: ids::new_id(),
        sender_id: sender.to_owned(),
        recipient_ids: recipients.to_vec(),
        content: "announcement".into(),
        media_ids: vec![unique("media")],
        priority: Priority::High,
        first_message_id: ids::reserve(u32::try_from(recipients.len()).unwrap_or(u32::MAX)).to_string(),
        created_at: at,
    }
}

/// API.md "Broadcasts": counts add up to the total from the start (recipients without a
/// message yet count as `sent`) and follow status changes; a taken id is `Conflict`.
pub async fn broadcast_counts_add_up<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let business = new_user(UserKind::Business);
    store.create_user(&business).await.expect("create business");
    let recipients: Vec<String> = (0..5).map(|_| unique("mobile")).collect();
    let broadcast = broadcast_to(&business.id, &recipients, now);
    store.create_broadcast(&broadcast).await.expect("create");
    assert_eq!(store.broadcast(&broadcast.id).await.expect("read"), Some(broadcast.clone()));
    let mut taken = broadcast_to(&business.id, &recipients[..1], now);
    taken.id = broadcast.id.clone();
    assert_eq!(store.create_broadcast(&taken).await.expect_err("duplicate").kind(), ErrorKind::Conflict);
    assert_eq!(store.broadcast(&broadcast.id).await.expect("read"), Some(broadcast.clone()), "unchanged");

    let counts = |store: Arc<dyn MessageStore>, id: String| async move {
        let counts = store.broadcast_counts(&id).await.expect("counts").expect("broadcast exists");
        assert_eq!(total(&counts), 5, "counts add up to the total: {counts:?}");
        counts
    };
    assert_eq!(counts(Arc::clone(&store), broadcast.id.clone()).await, StatusCounts { sent: 5, ..Default::default() });

    let parts: Vec<Message> = (0..5).map(|i| broadcast.message(i).expect("part")).collect();
    store.insert_messages(&parts[..3]).await.expect("insert first chunk");
    assert_eq!(counts(Arc::clone(&store), broadcast.id.clone()).await, StatusCounts { sent: 5, ..Default::default() });

    store
        .apply_status(&[
            change(&parts[0].id, Status::Delivered, now.plus_ms(1)),
            change(&parts[1].id, Status::Delivered, now.plus_ms(1)),
            change(&parts[1].id, Status::Read, now.plus_ms(2)),
            failure(&parts[2].id, now.plus_ms(3), "no ack", 7),
            change(&parts[0].id, Status::Sent, now.plus_ms(4)),
        ])
        .await
        .expect("apply");
    let expected = StatusCounts { sent: 2, delivered: 1, read: 1, failed: 1, pending: 0 };
    assert_eq!(counts(Arc::clone(&store), broadcast.id.clone()).await, expected);

    store.insert_messages(&parts[2..]).await.expect("insert the rest (one again)");
    assert_eq!(counts(Arc::clone(&store), broadcast.id.clone()).await, expected);
    store.apply_status(&[change(&parts[2].id, Status::Sent, now.plus_ms(5))]).await.expect("retry");
    store.apply_status(&[change(&parts[4].id, Status::Read, now.plus_ms(6))]).await.expect("read");
    assert_eq!(
        counts(Arc::clone(&store), broadcast.id.clone()).await,
        StatusCounts { sent: 2, delivered: 1, read: 2, failed: 0, pending: 0 }
    );

    assert_eq!(store.broadcast_counts(&ids::new_id()).await.expect("counts"), None);
    assert_eq!(store.broadcast(&ids::new_id()).await.expect("read"), None);
}

/// API.md "Broadcasts": recipients page in request order from an index, each with its
/// derived message id and its message's status (`sent` before the message exists).
pub async fn broadcast_recipients_pages<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let business = new_user(UserKind::Business);
    store.create_user(&business).await.expect("create business");
    let recipients: Vec<String> = (0..5).map(|_| unique("mobile")).collect();
    let broadcast = broadcast_to(&business.id, &recipients, now);
    store.create_broadcast(&broadcast).await.expect("create");
    let parts: Vec<Message> = (0..5).map(|i| broadcast.message(i).expect("part")).collect();
    store.insert_messages(&parts[..2]).await.expect("insert some");
    store.apply_status(&[change(&parts[1].id, Status::Read, now.plus_ms(1))]).await.expect("read");

    let mut walked = Vec::new();
    let mut from = 0;
    loop {
        let page = store.broadcast_recipients(&broadcast.id, from, 2).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        from += page.len();
        walked.extend(page);
    }
    assert_eq!(walked.len(), 5);
    for (i, recipient) in walked.iter().enumerate() {
        assert_eq!(recipient.recipient_id, recipients[i], "request order");
        assert_eq!(recipient.message_id, parts[i].id);
        assert_eq!(Some(recipient.message_id.clone()), ids::nth_in_block(&broadcast.first_message_id, i as u32));
        let expected = if i == 1 { Status::Read } else { Status::Sent };
        assert_eq!(recipient.status, expected);
    }
    let middle = store.broadcast_recipients(&broadcast.id, 3, 10).await.expect("page");
    assert_eq!(middle.iter().map(|r| r.recipient_id.clone()).collect::<Vec<_>>(), recipients[3..].to_vec());
    assert!(store.broadcast_recipients(&broadcast.id, 99, 10).await.expect("past the end").is_empty());
    assert!(store.broadcast_recipients(&ids::new_id(), 0, 10).await.expect("unknown").is_empty());
}

/// Req 6.4: the readiness check passes on a working store.
pub async fn check_succeeds<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    store.check().await.expect("check");
}

fn position(topic: &str, partition: u32, next_offset: u64) -> LogPosition {
    LogPosition { topic: topic.to_owned(), partition, next_offset }
}

/// `project` writes a folded batch and its positions in one transaction; a message already
/// stored is skipped (its counters do not move twice), positions are replaced, not added.
pub async fn projection_writes_each_message_once_with_its_positions<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let topic = unique("topic");
    assert!(store.projected_positions().await.expect("positions").iter().all(|p| p.topic != topic));
    let (business, mobile, conversation) = new_pair(store.as_ref(), Millis(1_000)).await;
    let mut acked = chat(&conversation, &business.id, Millis(2_000));
    acked.status = Status::Delivered;
    let waiting = chat(&conversation, &business.id, Millis(2_001));
    let batch = Projection {
        messages: vec![acked.clone(), waiting.clone()],
        positions: vec![position(&topic, 0, 5), position(&topic, 3, 2)],
        ..Projection::default()
    };
    store.project(&batch).await.expect("project");
    // The same batch again (a redelivery that slipped past the positions) changes nothing.
    store.project(&batch).await.expect("project again");
    assert_eq!(status_of(store.as_ref(), &acked.id).await, Status::Delivered);
    let undelivered = store.undelivered(&mobile.id, None, 10).await.expect("undelivered");
    assert_eq!(ids_of(&undelivered), ids_of(std::slice::from_ref(&waiting)), "no undelivered entry for a message acked in its batch");
    assert_eq!(unread(store.as_ref(), &mobile.id, &conversation.id).await, 2);

    store.project(&Projection { positions: vec![position(&topic, 0, 9)], ..Projection::default() }).await.unwrap();
    let mut mine: Vec<LogPosition> =
        store.projected_positions().await.expect("positions").into_iter().filter(|p| p.topic == topic).collect();
    mine.sort_by_key(|p| p.partition);
    assert_eq!(mine, [position(&topic, 0, 9), position(&topic, 3, 2)]);
}

/// A status whose message the store does not hold yet is kept and folded into the message
/// when it arrives (a status record may be read before its message's record).
pub async fn projection_keeps_statuses_that_arrive_before_their_message<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let (business, mobile, _) = new_pair(store.as_ref(), Millis(1_000)).await;
    let message = one_way(&business.id, &mobile.id, Millis(3_000));
    let early =
        Projection { changes: vec![change(&message.id, Status::Read, Millis(3_500))], ..Projection::default() };
    assert!(store.project(&early).await.expect("project early status").is_empty());
    assert!(store.message(&message.id).await.expect("read").is_none());
    store.project(&Projection { messages: vec![message.clone()], ..Projection::default() }).await.unwrap();
    let stored = store.message(&message.id).await.expect("read").expect("stored");
    assert_eq!((stored.status, stored.status_changed_at), (Status::Read, Millis(3_500)));
    assert!(store.undelivered(&mobile.id, None, 10).await.expect("undelivered").is_empty());
}

/// A socket ack racing an HTTP read: whatever order they reach the log in, the status only
/// moves forward, and only the changes that moved it are returned.
pub async fn projection_statuses_only_move_forward<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let (business, mobile, _) = new_pair(store.as_ref(), Millis(1_000)).await;
    let message = one_way(&business.id, &mobile.id, Millis(3_000));
    store.project(&Projection { messages: vec![message.clone()], ..Projection::default() }).await.unwrap();
    let racing = Projection {
        changes: vec![change(&message.id, Status::Read, Millis(3_100)), change(&message.id, Status::Delivered, Millis(3_090))],
        ..Projection::default()
    };
    let applied = store.project(&racing).await.expect("project");
    assert_eq!(applied.iter().map(|a| a.status).collect::<Vec<_>>(), [Status::Read]);
    assert_eq!(status_of(store.as_ref(), &message.id).await, Status::Read);
}

/// A message record seen again (a dead-letter retry appends it anew) with statuses folded
/// into it in its batch: the message is not inserted twice, and the statuses still apply.
pub async fn projection_applies_statuses_folded_into_a_stored_message<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let (business, mobile, _) = new_pair(store.as_ref(), Millis(1_000)).await;
    let message = one_way(&business.id, &mobile.id, Millis(3_000));
    store.project(&Projection { messages: vec![message.clone()], ..Projection::default() }).await.unwrap();
    store.project(&Projection { changes: vec![failure(&message.id, Millis(3_100), "no ack", 7)], ..Projection::default() })
        .await
        .unwrap();
    // Retried: `sent` and the message again, then its ack, all in one batch; folded onto
    // the record the message reads `delivered`, but what applies is failed → sent → delivered.
    let folded = vec![change(&message.id, Status::Sent, Millis(3_200)), change(&message.id, Status::Delivered, Millis(3_300))];
    let mut again = message.clone();
    for change in &folded {
        again.apply(change);
    }
    let batch = Projection { messages: vec![again], folded: vec![folded], ..Projection::default() };
    let applied = store.project(&batch).await.unwrap();
    assert_eq!(applied.iter().map(|a| a.status).collect::<Vec<_>>(), [Status::Sent, Status::Delivered]);
    assert_eq!(status_of(store.as_ref(), &message.id).await, Status::Delivered);
    assert!(store.undelivered(&mobile.id, None, 10).await.expect("undelivered").is_empty());
}

/// A chat message creates its conversation (id derived from the pair) and a broadcast its
/// row and counts, both on first sight only.
pub async fn projection_creates_chat_conversations_and_broadcasts<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let business = new_user(UserKind::Business);
    let mobile = new_user(UserKind::Mobile);
    let conversation_id = ids::conversation_id(&business.id, &mobile.id);
    let conversation = Conversation {
        id: conversation_id.clone(),
        business_id: business.id.clone(),
        mobile_id: mobile.id.clone(),
        created_at: Millis(5_000),
        updated_at: Millis(5_000),
    };
    // The mobile user writes first: the pair still names the business as its business.
    let first = chat(&conversation, &mobile.id, Millis(5_000));
    let broadcast = Broadcast {
        id: ids::new_id(),
        sender_id: business.id.clone(),
        recipient_ids: vec![mobile.id.clone(), unique("m")],
        content: "sale".into(),
        media_ids: vec![],
        priority: Priority::Low,
        first_message_id: ids::reserve(2).to_string(),
        created_at: Millis(5_001),
    };
    let batch = Projection { broadcasts: vec![broadcast.clone()], messages: vec![first.clone()], ..Projection::default() };
    store.project(&batch).await.expect("project");
    store.project(&batch).await.expect("project again");
    let stored = store.conversation(&conversation_id).await.expect("read").expect("created");
    assert_eq!((stored.business_id.as_str(), stored.mobile_id.as_str()), (business.id.as_str(), mobile.id.as_str()));
    let history = store.conversation_messages(&conversation_id, None, 10).await.unwrap();
    assert_eq!(ids_of(&history), ids_of(std::slice::from_ref(&first)));
    let counts = store.broadcast_counts(&broadcast.id).await.expect("counts").expect("broadcast stored");
    assert_eq!((counts.sent, total(&counts)), (2, 2));
}

/// Idempotency answers are kept with the batch and read back by time.
pub async fn projection_keeps_idempotency_answers<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let now = Millis::now();
    let record = IdempotencyRecord {
        key: unique("sender:key"),
        fingerprint: "f1".into(),
        status: 202,
        body: "{\"id\":\"x\"}".into(),
        at: now,
    };
    store.project(&Projection { idempotency: vec![record.clone()], ..Projection::default() }).await.unwrap();
    let found = store.idempotency_records(Millis(now.0 - 1_000)).await.expect("records");
    assert!(found.contains(&record));
    let later = store.idempotency_records(Millis(now.0 + 1)).await.expect("records");
    assert!(!later.contains(&record));
}

/// Req 4.7: the attempts of a batch join their messages' timelines, after those already
/// there and in the batch's order, in the transaction that moves the positions.
pub async fn projection_appends_attempts_to_their_timelines<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let topic = unique("topic");
    let message_id = ids::new_id();
    let attempt = |attempt: u32, channel: Channel, outcome: &str| attempt_of(&message_id, attempt, channel, outcome);
    let first = Projection {
        attempts: vec![attempt(1, Channel::Socket, "timeout"), attempt(1, Channel::Push, "accepted")],
        positions: vec![position(&topic, 0, 2)],
        ..Projection::default()
    };
    store.project(&first).await.expect("project");
    let second = Projection {
        attempts: vec![attempt(2, Channel::Socket, "delivered")],
        positions: vec![position(&topic, 0, 3)],
        ..Projection::default()
    };
    store.project(&second).await.expect("project");
    let timeline: Vec<(u32, Channel, String)> = store
        .attempts(&message_id)
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| (a.attempt, a.channel, a.outcome))
        .collect();
    let expected = [(1, Channel::Socket, "timeout"), (1, Channel::Push, "accepted"), (2, Channel::Socket, "delivered")];
    assert_eq!(timeline, expected.map(|(attempt, channel, outcome)| (attempt, channel, outcome.to_owned())));
    let stored = store.projected_positions().await.expect("positions");
    assert!(stored.contains(&position(&topic, 0, 3)));
}

/// Attempt `attempt` of a message, made at 1,000 ms plus its number.
fn attempt_of(message_id: &str, attempt: u32, channel: Channel, outcome: &str) -> Attempt {
    Attempt {
        message_id: message_id.to_owned(),
        attempt,
        at: Millis(1_000 + i64::from(attempt)),
        channel,
        outcome: outcome.to_owned(),
        error: None,
    }
}

/// Two projection members may fold the same records during a rebalance: the one that
/// writes second finds the positions it folded from moved, gets `Conflict` and applies
/// nothing, so no attempt is listed twice and no position moves back (Req 4.7, 10.3).
pub async fn projection_refuses_a_batch_folded_from_positions_that_moved<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageStore>>,
{
    let store = factory().await;
    let topic = unique("topic");
    let message_id = ids::new_id();
    let attempt = |attempt: u32| attempt_of(&message_id, attempt, Channel::Socket, "timeout");
    // Both members read position 0 and fold the records from there.
    let first = Projection {
        attempts: vec![attempt(1), attempt(2)],
        positions: vec![position(&topic, 0, 2)],
        folded_from: vec![position(&topic, 0, 0)],
        ..Projection::default()
    };
    let late = Projection {
        attempts: vec![attempt(1)],
        positions: vec![position(&topic, 0, 1)],
        folded_from: vec![position(&topic, 0, 0)],
        ..Projection::default()
    };
    store.project(&first).await.expect("the first member's batch");
    let error = store.project(&late).await.expect_err("folded from a position that moved");
    assert_eq!(error.kind(), ErrorKind::Conflict, "{error}");
    let timeline: Vec<u32> = store.attempts(&message_id).await.expect("attempts").iter().map(|a| a.attempt).collect();
    assert_eq!(timeline, [1, 2], "the late batch applied nothing");
    let stored = store.projected_positions().await.expect("positions");
    assert!(stored.contains(&position(&topic, 0, 2)), "{stored:?}");

    // Folded again from the stored position, the rest applies.
    let refolded = Projection {
        attempts: vec![attempt(3)],
        positions: vec![position(&topic, 0, 3)],
        folded_from: vec![position(&topic, 0, 2)],
        ..Projection::default()
    };
    store.project(&refolded).await.expect("refolded batch");
    let timeline: Vec<u32> = store.attempts(&message_id).await.expect("attempts").iter().map(|a| a.attempt).collect();
    assert_eq!(timeline, [1, 2, 3]);
}
