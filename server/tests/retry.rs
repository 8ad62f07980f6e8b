//! Reliable delivery end to end (Req 4): resends of unacknowledged deliveries on the
//! backoff, dead letters after the last attempt, the attempt log, and manual reprocessing.
//! The ack timeout and the retry schedule (`ESH_RETRY_SCHEDULE`) are shortened to
//! milliseconds with the default's shape (each wait twice the last, six retries); the real
//! 1..32 s schedule is pinned with paused time in `deliverer/src/tests.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, id, Harness, Socket};
use esh_common::retry::RetrySchedule;
use serde_json::json;

/// Six retries, each wait twice the last, as the default 1, 2, 4, 8, 16, 32 s.
fn fast_schedule(first_ms: u64) -> RetrySchedule {
    RetrySchedule::new((0..6).map(|n| Duration::from_millis(first_ms << n)).collect()).expect("valid schedule")
}

/// Milliseconds since midnight of an API time (`2026-01-31T12:34:56.789Z`).
fn millis_of_day(at: &str) -> i64 {
    let time = at.split_once('T').map(|(_, time)| time.trim_end_matches('Z')).unwrap_or_else(|| panic!("time {at:?}"));
    let (hms, ms) = time.split_once('.').unwrap_or_else(|| panic!("time {at:?}"));
    let parts: Vec<i64> = hms.split(':').chain([ms]).map(|n| n.parse().unwrap_or_else(|_| panic!("time {at:?}"))).collect();
    ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000 + parts[3]
}

/// Sends a ping and reads up to its pong, failing on any message frame before it: the
/// frames a socket gets are in order, so nothing was resent before the pong.
async fn assert_no_resend_before_pong(socket: &mut Socket) {
    socket.send(json!({"type": "ping"})).await;
    loop {
        let frame = socket.next().await;
        assert_ne!(frame["type"], "message", "resent: {frame}");
        if frame["type"] == "pong" {
            return;
        }
    }
}

/// Req 4.1, 4.4: an unacknowledged message is sent again after the ack timeout and the
/// first backoff step; an ack stops the resends and marks it delivered.
#[tokio::test]
async fn unacked_delivery_is_resent_until_acked() {
    let esh = Harness::start_with(|c| {
        c.ack_timeout = Duration::from_millis(100);
        c.retry_schedule = fast_schedule(200);
    })
    .await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;

    let message_id = id(&esh.one_way(&business, "mona", "please ack").await);
    assert_eq!(id(&socket.messages(1).await[0]), message_id);
    let first = Instant::now();
    assert_eq!(id(&socket.messages(1).await[0]), message_id, "sent again");
    assert!(first.elapsed() >= Duration::from_millis(300), "the first retry waits the ack timeout and the first wait");
    socket.ack(&[&message_id]).await;
    esh.wait_status(&business, &message_id, "delivered").await;

    let attempts = esh.get(&business, &format!("/v1/messages/{message_id}/attempts")).await.body;
    let items = attempts["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{attempts}");
    assert_eq!(items[0]["attempt"], 1);
    assert_eq!(items[0]["channel"], "socket");
    assert_eq!(items[1]["attempt"], 2);
    assert_eq!(items[1]["outcome"], "delivered");
    // The delivered attempt ends the schedule: no third send comes.
    assert_no_resend_before_pong(&mut socket).await;
}

/// API.md "A user with no socket is not failing": the schedule stops when the last socket
/// closes, and a reconnect replays the message.
#[tokio::test]
async fn disconnected_user_is_not_failing_and_gets_the_message_again() {
    // A long ack timeout: the socket is surely gone before the first one runs out.
    let esh = Harness::start_with(|c| c.ack_timeout = Duration::from_secs(2)).await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;
    let message_id = id(&esh.one_way(&business, "mona", "are you there?").await);
    socket.messages(1).await;
    drop(socket);
    // The tracker records how the schedule ended: the last socket closed.
    let ended = eventually("the attempt log to show the disconnection", || async {
        let attempts = esh.get(&business, &format!("/v1/messages/{message_id}/attempts")).await.body;
        let items = attempts["items"].as_array().cloned().unwrap_or_default();
        items.last().filter(|a| a["outcome"] == "disconnected" || a["outcome"] == "timeout").cloned()
    })
    .await;
    assert_eq!(ended["outcome"], "disconnected", "{ended}");
    assert_eq!(esh.message(&business, &message_id).await["status"], "sent");
    let letters = esh.get(&esh.admin, "/v1/admin/dead-letters").await.body;
    assert_eq!(letters["items"], json!([]), "not failing");

    let mut socket = esh.connect(&mobile).await;
    assert_eq!(id(&socket.messages(1).await[0]), message_id);
    socket.ack(&[&message_id]).await;
    esh.wait_status(&business, &message_id, "delivered").await;
}

