//! Delivery, retry schedule and replay of one node, against the real embedded backends,
//! with paused time. Sockets here are the registry's own outbound queues (what the writer
//! task drains); the WebSocket transport itself is covered in `tests/socket.rs` and, with
//! ingest, in the server's end-to-end tests.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::status_writer::StatusWriter;
use esh_backends::testsuite::fixtures;
use esh_backends::NodeEvent;
use esh_common::auth::TokenKeys;
use esh_common::ingress::{ChatIngress, ChatRequest};
use esh_common::records::StatusEvent;
use esh_common::retry::RetrySchedule;
use esh_common::{ApiError, Message, Millis, Status};
use esh_router::RouterConfig;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::Outgoing;
use crate::tracker::Command;
use crate::{session, Deliverer, DelivererConfig};

const NODE: &str = "node-a";

/// Chat sends are not part of these tests; ingest answers them in the server.
struct NoChat;

#[async_trait]
impl ChatIngress for NoChat {
    async fn send_chat(&self, _sender_id: &str, _request: ChatRequest) -> Result<Message, ApiError> {
        Err(ApiError::forbidden("chat is not wired in these tests"))
    }
}

struct Node {
    deliverer: Arc<Deliverer>,
    backends: Backends,
    status_writer: StatusWriter,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        Node::start_with(DelivererConfig { node_id: NODE.into(), ..Default::default() }).await
    }

    async fn start_with(config: DelivererConfig) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let urls = BackendUrls { data_dir: dir.path().to_path_buf(), log_partitions: 2, ..Default::default() };
        let backends = resolve(&urls).await.expect("embedded backends");
        let (status_writer, _task) = StatusWriter::start(backends.log.clone(), 64, Duration::ZERO);
        let shutdown = CancellationToken::new();
        // Receipts reach the store through its projection of the status topic.
        // No linger: its timer would wait for paused time, which `eventually` does not let run.
        let projection = RouterConfig { projection_linger: Duration::ZERO, ..RouterConfig::default() };
        tokio::spawn(esh_router::project_store(backends.clone(), projection, shutdown.clone()));
        let deliverer = Deliverer::start(
            backends.clone(),
            TokenKeys::hs256(b"test secret"),
            status_writer.clone(),
            Arc::new(NoChat),
            config,
            shutdown.clone(),
        )
        .await
        .expect("deliverer starts");
        Node { deliverer, backends, status_writer, shutdown, _dir: dir }
    }

    /// A socket of `user` in live mode: the receiver sees what its writer would write.
    fn socket(&self, user: &str) -> (u64, mpsc::Receiver<Utf8Bytes>) {
        let connection = self.deliverer.next_connection.fetch_add(1, Ordering::Relaxed);
        let (outbound, frames) = mpsc::channel(64);
        self.deliverer.registry.attach(user, connection, outbound);
        assert!(self.deliverer.registry.release(user, connection).is_none());
        (connection, frames)
    }

    /// What the session does when a socket closes.
    async fn close_socket(&self, user: &str, connection: u64) {
        if self.deliverer.registry.detach(user, connection) {
            self.deliverer.tracker.send(Command::Disconnected { user: user.into() }).await.unwrap();
        }
    }

    async fn receipt(&self, user: &str, id: &str, status: Status) {
        let command = Command::Receipts { user: user.into(), message_ids: vec![id.into()], status };
        self.deliverer.tracker.send(command).await.unwrap();
    }

    async fn stored(&self, recipient: &str) -> Message {
        let message = one_way(recipient);
        self.backends.store.insert_messages(std::slice::from_ref(&message)).await.unwrap();
        message
    }

    async fn route(&self, message: &Message) {
        self.backends.bus.send(&NODE.to_string(), vec![NodeEvent::Message(message.clone())]).await.unwrap();
    }

    /// The stored status (tests wait for the projection with `eventually`, in real time).
    async fn status(&self, id: &str) -> Status {
        self.backends.store.message(id).await.unwrap().expect("stored message").status
    }

    async fn outcomes(&self, id: &str) -> Vec<(u32, String)> {
        let attempts = self.backends.store.attempts(id).await.unwrap();
        attempts.into_iter().map(|a| (a.attempt, a.outcome)).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn one_way(recipient: &str) -> Message {
    Message { content: "your parcel is on its way".into(), ..fixtures::one_way("biz", recipient) }
}

fn frame_id(frame: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(frame).expect("json frame");
    assert_eq!(value["type"], "message", "{frame}");
    value["message"]["id"].as_str().expect("message id").to_owned()
}

/// Waits in real time (without letting paused time run) until `check` holds: the store
/// writes on its own thread, which paused time does not wait for.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..2500 {
        if check().await {
            return;
        }
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2))).await.unwrap();
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(start_paused = true)]
async fn unacked_message_is_retried_after_1_2_4_8_16_32_s_then_dead_lettered_req_4_1_4_2() {
    let node = Node::start().await;
    let (_connection, mut socket) = node.socket("m1");
    let message = node.stored("m1").await;
    let start = Instant::now();
    node.route(&message).await;

    // The default schedule (Req 4.1): attempt n+1 goes out 5 s (ack timeout) plus the
    // n-th wait of 1, 2, 4, 8, 16, 32 s after attempt n.
    let mut sent_at = Vec::new();
    for _ in 0..7 {
        let frame = socket.recv().await.expect("a frame");
        assert_eq!(frame_id(&frame), message.id);
        sent_at.push(start.elapsed().as_secs());
    }
    assert_eq!(sent_at, [0, 6, 13, 22, 35, 56, 93]);

    // The 7th attempt is not acked either: failed and dead-lettered at 93 + 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    eventually("the message failed", || async { node.status(&message.id).await == Status::Failed }).await;
    assert!(socket.try_recv().is_err(), "no 8th attempt");
    let failed = node.backends.store.message(&message.id).await.unwrap().unwrap();
    assert_eq!(failed.error.as_deref(), Some("not acknowledged after 7 attempts"));
    let letters = node.backends.store.dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].message_id.as_str(), letters[0].attempts), (message.id.as_str(), 7));

    // Req 4.7: every attempt is in the timeline with its outcome.
    eventually("7 attempts are recorded", || async { node.outcomes(&message.id).await.len() == 7 }).await;
    let expected: Vec<(u32, String)> = (1..=7).map(|n| (n, "timeout".to_string())).collect();
    assert_eq!(node.outcomes(&message.id).await, expected);
    let attempts = node.backends.store.attempts(&message.id).await.unwrap();
    assert!(attempts.iter().all(|a| a.error.as_deref() == Some("not acknowledged within 5s")));
}

