//! The router against the real embedded backends (log, store, presence, bus in a tempdir):
//! what reaches which node's bus, what is committed, and what the store projection keeps.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use esh_backends::cache::PRESENCE_TTL;
use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::status_writer::StatusWriter;
use esh_backends::testsuite::fixtures;
use esh_backends::{BackendError, NodeEvent, Record};
use esh_common::records::{MessageEnvelope, StatusEvent};
use esh_common::{ids, topics, Broadcast, Message, Millis, Priority, Status};
use esh_router::RouterConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a test watches for something that should not happen.
const QUIET: Duration = Duration::from_millis(300);

struct Env {
    backends: Backends,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Result<Env> {
        let dir = tempfile::tempdir()?;
        let urls = BackendUrls { data_dir: dir.path().to_path_buf(), log_partitions: 4, ..Default::default() };
        let backends = resolve(&urls).await?;
        Ok(Env { backends, _dir: dir })
    }

    /// Subscribes deliverer node `node` to the bus.
    async fn node(&self, node: &str) -> Result<mpsc::Receiver<Vec<NodeEvent>>> {
        Ok(self.backends.bus.subscribe(&node.to_string(), 64).await?)
    }

    async fn online(&self, user: &str, node: &str) -> Result<()> {
        let connection = format!("{node}:{user}");
        Ok(self.backends.presence.register(user, &node.to_string(), &connection, PRESENCE_TTL).await?)
    }

    /// What ingest does on a send: one append to the priority's topic.
    async fn ingest(&self, message: &Message) -> Result<()> {
        let envelope = MessageEnvelope::Message { message: message.clone(), idempotency: None };
        self.append(topics::messages_topic(message.priority), message.partition_key(), &envelope).await
    }

    async fn append(&self, topic: &str, key: String, envelope: &MessageEnvelope) -> Result<()> {
        let record = Record {
            key,
            value: esh_common::records::encode(envelope.clone())?,
        };
        Ok(self.backends.log.append(topic, vec![record]).await?)
    }

    /// The router stage and, beside it, the store projection (its own stage in the platform).
    fn router(&self, config: RouterConfig) -> Router {
        let shutdown = CancellationToken::new();
        let backends = self.backends.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let projection = esh_router::project_store(backends.clone(), config.clone(), stop.clone());
            let routing = esh_router::run(backends, config, stop);
            let (projected, routed) = tokio::join!(projection, routing);
            projected.and(routed)
        });
        Router { shutdown, task }
    }

    /// Waits until the router group has committed everything on the message topics.
    async fn drained(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut lag = 0;
            for topic in topics::MESSAGES_BY_PRIORITY {
                lag += self.backends.log.lag(topics::ROUTER_GROUP, topic).await?;
            }
            if lag == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("router still has {lag} uncommitted records");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Router {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), BackendError>>,
}

impl Router {
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task).await.context("router stops")???;
        Ok(())
    }
}

fn one_way(recipient: &str, priority: Priority) -> Message {
    Message { content: format!("hello {recipient}"), priority, ..fixtures::one_way("biz", recipient) }
}

/// The next `count` message events on a node's bus, in order.
async fn messages(bus: &mut mpsc::Receiver<Vec<NodeEvent>>, count: usize) -> Result<Vec<Message>> {
    let mut found = Vec::new();
    while found.len() < count {
        let batch = tokio::time::timeout(PATIENCE, bus.recv()).await.context("bus event")?.context("bus open")?;
        for event in batch {
            match event {
                NodeEvent::Message(message) => found.push(message),
                other => bail!("unexpected event {other:?}"),
            }
        }
    }
    Ok(found)
}

/// Asserts nothing arrives on a node's bus for a while.
async fn silent(bus: &mut mpsc::Receiver<Vec<NodeEvent>>) -> Result<()> {
    match tokio::time::timeout(QUIET, bus.recv()).await {
        Err(_) => Ok(()),
        Ok(events) => bail!("unexpected bus events {events:?}"),
    }
}

