//! The Kafka log through the `MessageLog` conformance suite on librdkafka's in-process mock
//! cluster (three brokers; it creates topics on first use with 4 partitions), plus the
//! priority scheme of the Kafka consumer.
#![cfg(feature = "kafka")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use esh_backends::log::{KafkaMessageLog, KafkaSettings};
use esh_backends::testsuite::log::unique;
use esh_backends::{MessageLog, Record};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A mock cluster of three brokers and a Kafka log on it; the cluster lives as long as the test.
async fn mock_log() -> (MockCluster<'static, DefaultProducerContext>, Arc<dyn MessageLog>) {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let settings = KafkaSettings::from_url(&format!("kafka://{}", cluster.bootstrap_servers())).expect("url");
    let log = KafkaMessageLog::open(settings).await.expect("open the kafka log");
    (cluster, Arc::new(log))
}

esh_backends::log_suite!(mock_log());

/// Req 5.2: under a flood of high-priority records the low-priority ones still move: a
/// full batch of high-priority records keeps its last tenth for waiting lower ones, and
/// a batch never holds more lower-priority records than that while higher ones wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_5_2_a_high_priority_flood_does_not_starve_low_priority() {
    let (_cluster, log) = mock_log().await;
    let (high, low) = (unique("flood-high"), unique("flood-low"));
    let records = |topic: &str, n: usize| (0..n).map(|i| Record { key: format!("k{}", i % 4), value: format!("{topic}-{i}").into_bytes() }).collect();
    log.append(&low, records(&low, 30)).await.expect("append");
    log.append(&high, records(&high, 600)).await.expect("append");
    let mut consumer = log.subscribe(&unique("g"), &[&high, &low]).await.expect("subscribe");
    let started = Instant::now();
    let mut order = Vec::new();
    while order.len() < 630 {
        assert!(started.elapsed() < Duration::from_secs(30), "only {} of 630 records arrived", order.len());
        let batch = consumer.poll(100, Duration::from_millis(200)).await.expect("poll");
        let lows = batch.iter().filter(|r| r.topic == low).count();
        let highs_left = 600 - order.iter().filter(|t| **t == high).count() - (batch.len() - lows);
        if highs_left > 0 {
            assert!(lows <= 10, "{lows} low-priority records in one batch while high ones wait");
        }
        order.extend(batch.into_iter().map(|r| r.topic));
    }
    let first_low = order.iter().position(|t| *t == low).expect("low arrived");
    let last_high = order.iter().rposition(|t| *t == high).expect("high arrived");
    assert!(first_low < last_high, "low-priority records waited for the whole flood");
}
