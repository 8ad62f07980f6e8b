//! The WebSocket gateway (`GET /v1/ws`, API.md "WebSocket"): it holds the sockets of the
//! users connected to this node, delivers their messages and status changes, retries what
//! is not acknowledged, and passes their receipts and chat sends on.
//!
//! Shape (mini-redis style: small tasks, short `std::sync::Mutex` sections, bounded queues,
//! one cancellation token from the binary down):
//!
//! - `session`: per socket, a reader task (auth before the upgrade, `hello`, presence,
//!   replay of undelivered messages, client frames, heartbeats) and a writer task that
//!   writes its bounded outbound queue in batches (several frames, one flush).
//! - `registry`: user → sockets of this node; frames are pushed without blocking.
//! - `dispatch`: the bus consumer; serializes each frame once for all the user's sockets,
//!   with the messages' media objects (`MediaLinks`, one catalog read per bus batch that
//!   carries media, none otherwise).
//! - `tracker`: the node's single retry schedule (one `DelayQueue`): ack timeout, backoff
//!   (`retry_schedule`, 1..32 s by default), dead letter after the last retry (7 attempts
//!   by default; Req 4.1, 4.2).
//! - `persist`: attempts, receipts and failures appended to `esh.status.v1` in batches
//!   (`StatusWriter::apply`); the store projection writes the attempts into the timeline.
//! - `frames`: the client frame parser (untrusted input) and the server frames.
//!
//! A message goes bus → dispatch → socket queue → writer: two hops per socket, plus one
//! tracker command per bus batch.

mod dispatch;
mod frames;
mod persist;
mod registry;
mod session;
mod tracker;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use esh_backends::media_links::{MediaLinkConfig, MediaLinks};
use esh_backends::resolver::Backends;
use esh_backends::status_writer::StatusWriter;
use esh_backends::BackendError;
use esh_common::auth::TokenKeys;
use esh_common::ingress::ChatIngress;
use esh_common::retry::RetrySchedule;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::Registry;
use crate::tracker::{Command, Tracker};

/// Settings of a deliverer node.
#[derive(Debug, Clone)]
pub struct DelivererConfig {
    /// This node's id in presence and on the delivery bus (unique among running nodes).
    pub node_id: String,
    /// How often clients must ping (`heartbeat_s` in `hello`); a socket silent for 3× this is closed.
    pub heartbeat: Duration,
    /// How long a sent message waits for its ack before it is retried.
    pub ack_timeout: Duration,
    /// Waits before each retry of an unacknowledged message; after the last one the
    /// message is dead-lettered (default 1, 2, 4, 8, 16, 32 s: 7 attempts).
    pub retry_schedule: RetrySchedule,
    /// Largest client frame; a larger one closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued per socket; beyond that frames for the socket are dropped (retries resend messages).
    pub outbound_queue: usize,
    /// Batches of events buffered from the delivery bus.
    pub bus_capacity: usize,
    /// Commands (sends, receipts, disconnects) queued to the retry tracker.
    pub tracker_queue: usize,
    /// Batches of attempts and receipts queued to be written.
    pub persist_queue: usize,
    /// Live frames one socket holds while its undelivered messages are replayed.
    pub replay_hold: usize,
    /// How long a socket remembers the messages its replay sent (at most `replay_hold` of
    /// them), so that the router's late live copies are not sent again; zero keeps none.
    pub replay_window: Duration,
    /// Messages read from the store per page of a replay.
    pub replay_page: usize,
    /// Least time between two presence refreshes of one socket (presence lives 5 minutes).
    pub presence_refresh: Duration,
    /// Invalid frames a client may send in a second before its socket is closed (1008).
    pub max_invalid_frames_per_s: u32,
    /// Read buffer of each socket (it dominates the memory of an idle connection).
    pub read_buffer_bytes: usize,
    /// Most frames written to a socket before one flush.
    pub write_batch: usize,
    /// How the media objects of messages get their signed URLs.
    pub media_links: MediaLinkConfig,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        DelivererConfig {
            node_id: "local".into(),
            heartbeat: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(5),
            retry_schedule: RetrySchedule::default(),
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            bus_capacity: 1024,
            tracker_queue: 4096,
            persist_queue: 1024,
            replay_hold: 4096,
            replay_window: Duration::from_secs(60),
            replay_page: 500,
            presence_refresh: Duration::from_secs(60),
            max_invalid_frames_per_s: 20,
            read_buffer_bytes: 8 * 1024,
            write_batch: 64,
            media_links: MediaLinkConfig::default(),
        }
    }
}

/// A deliverer node: its sockets, its retry schedule and its background tasks.
pub struct Deliverer {
    backends: Backends,
    keys: TokenKeys,
    ingress: Arc<dyn ChatIngress>,
    config: DelivererConfig,
    shutdown: CancellationToken,
    registry: Arc<Registry>,
    tracker: mpsc::Sender<Command>,
    /// Media objects of the messages sent, with signed URLs.
    media: MediaLinks,
    next_connection: AtomicU64,
    tasks: TaskTracker,
}

impl Deliverer {
    /// Subscribes the node to the bus and starts its tasks; they stop when `shutdown` is cancelled (sockets closed with 1001).
    pub async fn start(
        backends: Backends,
        keys: TokenKeys,
        status_writer: StatusWriter,
        ingress: Arc<dyn ChatIngress>,
        config: DelivererConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BackendError> {
        let events = backends.bus.subscribe(&config.node_id, config.bus_capacity.max(1)).await?;
        let registry = Arc::new(Registry::new(config.replay_hold));
        let (tracker_tx, tracker_rx) = mpsc::channel(config.tracker_queue.max(1));
        let (persist_tx, persist_rx) = mpsc::channel(config.persist_queue.max(1));
        let tasks = TaskTracker::new();

        let tracker = Tracker::new(
            registry.clone(),
            backends.store.clone(),
            persist_tx,
            config.ack_timeout,
            config.retry_schedule.clone(),
        );
        tasks.spawn(tracker.run(tracker_rx, shutdown.clone()));
        tasks.spawn(persist::run(persist_rx, backends.clone(), status_writer));
        let media = MediaLinks::new(backends.media.clone(), backends.blobs.clone(), &config.media_links);
        tasks.spawn(dispatch::run(events, media.clone(), registry.clone(), tracker_tx.clone(), shutdown.clone()));

        Ok(Arc::new(Deliverer {
            backends,
            keys,
            ingress,
            config,
            shutdown,
            registry,
            tracker: tracker_tx,
            media,
            next_connection: AtomicU64::new(1),
            tasks,
        }))
    }

    /// GET /v1/ws
    pub fn routes(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().route("/v1/ws", axum::routing::get(session::upgrade)).with_state(self.clone())
    }

    /// This node's id in presence and on the bus.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Frames dropped so far because a socket's queue was full (slow clients).
    pub fn dropped_frames(&self) -> u64 {
        self.registry.dropped()
    }

    /// Waits until the node's tasks and connections have ended (call after cancelling `shutdown`).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests;
