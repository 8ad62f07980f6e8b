//! Devices and preferences over real HTTP (API.md "Devices and preferences", Req 3.1, 3.6):
//! registration, listing, removal, tokens moving between users, the device limit, and the
//! contract's error bodies for malformed, oversized, unauthorized and duplicate input.

mod support;

use esh_ingest::IngestConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Server, ADMIN};

#[tokio::test]
async fn a_mobile_user_registers_lists_and_removes_devices_req_3_1() {
    let server = Server::start().await;
    let mobile = server.mobile("m1").await;
    let created = server.post("/v1/devices", &mobile, json!({"platform": "android", "token": "fcm:abc/1+2"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert_eq!(created.json["platform"], "android");
    assert_eq!(created.json["token"], "fcm:abc/1+2");
    assert_eq!((created.json["active"].clone(), created.json["failures"].clone()), (json!(true), json!(0)));
    assert!(created.json["created_at"].as_str().unwrap().ends_with('Z'));

    // Duplicate: the caller's own token again is 200 with the same device.
    let again = server.post("/v1/devices", &mobile, json!({"platform": "android", "token": "fcm:abc/1+2"})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json, created.json);

    server.post("/v1/devices", &mobile, json!({"platform": "ios", "token": "a1b2c3"})).await;
    let listed = server.get("/v1/devices", &mobile).await;
    assert_eq!(listed.status, StatusCode::OK);
    let tokens: Vec<&str> =
        listed.json["items"].as_array().unwrap().iter().map(|d| d["token"].as_str().unwrap()).collect();
    assert_eq!(tokens, ["a1b2c3", "fcm:abc/1+2"]);

    // The path token is URL-encoded.
    let removed = server.call(Method::DELETE, "/v1/devices/fcm%3Aabc%2F1%2B2", Some(&mobile), None).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let missing = server.call(Method::DELETE, "/v1/devices/fcm%3Aabc%2F1%2B2", Some(&mobile), None).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));
    // A path that no device token could be (a control character) is held by nobody either.
    let impossible = server.call(Method::DELETE, "/v1/devices/a%0Bb", Some(&mobile), None).await;
    assert_eq!((impossible.status, impossible.code()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(server.get("/v1/devices", &mobile).await.json["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_token_registered_by_another_user_moves_to_them() {
    let server = Server::start().await;
    let (first, second) = (server.mobile("m1").await, server.mobile("m2").await);
    server.post("/v1/devices", &first, json!({"platform": "ios", "token": "shared"})).await;
    let moved = server.post("/v1/devices", &second, json!({"platform": "ios", "token": "shared"})).await;
    assert_eq!(moved.status, StatusCode::CREATED);
    assert_eq!(server.get("/v1/devices", &first).await.json["items"], json!([]));
    let theirs = server.call(Method::DELETE, "/v1/devices/shared", Some(&first), None).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "the first user no longer holds it");
}

#[tokio::test]
async fn a_user_holds_at_most_the_configured_number_of_devices() {
    let server = Server::start_with(IngestConfig { max_devices_per_user: 2, ..IngestConfig::default() }).await;
    let mobile = server.mobile("m1").await;
    for token in ["t1", "t2"] {
        assert_eq!(server.post("/v1/devices", &mobile, json!({"platform": "ios", "token": token})).await.status, 201);
    }
    let refused = server.post("/v1/devices", &mobile, json!({"platform": "ios", "token": "t3"})).await;
    assert_eq!((refused.status, refused.code()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(server.post("/v1/devices", &mobile, json!({"platform": "ios", "token": "t1"})).await.status, 200);
}

#[tokio::test]
async fn malformed_oversized_and_unauthorized_requests_get_the_error_body() {
    let server = Server::start().await;
    let mobile = server.mobile("m1").await;
    let business = server.business("b1").await;
    for body in [
        json!({"platform": "windows", "token": "t"}),
        json!({"platform": "ios"}),
        json!({"platform": "ios", "token": ""}),
        json!({"platform": "ios", "token": "has space"}),
        json!({"platform": "ios", "token": 5}),
        json!({"platform": "ios", "token": "x".repeat(4097)}),
        json!([1]),
    ] {
        let answer = server.post("/v1/devices", &mobile, body.clone()).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
    }
    let oversized = server.post("/v1/devices", &mobile, json!({"platform": "ios", "token": "x".repeat(70_000)})).await;
    assert_eq!((oversized.status, oversized.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let raw = server.post_raw("/v1/devices", &mobile, "text/plain", "platform=ios").await;
    assert_eq!(raw.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let anonymous =
        server.call(Method::POST, "/v1/devices", None, Some(json!({"platform": "ios", "token": "t"}))).await;
    assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    for token in [business.as_str(), ADMIN] {
        let answer = server.post("/v1/devices", token, json!({"platform": "ios", "token": "t"})).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::FORBIDDEN, "forbidden"));
        assert_eq!(server.get("/v1/devices", token).await.status, StatusCode::FORBIDDEN);
        let preferences = server
            .call(Method::PUT, "/v1/me/preferences", Some(token), Some(json!({"notifications_enabled": false})))
            .await;
        assert_eq!(preferences.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(server.call(Method::GET, "/v1/devices", None, None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn preferences_turn_notifications_off_and_on_req_3_6() {
    let server = Server::start().await;
    let mobile = server.mobile("m1").await;
    assert_eq!(server.get("/v1/me/preferences", &mobile).await.json, json!({"notifications_enabled": true}));
    let off = server
        .call(Method::PUT, "/v1/me/preferences", Some(&mobile), Some(json!({"notifications_enabled": false})))
        .await;
    assert_eq!((off.status, off.json.clone()), (StatusCode::OK, json!({"notifications_enabled": false})));
    // Twice is the same answer.
    let again = server
        .call(Method::PUT, "/v1/me/preferences", Some(&mobile), Some(json!({"notifications_enabled": false})))
        .await;
    assert_eq!(again.json, json!({"notifications_enabled": false}));
    assert_eq!(server.get("/v1/users/m1", &mobile).await.json["notifications_enabled"], false);
    let bad = server
        .call(Method::PUT, "/v1/me/preferences", Some(&mobile), Some(json!({"notifications_enabled": "no"})))
        .await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let missing = server.call(Method::PUT, "/v1/me/preferences", Some(&mobile), Some(json!({}))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn readiness_says_push_is_off_without_credentials() {
    let server = Server::start().await;
    let ready = server.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["status"], "ok");
    assert_eq!(ready.json["checks"]["push"]["ok"], false);
    assert!(ready.json["checks"]["push"]["error"].as_str().unwrap().contains("off"));
    let openapi = server.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert!(openapi.json["paths"]["/v1/devices/{token}"]["delete"].is_object());
    assert!(openapi.json["paths"]["/v1/me/preferences"]["put"].is_object());
}
