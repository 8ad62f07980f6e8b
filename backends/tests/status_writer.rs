//! `StatusWriter` on the real embedded log: every event and delivery attempt is durable on
//! `esh.status.v1` (keyed by message id, in order) before its caller is answered, failures
//! also on `esh.dead-letters.v1`, concurrent callers share appends, and a log that refuses
//! gives the caller an error (its events may be sent again: consumers ignore a repeat).

use async_trait::async_trait;
use esh_backends::log::EmbeddedMessageLog;
use esh_backends::status_writer::StatusWriter;
use esh_backends::testsuite::fixtures;
use esh_backends::{BackendError, Consumed, LogConsumer, MessageLog, Record};
use esh_common::records::{DeliveryAttempt, StatusEvent, StatusRecord};
use esh_common::{topics, Attempt, Channel, DeadLetter, Message, Millis, Status};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// The real log, counting appends to the status topic and refusing appends while `refuse`.
struct CountingLog {
    inner: EmbeddedMessageLog,
    status_appends: AtomicUsize,
    refuse: AtomicBool,
}

#[async_trait]
impl MessageLog for CountingLog {
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), BackendError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("log refuses appends".into()));
        }
        if topic == topics::STATUS {
            self.status_appends.fetch_add(1, Ordering::SeqCst);
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
    log: Arc<CountingLog>,
    writer: StatusWriter,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedMessageLog::open(&dir.path().join("log"), 4).unwrap();
    let log = Arc::new(CountingLog { inner, status_appends: AtomicUsize::new(0), refuse: AtomicBool::new(false) });
    let (writer, _task) = StatusWriter::start(log.clone(), 64, esh_backends::status_writer::LINGER);
    Setup { _dir: dir, log, writer }
}

fn message(recipient: &str) -> Message {
    fixtures::one_way("biz", recipient)
}

async fn records(log: &CountingLog, topic: &str, count: usize) -> Vec<Consumed> {
    let mut consumer = log.subscribe(&reader_group(topic), &[topic]).await.unwrap();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.len() < count && tokio::time::Instant::now() < deadline {
        found.extend(consumer.poll(100, Duration::from_millis(50)).await.unwrap());
    }
    found
}

fn reader_group(topic: &str) -> String {
    format!("reader-{topic}")
}

#[tokio::test]
async fn req_4_4_receipts_are_durable_status_records_keyed_by_message_in_order() {
    let setup = setup();
    let message = message("m1");
    let read = StatusEvent::of(&message, Status::Read, Millis(7));
    setup.writer.apply(vec![StatusEvent::of(&message, Status::Delivered, Millis(5)), read.clone()]).await.unwrap();
    // Answered: both are on the topic, in order, on the message id's partition.
    let found = records(&setup.log, topics::STATUS, 2).await;
    let events: Vec<StatusEvent> = found
        .iter()
        .map(|r| {
            esh_common::records::decode::<StatusRecord>(&r.value)
                .unwrap()
                .into_status()
                .unwrap()
        })
        .collect();
    assert_eq!(
        events.iter().map(|e| e.status).collect::<Vec<_>>(),
        [Status::Delivered, Status::Read]
    );
    assert!(found.iter().all(|r| r.key == message.id));
    assert_eq!(events[1], read);
    assert_eq!(events[1].route.sender_id, "biz", "the notifier needs no store read to find the sender");
}

