//! Integrators' identity providers: RS256 and ES256 public keys, from PEM or a JWKS
//! document, chosen by the token header's `kid`, with `iss` and `aud` checked when
//! configured.
//!
//! Each key is bound to one algorithm when it is loaded (an RSA key to RS256, a P-256 key to
//! ES256) and a token verifies only under its key's algorithm, so no header can make a
//! public key act as an HMAC secret or one key type stand for another.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePublicKey;

use super::{decoded, validation, Claims};
use crate::error::ApiError;

/// Why configured public keys cannot be used; the platform refuses to start with them.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid:?}: {reason}")]
    Unusable { kid: String, reason: String },
    #[error("key id {0:?} is configured twice")]
    DuplicateKid(String),
    #[error("not a JWKS document: {0}")]
    Jwks(String),
}

/// One public key and the one algorithm it verifies.
#[derive(Clone)]
struct PublicKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The public keys of integrators' identity providers by key id, and the `iss` and `aud`
/// their tokens must carry when those are set. Empty by default: only the platform's own
/// tokens are accepted.
#[derive(Clone, Default)]
pub struct ExternalKeys {
    keys: BTreeMap<String, PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl ExternalKeys {
    /// Adds the public key `pem` (an RSA key as `PUBLIC KEY` or `RSA PUBLIC KEY`, or a P-256
    /// key as `PUBLIC KEY`) under the key id `kid`.
    pub fn add_pem(&mut self, kid: &str, pem: &[u8]) -> Result<(), KeyError> {
        let unusable = |reason: &str| KeyError::Unusable { kid: kid.to_owned(), reason: reason.to_owned() };
        let text = std::str::from_utf8(pem).map_err(|_| unusable("not a PEM file"))?;
        let key = match p256::PublicKey::from_public_key_pem(text) {
            Ok(ec) => es256(&ec),
            Err(_) => PublicKey {
                algorithm: Algorithm::RS256,
                key: DecodingKey::from_rsa_pem(pem).map_err(|_| {
                    unusable("not an RSA or P-256 public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`)")
                })?,
            },
        };
        self.insert(kid, key)
    }

    /// Adds every signing key of the JWKS document `json` (`{"keys": [...]}`); each needs a
    /// `kid` and must be RSA (RS256) or EC P-256 (ES256). Keys marked `"use": "enc"` are
    /// skipped. Returns how many keys were added.
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<usize, KeyError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| KeyError::Jwks(e.to_string()))?;
        let mut added = 0;
        for jwk in &set.keys {
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let kid = jwk.common.key_id.as_deref().filter(|kid| !kid.is_empty()).ok_or_else(|| {
                KeyError::Jwks("every signing key needs a \"kid\", so that tokens can name it".to_owned())
            })?;
            let key = from_jwk(jwk).map_err(|reason| KeyError::Unusable { kid: kid.to_owned(), reason })?;
            self.insert(kid, key)?;
            added += 1;
        }
        Ok(added)
    }

    /// Tokens must carry `"iss": issuer`.
    pub fn require_issuer(&mut self, issuer: impl Into<String>) {
        self.issuer = Some(issuer.into());
    }

    /// Tokens must name `audience` in `aud`.
    pub fn require_audience(&mut self, audience: impl Into<String>) {
        self.audience = Some(audience.into());
    }

    /// How many public keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn insert(&mut self, kid: &str, key: PublicKey) -> Result<(), KeyError> {
        if kid.is_empty() {
            return Err(KeyError::Unusable { kid: String::new(), reason: "a key id cannot be empty".to_owned() });
        }
        if self.keys.contains_key(kid) {
            return Err(KeyError::DuplicateKid(kid.to_owned()));
        }
        self.keys.insert(kid.to_owned(), key);
        Ok(())
    }

    /// The claims of an RS256 or ES256 `token` (whose decoded `header` is given) signed by
    /// the key its `kid` names; a token without `kid` is accepted only when there is exactly
    /// one key, so that it cannot be ambiguous.
    pub(super) fn verify(&self, token: &str, header: &Header) -> Result<Claims, ApiError> {
        let key = match &header.kid {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None if self.keys.is_empty() => None,
            None => return Err(ApiError::unauthenticated("token without kid")),
        }
        .ok_or_else(|| ApiError::unauthenticated("unknown signing key"))?;
        // The validation allows the key's own algorithm alone: an RS256 header on an ES256
        // key (or the reverse) fails before any signature is checked.
        let mut validation = validation(key.algorithm);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        decoded(token, &key.key, validation)
    }
}

fn es256(key: &p256::PublicKey) -> PublicKey {
    // ring verifies ECDSA against the uncompressed SEC1 point.
    PublicKey { algorithm: Algorithm::ES256, key: DecodingKey::from_ec_der(key.to_encoded_point(false).as_bytes()) }
}

/// The key of one JWKS entry, or why it cannot be used.
fn from_jwk(jwk: &Jwk) -> Result<PublicKey, String> {
    let key = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => PublicKey {
            algorithm: Algorithm::RS256,
            key: DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map_err(|e| format!("bad RSA key: {e}"))?,
        },
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            let mut point = vec![0x04];
            for coordinate in [&ec.x, &ec.y] {
                point.extend(URL_SAFE_NO_PAD.decode(coordinate).map_err(|_| "bad base64url in x or y".to_owned())?);
            }
            es256(&p256::PublicKey::from_sec1_bytes(&point).map_err(|_| "not a point of P-256".to_owned())?)
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            return Err(format!("curve {:?} is not supported: use P-256", ec.curve))
        }
        _ => return Err("only RSA (RS256) and EC P-256 (ES256) keys are supported".to_owned()),
    };
    let fitting = if key.algorithm == Algorithm::RS256 { KeyAlgorithm::RS256 } else { KeyAlgorithm::ES256 };
    match jwk.common.key_algorithm {
        Some(alg) if alg != fitting => Err(format!("\"alg\": \"{alg}\" does not fit this key, which is {fitting}")),
        _ => Ok(key),
    }
}

#[cfg(test)]
mod tests;
