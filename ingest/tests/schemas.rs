//! The schema-registry endpoints (`/v1/schemas/...`) and the records they describe: what a
//! Kafka-native integrator's registry client asks, and records produced by the platform
//! decoded with nothing but the schema fetched from them (apache-avro used directly, as an
//! independent client would).

mod support;

use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use esh_backends::Consumed;
use esh_common::records::DeliveryAttempt;
use esh_common::{topics, Attempt, Channel, Millis};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::*;

async fn get(server: &Server, path: &str) -> Answer {
    server.call(Method::GET, path, None, None).await
}

/// Everything on `topic` so far, read by a group of its own.
async fn records(server: &Server, topic: &str, at_least: usize) -> Vec<Consumed> {
    let group = format!("test-{}", esh_common::ids::new_id());
    let mut consumer = server
        .backends
        .log
        .subscribe(&group, &[topic])
        .await
        .unwrap();
    let mut found = Vec::new();
    for _ in 0..50 {
        found.extend(
            consumer
                .poll(100, Duration::from_millis(100))
                .await
                .unwrap(),
        );
        if found.len() >= at_least {
            break;
        }
    }
    found
}

/// Decodes a platform record as a registry client does: the id from bytes 1..5, the schema
/// from `GET /v1/schemas/ids/{id}`, then the Avro datum.
async fn decode_as_integrator(server: &Server, bytes: &[u8]) -> Avro {
    assert_eq!(bytes[0], 0, "magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
    let answer = get(server, &format!("/v1/schemas/ids/{id}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let schema = Schema::parse_str(answer.json["schema"].as_str().unwrap()).unwrap();
    let mut datum = &bytes[5..];
    let value = apache_avro::from_avro_datum(&schema, &mut datum, None).unwrap();
    assert!(datum.is_empty(), "one datum per record");
    value
}

/// The field `name` of a record value (unions unwrapped).
fn field<'a>(value: &'a Avro, name: &str) -> &'a Avro {
    let value = match value {
        Avro::Union(_, inner) => inner,
        other => other,
    };
    let Avro::Record(fields) = value else {
        panic!("not a record: {value:?}")
    };
    match &fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .1
    {
        Avro::Union(_, inner) => inner,
        other => other,
    }
}

#[tokio::test]
async fn subjects_list_one_value_subject_per_topic() {
    let server = Server::start().await;
    let answer = get(&server, "/v1/schemas/subjects").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json,
        json!([
            "esh.messages.high-value",
            "esh.messages.normal-value",
            "esh.messages.low-value",
            "esh.status.v1-value",
            "esh.push.v1-value",
            "esh.dead-letters.v1-value",
            "esh.ingest.v1-value"
        ])
    );
    assert!(answer.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
}

#[tokio::test]
async fn versions_and_latest_answer_like_a_schema_registry() {
    let server = Server::start().await;
    let versions = get(&server, "/v1/schemas/subjects/esh.status.v1-value/versions").await;
    assert_eq!((versions.status, versions.json.clone()), (StatusCode::OK, json!([1, 2])));

    let latest = get(&server, "/v1/schemas/subjects/esh.status.v1-value/versions/latest").await;
    assert_eq!(latest.status, StatusCode::OK);
    assert_eq!(latest.json["subject"], "esh.status.v1-value");
    assert_eq!(latest.json["version"], 2);
    assert_eq!(latest.json["id"], 6);
    // The schema is a JSON document in a string: the union of status events, outcomes and
    // (since version 2) delivery attempts.
    let names = |answer: &Answer| -> Vec<String> {
        let schema: serde_json::Value = serde_json::from_str(answer.json["schema"].as_str().unwrap()).unwrap();
        schema.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&latest), ["StatusEvent", "IngestOutcome", "DeliveryAttempt"]);
    assert_eq!(get(&server, "/v1/schemas/subjects/esh.status.v1-value/versions/2").await.json, latest.json);
    // Version 1 is still served, under its own id.
    let first = get(&server, "/v1/schemas/subjects/esh.status.v1-value/versions/1").await;
    assert_eq!((first.json["version"].clone(), first.json["id"].clone()), (json!(1), json!(2)));
    assert_eq!(names(&first), ["StatusEvent", "IngestOutcome"]);
    assert_eq!(get(&server, "/v1/schemas/ids/2").await.json["schema"], first.json["schema"]);

    // The same schema under each message topic's subject, with one id.
    for subject in [
        "esh.messages.high-value",
        "esh.messages.normal-value",
        "esh.messages.low-value",
    ] {
        let answer = get(
            &server,
            &format!("/v1/schemas/subjects/{subject}/versions/latest"),
        )
        .await;
        assert_eq!(
            (answer.status, answer.json["id"].clone()),
            (StatusCode::OK, json!(1)),
            "{subject}"
        );
    }
    let by_id = get(&server, "/v1/schemas/ids/1").await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(
        by_id.json.as_object().unwrap().len(),
        1,
        "only `schema`: {}",
        by_id.json
    );
    assert_eq!(
        by_id.json["schema"],
        get(
            &server,
            "/v1/schemas/subjects/esh.messages.low-value/versions/1"
        )
        .await
        .json["schema"]
    );

    // Asking again answers the same (the table never changes under a running server).
    assert_eq!(get(&server, "/v1/schemas/ids/1").await.json, by_id.json);
}