/// Req 4.7: attempts are status records like any other: handed over with the events, made
/// durable in the same append, in the order given, keyed by their message.
#[tokio::test]
async fn req_4_7_attempts_and_events_of_one_call_share_one_append_in_order() {
    let setup = setup();
    let message = message("m1");
    let attempt = Attempt {
        message_id: message.id.clone(),
        attempt: 1,
        at: Millis(4),
        channel: Channel::Socket,
        outcome: "delivered".into(),
        error: None,
    };
    let route = message.route();
    let delivery = DeliveryAttempt { attempt, sender_id: route.sender_id, recipient_id: route.recipient_id };
    let event = StatusEvent::of(&message, Status::Delivered, Millis(5));
    let written = [StatusRecord::Attempt(delivery), StatusRecord::Status(event)];
    setup.writer.apply(written.clone()).await.unwrap();
    assert_eq!(setup.log.status_appends.load(Ordering::SeqCst), 1);
    let found = records(&setup.log, topics::STATUS, 2).await;
    assert!(found.iter().all(|r| r.key == message.id));
    let decoded: Vec<StatusRecord> =
        found.iter().map(|r| esh_common::records::decode::<StatusRecord>(&r.value).unwrap()).collect();
    assert_eq!(decoded, written);
}

#[tokio::test]
async fn req_4_2_failures_are_also_dead_letters() {
    let setup = setup();
    let message = message("m1");
    let failed = StatusEvent {
        error: Some("not acknowledged after 7 attempts".into()),
        attempts: 7,
        ..StatusEvent::of(&message, Status::Failed, Millis(9))
    };
    setup.writer.apply(vec![failed]).await.unwrap();
    let found = records(&setup.log, topics::DEAD_LETTERS, 1).await;
    let letter: DeadLetter = esh_common::records::decode(&found[0].value).unwrap();
    assert_eq!(
        letter,
        DeadLetter {
            message_id: message.id.clone(),
            attempts: 7,
            error: "not acknowledged after 7 attempts".into(),
            failed_at: Millis(9)
        }
    );
}

#[tokio::test]
async fn req_5_3_concurrent_callers_share_appends() {
    let setup = setup();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let writer = setup.writer.clone();
            let event = StatusEvent::of(&message(&format!("m{i}")), Status::Delivered, Millis(1));
            tokio::spawn(async move { writer.apply(vec![event]).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(records(&setup.log, topics::STATUS, 200).await.len(), 200);
    let appends = setup.log.status_appends.load(Ordering::SeqCst);
    assert!(appends < 200, "200 callers made {appends} appends: nothing was batched");
}

#[tokio::test]
async fn a_refusing_log_fails_the_caller_and_a_repeat_then_succeeds() {
    let setup = setup();
    let message = message("m1");
    setup.log.refuse.store(true, Ordering::SeqCst);
    let refused = setup.writer.apply(vec![StatusEvent::of(&message, Status::Delivered, Millis(1))]).await;
    assert!(refused.is_err(), "an event the log did not take is not answered as durable");
    setup.log.refuse.store(false, Ordering::SeqCst);
    setup.writer.apply(vec![StatusEvent::of(&message, Status::Delivered, Millis(2))]).await.unwrap();
    let found = records(&setup.log, topics::STATUS, 1).await;
    assert_eq!(found.len(), 1);
}

/// While statuses come often, a turn waits `LINGER` for more before it appends: a status
/// applied while the writer holds another one joins its append, where without the wait it
/// would have waited for an append of its own.
#[tokio::test]
async fn a_status_that_comes_while_the_writer_lingers_joins_its_append() {
    let setup = setup();
    let event = |id: &str| StatusEvent::of(&message(id), Status::Delivered, Millis(1));
    setup.writer.apply(vec![event("m0")]).await.unwrap();
    let before = setup.log.status_appends.load(Ordering::SeqCst);
    let first = tokio::spawn({
        let writer = setup.writer.clone();
        let event = event("m1");
        async move { writer.apply(vec![event]).await }
    });
    // This test runs on one thread: these turns let the writer take "m1" and start its
    // turn (lingering, or appending it) before "m2" is sent.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    setup.writer.apply(vec![event("m2")]).await.unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(setup.log.status_appends.load(Ordering::SeqCst) - before, 1, "m1 and m2 share one append");
    assert_eq!(records(&setup.log, topics::STATUS, 3).await.len(), 3);
}
