//! Kafka-native ingest on the embedded log: `SendRequest` records produced to
//! `esh.ingest.v1` become messages exactly as over HTTP (Req 5.1, 1.10), their outcomes
//! arrive on `esh.status.v1` keyed by the request's key, and bad records go to
//! `esh.dead-letters.v1` without blocking their partition.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use esh_backends::log::{Consumed, Record};
use esh_common::records::{self, IngestOutcome, LogRecord, StatusRecord};
use esh_common::{topics, DeadLetter};
use esh_ingest::log_ingest::{self, LogIngestConfig};
use esh_ingest::IngestConfig;
use esh_schemas::{Priority, SendKind, SendRequest};
use support::Server;
use tokio_util::sync::CancellationToken;

/// A server whose `esh.ingest.v1` consumer lets principal `crm` act for `biz_1` only.
async fn start(config: IngestConfig) -> (Server, CancellationToken) {
    let server = Server::start_with(config).await;
    let consumer = LogIngestConfig { integrators: "crm=biz_1".parse().expect("integrators"), ..LogIngestConfig::default() };
    let stop = CancellationToken::new();
    tokio::spawn(log_ingest::run(server.ingest.clone(), consumer, stop.clone()));
    (server, stop)
}

fn one_way(request_id: &str, sender: &str, recipient: &str, content: &str) -> SendRequest {
    SendRequest {
        request_id: request_id.to_owned(),
        principal: "crm".to_owned(),
        sender_id: sender.to_owned(),
        kind: SendKind::OneWay,
        recipient_ids: vec![recipient.to_owned()],
        content: content.to_owned(),
        priority: None,
        media_ids: Vec::new(),
        idempotency_key: None,
    }
}

async fn produce(server: &Server, requests: &[SendRequest]) {
    let records = requests
        .iter()
        .map(|request| Record { key: request.sender_id.clone(), value: esh_schemas::encode(request).expect("encode") })
        .collect();
    server.backends.log.append(topics::INGEST, records).await.expect("produce");
}

async fn produce_raw(server: &Server, key: &str, value: &[u8]) {
    let record = Record { key: key.to_owned(), value: value.to_vec() };
    server.backends.log.append(topics::INGEST, vec![record]).await.expect("produce");
}

/// Reads `topic` from the start (a group of its own) until `count` records decoded as `T`.
async fn read<T: LogRecord>(server: &Server, topic: &str, count: usize) -> Vec<(Consumed, T)> {
    let group = format!("test-{}", ulid::Ulid::new());
    let mut consumer = server.backends.log.subscribe(&group, &[topic]).await.expect("subscribe");
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.len() < count {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} records on {topic}", found.len());
        for record in consumer.poll(100, Duration::from_millis(100)).await.expect("poll") {
            if let Ok(value) = records::decode::<T>(&record.value) {
                found.push((record, value));
            }
        }
    }
    found
}

/// The first `count` ingest outcomes on the status topic, in log order.
async fn outcome_list(server: &Server, count: usize) -> Vec<IngestOutcome> {
    let group = format!("test-{}", ulid::Ulid::new());
    let mut consumer = server.backends.log.subscribe(&group, &[topics::STATUS]).await.expect("subscribe");
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.len() < count {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} outcomes", found.len());
        for record in consumer.poll(100, Duration::from_millis(100)).await.expect("poll") {
            if let Ok(StatusRecord::Outcome(outcome)) = records::decode::<StatusRecord>(&record.value) {
                assert_eq!(record.key, outcome.key, "an outcome is keyed by the request's key");
                found.push(outcome);
            }
        }
    }
    found
}

async fn outcomes(server: &Server, count: usize) -> HashMap<String, IngestOutcome> {
    outcome_list(server, count).await.into_iter().map(|outcome| (outcome.key.clone(), outcome)).collect()
}

#[tokio::test]
async fn an_accepted_request_becomes_a_message_as_over_http() {
    let (server, _stop) = start(IngestConfig::default()).await;
    let business = server.business("biz_1").await;
    server.mobile("mob_1").await;
    let mut request = one_way("req-1", "biz_1", "mob_1", "from kafka");
    request.priority = Some(Priority::High);
    produce(&server, &[request]).await;

    let outcome = outcomes(&server, 1).await.remove("req-1").expect("outcome of req-1");
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.sender_id, "biz_1");
    let id = outcome.message_id.expect("message id");
    let message = server.get(&format!("/v1/messages/{id}"), &business).await;
    assert_eq!(message.status, 200);
    assert_eq!(message.json["content"], "from kafka");
    assert_eq!(message.json["priority"], "high");
    assert_eq!(message.json["type"], "one_way");
}

