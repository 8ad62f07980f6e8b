//! The client commands of `esh`: enough of the API to try the platform from a shell
//! (create users, issue tokens, send messages, listen on a WebSocket) without other tools.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::Message as Frame;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Connects a WebSocket, prints each frame as a JSON line and acks every message;
    /// lines typed on stdin are sent as frames.
    Listen(ListenArgs),
    /// Sends a one-way message (business with `send`) and prints the answer.
    Send(SendArgs),
    /// Sends a chat message (business with `chat`, or verified mobile user) and prints the answer.
    Chat(SendArgs),
    /// Sends one message to several mobile users and prints the answer.
    Broadcast(BroadcastArgs),
    /// Manages users (admin).
    #[command(subcommand)]
    User(UserCommand),
    /// Issues a token for a user (admin) and prints it.
    Token(TokenArgs),
}

/// Where the API is and who is calling.
#[derive(Debug, Args)]
pub(crate) struct Endpoint {
    /// Base URL of the platform.
    #[arg(long, env = "ESH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The user's bearer token.
    #[arg(long, env = "ESH_TOKEN", hide_env_values = true)]
    token: String,
    /// Also mark every message read (sends `read` after `ack`).
    #[arg(long)]
    read: bool,
    /// Do not ack messages (they are sent again, then dead-lettered).
    #[arg(long, conflicts_with = "read")]
    no_ack: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The sender's bearer token.
    #[arg(long, env = "ESH_TOKEN", hide_env_values = true)]
    token: String,
    /// The recipient's user id.
    #[arg(long)]
    to: String,
    /// Message priority.
    #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
    priority: PriorityArg,
    /// Idempotency key: repeating the command with it returns the first answer.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The text of the message.
    content: String,
}

#[derive(Debug, Args)]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The sender's bearer token.
    #[arg(long, env = "ESH_TOKEN", hide_env_values = true)]
    token: String,
    /// Recipient user ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Message priority.
    #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
    priority: PriorityArg,
    /// The text of the message.
    content: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PriorityArg {
    High,
    Normal,
    Low,
}

impl PriorityArg {
    fn as_str(self) -> &'static str {
        match self {
            PriorityArg::High => "high",
            PriorityArg::Normal => "normal",
            PriorityArg::Low => "low",
        }
    }
}

