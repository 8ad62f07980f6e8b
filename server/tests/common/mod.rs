//! The end-to-end harness: a platform started in-process on `127.0.0.1:0` with a temporary
//! data directory (or the real `esh` binary, also on port 0, its address read from the line
//! it prints, for crash and shutdown tests), users created with the admin token, HTTP
//! through reqwest and WebSockets through tokio-tungstenite.
//!
//! With `ESH_TEST_E2E_LOG=kafka` every platform here, in-process or the binary, runs on the
//! Kafka log: a `tansu` broker of its own per data directory (see `kafka_log`).
//!
//! Tests wait for events (a frame, a status, a pong, the binary's address line), never for
//! a fixed time: to show that something did not happen, they wait for a later event that
//! would have come after it (a ping's pong, a later message of the same pair).

#![allow(dead_code, unreachable_pub)]

pub mod durability;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use esh_backends::testsuite::kafka::KafkaBroker;
use esh_server::{Config, Platform};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The admin token of harness platforms.
pub const ADMIN: &str = "e2e-admin-token";
/// The HS256 secret of harness platforms.
pub const JWT_SECRET: &str = "e2e-jwt-secret";
/// How long a test waits for an expected frame or state before failing.
pub const WAIT: Duration = Duration::from_secs(15);

/// The Kafka broker of the platform on `data_dir` when `ESH_TEST_E2E_LOG=kafka`, else
/// `None` (the embedded log). Each data directory gets a `tansu` broker of its own, since a
/// platform's topic names are fixed. It lives while a `Harness` or `Process` of that
/// directory holds it (a platform restarted on the directory finds its log again) and
/// stops with the last of them.
pub fn kafka_log(data_dir: &Path) -> Option<Arc<KafkaBroker>> {
    static BROKERS: Mutex<Option<HashMap<PathBuf, Weak<KafkaBroker>>>> = Mutex::new(None);
    match std::env::var("ESH_TEST_E2E_LOG").as_deref() {
        Ok("kafka") => {}
        Ok("embedded") | Err(_) => return None,
        Ok(other) => panic!("ESH_TEST_E2E_LOG={other}: expected kafka or embedded"),
    }
    let mut brokers = BROKERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let brokers = brokers.get_or_insert_with(HashMap::new);
    brokers.retain(|_, broker| broker.strong_count() > 0);
    if let Some(broker) = brokers.get(data_dir).and_then(Weak::upgrade) {
        return Some(broker);
    }
    let broker = Arc::new(KafkaBroker::start_tansu());
    brokers.insert(data_dir.to_path_buf(), Arc::downgrade(&broker));
    Some(broker)
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("")
    }

    fn expect(self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: unexpected answer {}", self.body);
        self.body
    }
}

