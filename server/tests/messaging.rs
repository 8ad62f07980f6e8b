//! The message pipeline end to end: ingest → store → log → router → deliverer → socket,
//! receipts back through the status writer to the sender, history and conversations.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{eventually, id, Harness};
use esh_server::Stage;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Req 1.1, 1.2, 5.1: a one-way message to an online mobile user is accepted as `sent` and
/// arrives on the socket as a `message` frame.
#[tokio::test]
async fn one_way_message_reaches_an_online_mobile_user() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;
    assert_eq!(socket.hello["user_id"], "mona");
    assert_eq!(socket.hello["heartbeat_s"], 30);

    let accepted = esh.one_way(&business, "mona", "your parcel is on its way").await;
    assert_eq!(accepted["status"], "sent");
    assert_eq!(accepted["type"], "one_way");
    assert_eq!(accepted["read_only"], true);
    assert_eq!(accepted["conversation_id"], Value::Null);
    assert_eq!(accepted["sender_id"], "acme");

    let frame = socket.next().await;
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["message"]["id"], accepted["id"]);
    assert_eq!(frame["message"]["content"], "your parcel is on its way");
    assert_eq!(frame["message"]["read_only"], true);
}

/// Req 5.1: ingest only stores and appends to the log; delivery is the router's work, so
/// with no router running an online user gets nothing until one starts.
#[tokio::test]
async fn delivery_goes_through_the_log_and_the_router() {
    let esh = Harness::start_with(|c| c.stages = vec![Stage::Ingest, Stage::Store, Stage::Deliverer]).await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;

    let accepted = esh.one_way(&business, "mona", "routed").await;
    // Read-your-writes holds before any routing.
    assert_eq!(esh.message(&business, &id(&accepted)).await["status"], "sent");
    // Nobody consumed the record, and nothing came to the socket before a ping's pong.
    let log = esh.platform().backends().log.clone();
    let mut lag = 0;
    for topic in esh_common::topics::MESSAGES_BY_PRIORITY {
        lag += log.lag(esh_common::topics::ROUTER_GROUP, topic).await.expect("lag");
    }
    assert_eq!(lag, 1, "the message waits in the log");
    socket.send(json!({"type": "ping"})).await;
    assert_eq!(socket.next().await["type"], "pong", "nothing is delivered without the router");

    let router = start_router(&esh);
    let frame = socket.next().await;
    assert_eq!(frame["message"]["id"], accepted["id"]);
    router.stop().await;
}

/// The router stage, run beside a platform started without it.
struct Router {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), esh_backends::BackendError>>,
}

fn start_router(esh: &Harness) -> Router {
    let stop = CancellationToken::new();
    let backends = esh.platform().backends().clone();
    let task = tokio::spawn(esh_router::run(backends, esh_router::RouterConfig::default(), stop.clone()));
    Router { stop, task }
}

impl Router {
    /// Stops the router and waits until it has committed and left: before the platform's
    /// log goes away (a Kafka broker stopped under a commit would hold the test forever).
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("router task").expect("router stops cleanly");
    }
}

/// Req 1.3, 4.6: an offline user gets every undelivered message on connect, one-way and
/// chat, in order per business→mobile pair and per conversation.
#[tokio::test]
async fn offline_user_gets_every_undelivered_message_on_connect_in_order() {
    let esh = Harness::start().await;
    let acme = esh.business("acme").await;
    let globex = esh.business("globex").await;
    esh.mobile("mona").await;

    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..6 {
        let a = esh.one_way(&acme, "mona", &format!("acme {i}")).await;
        sent.entry("acme/one_way".into()).or_default().push(id(&a));
        let g = esh.one_way(&globex, "mona", &format!("globex {i}")).await;
        sent.entry("globex/one_way".into()).or_default().push(id(&g));
        let c = esh.chat(&acme, "mona", &format!("acme chat {i}")).await;
        sent.entry("acme/chat".into()).or_default().push(id(&c));
    }

    let mobile = esh.token("mona").await;
    esh.wait_routed().await;
    let mut socket = esh.connect(&mobile).await;
    let received = socket.messages(18).await;
    let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
    for message in &received {
        let stream = format!("{}/{}", message["sender_id"].as_str().unwrap(), message["type"].as_str().unwrap());
        by_stream.entry(stream).or_default().push(id(message));
    }
    assert_eq!(by_stream, sent, "each pair and conversation arrives complete and in order");
    // A later message of a pair comes after everything of it sent before: nothing came twice.
    let later = esh.one_way(&acme, "mona", "after the replay").await;
    assert_eq!(socket.messages(1).await[0]["id"], later["id"]);
}

