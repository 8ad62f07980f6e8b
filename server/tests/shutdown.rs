//! Graceful shutdown of the real binary (Req 6.6): SIGTERM while senders are busy stops
//! accepting, finishes what is in flight and exits 0; nothing answered 202 is lost.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::durability as crash;
use common::{data_dir, Process};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_sends_exits_zero_and_loses_nothing() {
    let (_keep, dir) = data_dir();
    let mut esh = Process::start(&dir, &HashMap::new()).await;
    let (business, mobiles) = crash::setup_users(&esh.api).await;
    // One recipient is online and acking while the shutdown happens.
    let mut online = esh.api.connect(&mobiles["m0"]).await;
    let senders = crash::start_senders(&esh.api, &business, "term");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = esh.terminate(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM: {status}");
    let accepted = crash::collect(senders).await;
    eprintln!("{} messages accepted before the SIGTERM", accepted.len());
    assert!(accepted.len() >= crash::SENDERS);
    // The socket is closed by the shutdown, not left hanging.
    loop {
        match online.read(common::WAIT).await {
            common::Read::Closed(_) => break,
            common::Read::Json(_) => continue,
            common::Read::Silent => panic!("the socket stayed open after the shutdown"),
        }
    }

    let mut esh = Process::start(&dir, &HashMap::new()).await;
    crash::verify_nothing_lost(&esh.api, &accepted, "term").await;
    let status = esh.terminate(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
}
