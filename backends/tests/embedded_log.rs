//! The embedded log: the conformance suite every `MessageLog` passes, then what only a
//! log with files has to show: restarts, crashes (a real kill -9 of a child process),
//! torn and corrupt files, retention, and concurrent appends.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use esh_backends::log::{EmbeddedLogOptions, EmbeddedMessageLog, LogClock, DEFAULT_UNCLAIMED_RETENTION};
use esh_backends::{BackendError, Consumed, LogConsumer, MessageLog, Record};
use tempfile::TempDir;

fn open(dir: &Path) -> Arc<dyn MessageLog> {
    Arc::new(EmbeddedMessageLog::open(dir, 4).expect("open"))
}

fn fresh() -> (TempDir, Arc<dyn MessageLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    (dir, log)
}

fn record(key: &str, value: impl Into<Vec<u8>>) -> Record {
    Record { key: key.to_owned(), value: value.into() }
}

fn text(r: &Consumed) -> String {
    String::from_utf8_lossy(&r.value).into_owned()
}

/// Polls until `count` records came, or panics after 10 s.
async fn collect(consumer: &mut dyn LogConsumer, count: usize) -> Vec<Consumed> {
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < count {
        assert!(started.elapsed() < Duration::from_secs(10), "only {} of {count} records arrived", out.len());
        out.extend(consumer.poll(count - out.len(), Duration::from_millis(100)).await.expect("poll"));
    }
    out
}

/// Everything a new group can read from `topic` (polls until a quiet 200 ms).
async fn read_all(log: &dyn MessageLog, group: &str, topic: &str) -> Vec<Consumed> {
    let mut consumer = log.subscribe(group, &[topic]).await.expect("subscribe");
    let mut out = Vec::new();
    loop {
        let got = consumer.poll(1000, Duration::from_millis(200)).await.expect("poll");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// The journal's segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("journal"))
        .expect("journal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|file| file.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// The newest journal segment (where appends go).
fn active_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().expect("a journal segment")
}

// ---- the conformance suite ----

/// A fresh log in a temporary directory (kept as long as the test runs).
async fn fresh_log() -> (TempDir, Arc<dyn MessageLog>) {
    fresh()
}

esh_backends::log_suite!(fresh_log());

// ---- durability and recovery ----

/// Req 4.6, 6.1: records and committed offsets survive closing and reopening the log.
#[tokio::test]
async fn reopen_keeps_appended_records_and_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "esh.messages.normal";
    {
        let log = open(dir.path());
        log.append(topic, (0..50).map(|i| record(&format!("c{}", i % 5), format!("{i}"))).collect()).await.unwrap();
        let mut consumer = log.subscribe("router", &[topic]).await.unwrap();
        let got = collect(consumer.as_mut(), 50).await;
        // Within each partition offsets follow append order, so this commits exactly 0..30.
        let below_30: Vec<Consumed> = got.iter().filter(|r| text(r).parse::<u32>().unwrap() < 30).cloned().collect();
        consumer.commit(&below_30).await.unwrap();
        assert_eq!(log.lag("router", topic).await.unwrap(), 20);
    }
    let log = open(dir.path());
    let everything = read_all(log.as_ref(), "auditor", topic).await;
    assert_eq!(everything.len(), 50, "every appended record is still there");
    assert_eq!(log.lag("router", topic).await.unwrap(), 20, "the commit survived");
    let mut consumer = log.subscribe("router", &[topic]).await.unwrap();
    let rest = collect(consumer.as_mut(), 20).await;
    let mut values: Vec<u32> = rest.iter().map(|r| text(r).parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (30..50).collect::<Vec<_>>());
    assert!(consumer.poll(10, Duration::from_millis(100)).await.unwrap().is_empty(), "committed ones stay committed");
    // Offsets continue where they were after the restart.
    log.append(topic, vec![record("c0", "after")]).await.unwrap();
    let next = collect(consumer.as_mut(), 1).await;
    let before = everything.iter().filter(|r| r.partition == next[0].partition).map(|r| r.offset).max().unwrap();
    assert_eq!(next[0].offset, before + 1);
}

/// The child half of the kill -9 test: appends from 4 tasks forever, printing each
/// acknowledged batch. Does nothing unless started by the parent.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("ESH_LOG_CRASH_DIR") else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let log = open(Path::new(&dir));
        let mut consumer = log.subscribe("router", &["crash"]).await.unwrap();
        let mut tasks = Vec::new();
        for task in 0..4 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for batch in 0.. {
                    let records = (0..10).map(|j| record(&format!("t{task}-k{}", j % 3), format!("{task}:{batch}:{j}"))).collect();
                    log.append("crash", records).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {task} {batch}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        // Also commit as it goes, so the commit log is being written at the kill too.
        loop {
            let got = consumer.poll(100, Duration::from_millis(10)).await.unwrap();
            if let Some(last) = got.iter().find(|r| text(r).ends_with(":0:0")) {
                consumer.commit(std::slice::from_ref(last)).await.unwrap();
                writeln!(std::io::stdout().lock(), "committed {} {}", last.partition, last.offset).unwrap();
            }
        }
    });
}