/// Req 4.4, 9 (receipts): `ack` makes the message delivered and the sender's socket gets a
/// `status` frame; `read` makes it read, and again the sender hears of it.
#[tokio::test]
async fn ack_and_read_frames_reach_the_sender_as_status_frames() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut sender = esh.connect(&business).await;
    let mut recipient = esh.connect(&mobile).await;

    let accepted = esh.one_way(&business, "mona", "hello").await;
    let message_id = id(&accepted);
    let message = recipient.messages(1).await.remove(0);
    assert_eq!(message["id"], accepted["id"]);

    recipient.ack(&[&message_id]).await;
    let status = sender.next_of("status").await;
    assert_eq!(status["message_id"], message_id.as_str());
    assert_eq!(status["status"], "delivered");
    assert!(status["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    assert_eq!(esh.message(&business, &message_id).await["status"], "delivered");

    recipient.read_receipt(&[&message_id]).await;
    let status = sender.next_of("status").await;
    assert_eq!(status["status"], "read");
    let stored = esh.message(&mobile, &message_id).await;
    assert_eq!(stored["status"], "read");
    assert!(stored["status_changed_at"].as_str().is_some());
}

/// Req 9: receipts over HTTP work like the socket ones (`read` implies `delivered`), a
/// receipt that does not move the status forward is a no-op 204, and one for a message
/// the caller did not receive is 403.
#[tokio::test]
async fn http_receipts_move_the_status_and_notify_the_sender() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let other = esh.mobile("otto").await;
    let mut sender = esh.connect(&business).await;

    let message_id = id(&esh.one_way(&business, "mona", "read me").await);
    assert_eq!(esh.post_empty(&other, &format!("/v1/messages/{message_id}/read")).await.status, 403);
    assert_eq!(esh.post_empty(&mobile, &format!("/v1/messages/{message_id}/read")).await.status, 204);
    assert_eq!(esh.message(&business, &message_id).await["status"], "read");
    let status = sender.next_of("status").await;
    assert_eq!((status["message_id"].as_str(), status["status"].as_str()), (Some(message_id.as_str()), Some("read")));

    assert_eq!(esh.post_empty(&mobile, &format!("/v1/messages/{message_id}/delivered")).await.status, 204);
    assert_eq!(esh.message(&business, &message_id).await["status"], "read", "status never moves back");
}

/// Req 1.5, 1.6, 1.11, 1.13, 1.14: chat in both directions, the conversation created on
/// first use, listed for both participants with last message and unread count.
#[tokio::test]
async fn chat_in_both_directions_with_conversation_list() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut business_socket = esh.connect(&business).await;
    let mut mobile_socket = esh.connect(&mobile).await;

    let first = esh.chat(&business, "mona", "how can we help?").await;
    assert_eq!(first["type"], "chat");
    assert_eq!(first["read_only"], false);
    let conversation = first["conversation_id"].as_str().expect("conversation created").to_owned();
    assert_eq!(mobile_socket.next_of("message").await["message"]["id"], first["id"]);

    let reply = esh.chat(&mobile, "acme", "where is my parcel?").await;
    assert_eq!(reply["conversation_id"], conversation.as_str(), "the pair keeps one conversation");
    assert_eq!(business_socket.next_of("message").await["message"]["id"], reply["id"]);

    let list = esh.get(&business, "/v1/conversations").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], conversation.as_str());
    assert_eq!(items[0]["business_id"], "acme");
    assert_eq!(items[0]["mobile_id"], "mona");
    assert_eq!(items[0]["peer"]["id"], "mona");
    assert_eq!(items[0]["peer"]["display_name"], "mona display");
    assert_eq!(items[0]["last_message"]["id"], reply["id"]);
    assert_eq!(items[0]["unread_count"], 1);

    let list = esh.get(&mobile, "/v1/conversations").await.body;
    assert_eq!(list["items"][0]["peer"]["id"], "acme");
    assert_eq!(list["items"][0]["unread_count"], 1);
    mobile_socket.read_receipt(&[first["id"].as_str().unwrap()]).await;
    eventually("mona's unread count to drop", || async {
        let list = esh.get(&mobile, "/v1/conversations").await.body;
        (list["items"][0]["unread_count"] == 0).then_some(())
    })
    .await;

    let history = esh.get(&mobile, &format!("/v1/conversations/{conversation}/messages")).await.body;
    let ids: Vec<&Value> = history["items"].as_array().unwrap().iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [&first["id"], &reply["id"]], "history is chronological");
    assert_eq!(history["next_cursor"], Value::Null);
    let outsider = esh.mobile("otto").await;
    assert_eq!(esh.get(&outsider, &format!("/v1/conversations/{conversation}/messages")).await.status, 403);
}