#[tokio::test]
async fn unknown_or_malformed_ids_subjects_and_versions_are_refused_in_the_error_body() {
    let server = Server::start().await;
    let long = "x".repeat(10_000);
    for (path, status, code) in [
        (
            "/v1/schemas/ids/0".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/schemas/ids/4294967295".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/schemas/ids/4294967296".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/schemas/ids/-1".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/schemas/ids/one".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/schemas/subjects/esh.status.v1/versions".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/schemas/subjects/nope-value/versions/latest".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/schemas/subjects/nope-value/versions/1".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/schemas/subjects/esh.push.v1-value/versions/3".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/schemas/subjects/esh.push.v1-value/versions/newest".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/schemas/subjects/%FF/versions".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("/v1/schemas/subjects/{long}/versions"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/v1/schemas/ids/{long}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let answer = get(&server, &path).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{}: {}",
            &path[..path.len().min(80)],
            answer.json
        );
        assert!(answer.json["error"]["message"].is_string());
    }
    // Read-only: registering a schema is not offered.
    let post = server
        .call(
            Method::POST,
            "/v1/schemas/subjects/esh.status.v1-value/versions",
            None,
            Some(json!({"schema": "\"string\""})),
        )
        .await;
    assert_eq!(
        (post.status, post.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

/// Public like /v1/openapi.json: no token is needed, and a bad one changes nothing.
#[tokio::test]
async fn the_registry_needs_no_token() {
    let server = Server::start().await;
    for token in [None, Some("not-a-token"), Some(ADMIN)] {
        let answer = server
            .call(Method::GET, "/v1/schemas/ids/2", token, None)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{token:?}");
    }
}

#[tokio::test]
async fn a_record_the_platform_wrote_decodes_with_the_schema_from_the_registry() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let sent = server.one_way(&business, "m1", "hello integrators").await;
    let id = sent["id"].as_str().unwrap().to_owned();

    let found = records(&server, topics::MESSAGES_NORMAL, 1).await;
    let record = found
        .iter()
        .find(|r| r.key == esh_common::one_way_key("b1", "m1"))
        .expect("the send's record");
    let envelope = decode_as_integrator(&server, &record.value).await;
    let message = field(&envelope, "payload");
    assert_eq!(field(message, "id"), &Avro::String(id.clone()));
    assert_eq!(
        field(message, "content"),
        &Avro::String("hello integrators".into())
    );
    assert_eq!(field(message, "status"), &Avro::Enum(1, "sent".into()));
    assert_eq!(field(message, "priority"), &Avro::Enum(1, "normal".into()));

    // Its receipts: esh.status.v1, keyed by the message id, decoded the same way.
    assert_eq!(
        server
            .post_empty(&format!("/v1/messages/{id}/delivered"), &mobile)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let statuses = records(&server, topics::STATUS, 1).await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].key, id);
    let event = decode_as_integrator(&server, &statuses[0].value).await;
    assert!(
        matches!(event, Avro::Union(0, _)),
        "a StatusEvent, the union's first branch"
    );
    assert_eq!(field(&event, "message_id"), &Avro::String(id));
    assert_eq!(field(&event, "status"), &Avro::Enum(2, "delivered".into()));
    assert_eq!(field(&event, "sender_id"), &Avro::String("b1".into()));
}

/// Req 4.7: delivery attempts are status records like any other: keyed by the message id,
/// the third branch of the union, decoded with nothing but the registry's schema; the store
/// projection puts them in the message's timeline.
#[tokio::test]
async fn a_delivery_attempt_decodes_with_the_schema_from_the_registry_and_reaches_the_timeline() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    server.mobile("m1").await;
    let id = server.one_way(&business, "m1", "hi").await["id"].as_str().unwrap().to_owned();
    // What the push stage appends for one device: a retryable answer, then an accepted one.
    let attempt = |attempt: u32, outcome: &str, error: Option<&str>| DeliveryAttempt {
        attempt: Attempt {
            message_id: id.clone(),
            attempt,
            at: Millis(1_700_000_000_000 + i64::from(attempt)),
            channel: Channel::Push,
            outcome: outcome.into(),
            error: error.map(str::to_owned),
        },
        sender_id: "b1".into(),
        recipient_id: "m1".into(),
    };
    let attempts = [attempt(1, "unavailable", Some("android: provider timed out")), attempt(2, "accepted", None)];
    server.status_writer.apply(attempts).await.unwrap();

    let found = records(&server, topics::STATUS, 2).await;
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|r| r.key == id), "keyed by the message id");
    let first = decode_as_integrator(&server, &found[0].value).await;
    assert!(matches!(first, Avro::Union(2, _)), "a DeliveryAttempt, the union's third branch: {first:?}");
    assert_eq!(field(&first, "message_id"), &Avro::String(id.clone()));
    assert_eq!(field(&first, "attempt"), &Avro::Int(1));
    assert_eq!(field(&first, "channel"), &Avro::Enum(1, "push".into()));
    assert_eq!(field(&first, "outcome"), &Avro::String("unavailable".into()));
    assert_eq!(field(&first, "error"), &Avro::String("android: provider timed out".into()));
    assert_eq!(field(&first, "recipient_id"), &Avro::String("m1".into()));
    assert_eq!(field(&first, "sender_id"), &Avro::String("b1".into()));

    // The read waits for the projection to pass the log's end: appended, then listed.
    let timeline = server.get(&format!("/v1/messages/{id}/attempts"), &business).await;
    assert_eq!(
        timeline.json["items"],
        json!([
            {"attempt": 1, "at": "2023-11-14T22:13:20.001Z", "channel": "push", "outcome": "unavailable",
                "error": "android: provider timed out"},
            {"attempt": 2, "at": "2023-11-14T22:13:20.002Z", "channel": "push", "outcome": "accepted"},
        ])
    );
}

