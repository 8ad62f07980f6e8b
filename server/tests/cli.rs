//! The client commands of `esh` against a running `esh`, as the README walkthrough uses them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{data_dir, Process, ADMIN};
use serde_json::Value;

async fn next(lines: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    let line = tokio::time::timeout(common::WAIT, lines.recv()).await;
    line.expect("a line from esh listen").expect("esh listen is running")
}

fn esh(url: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_esh"))
        .args(args)
        .env("ESH_URL", url)
        .env("ESH_ADMIN_TOKEN", ADMIN)
        .env_remove("ESH_TOKEN")
        .output()
        .expect("esh runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// README walkthrough: `esh user create`, `esh token`, `esh listen` (acking and reading),
/// `esh send` and `esh chat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_commands_work_against_a_running_platform() {
    let (_keep, dir) = data_dir();
    let mut server = Process::start(&dir, &[]).await;
    let url = server.api.base.clone();

    let (ok, out) =
        esh(&url, &["user", "create", "acme", "--kind", "business", "--name", "Acme", "--permissions", "send,chat"]);
    assert!(ok, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["permissions"], serde_json::json!(["send", "chat"]));
    let (ok, out) = esh(&url, &["user", "create", "mona", "--kind", "mobile", "--verified"]);
    assert!(ok, "{out}");
    let (ok, business) = esh(&url, &["token", "acme"]);
    assert!(ok);
    let (ok, mobile) = esh(&url, &["token", "mona"]);
    assert!(ok);
    let (business, mobile) = (business.trim().to_owned(), mobile.trim().to_owned());

    let mut listener = Command::new(env!("CARGO_BIN_EXE_esh"))
        .args(["listen", "--read", "--token", &mobile])
        .env("ESH_URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("esh listen runs");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = listener.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(serde_json::from_str(&line).unwrap_or(Value::String(line)));
        }
    });
    assert_eq!(next(&mut lines).await["type"], "hello");

    let (ok, out) = esh(&url, &["send", "--token", &business, "--to", "mona", "hello from the walkthrough"]);
    assert!(ok, "{out}");
    let sent: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["status"], "sent");
    let frame = next(&mut lines).await;
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["message"]["id"], sent["id"]);
    let message_id = sent["id"].as_str().unwrap().to_owned();
    server.api.wait_status(&business, &message_id, "read").await;

    let (ok, out) = esh(&url, &["chat", "--token", &business, "--to", "mona", "a chat"]);
    assert!(ok, "{out}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["conversation_id"].is_string());
    assert_eq!(next(&mut lines).await["message"]["content"], "a chat");

    let (ok, out) = esh(&url, &["send", "--token", &business, "--to", "nobody", "x"]);
    assert!(!ok, "a refused send exits non-zero");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["error"]["code"], "not_found");

    let _ = listener.kill();
    let _ = listener.wait();
    assert!(server.terminate(Duration::from_secs(30)).await.success());
}