/// Req 4.6, 6.1 (ARCHITECTURE: "keeps every accepted message across a crash (kill -9)"):
/// a process killed while appending loses no acknowledged record, and the log reopens.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("ESH_LOG_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked: HashSet<(u32, u32)> = HashSet::new();
    let mut committed: Vec<(u32, u64)> = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    while acked.len() < 300 {
        assert!(started.elapsed() < Duration::from_secs(60), "the child appended too slowly");
        let Some(line) = lines.next() else { panic!("the child stopped early") };
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["acked", task, batch] => {
                acked.insert((task.parse().unwrap(), batch.parse().unwrap()));
            }
            ["committed", partition, offset] => committed.push((partition.parse().unwrap(), offset.parse().unwrap())),
            _ => {}
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-append
    child.wait().unwrap();
    drop(lines);

    let log = open(dir.path());
    let all = read_all(log.as_ref(), "auditor", "crash").await;
    let mut seen = HashSet::new();
    let mut per_key: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for r in &all {
        assert!(seen.insert((r.partition, r.offset)), "no record twice");
        let value = text(r);
        let parts: Vec<u32> = value.split(':').map(|p| p.parse().unwrap()).collect();
        per_key.entry(r.key.clone()).or_default().push((parts[1], parts[2]));
    }
    let values: HashSet<String> = all.iter().map(text).collect();
    for (task, batch) in &acked {
        for j in 0..10 {
            assert!(values.contains(&format!("{task}:{batch}:{j}")), "acknowledged record {task}:{batch}:{j} lost");
        }
    }
    for (key, sequence) in per_key {
        assert!(sequence.windows(2).all(|w| w[0] < w[1]), "order of {key} broken");
    }
    // The group's commits survived too: the router does not start from scratch.
    if let Some(max_committed) = committed.iter().map(|(_, o)| *o).max() {
        assert!(max_committed < all.len() as u64);
        let lag = log.lag("router", "crash").await.unwrap();
        assert!(lag < all.len() as u64, "lag {lag} counts committed records");
    }
    // And the log keeps working.
    log.append("crash", vec![record("t0-k0", "after")]).await.unwrap();
}

/// A torn write (garbage after the last record, as a crash mid-append leaves) is cut off
/// the journal on open; the records before it, of every topic, stay and new appends
/// continue after them.
#[tokio::test]
async fn a_torn_tail_is_cut_off_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.append("t", (0..10).map(|i| record("one-key", format!("{i}"))).collect()).await.unwrap();
        log.append("u", (0..5).map(|i| record(&format!("k{i}"), format!("u{i}"))).collect()).await.unwrap();
    }
    let journal = active_segment(dir.path());
    let size = fs::metadata(&journal).unwrap().len();
    let mut file = fs::OpenOptions::new().append(true).open(&journal).unwrap();
    file.write_all(&[0x2a, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
    drop(file);

    let log = open(dir.path());
    assert_eq!(fs::metadata(&journal).unwrap().len(), size, "the torn tail was truncated");
    log.append("t", vec![record("one-key", "10")]).await.unwrap();
    let all = read_all(log.as_ref(), "g", "t").await;
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), (0..=10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..=10).collect::<Vec<_>>());
    let mut other: Vec<String> = read_all(log.as_ref(), "g", "u").await.iter().map(text).collect();
    other.sort();
    assert_eq!(other, (0..5).map(|i| format!("u{i}")).collect::<Vec<_>>());
}

/// A record cut in the middle (the file ends inside it) is dropped; the earlier ones stay.
#[tokio::test]
async fn a_record_cut_mid_write_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..10 {
            log.append("t", vec![record("one-key", format!("value-{i}"))]).await.unwrap();
        }
    }
    let journal = active_segment(dir.path());
    let size = fs::metadata(&journal).unwrap().len();
    fs::OpenOptions::new().write(true).open(&journal).unwrap().set_len(size - 5).unwrap();

    let log = open(dir.path());
    let all = read_all(log.as_ref(), "g", "t").await;
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), (0..9).map(|i| format!("value-{i}")).collect::<Vec<_>>());
    log.append("t", vec![record("one-key", "again")]).await.unwrap();
    drop(log);
    let log = open(dir.path());
    let all = read_all(log.as_ref(), "g2", "t").await;
    assert_eq!(all.len(), 10);
    assert_eq!(all[9].offset, 9);
}

/// Copies the log directory `from` as it is on disk, which is what a crash leaves of it
/// (the page cache survives a killed process).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// The active segment is allocated ahead of its writes, so a sync need not also record a
/// new file length. After a crash the file still holds that space (zeros past the last
/// record): recovery takes the zeros for the end, cuts nothing, and appends go on after
/// the last record; a torn record written into that space is cut off.
#[tokio::test]
async fn space_allocated_ahead_of_the_writes_ends_the_journal_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (crashed, torn) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = open(dir.path());
    for i in 0..10 {
        log.append("t", vec![record("one-key", format!("value-{i}"))]).await.unwrap();
    }
    copy_dir(dir.path(), crashed.path());
    copy_dir(dir.path(), torn.path());
    drop(log);
    let journal = active_segment(crashed.path());
    let allocated = fs::metadata(&journal).unwrap().len();
    assert!(allocated >= EmbeddedLogOptions::default().preallocate_bytes, "space was allocated: {allocated} bytes");

    let log = open(crashed.path());
    assert_eq!(fs::metadata(&journal).unwrap().len(), allocated, "nothing was cut");
    log.append("t", vec![record("one-key", "value-10")]).await.unwrap();
    drop(log);
    let log = open(crashed.path());
    let all = read_all(log.as_ref(), "g", "t").await;
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), (0..=10).map(|i| format!("value-{i}")).collect::<Vec<_>>());
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..=10).collect::<Vec<_>>());

    // A clean stop cut the file to its records: where the ten records end.
    let records_end = fs::metadata(active_segment(dir.path())).unwrap().len();
    assert!(records_end < allocated);
    let journal = active_segment(torn.path());
    let file = fs::OpenOptions::new().write(true).open(&journal).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x2a, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3], records_end).unwrap();
    drop(file);
    let log = open(torn.path());
    assert_eq!(fs::metadata(&journal).unwrap().len(), records_end, "the torn record and the space after it were cut");
    let all = read_all(log.as_ref(), "g", "t").await;
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), (0..10).map(|i| format!("value-{i}")).collect::<Vec<_>>());
}

