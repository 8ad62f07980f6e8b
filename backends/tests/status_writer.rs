//! `StatusWriter` on the real embedded store, log and recent-message cache: batching,
//! per-caller answers, status events, dead letters, cache invalidation, and what happens
//! when the log refuses events.

use async_trait::async_trait;
use esh_backends::cache::EmbeddedRecentMessages;
use esh_backends::log::EmbeddedMessageLog;
use esh_backends::status_writer::StatusWriter;
use esh_backends::store::EmbeddedMessageStore;
use esh_backends::testsuite::fixtures;
use esh_backends::{BackendError, Consumed, LogConsumer, MessageLog, MessageStore, OneWayRole, Record, RecentMessages};
use esh_common::{
    ids, topics, Attempt, Broadcast, BroadcastRecipient, Conversation, ConversationSummary, DeadLetter, Message,
    Millis, Permission, Status, StatusApplied, StatusChange, StatusCounts, User, UserKind,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::Semaphore;

/// The real store, with a count of `apply_status` batches and, when closed, a gate that
/// holds each batch until the test lets it through.
struct ObservedStore {
    inner: EmbeddedMessageStore,
    batches: Mutex<Vec<usize>>,
    gate: Semaphore,
    gated: AtomicBool,
}

#[async_trait]
impl MessageStore for ObservedStore {
    async fn create_user(&self, user: &User) -> Result<(), BackendError> {
        self.inner.create_user(user).await
    }
    async fn update_user(&self, user: &User) -> Result<(), BackendError> {
        self.inner.update_user(user).await
    }
    async fn user(&self, id: &str) -> Result<Option<User>, BackendError> {
        self.inner.user(id).await
    }
    async fn users(&self, ids: &[String]) -> Result<Vec<User>, BackendError> {
        self.inner.users(ids).await
    }
    async fn conversation_for_pair(
        &self,
        business_id: &str,
        mobile_id: &str,
        new_id: &str,
        now: Millis,
    ) -> Result<Conversation, BackendError> {
        self.inner.conversation_for_pair(business_id, mobile_id, new_id, now).await
    }
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, BackendError> {
        self.inner.conversation(id).await
    }
    async fn conversations(
        &self,
        user: &str,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, BackendError> {
        self.inner.conversations(user, after, limit).await
    }
    async fn insert_messages(&self, messages: &[Message]) -> Result<(), BackendError> {
        self.inner.insert_messages(messages).await
    }
    async fn message(&self, id: &str) -> Result<Option<Message>, BackendError> {
        self.inner.message(id).await
    }
    async fn messages(&self, ids: &[String]) -> Result<Vec<Message>, BackendError> {
        self.inner.messages(ids).await
    }
    async fn conversation_messages(
        &self,
        conversation_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.inner.conversation_messages(conversation_id, before, limit).await
    }
    async fn one_way_messages(
        &self,
        user: &str,
        role: OneWayRole,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, BackendError> {
        self.inner.one_way_messages(user, role, before, limit).await
    }
    async fn undelivered(&self, recipient: &str, after: Option<&str>, limit: usize) -> Result<Vec<Message>, BackendError> {
        self.inner.undelivered(recipient, after, limit).await
    }
    async fn apply_status(&self, changes: &[StatusChange]) -> Result<Vec<StatusApplied>, BackendError> {
        self.batches.lock().unwrap().push(changes.len());
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.expect("gate open").forget();
        }
        self.inner.apply_status(changes).await
    }
    async fn record_attempts(&self, attempts: &[Attempt]) -> Result<(), BackendError> {
        self.inner.record_attempts(attempts).await
    }
    async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, BackendError> {
        self.inner.attempts(message_id).await
    }
    async fn dead_letters(&self, after: Option<(Millis, String)>, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.inner.dead_letters(after, limit).await
    }
    async fn create_broadcast(&self, broadcast: &Broadcast) -> Result<(), BackendError> {
        self.inner.create_broadcast(broadcast).await
    }
    async fn broadcast(&self, id: &str) -> Result<Option<Broadcast>, BackendError> {
        self.inner.broadcast(id).await
    }
    async fn broadcast_counts(&self, id: &str) -> Result<Option<StatusCounts>, BackendError> {
        self.inner.broadcast_counts(id).await
    }
    async fn broadcast_recipients(
        &self,
        id: &str,
        from: usize,
        limit: usize,
    ) -> Result<Vec<BroadcastRecipient>, BackendError> {
        self.inner.broadcast_recipients(id, from, limit).await
    }
    async fn check(&self) -> Result<(), BackendError> {
        self.inner.check().await
    }
}

/// The real log, refusing appends while `refuse` is set (a full disk, say).
struct RefusingLog {
    inner: EmbeddedMessageLog,
    refuse: AtomicBool,
}

#[async_trait]
impl MessageLog for RefusingLog {
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), BackendError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("log refuses appends".into()));
        }
        self.inner.append(topic, records).await
    }
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn LogConsumer>, BackendError> {
        self.inner.subscribe(group, topics).await
    }
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BackendError> {
        self.inner.end_offsets(topic).await
    }
    async fn lag(&self, group: &str, topic: &str) -> Result<u64, BackendError> {
        self.inner.lag(group, topic).await
    }
    async fn check(&self) -> Result<(), BackendError> {
        self.inner.check().await
    }
}

