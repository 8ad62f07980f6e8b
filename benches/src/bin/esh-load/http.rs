//! A lean HTTP/1.1 client over hyper's connection API: a pool of keep-alive connections,
//! each bound to one of the generator's local addresses, one request at a time each.

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use tokio::net::{TcpSocket, TcpStream};

use crate::stats::lock;

/// The local addresses client sockets are bound to in turn (127.0.0.1, 127.0.0.2, …), so
/// that more connections than one address has ephemeral ports can be opened.
pub(crate) struct Binds {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Binds {
    /// `count` loopback addresses when the server is on loopback, else the default route.
    pub(crate) fn new(server: SocketAddr, count: u8) -> Self {
        let addrs = match server.ip() {
            IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified() => {
                (1..=count.max(1)).map(|i| IpAddr::from([127, 0, 0, i])).collect()
            }
            _ => Vec::new(),
        };
        Binds { addrs, next: AtomicUsize::new(0) }
    }

    /// Opens a TCP connection to `server` from the next local address.
    pub(crate) async fn connect(&self, server: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = if self.addrs.is_empty() {
            TcpStream::connect(server).await?
        } else {
            let local = self.addrs[self.next.fetch_add(1, Relaxed) % self.addrs.len()];
            let socket = if server.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(local, 0))?;
            socket.connect(server).await?
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// An answer: status and the whole body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Answer {
    /// `"429 rate_limited"`: the status and the contract's error code, for refusal counts.
    pub(crate) fn code(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Body {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            code: String,
        }
        let body = serde_json::from_slice::<Body>(&self.body).ok();
        refusal_code(self.status.as_u16(), body.as_ref().map(|b| b.error.code.as_str()))
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| format!("unexpected answer {}: {}", self.status, String::from_utf8_lossy(&self.body)))
    }
}

/// How refusals are counted: `"429 rate_limited"`, or the status alone without an error code.
pub(crate) fn refusal_code(status: u16, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    }
}

pub(crate) struct HttpClient {
    server: SocketAddr,
    host: HeaderValue,
    binds: std::sync::Arc<Binds>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpClient {
    pub(crate) fn new(server: SocketAddr, binds: std::sync::Arc<Binds>) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&server.to_string())?;
        Ok(HttpClient { server, host, binds, idle: Mutex::new(Vec::new()) })
    }

    async fn checkout(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let Some(mut sender) = lock(&self.idle).pop() else { break };
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = self.binds.connect(self.server).await.context("connect")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.context("http handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request with a bearer token and a body of the given content type; waits
    /// for the whole answer.
    async fn call(&self, method: Method, path: &str, token: &str, body: Option<(&str, Vec<u8>)>) -> anyhow::Result<Answer> {
        let mut sender = self.checkout().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(CONTENT_TYPE, content_type);
                body
            }
            None => Vec::new(),
        };
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await.context("http request")?;
        let status = response.status();
        let body = response.into_body().collect().await.context("http body")?.to_bytes();
        if !sender.is_closed() {
            lock(&self.idle).push(sender);
        }
        Ok(Answer { status, body })
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> anyhow::Result<Answer> {
        self.call(Method::GET, path, token, None).await
    }

    /// A POST with a JSON body.
    pub(crate) async fn post(&self, path: &str, token: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.call(Method::POST, path, token, Some(("application/json", body))).await
    }

    /// A POST with a body of another type (a multipart upload).
    pub(crate) async fn post_as(&self, path: &str, token: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.call(Method::POST, path, token, Some((content_type, body))).await
    }
}