fn small_segments(partitions: u32) -> EmbeddedLogOptions {
    EmbeddedLogOptions { partitions, segment_bytes: 1024, tail_bytes: 512, ..EmbeddedLogOptions::default() }
}

/// Damage before the last segment is not a torn write: the log refuses to open with
/// `Corrupt` (and does not panic) rather than silently dropping later records.
#[tokio::test]
async fn corruption_in_an_older_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(1)).unwrap();
        for i in 0..40 {
            log.append("t", vec![record("k", vec![i as u8; 100])]).await.unwrap();
        }
    }
    let files = segments(dir.path());
    assert!(files.len() > 2, "segments were rolled: {files:?}");
    let mut bytes = fs::read(&files[0]).unwrap();
    // The last byte of the segment's last record: its checksum no longer matches.
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&files[0], bytes).unwrap();
    match EmbeddedMessageLog::open_with(dir.path(), small_segments(1)) {
        Err(BackendError::Corrupt(reason)) => assert!(reason.contains("checksum"), "{reason}"),
        Err(other) => panic!("expected corrupt, got {other}"),
        Ok(_) => panic!("a damaged older segment must not open silently"),
    }
}

/// Hostile bytes in journal segments never panic: the log opens (cutting what is
/// not a valid record) or reports `Corrupt`.
#[tokio::test]
async fn hostile_bytes_on_disk_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            log.append("t", (0..20).map(|i| record(&format!("k{i}"), vec![7; i])).collect()).await.unwrap();
            let mut consumer = log.subscribe("g", &["t"]).await.unwrap();
            let got = collect(consumer.as_mut(), 20).await;
            consumer.commit(&got[..5]).await.unwrap();
        }
        for victim in segments(dir.path()) {
            let mut bytes = fs::read(&victim).unwrap();
            match round % 4 {
                // Flip random bytes.
                0 if !bytes.is_empty() => {
                    for _ in 0..3 {
                        let i = (random() as usize) % bytes.len();
                        bytes[i] = random() as u8;
                    }
                }
                // Replace with noise.
                1 => bytes = (0..(random() % 300)).map(|_| random() as u8).collect(),
                // Huge declared lengths.
                2 => bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0x03, 0, 0, 0, 0]),
                // Cut anywhere.
                _ => {
                    let len = bytes.len() as u64;
                    bytes.truncate((random() % (len + 1)) as usize);
                }
            }
            fs::write(&victim, bytes).unwrap();
        }
        match EmbeddedMessageLog::open(dir.path(), 4) {
            Ok(log) => {
                let all = read_all(&log, "reader", "t").await;
                assert!(all.len() <= 20);
                log.append("t", vec![record("k", "still works")]).await.unwrap();
            }
            Err(BackendError::Corrupt(_)) => {}
            Err(other) => panic!("round {round}: unexpected error {other}"),
        }
    }
}

/// Retention: once every group that knows a topic has committed past a journal segment,
/// the segment file is deleted, so the disk does not grow forever.
#[tokio::test]
async fn retention_deletes_fully_consumed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(2)).unwrap();
    let mut consumer = log.subscribe("router", &["t"]).await.unwrap();
    for i in 0..100 {
        log.append("t", vec![record(&format!("k{}", i % 10), vec![b'x'; 100])]).await.unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before > 8, "small segments were rolled: {before}");
    let got = collect(consumer.as_mut(), 100).await;
    consumer.commit(&got).await.unwrap();
    // The writer handles requests in order: once this append is durable, the commit
    // queued before it is too, and retention has run.
    log.append("other", vec![record("k", "sync point")]).await.unwrap();
    let after = segments(dir.path());
    assert_eq!(after.len(), 1, "only the active segment is left: {after:?}");
    assert_eq!(log.lag("router", "t").await.unwrap(), 0);
    // Reopening works from the remaining segment and keeps offsets going.
    let ends = log.end_offsets("t").await.unwrap();
    drop(consumer);
    drop(log);
    let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(2)).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), ends);
    assert_eq!(log.lag("router", "t").await.unwrap(), 0);
    log.append("t", vec![record("k0", "next")]).await.unwrap();
    let mut consumer = log.subscribe("router", &["t"]).await.unwrap();
    let next = collect(consumer.as_mut(), 1).await;
    assert_eq!(text(&next[0]), "next");
    assert_eq!(next[0].offset, ends[next[0].partition as usize]);
}

/// Retention never deletes what a group that knows the topic has not committed, even a
/// group that is not running (it only subscribed once, in an earlier run).
#[tokio::test]
async fn retention_keeps_what_a_lagging_group_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(1)).unwrap();
        drop(log.subscribe("notifier", &["t"]).await.unwrap());
    }
    let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(1)).unwrap();
    let mut fast = log.subscribe("router", &["t"]).await.unwrap();
    for i in 0..60 {
        log.append("t", vec![record("k", format!("{i:0100}"))]).await.unwrap();
    }
    let got = collect(fast.as_mut(), 60).await;
    fast.commit(&got).await.unwrap();
    let slow = read_all(&log, "notifier", "t").await;
    assert_eq!(slow.len(), 60, "the lagging group still gets everything");
    assert_eq!(log.lag("notifier", "t").await.unwrap(), 60);
}