/// A client of the API at `base`.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr, admin: &str) -> Api {
        // Bounded, so that a platform that stops answering fails the test instead of hanging it.
        let http = reqwest::Client::builder().timeout(4 * WAIT).build().expect("http client");
        Api { base: format!("http://{addr}"), admin: admin.to_owned(), http }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.base.replacen("http://", "ws://", 1))
    }

    pub async fn call(&self, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> Answer {
        self.try_call(method, token, path, body).await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub async fn try_call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok(Answer { status, body, retry_after })
    }

    pub async fn get(&self, token: &str, path: &str) -> Answer {
        self.call(reqwest::Method::GET, token, path, None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Answer {
        self.call(reqwest::Method::POST, token, path, Some(body)).await
    }

    /// A POST without a body (receipts, retries).
    pub async fn post_empty(&self, token: &str, path: &str) -> Answer {
        self.call(reqwest::Method::POST, token, path, None).await
    }

    /// Creates a user (as admin) and returns it.
    pub async fn create_user(&self, id: &str, kind: &str, extra: Value) -> Value {
        let mut body = json!({"id": id, "kind": kind, "display_name": format!("{id} display")});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.post(&self.admin, "/v1/users", body).await.expect(201, "create user")
    }

    /// A token for `id`, issued by the admin.
    pub async fn token(&self, id: &str) -> String {
        let body =
            self.post(&self.admin, &format!("/v1/users/{id}/tokens"), json!({})).await.expect(201, "issue token");
        body["token"].as_str().expect("token in answer").to_owned()
    }

    /// A business user with `send` and `chat`; returns its token.
    pub async fn business(&self, id: &str) -> String {
        self.create_user(id, "business", json!({"permissions": ["send", "chat"]})).await;
        self.token(id).await
    }

    /// A verified mobile user; returns its token.
    pub async fn mobile(&self, id: &str) -> String {
        self.create_user(id, "mobile", json!({"verified": true})).await;
        self.token(id).await
    }

    /// Sends a one-way message and returns the accepted message (asserting `202`).
    pub async fn one_way(&self, token: &str, to: &str, content: &str) -> Value {
        self.one_way_with(token, json!({"recipient_id": to, "content": content})).await
    }

    pub async fn one_way_with(&self, token: &str, body: Value) -> Value {
        self.post(token, "/v1/messages", body).await.expect(202, "one-way send")
    }

    /// Sends a chat message and returns the accepted message (asserting `202`).
    pub async fn chat(&self, token: &str, to: &str, content: &str) -> Value {
        self.post(token, "/v1/chat/messages", json!({"to": to, "content": content})).await.expect(202, "chat send")
    }

    /// The message with this id as `token` sees it (asserting `200`).
    pub async fn message(&self, token: &str, id: &str) -> Value {
        self.get(token, &format!("/v1/messages/{id}")).await.expect(200, "get message")
    }

    /// Polls the message until its status is `status`, failing after [`WAIT`].
    pub async fn wait_status(&self, token: &str, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let message = self.message(token, id).await;
            if message["status"] == status {
                return message;
            }
            assert!(Instant::now() < deadline, "message {id} never became {status}: {message}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects a WebSocket with `token` in the Authorization header and reads its hello.
    pub async fn connect(&self, token: &str) -> Socket {
        let mut request = self.ws_url().into_client_request().expect("ws url");
        request.headers_mut().insert(AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("websocket upgrade");
        let mut socket = Socket { stream, hello: Value::Null };
        let hello = socket.next().await;
        assert_eq!(hello["type"], "hello", "first frame must be hello: {hello}");
        socket.hello = hello;
        socket
    }

    /// Tries an upgrade; on refusal returns the HTTP status and JSON body.
    pub async fn refused_upgrade(&self, url: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = url.into_client_request().expect("ws url");
        if let Some(token) = token {
            request.headers_mut().insert(AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => panic!("upgrade to {url} was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body =
                    response.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                (response.status().as_u16(), body)
            }
            Err(error) => panic!("upgrade failed without an HTTP answer: {error}"),
        }
    }
}

/// A JPEG of `width`×`height` pixels with some detail in it.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
    let image = RgbImage::from_fn(width, height, |x, y| Rgb([(x % 251) as u8, (y % 241) as u8, 60]));
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image).write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg).unwrap();
    bytes
}

impl Api {
    /// Uploads `bytes` as one `file` part; returns the 201 media object.
    pub async fn upload(&self, token: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Value {
        const BOUNDARY: &str = "esh-media-boundary";
        let mut body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        let response = self
            .http
            .post(format!("{}/v1/media", self.base))
            .bearer_auth(token)
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    /// The bytes behind a signed URL (no bearer token).
    pub async fn download(&self, url: &str) -> Vec<u8> {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.bytes().await.unwrap().to_vec()
    }
}

/// A platform running in this process, with its own data directory.
pub struct Harness {
    pub api: Api,
    pub platform: Option<Platform>,
    pub dir: tempfile::TempDir,
    /// The Kafka broker of `ESH_TEST_E2E_LOG=kafka`, kept across restarts.
    kafka: Option<Arc<KafkaBroker>>,
}

/// How long the Kafka broker of a dropped `Harness` lives on: the platform's stages run
/// until the test's runtime ends, and a consumer commit in flight then (a blocking call
/// without a timeout) would wait forever for a broker already gone.
const BROKER_GRACE: Duration = Duration::from_secs(3);

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(broker) = self.kafka.take() {
            std::thread::spawn(move || {
                std::thread::sleep(BROKER_GRACE);
                drop(broker);
            });
        }
    }
}

impl std::ops::Deref for Harness {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Harness {
    /// A platform with the defaults, except a sending rate high enough for tests.
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// A platform whose configuration `tune` adjusts.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let kafka = kafka_log(dir.path());
        let mut config = Harness::config(dir.path());
        tune(&mut config);
        let platform = Platform::start(config).await.expect("platform starts");
        let api = Api::new(platform.addr(), platform.admin_token());
        Harness { api, platform: Some(platform), dir, kafka }
    }

    pub fn config(dir: &Path) -> Config {
        let mut config = Config::local(dir);
        config.admin_token = Some(ADMIN.into());
        config.jwt_secret = Some(JWT_SECRET.into());
        config.rate_limit_per_minute = 1_000_000;
        config.log_partitions = 4;
        if let Some(broker) = kafka_log(dir) {
            config.log_url = Some(broker.url());
            config.kafka_properties = broker.client_properties();
        }
        config
    }

    pub fn platform(&self) -> &Platform {
        self.platform.as_ref().expect("platform running")
    }

    /// Waits until the router has committed every message record in the log, so that a
    /// user connecting now gets those messages from the replay alone.
    pub async fn wait_routed(&self) {
        let log = self.platform().backends().log.clone();
        eventually("the router to catch up with the log", || {
            let log = log.clone();
            async move {
                let mut lag = 0;
                for topic in esh_common::topics::MESSAGES_BY_PRIORITY {
                    lag += log.lag(esh_common::topics::ROUTER_GROUP, topic).await.expect("lag");
                }
                (lag == 0).then_some(())
            }
        })
        .await;
    }

    /// Stops the platform in order; asserts that it stopped cleanly.
    pub async fn stop(&mut self) {
        if let Some(platform) = self.platform.take() {
            platform.shutdown().await.expect("clean shutdown");
        }
    }

    /// Stops the platform and starts it again on the same data directory.
    pub async fn restart(&mut self, tune: impl FnOnce(&mut Config)) {
        self.stop().await;
        let mut config = Harness::config(self.dir.path());
        tune(&mut config);
        let platform = Platform::start(config).await.expect("platform restarts");
        self.api = Api::new(platform.addr(), platform.admin_token());
        self.platform = Some(platform);
    }
}

/// A WebSocket client.
pub struct Socket {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
}

/// What a socket read gave.
#[derive(Debug)]
pub enum Read {
    Json(Value),
    Closed(Option<CloseFrame>),
    Silent,
}

impl Socket {
    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Frame::text(frame.to_string())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, frame: Frame) {
        self.stream.send(frame).await.expect("send frame");
    }

    /// The next JSON frame, a close, or `Silent` after `wait`. Protocol pings and pongs are skipped.
    pub async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Read::Silent,
                Ok(None) => return Read::Closed(None),
                Ok(Some(Err(_))) => return Read::Closed(None),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Frame::Text(text) => {
                    return Read::Json(
                        serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON frame {text}: {e}")),
                    )
                }
                Frame::Close(close) => return Read::Closed(close),
                Frame::Binary(bytes) => panic!("unexpected binary frame of {} bytes", bytes.len()),
                _ => continue,
            }
        }
    }

    /// The next JSON frame; fails if none comes within [`WAIT`].
    pub async fn next(&mut self) -> Value {
        match self.read(WAIT).await {
            Read::Json(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame of type `kind`, skipping others; fails if none comes within [`WAIT`].
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.next_of_within(kind, WAIT).await
    }

    /// The next frame of type `kind`, skipping others; fails if none comes within `wait`.
    pub async fn next_of_within(&mut self, kind: &str, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Json(frame) if frame["type"] == kind => return frame,
                Read::Json(_) => continue,
                other => panic!("expected a {kind} frame, got {other:?}"),
            }
        }
    }

    /// The next `count` message frames' messages, failing on any other frame.
    pub async fn messages(&mut self, count: usize) -> Vec<Value> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            let frame = self.next().await;
            assert_eq!(frame["type"], "message", "expected a message frame after {} messages: {frame}", messages.len());
            messages.push(frame["message"].clone());
        }
        messages
    }

    /// The first `count` distinct messages in arrival order, acking each as it arrives (so
    /// that no resend interleaves); other frames are skipped.
    pub async fn receive_acking(&mut self, count: usize) -> Vec<Value> {
        let mut seen = HashSet::new();
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            let frame = self.next_of("message").await;
            let message = frame["message"].clone();
            let id = id(&message);
            self.ack(&[&id]).await;
            if seen.insert(id) {
                messages.push(message);
            }
        }
        messages
    }

    pub async fn ack(&mut self, ids: &[&str]) {
        self.send(json!({"type": "ack", "message_ids": ids})).await;
    }

    pub async fn read_receipt(&mut self, ids: &[&str]) {
        self.send(json!({"type": "read", "message_ids": ids})).await;
    }

    /// Sends a ping and waits for its pong, skipping other frames: proves the socket is open
    /// and every frame sent before was processed.
    pub async fn round_trip(&mut self) {
        self.send(json!({"type": "ping"})).await;
        self.next_of("pong").await;
    }
}

