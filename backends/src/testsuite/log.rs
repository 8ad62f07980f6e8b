//! Conformance of `MessageLog` and `LogConsumer`: every implementation (embedded, Kafka)
//! runs every property through [`log_suite!`](crate::log_suite), one `#[tokio::test]` each.
//!
//! What the properties assume of the log under test:
//! - Topics are created on first use (append or subscribe) with at least 2 partitions
//!   each (the log's configured count); every property uses topic and group names of its
//!   own ([`unique`]), so the properties can share one long-lived broker and run in any order.
//! - `subscribe` returns once the new member holds its assignment (for Kafka: the group
//!   rebalanced and the member got its partitions), so no property waits a fixed time for
//!   a member to join; records appended after it returns reach the group.
//! - A dropped consumer has left its group: the next member gets its partitions at once.
//! - Lag is per group and topic: records appended but not committed by the group, summed
//!   over the partitions; where the group never committed, counted from the oldest record
//!   still stored. Reading is not committing.
//!
//! Waits are real (short) durations, each bounded by [`PATIENCE`]; only the checks that
//! nothing more arrives listen for a quiet window.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::log::{Consumed, LogConsumer, MessageLog, Record};

/// The longest any property waits for records it expects.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a poll waits when records are expected.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// The time a flooded consumer spends on each batch (see the starvation test).
const BATCH_WORK: Duration = Duration::from_millis(100);
/// How long to listen to be confident nothing more comes.
const QUIET: Duration = Duration::from_millis(300);

/// A name no other run or property uses: `<label>.<run>.<n>`, legal as a Kafka topic.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("esh-suite.{label}.{}-{nanos}.{n}", std::process::id())
}

fn record(key: &str, value: impl Into<Vec<u8>>) -> Record {
    Record { key: key.to_owned(), value: value.into() }
}

/// A record's value as text (the properties append UTF-8 values).
pub fn text(consumed: &Consumed) -> String {
    String::from_utf8_lossy(&consumed.value).into_owned()
}

/// Polls until `count` records arrived in total (panics after [`PATIENCE`]).
pub async fn collect(consumer: &mut dyn LogConsumer, count: usize) -> Vec<Consumed> {
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < count {
        assert!(started.elapsed() < PATIENCE, "only {} of {count} records arrived", out.len());
        out.extend(consumer.poll(count - out.len(), POLL_WAIT).await.expect("poll"));
    }
    out
}

/// Polls for [`QUIET`] and returns whatever came (expected: nothing).
async fn leftovers(consumer: &mut dyn LogConsumer) -> Vec<Consumed> {
    let started = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < QUIET {
        out.extend(consumer.poll(100, Duration::from_millis(100)).await.expect("poll"));
    }
    out
}

fn assert_no_duplicates(records: &[Consumed]) {
    let mut seen = HashSet::new();
    for r in records {
        assert!(seen.insert((r.topic.clone(), r.partition, r.offset)), "record delivered twice: {r:?}");
    }
}

/// One `#[tokio::test]` per property of the `MessageLog` suite, in a module `log_suite`.
/// `$open` is an expression (evaluated in the caller's scope, once per test) of a future
/// giving `(keep, log)`: `keep` lives as long as the test (a temporary directory, a
/// broker), `log` is an `Arc<dyn MessageLog>`. The caller needs `tokio` (macros, rt-multi-thread).
///
/// ```ignore
/// esh_backends::log_suite!(open_embedded());
/// ```
#[macro_export]
macro_rules! log_suite {
    ($open:expr) => {
        $crate::log_suite!(@properties $open;
            records_of_one_key_keep_their_order,
            records_of_different_keys_all_arrive,
            higher_priority_topics_are_drained_first,
            a_high_priority_flood_does_not_starve_low_priority,
            committed_records_are_not_redelivered,
            uncommitted_records_are_redelivered_after_a_crash,
            group_members_split_partitions,
            every_group_sees_every_record,
            lag_counts_appended_but_uncommitted_records,
            end_offsets_follow_durable_appends,
            poll_waits_for_an_append,
            poll_returns_empty_after_its_wait,
            poll_returns_at_most_max,
            check_succeeds_on_a_working_log,
        );
    };
    (@properties $open:expr; $($property:ident,)*) => {
        mod log_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    let (_keep, log) = $open.await;
                    $crate::testsuite::log::$property(log).await;
                }
            )*
        }
    };
}

