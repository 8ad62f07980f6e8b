//! The send path over real HTTP: one-way, chat, broadcasts, idempotency, rate limits and
//! the backlog, against the embedded store and log.

mod support;

use esh_backends::Record;
use esh_common::ingress::{ChatIngress, ChatRequest};
use esh_common::records::{decode, MessageEnvelope};
use esh_common::{topics, Priority, UserKind};
use esh_ingest::IngestConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{expired_token, forged_token, Server, ADMIN};

/// Records of `topic` not yet taken by the router (nothing consumes them in these tests).
async fn backlog(server: &Server, topic: &str) -> u64 {
    server.backends.log.lag(topics::ROUTER_GROUP, topic).await.unwrap()
}

#[tokio::test]
async fn one_way_message_is_stored_and_logged_before_202() {
    // Req 1.1, 9.2, 10.7: 202 with status sent; the store has it; the log has it.
    let server = Server::start().await;
    let business = server.user("b1", "business", &["send"], false).await;
    let mobile = server.user("m1", "mobile", &[], false).await;
    let before = backlog(&server, topics::MESSAGES_HIGH).await;
    let answer = server
        .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "hello ✓", "priority": "high"}))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    let message = &answer.json;
    assert_eq!(message["type"], "one_way");
    assert_eq!(message["status"], "sent");
    assert_eq!(message["read_only"], true);
    assert_eq!(message["conversation_id"], Value::Null);
    assert_eq!(message["media"], json!([]));
    assert_eq!(message["priority"], "high");
    assert_eq!(message["sender_id"], "b1");
    let id = message["id"].as_str().unwrap();
    assert!(esh_common::ids::is_id(id));
    assert_eq!(backlog(&server, topics::MESSAGES_HIGH).await, before + 1);

    // Read-your-writes: sender and recipient see it at once.
    for token in [&business, &mobile] {
        let read = server.get(&format!("/v1/messages/{id}"), token).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(&read.json, message);
    }
    let received = server.get("/v1/one-way-messages", &mobile).await;
    assert_eq!(received.json["items"][0]["id"], id);
    let sent = server.get("/v1/one-way-messages", &business).await;
    assert_eq!(sent.json["items"][0]["id"], id);
}