#[tokio::test]
async fn a_message_reaches_the_node_where_its_recipient_is_online_req_1_2() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    let mut node_b = env.node("node-b").await?;
    env.online("m1", "node-a").await?;
    let message = one_way("m1", Priority::Normal);
    env.ingest(&message).await?;

    let router = env.router(RouterConfig::default());
    let delivered = messages(&mut node_a, 1).await?;
    assert_eq!(delivered[0].id, message.id);
    assert_eq!(delivered[0].status, Status::Sent);
    env.drained().await?;
    silent(&mut node_b).await?;
    router.stop().await
}

#[tokio::test]
async fn a_user_on_two_nodes_gets_the_message_on_both() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    let mut node_b = env.node("node-b").await?;
    env.online("m1", "node-a").await?;
    env.online("m1", "node-b").await?;
    let message = one_way("m1", Priority::Normal);
    env.ingest(&message).await?;
    let router = env.router(RouterConfig::default());
    assert_eq!(messages(&mut node_a, 1).await?[0].id, message.id);
    assert_eq!(messages(&mut node_b, 1).await?[0].id, message.id);
    router.stop().await
}

#[tokio::test]
async fn an_offline_recipient_gets_nothing_now_and_the_record_is_committed_req_1_3() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    env.online("someone-else", "node-a").await?;
    let message = one_way("m1", Priority::Normal);
    env.ingest(&message).await?;

    let router = env.router(RouterConfig::default());
    env.drained().await?;
    silent(&mut node_a).await?;
    // It waits in the store for the next connection.
    env.backends.caught_up().await?;
    let waiting = env.backends.store.undelivered("m1", None, 10).await?;
    assert_eq!(waiting.iter().map(|m| &m.id).collect::<Vec<_>>(), [&message.id]);
    router.stop().await
}

#[tokio::test]
async fn a_broadcast_expands_into_stored_messages_and_reaches_online_recipients() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    let recipients: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    for online in ["m0", "m2", "m4"] {
        env.online(online, "node-a").await?;
    }
    let broadcast = Broadcast {
        id: ids::new_id(),
        sender_id: "biz".into(),
        recipient_ids: recipients.clone(),
        content: "sale today".into(),
        media_ids: vec![],
        priority: Priority::Low,
        first_message_id: ids::reserve(recipients.len() as u32).to_string(),
        created_at: Millis::now(),
    };
    let envelope = MessageEnvelope::Broadcast { broadcast: broadcast.clone(), idempotency: None };
    env.append(topics::MESSAGES_LOW, broadcast.id.clone(), &envelope).await?;

    // Chunks of 2 recipients: the expansion takes several appends.
    let router = env.router(RouterConfig { broadcast_chunk: 2, ..Default::default() });
    let mut delivered: Vec<(String, String)> =
        messages(&mut node_a, 3).await?.into_iter().map(|m| (m.recipient_id, m.id)).collect();
    delivered.sort();
    let expected: Vec<(String, String)> = [0usize, 2, 4]
        .iter()
        .map(|&i| (recipients[i].clone(), broadcast.message(i).expect("derivable").id))
        .collect();
    assert_eq!(delivered, expected);
    env.drained().await?;
    silent(&mut node_a).await?;

    let ids: Vec<String> = (0..recipients.len()).map(|i| broadcast.message(i).expect("derivable").id).collect();
    env.backends.caught_up().await?;
    assert_eq!(env.backends.store.broadcast_counts(&broadcast.id).await?.map(|c| c.sent), Some(5));
    let stored = env.backends.store.messages(&ids).await?;
    assert_eq!(stored.len(), recipients.len());
    assert!(stored.iter().all(|m| m.broadcast_id.as_deref() == Some(broadcast.id.as_str())));
    router.stop().await
}

