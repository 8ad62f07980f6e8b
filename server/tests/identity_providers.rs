//! Integrators' own identity providers (API.md "Identity and auth": RS256/ES256 public keys
//! configurable) through the real HTTP API and WebSocket: their tokens identify users for
//! sends (Req 1.1, 1.10) and sockets (Req 1.2), keys rotate by `kid`, and every token that
//! does not hold is a 401 with the contract's body.

mod common;

use std::path::{Path, PathBuf};

use common::{id, Harness};
use esh_common::auth::test_issuer::{claims, jwks, TestKey};
use esh_server::config::PublicKeyFile;
use esh_server::{Config, Platform, PlatformError};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://id.integrator.example";
const AUDIENCE: &str = "esh3ar";

/// Key files in a directory of their own, which outlives platform restarts.
struct KeyFiles {
    dir: tempfile::TempDir,
}

impl KeyFiles {
    fn new() -> KeyFiles {
        KeyFiles { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write key file");
        path
    }
}

/// `key` as a PEM file configured under its kid.
fn pem_file(files: &KeyFiles, key: &TestKey) -> PublicKeyFile {
    PublicKeyFile { kid: key.kid.clone(), path: files.write(&format!("{}.pem", key.kid), key.public_pem()) }
}

/// A token of `key` for `sub` with the configured issuer and audience, plus `extra` claims.
fn token(key: &TestKey, sub: &str, extra: Value) -> String {
    let mut all = json!({"iss": ISSUER, "aud": AUDIENCE});
    all.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
    key.sign(&claims(sub, all))
}

fn now_s() -> i64 {
    esh_common::Millis::now().0 / 1000
}

/// Asserts a 401 `unauthenticated` error body over HTTP and before a socket upgrade.
async fn assert_refused(esh: &Harness, what: &str, token: &str) {
    let answer = esh.get(token, "/v1/users/mona").await;
    assert_eq!((answer.status, answer.code()), (401, "unauthenticated"), "{what} over HTTP: {}", answer.body);
    assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", answer.body);
    let (status, body) = esh.refused_upgrade(&esh.ws_url(), Some(token)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{what} on the socket: {body}"
    );
}

/// Req 1.1, 1.2, 1.10 with identities of an integrator's provider: an RS256 token (PEM key)
/// sends a one-way message, an ES256 token (JWKS key) receives it on the socket and reads
/// it, and the platform's own HS256 tokens keep working beside them.
#[tokio::test]
async fn rs256_and_es256_tokens_of_an_identity_provider_send_and_receive() {
    let (files, rsa, ec) = (KeyFiles::new(), TestKey::rs256("rsa-2026"), TestKey::es256("ec-2026"));
    let keys = vec![pem_file(&files, &rsa)];
    let jwks_path = files.write("jwks.json", &jwks(&[&ec]));
    let esh = Harness::start_with(|config| {
        config.jwt_public_keys = keys;
        config.jwt_jwks = Some(jwks_path);
        config.jwt_issuer = Some(ISSUER.into());
        config.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    let platform_token = esh.business("shop").await;
    esh.mobile("mona").await;
    let (shop, mona) = (token(&rsa, "shop", json!({})), token(&ec, "mona", json!({})));

    assert_eq!(esh.get(&mona, "/v1/users/mona").await.body["id"], "mona");
    let mut socket = esh.connect(&mona).await;
    let sent = esh.one_way(&shop, "mona", "from the provider's token").await;
    let received = socket.next_of("message").await;
    assert_eq!(received["message"]["id"], sent["id"], "{received}");
    assert_eq!(esh.message(&mona, &id(&sent)).await["sender_id"], "shop");
    esh.one_way(&platform_token, "mona", "from the platform's token").await;
    // `kind` is optional in a provider's token; the directory says who the user is.
    let admin_claim = token(&ec, "mona", json!({"kind": "admin"}));
    assert_eq!(esh.get(&admin_claim, "/v1/users/shop").await.status, 403, "a kind claim grants nothing");
}

/// Every provider token that does not hold is refused with 401 and the contract's error
/// body, over HTTP and before the WebSocket upgrade.
#[tokio::test]
async fn identity_provider_tokens_that_do_not_hold_are_401() {
    let (files, rsa, ec) = (KeyFiles::new(), TestKey::rs256("rsa"), TestKey::es256("ec"));
    let keys = vec![pem_file(&files, &rsa), pem_file(&files, &ec)];
    let esh = Harness::start_with(|config| {
        config.jwt_public_keys = keys;
        config.jwt_issuer = Some(ISSUER.into());
        config.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    esh.mobile("mona").await;
    assert_eq!(esh.get(&token(&ec, "mona", json!({})), "/v1/users/mona").await.status, 200);

    let stranger = TestKey::es256("stranger");
    assert_refused(&esh, "unknown kid", &token(&stranger, "mona", json!({}))).await;
    assert_refused(
        &esh,
        "a known kid on a stranger's signature",
        &stranger.sign_as(Some("ec"), &claims("mona", json!({"iss": ISSUER, "aud": AUDIENCE}))),
    )
    .await;
    assert_refused(
        &esh,
        "no kid with two keys",
        &ec.sign_as(None, &claims("mona", json!({"iss": ISSUER, "aud": AUDIENCE}))),
    )
    .await;
    assert_refused(&esh, "wrong iss", &token(&ec, "mona", json!({"iss": "https://evil.example"}))).await;
    assert_refused(&esh, "wrong aud", &token(&ec, "mona", json!({"aud": "someone-else"}))).await;
    assert_refused(&esh, "expired", &token(&rsa, "mona", json!({"exp": now_s() - 60}))).await;
    assert_refused(&esh, "not yet valid", &token(&rsa, "mona", json!({"nbf": now_s() + 600}))).await;
    assert_refused(&esh, "unknown user", &token(&rsa, "nobody", json!({}))).await;

    let genuine = token(&ec, "mona", json!({}));
    let other = token(&ec, "admin", json!({}));
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], other.split('.').nth(1).unwrap_or_default(), parts[2]);
    assert_refused(&esh, "tampered payload", &tampered).await;

    // Algorithm confusion: a public key as an HMAC secret, an RS256 token for the ES256 key,
    // and an unsigned token naming a configured key.
    let body = claims("mona", json!({"iss": ISSUER, "aud": AUDIENCE}));
    for key in [&rsa, &ec] {
        let header = Header { kid: Some(key.kid.clone()), ..Header::new(Algorithm::HS256) };
        let hmac = encode(&header, &body, &EncodingKey::from_secret(key.public_pem().as_bytes())).expect("sign");
        assert_refused(&esh, "HS256 signed with a public key", &hmac).await;
    }
    assert_refused(&esh, "RS256 for the ES256 key", &rsa.sign_as(Some("ec"), &body)).await;
    assert_refused(&esh, "ES256 for the RS256 key", &ec.sign_as(Some("rsa"), &body)).await;
    let b64 = |value: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let none = format!("{}.{}.", b64(json!({"alg": "none", "kid": "ec"})), b64(body.clone()));
    assert_refused(&esh, "alg none", &none).await;
}

/// Key rotation by kid: while the JWKS lists two keys, tokens of both are valid; once the
/// old key is removed and the platform restarted, its tokens are 401 and the new key's
/// still work.
#[tokio::test]
async fn a_key_removed_from_the_jwks_signs_nothing_after_a_restart() {
    let (files, old, new) = (KeyFiles::new(), TestKey::rs256("2026-01"), TestKey::es256("2026-02"));
    let jwks_path = files.write("jwks.json", &jwks(&[&old, &new]));
    let configured = jwks_path.clone();
    let mut esh = Harness::start_with(|config| config.jwt_jwks = Some(configured)).await;
    esh.mobile("mona").await;
    let (old_token, new_token) = (old.sign(&claims("mona", json!({}))), new.sign(&claims("mona", json!({}))));
    assert_eq!(esh.get(&old_token, "/v1/users/mona").await.status, 200);
    assert_eq!(esh.get(&new_token, "/v1/users/mona").await.status, 200);

    files.write("jwks.json", &jwks(&[&new]));
    esh.restart(|config| config.jwt_jwks = Some(jwks_path)).await;
    assert_refused(&esh, "a token of the removed key", &old_token).await;
    assert_eq!(esh.get(&new_token, "/v1/users/mona").await.status, 200);
}

/// The start-up error of a configuration whose keys cannot be used.
async fn start_error(dir: &Path, tune: impl FnOnce(&mut Config)) -> String {
    let mut config = Harness::config(dir);
    tune(&mut config);
    match Platform::start(config).await {
        Ok(_) => panic!("the platform started with unusable keys"),
        Err(error @ (PlatformError::JwtKeys { .. } | PlatformError::Config(_))) => error.to_string(),
        Err(other) => panic!("unexpected start-up error: {other}"),
    }
}

/// Malformed key files fail the start with an error that names the file and the reason,
/// and nothing is generated in the data directory.
#[tokio::test]
async fn unusable_keys_fail_the_start_clearly() {
    let (files, data) = (KeyFiles::new(), tempfile::tempdir().expect("tempdir"));
    let garbage = files.write("garbage.pem", "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n");
    let error = start_error(data.path(), |config| {
        config.jwt_public_keys = vec![PublicKeyFile { kid: "k".into(), path: garbage.clone() }];
    })
    .await;
    assert!(error.contains("garbage.pem") && error.contains("not an RSA or P-256 public key"), "{error}");

    let missing = files.dir.path().join("missing.pem");
    let error = start_error(data.path(), |config| {
        config.jwt_public_keys = vec![PublicKeyFile { kid: "k".into(), path: missing.clone() }];
    })
    .await;
    assert!(error.contains("missing.pem"), "{error}");

    let broken = files.write("broken.json", "{\"keys\": [");
    let error = start_error(data.path(), |config| config.jwt_jwks = Some(broken.clone())).await;
    assert!(error.contains("broken.json") && error.contains("not a JWKS document"), "{error}");

    let mut no_kid = TestKey::es256("x").jwk().clone();
    no_kid.as_object_mut().expect("object").remove("kid");
    let kidless = files.write("kidless.json", &json!({"keys": [no_kid]}).to_string());
    let error = start_error(data.path(), |config| config.jwt_jwks = Some(kidless.clone())).await;
    assert!(error.contains("kid"), "{error}");

    let empty = files.write("empty.json", "{\"keys\": []}");
    let error = start_error(data.path(), |config| config.jwt_jwks = Some(empty.clone())).await;
    assert!(error.contains("no signing key"), "{error}");

    let key = TestKey::es256("dup");
    let (pem, twice) = (pem_file(&files, &key), files.write("dup.json", &jwks(&[&key])));
    let error = start_error(data.path(), |config| {
        config.jwt_public_keys = vec![pem];
        config.jwt_jwks = Some(twice);
    })
    .await;
    assert!(error.contains("configured twice"), "{error}");

    let error = start_error(data.path(), |config| config.jwt_issuer = Some(ISSUER.into())).await;
    assert!(error.contains("ESH_JWT_ISSUER"), "{error}");
    assert!(!data.path().join("jwt_secret").exists(), "a failed start generates nothing");
}