#[tokio::test]
async fn one_way_checks_answer_in_order() {
    let server = Server::start().await;
    let business = server.user("b1", "business", &["send"], false).await;
    let chat_only = server.user("b2", "business", &["chat"], false).await;
    let mobile = server.mobile("m1").await;
    server.business("b3").await;
    let server = &server;
    let send = |token: String, body: Value| async move { server.post("/v1/messages", &token, body).await };

    for (body, field) in [
        (json!({"recipient_id": "m1", "content": ""}), "content"),
        (json!({"recipient_id": "m1", "content": "x".repeat(4097)}), "content"),
        (json!({"recipient_id": "m1"}), "content"),
        (json!({"content": "x"}), "recipient_id"),
        (json!({"recipient_id": 7, "content": "x"}), "recipient_id"),
        (json!({"recipient_id": "m1", "content": ["x"]}), "content"),
        (json!({"recipient_id": "m1", "content": "x", "priority": "urgent"}), "priority"),
        (json!({"recipient_id": "m1", "content": "x", "media_ids": "a"}), "media_ids"),
        (json!({"recipient_id": "m1", "content": "x", "media_ids": ["nope"]}), "media_ids"),
        (json!({"recipient_id": "m1", "content": "x", "idempotency_key": 5}), "idempotency_key"),
    ] {
        let answer = send(business.clone(), body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.json["error"]["details"]["field"], field, "{body}: {}", answer.json);
    }
    assert_eq!(
        send(business.clone(), json!({"recipient_id": "m1", "content": "😀".repeat(4096)})).await.status,
        StatusCode::ACCEPTED
    );
    let malformed = server.post_raw("/v1/messages", &business, "application/json", "{\"recipient_id\": \"m1\",").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let form = server.post_raw("/v1/messages", &business, "application/x-www-form-urlencoded", "recipient_id=m1").await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let padded = format!("{{\"recipient_id\": \"m1\", \"content\": \"x\", \"pad\": \"{}\"}}", "p".repeat(64 * 1024));
    let oversized = server.post_raw("/v1/messages", &business, "application/json", padded).await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(oversized.code(), "payload_too_large");

    // 403: no `send`, mobile or admin senders, non-mobile recipients; 404 unknown recipients.
    assert_eq!(send(chat_only, json!({"recipient_id": "m1", "content": "x"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(mobile, json!({"recipient_id": "m1", "content": "x"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        send(ADMIN.to_owned(), json!({"recipient_id": "m1", "content": "x"})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(business.clone(), json!({"recipient_id": "b3", "content": "x"})).await.status,
        StatusCode::FORBIDDEN
    );
    let unknown = send(business.clone(), json!({"recipient_id": "ghost", "content": "x"})).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "not_found"));
    // 403 comes before 404: a sender without `send` learns nothing about recipients.
    let no_send = server.user("b4", "business", &[], false).await;
    assert_eq!(send(no_send, json!({"recipient_id": "ghost", "content": "x"})).await.status, StatusCode::FORBIDDEN);

    for token in [None, Some(expired_token("b1", "business")), Some(forged_token("b1", UserKind::Business))] {
        let answer = server
            .call(Method::POST, "/v1/messages", token.as_deref(), Some(json!({"recipient_id": "m1", "content": "x"})))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn chat_pairs_a_business_with_chat_and_a_verified_mobile() {
    // Req 1.5, 1.6, 1.9, 1.11.
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let unverified = server.user("m2", "mobile", &[], false).await;
    let send_only = server.user("b2", "business", &["send"], false).await;
    server.mobile("m3").await;

    let first = server.chat(&business, "m1", "hi there").await;
    assert_eq!(first["type"], "chat");
    assert_eq!(first["read_only"], false);
    assert_eq!(first["status"], "sent");
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    // Either side may send; the pair keeps its conversation.
    let reply = server.chat(&mobile, "b1", "hello back").await;
    assert_eq!(reply["conversation_id"], conversation.as_str());
    assert_eq!(reply["recipient_id"], "b1");
    let page = server.get(&format!("/v1/conversations/{conversation}/messages"), &mobile).await;
    assert_eq!(
        support::ids(page.json["items"].as_array().unwrap()),
        vec![first["id"].as_str().unwrap(), reply["id"].as_str().unwrap()]
    );

    let server = &server;
    let post = |token: String, to: &str, content: &str| {
        let body = json!({"to": to, "content": content});
        async move { server.post("/v1/chat/messages", &token, body).await }
    };
    assert_eq!(post(unverified.clone(), "b1", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(business.clone(), "m2", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(send_only.clone(), "m1", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(mobile.clone(), "b2", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(mobile.clone(), "m3", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(business.clone(), "b2", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(ADMIN.to_owned(), "m1", "x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(post(business.clone(), "ghost", "x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(post(business.clone(), "m1", "").await.status, StatusCode::BAD_REQUEST);
    let wrong = server.post("/v1/chat/messages", &business, json!({"to": ["m1"], "content": "x"})).await;
    assert_eq!((wrong.status, wrong.json["error"]["details"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("to")));
    let malformed = server.post_raw("/v1/chat/messages", &business, "application/json", "{").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let oversized =
        server.post_raw("/v1/chat/messages", &business, "application/json", vec![b' '; 64 * 1024 + 1]).await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    let anonymous =
        server.call(Method::POST, "/v1/chat/messages", None, Some(json!({"to": "m1", "content": "x"}))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Priority is accepted on chat (default normal).
    let high =
        server.post("/v1/chat/messages", &business, json!({"to": "m1", "content": "x", "priority": "high"})).await;
    assert_eq!(high.json["priority"], "high");
    assert_eq!(first["priority"], "normal");
}

#[tokio::test]
async fn chat_ingress_runs_the_same_checks_and_shares_idempotency() {
    // The WebSocket `send` frame path (ChatIngress) = POST /v1/chat/messages.
    let server = Server::start().await;
    let business = server.business("b1").await;
    server.mobile("m1").await;
    server.user("m2", "mobile", &[], false).await;
    let request = |to: &str, key: Option<&str>| ChatRequest {
        to: to.into(),
        content: "via socket".into(),
        media_ids: vec![],
        priority: None,
        idempotency_key: key.map(str::to_owned),
    };
    let message = server.ingest.send_chat("m1", request("b1", Some("k1"))).await.unwrap();
    assert_eq!(message.sender_id, "m1");
    assert!(message.conversation_id.is_some());
    let again = server.ingest.send_chat("m1", request("b1", Some("k1"))).await.unwrap();
    assert_eq!(again.id, message.id);
    let mobile = server.keys.issue("m1", UserKind::Mobile, 60).unwrap().0;
    let over_http = server
        .post("/v1/chat/messages", &mobile, json!({"to": "b1", "content": "via socket", "idempotency_key": "k1"}))
        .await;
    assert_eq!(over_http.status, StatusCode::ACCEPTED);
    assert_eq!(over_http.json["id"], message.id.as_str());
    assert_eq!(server.ingest.send_chat("m2", request("b1", None)).await.unwrap_err().code.http_status(), 403);
    assert_eq!(server.ingest.send_chat("m1", request("ghost", None)).await.unwrap_err().code.http_status(), 404);
    assert_eq!(server.ingest.send_chat("ghost", request("b1", None)).await.unwrap_err().code.http_status(), 401);
    let conflict =
        server.ingest.send_chat("m1", ChatRequest { content: "other".into(), ..request("b1", Some("k1")) }).await;
    assert_eq!(conflict.unwrap_err().code.http_status(), 409);
    drop(business);
}

#[tokio::test]
async fn idempotent_repeats_get_the_identical_answer_and_create_nothing() {
    // Req 4.3; API.md "Idempotency".
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    server.mobile("m2").await;
    let body = json!({"recipient_id": "m1", "content": "once", "idempotency_key": "order-1"});
    let first = server.post("/v1/messages", &business, body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let repeat = server.post("/v1/messages", &business, body.clone()).await;
    assert_eq!(repeat.status, StatusCode::ACCEPTED);
    assert_eq!(repeat.bytes, first.bytes);
    // The header is the same key; the default priority equals an explicit "normal".
    let with_header = Server::answer(
        server
            .client
            .post(format!("{}/v1/messages", server.base))
            .bearer_auth(&business)
            .header("idempotency-key", "order-1")
            .json(&json!({"recipient_id": "m1", "content": "once", "priority": "normal"})),
    )
    .await;
    assert_eq!(with_header.bytes, first.bytes);
    assert_eq!(server.get("/v1/one-way-messages", &mobile).await.json["items"].as_array().unwrap().len(), 1);

    // A different body with the same key: 409, whatever differs.
    for other in [
        json!({"recipient_id": "m2", "content": "once", "idempotency_key": "order-1"}),
        json!({"recipient_id": "m1", "content": "twice", "idempotency_key": "order-1"}),
        json!({"recipient_id": "m1", "content": "once", "priority": "low", "idempotency_key": "order-1"}),
    ] {
        let answer = server.post("/v1/messages", &business, other).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::CONFLICT, "conflict"));
    }
    // The same key on another send endpoint is a different body.
    let chat = server
        .post("/v1/chat/messages", &business, json!({"to": "m1", "content": "once", "idempotency_key": "order-1"}))
        .await;
    assert_eq!(chat.status, StatusCode::CONFLICT);
    // Keys are scoped to the sender.
    let other_business = server.business("b2").await;
    assert_eq!(server.post("/v1/messages", &other_business, body.clone()).await.status, StatusCode::ACCEPTED);
    // Header and field both given and different: 400.
    let mismatch = Server::answer(
        server
            .client
            .post(format!("{}/v1/messages", server.base))
            .bearer_auth(&business)
            .header("idempotency-key", "order-2")
            .json(&body),
    )
    .await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    // A refused request releases its key: fixing it and retrying with the same key works.
    let refused = server
        .post("/v1/messages", &business, json!({"recipient_id": "ghost", "content": "x", "idempotency_key": "k9"}))
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let fixed = server
        .post("/v1/messages", &business, json!({"recipient_id": "m2", "content": "x", "idempotency_key": "k9"}))
        .await;
    assert_eq!(fixed.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn concurrent_repeats_wait_for_the_first_and_get_its_answer() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let body = json!({"recipient_id": "m1", "content": "race", "idempotency_key": "same"});
    let requests = (0..8).map(|_| server.post("/v1/messages", &business, body.clone()));
    let answers = futures::future::join_all(requests).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
        assert_eq!(answer.bytes, answers[0].bytes);
    }
    assert_eq!(server.get("/v1/one-way-messages", &mobile).await.json["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn senders_are_rate_limited_and_refused_requests_do_not_count() {
    // Req 5.5; API.md "Rate limit".
    let config = IngestConfig { rate_limit_per_minute: 3, ..Default::default() };
    let server = Server::start_with(config).await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let ok = json!({"recipient_id": "m1", "content": "x", "idempotency_key": "first"});
    assert_eq!(server.post("/v1/messages", &business, ok.clone()).await.status, StatusCode::ACCEPTED);
    // Refused requests (400, 403, 404) give their permit back.
    assert_eq!(
        server.post("/v1/messages", &business, json!({"recipient_id": "m1", "content": ""})).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.post("/v1/messages", &business, json!({"recipient_id": "ghost", "content": "x"})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.post("/v1/chat/messages", &business, json!({"to": "b1", "content": "x"})).await.status,
        StatusCode::FORBIDDEN
    );
    // One-way and chat share the limit.
    server.chat(&business, "m1", "two").await;
    server.chat(&mobile, "b1", "other sender").await;
    server.one_way(&business, "m1", "three").await;
    let limited = server.post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "four"})).await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry_after = limited.retry_after().expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // 429 comes before 400 (and before 404).
    let malformed = server.post_raw("/v1/messages", &business, "application/json", "{").await;
    assert_eq!(malformed.status, StatusCode::TOO_MANY_REQUESTS);
    let unknown = server.post("/v1/messages", &business, json!({"recipient_id": "ghost", "content": "x"})).await;
    assert_eq!(unknown.status, StatusCode::TOO_MANY_REQUESTS);
    // Repeats do not count: the answered request is replayed even now.
    let repeat = server.post("/v1/messages", &business, ok).await;
    assert_eq!(repeat.status, StatusCode::ACCEPTED);
    // Other senders have their own window.
    server.chat(&mobile, "b1", "still fine").await;
}

#[tokio::test]
async fn a_deep_backlog_refuses_low_and_normal_before_high() {
    // Req 5.4; API.md: 503 overloaded with Retry-After, high priority last.
    let config = IngestConfig { backlog_limit: 5, ..Default::default() };
    let server = Server::start_with(config).await;
    let business = server.business("b1").await;
    server.mobile("m1").await;
    let filler = |n: usize| (0..n).map(|i| Record { key: format!("k{i}"), value: b"{}".to_vec() }).collect::<Vec<_>>();
    server.backends.log.append(topics::MESSAGES_LOW, filler(6)).await.unwrap();
    for priority in ["low", "normal"] {
        let answer = server
            .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "x", "priority": priority}))
            .await;
        assert_eq!((answer.status, answer.code()), (StatusCode::SERVICE_UNAVAILABLE, "overloaded"), "{priority}");
        assert!(answer.retry_after().is_some_and(|s| s >= 1));
    }
    let chat = server.post("/v1/chat/messages", &business, json!({"to": "m1", "content": "x"})).await;
    assert_eq!(chat.status, StatusCode::SERVICE_UNAVAILABLE);
    let high =
        server.post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "x", "priority": "high"})).await;
    assert_eq!(high.status, StatusCode::ACCEPTED);
    // 6 + 1 accepted = 7; above 2 × 5 high is refused too.
    server.backends.log.append(topics::MESSAGES_NORMAL, filler(4)).await.unwrap();
    let high =
        server.post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "x", "priority": "high"})).await;
    assert_eq!(high.status, StatusCode::SERVICE_UNAVAILABLE);
    let broadcast = server
        .post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1"], "content": "x", "priority": "high"}))
        .await;
    assert_eq!((broadcast.status, broadcast.code()), (StatusCode::SERVICE_UNAVAILABLE, "overloaded"));
    // Refused sends did not count against the rate limit and left nothing behind.
    assert_eq!(server.get("/v1/one-way-messages", &business).await.json["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn broadcasts_are_stored_and_logged_once() {
    // Req 5.1; API.md "Broadcasts".
    let server = Server::start().await;
    let business = server.user("b1", "business", &["send"], false).await;
    let mobiles = server.many_mobiles("m", 3).await;
    let before = backlog(&server, topics::MESSAGES_LOW).await;
    let answer = server
        .post("/v1/broadcasts", &business, json!({"recipient_ids": mobiles, "content": "sale", "priority": "low"}))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["total"], 3);
    let id = answer.json["id"].as_str().unwrap().to_owned();
    assert!(answer.json["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(backlog(&server, topics::MESSAGES_LOW).await, before + 1);
    let mut consumer = server.backends.log.subscribe("test", &[topics::MESSAGES_LOW]).await.unwrap();
    let records = consumer.poll(10, std::time::Duration::from_secs(1)).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, id);
    match decode::<MessageEnvelope>(&records[0].value).unwrap() {
        MessageEnvelope::Broadcast { broadcast, .. } => {
            assert_eq!(broadcast.recipient_ids, mobiles);
            assert_eq!(broadcast.priority, Priority::Low);
        }
        other => panic!("expected a broadcast, got {other:?}"),
    }

    // Counts add up to the total from the 202 on.
    let view = server.get(&format!("/v1/broadcasts/{id}"), &business).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.json);
    assert_eq!(view.json["total"], 3);
    let counts = &view.json["counts"];
    let sum: u64 = ["pending", "sent", "delivered", "read", "failed"].iter().map(|s| counts[s].as_u64().unwrap()).sum();
    assert_eq!(sum, 3);
    assert_eq!(server.get(&format!("/v1/broadcasts/{id}"), ADMIN).await.status, StatusCode::OK);
}

#[tokio::test]
async fn broadcast_requests_are_validated() {
    let server = Server::start_with(IngestConfig { broadcast_recipients_per_hour: 5, ..Default::default() }).await;
    let business = server.user("b1", "business", &["send"], false).await;
    let chat_only = server.user("b2", "business", &["chat"], false).await;
    let mobile = server.mobile("m1").await;
    server.mobile("m2").await;
    server.business("b3").await;

    let empty = server.post("/v1/broadcasts", &business, json!({"recipient_ids": [], "content": "x"})).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let duplicates =
        server.post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1", "m2", "m1"], "content": "x"})).await;
    assert_eq!(duplicates.status, StatusCode::BAD_REQUEST);
    assert_eq!(duplicates.json["error"]["details"]["duplicate_ids"], json!(["m1"]));
    let unknown =
        server.post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1", "ghost", "b3"], "content": "x"})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json["error"]["details"]["unknown_ids"], json!(["ghost", "b3"]));
    let wrong = server.post("/v1/broadcasts", &business, json!({"recipient_ids": "m1", "content": "x"})).await;
    assert_eq!(wrong.json["error"]["details"]["field"], "recipient_ids");
    let malformed = server.post_raw("/v1/broadcasts", &business, "application/json", "{\"recipient_ids\": [").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        server.post("/v1/broadcasts", &chat_only, json!({"recipient_ids": ["m1"], "content": "x"})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.post("/v1/broadcasts", &mobile, json!({"recipient_ids": ["m1"], "content": "x"})).await.status,
        StatusCode::FORBIDDEN
    );
    let anonymous =
        server.call(Method::POST, "/v1/broadcasts", None, Some(json!({"recipient_ids": ["m1"], "content": "x"}))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // The default broadcast body limit is 8 MiB.
    let too_big =
        server.post_raw("/v1/broadcasts", &business, "application/json", vec![b' '; 8 * 1024 * 1024 + 1]).await;
    assert_eq!((too_big.status, too_big.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    // Idempotent replay and conflict.
    let body = json!({"recipient_ids": ["m1", "m2"], "content": "x", "idempotency_key": "b-1"});
    let first = server.post("/v1/broadcasts", &business, body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(server.post("/v1/broadcasts", &business, body).await.bytes, first.bytes);
    let reordered = server
        .post("/v1/broadcasts", &business, json!({"recipient_ids": ["m2"], "content": "x", "idempotency_key": "b-1"}))
        .await;
    assert_eq!(reordered.status, StatusCode::CONFLICT);

    // The hourly recipient quota (5 here): 2 used, 3 more fit, then 429.
    assert_eq!(
        server.post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1", "m2"], "content": "y"})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        server.post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1"], "content": "z"})).await.status,
        StatusCode::ACCEPTED
    );
    let over = server.post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1"], "content": "w"})).await;
    assert_eq!((over.status, over.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(over.retry_after().is_some_and(|s| (1..=60).contains(&s)));
    // ...which does not stop one-way messages.
    server.one_way(&business, "m1", "still allowed").await;
}

#[tokio::test]
async fn broadcast_bodies_may_exceed_the_normal_limit_up_to_their_own() {
    let config = IngestConfig { max_broadcast_body_bytes: 256 * 1024, ..Default::default() };
    let server = Server::start_with(config).await;
    let business = server.user("b1", "business", &["send"], false).await;
    // 1,200 ids of 60 bytes: a body well over 64 KiB.
    let prefix = "mobile-user-with-a-rather-long-identifier-padding-pad-";
    let mobiles = server.many_mobiles(prefix, 1200).await;
    let body = json!({"recipient_ids": mobiles, "content": "big"});
    assert!(serde_json::to_vec(&body).unwrap().len() > 64 * 1024);
    let answer = server.post("/v1/broadcasts", &business, body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["total"], 1200);
    let too_big = server.post_raw("/v1/broadcasts", &business, "application/json", vec![b' '; 256 * 1024 + 1]).await;
    assert_eq!((too_big.status, too_big.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
}

#[tokio::test]
async fn broadcast_reads_are_for_the_sender_and_admins() {
    let server = Server::start().await;
    let business = server.user("b1", "business", &["send"], false).await;
    let other = server.user("b2", "business", &["send"], false).await;
    let mobile = server.mobile("m1").await;
    let mobiles = server.many_mobiles("r", 7).await;
    let answer = server.post("/v1/broadcasts", &business, json!({"recipient_ids": mobiles, "content": "x"})).await;
    let id = answer.json["id"].as_str().unwrap().to_owned();

    let walked = server.walk(&format!("/v1/broadcasts/{id}/messages"), &business, 3).await;
    let recipients: Vec<&str> = walked.iter().map(|item| item["recipient_id"].as_str().unwrap()).collect();
    assert_eq!(recipients, mobiles.iter().map(String::as_str).collect::<Vec<_>>());
    let message_ids: Vec<&str> = walked.iter().map(|item| item["message_id"].as_str().unwrap()).collect();
    let mut sorted = message_ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7);
    assert!(walked.iter().all(|item| item["status"] == "sent"));

    for path in [format!("/v1/broadcasts/{id}"), format!("/v1/broadcasts/{id}/messages")] {
        assert_eq!(server.get(&path, &other).await.status, StatusCode::FORBIDDEN);
        assert_eq!(server.get(&path, &mobile).await.status, StatusCode::FORBIDDEN);
        assert_eq!(server.call(Method::GET, &path, None, None).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(server.get(&path, ADMIN).await.status, StatusCode::OK);
    }
    let missing = format!("/v1/broadcasts/{}", esh_common::ids::new_id());
    assert_eq!(server.get(&missing, &business).await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.get(&format!("{missing}/messages"), &business).await.status, StatusCode::NOT_FOUND);
    for query in ["limit=0", "limit=201", "limit=abc", "cursor=made-up"] {
        let answer = server.get(&format!("/v1/broadcasts/{id}/messages?{query}"), &business).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
    }
}
