//! Durability of the embedded default against kill -9 (ARCHITECTURE.md "it keeps every
//! accepted message across a crash"): the real `esh` binary is killed while senders are
//! busy, restarted on the same data directory, and every `202` must still be there.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::durability::{collect, setup_users, start_senders, verify_nothing_lost, SENDERS};
use common::{data_dir, Process};

/// Req 4.6, API.md "Nothing that was accepted (2xx) is ever lost": SIGKILL during
/// concurrent sends; after a restart every accepted message is readable, arrives on the
/// recipient's socket, and no content exists under two ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_message_survives_kill_9() {
    let (_keep, dir) = data_dir();
    let mut esh = Process::start(&dir, &HashMap::new()).await;
    let (business, _) = setup_users(&esh.api).await;
    let senders = start_senders(&esh.api, &business, "crash");
    tokio::time::sleep(Duration::from_secs(1)).await;
    esh.kill_hard();
    let accepted = collect(senders).await;
    eprintln!("{} messages accepted before the kill", accepted.len());
    assert!(accepted.len() >= SENDERS, "the senders got answers before the kill ({} did)", accepted.len());

    let mut esh = Process::start(&dir, &HashMap::new()).await;
    verify_nothing_lost(&esh.api, &accepted, "crash").await;
    let status = esh.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}