struct Setup {
    _dir: TempDir,
    store: Arc<ObservedStore>,
    log: Arc<RefusingLog>,
    recent: Arc<EmbeddedRecentMessages>,
    writer: StatusWriter,
    /// A conversation between the business and the mobile user.
    conversation: String,
    /// A second conversation of the business, with another mobile user.
    other_conversation: String,
}

const BUSINESS: &str = "biz";
const MOBILE: &str = "mob";
const OTHER_MOBILE: &str = "mob2";

fn user(id: &str, kind: UserKind) -> User {
    User {
        id: id.into(),
        kind,
        display_name: id.into(),
        created_at: Millis(1),
        permissions: vec![Permission::Send, Permission::Chat],
        verified: true,
        notifications_enabled: true,
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ObservedStore {
        inner: EmbeddedMessageStore::open(&dir.path().join("store.sqlite3")).unwrap(),
        batches: Mutex::new(Vec::new()),
        gate: Semaphore::new(0),
        gated: AtomicBool::new(false),
    });
    let log = Arc::new(RefusingLog {
        inner: EmbeddedMessageLog::open(&dir.path().join("log"), 4).unwrap(),
        refuse: AtomicBool::new(false),
    });
    let recent = Arc::new(EmbeddedRecentMessages::new());
    for (id, kind) in [(BUSINESS, UserKind::Business), (MOBILE, UserKind::Mobile), (OTHER_MOBILE, UserKind::Mobile)] {
        store.create_user(&user(id, kind)).await.unwrap();
    }
    let now = Millis::now();
    let conversation = store.conversation_for_pair(BUSINESS, MOBILE, &ids::new_id(), now).await.unwrap().id;
    let other_conversation = store.conversation_for_pair(BUSINESS, OTHER_MOBILE, &ids::new_id(), now).await.unwrap().id;
    let (writer, _task) = StatusWriter::start(store.clone(), log.clone(), recent.clone(), 64);
    Setup { _dir: dir, store, log, recent, writer, conversation, other_conversation }
}

impl Setup {
    /// Stores `count` chat messages from the business in `conversation`, status `sent`.
    async fn chat(&self, conversation: &str, count: usize) -> Vec<String> {
        let recipient = if conversation == self.conversation { MOBILE } else { OTHER_MOBILE };
        let messages: Vec<Message> = (0..count)
            .map(|i| Message { content: format!("hello {i}"), ..fixtures::chat(conversation, BUSINESS, recipient) })
            .collect();
        self.store.insert_messages(&messages).await.unwrap();
        messages.into_iter().map(|m| m.id).collect()
    }

    async fn consumer(&self, topic: &str) -> Box<dyn LogConsumer> {
        self.log.subscribe(&format!("test-{}", ids::new_id()), &[topic]).await.unwrap()
    }
}

fn change(id: &str, status: Status) -> StatusChange {
    StatusChange { message_id: id.into(), status, at: Millis::now(), error: None, attempts: 0 }
}

fn failure(id: &str, error: &str, attempts: u32) -> StatusChange {
    StatusChange { message_id: id.into(), status: Status::Failed, at: Millis::now(), error: Some(error.into()), attempts }
}

fn pairs(applied: &[StatusApplied]) -> Vec<(String, Status)> {
    applied.iter().map(|a| (a.message_id.clone(), a.status)).collect()
}

