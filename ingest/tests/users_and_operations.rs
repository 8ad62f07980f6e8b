//! The user directory, authentication and the operations endpoints over real HTTP.

mod support;

use esh_common::UserKind;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{expired_token, forged_token, Server, ADMIN};

#[tokio::test]
async fn users_are_created_read_and_patched_by_admins() {
    // API.md "Users": defaults, the user object per kind.
    let server = Server::start().await;
    let created = server
        .post(
            "/v1/users",
            ADMIN,
            json!({"id": "acme", "kind": "business", "display_name": "Acme", "permissions": ["send", "send"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert_eq!(created.json["id"], "acme");
    assert_eq!(created.json["kind"], "business");
    assert_eq!(created.json["permissions"], json!(["send"]));
    assert!(created.json.get("verified").is_none());
    let created_at = created.json["created_at"].as_str().unwrap();
    assert!(created_at.ends_with('Z') && created_at.len() == 24, "{created_at}");

    let mobile = server
        .post("/v1/users", ADMIN, json!({"id": "m.1:x-y_z", "kind": "mobile", "display_name": "Mo", "unknown": 1}))
        .await;
    assert_eq!(mobile.status, StatusCode::CREATED);
    assert_eq!(mobile.json["verified"], false);
    assert_eq!(mobile.json["notifications_enabled"], true);
    assert!(mobile.json.get("permissions").is_none());

    let read = server.get("/v1/users/acme", ADMIN).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json, created.json);

    let patched = server
        .call(
            Method::PATCH,
            "/v1/users/acme",
            Some(ADMIN),
            Some(json!({"display_name": "Acme Inc", "permissions": ["chat"]})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.json);
    assert_eq!(patched.json["display_name"], "Acme Inc");
    assert_eq!(patched.json["permissions"], json!(["chat"]));
    assert_eq!(server.get("/v1/users/acme", ADMIN).await.json, patched.json);

    let verified =
        server.call(Method::PATCH, "/v1/users/m.1:x-y_z", Some(ADMIN), Some(json!({"verified": true}))).await;
    assert_eq!(verified.json["verified"], true);
}

#[tokio::test]
async fn user_requests_are_validated_in_order() {
    let server = Server::start().await;
    let mobile = server.mobile("m1").await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"id": "", "kind": "mobile", "display_name": "x"}), "id"),
        (json!({"id": "a b", "kind": "mobile", "display_name": "x"}), "id"),
        (json!({"id": "x".repeat(65), "kind": "mobile", "display_name": "x"}), "id"),
        (json!({"id": "ok", "kind": "robot", "display_name": "x"}), "kind"),
        (json!({"id": "ok", "kind": "mobile", "display_name": ""}), "display_name"),
        (json!({"id": "ok", "kind": "mobile", "display_name": "é".repeat(129)}), "display_name"),
        (json!({"id": "ok", "kind": "mobile"}), "display_name"),
        (json!({"id": 5, "kind": "mobile", "display_name": "x"}), "id"),
        (json!({"id": "ok", "kind": "business", "display_name": "x", "permissions": "send"}), "permissions"),
        (json!({"id": "ok", "kind": "business", "display_name": "x", "permissions": ["fly"]}), "permissions[0]"),
        (json!({"id": "ok", "kind": "mobile", "display_name": "x", "verified": "yes"}), "verified"),
    ];
    for (body, field) in cases {
        let answer = server.post("/v1/users", ADMIN, body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {}", answer.json);
        assert_eq!(answer.code(), "invalid_request");
        assert_eq!(answer.json["error"]["details"]["field"], field, "{body}: {}", answer.json);
    }
    // 128 characters (not bytes) is fine.
    let long =
        server.post("/v1/users", ADMIN, json!({"id": "long", "kind": "mobile", "display_name": "é".repeat(128)})).await;
    assert_eq!(long.status, StatusCode::CREATED);

    let malformed = server.post_raw("/v1/users", ADMIN, "application/json", "{\"id\": ").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.code(), "invalid_request");
    let not_object = server.post_raw("/v1/users", ADMIN, "application/json", "[1,2]").await;
    assert_eq!(not_object.status, StatusCode::BAD_REQUEST);
    let wrong_type =
        server.post_raw("/v1/users", ADMIN, "text/plain", r#"{"id":"t","kind":"mobile","display_name":"t"}"#).await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(wrong_type.code(), "unsupported_media_type");
    let oversized = server.post_raw("/v1/users", ADMIN, "application/json", vec![b' '; 64 * 1024 + 1]).await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(oversized.code(), "payload_too_large");

    // Order: 401 before 400, 400 before 403, 403 before 409.
    let anonymous = server.call(Method::POST, "/v1/users", None, Some(json!({"id": ""}))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let bad_by_user = server.post("/v1/users", &mobile, json!({"id": ""})).await;
    assert_eq!(bad_by_user.status, StatusCode::BAD_REQUEST);
    let by_user = server.post("/v1/users", &mobile, json!({"id": "m1", "kind": "mobile", "display_name": "x"})).await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);
    let duplicate = server.post("/v1/users", ADMIN, json!({"id": "m1", "kind": "business", "display_name": "x"})).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.code(), "conflict");
}