#[tokio::test]
async fn a_batch_redelivered_after_a_crash_is_delivered_again_under_the_same_ids_req_4_6() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    env.online("m1", "node-a").await?;
    let first = one_way("m1", Priority::Normal);
    let second = one_way("m1", Priority::Normal);
    env.ingest(&first).await?;
    env.ingest(&second).await?;

    // A router took the batch and crashed before committing it.
    {
        let mut crashed = env.backends.log.subscribe(topics::ROUTER_GROUP, &topics::MESSAGES_BY_PRIORITY).await?;
        let mut taken = Vec::new();
        while taken.len() < 2 {
            taken.extend(crashed.poll(100, Duration::from_millis(100)).await?);
        }
    }

    // At least once, never under another id; the store keeps each message once.
    let router = env.router(RouterConfig::default());
    let delivered: Vec<String> = messages(&mut node_a, 2).await?.into_iter().map(|m| m.id).collect();
    assert_eq!(delivered, [first.id.clone(), second.id.clone()]);
    env.drained().await?;
    silent(&mut node_a).await?;
    env.backends.caught_up().await?;
    let stored = env.backends.store.undelivered("m1", None, 10).await?;
    assert_eq!(stored.iter().map(|m| &m.id).collect::<Vec<_>>(), [&first.id, &second.id]);
    router.stop().await
}

#[tokio::test]
async fn high_priority_is_routed_before_normal_when_both_are_queued_req_5_2() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    env.online("m1", "node-a").await?;
    env.online("m2", "node-a").await?;
    let normal = one_way("m1", Priority::Normal);
    let low = one_way("m2", Priority::Low);
    let high = one_way("m2", Priority::High);
    env.ingest(&normal).await?;
    env.ingest(&low).await?;
    env.ingest(&high).await?;

    let router = env.router(RouterConfig::default());
    let order: Vec<String> = messages(&mut node_a, 3).await?.into_iter().map(|m| m.id).collect();
    assert_eq!(order, [high.id, normal.id, low.id]);
    router.stop().await
}

#[tokio::test]
async fn an_undecodable_record_is_skipped_and_committed_without_wedging_its_partition() -> Result<()> {
    let env = Env::new().await?;
    let mut node_a = env.node("node-a").await?;
    env.online("m1", "node-a").await?;
    let message = one_way("m1", Priority::Normal);
    // Same key, so same partition, ahead of a good record.
    let garbage = Record { key: message.partition_key(), value: b"\x00\x01 not an envelope".to_vec() };
    env.backends.log.append(topics::MESSAGES_NORMAL, vec![garbage]).await?;
    env.ingest(&message).await?;

    let router = env.router(RouterConfig::default());
    assert_eq!(messages(&mut node_a, 1).await?[0].id, message.id);
    env.drained().await?;
    router.stop().await
}

#[tokio::test]
async fn senders_hear_of_delivered_read_and_failed_on_their_nodes_req_9_6() -> Result<()> {
    let env = Env::new().await?;
    let mut node_b = env.node("node-b").await?;
    env.online("biz", "node-b").await?;
    let message = one_way("m1", Priority::Normal);
    env.ingest(&message).await?;
    let (status_writer, _task) = StatusWriter::start(env.backends.log.clone(), 16, esh_backends::status_writer::LINGER);
    let router = env.router(RouterConfig::default());

    for status in [Status::Delivered, Status::Read] {
        status_writer.apply(vec![StatusEvent::of(&message, status, Millis::now())]).await?;
        let batch = tokio::time::timeout(PATIENCE, node_b.recv()).await?.context("bus open")?;
        match batch.as_slice() {
            [NodeEvent::Status { user, message_id, status: heard, .. }] => {
                assert_eq!((user.as_str(), message_id.as_str(), *heard), ("biz", message.id.as_str(), status));
            }
            other => bail!("unexpected events {other:?}"),
        }
    }
    router.stop().await
}

#[tokio::test]
async fn shutdown_stops_every_consumer_cleanly() -> Result<()> {
    let env = Env::new().await?;
    let router = env.router(RouterConfig::default());
    tokio::time::sleep(Duration::from_millis(100)).await;
    router.stop().await
}