/// Req 5.6: records with the same key (a conversation) come back in append order, with
/// offsets increasing within their partition.
pub async fn records_of_one_key_keep_their_order(log: Arc<dyn MessageLog>) {
    let topic = unique("order");
    let keys = ["conv-a", "conv-b", "conv-c", "conv-d", "conv-e"];
    let mut appended = 0;
    for round in 0..20 {
        let batch: Vec<Record> = keys.iter().flat_map(|k| (0..2).map(move |i| record(k, format!("{k}:{}", round * 2 + i)))).collect();
        appended += batch.len();
        log.append(&topic, batch).await.expect("append");
    }
    let mut consumer = log.subscribe(&unique("g"), &[&topic]).await.expect("subscribe");
    let got = collect(consumer.as_mut(), appended).await;
    assert_no_duplicates(&got);
    let mut next: HashMap<String, u32> = HashMap::new();
    let mut partition_of: HashMap<String, u32> = HashMap::new();
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    for r in &got {
        let (key, n) = text(r).split_once(':').map(|(k, n)| (k.to_owned(), n.parse::<u32>().expect("seq"))).expect("value");
        assert_eq!(key, r.key);
        let expected = next.entry(key.clone()).or_insert(0);
        assert_eq!(n, *expected, "key {key} out of order");
        *expected += 1;
        assert_eq!(*partition_of.entry(key).or_insert(r.partition), r.partition, "one key, one partition");
        if let Some(previous) = last_offset.insert(r.partition, r.offset) {
            assert!(r.offset > previous, "offsets go forward within a partition");
        }
    }
    assert!(next.values().all(|n| *n == 40));
}

/// Req 5.6: records with different keys may interleave, but every one arrives exactly
/// once, including appends made concurrently.
pub async fn records_of_different_keys_all_arrive(log: Arc<dyn MessageLog>) {
    let topic = unique("keys");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let log = log.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let batch = (0..5).map(|j| record(&format!("user-{t}-{j}"), format!("{t}-{i}-{j}"))).collect();
                log.append(&topic, batch).await.expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("append task");
    }
    let mut consumer = log.subscribe(&unique("g"), &[&topic]).await.expect("subscribe");
    let got = collect(consumer.as_mut(), 400).await;
    assert_no_duplicates(&got);
    let values: HashSet<String> = got.iter().map(text).collect();
    assert_eq!(values.len(), 400);
    assert!(leftovers(consumer.as_mut()).await.is_empty(), "nothing beyond what was appended");
}

/// Req 5.2: with topics subscribed highest priority first, everything available in a
/// higher-priority topic comes before any record of a lower one.
pub async fn higher_priority_topics_are_drained_first(log: Arc<dyn MessageLog>) {
    let (high, normal, low) = (unique("high"), unique("normal"), unique("low"));
    for (topic, n) in [(&low, 30), (&normal, 20), (&high, 10)] {
        let batch = (0..n).map(|i| record(&format!("k{}", i % 7), format!("{topic}-{i}"))).collect();
        log.append(topic, batch).await.expect("append");
    }
    let mut consumer = log.subscribe(&unique("g"), &[&high, &normal, &low]).await.expect("subscribe");
    let got = collect(consumer.as_mut(), 60).await;
    assert_no_duplicates(&got);
    let rank = |r: &Consumed| [&high, &normal, &low].iter().position(|t| **t == r.topic).expect("subscribed topic");
    let ranks: Vec<usize> = got.iter().map(rank).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "priority order broken: {ranks:?}");
    assert_eq!(ranks.iter().filter(|r| **r == 0).count(), 10);
}