/// Req 1.9: chat is refused unless the mobile user is verified and the business has `chat`.
#[tokio::test]
async fn chat_needs_a_verified_mobile_user_and_the_chat_permission() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    esh.create_user("unverified", "mobile", json!({})).await;
    let sender_only = {
        esh.create_user("sendonly", "business", json!({"permissions": ["send"]})).await;
        esh.token("sendonly").await
    };
    esh.mobile("mona").await;
    let refused = esh.post(&business, "/v1/chat/messages", json!({"to": "unverified", "content": "hi"})).await;
    assert_eq!((refused.status, refused.code()), (403, "forbidden"));
    let refused = esh.post(&sender_only, "/v1/chat/messages", json!({"to": "mona", "content": "hi"})).await;
    assert_eq!((refused.status, refused.code()), (403, "forbidden"));
}

/// Req 9 (broadcast progress): a broadcast's counts add up to its total from the 202 on,
/// and move from `sent` to `delivered` as the recipients connect and ack.
#[tokio::test]
async fn broadcast_progress_moves_from_sent_to_delivered() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let recipients = ["m1", "m2", "m3"];
    let mut tokens = Vec::new();
    for user in recipients {
        tokens.push(esh.mobile(user).await);
    }
    let answer = esh.post(&business, "/v1/broadcasts", json!({"recipient_ids": recipients, "content": "sale!"})).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["total"], 3);
    let broadcast = id(&answer.body);

    let counts = esh.get(&business, &format!("/v1/broadcasts/{broadcast}")).await.body;
    assert_eq!(counts["total"], 3);
    let sum: u64 =
        ["pending", "sent", "delivered", "read", "failed"].iter().map(|s| counts["counts"][s].as_u64().unwrap()).sum();
    assert_eq!(sum, 3, "counts add up to the total at once: {counts}");
    assert_eq!(counts["counts"]["delivered"], 0);

    for (user, token) in recipients.iter().zip(&tokens) {
        let mut socket = esh.connect(token).await;
        let message = socket.messages(1).await.remove(0);
        assert_eq!(message["recipient_id"], *user);
        assert_eq!(message["content"], "sale!");
        socket.ack(&[message["id"].as_str().unwrap()]).await;
        socket.round_trip().await;
    }
    eventually("every broadcast message delivered", || async {
        let counts = esh.get(&business, &format!("/v1/broadcasts/{broadcast}")).await.body;
        (counts["counts"]["delivered"] == 3 && counts["counts"]["sent"] == 0).then_some(())
    })
    .await;
    let one_way = esh.get(&business, "/v1/one-way-messages").await.body;
    assert_eq!(one_way["items"].as_array().unwrap().len(), 3, "a business's history includes its broadcasts");
}

