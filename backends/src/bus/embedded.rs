//! In-process delivery bus: one bounded channel per subscribed node. A node that subscribes
//! again replaces its channel; a node whose receiver is dropped is forgotten on the next send.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

use super::{DeliveryBus, NodeEvent, NodeId};
use crate::error::BackendError;

/// The delivery bus of the one-process mode.
#[derive(Default)]
pub struct EmbeddedDeliveryBus {
    nodes: Mutex<HashMap<NodeId, mpsc::Sender<Vec<NodeEvent>>>>,
}

impl EmbeddedDeliveryBus {
    /// A bus with no node subscribed.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl DeliveryBus for EmbeddedDeliveryBus {
    async fn send(&self, node: &NodeId, events: Vec<NodeEvent>) -> Result<(), BackendError> {
        if events.is_empty() {
            return Ok(());
        }
        let Some(sender) = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(node).cloned() else {
            return Ok(());
        };
        if sender.send(events).await.is_err() {
            // The node stopped listening: its events are lost, which the contract allows.
            // Forget it, unless it subscribed again meanwhile.
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            if nodes.get(node).is_some_and(|current| current.same_channel(&sender)) {
                nodes.remove(node);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, node: &NodeId, capacity: usize) -> Result<mpsc::Receiver<Vec<NodeEvent>>, BackendError> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(node.clone(), sender);
        Ok(receiver)
    }
}
