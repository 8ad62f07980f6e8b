//! The embedded log in a temporary directory: appending 100 message records (one call,
//! group-committed with one fdatasync) to a topic of 8 partitions.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use esh_backends::log::EmbeddedMessageLog;
use esh_backends::{MessageLog, Record};
use esh_benches::{one_way_message, quick};
use esh_common::records::{encode, MessageEnvelope};

fn log(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedMessageLog::open(dir.path(), 8).expect("open log");
    let records: Vec<Record> = (0..100)
        .map(|i| {
            let message = one_way_message("b1", &format!("m{i}"));
            Record {
                key: message.partition_key(),
                value: encode(MessageEnvelope::Message {
                    message,
                    idempotency: None,
                })
                .expect("encodable"),
            }
        })
        .collect();

    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(100));
    group.bench_function("append 100 records", |b| {
        b.iter_batched(
            || records.clone(),
            |batch| runtime.block_on(log.append("esh.messages.normal", batch)).expect("append"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! { name = benches; config = quick(); targets = log }
criterion_main!(benches);
