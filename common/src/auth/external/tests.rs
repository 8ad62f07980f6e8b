//! Tokens of integrators' identity providers (API.md "Identity and auth": RS256/ES256 public
//! keys configurable), verified by the user identity every permission check of Req 1.9 and
//! 1.10 stands on.

use jsonwebtoken::{encode, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::auth::test_issuer::{claims, jwks, TestKey};
use crate::auth::{ExternalKeys, KeyError, TokenKeys};
use crate::error::ErrorCode;

fn keys_of(pems: &[&TestKey]) -> TokenKeys {
    let mut external = ExternalKeys::default();
    for key in pems {
        external.add_pem(&key.kid, key.public_pem().as_bytes()).unwrap();
    }
    TokenKeys::hs256(b"platform secret").with_external(external)
}

/// The message of the 401 `token` gets; panics when it is accepted or refused otherwise.
fn refusal(keys: &TokenKeys, token: &str) -> String {
    let error = keys.verify(token).expect_err("the token must be refused");
    assert_eq!(error.code, ErrorCode::Unauthenticated, "{error:?}");
    error.message
}

fn now() -> i64 {
    crate::time::Millis::now().0 / 1000
}

#[test]
fn rs256_and_es256_tokens_of_configured_pem_keys_verify() {
    let (rsa, ec) = (TestKey::rs256("rsa-1"), TestKey::es256("ec-1"));
    let keys = keys_of(&[&rsa, &ec]);
    assert_eq!(keys.verify(&rsa.sign(&claims("alice", json!({})))).unwrap().sub, "alice");
    let verified = keys.verify(&ec.sign(&claims("bob", json!({"kind": "business"})))).unwrap();
    assert_eq!((verified.sub.as_str(), verified.kind), ("bob", Some(crate::UserKind::Business)));
    // The platform's own tokens still verify beside them.
    let (platform, _) = keys.issue("carol", crate::UserKind::Mobile, 60).unwrap();
    assert_eq!(keys.verify(&platform).unwrap().sub, "carol");
}

#[test]
fn keys_of_a_jwks_rotate_by_kid() {
    let (old, new) = (TestKey::rs256("2026-01"), TestKey::es256("2026-02"));
    let mut both = ExternalKeys::default();
    assert_eq!(both.add_jwks(jwks(&[&old, &new]).as_bytes()).unwrap(), 2);
    let both = TokenKeys::hs256(b"s").with_external(both);
    let (old_token, new_token) = (old.sign(&claims("u", json!({}))), new.sign(&claims("u", json!({}))));
    assert!(
        both.verify(&old_token).is_ok() && both.verify(&new_token).is_ok(),
        "both keys are valid while both are listed"
    );

    let mut rotated = ExternalKeys::default();
    rotated.add_jwks(jwks(&[&new]).as_bytes()).unwrap();
    let rotated = TokenKeys::hs256(b"s").with_external(rotated);
    assert_eq!(refusal(&rotated, &old_token), "unknown signing key", "a key left out of the JWKS signs nothing");
    assert!(rotated.verify(&new_token).is_ok());
}

#[test]
fn a_kid_names_the_one_key_that_may_verify() {
    let (first, second) = (TestKey::es256("first"), TestKey::es256("second"));
    let keys = keys_of(&[&first, &second]);
    assert_eq!(refusal(&keys, &first.sign_as(Some("second"), &claims("u", json!({})))), "invalid token");
    assert_eq!(refusal(&keys, &first.sign_as(Some("third"), &claims("u", json!({})))), "unknown signing key");
    assert_eq!(refusal(&keys, &first.sign_as(None, &claims("u", json!({})))), "token without kid", "ambiguous");
    let only = keys_of(&[&first]);
    assert!(only.verify(&first.sign_as(None, &claims("u", json!({})))).is_ok(), "one key: no kid needed");
    assert_eq!(refusal(&TokenKeys::hs256(b"s"), &first.sign(&claims("u", json!({})))), "unknown signing key");
}

#[test]
fn no_header_makes_a_key_verify_under_another_algorithm() {
    let (rsa, ec) = (TestKey::rs256("rsa"), TestKey::es256("ec"));
    let keys = keys_of(&[&rsa, &ec]);
    let body = claims("u", json!({"kind": "admin"}));
    // HS256 "signed" with a public key's bytes, naming that key or none.
    for key in [&rsa, &ec] {
        for kid in [Some(key.kid.clone()), None] {
            let header = Header { kid, ..Header::new(jsonwebtoken::Algorithm::HS256) };
            let secret = EncodingKey::from_secret(key.public_pem().as_bytes());
            assert_eq!(refusal(&keys, &encode(&header, &body, &secret).unwrap()), "invalid token");
        }
    }
    // An RS256 token for the ES256 key and the reverse, each validly signed by its own key.
    assert_eq!(refusal(&keys, &rsa.sign_as(Some("ec"), &body)), "invalid token");
    assert_eq!(refusal(&keys, &ec.sign_as(Some("rsa"), &body)), "invalid token");
    // `alg: none` naming a configured key, with and without a signature part.
    let part = |value: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    for alg in ["none", "None", "NONE"] {
        let unsigned = format!("{}.{}", part(&json!({"alg": alg, "kid": "rsa"})), part(&body));
        assert_eq!(refusal(&keys, &format!("{unsigned}.")), "invalid token", "{alg}");
        let signature = rsa.sign(&body).rsplit_once('.').unwrap().1.to_owned();
        assert_eq!(refusal(&keys, &format!("{unsigned}.{signature}")), "invalid token", "{alg}");
    }
}

#[test]
fn a_tampered_payload_is_refused() {
    let key = TestKey::es256("ec");
    let keys = keys_of(&[&key]);
    let token = key.sign(&claims("mallory", json!({})));
    let [header, _, signature] = token.split('.').collect::<Vec<_>>()[..] else { panic!("three parts") };
    let other = key.sign(&claims("alice", json!({})));
    let forged = format!("{header}.{}.{signature}", other.split('.').nth(1).unwrap());
    assert_eq!(refusal(&keys, &forged), "invalid token");
}

#[test]
fn expiry_and_not_before_allow_five_seconds_of_leeway() {
    let key = TestKey::rs256("rsa");
    let keys = keys_of(&[&key]);
    let token = |extra: Value| key.sign(&claims("u", extra));
    assert!(keys.verify(&token(json!({"exp": now() - 2}))).is_ok(), "within the 5 s leeway");
    assert_eq!(refusal(&keys, &token(json!({"exp": now() - 30}))), "token expired");
    assert!(keys.verify(&token(json!({"nbf": now() + 2}))).is_ok(), "within the 5 s leeway");
    assert_eq!(refusal(&keys, &token(json!({"nbf": now() + 60}))), "token not yet valid");
    let mut no_exp = claims("u", json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(refusal(&keys, &key.sign(&no_exp)), "invalid token");
    assert_eq!(refusal(&keys, &key.sign(&json!({"exp": now() + 60}))), "invalid token", "no sub");
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let key = TestKey::es256("ec");
    let mut external = ExternalKeys::default();
    external.add_pem("ec", key.public_pem().as_bytes()).unwrap();
    let lax = TokenKeys::hs256(b"s").with_external(external.clone());
    external.require_issuer("https://id.example.com");
    external.require_audience("esh3ar");
    let strict = TokenKeys::hs256(b"s").with_external(external);

    let right = json!({"iss": "https://id.example.com", "aud": "esh3ar"});
    assert!(strict.verify(&key.sign(&claims("u", right.clone()))).is_ok());
    let among = json!({"iss": "https://id.example.com", "aud": ["other", "esh3ar"]});
    assert!(strict.verify(&key.sign(&claims("u", among))).is_ok(), "one of several audiences");
    let cases = [
        (json!({"iss": "https://evil.example.com", "aud": "esh3ar"}), "token issuer not accepted"),
        (json!({"aud": "esh3ar"}), "invalid token"),
        (json!({"iss": "https://id.example.com", "aud": "other"}), "token audience not accepted"),
        (json!({"iss": "https://id.example.com"}), "invalid token"),
    ];
    for (extra, message) in cases {
        assert_eq!(refusal(&strict, &key.sign(&claims("u", extra.clone()))), message, "{extra}");
        assert!(lax.verify(&key.sign(&claims("u", extra))).is_ok(), "nothing configured, nothing checked");
    }
}

#[test]
fn unusable_pem_keys_are_start_up_errors() {
    let mut keys = ExternalKeys::default();
    for bad in ["", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"] {
        let error = keys.add_pem("k", bad.as_bytes()).unwrap_err();
        assert!(matches!(&error, KeyError::Unusable { kid, .. } if kid == "k"), "{error}");
    }
    let private = private_key_pem();
    assert!(keys.add_pem("k", private.as_bytes()).is_err(), "a private key is not a public key");
    assert!(keys.add_pem("k", b"\xff\xfe").is_err());
    let key = TestKey::es256("ec");
    assert!(keys.add_pem("", key.public_pem().as_bytes()).is_err(), "empty kid");
    keys.add_pem("ec", key.public_pem().as_bytes()).unwrap();
    assert!(matches!(keys.add_pem("ec", key.public_pem().as_bytes()), Err(KeyError::DuplicateKid(kid)) if kid == "ec"));
    assert_eq!(keys.len(), 1);
}

fn private_key_pem() -> String {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    p256::SecretKey::random(&mut rand::rngs::OsRng).to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

#[test]
fn unusable_jwks_documents_are_start_up_errors() {
    let (rsa, ec) = (TestKey::rs256("rsa"), TestKey::es256("ec"));
    let with = |change: &dyn Fn(&mut Value)| {
        let mut jwk = ec.jwk().clone();
        change(&mut jwk);
        json!({"keys": [jwk]}).to_string()
    };
    let bad = [
        "".to_owned(),
        "{".to_owned(),
        "[]".to_owned(),
        json!({"keys": "none"}).to_string(),
        json!({"keys": [{"kty": "EC"}]}).to_string(),
        with(&|jwk| _ = jwk.as_object_mut().unwrap().remove("kid")),
        with(&|jwk| jwk["crv"] = json!("P-384")),
        with(&|jwk| jwk["x"] = json!("!!")),
        with(&|jwk| jwk["y"] = jwk["x"].clone()),
        with(&|jwk| jwk["alg"] = json!("RS256")),
        json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}).to_string(),
        jwks(&[&rsa, &rsa]),
    ];
    for document in bad {
        assert!(ExternalKeys::default().add_jwks(document.as_bytes()).is_err(), "{document}");
    }
    // Encryption keys are not signing keys: skipped, not refused.
    let mut encryption = rsa.jwk().clone();
    encryption["use"] = json!("enc");
    encryption["alg"] = json!("RSA-OAEP");
    let mut keys = ExternalKeys::default();
    let document = json!({"keys": [encryption, ec.jwk()]}).to_string();
    assert_eq!(keys.add_jwks(document.as_bytes()).unwrap(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes as a bearer token never panic: they are refused with a 401.
    #[test]
    fn arbitrary_tokens_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let keys = shared_keys();
        let token = String::from_utf8_lossy(&bytes);
        prop_assert_eq!(keys.verify(&token).unwrap_err().code, ErrorCode::Unauthenticated);
    }

    /// Three base64url parts of arbitrary JSON-ish text get past the splitting and the
    /// base64 and still never panic.
    #[test]
    fn arbitrary_headers_and_payloads_are_refused(
        alg in prop_oneof![Just("RS256".to_owned()), Just("ES256".to_owned()), Just("HS256".to_owned()), Just("none".to_owned()), "[A-Za-z0-9]{0,8}"],
        kid in proptest::option::of(prop_oneof![Just("rsa".to_owned()), Just("ec".to_owned()), ".{0,8}"]),
        payload in ".{0,64}",
        signature in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({"alg": alg, "kid": kid}).to_string();
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()), b64(&signature));
        prop_assert_eq!(shared_keys().verify(&token).unwrap_err().code, ErrorCode::Unauthenticated);
    }
}

fn shared_keys() -> &'static TokenKeys {
    static KEYS: std::sync::OnceLock<TokenKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| keys_of(&[&TestKey::rs256("rsa"), &TestKey::es256("ec")]))
}