/// Req 5.2: under a flood of high-priority records the low-priority ones still move: a
/// full batch of high-priority records keeps its last tenth for waiting lower ones, and no
/// batch holds more lower-priority records than that while higher ones wait.
pub async fn a_high_priority_flood_does_not_starve_low_priority(log: Arc<dyn MessageLog>) {
    let (high, low) = (unique("flood-high"), unique("flood-low"));
    let batch = |topic: &str, n: usize| (0..n).map(|i| record(&format!("k{}", i % 4), format!("{topic}-{i}"))).collect();
    log.append(&low, batch(&low, 30)).await.expect("append");
    log.append(&high, batch(&high, 600)).await.expect("append");
    let mut consumer = log.subscribe(&unique("g"), &[&high, &low]).await.expect("subscribe");
    let started = Instant::now();
    let mut order: Vec<String> = Vec::new();
    while order.len() < 630 {
        assert!(started.elapsed() < PATIENCE, "only {} of 630 records arrived", order.len());
        let got = consumer.poll(100, POLL_WAIT).await.expect("poll");
        let lows = got.iter().filter(|r| r.topic == low).count();
        let highs_before = order.iter().filter(|t| **t == high).count();
        if highs_before + got.len() - lows < 600 {
            assert!(lows <= 10, "{lows} low-priority records in one batch while high ones wait");
        }
        order.extend(got.into_iter().map(|r| r.topic));
        // A consumer spends time on each batch; meanwhile a client that fetches topics
        // separately (Kafka) has fetched the low-priority topic too, however loaded the
        // machine, so the flood cannot end before the low records are waiting.
        tokio::time::sleep(BATCH_WORK).await;
    }
    let first_low = order.iter().position(|t| *t == low).expect("low arrived");
    let last_high = order.iter().rposition(|t| *t == high).expect("high arrived");
    assert!(first_low < last_high, "the low-priority records waited for the whole flood");
}