/// Records older than the in-memory tail are read back from the segment files, in order
/// and across segment boundaries.
#[tokio::test]
async fn old_records_are_read_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedLogOptions { partitions: 1, segment_bytes: 8192, tail_bytes: 0, ..EmbeddedLogOptions::default() };
    let log = EmbeddedMessageLog::open_with(dir.path(), options).unwrap();
    for chunk in 0..10 {
        log.append("t", (0..100).map(|i| record("k", format!("{}", chunk * 100 + i))).collect()).await.unwrap();
    }
    assert!(segments(dir.path()).len() > 3);
    let mut consumer = log.subscribe("g", &["t"]).await.unwrap();
    let mut all = Vec::new();
    while all.len() < 1000 {
        let got = consumer.poll(37, Duration::from_millis(100)).await.unwrap();
        assert!(!got.is_empty() && got.len() <= 37);
        all.extend(got);
    }
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..1000).collect::<Vec<_>>());
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), (0..1000).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// Many tasks appending at once: every record lands exactly once, each task's records in
/// its order (group commit must not lose, duplicate or reorder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_land_exactly_once() {
    let (_dir, log) = fresh();
    let mut tasks = Vec::new();
    for task in 0..32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for batch in 0..25 {
                let records = (0..4).map(|j| record(&format!("task-{task}"), format!("{task}:{}", batch * 4 + j))).collect();
                log.append("busy", records).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let all = read_all(log.as_ref(), "g", "busy").await;
    assert_eq!(all.len(), 32 * 100);
    let mut next: HashMap<String, u32> = HashMap::new();
    for r in &all {
        let value = text(r);
        let (task, n) = value.split_once(':').unwrap();
        let expected = next.entry(task.to_owned()).or_insert(0);
        assert_eq!(n.parse::<u32>().unwrap(), *expected, "task {task} out of order");
        *expected += 1;
    }
}

/// Partitioning is stable: a topic keeps the partition count it was created with, so a
/// key stays in its partition even when the configured count changes.
#[tokio::test]
async fn topics_keep_their_partition_count_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let log = EmbeddedMessageLog::open(dir.path(), 3).unwrap();
        log.append("t", vec![record("conversation-42", "a")]).await.unwrap();
        read_all(&log, "g1", "t").await
    };
    let log = EmbeddedMessageLog::open(dir.path(), 16).unwrap();
    log.append("t", vec![record("conversation-42", "b")]).await.unwrap();
    let all = read_all(&log, "g2", "t").await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.partition == first[0].partition && r.partition < 3));
    assert_eq!(log.end_offsets("t").await.unwrap().len(), 3);
}

/// One process at a time: a second open of a directory in use is refused; after the first
/// log is dropped (its writer stopped) the directory opens again.
#[tokio::test]
async fn a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedMessageLog::open(dir.path(), 2).unwrap();
    log.append("t", vec![record("k", "v")]).await.unwrap();
    assert!(matches!(EmbeddedMessageLog::open(dir.path(), 2), Err(BackendError::Unavailable(_))));
    drop(log);
    let log = EmbeddedMessageLog::open(dir.path(), 2).unwrap();
    log.check().await.unwrap();
}

