//! User tokens (API.md "Identity and auth"): JWTs with claims `sub`, `kind`, `exp`.
//!
//! The platform issues and verifies HS256 tokens with its own secret. Integrators' identity
//! providers sign RS256 or ES256 tokens whose public keys are configured (`external`). The
//! token header's `alg` only chooses between the two: HS256 is always checked against the
//! platform secret, RS256 and ES256 only against a configured public key of that very
//! algorithm, and every other `alg` (`none` included) is refused.

mod external;
#[cfg(feature = "test-issuer")]
pub mod test_issuer;

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use external::{ExternalKeys, KeyError};

use crate::error::ApiError;
use crate::model::UserKind;
use crate::time::Millis;

/// Clock leeway when checking `exp` and `nbf`.
pub const LEEWAY_S: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// The user's kind as the issuer saw it; the platform always sets it, an identity
    /// provider may leave it out. Authority comes from the directory, never from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<UserKind>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Issues HS256 tokens with the platform secret and verifies them, and verifies the RS256
/// and ES256 tokens of the configured identity providers.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    external: Arc<ExternalKeys>,
}

impl Claims {
    /// Whether the token has expired (with the same leeway `TokenKeys::verify` allows).
    pub fn expired(&self) -> bool {
        let now = Millis::now().0.max(0) as u64 / 1000;
        self.exp.saturating_add(LEEWAY_S) < now
    }
}

impl TokenKeys {
    /// Keys that issue and accept HS256 tokens of `secret` only.
    pub fn hs256(secret: &[u8]) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            external: Arc::new(ExternalKeys::default()),
        }
    }

    /// These keys, also accepting the tokens of `external` identity providers.
    pub fn with_external(self, external: ExternalKeys) -> Self {
        TokenKeys { external: Arc::new(external), ..self }
    }

    /// A token for `user` valid for `ttl_s` seconds from now; returns it with its expiry.
    pub fn issue(&self, user: &str, kind: UserKind, ttl_s: u64) -> Result<(String, Millis), ApiError> {
        let expires_at = Millis::now().plus_ms(ttl_s as i64 * 1000);
        let claims = Claims { sub: user.to_owned(), kind: Some(kind), exp: (expires_at.0 / 1000) as u64 };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("cannot sign token: {e}")))?;
        Ok((token, Millis(claims.exp as i64 * 1000)))
    }

    /// The claims of a valid, unexpired token: HS256 signed with the platform secret, or
    /// RS256 / ES256 signed by a configured identity provider.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let header = decode_header(token).map_err(|_| ApiError::unauthenticated("invalid token"))?;
        match header.alg {
            Algorithm::HS256 => decoded(token, &self.decoding, validation(Algorithm::HS256)),
            Algorithm::RS256 | Algorithm::ES256 => self.external.verify(token, &header),
            _ => Err(ApiError::unauthenticated("unsupported token algorithm")),
        }
    }
}

/// What every token must satisfy: signed with `algorithm` alone, `sub` and `exp` present,
/// `exp` and `nbf` (when present) checked with [`LEEWAY_S`].
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_S;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

/// The claims of `token` checked by `key` and `validation`, or the 401 that says why not.
fn decoded(token: &str, key: &DecodingKey, validation: Validation) -> Result<Claims, ApiError> {
    decode::<Claims>(token, key, &validation).map(|data| data.claims).map_err(|e| {
        ApiError::unauthenticated(match e.kind() {
            ErrorKind::ExpiredSignature => "token expired",
            ErrorKind::ImmatureSignature => "token not yet valid",
            ErrorKind::InvalidIssuer => "token issuer not accepted",
            ErrorKind::InvalidAudience => "token audience not accepted",
            _ => "invalid token",
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forged_ones_do_not() {
        let keys = TokenKeys::hs256(b"secret");
        let (token, _) = keys.issue("alice", UserKind::Mobile, 60).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, "alice");
        assert!(TokenKeys::hs256(b"other").verify(&token).is_err());
        assert!(keys.verify("not.a.token").is_err());
    }

    fn encoded(json: &serde_json::Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let keys = TokenKeys::hs256(b"secret");
        let claims = serde_json::json!({"sub": "alice", "kind": "mobile", "exp": u64::MAX / 2});
        let none = format!("{}.{}.", encoded(&serde_json::json!({"alg": "none", "typ": "JWT"})), encoded(&claims));
        assert!(keys.verify(&none).is_err(), "alg none");
        let (token, _) = keys.issue("alice", UserKind::Mobile, 60).unwrap();
        let (signed_part, _) = token.rsplit_once('.').unwrap();
        assert!(keys.verify(&format!("{signed_part}.")).is_err(), "HS256 without its signature");
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let keys = TokenKeys::hs256(b"secret");
        let claims = serde_json::json!({"sub": "alice", "kind": "mobile"});
        let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")).unwrap();
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn other_hmac_algorithms_with_the_right_secret_are_refused() {
        let keys = TokenKeys::hs256(b"secret");
        let claims = serde_json::json!({"sub": "alice", "kind": "mobile", "exp": u64::MAX / 2});
        let hs512 = encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(b"secret")).unwrap();
        assert_eq!(keys.verify(&hs512).unwrap_err().message, "unsupported token algorithm");
    }
}
