//! Kafka-native ingest (API.md "Kafka topics"): integrators produce `SendRequest` records
//! to `esh.ingest.v1` (key: the sender id); consumer group `ingest` runs each through the
//! one send path, with every check of HTTP, and produces its outcome to `esh.status.v1`
//! (key: the request's idempotency key, else its request id): the message id, or the
//! error code and message HTTP would have answered.
//!
//! - Identity. A consumer cannot see who produced a record, so a record names its
//!   `principal` and [`Integrators`] (`ESH_INTEGRATORS`) lists the sender ids each principal
//!   may act for. That only principals can produce under their own name is the broker's
//!   job (ACLs on `esh.ingest.v1`).
//! - Bad records. A record that cannot be decoded, whose principal may not act for its
//!   sender, or that is refused for good (400, 403, 404, 409) goes to
//!   `esh.dead-letters.v1` with the reason; it never blocks its partition.
//! - Back-pressure. A refusal that passes (429 rate limit, 503 overloaded or unavailable)
//!   holds the sender's records back for the wait it names, then tries again: a burst
//!   produced to the topic is slowed down to the sender's limits, not refused.
//! - At-least-once. Offsets are committed only after the batch's outcomes and dead letters
//!   are durable. A request without an idempotency key is keyed by its request id, so a
//!   record read again after a crash gets the answer of its first reading, not a second
//!   message.
//! - Order. A sender's records are sent one after another in log order; different
//!   senders' records of a batch are sent at the same time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use esh_backends::log::{Consumed, MessageLog, Record};
use esh_backends::BackendError;
use esh_common::records::{self, IngestOutcome, OutcomeError, StatusRecord};
use esh_common::{topics, ApiError, DeadLetter, ErrorCode, Millis};
use esh_schemas::SendRequest;
use futures::future::try_join_all;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::send::{SendInput, SendKind};
use crate::Ingest;

/// Which sender ids each integrator principal may send as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Integrators(HashMap<String, Senders>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Senders {
    Any,
    Listed(HashSet<String>),
}

impl Integrators {
    /// Whether `principal` may send as `sender_id`.
    pub fn allows(&self, principal: &str, sender_id: &str) -> bool {
        match self.0.get(principal) {
            Some(Senders::Any) => true,
            Some(Senders::Listed(senders)) => senders.contains(sender_id),
            None => false,
        }
    }
}

/// `principal=sender,sender;principal=*`: each principal with the sender ids it may act
/// for, or `*` for any sender. Empty: no principal may send.
impl FromStr for Integrators {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut integrators = HashMap::new();
        for entry in text.split(';').map(str::trim).filter(|entry| !entry.is_empty()) {
            let Some((principal, senders)) = entry.split_once('=') else {
                return Err(format!("integrator entry {entry:?} is not principal=sender,sender or principal=*"));
            };
            let principal = principal.trim();
            let senders: HashSet<String> =
                senders.split(',').map(str::trim).filter(|sender| !sender.is_empty()).map(str::to_owned).collect();
            if principal.is_empty() || senders.is_empty() {
                return Err(format!("integrator entry {entry:?} needs a principal and at least one sender (or *)"));
            }
            let senders = if senders.contains("*") { Senders::Any } else { Senders::Listed(senders) };
            if integrators.insert(principal.to_owned(), senders).is_some() {
                return Err(format!("integrator {principal:?} is listed twice"));
            }
        }
        Ok(Integrators(integrators))
    }
}

/// Settings of the `esh.ingest.v1` consumer.
#[derive(Debug, Clone)]
pub struct LogIngestConfig {
    /// Who may send as whom (`ESH_INTEGRATORS`; default: nobody).
    pub integrators: Integrators,
    /// Records taken from the log at a time (default 100).
    pub batch: usize,
    /// How long a poll waits for records before it looks at shutdown again (default 100 ms).
    pub poll_wait: Duration,
    /// Wait before trying again a request refused with 503 and no `Retry-After` (default 1 s).
    pub unavailable_wait: Duration,
}

impl Default for LogIngestConfig {
    fn default() -> Self {
        LogIngestConfig {
            integrators: Integrators::default(),
            batch: 100,
            poll_wait: Duration::from_millis(100),
            unavailable_wait: Duration::from_secs(1),
        }
    }
}