/// The `id` field of a JSON object.
pub fn id(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_owned()
}

/// Waits until `check` returns `Some`, polling; fails after [`WAIT`] with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The real `esh` binary, run as a child process on a data directory.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub api: Api,
    /// The Kafka broker of `ESH_TEST_E2E_LOG=kafka`, kept while the process runs.
    kafka: Option<Arc<KafkaBroker>>,
}

/// What the binary's stable address line starts with (`server/src/main.rs`, README.md).
pub const LISTENING_PREFIX: &str = "esh3ar listening on http://";

impl Process {
    /// Starts `esh` on `data_dir` with `ESH_HTTP_ADDR=127.0.0.1:0` and returns once it has
    /// printed the address its listener is bound to (connections are queued from then on).
    pub async fn start(data_dir: &Path, extra_env: &[(String, String)]) -> Process {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_esh"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ESH_DATA_DIR", data_dir)
            .env("ESH_HTTP_ADDR", "127.0.0.1:0")
            .env("ESH_ADMIN_TOKEN", ADMIN)
            .env("ESH_JWT_SECRET", JWT_SECRET)
            .env("ESH_RATE_LIMIT_PER_MINUTE", "10000000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let kafka = if extra_env.iter().any(|(key, _)| key == "ESH_LOG") { None } else { kafka_log(data_dir) };
        if let Some(broker) = &kafka {
            command.env("ESH_LOG", broker.url()).envs(broker.client_env());
        }
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("esh binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        // Reads stdout to its end, so that the binary never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });
        let addr = tokio::select! {
            addr = tokio::time::timeout(Duration::from_secs(60), addr_rx) => match addr {
                Ok(Ok(addr)) => addr,
                Ok(Err(_)) => panic!("esh closed stdout without printing its address"),
                Err(_) => panic!("esh printed no address within 60 s"),
            },
            status = child.wait() => panic!("esh exited during start: {status:?}"),
        };
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("address line {addr:?}: {e}"));
        let api = Api::new(addr, ADMIN);
        Process { child, addr, api, kafka }
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill_hard(&mut self) {
        self.child.kill().await.expect("SIGKILL and reap");
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_terminate(&self) {
        let id = self.child.id().expect("esh still running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(id).expect("pid fits"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits (up to `within`) for the process to exit.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for esh"),
            Err(_) => panic!("esh did not exit within {within:?}"),
        }
    }

    /// SIGTERM, then waits (up to `within`) for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal_terminate();
        self.exited(within).await
    }
}

/// A temporary data directory that outlives process restarts.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    (dir, path)
}