/// The schedule is a setting (`ESH_RETRY_SCHEDULE`): a shorter one dead-letters after its
/// own last retry, and says how many attempts were made.
#[tokio::test(start_paused = true)]
async fn a_configured_schedule_sets_the_waits_and_the_attempt_count_req_4_1_4_2() {
    let schedule = RetrySchedule::new(vec![Duration::from_millis(100), Duration::from_millis(300)]).unwrap();
    let config = DelivererConfig {
        node_id: NODE.into(),
        ack_timeout: Duration::from_secs(1),
        retry_schedule: schedule,
        ..Default::default()
    };
    let node = Node::start_with(config).await;
    let (_connection, mut socket) = node.socket("m1");
    let message = node.stored("m1").await;
    let start = Instant::now();
    node.route(&message).await;

    let mut sent_at = Vec::new();
    for _ in 0..3 {
        assert_eq!(frame_id(&socket.recv().await.expect("a frame")), message.id);
        sent_at.push(start.elapsed().as_millis());
    }
    // Ack timeout 1 s, then 100 ms; ack timeout, then 300 ms.
    assert_eq!(sent_at, [0, 1100, 2400]);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    eventually("the message failed", || async { node.status(&message.id).await == Status::Failed }).await;
    assert!(socket.try_recv().is_err(), "no 4th attempt");
    let failed = node.backends.store.message(&message.id).await.unwrap().unwrap();
    assert_eq!(failed.error.as_deref(), Some("not acknowledged after 3 attempts"));
    let letters = node.backends.store.dead_letters(None, 10).await.unwrap();
    assert_eq!((letters[0].message_id.as_str(), letters[0].attempts), (message.id.as_str(), 3));
}