#[tokio::test]
async fn users_read_only_themselves_and_only_admins_patch() {
    let server = Server::start().await;
    let alice = server.mobile("alice").await;
    let bob = server.business("bob").await;
    assert_eq!(server.get("/v1/users/alice", &alice).await.status, StatusCode::OK);
    let other = server.get("/v1/users/alice", &bob).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.code(), "forbidden");
    assert_eq!(server.get("/v1/users/nobody", &bob).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/v1/users/nobody", ADMIN).await.status, StatusCode::NOT_FOUND);

    assert_eq!(server.patch("/v1/users/alice", &alice, json!({"verified": true})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.patch("/v1/users/nobody", ADMIN, json!({"verified": true})).await.status, StatusCode::NOT_FOUND);
    let bad = server.patch("/v1/users/alice", ADMIN, json!({"display_name": ""})).await;
    assert_eq!(
        (bad.status, bad.json["error"]["details"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("display_name"))
    );
    let wrong_type = server.patch("/v1/users/alice", ADMIN, json!({"verified": 1})).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    let malformed = server
        .client
        .patch(format!("{}/v1/users/alice", server.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let oversized = server
        .client
        .patch(format!("{}/v1/users/alice", server.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn tokens_are_issued_by_admins_with_bounded_ttl() {
    let server = Server::start().await;
    server.mobile("m1").await;
    let issued = server.post("/v1/users/m1/tokens", ADMIN, json!({"ttl_s": 120})).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.json);
    let token = issued.json["token"].as_str().unwrap().to_owned();
    let expires_at = esh_common::Millis::parse(issued.json["expires_at"].as_str().unwrap()).unwrap();
    let expected = esh_common::Millis::now().plus_ms(120_000);
    assert!((expires_at.0 - expected.0).abs() < 5_000);
    // The issued token works.
    assert_eq!(server.get("/v1/users/m1", &token).await.status, StatusCode::OK);

    // An empty body means the default ttl (one day).
    let default =
        Server::answer(server.client.post(format!("{}/v1/users/m1/tokens", server.base)).bearer_auth(ADMIN)).await;
    assert_eq!(default.status, StatusCode::CREATED, "{}", default.json);
    let expires_at = esh_common::Millis::parse(default.json["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires_at.0 - esh_common::Millis::now().plus_ms(86_400_000).0).abs() < 5_000);

    for ttl in [json!(59), json!(2_592_001), json!("60"), json!(-1)] {
        let answer = server.post("/v1/users/m1/tokens", ADMIN, json!({"ttl_s": ttl})).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{ttl}");
        assert_eq!(answer.json["error"]["details"]["field"], "ttl_s");
    }
    assert_eq!(server.post("/v1/users/nobody/tokens", ADMIN, json!({})).await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.post("/v1/users/m1/tokens", &token, json!({})).await.status, StatusCode::FORBIDDEN);
    let malformed = server.post_raw("/v1/users/m1/tokens", ADMIN, "application/json", "{ttl").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let oversized = server.post_raw("/v1/users/m1/tokens", ADMIN, "application/json", vec![b' '; 65 * 1024]).await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn missing_expired_forged_and_orphaned_tokens_are_401() {
    let server = Server::start().await;
    let token = server.mobile("m1").await;
    let paths = ["/v1/users/m1", "/v1/one-way-messages", "/v1/conversations", "/v1/admin/dead-letters"];
    for path in paths {
        for bad in [
            None,
            Some(expired_token("m1", "mobile")),
            Some(forged_token("m1", UserKind::Mobile)),
            Some(forged_token("admin", UserKind::Admin)),
            Some("garbage".to_owned()),
            Some(format!("{ADMIN}x")),
        ] {
            let answer = server.call(Method::GET, path, bad.as_deref(), None).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path} {bad:?}");
            assert_eq!(answer.code(), "unauthenticated");
        }
    }
    // Every protected route checks the token first, before the body and the ids.
    let id = esh_common::ids::new_id();
    let routes = [
        (Method::POST, "/v1/users".to_owned()),
        (Method::PATCH, "/v1/users/m1".to_owned()),
        (Method::POST, "/v1/users/m1/tokens".to_owned()),
        (Method::POST, "/v1/messages".to_owned()),
        (Method::POST, "/v1/broadcasts".to_owned()),
        (Method::GET, format!("/v1/broadcasts/{id}")),
        (Method::GET, format!("/v1/broadcasts/{id}/messages")),
        (Method::POST, "/v1/chat/messages".to_owned()),
        (Method::GET, format!("/v1/messages/{id}")),
        (Method::POST, format!("/v1/messages/{id}/delivered")),
        (Method::POST, format!("/v1/messages/{id}/read")),
        (Method::GET, format!("/v1/messages/{id}/attempts")),
        (Method::GET, format!("/v1/conversations/{id}/messages")),
        (Method::POST, format!("/v1/admin/dead-letters/{id}/retry")),
    ];
    for (method, path) in routes {
        for bad in [None, Some(expired_token("m1", "mobile")), Some(forged_token("m1", UserKind::Mobile))] {
            let answer = server.call(method.clone(), &path, bad.as_deref(), Some(json!({"bad": true}))).await;
            assert_eq!(
                (answer.status, answer.code()),
                (StatusCode::UNAUTHORIZED, "unauthenticated"),
                "{method} {path}"
            );
        }
    }
    let basic =
        Server::answer(server.client.get(format!("{}/v1/users/m1", server.base)).basic_auth("m1", Some("x"))).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    // A valid token of a user that does not exist (any more) is refused.
    let orphan = server.keys.issue("ghost", UserKind::Admin, 60).unwrap().0;
    assert_eq!(server.get("/v1/users/m1", &orphan).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.get("/v1/users/m1", &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_kind_users_act_as_admin_and_permission_changes_apply_at_once() {
    let server = Server::start().await;
    let root = server.user("root", "admin", &[], false).await;
    let created = server
        .post("/v1/users", &root, json!({"id": "b1", "kind": "business", "display_name": "B", "permissions": ["send"]}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let business = server.keys.issue("b1", UserKind::Business, 3600).unwrap().0;
    let mobile = server.mobile("m1").await;
    server.one_way(&business, "m1", "allowed").await;
    // Revoke `send`: the same token is refused right away (Req 1.10, API.md "within 1 s").
    let patched = server.call(Method::PATCH, "/v1/users/b1", Some(&root), Some(json!({"permissions": []}))).await;
    assert_eq!(patched.status, StatusCode::OK);
    let refused = server.post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "no"})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/v1/users/b1", &mobile).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let server = Server::start().await;
    let missing = server.get("/v1/nothing-here", ADMIN).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "not_found");
    let wrong_method = server.call(Method::DELETE, "/v1/users", Some(ADMIN), None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.code(), "method_not_allowed");
    assert!(wrong_method.headers.get("allow").is_some());
    let wrong_method = server.call(Method::PUT, "/v1/messages/x/read", Some(ADMIN), None).await;
    assert_eq!(wrong_method.code(), "method_not_allowed");
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let server = Server::start().await;
    let live = server.call(Method::GET, "/health/live", None, None).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = server.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.json);
    assert_eq!(ready.json["status"], "ok");
    for check in ["store", "log", "cache"] {
        assert_eq!(ready.json["checks"][check]["ok"], true, "{check}");
        assert!(ready.json["checks"][check]["latency_ms"].is_u64());
    }

    server.get("/v1/users/nobody", ADMIN).await;
    // Nothing routes in these tests: a low-priority send stays in the router's backlog.
    let business = server.business("metrics-b").await;
    server.mobile("metrics-m").await;
    let sent = server
        .post("/v1/messages", &business, serde_json::json!({"recipient_id": "metrics-m", "content": "x", "priority": "low"}))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
    let metrics = server.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.bytes).unwrap();
    // The recorder is the process's: other tests of this binary count into it too.
    let counted = text
        .lines()
        .find_map(|line| line.strip_prefix(r#"esh_ingest_requests_total{route="/v1/users/{id}",code="404"} "#))
        .and_then(|value| value.parse::<u64>().ok());
    assert!(counted.is_some_and(|count| count >= 1), "{text}");
    assert!(text.contains("# TYPE esh_ingest_request_duration_seconds histogram"), "{text}");
    assert!(text.contains(r#"esh_ingest_request_duration_seconds_bucket{route="/v1/users/{id}",le="+Inf"}"#), "{text}");
    // Every stage's series is there from the start: the router lag of each priority (read
    // from the log at the scrape), the projection lag, open sockets and dead letters.
    for (priority, lag) in [("high", 0), ("normal", 0), ("low", 1)] {
        assert!(text.contains(&format!(r#"esh_router_lag_records{{priority="{priority}"}} {lag}"#)), "{text}");
        let consumer = format!(r#"esh_log_consumer_lag_records{{group="router",topic="esh.messages.{priority}"}} {lag}"#);
        assert!(text.contains(&consumer), "Req 5.4: {consumer} missing: {text}");
    }
    // Every other group's lag too (the store projection and the notifier).
    for (group, topic) in [("store", "esh.status.v1"), ("notifier", "esh.status.v1"), ("store", "esh.messages.low")] {
        let series = format!(r#"esh_log_consumer_lag_records{{group="{group}",topic="{topic}"}} "#);
        assert!(text.lines().any(|line| line.starts_with(&series)), "{series} missing: {text}");
    }
    assert!(text.lines().any(|line| line.starts_with(r#"esh_ingest_messages_accepted_total{kind="one_way"} "#)), "{text}");
    for name in ["esh_store_projection_lag_records", "esh_deliverer_open_sockets", "esh_deliverer_dead_letters_total"] {
        assert!(text.lines().any(|line| line.starts_with(&format!("{name} "))), "{name} missing: {text}");
    }
    assert!(metrics.headers["content-type"].to_str().unwrap().starts_with("text/plain"));

    let document = server.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(document.status, StatusCode::OK);
    assert!(document.json["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document.json["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/users", "post"),
        ("/v1/users/{id}", "patch"),
        ("/v1/users/{id}", "get"),
        ("/v1/users/{id}/tokens", "post"),
        ("/v1/messages", "post"),
        ("/v1/broadcasts", "post"),
        ("/v1/broadcasts/{id}", "get"),
        ("/v1/broadcasts/{id}/messages", "get"),
        ("/v1/chat/messages", "post"),
        ("/v1/messages/{id}", "get"),
        ("/v1/messages/{id}/delivered", "post"),
        ("/v1/messages/{id}/read", "post"),
        ("/v1/messages/{id}/attempts", "get"),
        ("/v1/one-way-messages", "get"),
        ("/v1/conversations", "get"),
        ("/v1/conversations/{id}/messages", "get"),
        ("/v1/admin/dead-letters", "get"),
        ("/v1/admin/dead-letters/{message_id}/retry", "post"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/v1/openapi.json", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
    }
    assert!(document.json["components"]["schemas"]["MessageView"].is_object());
    assert!(document.json["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn openapi_document_states_the_constraints_and_statuses_the_server_enforces() {
    let server = Server::start().await;
    let document = server.call(Method::GET, "/v1/openapi.json", None, None).await.json;
    let schemas = &document["components"]["schemas"];
    let create = &schemas["CreateUserRequest"]["properties"];
    assert_eq!(create["id"]["pattern"], "^[A-Za-z0-9_.:-]{1,64}$");
    assert_eq!(create["display_name"]["maxLength"], 128);
    assert_eq!(create["display_name"]["minLength"], 1);
    assert_eq!(schemas["CreateUserRequest"]["required"], serde_json::json!(["id", "kind", "display_name"]));
    let ttl = &schemas["TokenRequest"]["properties"]["ttl_s"];
    assert_eq!((ttl["minimum"].as_u64(), ttl["maximum"].as_u64()), (Some(60), Some(2_592_000)));
    let one_way = &schemas["OneWayRequest"]["properties"];
    assert_eq!((one_way["content"]["minLength"].as_u64(), one_way["content"]["maxLength"].as_u64()), (Some(1), Some(4096)));
    assert_eq!(one_way["idempotency_key"]["maxLength"], 256);
    let recipients = &schemas["BroadcastRequest"]["properties"]["recipient_ids"];
    assert_eq!((recipients["minItems"].as_u64(), recipients["maxItems"].as_u64()), (Some(1), Some(100_000)));

    let paths = document["paths"].as_object().unwrap();
    let limit = paths["/v1/conversations"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "limit")
        .unwrap();
    assert_eq!((limit["schema"]["minimum"].as_u64(), limit["schema"]["maximum"].as_u64()), (Some(1), Some(200)));
    // Every operation behind the bearer scheme documents 401 and the backend failures; every
    // operation with a JSON body documents 413 and 415; error answers carry the error body.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            if operation.get("security").is_some() {
                for status in ["401", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
                let unauthenticated = &responses["401"]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(unauthenticated, "#/components/schemas/ErrorBody", "{method} {path}");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
            }
        }
    }
    let send = &paths["/v1/messages"]["post"]["responses"];
    for status in ["202", "403", "404", "409", "429"] {
        assert!(send.get(status).is_some(), "POST /v1/messages lacks {status}");
    }
    assert!(send["429"]["headers"]["Retry-After"].is_object());
    // The token request body may be empty.
    assert_ne!(paths["/v1/users/{id}/tokens"]["post"]["requestBody"]["required"], true);
}
