//! Durability of the embedded default against kill -9 (ARCHITECTURE.md "it keeps every
//! accepted message across a crash"): the real `esh` binary is killed while senders are
//! busy, three times over, each time restarted on the same data directory; every `202` must
//! still be there, and the keys of the sends must still mean what they meant.

mod common;

use std::collections::HashSet;
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
    let mut esh = Process::start(&dir, &[]).await;
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
        esh = Process::start(&dir, &[]).await;
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

/// Req 4.4, 9.6: a socket ack is settled once its status record is durable. Killed right
/// after the acks, the platform restarts with every acked message still `delivered`, and
/// the sender hears of each one: on the socket it had before the kill, or, for a status
/// the notifier had not passed on yet, on its socket after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acked_message_stays_delivered_across_kill_9_and_its_sender_hears_of_it() {
    let (_keep, dir) = data_dir();
    let mut esh = Process::start(&dir, &[]).await;
    let business = esh.api.business("acme").await;
    let mobile = esh.api.mobile("mona").await;
    let mut sender_socket = esh.api.connect(&business).await;
    let mut socket = esh.api.connect(&mobile).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(common::id(&esh.api.one_way(&business, "mona", &format!("acked {i}")).await));
    }
    let received = socket.receive_acking(20).await;
    assert_eq!(received.iter().map(common::id).collect::<Vec<_>>(), sent);
    // Each ack is settled (durable) before the next frame is read: one round trip later
    // the last ack has been handed to the status writer; wait until its record is durable
    // by reading the status over HTTP (the read waits for the store to pass the log).
    esh.api.wait_status(&business, sent.last().unwrap(), "delivered").await;
    let mut heard: HashSet<String> = HashSet::new();
    // What the sender heard before the kill (the frames that had come by then).
    while let common::Read::Json(frame) = sender_socket.read(Duration::from_millis(300)).await {
        if frame["type"] == "status" {
            heard.insert(frame["message_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    esh.kill_hard().await;

    let esh = Process::start(&dir, &[]).await;
    for id in &sent {
        assert_eq!(esh.api.message(&business, id).await["status"], "delivered", "{id} after kill -9");
    }
    let mut after = esh.api.connect(&business).await;
    while heard.len() < sent.len() {
        let frame = after.next_of("status").await;
        assert_eq!(frame["status"], "delivered");
        heard.insert(frame["message_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(heard, sent.iter().cloned().collect::<HashSet<_>>());
}