/// Polls until `count` records arrived (or 10 s passed), then checks nothing more comes.
async fn expect_records(consumer: &mut Box<dyn LogConsumer>, count: usize) -> Vec<Consumed> {
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while records.len() < count && tokio::time::Instant::now() < deadline {
        records.extend(consumer.poll(100, Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(records.len(), count, "records on the topic");
    let extra = consumer.poll(100, Duration::from_millis(200)).await.unwrap();
    assert!(extra.is_empty(), "no more records than expected: {extra:?}");
    records
}

fn status_events(records: &[Consumed]) -> Vec<StatusApplied> {
    records.iter().map(|r| esh_schemas::decode::<esh_schemas::StatusEvent>(&r.value).unwrap()).collect()
}

/// Req 5.3 (batches of up to 100): requests that queue while a batch is in the store are
/// folded into the next batch, and each caller gets only the changes it made.
#[tokio::test]
async fn req_5_3_concurrent_applies_are_batched_and_each_caller_gets_its_own() {
    let setup = setup().await;
    let m = setup.chat(&setup.conversation.clone(), 7).await;
    setup.store.gated.store(true, Ordering::SeqCst);

    // The first request enters the store and is held there…
    let first = tokio::spawn({
        let writer = setup.writer.clone();
        let change = change(&m[0], Status::Delivered);
        async move { writer.apply(vec![change]).await }
    });
    while setup.store.batches.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // …while these queue behind it.
    let requests: Vec<Vec<StatusChange>> = vec![
        vec![change(&m[1], Status::Delivered), change(&m[2], Status::Delivered)],
        vec![change(&m[3], Status::Read)],
        vec![change(&m[4], Status::Delivered)],
        vec![change(&m[4], Status::Delivered)],
        vec![change(&m[0], Status::Delivered)],
        vec![change("01NOSUCHMESSAGE0000000000X", Status::Read)],
        vec![failure(&m[5], "ack timeout", 7)],
        vec![change(&m[1], Status::Read)],
    ];
    let queued: Vec<_> = requests
        .iter()
        .cloned()
        .map(|changes| {
            let writer = setup.writer.clone();
            tokio::spawn(async move { writer.apply(changes).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    setup.store.gate.add_permits(100);

    assert_eq!(pairs(&first.await.unwrap().unwrap()), vec![(m[0].clone(), Status::Delivered)]);
    let mut answers = Vec::new();
    for task in queued {
        answers.push(pairs(&task.await.unwrap().unwrap()));
    }
    let total: usize = requests.iter().map(Vec::len).sum();
    assert_eq!(*setup.store.batches.lock().unwrap(), vec![1, total], "one batch for everything that queued");
    assert_eq!(
        answers,
        vec![
            vec![(m[1].clone(), Status::Delivered), (m[2].clone(), Status::Delivered)],
            vec![(m[3].clone(), Status::Read)],
            vec![(m[4].clone(), Status::Delivered)],
            vec![],
            vec![],
            vec![],
            vec![(m[5].clone(), Status::Failed)],
            vec![(m[1].clone(), Status::Read)],
        ],
        "each caller gets its own changes that took effect; repeats, no-ops and unknown messages get nothing"
    );
    assert_eq!(setup.store.message(&m[1]).await.unwrap().unwrap().status, Status::Read);
    assert_eq!(setup.store.message(&m[6]).await.unwrap().unwrap().status, Status::Sent, "untouched");
}

/// Req 9.6 and 4.2: every change that took effect is an event on esh.status.v1 (in order per
/// message); failures are also dead letters on esh.dead-letters.v1 with their error and attempts.
#[tokio::test]
async fn req_9_6_applied_changes_are_published_and_failures_dead_lettered() {
    let setup = setup().await;
    let m = setup.chat(&setup.conversation.clone(), 3).await;
    let mut status = setup.consumer(topics::STATUS).await;
    let mut dead = setup.consumer(topics::DEAD_LETTERS).await;

    let applied = setup.writer.apply(vec![change(&m[0], Status::Delivered), change(&m[0], Status::Read)]).await.unwrap();
    assert_eq!(applied.len(), 2);
    let failed = setup.writer.apply(vec![failure(&m[1], "ack timeout", 7)]).await.unwrap();
    assert_eq!(pairs(&failed), vec![(m[1].clone(), Status::Failed)]);

    let events = status_events(&expect_records(&mut status, 3).await);
    let mut expected = applied.clone();
    expected.extend(failed.clone());
    let mut sorted_events = events.clone();
    sorted_events.sort_by(|a, b| (&a.message_id, a.version).cmp(&(&b.message_id, b.version)));
    expected.sort_by(|a, b| (&a.message_id, a.version).cmp(&(&b.message_id, b.version)));
    assert_eq!(sorted_events, expected, "the events are the applied changes");
    let of_m0: Vec<Status> = events.iter().filter(|e| e.message_id == m[0]).map(|e| e.status).collect();
    assert_eq!(of_m0, vec![Status::Delivered, Status::Read], "a message's events keep their order");
    assert!(events.iter().all(|e| e.sender_id == BUSINESS && e.recipient_id == MOBILE));

    let letters = expect_records(&mut dead, 1).await;
    let letter: esh_schemas::DeadLetterEvent = esh_schemas::decode(&letters[0].value).unwrap();
    assert_eq!((letter.message_id.as_str(), letter.attempts, letter.error.as_str()), (m[1].as_str(), 7, "ack timeout"));
    assert_eq!(letters[0].key, m[1]);
}

/// Req 10.4: a status change drops the cached recent messages of its conversation only.
#[tokio::test]
async fn req_10_4_changes_invalidate_the_cached_conversations_they_touch() {
    let setup = setup().await;
    let (conversation, other) = (setup.conversation.clone(), setup.other_conversation.clone());
    let m = setup.chat(&conversation, 2).await;
    setup.chat(&other, 1).await;
    for id in [&conversation, &other] {
        let cached = setup.store.conversation_messages(id, None, 50).await.unwrap();
        setup.recent.put(id, cached, Duration::from_secs(300)).await.unwrap();
    }

    setup.writer.apply(vec![change("01NOSUCHMESSAGE0000000000X", Status::Read)]).await.unwrap();
    assert!(setup.recent.get(&conversation).await.unwrap().is_some(), "changes with no effect invalidate nothing");

    setup.writer.apply(vec![change(&m[0], Status::Read)]).await.unwrap();
    assert_eq!(setup.recent.get(&conversation).await.unwrap(), None, "the cached statuses are stale");
    assert!(setup.recent.get(&other).await.unwrap().is_some(), "other conversations stay cached");
}

/// API.md: a receipt that does not move the status forward is a no-op, and publishes nothing.
#[tokio::test]
async fn no_op_changes_publish_no_event() {
    let setup = setup().await;
    let m = setup.chat(&setup.conversation.clone(), 2).await;
    let mut status = setup.consumer(topics::STATUS).await;
    setup.writer.apply(vec![change(&m[0], Status::Read)]).await.unwrap();
    expect_records(&mut status, 1).await;

    let none = setup
        .writer
        .apply(vec![
            change(&m[0], Status::Delivered),
            change(&m[0], Status::Read),
            failure(&m[0], "too late", 7),
            change(&m[1], Status::Sent),
            change("01NOSUCHMESSAGE0000000000X", Status::Delivered),
        ])
        .await
        .unwrap();
    assert!(none.is_empty(), "nothing took effect: {none:?}");
    setup.writer.apply(vec![change(&m[1], Status::Delivered)]).await.unwrap();
    let events = status_events(&expect_records(&mut status, 1).await);
    assert_eq!(pairs(&events), vec![(m[1].clone(), Status::Delivered)], "only the later real change");
}

/// Req 4.6 (at-least-once): events the log refused after the store applied their changes are
/// published before anything else once the log is back; meanwhile callers get errors.
#[tokio::test]
async fn events_refused_by_the_log_are_published_once_it_is_back() {
    let setup = setup().await;
    let m = setup.chat(&setup.conversation.clone(), 2).await;
    let mut status = setup.consumer(topics::STATUS).await;

    setup.log.refuse.store(true, Ordering::SeqCst);
    assert!(setup.writer.apply(vec![change(&m[0], Status::Delivered)]).await.is_err(), "not durable on the log");
    assert_eq!(setup.store.message(&m[0]).await.unwrap().unwrap().status, Status::Delivered, "but in the store");
    let batches = setup.store.batches.lock().unwrap().len();
    assert!(setup.writer.apply(vec![change(&m[1], Status::Delivered)]).await.is_err());
    assert_eq!(setup.store.batches.lock().unwrap().len(), batches, "nothing more is applied meanwhile");

    setup.log.refuse.store(false, Ordering::SeqCst);
    let retried = setup.writer.apply(vec![change(&m[0], Status::Delivered), change(&m[1], Status::Read)]).await.unwrap();
    assert_eq!(pairs(&retried), vec![(m[1].clone(), Status::Read)], "the retry of m0 is a no-op now");
    let events = status_events(&expect_records(&mut status, 2).await);
    let published: HashSet<(String, Status)> = pairs(&events).into_iter().collect();
    assert_eq!(
        published,
        HashSet::from([(m[0].clone(), Status::Delivered), (m[1].clone(), Status::Read)]),
        "the refused event was published after all, once"
    );
}