/// Every status change of a message is on esh.status.v1, keyed by its id (so on one
/// partition), in the order it was applied: receipts over HTTP, and a dead letter's retry.
#[tokio::test]
async fn status_changes_reach_the_status_topic_in_the_order_they_were_applied() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let id = server.one_way(&business, "m1", "hi").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = server.one_way(&business, "m1", "other").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (message, receipt) in [(&id, "delivered"), (&other, "read"), (&id, "read")] {
        let answer = server
            .post_empty(&format!("/v1/messages/{message}/{receipt}"), &mobile)
            .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
    }
    let found = records(&server, topics::STATUS, 3).await;
    let of = |message: &str| -> Vec<(u32, String)> {
        found
            .iter()
            .filter(|r| r.key == message)
            .map(|r| {
                let event =
                    esh_common::records::decode::<esh_common::records::StatusRecord>(&r.value)
                        .unwrap();
                (
                    r.partition,
                    event.into_status().unwrap().status.as_str().to_owned(),
                )
            })
            .collect()
    };
    let statuses: Vec<String> = of(&id).into_iter().map(|(_, status)| status).collect();
    assert_eq!(statuses, ["delivered", "read"]);
    assert_eq!(of(&other).len(), 1);
    let partitions: std::collections::HashSet<u32> = of(&id)
        .into_iter()
        .map(|(partition, _)| partition)
        .collect();
    assert_eq!(
        partitions.len(),
        1,
        "one key, one partition: the order holds"
    );
    // Offsets within the partition follow the order the changes were made in.
    let offsets: Vec<u64> = found
        .iter()
        .filter(|r| r.key == id)
        .map(|r| r.offset)
        .collect();
    assert!(
        offsets.windows(2).all(|pair| pair[0] < pair[1]),
        "{offsets:?}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_registry_endpoints() {
    let server = Server::start().await;
    let document = get(&server, "/v1/openapi.json").await.json;
    for path in [
        "/v1/schemas/ids/{id}",
        "/v1/schemas/subjects",
        "/v1/schemas/subjects/{subject}/versions",
        "/v1/schemas/subjects/{subject}/versions/{version}",
    ] {
        let operation = &document["paths"][path]["get"];
        assert!(operation.is_object(), "{path} missing");
        assert!(operation.get("security").is_none(), "{path} is public");
    }
    assert_eq!(
        document["paths"]["/v1/schemas/ids/{id}"]["get"]["responses"]["404"]["content"]
            ["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    assert!(document["components"]["schemas"]["SubjectVersionView"].is_object());
}