/// Req 5.2, 5.3: under a backlog the router drains high priority first, then normal, then low.
#[tokio::test]
async fn high_priority_is_routed_first_under_a_backlog() {
    let esh = Harness::start_with(|c| c.stages = vec![Stage::Ingest, Stage::Store, Stage::Deliverer]).await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;

    let mut expected_priority = HashMap::new();
    for (priority, count) in [("low", 60), ("normal", 60), ("high", 20)] {
        for i in 0..count {
            let body = json!({"recipient_id": "mona", "content": format!("{priority} {i}"), "priority": priority});
            let accepted = esh.one_way_with(&business, body).await;
            expected_priority.insert(id(&accepted), priority);
        }
    }
    let router = start_router(&esh);
    let received = socket.receive_acking(140).await;
    let order: Vec<&str> = received.iter().map(|m| expected_priority[&id(m)]).collect();
    let high_last = order.iter().rposition(|p| *p == "high").unwrap();
    let normal_first = order.iter().position(|p| *p == "normal").unwrap();
    let normal_last = order.iter().rposition(|p| *p == "normal").unwrap();
    let low_first = order.iter().position(|p| *p == "low").unwrap();
    assert!(high_last < normal_first && normal_last < low_first, "arrival order by priority: {order:?}");
    router.stop().await;
}

/// Req 5.4: beyond the backlog limit ingest answers 503 overloaded with Retry-After for
/// normal and low priority while high priority is still accepted.
#[tokio::test]
async fn overload_refuses_low_priority_before_high() {
    let esh = Harness::start_with(|c| {
        c.stages = vec![Stage::Ingest, Stage::Store, Stage::Deliverer];
        c.backlog_limit = 20;
    })
    .await;
    let business = esh.business("acme").await;
    esh.mobile("mona").await;
    let mut overloaded = None;
    for i in 0..40 {
        let body = json!({"recipient_id": "mona", "content": format!("normal {i}")});
        let answer = esh.post(&business, "/v1/messages", body).await;
        if answer.status == 503 {
            overloaded = Some(answer);
            break;
        }
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let overloaded = overloaded.expect("a backlog over the limit refuses normal priority");
    assert_eq!(overloaded.code(), "overloaded");
    assert!(overloaded.retry_after.is_some(), "503 carries Retry-After");
    let low =
        esh.post(&business, "/v1/messages", json!({"recipient_id": "mona", "content": "low", "priority": "low"})).await;
    assert_eq!(low.status, 503);
    let high = esh
        .post(&business, "/v1/messages", json!({"recipient_id": "mona", "content": "urgent", "priority": "high"}))
        .await;
    assert_eq!(high.status, 202, "high priority is refused last: {}", high.body);
}

/// Req 8.6 (cursor pages): walking history page by page while new messages arrive neither
/// skips nor repeats a message that existed when the walk began; pages are chronological.
#[tokio::test]
async fn history_cursors_stay_consistent_while_messages_arrive() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;

    let mut chat_ids = Vec::new();
    let mut one_way_ids = Vec::new();
    for i in 0..23 {
        chat_ids.push(id(&esh.chat(&business, "mona", &format!("chat {i}")).await));
        one_way_ids.push(id(&esh.one_way(&business, "mona", &format!("one-way {i}")).await));
    }
    let conversation = esh.message(&business, &chat_ids[0]).await["conversation_id"].as_str().unwrap().to_owned();

    for walk_chat in [true, false] {
        let path = if walk_chat {
            format!("/v1/conversations/{conversation}/messages")
        } else {
            "/v1/one-way-messages".to_owned()
        };
        let existing = if walk_chat { chat_ids.clone() } else { one_way_ids.clone() };
        let mut walked: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(cursor) => format!("{path}?limit=5&cursor={cursor}"),
                None => format!("{path}?limit=5"),
            };
            let page = esh.get(&mobile, &query).await;
            assert_eq!(page.status, 200, "{}", page.body);
            let ids: Vec<String> = page.body["items"].as_array().unwrap().iter().map(id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "a page is chronological");
            // Pages go from the newest towards older ones.
            walked.splice(0..0, ids);
            // New messages arrive during the walk, through the whole pipeline.
            chat_ids.push(id(&esh.chat(&business, "mona", "meanwhile").await));
            one_way_ids.push(id(&esh.one_way(&business, "mona", "meanwhile").await));
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(walked, existing, "the walk of {path} saw exactly the messages that existed when it began");
    }
    // Everything, including what arrived during the walks, reached the socket.
    let total = chat_ids.len() + one_way_ids.len();
    let delivered: HashSet<String> = socket.receive_acking(total).await.iter().map(id).collect();
    let sent: HashSet<String> = chat_ids.into_iter().chain(one_way_ids).collect();
    assert_eq!(delivered, sent);
}

