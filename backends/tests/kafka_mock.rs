//! The Kafka log through the `MessageLog` conformance suite on librdkafka's in-process mock
//! cluster (three brokers; it creates topics on first use with 4 partitions).
#![cfg(feature = "kafka")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use esh_backends::log::{KafkaMessageLog, KafkaSettings};
use esh_backends::testsuite::log::{collect, unique};
use esh_backends::{ErrorKind, MessageLog, Record};
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

/// A commit the brokers never answer (all of them down) fails with a transient error after
/// `request_timeout` instead of waiting for ever; once they are back, the same commit
/// goes through and the group's next member starts after it.
#[tokio::test]
async fn a_commit_the_brokers_never_answer_times_out_and_can_be_retried() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let mut settings = KafkaSettings::from_url(&format!("kafka://{}", cluster.bootstrap_servers())).expect("url");
    settings.create_topics = false;
    settings.request_timeout = Duration::from_secs(1);
    let log = KafkaMessageLog::open(settings).await.expect("open the kafka log");
    let (topic, group) = (unique("unanswered"), unique("g"));
    let records = (0..3).map(|i| Record { key: "k".into(), value: format!("{i}").into_bytes() }).collect();
    log.append(&topic, records).await.expect("append");
    let mut member = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let read = collect(member.as_mut(), 3).await;

    for broker in 1..=3 {
        cluster.broker_down(broker).expect("broker down");
    }
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(30), member.commit(&read))
        .await
        .expect("the commit answers within its timeout")
        .expect_err("no broker answers the commit");
    assert_eq!(refused.kind(), ErrorKind::Transient, "{refused}");
    // Within the 1 s timeout and some slack, not librdkafka's own request timeouts (10 s and more).
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    for broker in 1..=3 {
        cluster.broker_up(broker).expect("broker up");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = member.commit(&read).await {
        assert!(Instant::now() < deadline, "the commit never went through: {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(member);
    let mut next = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let polled = next.poll(10, Duration::from_secs(2)).await.expect("poll");
    assert!(polled.is_empty(), "the committed records came again: {polled:?}");
}