/// Topic names follow Kafka's rules; names that could escape a directory or take the
/// log's reserved `__` prefix are refused.
#[tokio::test]
async fn unsafe_topic_names_are_refused() {
    let (dir, log) = fresh();
    for name in ["", "..", "../escape", "a/b", "__consumer_offsets", "sp ace"] {
        assert!(log.append(name, vec![record("k", "v")]).await.is_err(), "{name:?} accepted");
        assert!(log.subscribe("g", &[name]).await.is_err(), "{name:?} accepted");
    }
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

/// Lag is answered from memory: zero for a topic never written, the backlog of a group
/// never seen (everything retained), and it follows commits.
#[tokio::test]
async fn lag_of_unknown_topics_and_groups() {
    let (_dir, log) = fresh();
    assert_eq!(log.lag("router", "never-written").await.unwrap(), 0);
    log.append("t", (0..7).map(|i| record(&format!("k{i}"), "v")).collect()).await.unwrap();
    assert_eq!(log.lag("never-subscribed", "t").await.unwrap(), 7);
}

/// A member leaving hands its partitions to the rest of the group, which picks up from
/// the group's committed offsets (Req 6.1).
#[tokio::test]
async fn a_leaving_member_hands_its_partitions_over() {
    let (_dir, log) = fresh();
    let mut a = log.subscribe("g", &["t"]).await.unwrap();
    let mut b = log.subscribe("g", &["t"]).await.unwrap();
    log.append("t", (0..40).map(|i| record(&format!("k{i}"), format!("{i}"))).collect()).await.unwrap();
    let from_a = a.poll(100, Duration::from_millis(100)).await.unwrap();
    let from_b = b.poll(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(from_a.len() + from_b.len(), 40);
    a.commit(&from_a).await.unwrap();
    drop(b); // without committing
    let again = collect(a.as_mut(), from_b.len()).await;
    let again_values: HashSet<String> = again.iter().map(text).collect();
    assert_eq!(again_values, from_b.iter().map(text).collect::<HashSet<_>>());
    assert!(a.poll(100, Duration::from_millis(100)).await.unwrap().is_empty());
}

/// A waiting member is woken by a rebalance that gives it partitions with a backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_member_is_woken_by_a_rebalance() {
    let (_dir, log) = fresh();
    let mut a = log.subscribe("g", &["t"]).await.unwrap();
    let mut b = log.subscribe("g", &["t"]).await.unwrap();
    log.append("t", (0..40).map(|i| record(&format!("k{i}"), format!("{i}"))).collect()).await.unwrap();
    let from_b = b.poll(100, Duration::from_millis(100)).await.unwrap();
    let from_a = a.poll(100, Duration::from_millis(100)).await.unwrap();
    a.commit(&from_a).await.unwrap();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let got = a.poll(100, Duration::from_secs(10)).await.unwrap();
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(b);
    let (got, waited) = waiting.await.unwrap();
    assert_eq!(got.len(), from_b.len());
    assert!(waited < Duration::from_secs(5));
}

/// Stages test timeouts with a paused clock (`start_paused`): waiting for the log's sync
/// must not let that clock jump to the next timer (here a 5 s ack timeout).
#[tokio::test(start_paused = true)]
async fn a_paused_clock_holds_still_while_the_log_syncs() {
    let (_dir, log) = fresh();
    let started = tokio::time::Instant::now();
    let timeout = tokio::spawn(tokio::time::sleep(Duration::from_secs(5)));
    let mut consumer = log.subscribe("g", &["t"]).await.unwrap();
    for i in 0..20 {
        log.append("t", vec![record("k", format!("{i}"))]).await.unwrap();
    }
    let got = consumer.poll(100, Duration::ZERO).await.unwrap();
    consumer.commit(&got).await.unwrap();
    assert_eq!(got.len(), 20);
    assert!(started.elapsed() < Duration::from_secs(5), "the clock jumped {:?}", started.elapsed());
    assert!(!timeout.is_finished());
}

// ---- the journal ----

/// Req 4.6, 6.1: records of several topics and partitions, interleaved in the one journal,
/// are all back after a reopen (the partition indexes rebuilt from the journal, the tail
/// empty so every read goes to the files), in order per partition with their offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_rebuilds_partition_indexes_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let options = || EmbeddedLogOptions { partitions: 4, segment_bytes: 1024, tail_bytes: 0, ..EmbeddedLogOptions::default() };
    let topics = ["a", "b", "c"];
    let before: Vec<Vec<Consumed>> = {
        let log = Arc::new(EmbeddedMessageLog::open_with(dir.path(), options()).unwrap());
        let mut tasks = Vec::new();
        for (t, topic) in topics.into_iter().enumerate() {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..60 {
                    let records = vec![record(&format!("k{}", i % 7), format!("{t}:{i}"))];
                    log.append(topic, records).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut before = Vec::new();
        for topic in topics {
            before.push(read_all(log.as_ref(), "first-reader", topic).await);
        }
        before
    };
    assert!(segments(dir.path()).len() > 2, "the journal rolled");
    let mut files: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["__lock", "__record_format", "journal"], "only the journal, the lock and the format files");

    let log = EmbeddedMessageLog::open_with(dir.path(), options()).unwrap();
    for (t, topic) in topics.into_iter().enumerate() {
        let after = read_all(&log, "second-reader", topic).await;
        assert_eq!(after.len(), 60, "every record of {topic} is back");
        let mut per_partition: HashMap<u32, Vec<&Consumed>> = HashMap::new();
        for r in &after {
            per_partition.entry(r.partition).or_default().push(r);
        }
        for (partition, records) in per_partition {
            let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (0..records.len() as u64).collect::<Vec<_>>(), "{topic}/{partition}: offsets unchanged");
            let sequence: Vec<u32> =
                records.iter().map(|r| text(r).split_once(':').unwrap().1.parse().unwrap()).collect();
            assert!(sequence.windows(2).all(|w| w[0] < w[1]), "{topic}/{partition}: append order kept");
        }
        let key = |r: &Consumed| (r.partition, r.offset, r.key.clone(), r.value.clone());
        let mut expected: Vec<_> = before[t].iter().map(key).collect();
        let mut got: Vec<_> = after.iter().map(key).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{topic}: the same records at the same offsets");
    }
}

/// Retention deletes a journal segment only once every group that knows its topics has
/// committed past all its records; the committed offsets survive the deletion and a
/// reopen.
#[tokio::test]
async fn retention_waits_for_every_group_and_commits_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(1)).unwrap();
    let mut router = log.subscribe("router", &["t"]).await.unwrap();
    let mut notifier = log.subscribe("notifier", &["t"]).await.unwrap();
    for i in 0..60 {
        log.append("t", vec![record("k", format!("{i:0100}"))]).await.unwrap();
    }
    let rolled = segments(dir.path());
    assert!(rolled.len() > 4, "small segments were rolled: {rolled:?}");

    let all = collect(router.as_mut(), 60).await;
    router.commit(&all).await.unwrap();
    log.append("sync", vec![record("k", "point")]).await.unwrap();
    assert!(segments(dir.path()).starts_with(&rolled), "the notifier has committed nothing: every segment stays");

    let got = collect(notifier.as_mut(), 60).await;
    notifier.commit(&got[..30]).await.unwrap();
    log.append("sync", vec![record("k", "point")]).await.unwrap();
    let left = segments(dir.path());
    let deleted = rolled.iter().take_while(|f| !left.contains(f)).count();
    assert!(deleted > 0 && deleted < rolled.len() - 1, "only segments below offset 30 go: {left:?}");
    assert!(rolled[deleted..].iter().all(|f| left.contains(f)), "deleted from the oldest on: {left:?}");
    let kept = read_all(&log, "late", "t").await;
    assert!(kept.first().is_some_and(|r| r.offset <= 30), "offset 30 on is kept: {:?}", kept.first().map(|r| r.offset));
    assert_eq!(kept.last().map(|r| r.offset), Some(59));

    drop((router, notifier, log));
    let log = EmbeddedMessageLog::open_with(dir.path(), small_segments(1)).unwrap();
    assert_eq!(log.lag("router", "t").await.unwrap(), 0, "the router's commit survived");
    assert_eq!(log.lag("notifier", "t").await.unwrap(), 30, "the notifier's commit survived");
    let mut notifier = log.subscribe("notifier", &["t"]).await.unwrap();
    let rest = collect(notifier.as_mut(), 30).await;
    assert_eq!(rest.iter().map(|r| r.offset).collect::<Vec<_>>(), (30..60).collect::<Vec<_>>());
    assert!(notifier.poll(10, Duration::from_millis(100)).await.unwrap().is_empty());
}