/// What records left behind, not yet appended: their outcomes (when they could be
/// decoded) and their dead letters (when they were refused for good).
#[derive(Default)]
struct Effects {
    outcomes: Vec<Record>,
    dead_letters: Vec<Record>,
}

impl Effects {
    /// Appends what is held (durable when this returns) and empties it.
    async fn publish(&mut self, log: &dyn MessageLog) -> Result<(), BackendError> {
        let outcomes = std::mem::take(&mut self.outcomes);
        let dead_letters = std::mem::take(&mut self.dead_letters);
        let (outcomes, dead_letters) = tokio::join!(
            append_any(log, topics::STATUS, outcomes),
            append_any(log, topics::DEAD_LETTERS, dead_letters)
        );
        outcomes.and(dead_letters)
    }
}

async fn append_any(log: &dyn MessageLog, topic: &str, records: Vec<Record>) -> Result<(), BackendError> {
    if records.is_empty() {
        return Ok(());
    }
    log.append(topic, records).await
}

/// How a send ended for now.
enum Sent {
    /// Accepted (the id) or refused for good.
    Done(Result<String, ApiError>),
    /// Refused for a while: try again after the wait.
    HeldBack(Duration),
}

/// Runs the `esh.ingest.v1` consumer until `shutdown` is cancelled; a batch cut off by
/// shutdown is not committed and is read again on the next start.
pub async fn run(ingest: Arc<Ingest>, config: LogIngestConfig, shutdown: CancellationToken) -> Result<(), BackendError> {
    let log = ingest.backends.log.clone();
    let mut consumer = log.subscribe(topics::INGEST_GROUP, &[topics::INGEST]).await?;
    let consumer_ingest = ConsumerIngest { ingest, config, shutdown };
    loop {
        let batch = tokio::select! {
            _ = consumer_ingest.shutdown.cancelled() => return Ok(()),
            polled = consumer.poll(consumer_ingest.config.batch, consumer_ingest.config.poll_wait) => polled?,
        };
        if batch.is_empty() {
            continue;
        }
        if !consumer_ingest.handle(&batch).await? {
            return Ok(());
        }
        consumer.commit(&batch).await?;
    }
}

struct ConsumerIngest {
    ingest: Arc<Ingest>,
    config: LogIngestConfig,
    shutdown: CancellationToken,
}

impl ConsumerIngest {
    /// Handles a batch and appends its outcomes and dead letters: `Ok(false)` if shutdown
    /// came while a sender was held back (the batch must not be committed).
    async fn handle(&self, batch: &[Consumed]) -> Result<bool, BackendError> {
        let mut by_sender: BTreeMap<&str, Vec<&Consumed>> = BTreeMap::new();
        for record in batch {
            by_sender.entry(record.key.as_str()).or_default().push(record);
        }
        let senders = by_sender.into_values().map(|records| self.handle_sender(records));
        Ok(try_join_all(senders).await?.into_iter().all(|finished| finished))
    }