#[tokio::test]
async fn a_request_read_twice_makes_one_message() {
    // Req 4.3: the request id is the idempotency key when the request has none, so a
    // record produced (or read) twice gets the answer of the first.
    let (server, _stop) = start(IngestConfig::default()).await;
    server.business("biz_1").await;
    server.mobile("mob_1").await;
    let request = one_way("req-twice", "biz_1", "mob_1", "once");
    produce(&server, &[request.clone(), request]).await;

    let both = outcome_list(&server, 2).await;
    let ids: Vec<_> = both.iter().map(|outcome| outcome.message_id.clone().expect("accepted")).collect();
    assert_eq!(ids[0], ids[1], "both readings answer the same message");
}

#[tokio::test]
async fn refusals_answer_the_http_code_and_go_to_dead_letters() {
    let (server, _stop) = start(IngestConfig::default()).await;
    server.business("biz_1").await;
    server.business("biz_2").await;
    server.mobile("mob_1").await;
    server.user("mob_unverified", "mobile", &[], false).await;
    // Req 1.9: chat needs a verified mobile user.
    let mut chat_to_unverified = one_way("req-chat", "biz_1", "mob_unverified", "hi");
    chat_to_unverified.kind = SendKind::Chat;
    let mut two_recipients = one_way("req-two", "biz_1", "mob_1", "hi");
    two_recipients.recipient_ids.push("mob_2".to_owned());
    let requests = [
        one_way("req-empty", "biz_1", "mob_1", ""),
        one_way("req-other-sender", "biz_2", "mob_1", "not crm's to send"),
        SendRequest { principal: "erp".to_owned(), ..one_way("req-erp", "biz_1", "mob_1", "unknown principal") },
        one_way("req-no-user", "biz_1", "ghost", "no such recipient"),
        chat_to_unverified,
        two_recipients,
    ];
    produce(&server, &requests).await;

    let outcomes = outcomes(&server, requests.len()).await;
    let code = |key: &str| outcomes[key].error.as_ref().map(|error| error.code.clone()).unwrap_or_default();
    assert_eq!(code("req-empty"), "invalid_request");
    assert_eq!(code("req-other-sender"), "forbidden");
    assert_eq!(code("req-erp"), "forbidden");
    assert_eq!(code("req-no-user"), "not_found");
    assert_eq!(code("req-chat"), "forbidden");
    assert_eq!(code("req-two"), "invalid_request");
    assert!(outcomes.values().all(|outcome| outcome.message_id.is_none()));

    let dead = read::<DeadLetter>(&server, topics::DEAD_LETTERS, requests.len()).await;
    let dead_keys: Vec<_> = dead.iter().map(|(record, _)| record.key.as_str()).collect();
    for request in &requests {
        assert!(dead_keys.contains(&request.request_id.as_str()), "{} dead-lettered", request.request_id);
    }
}

#[tokio::test]
async fn an_undecodable_record_is_dead_lettered_and_does_not_block_its_partition() {
    let (server, _stop) = start(IngestConfig::default()).await;
    server.business("biz_1").await;
    server.mobile("mob_1").await;
    produce_raw(&server, "biz_1", b"\x00\x00\x00\x00\x2anot a send request").await;
    produce(&server, &[one_way("req-after", "biz_1", "mob_1", "after the bad one")]).await;

    let outcome = outcomes(&server, 1).await.remove("req-after").expect("the next record is sent");
    assert!(outcome.message_id.is_some());
    let dead = read::<DeadLetter>(&server, topics::DEAD_LETTERS, 1).await;
    assert!(dead[0].1.error.contains("undecodable"), "{}", dead[0].1.error);
}

#[tokio::test]
async fn a_sender_over_its_rate_limit_is_held_back_not_refused() {
    // Req 5.5: the limit applies as over HTTP; a Kafka producer is slowed down to it.
    let config = IngestConfig { rate_limit_per_minute: 2, ..IngestConfig::default() };
    let (server, _stop) = start(config).await;
    server.business("biz_1").await;
    server.mobile("mob_1").await;
    let requests: Vec<_> = (0..3).map(|n| one_way(&format!("req-{n}"), "biz_1", "mob_1", "burst")).collect();
    produce(&server, &requests).await;

    // The two accepted ones are answered while the third waits for the window.
    let accepted = outcome_list(&server, 2).await;
    assert!(accepted.iter().all(|outcome| outcome.message_id.is_some()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status_records: u64 = server.backends.log.end_offsets(topics::STATUS).await.expect("offsets").iter().sum();
    assert_eq!(status_records, 2, "the third send waits for the window, it is not refused");
    let dead = server.backends.log.end_offsets(topics::DEAD_LETTERS).await.expect("offsets");
    assert_eq!(dead.iter().sum::<u64>(), 0, "nothing was dead-lettered");
}
