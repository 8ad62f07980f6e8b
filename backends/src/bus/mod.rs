//! How the router reaches the deliverer node that holds a recipient's socket. Embedded:
//! an in-process channel per node. Distributed: a per-node topic or channel.

mod embedded;

pub use embedded::EmbeddedDeliveryBus;

use async_trait::async_trait;
use esh_common::{Message, Millis, Status};
use tokio::sync::mpsc;

use crate::error::BackendError;

/// The id of a deliverer node (one process holding sockets).
pub type NodeId = String;

/// What a deliverer node is asked to push to its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// Deliver a message to every socket of its recipient.
    Message(Message),
    /// Tell every socket of `user` (the message's sender) about a status change.
    Status { user: String, message_id: String, status: Status, at: Millis },
}

#[async_trait]
pub trait DeliveryBus: Send + Sync + 'static {
    /// Hands events to `node`, in order. Delivery is best effort: a node that is gone loses
    /// them, which is safe because undelivered messages are replayed from the store on connect.
    async fn send(&self, node: &NodeId, events: Vec<NodeEvent>) -> Result<(), BackendError>;
    /// Starts receiving the events addressed to `node`; the channel holds at most `capacity`
    /// batches (senders wait when it is full).
    async fn subscribe(&self, node: &NodeId, capacity: usize) -> Result<mpsc::Receiver<Vec<NodeEvent>>, BackendError>;
}
