//! Idempotency keys of sends (API.md "Precise rules"): scoped to the sender across every
//! send endpoint, claimed before the send, completed with its answer. The answer also
//! travels in the send's log record, so the store projection keeps it and a restart
//! restores it (`Ingest::restore_idempotency`).

use std::time::Duration;

use esh_backends::cache::IDEMPOTENCY_TTL;
use esh_backends::{Claim, StoredAnswer};
use esh_common::{ApiError, ErrorCode, Millis};
use serde_json::json;
use tokio::time::Instant;

use super::SendInput;
use crate::Ingest;

/// How often a repeat polls the key of a request still in flight, and for how long at most.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(10);
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// What became of an idempotency key.
pub(crate) enum KeyState {
    /// This request holds the key and must complete or release it.
    Held,
    /// An identical request answered already: this is its answer.
    Replay(StoredAnswer),
}

/// The idempotency key of a send, scoped to its sender, with the fingerprint of its body
/// (only keyed sends pay for the hash).
pub(crate) struct SendKey {
    pub(crate) key: String,
    pub(crate) fingerprint: String,
}

impl SendKey {
    pub(crate) fn of(sender: &str, input: &SendInput) -> Option<SendKey> {
        let key = input.key.as_ref()?;
        Some(SendKey { key: format!("{sender}:{key}"), fingerprint: input.fingerprint() })
    }

    /// The key and the fingerprint, as the record of the send carries them.
    pub(crate) fn parts(&self) -> (&str, &str) {
        (&self.key, &self.fingerprint)
    }
}

/// The 409 of a key used before with a different body.
pub(crate) fn conflict() -> ApiError {
    ApiError::conflict("idempotency key already used with a different body")
        .with_details(json!({ "field": "idempotency_key" }))
}

impl Ingest {
    /// Claims a scoped key, waiting while an identical request holding it is in flight;
    /// `conflict()` if it belongs to a request with a different body.
    pub(crate) async fn claim_key(&self, key: &str, fingerprint: &str) -> Result<KeyState, ApiError> {
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        loop {
            let claim = self.backends.idempotency.claim(key, fingerprint, IDEMPOTENCY_TTL).await?;
            match claim {
                Claim::New => return Ok(KeyState::Held),
                Claim::Done { fingerprint: held, answer } if held == fingerprint => {
                    return Ok(KeyState::Replay(answer))
                }
                Claim::InFlight { fingerprint: held } if held == fingerprint => {
                    if Instant::now() >= deadline {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            "the first request with this key is still running",
                        )
                        .with_retry_after(Duration::from_secs(1)));
                    }
                    tokio::time::sleep(IN_FLIGHT_POLL).await;
                }
                Claim::Done { .. } | Claim::InFlight { .. } => return Err(conflict()),
            }
        }
    }

    /// Completes a held key with its answer, or frees it when the send had no effect.
    pub(crate) async fn settle_key(&self, key: &str, answer: Option<StoredAnswer>) {
        let idempotency = &self.backends.idempotency;
        let settled = match answer {
            Some(answer) => idempotency.complete(key, answer).await,
            None => idempotency.release(key).await,
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "cannot settle idempotency key");
        }
    }

    /// Loads the answers the store projection kept for the last 24 h into the key store,
    /// so that repeats after a restart get them (called once at start, after the
    /// projection caught up with the log). Returns how many were restored.
    pub async fn restore_idempotency(&self) -> Result<usize, ApiError> {
        let since = Millis(Millis::now().0 - IDEMPOTENCY_TTL.as_millis() as i64);
        let records = self.backends.store.idempotency_records(since).await?;
        let idempotency = &self.backends.idempotency;
        let mut restored = 0;
        for record in records {
            let age = Duration::from_millis((Millis::now().0 - record.at.0).max(0) as u64);
            let Some(ttl) = IDEMPOTENCY_TTL.checked_sub(age) else { continue };
            if let Claim::New = idempotency.claim(&record.key, &record.fingerprint, ttl).await? {
                let answer = StoredAnswer { status: record.status, body: record.body.into_bytes() };
                idempotency.complete(&record.key, answer).await?;
                restored += 1;
            }
        }
        Ok(restored)
    }
}
