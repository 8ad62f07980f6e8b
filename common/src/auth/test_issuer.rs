//! An identity provider for tests (feature `test-issuer`): RS256 and ES256 key pairs made
//! on the spot, their public halves as PEM and JWK, and tokens signed with their private
//! halves. RSA key generation is slow, so a test binary makes one RSA key pair and shares it.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// A key pair of a test identity provider, known to verifiers as `kid`.
pub struct TestKey {
    pub kid: String,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
    jwk: Value,
}

/// The one RSA key pair of this test binary: private PKCS#8 PEM, public SPKI PEM, `n`, `e`.
fn rsa_pair() -> &'static (String, String, String, String) {
    static PAIR: OnceLock<(String, String, String, String)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation");
        let public = private.to_public_key();
        (
            private.to_pkcs8_pem(LineEnding::LF).expect("RSA private PEM").to_string(),
            public.to_public_key_pem(LineEnding::LF).expect("RSA public PEM"),
            URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        )
    })
}

impl TestKey {
    /// This binary's RSA key pair under the key id `kid`.
    pub fn rs256(kid: &str) -> TestKey {
        let (private, public, n, e) = rsa_pair();
        TestKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(private.as_bytes()).expect("RSA encoding key"),
            public_pem: public.clone(),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e}),
        }
    }

    /// A new P-256 key pair under the key id `kid`.
    pub fn es256(kid: &str) -> TestKey {
        let private = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let public = private.public_key();
        let point = public.to_encoded_point(false);
        let coordinate = |bytes: Option<&p256::FieldBytes>| URL_SAFE_NO_PAD.encode(bytes.expect("uncompressed point"));
        TestKey {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(
                private.to_pkcs8_pem(LineEnding::LF).expect("P-256 private PEM").as_bytes(),
            )
            .expect("P-256 encoding key"),
            public_pem: public.to_public_key_pem(LineEnding::LF).expect("P-256 public PEM"),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": coordinate(point.x()), "y": coordinate(point.y())}),
        }
    }

    /// The public key as an SPKI (`PUBLIC KEY`) PEM document.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A token of `claims` whose header names this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }

    /// A token of `claims` signed by this key whose header names `kid` instead (or no key).
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &self.encoding).expect("signing a test token")
    }
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Claims of a token for `sub` valid from now for an hour, with `extra` claims merged in.
pub fn claims(sub: &str, extra: Value) -> Value {
    let now = crate::time::Millis::now().0 / 1000;
    let mut claims = json!({"sub": sub, "iat": now, "exp": now + 3600});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}
