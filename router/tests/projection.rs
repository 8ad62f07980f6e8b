//! The store projection against the real embedded log and store: it catches up with what
//! was appended while it was not running, folds, and applies nothing twice when the log
//! redelivers records it had already written (its positions live in the store), delivery
//! attempts included.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::testsuite::fixtures;
use esh_backends::{BackendError, Consumed, LogConsumer, MessageLog, Record};
use esh_common::records::{DeliveryAttempt, MessageEnvelope, StatusEvent, StatusRecord};
use esh_common::{ids, topics, Attempt, Broadcast, Channel, Message, Millis, Priority, Status};
use esh_router::RouterConfig;
use tokio_util::sync::CancellationToken;

/// A log whose consumers never commit: every restart redelivers everything, as after a
/// crash between the store transaction and the offset commit.
struct NeverCommits(Arc<dyn MessageLog>);

struct Uncommitting(Box<dyn LogConsumer>);

#[async_trait]
impl LogConsumer for Uncommitting {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Consumed>, BackendError> {
        self.0.poll(max, wait).await
    }
    async fn commit(&mut self, _records: &[Consumed]) -> Result<(), BackendError> {
        Ok(())
    }
}

#[async_trait]
impl MessageLog for NeverCommits {
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<(), BackendError> {
        self.0.append(topic, records).await
    }
    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn LogConsumer>, BackendError> {
        Ok(Box::new(Uncommitting(self.0.subscribe(group, topics).await?)))
    }
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BackendError> {
        self.0.end_offsets(topic).await
    }
    async fn lag(&self, group: &str, topic: &str) -> Result<u64, BackendError> {
        self.0.lag(group, topic).await
    }
    async fn check(&self) -> Result<(), BackendError> {
        self.0.check().await
    }
}

async fn backends(dir: &tempfile::TempDir) -> Result<Backends> {
    let urls = BackendUrls { data_dir: dir.path().to_path_buf(), log_partitions: 4, ..Default::default() };
    Ok(resolve(&urls).await?)
}

async fn append(backends: &Backends, topic: &str, key: String, value: Vec<u8>) -> Result<()> {
    Ok(backends.log.append(topic, vec![Record { key, value }]).await?)
}

async fn send(backends: &Backends, message: &Message) -> Result<()> {
    let envelope = MessageEnvelope::Message {
        message: message.clone(),
        idempotency: None,
    };
    append(
        backends,
        topics::messages_topic(message.priority),
        message.partition_key(),
        esh_common::records::encode(envelope)?,
    )
    .await
}

async fn receipt(backends: &Backends, message: &Message, status: Status) -> Result<()> {
    let event = StatusEvent::of(message, status, Millis::now());
    append(
        backends,
        topics::STATUS,
        message.id.clone(),
        esh_common::records::encode(StatusRecord::Status(event))?,
    )
    .await
}

/// Appends what the deliverer or the push stage appends when an attempt ends.
async fn attempted(backends: &Backends, message: &Message, attempt: Attempt) -> Result<()> {
    let route = message.route();
    let delivery = DeliveryAttempt { attempt, sender_id: route.sender_id, recipient_id: route.recipient_id };
    let value = esh_common::records::encode(StatusRecord::Attempt(delivery))?;
    append(backends, topics::STATUS, message.id.clone(), value).await
}

/// Runs the projection until it has applied everything appended so far, then stops it.
async fn project_once(backends: &Backends) -> Result<()> {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(esh_router::project_store(backends.clone(), RouterConfig::default(), shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), backends.caught_up()).await.context("catches up in time")??;
    shutdown.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn the_projection_catches_up_with_what_was_appended_while_it_was_down_req_10_1() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backends = backends(&dir).await?;
    // Sends and receipts accepted (durable in the log) while no projection ran.
    let messages: Vec<Message> = (0..50).map(|i| fixtures::one_way("biz", &format!("m{}", i % 5))).collect();
    for message in &messages {
        send(&backends, message).await?;
    }
    for message in &messages[..10] {
        receipt(&backends, message, Status::Delivered).await?;
    }
    project_once(&backends).await?;
    let stored = backends.store.messages(&messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>()).await?;
    assert_eq!(stored.len(), 50, "nothing accepted is missing from the store");
    let delivered = stored.iter().filter(|m| m.status == Status::Delivered).count();
    assert_eq!(delivered, 10);
    Ok(())
}

