//! `POST /v1/messages/batch` over real HTTP (API.md "Batch sends"), and read-your-writes
//! under concurrent load now that the store is a projection of the log.

mod support;

use std::collections::HashSet;

use esh_common::topics;
use esh_ingest::IngestConfig;
use futures::stream::{self, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{Server, ADMIN};

/// Records appended to the message topics so far.
async fn appended(server: &Server) -> u64 {
    let mut total = 0;
    for topic in topics::MESSAGES_BY_PRIORITY {
        total += server.backends.log.end_offsets(topic).await.unwrap().iter().sum::<u64>();
    }
    total
}

fn statuses(answer: &Value) -> Vec<u64> {
    answer["items"].as_array().expect("items").iter().map(|item| item["status"].as_u64().expect("status")).collect()
}

#[tokio::test]
async fn mixed_items_are_judged_alone_in_request_order_req_5_5() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    server.mobile("m1").await;
    server.mobile("m2").await;
    server.business("b2").await;
    let body = json!({"messages": [
        {"recipient_id": "m1", "content": "first"},
        {"recipient_id": "nobody", "content": "unknown recipient"},
        {"recipient_id": "m2", "content": ""},
        {"recipient_id": "b2", "content": "a business is no one-way recipient"},
        {"recipient_id": "m2", "content": 7},
        {"recipient_id": "m1", "content": "second", "priority": "high"},
        {"recipient_id": "m1", "content": "third", "media_ids": ["unknown"]},
    ]});
    let answer = server.post("/v1/messages/batch", &business, body).await;
    assert_eq!(answer.status, StatusCode::MULTI_STATUS, "{}", answer.json);
    assert_eq!(statuses(&answer.json), [202, 404, 400, 403, 400, 202, 400]);
    let items = answer.json["items"].as_array().unwrap();
    assert_eq!(items[1]["error"]["code"], "not_found");
    assert_eq!(items[3]["error"]["code"], "forbidden");
    assert_eq!(items[4]["error"]["details"]["field"], "content");
    // Accepted items are one-way messages like any other, readable by their sender at once.
    for item in [&items[0], &items[5]] {
        let message = &item["message"];
        assert_eq!((message["type"].as_str(), message["status"].as_str()), (Some("one_way"), Some("sent")));
        let read = server.get(&format!("/v1/messages/{}", message["id"].as_str().unwrap()), &business).await;
        assert_eq!(read.json, *message);
    }
    assert_eq!(items[5]["message"]["priority"], "high");
}

#[tokio::test]
async fn a_batch_repeated_with_the_same_keys_gets_the_same_answers_and_creates_nothing() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    server.mobile("m1").await;
    let body = json!({"messages": [
        {"recipient_id": "m1", "content": "a", "idempotency_key": "k-a"},
        {"recipient_id": "m1", "content": "b", "idempotency_key": "k-b"},
        {"recipient_id": "m1", "content": "no key"},
    ]});
    let first = server.post("/v1/messages/batch", &business, body.clone()).await;
    assert_eq!(statuses(&first.json), [202, 202, 202]);
    let before = appended(&server).await;
    let again = server.post("/v1/messages/batch", &business, body).await;
    let items = |answer: &Value| answer["items"].as_array().unwrap().clone();
    assert_eq!(items(&again.json)[..2], items(&first.json)[..2], "keyed items answer as before");
    assert_ne!(items(&again.json)[2]["message"]["id"], items(&first.json)[2]["message"]["id"]);
    assert_eq!(appended(&server).await, before + 1, "only the item without a key made a message");

    // Item keys share the sender's key space with POST /v1/messages.
    let single = server.post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "a", "idempotency_key": "k-a"})).await;
    assert_eq!(single.status, StatusCode::ACCEPTED);
    assert_eq!(single.json, items(&first.json)[0]["message"]);
    let conflict = json!({"messages": [{"recipient_id": "m1", "content": "changed", "idempotency_key": "k-b"}]});
    let answer = server.post("/v1/messages/batch", &business, conflict).await;
    assert_eq!(statuses(&answer.json), [409]);
    assert_eq!(answer.json["items"][0]["error"]["code"], "conflict");
}

#[tokio::test]
async fn whole_request_refusals_are_one_error_not_207() {
    let server = Server::start_with(IngestConfig { rate_limit_per_minute: 2, ..IngestConfig::default() }).await;
    let business = server.business("b1").await;
    let reader = server.user("b2", "business", &[], false).await;
    server.mobile("m1").await;
    let one = json!({"messages": [{"recipient_id": "m1", "content": "hi"}]});
    let unauthenticated = server.call(Method::POST, "/v1/messages/batch", None, Some(one.clone())).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    let admin = server.post("/v1/messages/batch", ADMIN, one.clone()).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    let without_send = server.post("/v1/messages/batch", &reader, one.clone()).await;
    assert_eq!((without_send.status, without_send.code()), (StatusCode::FORBIDDEN, "forbidden"));
    for bad in [json!({"messages": []}), json!({"messages": "no"}), json!({}), json!([1])] {
        let answer = server.post("/v1/messages/batch", &business, bad.clone()).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}");
    }
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"recipient_id": "m1", "content": "x"})).collect();
    let answer = server.post("/v1/messages/batch", &business, json!({"messages": too_many})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // Refused requests counted nothing: two batches pass, the third is over the limit of 2.
    for _ in 0..2 {
        assert_eq!(server.post("/v1/messages/batch", &business, one.clone()).await.status, StatusCode::MULTI_STATUS);
    }
    let limited = server.post("/v1/messages/batch", &business, one).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.retry_after().is_some());
}

#[tokio::test]
async fn items_count_against_the_broadcast_recipient_quota() {
    let config = IngestConfig { broadcast_recipients_per_hour: 5, ..IngestConfig::default() };
    let server = Server::start_with(config).await;
    let business = server.business("b1").await;
    server.mobile("m1").await;
    let items = |count: usize| json!({"messages": vec![json!({"recipient_id": "m1", "content": "x"}); count]});
    assert_eq!(server.post("/v1/messages/batch", &business, items(4)).await.status, StatusCode::MULTI_STATUS);
    let over = server.post("/v1/messages/batch", &business, items(2)).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn each_of_10000_concurrent_202s_is_readable_by_its_sender_at_once_req_10_7() {
    let config = IngestConfig { rate_limit_per_minute: 1_000_000, backlog_limit: 1_000_000, ..IngestConfig::default() };
    let server = Server::start_with(config).await;
    let business = server.business("b1").await;
    for i in 0..10 {
        server.mobile(&format!("m{i}")).await;
    }
    let server = &server;
    let business = business.as_str();
    let read: Vec<String> = stream::iter(0..10_000)
        .map(|i| async move {
            let body = json!({"recipient_id": format!("m{}", i % 10), "content": format!("load {i}")});
            let sent = server.post("/v1/messages", business, body).await;
            assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
            let id = sent.json["id"].as_str().unwrap().to_owned();
            let answer = server.get(&format!("/v1/messages/{id}"), business).await;
            assert_eq!(answer.status, StatusCode::OK, "message {i} not readable right after its 202");
            assert_eq!(answer.json["content"], format!("load {i}"));
            id
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(read.iter().collect::<HashSet<_>>().len(), 10_000);
}
