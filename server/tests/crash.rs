//! Durability of the embedded default against kill -9 (ARCHITECTURE.md "it keeps every
//! accepted message across a crash"): the real `esh` binary is killed while senders are
//! busy, three times over, each time restarted on the same data directory; every `202` must
//! still be there, and the keys of the sends must still mean what they meant.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::durability::{
    assert_no_problems, check_nothing_lost, check_same_ids_on_repeat, join, retry_unanswered, setup_users,
    start_senders, Ledger,
};
use common::{data_dir, Process};

/// Sends accepted in each round before the kill.
const ACCEPTED_PER_ROUND: usize = 150;
const ROUNDS: usize = 3;

/// Req 4.3, 4.6, 6.1, 10.3; API.md "Nothing that was accepted (2xx) is ever lost" and
/// "Idempotency": SIGKILL during concurrent keyed sends, over three rounds. Requests left
/// without a promise (no answer, or a 5xx) are sent again with their key after each
/// restart, as a client would. After the last restart every `202` is readable and arrives
/// on its recipient's socket, no content arrives under two ids, and each accepted request
/// sent again with its key gets the id of its first `202`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_message_survives_kill_9_and_keys_keep_their_ids() {
    let (_keep, dir) = data_dir();
    let mut esh = Process::start(&dir, &HashMap::new()).await;
    let (business, _) = setup_users(&esh.api).await;
    let ledger = Ledger::new();
    for round in 1..=ROUNDS {
        let retried = retry_unanswered(&esh.api, &business, &ledger).await;
        let senders = start_senders(&esh.api, &business, &format!("crash-r{round}"), &ledger);
        ledger.wait_accepted(round * ACCEPTED_PER_ROUND + retried).await;
        esh.kill_hard().await;
        join(senders).await;
        let (accepted, server_errors, no_answers) = ledger.counts();
        eprintln!("round {round}: {accepted} accepted in all, {server_errors} 5xx, {no_answers} without an answer");
        esh = Process::start(&dir, &HashMap::new()).await;
    }
    retry_unanswered(&esh.api, &business, &ledger).await;

    let accepted = ledger.accepted();
    // Both checks run before either fails, so that one run shows every broken promise.
    let lost = check_nothing_lost(&esh.api, &business, &accepted, "crash").await;
    let repeated = check_same_ids_on_repeat(&esh.api, &business, &accepted).await;
    eprintln!("{} accepted: {} delivery problems, {} keys answered differently", accepted.len(), lost.len(), repeated.len());
    assert_no_problems("accepted messages after kill -9", &lost);
    assert_no_problems("keys sent again after kill -9", &repeated);
    let status = esh.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}
