//! The deliverer's own WebSocket behaviour over a real socket: authentication before the
//! upgrade, `hello`, refused frames that keep the socket open, the 1009 / heartbeat / 1001
//! closes, replay and acks. Chat sends and full pipelines (with ingest and the router) are
//! the server's end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::status_writer::StatusWriter;
use esh_backends::testsuite::fixtures;
use esh_backends::NodeEvent;
use esh_common::auth::TokenKeys;
use esh_common::ingress::{ChatIngress, ChatRequest};
use esh_common::{ApiError, Message, Millis, Status, User, UserKind};
use esh_deliverer::{Deliverer, DelivererConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);
const NODE: &str = "node-ws";

struct NoChat;

#[async_trait]
impl ChatIngress for NoChat {
    async fn send_chat(&self, _sender_id: &str, _request: ChatRequest) -> Result<Message, ApiError> {
        Err(ApiError::forbidden("chat is not wired in these tests"))
    }
}

struct Server {
    addr: SocketAddr,
    keys: TokenKeys,
    backends: Backends,
    shutdown: CancellationToken,
    deliverer: Arc<Deliverer>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(config: DelivererConfig) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let urls = BackendUrls { data_dir: dir.path().to_path_buf(), log_partitions: 2, ..Default::default() };
        let backends = resolve(&urls).await?;
        let (status_writer, _task) = StatusWriter::start(backends.log.clone(), 64, esh_backends::status_writer::LINGER);
        let keys = TokenKeys::hs256(b"socket tests");
        let shutdown = CancellationToken::new();
        // Acks reach the store through its projection of the status topic.
        tokio::spawn(esh_router::project_store(backends.clone(), esh_router::RouterConfig::default(), shutdown.clone()));
        let config = DelivererConfig { node_id: NODE.into(), ..config };
        let deliverer =
            Deliverer::start(backends.clone(), keys.clone(), status_writer, Arc::new(NoChat), config, shutdown.clone())
                .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let routes = deliverer.routes();
        tokio::spawn(async move { axum::serve(listener, routes).await });
        let user = User {
            id: "m1".into(),
            kind: UserKind::Mobile,
            display_name: "Mona".into(),
            created_at: Millis::now(),
            permissions: vec![],
            verified: true,
            notifications_enabled: true,
        };
        backends.store.create_user(&user).await?;
        Ok(Server { addr, keys, backends, shutdown, deliverer, _dir: dir })
    }

    fn token(&self, user: &str) -> Result<String> {
        Ok(self.keys.issue(user, UserKind::Mobile, 600)?.0)
    }

    /// Connects as `m1` with an `Authorization` header and reads the `hello`.
    async fn connect(&self) -> Result<Client> {
        let mut request = format!("ws://{}/v1/ws", self.addr).into_client_request()?;
        request.headers_mut().insert("authorization", format!("Bearer {}", self.token("m1")?).parse()?);
        let (mut client, _) = tokio_tungstenite::connect_async(request).await?;
        let hello = next_json(&mut client).await?;
        assert_eq!(hello["type"], "hello");
        assert_eq!(hello["user_id"], "m1");
        Ok(client)
    }

    async fn stored(&self) -> Result<Message> {
        let message = fixtures::one_way("biz", "m1");
        self.backends.store.insert_messages(std::slice::from_ref(&message)).await?;
        Ok(message)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The next text frame as JSON (protocol pings and pongs skipped).
async fn next_json(client: &mut Client) -> Result<Value> {
    loop {
        match tokio::time::timeout(PATIENCE, client.next()).await.context("a frame")? {
            Some(Ok(WsMessage::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => bail!("expected a text frame, got {other:?}"),
        }
    }
}

/// The code of the close frame the server sends next.
async fn close_code(client: &mut Client) -> Result<u16> {
    loop {
        match tokio::time::timeout(PATIENCE, client.next()).await.context("a close frame")? {
            Some(Ok(WsMessage::Close(Some(frame)))) => return Ok(frame.code.into()),
            Some(Ok(WsMessage::Close(None))) | None => bail!("closed without a code"),
            Some(Err(error)) => bail!("read failed before the close frame: {error}"),
            Some(Ok(_)) => continue,
        }
    }
}

async fn refused_upgrade(request: tungstenite::handshake::client::Request) -> Result<(u16, Value)> {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => bail!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            Ok((response.status().as_u16(), serde_json::from_slice(&body)?))
        }
        Err(other) => bail!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn an_upgrade_without_a_valid_token_is_401_before_the_upgrade() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    let url = format!("ws://{}/v1/ws", server.addr);
    let forged = TokenKeys::hs256(b"someone else").issue("m1", UserKind::Mobile, 600)?.0;
    let requests = [
        url.clone().into_client_request()?,
        format!("{url}?access_token=nonsense").into_client_request()?,
        format!("{url}?access_token={forged}").into_client_request()?,
        // A valid token of a user who does not exist.
        format!("{url}?access_token={}", server.token("ghost")?).into_client_request()?,
    ];
    for request in requests {
        let (status, body) = refused_upgrade(request).await?;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    let mut basic = url.into_client_request()?;
    basic.headers_mut().insert("authorization", "Basic bTE6cHc=".parse()?);
    assert_eq!(refused_upgrade(basic).await?.0, 401);

    // The query parameter works too.
    let request = format!("ws://{}/v1/ws?access_token={}", server.addr, server.token("m1")?);
    let (mut client, _) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(next_json(&mut client).await?, json!({"type": "hello", "user_id": "m1", "heartbeat_s": 30}));
    Ok(())
}

#[tokio::test]
async fn refused_frames_get_an_error_frame_and_the_socket_stays_open() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    let mut client = server.connect().await?;
    let refused = [
        WsMessage::text("not json"),
        WsMessage::text(r#"{"type":"dance"}"#),
        WsMessage::text(r#"{"type":"ack","message_ids":"x"}"#),
        WsMessage::binary(vec![1u8, 2, 3]),
    ];
    for frame in refused {
        client.send(frame).await?;
        let answer = next_json(&mut client).await?;
        assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("invalid_request")));
    }
    client.send(WsMessage::text(r#"{"type":"send","ref":"r1","to":"biz","content":"hi"}"#)).await?;
    let answer = next_json(&mut client).await?;
    assert_eq!((answer["type"].as_str(), answer["ref"].as_str()), (Some("error"), Some("r1")));
    client.send(WsMessage::text(r#"{"type":"ping"}"#)).await?;
    assert_eq!(next_json(&mut client).await?, json!({"type": "pong"}));
    Ok(())
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_the_socket_with_1009() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    for size in [64 * 1024 + 1, 3 * 1024 * 1024] {
        let mut client = server.connect().await?;
        let padding = "x".repeat(size);
        client.send(WsMessage::text(format!(r#"{{"type":"ping","pad":"{padding}"}}"#))).await?;
        assert_eq!(close_code(&mut client).await?, 1009, "frame of {size} bytes");
    }
    Ok(())
}

#[tokio::test]
async fn a_flood_of_invalid_frames_closes_the_socket_with_1008() -> Result<()> {
    let server = Server::start(DelivererConfig { max_invalid_frames_per_s: 5, ..Default::default() }).await?;
    let mut client = server.connect().await?;
    for _ in 0..10 {
        client.send(WsMessage::text("garbage")).await?;
    }
    assert_eq!(close_code(&mut client).await?, 1008);
    Ok(())
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_three_heartbeats() -> Result<()> {
    let config = DelivererConfig { heartbeat: Duration::from_millis(200), ..Default::default() };
    let server = Server::start(config).await?;
    let mut client = server.connect().await?;
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut client).await?, 1000);
    assert!(started.elapsed() >= Duration::from_millis(500), "closed after {:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn undelivered_messages_are_replayed_then_live_ones_follow_and_acks_mark_delivered() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    let waiting = server.stored().await?;
    let mut client = server.connect().await?;
    let replayed = next_json(&mut client).await?;
    assert_eq!(replayed["type"], "message");
    assert_eq!(replayed["message"]["id"], waiting.id.as_str());
    assert_eq!(replayed["message"]["read_only"], true);

    let live = server.stored().await?;
    server.backends.bus.send(&NODE.to_string(), vec![NodeEvent::Message(live.clone())]).await?;
    let frame = next_json(&mut client).await?;
    assert_eq!(frame["message"]["id"], live.id.as_str());

    let ack = json!({"type": "ack", "message_ids": [waiting.id, live.id]}).to_string();
    client.send(WsMessage::text(ack)).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stored = server.backends.store.messages(&[waiting.id.clone(), live.id.clone()]).await?;
        if stored.len() == 2 && stored.iter().all(|m| m.status == Status::Delivered) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("acks not applied: {stored:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Presence says where the user is while connected.
    let located = server.backends.presence.locate(&["m1".to_string()]).await?;
    assert_eq!(located.get("m1").map(Vec::as_slice), Some([NODE.to_string()].as_slice()));
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_unregisters_presence() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    let mut client = server.connect().await?;
    server.shutdown.cancel();
    assert_eq!(close_code(&mut client).await?, 1001);
    tokio::time::timeout(PATIENCE, server.deliverer.closed()).await.context("deliverer tasks end")?;
    let located = server.backends.presence.locate(&["m1".to_string()]).await?;
    assert!(located.is_empty(), "{located:?}");
    Ok(())
}

#[tokio::test]
async fn a_client_close_is_answered_and_leaves_presence() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    let mut client = server.connect().await?;
    client.close(None).await?;
    // The server completes the handshake: the stream ends without an error.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match client.next().await {
                None => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error),
            }
        }
    })
    .await?;
    ended?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !server.backends.presence.locate(&["m1".to_string()]).await?.is_empty() {
        if tokio::time::Instant::now() > deadline {
            bail!("presence not unregistered");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Req 4.1: a message waiting for an offline user is replayed when they connect; the
/// router's live copy of it (routed once presence was registered) reaches the bus after the
/// replay has finished. The socket gets the message exactly once.
#[tokio::test]
async fn a_message_replayed_on_connect_is_not_sent_again_by_the_routers_late_copy() -> Result<()> {
    let server = Server::start(DelivererConfig::default()).await?;
    let waiting = server.stored().await?;
    let mut client = server.connect().await?;
    let replayed = next_json(&mut client).await?;
    assert_eq!(replayed["message"]["id"], waiting.id.as_str());
    // A live frame for the user: held while the replay runs and released when it switches
    // the socket to live, so its arrival means the replay has finished.
    let marker = NodeEvent::Status { user: "m1".into(), message_id: "m-0".into(), status: Status::Read, at: Millis(0) };
    server.backends.bus.send(&NODE.to_string(), vec![marker]).await?;
    let frame = next_json(&mut client).await?;
    assert_eq!((frame["type"].as_str(), frame["message_id"].as_str()), (Some("status"), Some("m-0")), "{frame}");

    let newer = server.stored().await?;
    let routed = vec![NodeEvent::Message(waiting.clone()), NodeEvent::Message(newer.clone())];
    server.backends.bus.send(&NODE.to_string(), routed).await?;
    let frame = next_json(&mut client).await?;
    assert_eq!(frame["message"]["id"], newer.id.as_str(), "the replayed message came twice: {frame}");

    let ack = json!({"type": "ack", "message_ids": [waiting.id, newer.id]}).to_string();
    client.send(WsMessage::text(ack)).await?;
    client.send(WsMessage::text(r#"{"type":"ping"}"#)).await?;
    assert_eq!(next_json(&mut client).await?, json!({"type": "pong"}), "nothing else came");
    Ok(())
}
