//! What the log carries: encoding and decoding `MessageEnvelope` records (one message,
//! and a broadcast of 1,000 recipients) and status events in the wire format (Avro,
//! Confluent framing), through the model conversions every producer and consumer uses.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use esh_benches::{broadcast, chat_message, quick};
use esh_common::records::{decode, encode, MessageEnvelope, StatusEvent, StatusRecord};
use esh_common::{Millis, Status};
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let message = MessageEnvelope::Message {
        message: chat_message("c1", "b1", "m1"),
        idempotency: None,
    };
    let message_bytes = encode(message.clone()).expect("encodable");
    let wide = MessageEnvelope::Broadcast {
        broadcast: broadcast("b1", 1000),
        idempotency: None,
    };
    let wide_bytes = encode(wide.clone()).expect("encodable");

    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    // The producer's clone is part of what an append costs (ingest keeps the message).
    group.bench_function("encode message", |b| {
        b.iter(|| encode(black_box(&message).clone()))
    });
    group.bench_function("decode message", |b| {
        b.iter(|| decode::<MessageEnvelope>(black_box(&message_bytes)))
    });
    group.bench_function("encode+decode message", |b| {
        b.iter(|| {
            decode::<MessageEnvelope>(&encode(black_box(&message).clone()).expect("encodable"))
        })
    });
    group.bench_function("encode broadcast 1000", |b| {
        b.iter(|| encode(black_box(&wide).clone()))
    });
    group.bench_function("decode broadcast 1000", |b| {
        b.iter(|| decode::<MessageEnvelope>(black_box(&wide_bytes)))
    });
    group.finish();

    // A receipt as the deliverer appends it and the router and store projection read it.
    let delivered = StatusRecord::Status(StatusEvent::of(
        &chat_message("c1", "b1", "m1"),
        Status::Delivered,
        Millis(1_700_000_000_000),
    ));
    let mut group = c.benchmark_group("status");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode+decode event", |b| {
        b.iter(|| decode::<StatusRecord>(&encode(black_box(&delivered).clone()).expect("encodable")))
    });
    group.finish();
}

criterion_group! { name = benches; config = quick(); targets = codec }
criterion_main!(benches);