/// A commit returns before it is durable; one lost in a crash before the next group
/// commit (the journal ends where the last append's group commit left it) means
/// redelivery, never a lost record (at-least-once, Req 6.1).
#[tokio::test]
async fn a_commit_lost_in_a_crash_only_redelivers() {
    let dir = tempfile::tempdir().unwrap();
    let (durable_size, committed_first) = {
        // Extended write by write, so the file's length is where the written frames end.
        let options = EmbeddedLogOptions { partitions: 4, preallocate_bytes: 0, ..EmbeddedLogOptions::default() };
        let log: Arc<dyn MessageLog> = Arc::new(EmbeddedMessageLog::open_with(dir.path(), options).unwrap());
        let mut consumer = log.subscribe("router", &["t"]).await.unwrap();
        log.append("t", (0..20).map(|i| record(&format!("k{i}"), format!("{i}"))).collect()).await.unwrap();
        let first = collect(consumer.as_mut(), 20).await;
        consumer.commit(&first[..5]).await.unwrap();
        log.append("t", (20..40).map(|i| record(&format!("k{i}"), format!("{i}"))).collect()).await.unwrap();
        let size = fs::metadata(active_segment(dir.path())).unwrap().len();
        let second = collect(consumer.as_mut(), 20).await;
        consumer.commit(&first).await.unwrap();
        consumer.commit(&second).await.unwrap();
        assert_eq!(log.lag("router", "t").await.unwrap(), 0, "commits apply in memory at once");
        (size, first[..5].to_vec())
    };
    let journal = active_segment(dir.path());
    assert!(fs::metadata(&journal).unwrap().len() > durable_size, "the commits were written after the appends");
    // The crash: nothing after the last append's group commit reached the disk.
    fs::OpenOptions::new().write(true).open(&journal).unwrap().set_len(durable_size).unwrap();

    let log = open(dir.path());
    let everything = read_all(log.as_ref(), "auditor", "t").await;
    assert_eq!(everything.len(), 40, "no appended record is lost");
    // The first commit rode on the second append's group commit; the later ones are lost.
    let survived: u64 = {
        let mut per_partition: HashMap<u32, u64> = HashMap::new();
        for r in &committed_first {
            let next = per_partition.entry(r.partition).or_insert(0);
            *next = (*next).max(r.offset + 1);
        }
        per_partition.values().sum()
    };
    assert_eq!(log.lag("router", "t").await.unwrap(), 40 - survived);
    let redelivered = read_all(log.as_ref(), "router", "t").await;
    assert_eq!(redelivered.len() as u64, 40 - survived, "everything past the durable commit comes again");
    let again: HashSet<(u32, u64)> = redelivered.iter().map(|r| (r.partition, r.offset)).collect();
    for r in &everything {
        let covered = committed_first.iter().any(|c| c.partition == r.partition && c.offset >= r.offset);
        assert!(covered || again.contains(&(r.partition, r.offset)), "record {} neither committed nor redelivered", text(r));
    }
}

/// A directory in the per-partition layout of earlier versions is refused, not opened as
/// an empty log (its records would be silently dropped).
#[tokio::test]
async fn the_layout_of_earlier_versions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("__consumer_offsets")).unwrap();
    fs::create_dir_all(dir.path().join("t/0")).unwrap();
    match EmbeddedMessageLog::open(dir.path(), 4) {
        Err(BackendError::Corrupt(reason)) => assert!(reason.contains("earlier"), "{reason}"),
        Err(other) => panic!("expected corrupt, got {other}"),
        Ok(_) => panic!("an earlier layout must not open as an empty log"),
    }
}

/// A journal written before records were Avro (no `__record_format` beside it) holds
/// JSON records: refused at start-up, not read as garbage.
#[tokio::test]
async fn a_journal_of_json_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedMessageLog::open(dir.path(), 4).unwrap());
    let marker = dir.path().join("__record_format");
    assert_eq!(
        fs::read_to_string(&marker).unwrap(),
        esh_schemas::codec::WIRE_FORMAT
    );
    drop(EmbeddedMessageLog::open(dir.path(), 4).expect("a log of this format reopens"));
    fs::remove_file(&marker).unwrap();
    match EmbeddedMessageLog::open(dir.path(), 4) {
        Err(BackendError::Corrupt(reason)) => assert!(reason.contains("JSON records"), "{reason}"),
        Err(other) => panic!("expected corrupt, got {other}"),
        Ok(_) => panic!("a journal of JSON records must not open"),
    }
    fs::write(&marker, "json").unwrap();
    assert!(matches!(
        EmbeddedMessageLog::open(dir.path(), 4),
        Err(BackendError::Corrupt(_))
    ));
}

// ---- retention of topics no group reads ----

/// A topic nothing in the process consumes.
const UNREAD: &str = "esh.dead-letters.v1";
const MINUTE: Duration = Duration::from_secs(60);

/// A wall clock the test moves by hand, so that hours pass without waiting. It starts in
/// 2001, far from the real time: a retention that went by the system clock or by the
/// files' modification times would fail these tests.
#[derive(Clone)]
struct HandClock(Arc<AtomicU64>);

impl HandClock {
    fn new() -> HandClock {
        HandClock(Arc::new(AtomicU64::new(1_000_000_000)))
    }

    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    fn log_clock(&self) -> LogClock {
        let seconds = self.0.clone();
        LogClock::from_fn(move || UNIX_EPOCH + Duration::from_secs(seconds.load(Ordering::SeqCst)))
    }
}

