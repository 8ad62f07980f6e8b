//! Who is calling: the `Caller` extractor, the first check of every protected route (401).
//!
//! A bearer token is either the admin token (`ESH_ADMIN_TOKEN`) or a user token (the
//! platform's HS256, or an identity provider's RS256/ES256: `esh_common::auth`) whose `sub`
//! must still exist in the directory. The user is read from the store on every
//! request, so permission changes and removals take effect at once (API.md: within 1 s).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use esh_common::auth::{Claims, TokenKeys};
use esh_common::{ApiError, User, UserKind};

use crate::Ingest;
use crate::http_error::HttpError;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The holder of the admin token.
    Admin,
    /// A user of the directory, as stored right now (admin-kind users act as admin).
    User(User),
}

impl Caller {
    /// Whether the caller may do what only admins may.
    pub(crate) fn is_admin(&self) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(user) => user.kind == UserKind::Admin,
        }
    }

    /// The caller's directory entry (none for the admin token).
    pub(crate) fn user(&self) -> Option<&User> {
        match self {
            Caller::Admin => None,
            Caller::User(user) => Some(user),
        }
    }

    /// Whether the caller is the user `id`.
    pub(crate) fn is(&self, id: &str) -> bool {
        self.user().is_some_and(|user| user.id == id)
    }

    /// The caller's user when it is a business or mobile user; admins get `403`.
    pub(crate) fn participant(&self) -> Result<&User, ApiError> {
        match self.user() {
            Some(user) if matches!(user.kind, UserKind::Business | UserKind::Mobile) => Ok(user),
            _ => Err(ApiError::forbidden("only business and mobile users have this resource")),
        }
    }

    /// `Ok` for admins, `403` for everyone else.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("admin only"))
        }
    }
}

impl FromRequestParts<Arc<Ingest>> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, ingest: &Arc<Ingest>) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        ingest.authenticate(token).await.map_err(HttpError)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))?
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed authorization header"))?;
    let (scheme, token) =
        value.trim().split_once(' ').ok_or_else(|| ApiError::unauthenticated("expected a bearer token"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthenticated("expected a bearer token"));
    }
    Ok(token)
}

/// Compares secrets without an early exit on the first differing byte.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Tokens whose signature was verified, with their claims: a client sends the same token
/// with every request, and checking its signature again costs more than the rest of a
/// send's checks. Expiry is still checked on every use.
#[derive(Default)]
pub(crate) struct VerifiedTokens {
    claims: std::sync::Mutex<std::collections::HashMap<String, Claims>>,
}

impl VerifiedTokens {
    /// Tokens remembered at most; past this the memory starts afresh.
    const CAPACITY: usize = 100_000;

    /// The claims of `token`, verified once by `keys` and remembered.
    pub(crate) fn verify(&self, keys: &TokenKeys, token: &str) -> Result<Claims, ApiError> {
        let cached = self.lock().get(token).cloned();
        if let Some(claims) = cached {
            if !claims.expired() {
                return Ok(claims);
            }
        }
        let claims = keys.verify(token)?;
        let mut remembered = self.lock();
        if remembered.len() >= Self::CAPACITY {
            remembered.clear();
        }
        remembered.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Claims>> {
        self.claims.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Ingest {
    /// The caller holding `token`: the admin token, or a valid user token of an existing user.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        if !self.admin_token.is_empty() && same_secret(token, &self.admin_token) {
            return Ok(Caller::Admin);
        }
        let claims = self.verified.verify(&self.keys, token)?;
        match self.directory.user(&claims.sub).await? {
            Some(user) => Ok(Caller::User(user)),
            None => Err(ApiError::unauthenticated("unknown user")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert!(bearer_token(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers).unwrap(), "abc");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer_token(&headers).unwrap(), "abc");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer_token(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert!(bearer_token(&headers).is_err());
    }

    #[test]
    fn a_remembered_token_is_still_refused_once_expired() {
        let keys = TokenKeys::hs256(b"secret");
        let verified = VerifiedTokens::default();
        let (token, _) = keys.issue("u1", UserKind::Mobile, 60).unwrap();
        assert_eq!(verified.verify(&keys, &token).unwrap().sub, "u1");
        assert!(verified.verify(&keys, "not a token").is_err());
        // A token that expired while remembered: signed right, `exp` long past.
        let claims = Claims { sub: "u2".into(), kind: Some(UserKind::Mobile), exp: 1 };
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        verified.lock().insert(expired.clone(), claims);
        assert!(verified.verify(&keys, &expired).is_err());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }
}