/// Req 10.3 / idempotency: the same key from the same sender returns the first answer and
/// creates nothing; the same key with another body is 409.
#[tokio::test]
async fn idempotent_http_send_returns_the_first_answer() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let body = json!({"recipient_id": "mona", "content": "once", "idempotency_key": "order-17"});
    let first = esh.post(&business, "/v1/messages", body.clone()).await;
    let again = esh.post(&business, "/v1/messages", body).await;
    assert_eq!((first.status, again.status), (202, 202));
    assert_eq!(first.body, again.body);
    let other = esh
        .post(
            &business,
            "/v1/messages",
            json!({"recipient_id": "mona", "content": "twice", "idempotency_key": "order-17"}),
        )
        .await;
    assert_eq!((other.status, other.code()), (409, "conflict"));

    esh.wait_routed().await;
    let mut socket = esh.connect(&mobile).await;
    assert_eq!(socket.messages(1).await[0]["id"], first.body["id"]);
    // The next message of the pair is a new one, not a second copy of the first.
    let later = esh.one_way(&business, "mona", "after the repeat").await;
    assert_eq!(socket.messages(1).await[0]["id"], later["id"]);
}

/// Req 1.3, 4.6, 10.5: a recipient that connects again and again while a sender keeps
/// sending loses nothing (every accepted message arrives, on a later connection at the
/// latest) and never gets one id twice on one connection (replay and the live stream meet
/// without a gap and without a double).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_during_concurrent_sends_loses_nothing_and_doubles_nothing() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let api = esh.api.clone();
    let sender_token = business.clone();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted_by_sender = accepted.clone();
    let sender = tokio::spawn(async move {
        for i in 0..300 {
            let message_id = id(&api.one_way(&sender_token, "mona", &format!("busy {i}")).await);
            accepted_by_sender.lock().unwrap().push(message_id);
        }
    });
    let mut received: HashSet<String> = HashSet::new();
    for connection in 0..6 {
        // Everything answered 202 before this connect must have arrived once it went quiet.
        let before_connect: Vec<String> = accepted.lock().unwrap().clone();
        let mut socket = esh.connect(&mobile).await;
        let mut on_this_socket: HashSet<String> = HashSet::new();
        // A short stay: some messages arrive by replay, some live, some after the next
        // connect. It lasts until the replay has brought everything accepted before the
        // connect (which the live stream never carries again: a gap would never fill), then
        // until the socket is quiet for a moment.
        let patience = std::time::Instant::now() + common::WAIT;
        loop {
            let replayed = before_connect.iter().all(|id| received.contains(id));
            let wait = if replayed {
                Duration::from_millis(60)
            } else {
                patience.saturating_duration_since(std::time::Instant::now())
            };
            let common::Read::Json(frame) = socket.read(wait).await else { break };
            if frame["type"] != "message" {
                continue;
            }
            let message_id = id(&frame["message"]);
            socket.ack(&[&message_id]).await;
            assert!(on_this_socket.insert(message_id.clone()), "connection {connection} got {message_id} twice");
            received.insert(message_id);
        }
        let missing: Vec<&String> = before_connect.iter().filter(|id| !received.contains(*id)).collect();
        assert!(missing.is_empty(), "connection {connection}: accepted before it attached but not replayed: {missing:?}");
    }
    sender.await.expect("sender");
    let sent: Vec<String> = accepted.lock().unwrap().clone();
    let mut last = esh.connect(&mobile).await;
    while received.len() < sent.len() {
        let message = last.next_of("message").await["message"].clone();
        last.ack(&[&id(&message)]).await;
        received.insert(id(&message));
    }
    assert_eq!(received, sent.into_iter().collect::<HashSet<_>>(), "exactly the accepted messages arrived");
}