/// Small segments of one partition; records of topics no group knows kept for an hour.
fn hour_retention(clock: &HandClock) -> EmbeddedLogOptions {
    EmbeddedLogOptions { unclaimed_retention: 60 * MINUTE, clock: clock.log_clock(), ..small_segments(1) }
}

/// Returns once everything asked of the log before is durable and retention has run on
/// it: a group subscribing to a new topic is a durable commit (the writer handles requests
/// in order), and it adds no record.
async fn settle(log: &dyn MessageLog) {
    static ROUND: AtomicU64 = AtomicU64::new(0);
    let topic = format!("settle-{}", ROUND.fetch_add(1, Ordering::SeqCst));
    drop(log.subscribe("settle", &[topic.as_str()]).await.expect("settle"));
}

/// Appends `count` records of 100 bytes to `t` (several small segments' worth).
async fn fill(log: &dyn MessageLog, count: usize) {
    for i in 0..count {
        log.append("t", vec![record("k", format!("{i:0100}"))]).await.expect("append");
    }
}

/// Records of `topic` still stored, counted without making the topic known to a group.
async fn stored(log: &dyn MessageLog, topic: &str) -> u64 {
    log.lag("nobody-reads-this", topic).await.expect("lag")
}

/// The default keeps unread records for seven days, Kafka's default `retention.ms`.
#[test]
fn unread_records_are_kept_a_week_by_default() {
    assert_eq!(DEFAULT_UNCLAIMED_RETENTION, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(EmbeddedLogOptions::default().unclaimed_retention, DEFAULT_UNCLAIMED_RETENTION);
}

/// A segment holding records of a topic no group reads is kept until it was closed the
/// retention time ago, then deleted with the consumed segments behind it: the first dead
/// letter no longer holds back every later segment (the disk does not fill).
#[tokio::test]
async fn unread_records_go_after_the_retention_time_and_hold_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = HandClock::new();
    let log = EmbeddedMessageLog::open_with(dir.path(), hour_retention(&clock)).unwrap();
    let mut router = log.subscribe("router", &["t"]).await.unwrap();
    log.append(UNREAD, vec![record("k", "first dead letter")]).await.unwrap();
    let first_home = active_segment(dir.path());
    fill(&log, 20).await;
    clock.advance(30 * MINUTE);
    log.append(UNREAD, vec![record("k", "second dead letter")]).await.unwrap();
    let second_home = active_segment(dir.path());
    fill(&log, 20).await;
    let got = collect(router.as_mut(), 40).await;
    router.commit(&got).await.unwrap();
    settle(&log).await;
    let rolled = segments(dir.path());
    let second_at = rolled.iter().position(|f| *f == second_home).expect("the second dead letter's segment");
    assert!(rolled[0] == first_home && second_at > 2, "dead letters apart, t in between: {rolled:?}");
    assert_ne!(second_home, *rolled.last().unwrap(), "the second dead letter's segment was closed");

    clock.advance(29 * MINUTE);
    log.append(UNREAD, vec![record("k", "third dead letter")]).await.unwrap();
    assert!(segments(dir.path()).starts_with(&rolled), "59 minutes after its close the first segment stays");
    assert_eq!(stored(&log, UNREAD).await, 3);

    // An append, not a commit, is what runs retention once the time has come.
    clock.advance(2 * MINUTE);
    log.append(UNREAD, vec![record("k", "fourth dead letter")]).await.unwrap();
    let left = segments(dir.path());
    let gone = rolled[..second_at].iter().all(|f| !left.contains(f));
    assert!(gone, "the first dead letter and the t records behind it went: {left:?}");
    assert!(rolled[second_at..].iter().all(|f| left.contains(f)), "the second dead letter is 31 minutes old: {left:?}");
    assert_eq!(stored(&log, UNREAD).await, 3);
    assert_eq!(log.end_offsets(UNREAD).await.unwrap(), [4], "offsets go on");
    assert_eq!(log.lag("router", "t").await.unwrap(), 0);

    clock.advance(30 * MINUTE);
    settle(&log).await;
    let left = segments(dir.path());
    assert!(!left.contains(&second_home), "91 minutes after its close the second one went: {left:?}");
    assert!(stored(&log, UNREAD).await <= 2, "only dead letters of segments closed under an hour ago are left");
}

/// A topic some group knows keeps everything that group has not committed, however old,
/// even next to expired unread records; once it commits, both go.
#[tokio::test]
async fn a_known_topic_is_never_deleted_past_its_commits_however_old() {
    let dir = tempfile::tempdir().unwrap();
    let clock = HandClock::new();
    let log = EmbeddedMessageLog::open_with(dir.path(), hour_retention(&clock)).unwrap();
    let mut router = log.subscribe("router", &["t"]).await.unwrap();
    drop(log.subscribe("notifier", &["t"]).await.unwrap());
    log.append(UNREAD, vec![record("k", "dead letter")]).await.unwrap();
    fill(&log, 30).await;
    let got = collect(router.as_mut(), 30).await;
    router.commit(&got).await.unwrap();
    settle(&log).await;
    let rolled = segments(dir.path());
    assert!(rolled.len() > 3, "small segments were rolled: {rolled:?}");

    clock.advance(30 * 24 * 60 * MINUTE);
    log.append(UNREAD, vec![record("k", "a month later")]).await.unwrap();
    settle(&log).await;
    assert!(segments(dir.path()).starts_with(&rolled), "the notifier committed nothing: every segment stays");
    let mut notifier = log.subscribe("notifier", &["t"]).await.unwrap();
    let backlog = collect(notifier.as_mut(), 30).await;
    assert_eq!(backlog.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..30).collect::<Vec<_>>());

    notifier.commit(&backlog).await.unwrap();
    settle(&log).await;
    let left = segments(dir.path());
    assert!(rolled[..rolled.len() - 1].iter().all(|f| !left.contains(f)), "committed and expired: {left:?}");
    assert_eq!(stored(&log, "t").await, 0);
}