/// Req 4.6: what a group committed is not delivered to its members again; what it did not
/// commit is (the next member starts after the committed offset).
pub async fn committed_records_are_not_redelivered(log: Arc<dyn MessageLog>) {
    let topic = unique("commit");
    let group = unique("g");
    // One key: one partition, so "the first four" is a prefix of it.
    log.append(&topic, (0..10).map(|i| record("conv", format!("{i}"))).collect()).await.expect("append");
    let mut first = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let got = collect(first.as_mut(), 10).await;
    let values: Vec<String> = got.iter().map(text).collect();
    assert_eq!(values, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    first.commit(&got[..4]).await.expect("commit");
    drop(first);

    let mut second = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let again = collect(second.as_mut(), 6).await;
    assert_eq!(again.iter().map(text).collect::<Vec<_>>(), values[4..].to_vec());
    second.commit(&again).await.expect("commit");
    assert!(leftovers(second.as_mut()).await.is_empty());
    drop(second);

    let mut third = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    assert!(leftovers(third.as_mut()).await.is_empty(), "everything was committed");
}

/// Req 4.6, 6.1: a member that stops without committing (a crash) loses nothing: the next
/// member of the group gets the same records again.
pub async fn uncommitted_records_are_redelivered_after_a_crash(log: Arc<dyn MessageLog>) {
    let topic = unique("crash");
    let group = unique("g");
    let batch: Vec<Record> = (0..12).map(|i| record(&format!("k{}", i % 4), format!("{i}"))).collect();
    log.append(&topic, batch).await.expect("append");
    let mut crashing = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let before: HashSet<String> = collect(crashing.as_mut(), 12).await.iter().map(text).collect();
    drop(crashing);

    let mut next = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let after = collect(next.as_mut(), 12).await;
    assert_no_duplicates(&after);
    assert_eq!(after.iter().map(text).collect::<HashSet<_>>(), before);
}

/// Req 5.6, 7.5: two live members of one group share the partitions: together they get
/// every record, and no record goes to both.
pub async fn group_members_split_partitions(log: Arc<dyn MessageLog>) {
    let topic = unique("split");
    let group = unique("g");
    let mut a = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let mut b = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    let batch: Vec<Record> = (0..100).map(|i| record(&format!("conv-{}", i % 50), format!("{i}"))).collect();
    log.append(&topic, batch).await.expect("append");

    let started = Instant::now();
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    while from_a.len() + from_b.len() < 100 {
        assert!(started.elapsed() < PATIENCE, "only {} of 100 records arrived", from_a.len() + from_b.len());
        let got = a.poll(100, Duration::from_millis(50)).await.expect("poll");
        a.commit(&got).await.expect("commit");
        from_a.extend(got);
        let got = b.poll(100, Duration::from_millis(50)).await.expect("poll");
        b.commit(&got).await.expect("commit");
        from_b.extend(got);
    }
    assert!(!from_a.is_empty() && !from_b.is_empty(), "both members get partitions");
    let partitions_a: HashSet<u32> = from_a.iter().map(|r| r.partition).collect();
    let partitions_b: HashSet<u32> = from_b.iter().map(|r| r.partition).collect();
    assert!(partitions_a.is_disjoint(&partitions_b), "a partition belongs to one member");
    let mut all = from_a;
    all.extend(from_b);
    assert_no_duplicates(&all);
    assert_eq!(all.iter().map(text).collect::<HashSet<_>>().len(), 100);
}

/// Groups are independent: each one sees every record (the router and the notifier both
/// read their topics in full).
pub async fn every_group_sees_every_record(log: Arc<dyn MessageLog>) {
    let topic = unique("groups");
    log.append(&topic, (0..30).map(|i| record(&format!("k{i}"), format!("{i}"))).collect()).await.expect("append");
    let mut one = log.subscribe(&unique("g1"), &[&topic]).await.expect("subscribe");
    let mut two = log.subscribe(&unique("g2"), &[&topic]).await.expect("subscribe");
    let got_one = collect(one.as_mut(), 30).await;
    one.commit(&got_one).await.expect("commit");
    let got_two = collect(two.as_mut(), 30).await;
    assert_no_duplicates(&got_one);
    assert_no_duplicates(&got_two);
    let values = |records: &[Consumed]| records.iter().map(text).collect::<HashSet<_>>();
    assert_eq!(values(&got_one), values(&got_two));
    assert_eq!(values(&got_one).len(), 30);
}

/// Req 5.4: lag (the queue depth the overload check reads) counts records appended but not
/// yet committed by the group.
/// `end_offsets` is each partition's high watermark: empty for an unknown topic, then the
/// offset the next record of each partition gets, moved by every returned `append` (what
/// read-your-writes waits on: `backends/src/freshness.rs`).
pub async fn end_offsets_follow_durable_appends(log: Arc<dyn MessageLog>) {
    let topic = unique("ends");
    assert!(log.end_offsets(&topic).await.expect("end offsets").is_empty(), "no topic, no partitions");
    let batch: Vec<Record> = (0..30).map(|i| record(&format!("key-{i}"), format!("v{i}"))).collect();
    log.append(&topic, batch).await.expect("append");
    let ends = log.end_offsets(&topic).await.expect("end offsets");
    assert!(!ends.is_empty());
    assert_eq!(ends.iter().sum::<u64>(), 30, "every returned append is counted: {ends:?}");
    let mut consumer = log.subscribe(&unique("g"), &[&topic]).await.expect("subscribe");
    let got = collect(consumer.as_mut(), 30).await;
    for record in &got {
        assert!(record.offset < ends[record.partition as usize], "{record:?} is below its partition's end");
    }
    log.append(&topic, vec![record("key-0", "more")]).await.expect("append");
    let after = log.end_offsets(&topic).await.expect("end offsets");
    assert_eq!(after.iter().sum::<u64>(), 31);
}

pub async fn lag_counts_appended_but_uncommitted_records(log: Arc<dyn MessageLog>) {
    let topic = unique("lag");
    let group = unique("g");
    let mut consumer = log.subscribe(&group, &[&topic]).await.expect("subscribe");
    assert_eq!(log.lag(&group, &topic).await.expect("lag"), 0);
    log.append(&topic, (0..25).map(|i| record(&format!("k{i}"), "v")).collect()).await.expect("append");
    assert_eq!(log.lag(&group, &topic).await.expect("lag"), 25);

    let got = collect(consumer.as_mut(), 25).await;
    assert_eq!(log.lag(&group, &topic).await.expect("lag"), 25, "reading is not committing");
    // Commit one partition's records only.
    let partition = got[0].partition;
    let some: Vec<Consumed> = got.iter().filter(|r| r.partition == partition).cloned().collect();
    consumer.commit(&some).await.expect("commit");
    assert_eq!(log.lag(&group, &topic).await.expect("lag"), (25 - some.len()) as u64);
    consumer.commit(&got).await.expect("commit");
    assert_eq!(log.lag(&group, &topic).await.expect("lag"), 0);
    let other = unique("g");
    let _other_member = log.subscribe(&other, &[&topic]).await.expect("subscribe");
    assert_eq!(log.lag(&other, &topic).await.expect("lag"), 25, "another group's commits do not count");
}

/// A poll that finds nothing waits for an append made during its wait and returns it.
pub async fn poll_waits_for_an_append(log: Arc<dyn MessageLog>) {
    let topic = unique("wait");
    let mut consumer = log.subscribe(&unique("g"), &[&topic]).await.expect("subscribe");
    let appender = {
        let (log, topic) = (log.clone(), topic.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            log.append(&topic, vec![record("k", "late")]).await.expect("append");
        })
    };
    let started = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && started.elapsed() < PATIENCE {
        got = consumer.poll(10, Duration::from_secs(10)).await.expect("poll");
    }
    appender.await.expect("appender");
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["late"]);
    assert!(started.elapsed() < Duration::from_secs(10), "the poll returned on the append, not at its timeout");
}