#[tokio::test]
async fn the_projection_applies_nothing_twice_when_the_log_redelivers_req_10_3() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut backends = backends(&dir).await?;
    backends.log = Arc::new(NeverCommits(backends.log.clone()));
    let broadcast = Broadcast {
        id: ids::new_id(),
        sender_id: "biz".into(),
        recipient_ids: vec!["m1".into(), "m2".into()],
        content: "sale".into(),
        media_ids: vec![],
        priority: Priority::Low,
        first_message_id: ids::reserve(2).to_string(),
        created_at: Millis::now(),
    };
    let envelope = MessageEnvelope::Broadcast {
        broadcast: broadcast.clone(),
        idempotency: None,
    };
    append(
        &backends,
        topics::MESSAGES_LOW,
        broadcast.id.clone(),
        esh_common::records::encode(envelope)?,
    )
    .await?;
    let first = broadcast.message(0).context("derivable")?;
    send(&backends, &first).await?;
    receipt(&backends, &first, Status::Read).await?;

    // Three runs, each redelivered everything from offset 0: counts are those of one run,
    // and the positions kept with the writes are the log's end (the unit tests of
    // `projection::fold` pin that records below them are skipped).
    for _ in 0..3 {
        project_once(&backends).await?;
        let counts = backends.store.broadcast_counts(&broadcast.id).await?.context("broadcast stored")?;
        assert_eq!((counts.sent, counts.read), (1, 1), "counts moved once: {counts:?}");
        for topic in [topics::MESSAGES_LOW, topics::STATUS] {
            let ends = backends.log.end_offsets(topic).await?;
            let mut applied = vec![0; ends.len()];
            for position in backends.store.projected_positions().await?.into_iter().filter(|p| p.topic == topic) {
                applied[position.partition as usize] = position.next_offset;
            }
            assert_eq!(applied, ends, "{topic}: the store knows exactly where it stopped");
        }
    }
    assert_eq!(backends.store.message(&first.id).await?.context("stored")?.status, Status::Read);
    Ok(())
}

/// Req 4.7: attempts on `esh.status.v1` reach the timeline in log order, and once however
/// often the log redelivers them (the store appends whatever it is given: the positions
/// written with them are what keeps a replayed batch out).
#[tokio::test]
async fn attempts_reach_the_timeline_once_however_often_the_log_redelivers_req_4_7() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut backends = backends(&dir).await?;
    backends.log = Arc::new(NeverCommits(backends.log.clone()));
    let message = fixtures::one_way("biz", "m1");
    send(&backends, &message).await?;
    let attempt = |attempt: u32, channel: Channel, outcome: &str, error: Option<&str>| Attempt {
        message_id: message.id.clone(),
        attempt,
        at: Millis(1_000 * i64::from(attempt)),
        channel,
        outcome: outcome.into(),
        error: error.map(str::to_owned),
    };
    let timeline = [
        attempt(1, Channel::Push, "accepted", None),
        attempt(1, Channel::Socket, "timeout", Some("not acknowledged within 5s")),
        attempt(2, Channel::Socket, "delivered", None),
    ];
    for entry in &timeline {
        attempted(&backends, &message, entry.clone()).await?;
    }
    receipt(&backends, &message, Status::Delivered).await?;
    for _ in 0..3 {
        project_once(&backends).await?;
        assert_eq!(backends.store.attempts(&message.id).await?, timeline, "each attempt once, in log order");
    }
    assert_eq!(backends.store.message(&message.id).await?.context("stored")?.status, Status::Delivered);
    Ok(())
}

/// Req 10.7 (read-your-writes): a small batch lingers for more records only while nobody
/// reads. With a linger far longer than a read may wait (`READ_WAIT`, 5 s), a read made
/// right after a send still sees it: the waiting read cuts the linger short.
#[tokio::test]
async fn a_waiting_read_cuts_the_projection_linger_short_req_10_7() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let backends = backends(&dir).await?;
    let config = RouterConfig {
        projection_linger: Duration::from_secs(3600),
        projection_read_linger: Duration::ZERO,
        ..RouterConfig::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(esh_router::project_store(backends.clone(), config, shutdown.clone()));
    for round in 0..3 {
        let message = fixtures::one_way("biz", &format!("m{round}"));
        send(&backends, &message).await?;
        backends.caught_up().await.context("the read sees the send before READ_WAIT runs out")?;
        let stored = backends.store.messages(std::slice::from_ref(&message.id)).await?;
        assert_eq!(stored.len(), 1, "round {round}");
    }
    shutdown.cancel();
    task.await??;
    Ok(())
}
