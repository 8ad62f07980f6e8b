//! The Kafka log on a real Kafka-protocol broker, `tansu` (started by the test on a free
//! loopback port, or `ESH_TEST_KAFKA=host:port`): the whole `MessageLog` suite, then
//! redelivery across a restart of the log and a rebalance with a member stopped mid-stream.
#![cfg(feature = "kafka")]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use esh_backends::log::{KafkaMessageLog, KafkaSettings};
use esh_backends::testsuite::kafka::KafkaBroker;
use esh_backends::testsuite::log::{collect, text, unique};
use esh_backends::{Consumed, MessageLog, Record};

async fn open(broker: &KafkaBroker) -> Arc<dyn MessageLog> {
    let mut settings = KafkaSettings::from_url(&broker.url()).expect("url");
    settings.partitions = 4;
    settings.properties.extend(broker.client_properties());
    Arc::new(KafkaMessageLog::open(settings).await.expect("open the kafka log"))
}

/// A broker of its own for each test, and a Kafka log on it.
async fn tansu_log() -> (KafkaBroker, Arc<dyn MessageLog>) {
    let broker = KafkaBroker::start();
    let log = open(&broker).await;
    (broker, log)
}

// Every property, with one record a produced batch (`KafkaBroker::client_properties`).
esh_backends::log_suite!(tansu_log());

/// Req 4.6, 6.1: a consumer of a restarted log (a new process) gets again exactly what its
/// group had not committed, in every partition, and nothing it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_4_6_uncommitted_records_come_again_after_a_restart_and_committed_ones_do_not() {
    let broker = KafkaBroker::start();
    let (topic, group) = (unique("restart"), unique("g"));
    let committed: HashSet<String>;
    {
        let log = open(&broker).await;
        let batch: Vec<Record> =
            (0..40).map(|i| Record { key: format!("conv-{}", i % 8), value: format!("{i}").into_bytes() }).collect();
        log.append(&topic, batch).await.expect("append");
        let mut consumer = log.subscribe(&group, &[&topic]).await.expect("subscribe");
        let got = collect(consumer.as_mut(), 40).await;
        // Commit a prefix of each partition: the first half of what each one gave.
        let mut by_partition: HashMap<u32, Vec<Consumed>> = HashMap::new();
        for record in got {
            by_partition.entry(record.partition).or_default().push(record);
        }
        let prefix: Vec<Consumed> =
            by_partition.values().flat_map(|records| records[..records.len() / 2].to_vec()).collect();
        consumer.commit(&prefix).await.expect("commit");
        committed = prefix.iter().map(text).collect();
        assert_eq!(log.lag(&group, &topic).await.expect("lag"), (40 - prefix.len()) as u64);
    }
    let log = open(&broker).await;
    let mut consumer = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let again = collect(consumer.as_mut(), 40 - committed.len()).await;
    let again: HashSet<String> = again.iter().map(text).collect();
    let all: HashSet<String> = (0..40).map(|i| i.to_string()).collect();
    assert_eq!(again, all.difference(&committed).cloned().collect::<HashSet<_>>());
    let more = consumer.poll(100, Duration::from_millis(500)).await.expect("poll");
    assert!(more.is_empty(), "committed records came again: {:?}", more.iter().map(text).collect::<Vec<_>>());
}

/// Req 5.6, 6.1: two members of one group share a stream; one stops mid-stream with
/// records it had read but not committed. The other takes over its partitions and every
/// record is processed; each commit covers only records whose effects were recorded first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_6_1_a_member_stopped_mid_stream_loses_nothing() {
    let (_broker, log) = tansu_log().await;
    let (topic, group) = (unique("rebalance"), unique("g"));
    let mut a = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let mut b = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let batch: Vec<Record> =
        (0..200).map(|i| Record { key: format!("conv-{}", i % 20), value: format!("{i}").into_bytes() }).collect();
    log.append(&topic, batch).await.expect("append");

    // The effects: what each member processed, recorded before it commits.
    let mut processed: HashSet<String> = HashSet::new();
    let mut read_by_a = 0;
    while read_by_a < 30 {
        let got = a.poll(10, Duration::from_millis(200)).await.expect("poll");
        read_by_a += got.len();
        processed.extend(got.iter().map(text));
        a.commit(&got).await.expect("commit");
    }
    // Read but never processed nor committed: lost with the member, so read again by b.
    let _dropped = a.poll(50, Duration::from_millis(200)).await.expect("poll");
    drop(a);

    let started = Instant::now();
    while processed.len() < 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "only {} of 200 processed", processed.len());
        let got = b.poll(100, Duration::from_millis(200)).await.expect("poll");
        processed.extend(got.iter().map(text));
        b.commit(&got).await.expect("commit");
    }
    assert_eq!(log.lag(&group, &topic).await.expect("lag"), 0, "everything processed was committed");
}
