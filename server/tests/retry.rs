//! Reliable delivery end to end (Req 4): resends of unacknowledged deliveries on the fixed
//! backoff, dead letters after the last attempt, the attempt log, and manual reprocessing.
//! The ack timeout is shortened; the backoff (1, 2, 4, 8, 16, 32 s) is the real one, so the
//! dead-letter test takes a little over a minute.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, id, Harness};

/// Req 4.1, 4.4: an unacknowledged message is sent again after the ack timeout and the
/// first backoff step; an ack stops the resends and marks it delivered.
#[tokio::test]
async fn unacked_delivery_is_resent_until_acked() {
    let esh = Harness::start_with(|c| c.ack_timeout = Duration::from_millis(100)).await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;

    let message_id = id(&esh.one_way(&business, "mona", "please ack").await);
    assert_eq!(id(&socket.messages(1).await[0]), message_id);
    let first = Instant::now();
    assert_eq!(id(&socket.messages(1).await[0]), message_id, "sent again");
    assert!(first.elapsed() >= Duration::from_millis(900), "the first retry waits 1 s after the ack timeout");
    socket.ack(&[&message_id]).await;
    esh.wait_status(&business, &message_id, "delivered").await;
    socket.assert_silent(Duration::from_millis(2500)).await;

    let attempts = esh.get(&business, &format!("/v1/messages/{message_id}/attempts")).await.body;
    let items = attempts["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{attempts}");
    assert_eq!(items[0]["attempt"], 1);
    assert_eq!(items[0]["channel"], "socket");
    assert_eq!(items[1]["attempt"], 2);
    assert_eq!(items[1]["outcome"], "delivered");
}

/// API.md "A user with no socket is not failing": the schedule stops when the last socket
/// closes, and a reconnect replays the message.
#[tokio::test]
async fn disconnected_user_is_not_failing_and_gets_the_message_again() {
    let esh = Harness::start_with(|c| c.ack_timeout = Duration::from_millis(100)).await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;
    let message_id = id(&esh.one_way(&business, "mona", "are you there?").await);
    socket.messages(1).await;
    drop(socket);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(esh.message(&business, &message_id).await["status"], "sent");

    let mut socket = esh.connect(&mobile).await;
    assert_eq!(id(&socket.messages(1).await[0]), message_id);
    socket.ack(&[&message_id]).await;
    esh.wait_status(&business, &message_id, "delivered").await;
}

/// Req 4.1, 4.2, 4.5, 4.7: never acked, a message is sent 7 times (1 + retries after 1, 2,
/// 4, 8, 16, 32 s), then fails: the sender gets a `failed` status, the attempts are listed,
/// the dead-letter queue holds it; a retry puts it back to `sent` and delivers it again.
#[tokio::test]
async fn unacked_message_is_dead_lettered_and_can_be_retried() {
    let esh = Harness::start_with(|c| c.ack_timeout = Duration::from_millis(50)).await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut sender = esh.connect(&business).await;
    let mut socket = esh.connect(&mobile).await;

    let message_id = id(&esh.one_way(&business, "mona", "never acked").await);
    let mut arrivals = Vec::new();
    for _ in 0..7 {
        let frame = socket.next_of_within("message", Duration::from_secs(40)).await;
        assert_eq!(id(&frame["message"]), message_id);
        arrivals.push(Instant::now());
    }
    let gaps: Vec<u128> = arrivals.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    for (gap, backoff) in gaps.iter().zip([1000u128, 2000, 4000, 8000, 16000, 32000]) {
        assert!(*gap >= backoff, "gaps {gaps:?} follow the backoff 1, 2, 4, 8, 16, 32 s");
    }

    let status = sender.next_of_within("status", Duration::from_secs(10)).await;
    assert_eq!(status["message_id"], message_id.as_str());
    assert_eq!(status["status"], "failed");
    let failed = esh.message(&business, &message_id).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()), "a failed message says why: {failed}");
    socket.assert_silent(Duration::from_millis(500)).await;

    let attempts = esh.get(&business, &format!("/v1/messages/{message_id}/attempts")).await.body;
    let items = attempts["items"].as_array().unwrap();
    let numbers: Vec<u64> = items.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7], "{attempts}");
    assert!(
        items.iter().all(|a| a["channel"] == "socket" && a["at"].is_string() && a["outcome"] == "timeout"),
        "{attempts}"
    );

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
