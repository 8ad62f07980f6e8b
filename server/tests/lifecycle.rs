//! Starting, stopping and restarting the platform in-process: generated secrets, durability
//! across a clean restart, start-up errors, and the merged HTTP surface.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{id, Api, Harness};
use esh_server::{Config, Platform, PlatformError};

/// API.md "Identity and auth": without ESH_ADMIN_TOKEN / ESH_JWT_SECRET both are generated
/// at first start, kept in the data directory (0600) and reused, so issued tokens survive
/// a restart; the admin token is reported as new only once.
#[tokio::test]
async fn first_start_generates_secrets_and_restarts_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(Config::local(dir.path())).await.unwrap();
    let admin = platform.generated_admin_token().expect("generated at first start").to_owned();
    for file in ["admin_token", "jwt_secret"] {
        let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is private");
    }
    let api = Api::new(platform.addr(), &admin);
    let token = api.mobile("mona").await;
    assert_eq!(api.get(&token, "/v1/users/mona").await.status, 200);
    platform.shutdown().await.unwrap();

    let platform = Platform::start(Config::local(dir.path())).await.unwrap();
    assert_eq!(platform.generated_admin_token(), None, "shown once");
    assert_eq!(platform.admin_token(), admin);
    let api = Api::new(platform.addr(), &admin);
    assert_eq!(api.get(&token, "/v1/users/mona").await.status, 200, "tokens stay valid across restarts");
    platform.shutdown().await.unwrap();
}

/// Req 6.6, "nothing that was accepted is ever lost": after a clean shutdown and restart
/// every accepted message is still there and is delivered on connect.
#[tokio::test]
async fn clean_restart_keeps_every_accepted_message() {
    let mut esh = Harness::start().await;
    let business = esh.business("acme").await;
    let mobile = esh.mobile("mona").await;
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(id(&esh.one_way(&business, "mona", &format!("before restart {i}")).await));
    }
    esh.restart(|_| {}).await;
    for message_id in &sent {
        assert_eq!(esh.message(&business, message_id).await["status"], "sent");
    }
    let mut socket = esh.connect(&mobile).await;
    let received: Vec<String> = socket.receive_acking(25).await.iter().map(id).collect();
    assert_eq!(received, sent);
    esh.stop().await;
}

/// ARCHITECTURE.md "an unknown scheme is a typed error at start-up, never a silent fallback";
/// a failed start leaves no generated secret behind.
#[tokio::test]
async fn unsupported_backend_urls_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::local(dir.path());
    config.log_url = Some("carrier-pigeon://coop".into());
    assert!(matches!(Platform::start(config).await, Err(PlatformError::Backend(_))));
    assert!(!dir.path().join("admin_token").exists(), "a failed start generates no admin token it cannot show");
    let mut config = Config::local(dir.path());
    config.blobs_url = Some("ftp://somewhere".into());
    assert!(matches!(Platform::start(config).await, Err(PlatformError::Backend(_))));
}

/// The listener serves the API and the WebSocket together; a taken port fails the start.
#[tokio::test]
async fn one_listener_serves_api_health_and_websocket() {
    let esh = Harness::start().await;
    assert_eq!(esh.get("", "/health/live").await.status, 200);
    let ready = esh.get("", "/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let missing = esh.get(&esh.admin, "/v1/nothing-here").await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let mobile = esh.mobile("mona").await;
    esh.connect(&mobile).await;

    let mut config = Config::local(esh.dir.path().join("other"));
    config.http_addr = esh.platform().addr();
    assert!(matches!(Platform::start(config).await, Err(PlatformError::Listen { .. })));
}
