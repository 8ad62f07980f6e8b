//! Measuring Esh3ar: the load generator `esh-load` (src/bin/esh-load: drives a running
//! deployment through its public HTTP and WebSocket contract only) and the Criterion
//! micro-benchmarks of the hot paths (benches/: log codec, routing decision, store batch
//! insert and history page, log append). This library holds the benchmarks' fixtures.
//! BENCHMARKS.md at the repository root has the commands and the measured figures.

use esh_backends::testsuite::fixtures;
use esh_common::{ids, Broadcast, Message, Millis, Priority};
use std::time::Duration;

/// Criterion settings that keep each benchmark to a few seconds.
pub fn quick() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// Message content of a typical size (64 characters, like the load generator's default).
pub fn content() -> String {
    "x".repeat(64)
}

/// A chat message of `conversation` from `sender` to `recipient`, with a fresh id.
pub fn chat_message(conversation: &str, sender: &str, recipient: &str) -> Message {
    Message { content: content(), ..fixtures::chat(conversation, sender, recipient) }
}

/// A one-way message from `business` to `mobile`, with a fresh id.
pub fn one_way_message(business: &str, mobile: &str) -> Message {
    Message { content: content(), ..fixtures::one_way(business, mobile) }
}

/// A broadcast from `business` to mobiles `m0..m{n}`.
pub fn broadcast(business: &str, n: usize) -> Broadcast {
    Broadcast {
        id: ids::new_id(),
        sender_id: business.to_owned(),
        recipient_ids: (0..n).map(|i| format!("m{i}")).collect(),
        content: content(),
        media_ids: Vec::new(),
        priority: Priority::Normal,
        first_message_id: ids::reserve(n as u32).to_string(),
        created_at: Millis::now(),
    }
}

/// The content type of [`multipart`] bodies.
pub const MULTIPART_CONTENT_TYPE: &str = "multipart/form-data; boundary=esh-bench";

/// A `POST /v1/media` body: `bytes` as its one `file` part.
pub fn multipart(filename: &str, content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--esh-bench\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n--esh-bench--\r\n");
    body
}
