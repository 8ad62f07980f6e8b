//! User tokens: HS256 JWTs with claims `sub`, `kind`, `exp` (API.md "Identity and auth").

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::model::UserKind;
use crate::time::Millis;

/// Clock leeway when checking `exp`.
pub const LEEWAY_S: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub kind: UserKind,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Issues and verifies HS256 tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Claims {
    /// Whether the token has expired (with the same leeway `TokenKeys::verify` allows).
    pub fn expired(&self) -> bool {
        let now = Millis::now().0.max(0) as u64 / 1000;
        self.exp.saturating_add(LEEWAY_S) < now
    }
}

impl TokenKeys {
    pub fn hs256(secret: &[u8]) -> Self {
        TokenKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    /// A token for `user` valid for `ttl_s` seconds from now; returns it with its expiry.
    pub fn issue(&self, user: &str, kind: UserKind, ttl_s: u64) -> Result<(String, Millis), ApiError> {
        let expires_at = Millis::now().plus_ms(ttl_s as i64 * 1000);
        let claims = Claims { sub: user.to_owned(), kind, exp: (expires_at.0 / 1000) as u64 };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("cannot sign token: {e}")))?;
        Ok((token, Millis(claims.exp as i64 * 1000)))
    }

    /// The claims of a valid, unexpired token signed with this secret.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_S;
        validation.set_required_spec_claims(&["exp", "sub"]);
        decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => ApiError::unauthenticated("token expired"),
                _ => ApiError::unauthenticated("invalid token"),
            })
    }
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
}
