//! A real ingest server for the API tests: embedded backends in a temporary directory, the
//! status writer, the router of `Ingest::routes` on 127.0.0.1:0 and a reqwest client.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::status_writer::StatusWriter;
use esh_common::auth::TokenKeys;
use esh_common::{Permission, UserKind};
use esh_ingest::{Ingest, IngestConfig};
use tokio_util::sync::CancellationToken;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub const ADMIN: &str = "admin-secret-token";
pub const SECRET: &[u8] = b"test-jwt-secret";

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub backends: Backends,
    pub keys: TokenKeys,
    pub status_writer: StatusWriter,
    pub ingest: Arc<Ingest>,
    pub dir: tempfile::TempDir,
}

/// An answer: status, headers, body as JSON (Null when empty or not JSON) and raw bytes.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub bytes: Vec<u8>,
}

impl Answer {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.headers.get("retry-after")?.to_str().ok()?.parse().ok()
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(IngestConfig::default()).await
    }

    pub async fn start_with(mut config: IngestConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        config.media_links.local_url = base.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let urls = BackendUrls { data_dir: dir.path().to_path_buf(), log_partitions: 4, ..Default::default() };
        let backends = resolve(&urls).await.expect("embedded backends");
        let (status_writer, _task) = StatusWriter::start(backends.log.clone(), 64, esh_backends::status_writer::LINGER);
        // The store follows the log through its projection, as in the platform.
        let config_router = esh_router::RouterConfig::default();
        tokio::spawn(esh_router::project_store(backends.clone(), config_router, CancellationToken::new()));
        let keys = TokenKeys::hs256(SECRET);
        let ingest = Ingest::new(backends.clone(), keys.clone(), ADMIN.to_owned(), status_writer.clone(), config);
        let app = ingest.routes();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { base, client: reqwest::Client::new(), backends, keys, status_writer, ingest, dir }
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::answer(request).await
    }

    /// Sends a prepared request.
    pub async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body").to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, json, bytes }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A POST without a body (receipts, retries).
    pub async fn post_empty(&self, path: &str, token: &str) -> Answer {
        self.call(Method::POST, path, Some(token), None).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    /// A request with a raw body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body);
        Self::answer(request).await
    }

    /// Creates a user over the API and returns a token for it.
    pub async fn user(&self, id: &str, kind: &str, permissions: &[&str], verified: bool) -> String {
        let answer = self
            .post(
                "/v1/users",
                ADMIN,
                json!({"id": id, "kind": kind, "display_name": format!("{id} name"),
                "permissions": permissions, "verified": verified}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "create {id}: {}", answer.json);
        let kind = UserKind::parse(kind).expect("kind");
        self.keys.issue(id, kind, 3600).expect("token").0
    }

    /// A business with `send` and `chat`.
    pub async fn business(&self, id: &str) -> String {
        self.user(id, "business", &["send", "chat"], false).await
    }

    /// A verified mobile user.
    pub async fn mobile(&self, id: &str) -> String {
        self.user(id, "mobile", &[], true).await
    }

    /// Creates many mobile users straight in the store (concurrently, for group commit).
    pub async fn many_mobiles(&self, prefix: &str, count: usize) -> Vec<String> {
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}{i:05}")).collect();
        let store = &self.backends.store;
        let creates = ids.iter().map(|id| async move {
            let user = esh_common::User {
                id: id.clone(),
                kind: UserKind::Mobile,
                display_name: id.clone(),
                created_at: esh_common::Millis::now(),
                permissions: Vec::<Permission>::new(),
                verified: true,
                notifications_enabled: true,
            };
            store.create_user(&user).await.expect("create user");
        });
        futures::future::join_all(creates).await;
        ids
    }

    /// A one-way message from `business` to `mobile`; returns its JSON.
    pub async fn one_way(&self, business: &str, mobile: &str, content: &str) -> Value {
        let answer = self.post("/v1/messages", business, json!({"recipient_id": mobile, "content": content})).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
        answer.json
    }

    /// A chat message from the holder of `token` to `to`; returns its JSON.
    pub async fn chat(&self, token: &str, to: &str, content: &str) -> Value {
        let answer = self.post("/v1/chat/messages", token, json!({"to": to, "content": content})).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
        answer.json
    }

    /// Every item of a list, walking `next_cursor` (with `limit`).
    pub async fn walk(&self, path: &str, token: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let mut url = format!("{path}{separator}limit={limit}");
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.get(&url, token).await;
            assert_eq!(page.status, StatusCode::OK, "{url}: {}", page.json);
            items.extend(page.json["items"].as_array().expect("items").iter().cloned());
            match page.json["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }
}

/// A token signed with the right secret that expired a minute ago (beyond the 5 s leeway).
pub fn expired_token(user: &str, kind: &str) -> String {
    let exp = esh_common::Millis::now().0 / 1000 - 60;
    let claims = json!({"sub": user, "kind": kind, "exp": exp});
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET))
        .expect("sign")
}

/// A well-formed token for `user` signed with another secret.
pub fn forged_token(user: &str, kind: UserKind) -> String {
    TokenKeys::hs256(b"not-the-secret").issue(user, kind, 3600).expect("token").0
}

/// The ids of a list of messages.
pub fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|item| item["id"].as_str().expect("id").to_owned()).collect()
}

/// A one-way message from `sender` to `recipient`, status `sent`, as the store holds it.
pub fn message(sender: &str, recipient: &str) -> esh_common::Message {
    let now = esh_common::Millis::now();
    esh_common::Message {
        id: esh_common::ids::new_id(),
        kind: esh_common::MessageType::OneWay,
        sender_id: sender.into(),
        recipient_id: recipient.into(),
        conversation_id: None,
        content: "hello".into(),
        media_ids: Vec::new(),
        priority: esh_common::Priority::Normal,
        status: esh_common::Status::Sent,
        status_changed_at: now,
        created_at: now,
        error: None,
        broadcast_id: None,
    }
}
