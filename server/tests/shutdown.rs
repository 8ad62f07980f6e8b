//! Graceful shutdown of the real binary (Req 6.6): SIGTERM while keyed senders are busy
//! stops accepting, finishes what is in flight, closes the sockets with 1001 and exits 0;
//! nothing answered `202` is lost.

mod common;

use std::time::{Duration, Instant};

use common::durability::{
    assert_no_problems, check_nothing_lost, join, retry_unanswered, sent_contents, setup_users, start_senders, Ledger,
    Outcome,
};
use common::{data_dir, Process, Read};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Sends accepted before the signal.
const ACCEPTED_BEFORE: usize = 150;

/// Req 6.6, API.md "Nothing that was accepted (2xx) is ever lost".
///
/// "Nothing is answered 202 after the signal" is checked from the client's side: the test
/// cannot see when the process handles the signal, only when it sent it and when the first
/// refusal (a 5xx or a refused connection) came back. From that refusal on the server has
/// stopped accepting, so no request the senders start later may be answered `202`.
/// Requests in flight at the signal (started before it) finish: a request the server
/// worked on gets its answer, and each `202` is checked to be durable and delivered after
/// the restart. A request that found its keep-alive connection closed for the shutdown
/// before the server read it (HTTP/1.1's race between a client reusing an idle connection
/// and the server closing it, RFC 9112 section 9.3.1) has no answer and no effect: it must
/// not be found among the stored messages, and it is sent again with its key after the
/// restart, like every request left without a promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_sends_exits_zero_and_loses_nothing() {
    let (_keep, dir) = data_dir();
    let mut esh = Process::start(&dir, &[]).await;
    let (business, mobiles) = setup_users(&esh.api).await;
    // One recipient is online (and does not ack) while the shutdown happens.
    let mut online = esh.api.connect(&mobiles["m0"]).await;
    let ledger = Ledger::new();
    let senders = start_senders(&esh.api, &business, "term", &ledger);
    ledger.wait_accepted(ACCEPTED_BEFORE).await;

    let signalled = Instant::now();
    esh.signal_terminate();
    let status = esh.exited(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM: {status}");
    join(senders).await;
    let (accepted, server_errors, no_answers) = ledger.counts();
    eprintln!("{accepted} accepted, {server_errors} 5xx, {no_answers} without an answer");

    let history = ledger.history();
    let first_refusal = history
        .iter()
        .filter(|t| t.finished >= signalled && !matches!(t.outcome, Outcome::Accepted(_)))
        .map(|t| t.finished)
        .min()
        .expect("the senders saw the server stop accepting");
    let late: Vec<&str> = history
        .iter()
        .filter(|t| t.started > first_refusal && matches!(t.outcome, Outcome::Accepted(_)))
        .map(|t| t.request.key.as_str())
        .collect();
    assert!(late.is_empty(), "accepted after the server had refused a request: {late:?}");
    let cut: Vec<&str> = history
        .iter()
        .filter(|t| t.started < signalled && t.outcome == Outcome::NoAnswer)
        .map(|t| t.request.content.as_str())
        .collect();

    // The socket is closed by the shutdown with 1001 (going away), not left hanging or cut.
    loop {
        match online.read(common::WAIT).await {
            Read::Json(_) => continue,
            Read::Closed(Some(close)) => {
                assert_eq!(close.code, CloseCode::Away, "close code 1001: {close:?}");
                break;
            }
            other => panic!("expected a close frame with 1001 after SIGTERM, got {other:?}"),
        }
    }

    let mut esh = Process::start(&dir, &[]).await;
    let stored = sent_contents(&esh.api, &business).await;
    let worked_on: Vec<&&str> = cut.iter().filter(|content| stored.contains(**content)).collect();
    eprintln!("{} requests in flight at the signal got no answer, {} of them took effect", cut.len(), worked_on.len());
    assert!(worked_on.is_empty(), "in-flight requests took effect but got no answer: {worked_on:?}");
    retry_unanswered(&esh.api, &business, &ledger).await;
    let problems = check_nothing_lost(&esh.api, &business, &ledger.accepted(), "term").await;
    assert_no_problems("accepted messages after SIGTERM", &problems);
    let status = esh.terminate(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
}
