//! Security edges of the public contract (API.md "Identity and auth"), through HTTP and the
//! WebSocket upgrade: unsigned tokens, tokens without expiry, and a `kind` claim that
//! contradicts the user directory.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{Harness, JWT_SECRET};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A JWT with header `header` and claims `claims`, signed with the harness's secret.
fn signed(claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).expect("sign")
}

/// An unsigned JWT (`alg: none`, empty signature) with these claims.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Asserts that `token` is refused with 401 `unauthenticated` over HTTP and before the upgrade.
async fn assert_refused(esh: &Harness, what: &str, token: &str) {
    let answer = esh.get(token, "/v1/users/mona").await;
    assert_eq!((answer.status, answer.code()), (401, "unauthenticated"), "{what} over HTTP: {}", answer.body);
    let (status, body) = esh.refused_upgrade(&esh.ws_url(), Some(token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{what} on the socket: {body}");
}

/// API.md "Identity and auth": tokens are HS256 with the configured secret. An unsigned
/// token (`alg: none`) is refused, also when its header claims HS256 with no signature, or
/// when it carries the signature of a properly signed token.
#[tokio::test]
async fn unsigned_tokens_are_401() {
    let esh = Harness::start().await;
    esh.mobile("mona").await;
    let claims = json!({"sub": "mona", "kind": "mobile", "exp": now_s() + 3600});
    assert_refused(&esh, "alg none", &unsigned(&claims)).await;

    let genuine = signed(&claims);
    let signature = genuine.rsplit('.').next().unwrap_or_default();
    assert_refused(&esh, "alg none with a real signature", &format!("{}{signature}", unsigned(&claims))).await;
    let (head_and_claims, _) = genuine.rsplit_once('.').unwrap_or_default();
    assert_refused(&esh, "HS256 without a signature", &format!("{head_and_claims}.")).await;
    // The genuine token works: the refusals above are about the signature alone.
    assert_eq!(esh.get(&genuine, "/v1/users/mona").await.status, 200);
}

/// API.md "Identity and auth": a token has claims `sub`, `kind`, `exp`; one without `exp`
/// never expires and is refused, even signed with the right secret.
#[tokio::test]
async fn a_token_without_exp_is_401() {
    let esh = Harness::start().await;
    esh.mobile("mona").await;
    assert_refused(&esh, "no exp", &signed(&json!({"sub": "mona", "kind": "mobile"}))).await;
    assert_refused(&esh, "exp null", &signed(&json!({"sub": "mona", "kind": "mobile", "exp": null}))).await;
    assert_refused(&esh, "exp as text", &signed(&json!({"sub": "mona", "kind": "mobile", "exp": "tomorrow"}))).await;
}

/// API.md "Permissions live in the user directory": the `kind` claim of a token does not
/// make its holder an admin; the directory's kind of `sub` decides.
///
/// The answer is 403, not 401: the token is genuine (right secret, not expired) and names
/// an existing user, so the caller *is* authenticated, as that mobile user; 401 would tell
/// the client to get a new token, which would not help. What is refused is the action, for
/// the directory's kind of the caller, which is 403 (API.md "Precise rules": 401 for the
/// token, then 403 for the permission).
#[tokio::test]
async fn a_mobile_users_token_claiming_admin_kind_does_not_act_as_admin() {
    let esh = Harness::start().await;
    esh.mobile("mona").await;
    esh.mobile("otto").await;
    let forged_kind = signed(&json!({"sub": "mona", "kind": "admin", "exp": now_s() + 3600}));

    // Authenticated as mona: her own user is readable.
    let own = esh.get(&forged_kind, "/v1/users/mona").await;
    assert_eq!((own.status, own.body["kind"].as_str()), (200, Some("mobile")), "{}", own.body);

    let admin_only = [
        esh.get(&forged_kind, "/v1/admin/dead-letters").await,
        esh.post(&forged_kind, "/v1/users", json!({"id": "eve", "kind": "admin", "display_name": "Eve"})).await,
        esh.post(&forged_kind, "/v1/users/otto/tokens", json!({})).await,
        esh.get(&forged_kind, "/v1/users/otto").await,
    ];
    for answer in admin_only {
        assert_eq!((answer.status, answer.code()), (403, "forbidden"), "{}", answer.body);
    }
    assert_eq!(esh.get(&esh.admin, "/v1/users/eve").await.status, 404, "no user was created");
}
