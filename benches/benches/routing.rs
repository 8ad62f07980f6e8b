//! The routing decision, as the router makes it for a batch: partition keys, the presence
//! lookup of the batch's recipients (EmbeddedPresence with 10,000 online users on 4 nodes)
//! and the grouping of the batch's messages by deliverer node.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use esh_backends::cache::EmbeddedPresence;
use esh_backends::{NodeEvent, NodeId, Presence};
use esh_benches::{chat_message, one_way_message, quick};
use esh_common::Message;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

const ONLINE: usize = 10_000;
const NODES: usize = 4;

/// Groups `messages` by the nodes holding their recipients, as router::deliver does.
fn by_node<'a>(messages: &[Message], located: &'a HashMap<String, Vec<NodeId>>) -> HashMap<&'a NodeId, Vec<NodeEvent>> {
    let mut groups: HashMap<&NodeId, Vec<NodeEvent>> = HashMap::new();
    for message in messages {
        for node in located.get(&message.recipient_id).into_iter().flatten() {
            groups.entry(node).or_default().push(NodeEvent::Message(message.clone()));
        }
    }
    groups
}

fn routing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let presence = EmbeddedPresence::new();
    runtime.block_on(async {
        for i in 0..ONLINE {
            let node: NodeId = format!("node-{}", i % NODES);
            presence.register(&format!("m{i}"), &node, &format!("conn-{i}"), Duration::from_secs(300)).await.expect("register");
        }
    });
    let batch: Vec<Message> = (0..100).map(|i| one_way_message("b1", &format!("m{}", i * 97 % ONLINE))).collect();
    let recipients: Vec<String> = batch.iter().map(|m| m.recipient_id.clone()).collect();
    let chat = chat_message("01JCONVERSATION000000000000", "b1", "m1");
    let one_way = one_way_message("b1", "m1");

    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("partition_key chat", |b| b.iter(|| black_box(&chat).partition_key()));
    group.bench_function("partition_key one-way", |b| b.iter(|| black_box(&one_way).partition_key()));
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("locate 100 of 10k online", |b| {
        b.iter(|| runtime.block_on(presence.locate(black_box(&recipients))).expect("locate"))
    });
    group.bench_function("route batch of 100 (locate + group by node)", |b| {
        b.iter(|| {
            let located = runtime.block_on(presence.locate(black_box(&recipients))).expect("locate");
            by_node(&batch, &located).len()
        })
    });
    group.finish();
}

criterion_group! { name = benches; config = quick(); targets = routing }
criterion_main!(benches);
