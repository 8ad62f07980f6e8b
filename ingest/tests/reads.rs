//! Reads, receipts and dead letters over real HTTP: one message, attempts, one-way
//! history, conversations and their messages, pages and cursors.

mod support;

use std::collections::HashSet;

use esh_common::records::StatusEvent;
use esh_common::{Attempt, Channel, Millis, Status, UserKind};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{expired_token, forged_token, ids, Server, ADMIN};

fn id_of(message: &Value) -> String {
    message["id"].as_str().unwrap().to_owned()
}

/// Marks a message failed as the deliverer does after its last retry.
async fn fail(server: &Server, id: &str) {
    server.backends.caught_up().await.unwrap();
    let message = server.backends.store.message(id).await.unwrap().expect("stored message");
    let event = StatusEvent {
        error: Some("no ack".into()),
        attempts: 7,
        ..StatusEvent::of(&message, Status::Failed, Millis::now())
    };
    server.status_writer.apply(vec![event]).await.unwrap();
}

#[tokio::test]
async fn messages_are_read_by_sender_recipient_and_admin_only() {
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let stranger = server.mobile("m2").await;
    let message = server.one_way(&business, "m1", "hi").await;
    let path = format!("/v1/messages/{}", id_of(&message));
    for token in [business.as_str(), mobile.as_str(), ADMIN] {
        let answer = server.get(&path, token).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json, message);
    }
    let forbidden = server.get(&path, &stranger).await;
    assert_eq!((forbidden.status, forbidden.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(
        server.get(&format!("/v1/messages/{}", esh_common::ids::new_id()), ADMIN).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.get("/v1/messages/not-an-id", &business).await.status, StatusCode::NOT_FOUND);
    for token in [None, Some(expired_token("m1", "mobile")), Some(forged_token("m1", UserKind::Mobile))] {
        assert_eq!(server.call(Method::GET, &path, token.as_deref(), None).await.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn receipts_move_the_status_forward_for_the_recipient_only() {
    // Req 9.3, 9.4; API.md: read implies delivered, a receipt that does not move is a 204 no-op.
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let stranger = server.mobile("m2").await;
    let message = server.one_way(&business, "m1", "hi").await;
    let id = id_of(&message);

    assert_eq!(
        server.post_empty(&format!("/v1/messages/{id}/delivered"), &business).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(server.post_empty(&format!("/v1/messages/{id}/read"), &stranger).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.post_empty(&format!("/v1/messages/{id}/read"), ADMIN).await.status, StatusCode::FORBIDDEN);
    let unknown = esh_common::ids::new_id();
    assert_eq!(server.post_empty(&format!("/v1/messages/{unknown}/read"), &mobile).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.call(Method::POST, &format!("/v1/messages/{id}/read"), None, None).await.status,
        StatusCode::UNAUTHORIZED
    );

    let delivered = server.post_empty(&format!("/v1/messages/{id}/delivered"), &mobile).await;
    assert_eq!(delivered.status, StatusCode::NO_CONTENT);
    assert!(delivered.bytes.is_empty());
    assert_eq!(server.get(&format!("/v1/messages/{id}"), &business).await.json["status"], "delivered");
    assert_eq!(server.post_empty(&format!("/v1/messages/{id}/read"), &mobile).await.status, StatusCode::NO_CONTENT);
    let read = server.get(&format!("/v1/messages/{id}"), &business).await;
    assert_eq!(read.json["status"], "read");
    // delivered after read: no-op, still 204, status stays read.
    assert_eq!(
        server.post_empty(&format!("/v1/messages/{id}/delivered"), &mobile).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.get(&format!("/v1/messages/{id}"), &business).await.json["status"], "read");

    // read straight from sent.
    let second = id_of(&server.one_way(&business, "m1", "again").await);
    assert_eq!(server.post_empty(&format!("/v1/messages/{second}/read"), &mobile).await.status, StatusCode::NO_CONTENT);
    let after = server.get(&format!("/v1/messages/{second}"), &mobile).await;
    assert_eq!(after.json["status"], "read");
    assert_ne!(after.json["status_changed_at"], message["status_changed_at"]);
}

#[tokio::test]
async fn attempts_are_shown_to_the_sender_and_admins() {
    // Req 4.7.
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let id = id_of(&server.one_way(&business, "m1", "hi").await);
    let path = format!("/v1/messages/{id}/attempts");
    assert_eq!(server.get(&path, &business).await.json, json!({"items": []}));
    let attempts = vec![
        Attempt {
            message_id: id.clone(),
            attempt: 1,
            at: Millis(1_700_000_000_000),
            channel: Channel::Socket,
            outcome: "timeout".into(),
            error: Some("no ack in 5s".into()),
        },
        Attempt {
            message_id: id.clone(),
            attempt: 2,
            at: Millis(1_700_000_001_000),
            channel: Channel::Socket,
            outcome: "delivered".into(),
            error: None,
        },
    ];
    server.backends.store.record_attempts(&attempts).await.unwrap();
    let answer = server.get(&path, &business).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json,
        json!({"items": [
            {"attempt": 1, "at": "2023-11-14T22:13:20.000Z", "channel": "socket", "outcome": "timeout", "error": "no ack in 5s"},
            {"attempt": 2, "at": "2023-11-14T22:13:21.000Z", "channel": "socket", "outcome": "delivered"},
        ]})
    );
    assert_eq!(server.get(&path, ADMIN).await.status, StatusCode::OK);
    assert_eq!(server.get(&path, &mobile).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        server.get(&format!("/v1/messages/{}/attempts", esh_common::ids::new_id()), &business).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.call(Method::GET, &path, None, None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn one_way_history_pages_are_chronological_and_stable_while_messages_arrive() {
    // Req 1.8, 8.6; API.md "Pages".
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    server.mobile("m2").await;
    let mut sent = Vec::new();
    for i in 0..23 {
        sent.push(id_of(&server.one_way(&business, "m1", &format!("n{i}")).await));
    }
    server.one_way(&business, "m2", "not for m1").await;

    // Walk m1's history 5 at a time, sending more between pages.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("/v1/one-way-messages?limit=5&cursor={cursor}"),
            None => "/v1/one-way-messages?limit=5".to_owned(),
        };
        let page = server.get(&url, &mobile).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = ids(page.json["items"].as_array().unwrap());
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(items, sorted, "a page is oldest first");
        seen.splice(0..0, items);
        server.one_way(&business, "m1", "arrived during the walk").await;
        pages += 1;
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, sent, "every message once, none skipped, none repeated");

    // The business sees what it sent (to everyone).
    let sent_history = server.walk("/v1/one-way-messages", &business, 200).await;
    assert_eq!(sent_history.len(), 23 + 1 + 5);
    // Admins have no one-way history.
    assert_eq!(server.get("/v1/one-way-messages", ADMIN).await.status, StatusCode::FORBIDDEN);
    for query in ["limit=0", "limit=201", "limit=abc", "limit=-3", "cursor=bogus", "cursor=djF8bXxub3BlcyE"] {
        let answer = server.get(&format!("/v1/one-way-messages?{query}"), &mobile).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{query}");
    }
    // 400 for the query comes before 403.
    assert_eq!(server.get("/v1/one-way-messages?limit=0", ADMIN).await.status, StatusCode::BAD_REQUEST);
    // A cursor of another list is refused.
    let page = server.get("/v1/one-way-messages?limit=1", &mobile).await;
    let foreign = page.json["next_cursor"].as_str().unwrap().to_owned();
    for list in ["/v1/conversations", "/v1/admin/dead-letters"] {
        let token = if list.contains("admin") { ADMIN } else { mobile.as_str() };
        assert_eq!(
            server.get(&format!("{list}?cursor={foreign}"), token).await.status,
            StatusCode::BAD_REQUEST,
            "{list}"
        );
    }
    let default = server.get("/v1/one-way-messages", &mobile).await;
    assert_eq!(default.json["items"].as_array().unwrap().len(), 28);
    assert_eq!(default.json["next_cursor"], Value::Null);
}

#[tokio::test]
async fn business_history_includes_broadcast_messages() {
    let server = Server::start().await;
    let business = server.user("b1", "business", &["send"], false).await;
    let mobiles = server.many_mobiles("m", 2).await;
    let answer = server.post("/v1/broadcasts", &business, json!({"recipient_ids": mobiles, "content": "all"})).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    // The router makes the per-recipient messages; do what it does.
    server.backends.caught_up().await.unwrap();
    let broadcast = server.backends.store.broadcast(answer.json["id"].as_str().unwrap()).await.unwrap().unwrap();
    let messages: Vec<_> = (0..2).map(|i| broadcast.message(i).unwrap()).collect();
    server.backends.store.insert_messages(&messages).await.unwrap();
    let history = server.walk("/v1/one-way-messages", &business, 50).await;
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|m| m["broadcast_id"] == answer.json["id"]));
}

#[tokio::test]
async fn conversation_messages_are_for_participants_and_read_your_writes_through_the_cache() {
    // Req 1.7, 8.1, 10.4, 10.7.
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let stranger = server.mobile("m2").await;
    let other_business = server.business("b2").await;
    let first = server.chat(&mobile, "b1", "question").await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/conversations/{conversation}/messages");

    // First page (served from the cache once filled), then a new message must show at once.
    let page = server.get(&path, &business).await;
    assert_eq!(ids(page.json["items"].as_array().unwrap()), vec![id_of(&first)]);
    let second = server.chat(&business, "m1", "answer").await;
    let page = server.get(&path, &mobile).await;
    assert_eq!(ids(page.json["items"].as_array().unwrap()), vec![id_of(&first), id_of(&second)]);
    // Status changes show too.
    let read = server.call(Method::POST, &format!("/v1/messages/{}/read", id_of(&second)), Some(&mobile), None).await;
    assert_eq!(read.status, StatusCode::NO_CONTENT);
    let page = server.get(&path, &business).await;
    assert_eq!(page.json["items"][1]["status"], "read");
    assert_eq!(page.json["next_cursor"], Value::Null);

    assert_eq!(server.get(&path, &stranger).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get(&path, &other_business).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get(&path, ADMIN).await.status, StatusCode::FORBIDDEN);
    let unknown = format!("/v1/conversations/{}/messages", esh_common::ids::new_id());
    assert_eq!(server.get(&unknown, &business).await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.call(Method::GET, &path, None, None).await.status, StatusCode::UNAUTHORIZED);
    for query in ["limit=0", "limit=201", "limit=x", "cursor=zzz"] {
        assert_eq!(server.get(&format!("{path}?{query}"), &business).await.status, StatusCode::BAD_REQUEST, "{query}");
    }
}

#[tokio::test]
async fn conversation_pages_walk_back_without_gaps_while_messages_arrive() {
    // API.md "Pages": cursors stay valid while new messages arrive.
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let mut sent = Vec::new();
    for i in 0..120 {
        let token = if i % 2 == 0 { &business } else { &mobile };
        let to = if i % 2 == 0 { "m1" } else { "b1" };
        sent.push(id_of(&server.chat(token, to, &format!("c{i}")).await));
    }
    let conversation = server.get(&format!("/v1/messages/{}", sent[0]), &mobile).await.json["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/conversations/{conversation}/messages");
    for limit in [7usize, 50, 200] {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut extra = Vec::new();
        loop {
            let url = match &cursor {
                Some(cursor) => format!("{path}?limit={limit}&cursor={cursor}"),
                None => format!("{path}?limit={limit}"),
            };
            let page = server.get(&url, &business).await;
            assert_eq!(page.status, StatusCode::OK);
            let items = page.json["items"].as_array().unwrap();
            assert!(items.len() <= limit);
            seen.splice(0..0, ids(items));
            extra.push(id_of(&server.chat(&mobile, "b1", "during the walk").await));
            match page.json["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, sent, "limit {limit}: every message once, oldest first");
        sent.extend(extra);
    }
}

#[tokio::test]
async fn conversation_list_is_most_recent_first_with_peer_and_unread_count() {
    // Req 1.13, 1.14; API.md "Pages".
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mut mobiles = Vec::new();
    for i in 0..5 {
        let id = format!("m{i}");
        let token = server.mobile(&id).await;
        server.chat(&business, &id, "hello").await;
        mobiles.push((id, token));
    }
    // m2 answers: its conversation moves to the top; it has 1 unread for the business.
    let reply = server.chat(&mobiles[2].1, "b1", "reply").await;
    let list = server.get("/v1/conversations", &business).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.json["items"].as_array().unwrap();
    let peers: Vec<&str> = items.iter().map(|item| item["peer"]["id"].as_str().unwrap()).collect();
    assert_eq!(peers, vec!["m2", "m4", "m3", "m1", "m0"]);
    let top = &items[0];
    assert_eq!(top["business_id"], "b1");
    assert_eq!(top["mobile_id"], "m2");
    assert_eq!(top["peer"]["display_name"], "m2 name");
    assert_eq!(top["last_message"]["id"], reply["id"]);
    assert_eq!(top["unread_count"], 1);
    assert_eq!(top["updated_at"], reply["created_at"]);
    assert_eq!(items[1]["unread_count"], 0);
    assert_eq!(list.json["next_cursor"], Value::Null);

    // The mobile side sees the business as peer, with the business's message unread.
    let mine = server.get("/v1/conversations", &mobiles[0].1).await;
    assert_eq!(mine.json["items"][0]["peer"]["id"], "b1");
    assert_eq!(mine.json["items"][0]["unread_count"], 1);

    assert_eq!(server.get("/v1/conversations", ADMIN).await.status, StatusCode::FORBIDDEN);
    for query in ["limit=0", "limit=201", "limit=many", "cursor=nope"] {
        assert_eq!(server.get(&format!("/v1/conversations?{query}"), &business).await.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn conversation_list_walk_skips_nothing_while_conversations_move() {
    // API.md "Pages": a walk never skips a conversation that existed when it started.
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mut tokens = Vec::new();
    for i in 0..12 {
        let id = format!("m{i:02}");
        tokens.push(server.mobile(&id).await);
        server.chat(&business, &id, "hello").await;
    }
    // Quiet walk: every conversation exactly once, most recent first.
    let quiet = server.walk("/v1/conversations", &business, 5).await;
    let peers: Vec<String> = quiet.iter().map(|item| item["peer"]["id"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (0..12).rev().map(|i| format!("m{i:02}")).collect();
    assert_eq!(peers, expected);

    // Busy walk: after each page the oldest not-yet-seen conversation moves to the top.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("/v1/conversations?limit=3&cursor={cursor}"),
            None => "/v1/conversations?limit=3".to_owned(),
        };
        let page = server.get(&url, &business).await;
        assert_eq!(page.status, StatusCode::OK);
        seen.extend(
            page.json["items"].as_array().unwrap().iter().map(|item| item["peer"]["id"].as_str().unwrap().to_owned()),
        );
        if let Some(unseen) = (0..12).map(|i| format!("m{i:02}")).find(|id| !seen.contains(id)) {
            let index: usize = unseen[1..].parse().unwrap();
            server.chat(&tokens[index], "b1", "bump").await;
        }
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 12, "seen: {seen:?}");
}

#[tokio::test]
async fn dead_letters_are_listed_newest_first_and_retried_once() {
    // Req 4.2, 4.5; API.md "Operations".
    let server = Server::start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let mut dead = Vec::new();
    for i in 0..5 {
        let id = id_of(&server.one_way(&business, "m1", &format!("d{i}")).await);
        fail(&server, &id).await;
        dead.push(id);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let listed = server.walk("/v1/admin/dead-letters", ADMIN, 2).await;
    let listed_ids: Vec<&str> = listed.iter().map(|l| l["message_id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = dead.iter().rev().map(String::as_str).collect();
    assert_eq!(listed_ids, newest_first);
    assert_eq!(listed[0]["attempts"], 7);
    assert_eq!(listed[0]["error"], "no ack");
    assert!(listed[0]["failed_at"].as_str().unwrap().ends_with('Z'));
    let failed = server.get(&format!("/v1/messages/{}", dead[0]), &business).await;
    assert_eq!((failed.json["status"].clone(), failed.json["error"].clone()), (json!("failed"), json!("no ack")));

    let topic = esh_common::topics::MESSAGES_NORMAL;
    let lag_before = server.backends.log.lag(esh_common::topics::ROUTER_GROUP, topic).await.unwrap();
    let retry =
        server.call(Method::POST, &format!("/v1/admin/dead-letters/{}/retry", dead[0]), Some(ADMIN), None).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.json);
    assert_eq!(retry.json, json!({"message_id": dead[0], "status": "sent"}));
    assert_eq!(server.backends.log.lag(esh_common::topics::ROUTER_GROUP, topic).await.unwrap(), lag_before + 1);
    assert_eq!(server.get(&format!("/v1/messages/{}", dead[0]), &mobile).await.json["status"], "sent");
    let listed = server.walk("/v1/admin/dead-letters", ADMIN, 50).await;
    assert!(listed.iter().all(|l| l["message_id"] != dead[0].as_str()));
    assert_eq!(listed.len(), 4);

    let again =
        server.call(Method::POST, &format!("/v1/admin/dead-letters/{}/retry", dead[0]), Some(ADMIN), None).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "conflict"));
    let unknown = format!("/v1/admin/dead-letters/{}/retry", esh_common::ids::new_id());
    assert_eq!(server.call(Method::POST, &unknown, Some(ADMIN), None).await.status, StatusCode::NOT_FOUND);
    let by_user =
        server.call(Method::POST, &format!("/v1/admin/dead-letters/{}/retry", dead[1]), Some(&business), None).await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/v1/admin/dead-letters", &business).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.call(Method::GET, "/v1/admin/dead-letters", None, None).await.status, StatusCode::UNAUTHORIZED);
    for query in ["limit=0", "limit=999", "cursor=abc"] {
        assert_eq!(server.get(&format!("/v1/admin/dead-letters?{query}"), ADMIN).await.status, StatusCode::BAD_REQUEST);
    }
}
