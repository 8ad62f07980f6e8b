//! The Kafka log through the `MessageLog` conformance suite on librdkafka's in-process mock
//! cluster (three brokers; it creates topics on first use with 4 partitions).
#![cfg(feature = "kafka")]

use std::sync::Arc;

use esh_backends::log::{KafkaMessageLog, KafkaSettings};
use esh_backends::MessageLog;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock cluster of three brokers and a Kafka log on it; the cluster lives as long as the test.
async fn mock_log() -> (MockCluster<'static, DefaultProducerContext>, Arc<dyn MessageLog>) {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let mut settings = KafkaSettings::from_url(&format!("kafka://{}", cluster.bootstrap_servers())).expect("url");
    // The mock cluster has no CreateTopics; it creates topics (4 partitions) when asked for them.
    settings.create_topics = false;
    let log = KafkaMessageLog::open(settings).await.expect("open the kafka log");
    (cluster, Arc::new(log))
}

esh_backends::log_suite!(mock_log());
