//! In-process delivery bus: one bounded channel per subscribed node.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

use super::{DeliveryBus, NodeEvent, NodeId};
use crate::error::BackendError;

#[derive(Default)]
pub struct EmbeddedDeliveryBus {
    nodes: Mutex<HashMap<NodeId, mpsc::Sender<Vec<NodeEvent>>>>,
}

impl EmbeddedDeliveryBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl DeliveryBus for EmbeddedDeliveryBus {
    async fn send(&self, node: &NodeId, events: Vec<NodeEvent>) -> Result<(), BackendError> {
        let sender = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(node).cloned();
        match sender {
            // A closed channel means the node stopped: best effort, as the contract says.
            Some(sender) => Ok(sender.send(events).await.unwrap_or(())),
            None => Ok(()),
        }
    }

    async fn subscribe(&self, node: &NodeId, capacity: usize) -> Result<mpsc::Receiver<Vec<NodeEvent>>, BackendError> {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(node.clone(), sender);
        Ok(receiver)
    }
}
