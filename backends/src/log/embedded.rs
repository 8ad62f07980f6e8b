//! PLACEHOLDER: replaced by the durable embedded log.
use async_trait::async_trait;
use std::path::Path;
use std::time::Duration;
use super::{Consumed, LogConsumer, MessageLog, Record};
use crate::error::BackendError;

pub struct EmbeddedMessageLog;

impl EmbeddedMessageLog {
    pub fn open(_dir: &Path, _partitions: u32) -> Result<Self, BackendError> {
        todo!()
    }
}

#[async_trait]
impl MessageLog for EmbeddedMessageLog {
    async fn append(&self, _topic: &str, _records: Vec<Record>) -> Result<(), BackendError> { todo!() }
    async fn subscribe(&self, _group: &str, _topics: &[&str]) -> Result<Box<dyn LogConsumer>, BackendError> { todo!() }
    async fn lag(&self, _group: &str, _topic: &str) -> Result<u64, BackendError> { todo!() }
    async fn check(&self) -> Result<(), BackendError> { todo!() }
}
#[allow(dead_code)]
struct C;
#[async_trait]
impl LogConsumer for C {
    async fn poll(&mut self, _max: usize, _wait: Duration) -> Result<Vec<Consumed>, BackendError> { todo!() }
    async fn commit(&mut self, _records: &[Consumed]) -> Result<(), BackendError> { todo!() }
}