/// Req 4.1, 4.2, 4.5, 4.7: never acked, a message is sent 7 times (1 + a retry after each
/// of the 6 waits), then fails: the sender gets a `failed` status, the attempts are listed,
/// the dead-letter queue holds it; a retry puts it back to `sent` and delivers it again.
/// The whole schedule takes under half a second here (25 ms ack timeout, 5..160 ms waits).
#[tokio::test]
async fn unacked_message_is_dead_lettered_and_can_be_retried() {
    let ack_timeout = Duration::from_millis(25);
    let schedule = fast_schedule(5);
    let waits = schedule.waits().to_vec();
    let esh = Harness::start_with(|c| {
        c.ack_timeout = ack_timeout;
        c.retry_schedule = schedule;
    })
    .await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut sender = esh.connect(&business).await;
    let mut socket = esh.connect(&mobile).await;

    let message_id = id(&esh.one_way(&business, "mona", "never acked").await);
    for _ in 0..7 {
        let frame = socket.next_of("message").await;
        assert_eq!(id(&frame["message"]), message_id);
    }

    let status = sender.next_of("status").await;
    assert_eq!(status["message_id"], message_id.as_str());
    assert_eq!(status["status"], "failed");
    let failed = esh.message(&business, &message_id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "not acknowledged after 7 attempts", "a failed message says why: {failed}");
    assert_no_resend_before_pong(&mut socket).await;

    let attempts = esh.get(&business, &format!("/v1/messages/{message_id}/attempts")).await.body;
    let items = attempts["items"].as_array().unwrap();
    let numbers: Vec<u64> = items.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7], "{attempts}");
    assert!(
        items.iter().all(|a| a["channel"] == "socket" && a["at"].is_string() && a["outcome"] == "timeout"),
        "{attempts}"
    );
    // The server's send times (millisecond precision): each retry went out the ack timeout
    // plus its wait after the attempt before it.
    let sent_at: Vec<i64> = items.iter().map(|a| millis_of_day(a["at"].as_str().unwrap_or_default())).collect();
    let gaps: Vec<i64> = sent_at.windows(2).map(|w| (w[1] - w[0]).rem_euclid(86_400_000)).collect();
    for (gap, wait) in gaps.iter().zip(&waits) {
        let least = (ack_timeout + *wait).as_millis() as i64 - 1;
        assert!(*gap >= least, "gaps {gaps:?} ms are the ack timeout {ack_timeout:?} plus {waits:?}");
    }

    let letters = esh.get(&esh.admin, "/v1/admin/dead-letters").await.body;
    let letter = letters["items"].as_array().unwrap().iter().find(|l| l["message_id"] == message_id.as_str()).cloned();
    let letter = letter.unwrap_or_else(|| panic!("dead letter listed: {letters}"));
    assert_eq!(letter["attempts"], 7);
    assert!(letter["failed_at"].is_string() && letter["error"].is_string());
    assert_eq!(esh.get(&business, "/v1/admin/dead-letters").await.status, 403);

    let retried = esh.post_empty(&esh.admin, &format!("/v1/admin/dead-letters/{message_id}/retry")).await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    assert_eq!(retried.body["message_id"], message_id.as_str());
    assert_eq!(retried.body["status"], "sent");
    let again = socket.next_of("message").await;
    assert_eq!(id(&again["message"]), message_id);
    socket.ack(&[&message_id]).await;
    esh.wait_status(&business, &message_id, "delivered").await;
    assert_eq!(sender.next_of("status").await["status"], "delivered");

    let letters = esh.get(&esh.admin, "/v1/admin/dead-letters").await.body;
    assert!(letters["items"].as_array().unwrap().iter().all(|l| l["message_id"] != message_id.as_str()), "{letters}");
    let conflict = esh.post_empty(&esh.admin, &format!("/v1/admin/dead-letters/{message_id}/retry")).await;
    assert_eq!(conflict.status, 409);
    eventually("the attempt log to show the delivery after the retry", || async {
        let attempts = esh.get(&business, &format!("/v1/messages/{message_id}/attempts")).await.body;
        let items = attempts["items"].as_array().cloned().unwrap_or_default();
        items.iter().any(|a| a["outcome"] == "delivered").then_some(())
    })
    .await;
}