#[tokio::test(start_paused = true)]
async fn ack_marks_delivered_and_stops_retries_req_4_4() {
    let node = Node::start().await;
    let (_connection, mut socket) = node.socket("m1");
    let message = node.stored("m1").await;
    node.route(&message).await;
    assert_eq!(frame_id(&socket.recv().await.unwrap()), message.id);

    node.receipt("m1", &message.id, Status::Delivered).await;
    eventually("the message is delivered", || async { node.status(&message.id).await == Status::Delivered }).await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(socket.try_recv().is_err(), "no retry after the ack");
    eventually("the attempt is recorded", || async { !node.outcomes(&message.id).await.is_empty() }).await;
    assert_eq!(node.outcomes(&message.id).await, [(1, "delivered".to_string())]);
}

#[tokio::test(start_paused = true)]
async fn an_ack_on_the_second_attempt_counts_and_records_the_first_as_timed_out() {
    let node = Node::start().await;
    let (_connection, mut socket) = node.socket("m1");
    let message = node.stored("m1").await;
    node.route(&message).await;
    socket.recv().await.unwrap();
    socket.recv().await.unwrap();
    node.receipt("m1", &message.id, Status::Read).await;
    eventually("the message is read", || async { node.status(&message.id).await == Status::Read }).await;
    eventually("both attempts are recorded", || async { node.outcomes(&message.id).await.len() == 2 }).await;
    assert_eq!(node.outcomes(&message.id).await, [(1, "timeout".to_string()), (2, "delivered".to_string())]);
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(socket.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn last_socket_closing_stops_the_schedule_without_failure() {
    let node = Node::start().await;
    let (connection, mut socket) = node.socket("m1");
    let message = node.stored("m1").await;
    node.route(&message).await;
    socket.recv().await.unwrap();

    node.close_socket("m1", connection).await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    eventually("the attempt is recorded", || async { !node.outcomes(&message.id).await.is_empty() }).await;
    assert_eq!(node.outcomes(&message.id).await, [(1, "disconnected".to_string())]);
    // Not failing: still `sent`, replayed on the next connection.
    assert_eq!(node.status(&message.id).await, Status::Sent);
    assert!(node.backends.store.dead_letters(None, 10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retries_go_to_every_socket_and_stop_with_the_last_one() {
    let node = Node::start().await;
    let (first, mut socket_1) = node.socket("m1");
    let (_second, mut socket_2) = node.socket("m1");
    let message = node.stored("m1").await;
    node.route(&message).await;
    assert_eq!(frame_id(&socket_1.recv().await.unwrap()), message.id);
    assert_eq!(frame_id(&socket_2.recv().await.unwrap()), message.id);

    // One socket closes: the other keeps getting the retries.
    node.close_socket("m1", first).await;
    let start = Instant::now();
    assert_eq!(frame_id(&socket_2.recv().await.unwrap()), message.id);
    assert_eq!(start.elapsed().as_secs(), 6);
    assert!(socket_1.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_message_delivered_elsewhere_is_not_retried() {
    let node = Node::start().await;
    let (_connection, mut socket) = node.socket("m1");
    let message = node.stored("m1").await;
    // Acknowledged over HTTP (or on another node) right after the router handed it to this
    // node: only the store knows. (Applied before the frame goes out because paused time
    // would otherwise run past the retry while the store thread writes.)
    node.status_writer.apply(vec![StatusEvent::of(&message, Status::Delivered, Millis::now())]).await.unwrap();
    eventually("the store has it", || async { node.status(&message.id).await == Status::Delivered }).await;
    node.route(&message).await;
    socket.recv().await.unwrap();

    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(socket.try_recv().is_err(), "no retry of a delivered message");
    eventually("the attempt is recorded", || async { !node.outcomes(&message.id).await.is_empty() }).await;
    assert_eq!(node.outcomes(&message.id).await, [(1, "delivered".to_string())]);
}

#[tokio::test]
async fn only_the_recipients_receipts_count() {
    let node = Node::start().await;
    let message = node.stored("m1").await;
    // Not tracked on this node: checked against the store.
    node.receipt("intruder", &message.id, Status::Read).await;
    node.receipt("m1", &message.id, Status::Delivered).await;
    eventually("the recipient's ack applies", || async { node.status(&message.id).await == Status::Delivered }).await;
    // The intruder's read was dropped (it was handled before the ack, in order).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(node.status(&message.id).await, Status::Delivered);
}

#[tokio::test]
async fn status_frames_reach_every_socket_of_the_sender() {
    let node = Node::start().await;
    let (_a, mut socket_1) = node.socket("biz");
    let (_b, mut socket_2) = node.socket("biz");
    let event = NodeEvent::Status { user: "biz".into(), message_id: "m-1".into(), status: Status::Read, at: Millis(0) };
    node.backends.bus.send(&NODE.to_string(), vec![event]).await.unwrap();
    for socket in [&mut socket_1, &mut socket_2] {
        let frame: serde_json::Value = serde_json::from_str(&socket.recv().await.unwrap()).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type": "status", "message_id": "m-1", "status": "read", "at": "1970-01-01T00:00:00.000Z"})
        );
    }
}

#[tokio::test]
async fn replay_sends_undelivered_in_order_then_held_live_frames_once() {
    let node = Node::start().await;
    let mut backlog = Vec::new();
    for _ in 0..3 {
        backlog.push(node.stored("m1").await);
    }
    let connection = node.deliverer.next_connection.fetch_add(1, Ordering::Relaxed);
    let (outbound, mut socket) = mpsc::channel(64);
    node.deliverer.registry.attach("m1", connection, outbound.clone());

    // Routed while the socket replays: one it will replay anyway, one newer.
    let newer = node.stored("m1").await;
    let live = |m: &Message| Outgoing { user: "m1".into(), message_id: Some(m.id.clone()), frame: crate::frames::message(m, Vec::new()) };
    node.deliverer.registry.push_routed(&[live(&backlog[2]), live(&newer)]);

    // The socket remembers the replayed messages whose routed copy has not come yet.
    assert!(session::replay(node.deliverer.clone(), "m1".into(), connection, outbound).await.unwrap());
    assert_eq!(node.deliverer.registry.replayed_len("m1", connection), Some(2));
    let mut received = Vec::new();
    while let Ok(frame) = socket.try_recv() {
        received.push(frame_id(&frame));
    }
    let expected: Vec<String> = backlog.iter().chain([&newer]).map(|m| m.id.clone()).collect();
    assert_eq!(received, expected);

    // Live from now on.
    let later = node.stored("m1").await;
    node.route(&later).await;
    assert_eq!(frame_id(&socket.recv().await.unwrap()), later.id);
}

/// Req 4.1 (each message once per socket, retries aside): a message stored for an offline
/// user is replayed when they connect; the router, which found them online meanwhile, hands
/// the same message to the bus, and its copy arrives only after the replay has finished.
#[tokio::test(start_paused = true)]
async fn a_replayed_message_is_not_sent_again_when_the_routers_copy_arrives_after_the_replay() {
    let node = Node::start().await;
    let message = node.stored("m1").await;
    let connection = node.deliverer.next_connection.fetch_add(1, Ordering::Relaxed);
    let (outbound, mut socket) = mpsc::channel(64);
    node.deliverer.registry.attach("m1", connection, outbound.clone());
    let start = Instant::now();
    assert!(session::replay(node.deliverer.clone(), "m1".into(), connection, outbound).await.unwrap());
    assert_eq!(frame_id(&socket.try_recv().expect("the replayed frame")), message.id);
    assert_eq!(node.deliverer.registry.replayed_len("m1", connection), Some(1));

    // The tracker's retry is a legitimate resend: it goes out (5 s ack timeout + 1 s).
    assert_eq!(frame_id(&socket.recv().await.unwrap()), message.id);
    assert_eq!(start.elapsed().as_secs(), 6);

    // The router's late copy is dropped for this socket; what follows it on the bus (a
    // status frame: no store write, which paused time would not wait for) comes live.
    let marker = NodeEvent::Status { user: "m1".into(), message_id: "m-0".into(), status: Status::Read, at: Millis(0) };
    node.backends.bus.send(&NODE.to_string(), vec![NodeEvent::Message(message.clone()), marker]).await.unwrap();
    let next: serde_json::Value = serde_json::from_str(&socket.recv().await.unwrap()).unwrap();
    assert_eq!(next["type"], "status", "the replayed message came twice: {next}");
    assert_eq!(start.elapsed().as_secs(), 6);
    // Its copy came: nothing is left to remember.
    assert_eq!(node.deliverer.registry.replayed_len("m1", connection), None);

    // The message keeps its single schedule: attempt 3 comes at 6 + 5 + 2 = 13 s.
    assert_eq!(frame_id(&socket.recv().await.unwrap()), message.id);
    assert_eq!(start.elapsed().as_secs(), 13);
}