/// A group that subscribes to a topic before its records expire keeps them from then on:
/// the topic is known, and what is known is kept until committed.
#[tokio::test]
async fn subscribing_to_an_unread_topic_in_time_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = HandClock::new();
    let log = EmbeddedMessageLog::open_with(dir.path(), hour_retention(&clock)).unwrap();
    log.append(UNREAD, vec![record("k", "dead letter")]).await.unwrap();
    fill(&log, 20).await;
    let mut reader = log.subscribe("dead-letter-reader", &[UNREAD]).await.unwrap();
    let rolled = segments(dir.path());
    clock.advance(24 * 60 * MINUTE);
    settle(&log).await;
    fill(&log, 1).await;
    assert!(segments(dir.path()).starts_with(&rolled), "the reader has not committed the dead letter");
    let got = collect(reader.as_mut(), 1).await;
    assert_eq!((got[0].offset, text(&got[0]).as_str()), (0, "dead letter"));
}

/// The close time retention counts from is in the journal: after a reopen a segment goes
/// an hour after it was closed (not an hour after the reopen, nor by the file's time), and
/// records and committed offsets survive both the reopen and the deletion.
#[tokio::test]
async fn close_times_and_commits_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = HandClock::new();
    let (rolled, ends) = {
        let log = EmbeddedMessageLog::open_with(dir.path(), hour_retention(&clock)).unwrap();
        let mut router = log.subscribe("router", &["t"]).await.unwrap();
        log.append(UNREAD, vec![record("k", "dead letter")]).await.unwrap();
        fill(&log, 20).await;
        let got = collect(router.as_mut(), 15).await;
        router.commit(&got).await.unwrap();
        settle(&log).await;
        (segments(dir.path()), log.end_offsets("t").await.unwrap())
    };
    assert!(rolled.len() > 2, "small segments were rolled: {rolled:?}");

    clock.advance(59 * MINUTE);
    let log = EmbeddedMessageLog::open_with(dir.path(), hour_retention(&clock)).unwrap();
    assert_eq!(segments(dir.path()), rolled, "59 minutes after the close nothing went");
    assert_eq!(stored(&log, UNREAD).await, 1);
    assert_eq!(log.lag("router", "t").await.unwrap(), 5, "the router's commit survived");

    clock.advance(2 * MINUTE);
    settle(&log).await;
    let left = segments(dir.path());
    assert!(!left.contains(&rolled[0]), "61 minutes after its close the dead letter's segment went: {left:?}");
    assert!(left.len() < rolled.len() && left.len() > 1, "the router's 5 uncommitted records are kept: {left:?}");
    assert_eq!(stored(&log, UNREAD).await, 0);

    drop(log);
    let log = EmbeddedMessageLog::open_with(dir.path(), hour_retention(&clock)).unwrap();
    assert_eq!(log.end_offsets("t").await.unwrap(), ends);
    assert_eq!(log.end_offsets(UNREAD).await.unwrap(), [1]);
    assert_eq!(log.lag("router", "t").await.unwrap(), 5);
    let mut router = log.subscribe("router", &["t"]).await.unwrap();
    let rest = collect(router.as_mut(), 5).await;
    assert_eq!(rest.iter().map(|r| r.offset).collect::<Vec<_>>(), (15..20).collect::<Vec<_>>());
    assert_eq!(text(&rest[0]), format!("{:0100}", 15));
}

/// With a group wait, while appends of several callers come at once, an append that comes
/// while the writer waits joins the group in hand: after 50 concurrent appends (some of
/// which shared a group), two appends 50 ms apart make one sync under a 1 s wait, and two
/// syncs with none. All are durable when answered either way.
#[tokio::test]
async fn appends_within_the_group_wait_share_one_sync() {
    for (wait, syncs) in [(Duration::from_secs(1), 1), (Duration::ZERO, 2)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EmbeddedLogOptions { partitions: 1, group_wait: wait, ..EmbeddedLogOptions::default() };
        let log = Arc::new(EmbeddedMessageLog::open_with(dir.path(), options).expect("open"));
        log.append("t", vec![record("k", "topic made")]).await.expect("append");
        let before = log.syncs();
        let concurrent = (0..50).map(|i| log.append("t", vec![record("k", format!("concurrent {i}"))]));
        for appended in futures::future::join_all(concurrent).await {
            appended.expect("append");
        }
        assert!(log.syncs() - before < 50, "some of 50 concurrent appends shared a group");
        let before = log.syncs();
        let first = tokio::spawn({
            let log = log.clone();
            async move { log.append("t", vec![record("k", "first")]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append("t", vec![record("k", "second")]).await.expect("append");
        first.await.expect("join").expect("append");
        assert_eq!(log.syncs() - before, syncs, "group wait {wait:?}");
        let read: Vec<String> = read_all(log.as_ref(), "g", "t").await.iter().map(text).collect();
        assert_eq!(read.len(), 53);
        assert_eq!(read[51..], ["first", "second"]);
    }
}

/// A lone caller, whose next append comes only after its answer, never waits for others:
/// under a 10 s group wait, five appends one after the other each sync at once.
#[tokio::test]
async fn a_lone_caller_never_waits_for_a_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedLogOptions { group_wait: Duration::from_secs(10), ..EmbeddedLogOptions::default() };
    let log = EmbeddedMessageLog::open_with(dir.path(), options).expect("open");
    let started = Instant::now();
    for i in 0..5 {
        log.append("t", vec![record("k", format!("{i}"))]).await.expect("append");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "an append waited: {:?}", started.elapsed());
}
