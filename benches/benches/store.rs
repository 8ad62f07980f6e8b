//! The embedded store (SQLite, WAL, synchronous=FULL) in a temporary directory: batch
//! insert of 100 chat messages (one group commit), and history reads — the newest page of
//! 50 of a conversation holding 10,000 messages, and a business's conversation list.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use esh_backends::store::EmbeddedMessageStore;
use esh_backends::MessageStore;
use esh_benches::{chat_message, quick};
use esh_common::{ids, Conversation, Millis, Permission, User, UserKind};
use std::hint::black_box;

const CONVERSATIONS: usize = 100;

fn user(id: &str, kind: UserKind) -> User {
    User {
        id: id.to_owned(),
        kind,
        display_name: id.to_owned(),
        created_at: Millis::now(),
        permissions: if kind == UserKind::Business { vec![Permission::Send, Permission::Chat] } else { Vec::new() },
        verified: true,
        notifications_enabled: true,
    }
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedMessageStore::open(&dir.path().join("store.db")).expect("open store");
    let conversations: Vec<Conversation> = runtime.block_on(async {
        store.create_user(&user("b1", UserKind::Business)).await.expect("business");
        let mut conversations = Vec::new();
        for i in 0..CONVERSATIONS {
            let mobile = format!("m{i}");
            store.create_user(&user(&mobile, UserKind::Mobile)).await.expect("mobile");
            conversations.push(store.conversation_for_pair("b1", &mobile, &ids::new_id(), Millis::now()).await.expect("conversation"));
        }
        // The conversation read below holds 10,000 messages.
        let deep = &conversations[0];
        for _ in 0..100 {
            let batch: Vec<_> = (0..100).map(|_| chat_message(&deep.id, "b1", &deep.mobile_id)).collect();
            store.insert_messages(&batch).await.expect("seed");
        }
        conversations
    });

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(100));
    let mut round = 0usize;
    group.bench_function("insert_messages batch of 100", |b| {
        b.iter_batched(
            || {
                round += 1;
                (0..100)
                    .map(|i| {
                        let conversation = &conversations[(round + i) % CONVERSATIONS];
                        chat_message(&conversation.id, "b1", &conversation.mobile_id)
                    })
                    .collect::<Vec<_>>()
            },
            |batch| runtime.block_on(store.insert_messages(&batch)).expect("insert"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    let deep = conversations[0].id.clone();
    group.bench_function("history newest page of 50 (10k in conversation)", |b| {
        b.iter(|| runtime.block_on(store.conversation_messages(black_box(&deep), None, 50)).expect("page"))
    });
    group.bench_function("conversation list page of 50 (100 conversations)", |b| {
        b.iter(|| runtime.block_on(store.conversations(black_box("b1"), None, 50)).expect("list"))
    });
    group.finish();
}

criterion_group! { name = benches; config = quick(); targets = store }
criterion_main!(benches);