/// How an admin command finds the admin token.
#[derive(Debug, Args)]
pub(crate) struct AdminAuth {
    /// The admin token; read from `<data dir>/admin_token` when unset.
    #[arg(long, env = "ESH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The data directory of a local platform (where a generated admin token is kept).
    #[arg(long, env = "ESH_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

impl AdminAuth {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = self.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            return Ok(token.to_owned());
        }
        let path = self.data_dir.join(esh_server::secrets::ADMIN_TOKEN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no --admin-token given and cannot read {}", path.display()))?;
        Ok(text.trim().to_owned())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Creates a user and prints it.
    Create(CreateUserArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateUserArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    #[command(flatten)]
    auth: AdminAuth,
    /// The new user's id (1 to 64 chars of `[A-Za-z0-9_.:-]`).
    id: String,
    /// The kind of user.
    #[arg(long, value_enum)]
    kind: KindArg,
    /// Display name (defaults to the id).
    #[arg(long)]
    name: Option<String>,
    /// Business permissions, comma-separated (`send`, `chat`).
    #[arg(long, value_delimiter = ',')]
    permissions: Vec<String>,
    /// Marks a mobile user verified (needed for chat).
    #[arg(long)]
    verified: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Business,
    Mobile,
    Admin,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    #[command(flatten)]
    auth: AdminAuth,
    /// The user the token is for.
    id: String,
    /// Lifetime in seconds (60..2592000).
    #[arg(long, default_value_t = 86_400)]
    ttl_s: u64,
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Listen(args) => listen(args).await,
        Command::Send(args) => {
            let body = message_body("recipient_id", &args);
            print_answer(post(&args.endpoint, &args.token, "/v1/messages", body).await?)
        }
        Command::Chat(args) => {
            let body = message_body("to", &args);
            print_answer(post(&args.endpoint, &args.token, "/v1/chat/messages", body).await?)
        }
        Command::Broadcast(args) => {
            let body = json!({"recipient_ids": args.to, "content": args.content, "priority": args.priority.as_str()});
            print_answer(post(&args.endpoint, &args.token, "/v1/broadcasts", body).await?)
        }
        Command::User(UserCommand::Create(args)) => {
            let kind = match args.kind {
                KindArg::Business => "business",
                KindArg::Mobile => "mobile",
                KindArg::Admin => "admin",
            };
            let mut body = json!({
                "id": args.id,
                "kind": kind,
                "display_name": args.name.clone().unwrap_or_else(|| args.id.clone()),
            });
            if !args.permissions.is_empty() {
                body["permissions"] = json!(args.permissions);
            }
            if args.verified {
                body["verified"] = json!(true);
            }
            print_answer(post(&args.endpoint, &args.auth.token()?, "/v1/users", body).await?)
        }
        Command::Token(args) => {
            let path = format!("/v1/users/{}/tokens", args.id);
            let (status, body) = post(&args.endpoint, &args.auth.token()?, &path, json!({"ttl_s": args.ttl_s})).await?;
            if !status.is_success() {
                return print_answer((status, body));
            }
            let token =
                body.get("token").and_then(Value::as_str).ok_or_else(|| anyhow!("answer without a token: {body}"))?;
            println!("{token}");
            Ok(())
        }
    }
}

fn message_body(recipient_field: &str, args: &SendArgs) -> Value {
    let mut body = json!({ recipient_field: args.to, "content": args.content, "priority": args.priority.as_str() });
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    body
}

async fn post(
    endpoint: &Endpoint,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let url = format!("{}{path}", endpoint.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.context("cannot read the answer")?;
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Ok((status, body))
}

/// Prints the answer body; a non-2xx answer is also an error (exit code 1).
fn print_answer((status, body): (reqwest::StatusCode, Value)) -> anyhow::Result<()> {
    if !body.is_null() {
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    if !status.is_success() {
        bail!("the platform answered {status}");
    }
    Ok(())
}

/// The WebSocket URL of the platform at `url` (`http(s)://` or `ws(s)://`, with or without the path).
fn websocket_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_owned()
    };
    if url.ends_with("/v1/ws") {
        url
    } else {
        format!("{url}/v1/ws")
    }
}

async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let url = websocket_url(&args.endpoint.url);
    let mut request = url.as_str().into_client_request().with_context(|| format!("invalid url {url}"))?;
    request.headers_mut().insert(AUTHORIZATION, format!("Bearer {}", args.token).parse().context("invalid token")?);
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            bail!("upgrade refused with {}: {body}", response.status());
        }
        Err(error) => return Err(error).with_context(|| format!("cannot connect to {url}")),
    };
    let (mut sink, mut stream) = socket.split();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            frame = stream.next() => {
                let text = match frame {
                    None => return Ok(()),
                    Some(Err(error)) => return Err(error).context("connection lost"),
                    Some(Ok(Frame::Text(text))) => text.to_string(),
                    Some(Ok(Frame::Close(close))) => {
                        eprintln!("closed by the server: {close:?}");
                        return Ok(());
                    }
                    Some(Ok(_)) => continue,
                };
                let frame: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                println!("{frame}");
                match frame.get("type").and_then(Value::as_str) {
                    Some("hello") => {
                        let seconds = frame.get("heartbeat_s").and_then(Value::as_u64).unwrap_or(30).max(2);
                        heartbeat = tokio::time::interval(Duration::from_secs(seconds / 2));
                        heartbeat.tick().await;
                    }
                    Some("message") if !args.no_ack => {
                        let Some(id) = frame.pointer("/message/id").and_then(Value::as_str) else { continue };
                        let mut replies = vec![json!({"type": "ack", "message_ids": [id]})];
                        if args.read {
                            replies.push(json!({"type": "read", "message_ids": [id]}));
                        }
                        for reply in replies {
                            sink.send(Frame::text(reply.to_string())).await.context("cannot send a receipt")?;
                        }
                    }
                    _ => {}
                }
            }
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) if !line.trim().is_empty() => {
                    sink.send(Frame::text(line)).await.context("cannot send the frame")?;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = heartbeat.tick() => {
                sink.send(Frame::text(json!({"type": "ping"}).to_string())).await.context("cannot send a ping")?;
            }
            _ = tokio::signal::ctrl_c() => {
                let _ = sink.send(Frame::Close(None)).await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::websocket_url;

    #[test]
    fn websocket_urls_follow_the_http_url() {
        assert_eq!(websocket_url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(websocket_url("https://esh.example/"), "wss://esh.example/v1/ws");
        assert_eq!(websocket_url("ws://h:1/v1/ws"), "ws://h:1/v1/ws");
    }
}
