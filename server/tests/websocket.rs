//! The WebSocket protocol of API.md end to end: upgrade, frames in both directions, errors
//! and limits, several sockets per user.

mod common;

use std::time::Duration;

use common::{id, Harness, Read, JWT_SECRET};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Frame;

/// API.md "WebSocket": the first frame is `hello` with the user id and heartbeat; `ping` gets `pong`.
#[tokio::test]
async fn hello_then_ping_pong() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mut socket = esh.connect(&business).await;
    assert_eq!(socket.hello, json!({"type": "hello", "user_id": "acme", "heartbeat_s": 30}));
    socket.send(json!({"type": "ping"})).await;
    assert_eq!(socket.next().await, json!({"type": "pong"}));
}

/// API.md "An upgrade without a valid token is answered 401 before the upgrade": missing,
/// forged and expired tokens; `?access_token=` is accepted like the header.
#[tokio::test]
async fn upgrade_needs_a_valid_token() {
    let esh = Harness::start().await;
    let mobile = esh.mobile("mona").await;
    let url = esh.ws_url();

    let forged = encode(
        &Header::default(),
        &json!({"sub": "mona", "kind": "mobile", "exp": now_s() + 3600}),
        &EncodingKey::from_secret(b"someone else's secret"),
    )
    .unwrap();
    let expired = encode(
        &Header::default(),
        &json!({"sub": "mona", "kind": "mobile", "exp": now_s() - 3600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    for (what, token) in [("missing", None), ("forged", Some(forged.as_str())), ("expired", Some(expired.as_str()))] {
        let (status, body) = esh.refused_upgrade(&url, token).await;
        assert_eq!(status, 401, "{what} token");
        assert_eq!(body["error"]["code"], "unauthenticated", "{what} token: {body}");
    }
    let (status, _) = esh.refused_upgrade(&format!("{url}?access_token=garbage"), None).await;
    assert_eq!(status, 401);

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{url}?access_token={mobile}")).await.unwrap();
    let Read::Json(hello) = read(&mut socket).await else { panic!("no hello") };
    assert_eq!(hello["user_id"], "mona");
}

async fn read(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Read {
    use futures::StreamExt;
    match tokio::time::timeout(common::WAIT, socket.next()).await {
        Ok(Some(Ok(Frame::Text(text)))) => Read::Json(serde_json::from_str(&text).unwrap()),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// API.md `send` frame: answered by `accepted` with the same `ref` and the message; the
/// peer gets it; refused sends are `error` frames with the `ref`, and the socket stays open.
#[tokio::test]
async fn send_frames_are_accepted_or_refused_with_their_ref() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    esh.mobile("otto").await;
    let mut business_socket = esh.connect(&business).await;
    let mut socket = esh.connect(&mobile).await;

    socket.send(json!({"type": "send", "ref": "r1", "to": "acme", "content": "hi from the app"})).await;
    let accepted = socket.next().await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(accepted["ref"], "r1");
    assert_eq!(accepted["message"]["type"], "chat");
    assert_eq!(accepted["message"]["status"], "sent");
    assert!(accepted["message"]["conversation_id"].is_string());
    let arrived = business_socket.next_of("message").await;
    assert_eq!(arrived["message"]["id"], accepted["message"]["id"]);
    assert_eq!(esh.message(&business, &id(&accepted["message"])).await["content"], "hi from the app");

    for (reference, to, code) in [("r2", "nobody", "not_found"), ("r3", "otto", "forbidden")] {
        socket.send(json!({"type": "send", "ref": reference, "to": to, "content": "x"})).await;
        let error = socket.next().await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["ref"], reference);
        assert_eq!(error["code"], code, "{error}");
        assert!(error["message"].is_string());
    }
    socket.send(json!({"type": "send", "ref": "r4", "to": "acme", "content": ""})).await;
    let error = socket.next().await;
    assert_eq!((error["ref"].as_str(), error["code"].as_str()), (Some("r4"), Some("invalid_request")));
    socket.round_trip().await;
}

/// API.md "a refused frame ... the connection stays open": malformed JSON, wrong types,
/// unknown or missing type, and binary frames each get an `invalid_request` error frame.
#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_socket_stays_open() {
    let esh = Harness::start().await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;
    let bad_frames = [
        Frame::text("this is not json"),
        Frame::text(r#"{"type":"ack","message_ids":"not-a-list"}"#),
        Frame::text(r#"{"type":"send","to":5,"content":"x"}"#),
        Frame::text(r#"{"type":"teleport"}"#),
        Frame::text(r#"{"message_ids":[]}"#),
        Frame::text("[1,2,3]"),
        Frame::binary(vec![0u8, 159, 146, 150]),
    ];
    for frame in bad_frames {
        let description = format!("{frame:?}");
        socket.send_raw(frame).await;
        let error = socket.next().await;
        assert_eq!(error["type"], "error", "{description}: {error}");
        assert_eq!(error["code"], "invalid_request", "{description}: {error}");
    }
    socket.round_trip().await;
}

/// A `ping` frame padded with JSON whitespace to exactly `len` bytes.
fn padded_ping(len: usize) -> String {
    let ping = r#"{"type":"ping"}"#;
    format!("{ping}{}", " ".repeat(len - ping.len()))
}

/// API.md "Precise rules", WebSocket: "frames over 64 KiB close the socket with code
/// 1009". A text frame of exactly 64 KiB (65,536 bytes) is served; one byte more closes
/// the socket with 1009.
#[tokio::test]
async fn a_64_kib_frame_is_served_and_one_byte_more_closes_with_1009() {
    let esh = Harness::start().await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;

    let largest = padded_ping(64 * 1024);
    assert_eq!(largest.len(), 65_536);
    socket.send_raw(Frame::text(largest)).await;
    assert_eq!(socket.next().await, json!({"type": "pong"}), "a 64 KiB frame is read like any other");

    socket.send_raw(Frame::text(padded_ping(64 * 1024 + 1))).await;
    match socket.read(common::WAIT).await {
        Read::Closed(Some(close)) => assert_eq!(close.code, CloseCode::Size, "close code 1009"),
        other => panic!("expected a close frame with 1009, got {other:?}"),
    }
}

/// The same limit for a binary frame: one byte over 64 KiB closes with 1009 (under it, a
/// binary frame only gets an error frame).
#[tokio::test]
async fn an_oversized_binary_frame_closes_with_1009() {
    let esh = Harness::start().await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;
    socket.send_raw(Frame::binary(vec![b' '; 64 * 1024 + 1])).await;
    match socket.read(common::WAIT).await {
        Read::Closed(Some(close)) => assert_eq!(close.code, CloseCode::Size, "close code 1009"),
        other => panic!("expected a close frame with 1009, got {other:?}"),
    }
}

/// API.md "Every socket of a user gets every message and status frame".
#[tokio::test]
async fn every_socket_of_a_user_gets_every_message_and_status() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut phone = esh.connect(&mobile).await;
    let mut tablet = esh.connect(&mobile).await;
    let mut office = esh.connect(&business).await;
    let mut laptop = esh.connect(&business).await;

    let accepted = esh.one_way(&business, "mona", "to every device").await;
    for socket in [&mut phone, &mut tablet] {
        assert_eq!(socket.messages(1).await[0]["id"], accepted["id"]);
    }
    phone.ack(&[accepted["id"].as_str().unwrap()]).await;
    for socket in [&mut office, &mut laptop] {
        let status = socket.next_of("status").await;
        assert_eq!(
            (status["message_id"].clone(), status["status"].clone()),
            (accepted["id"].clone(), json!("delivered"))
        );
    }
}

/// API.md "receipts for a message of which the caller is not the recipient are ... ignored
/// over the socket".
#[tokio::test]
async fn receipts_for_someone_elses_message_are_ignored() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let other = esh.mobile("otto").await;
    let mut sender = esh.connect(&business).await;
    let mut intruder = esh.connect(&other).await;

    let message_id = id(&esh.one_way(&business, "mona", "for mona only").await);
    intruder.ack(&[&message_id]).await;
    intruder.read_receipt(&[&message_id]).await;
    intruder.round_trip().await;

    // The recipient's ack goes the same way after the intruder's receipts: the first status
    // frame the sender gets is its `delivered`, and the message stays delivered, not read.
    let mut recipient = esh.connect(&mobile).await;
    recipient.messages(1).await;
    recipient.ack(&[&message_id]).await;
    assert_eq!(sender.next_of("status").await["status"], "delivered");
    esh.wait_status(&business, &message_id, "delivered").await;
    recipient.round_trip().await;
    assert_eq!(esh.message(&business, &message_id).await["status"], "delivered");
}

/// Idempotency over the socket: a repeated `send` with the same key is accepted again with
/// the same message and creates nothing new.
#[tokio::test]
async fn idempotent_send_replays_over_the_socket() {
    let esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut socket = esh.connect(&mobile).await;
    let frame = json!({"type": "send", "ref": "a", "to": "acme", "content": "only once", "idempotency_key": "k-1"});
    socket.send(frame.clone()).await;
    let first = socket.next_of("accepted").await;
    let mut again = frame;
    again["ref"] = json!("b");
    socket.send(again).await;
    let second = socket.next_of("accepted").await;
    assert_eq!(second["ref"], "b");
    assert_eq!(first["message"]["id"], second["message"]["id"]);

    let conversation = first["message"]["conversation_id"].as_str().unwrap().to_owned();
    let history = esh.get(&business, &format!("/v1/conversations/{conversation}/messages")).await.body;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);

    esh.wait_routed().await;
    let mut business_socket = esh.connect(&business).await;
    let arrived: Vec<Value> = business_socket.messages(1).await;
    assert_eq!(arrived[0]["id"], first["message"]["id"]);
    // A later message of the same conversation comes after anything of it sent before:
    // the next message frame is that one, not a second copy.
    socket.send(json!({"type": "send", "ref": "c", "to": "acme", "content": "after the repeat"})).await;
    let later = socket.next_of("accepted").await;
    assert_eq!(business_socket.messages(1).await[0]["id"], later["message"]["id"]);
}

/// API.md "the server closes a socket silent for 3 × `heartbeat_s`"; pings keep it open.
#[tokio::test]
async fn silent_socket_is_closed_after_three_heartbeats() {
    let esh = Harness::start_with(|c| c.heartbeat = Duration::from_secs(1)).await;
    let mobile = esh.mobile("mona").await;
    let mut chatty = esh.connect(&mobile).await;
    let mut silent = esh.connect(&mobile).await;
    assert_eq!(silent.hello["heartbeat_s"], 1);
    let started = std::time::Instant::now();
    let pinging = tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            chatty.round_trip().await;
        }
        chatty
    });
    match silent.read(Duration::from_secs(6)).await {
        Read::Closed(_) => {}
        other => panic!("a silent socket is closed, got {other:?}"),
    }
    let closed_after = started.elapsed();
    assert!(closed_after >= Duration::from_millis(2500), "closed after {closed_after:?}, before 3 heartbeats");
    let mut chatty = pinging.await.unwrap();
    chatty.round_trip().await;
}