    /// Sends one sender's records in order. What is done is published before any wait, so
    /// that one sender held back does not hold back the outcomes of the others.
    async fn handle_sender(&self, records: Vec<&Consumed>) -> Result<bool, BackendError> {
        let log = self.ingest.backends.log.as_ref();
        let mut effects = Effects::default();
        for record in records {
            let request = match esh_schemas::decode::<SendRequest>(&record.value) {
                Ok(request) => request,
                Err(error) => {
                    let reason = format!("undecodable send request: {error}");
                    effects.dead_letters.push(dead_letter(&record.key, record, &reason)?);
                    continue;
                }
            };
            let key = request.outcome_key().to_owned();
            let outcome = loop {
                match self.try_send(&request, &key).await {
                    Sent::Done(outcome) => break outcome,
                    Sent::HeldBack(wait) => {
                        effects.publish(log).await?;
                        tracing::debug!(sender = %request.sender_id, wait_ms = wait.as_millis() as u64, "kafka-native send held back");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return Ok(false),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            };
            if let Err(error) = &outcome {
                let reason = format!("{}: {}", error.code.as_str(), error.message);
                effects.dead_letters.push(dead_letter(&key, record, &reason)?);
            }
            let outcome = IngestOutcome {
                key: key.clone(),
                sender_id: request.sender_id.clone(),
                message_id: outcome.as_ref().ok().cloned(),
                error: outcome.err().map(|error| OutcomeError { code: error.code.as_str().to_owned(), message: error.message }),
                at: Millis::now().0,
            };
            let value = records::encode(StatusRecord::Outcome(outcome)).map_err(unencodable)?;
            effects.outcomes.push(Record { key, value });
        }
        effects.publish(log).await?;
        Ok(true)
    }

    /// Sends `request` as HTTP would; a refusal that passes with time (429, 503) holds it back.
    async fn try_send(&self, request: &SendRequest, key: &str) -> Sent {
        match self.send(request, key).await {
            Err(error) if is_passing(&error) => Sent::HeldBack(error.retry_after.unwrap_or(self.config.unavailable_wait)),
            outcome => Sent::Done(outcome),
        }
    }

    async fn send(&self, request: &SendRequest, key: &str) -> Result<String, ApiError> {
        if !self.config.integrators.allows(&request.principal, &request.sender_id) {
            return Err(ApiError::forbidden(format!(
                "principal {:?} may not send as {:?}",
                request.principal, request.sender_id
            )));
        }
        let sender = self
            .ingest
            .directory
            .user(&request.sender_id)
            .await?
            .ok_or_else(|| ApiError::forbidden(format!("sender {:?} does not exist", request.sender_id)))?;
        let kind = match request.kind {
            esh_schemas::SendKind::OneWay => SendKind::OneWay,
            esh_schemas::SendKind::Chat => SendKind::Chat,
            esh_schemas::SendKind::Broadcast => SendKind::Broadcast,
        };
        if kind != SendKind::Broadcast && request.recipient_ids.len() != 1 {
            return Err(ApiError::invalid("one-way and chat sends have exactly one recipient"));
        }
        let input = SendInput::new(
            kind,
            request.recipient_ids.clone(),
            request.content.clone(),
            request.priority.map(Into::into),
            Some(request.media_ids.clone()),
            Some(key.to_owned()),
            None,
        );
        let accepted = self.ingest.send(&Caller::User(sender), input).await?;
        accepted_id(&accepted.answer.body)
    }
}

/// Refusals that pass with time: the request is tried again rather than refused.
fn is_passing(error: &ApiError) -> bool {
    matches!(error.code, ErrorCode::RateLimited | ErrorCode::Overloaded | ErrorCode::Unavailable)
}

/// The `id` of an accepted send's answer (a message, or a broadcast).
fn accepted_id(body: &[u8]) -> Result<String, ApiError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        id: String,
    }
    serde_json::from_slice::<Answer>(body)
        .map(|answer| answer.id)
        .map_err(|error| ApiError::internal(format!("accepted send without an id: {error}")))
}

/// The dead letter of a refused or undecodable record (its `message_id` is the request's
/// key, or the record's key when it could not be decoded).
fn dead_letter(key: &str, record: &Consumed, reason: &str) -> Result<Record, BackendError> {
    let letter = DeadLetter {
        message_id: key.to_owned(),
        attempts: 1,
        error: format!("{} partition {} offset {}: {reason}", record.topic, record.partition, record.offset),
        failed_at: Millis::now(),
    };
    Ok(Record { key: key.to_owned(), value: records::encode(letter).map_err(unencodable)? })
}

fn unencodable(error: records::CodecError) -> BackendError {
    BackendError::Corrupt(format!("cannot encode an ingest outcome: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrators_parse_listed_and_any() {
        let integrators: Integrators = "crm=biz_1, biz_2; erp=*".parse().expect("valid");
        assert!(integrators.allows("crm", "biz_1"));
        assert!(integrators.allows("crm", "biz_2"));
        assert!(!integrators.allows("crm", "biz_3"));
        assert!(integrators.allows("erp", "anyone"));
        assert!(!integrators.allows("other", "biz_1"));
        assert!(!Integrators::default().allows("crm", "biz_1"));
    }

    #[test]
    fn integrators_refuse_malformed_lists() {
        for text in ["crm", "=biz_1", "crm=", "crm=biz_1;crm=biz_2", "crm= , "] {
            assert!(text.parse::<Integrators>().is_err(), "{text:?} should be refused");
        }
        assert_eq!("".parse::<Integrators>(), Ok(Integrators::default()));
    }
}