/// A poll that finds nothing returns an empty batch once its wait is over.
pub async fn poll_returns_empty_after_its_wait(log: Arc<dyn MessageLog>) {
    let topic = unique("empty");
    let mut consumer = log.subscribe(&unique("g"), &[&topic]).await.expect("subscribe");
    let started = Instant::now();
    let got = consumer.poll(10, Duration::from_millis(200)).await.expect("poll");
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(100), "the poll waited");
    assert!(started.elapsed() < Duration::from_secs(10), "the poll gave up");
}

/// Req 5.3: a poll returns at most `max` records; the rest come with the next polls.
pub async fn poll_returns_at_most_max(log: Arc<dyn MessageLog>) {
    let topic = unique("max");
    log.append(&topic, (0..25).map(|i| record(&format!("k{i}"), format!("{i}"))).collect()).await.expect("append");
    let mut consumer = log.subscribe(&unique("g"), &[&topic]).await.expect("subscribe");
    let started = Instant::now();
    let mut all = Vec::new();
    while all.len() < 25 {
        assert!(started.elapsed() < PATIENCE);
        let got = consumer.poll(7, POLL_WAIT).await.expect("poll");
        assert!(got.len() <= 7);
        all.extend(got);
    }
    assert_no_duplicates(&all);
    assert_eq!(all.len(), 25);
}

/// Req 6.4: the readiness check passes on a working log.
pub async fn check_succeeds_on_a_working_log(log: Arc<dyn MessageLog>) {
    log.check().await.expect("check");
    log.append(&unique("check"), vec![record("k", "v")]).await.expect("append");
    log.check().await.expect("check");
}
