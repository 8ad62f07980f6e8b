//! The consumer of `esh.push.v1` (consumer group `push`): one polled batch at a time,
//! every device of every request notified at once (at most `concurrency` sends in flight),
//! then the batch's effects written — device health, the requests re-queued for devices a
//! stop interrupted, then the attempts and failures in one append through the status writer
//! (the store projection puts the attempts in the timeline) — and only then its offsets
//! committed.
//!
//! A stop cuts the waits for retries short. The devices that had a final answer keep it;
//! each message with devices still waiting is appended again to `esh.push.v1` for those
//! devices alone, with their attempt counts, so a restart notifies no device twice and
//! carries on their retry schedules.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use esh_backends::media_links::{MediaLinkConfig, MediaLinks};
use esh_backends::resolver::Backends;
use esh_backends::status_writer::StatusWriter;
use esh_backends::{BackendError, Consumed, DeviceOutcome, ErrorKind, LogConsumer, Record};
use esh_common::health::ReadinessProbe;
use esh_common::retry::RetrySchedule;
use esh_common::{topics, Attempt, Channel, Device, Millis, Platform, Status, UserKind};
use esh_common::records::{DeliveryAttempt, PendingDevice, PushRequest, StatusEvent, StatusRecord};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{PushNotification, PushOutcome, PushSender};

/// Settings of the push stage.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Notifications carry only the message and conversation ids (`ESH_PUSH_PRIVACY`).
    pub privacy: bool,
    /// Most provider requests in flight at once (`ESH_PUSH_CONCURRENCY`, default 64).
    pub concurrency: usize,
    /// Consecutive failed notifications that deactivate a device (Req 3.5: 3).
    pub strikes: u32,
    /// Waits before each retry of a retryable provider answer; the socket delivery's
    /// schedule (`ESH_RETRY_SCHEDULE`), and the same dead-letter rule when it runs out.
    pub retry_schedule: RetrySchedule,
    /// Longest `Retry-After` honoured; a provider asking for more is retried after this.
    pub max_retry_after: Duration,
    /// Push requests per polled batch.
    pub batch_size: usize,
    /// How long one poll waits for records.
    pub poll_wait: Duration,
    /// How the media URLs in previews are signed (the same as in HTTP answers and frames).
    pub media_links: MediaLinkConfig,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            privacy: false,
            concurrency: 64,
            strikes: 3,
            retry_schedule: RetrySchedule::default(),
            max_retry_after: Duration::from_secs(60),
            batch_size: 100,
            poll_wait: Duration::from_millis(50),
            media_links: MediaLinkConfig::default(),
        }
    }
}

impl PushConfig {
    /// How long to wait before attempt `attempt` after a retryable answer that asked for
    /// `asked` (a `Retry-After`, else zero): the schedule's backoff, or longer if the
    /// provider asked for longer (up to `max_retry_after`); `None` once the schedule has
    /// run out.
    fn wait_before(&self, attempt: u32, asked: Duration) -> Option<Duration> {
        let backoff = self.retry_schedule.backoff_before(attempt)?;
        Some(backoff.max(asked.min(self.max_retry_after)))
    }
}

/// The configured provider of each platform; a platform without one gets no notifications.
#[derive(Clone, Default)]
pub struct Senders {
    pub android: Option<Arc<dyn PushSender>>,
    pub ios: Option<Arc<dyn PushSender>>,
}

impl Senders {
    /// Whether no provider is configured (the push stage then stays off).
    pub fn is_empty(&self) -> bool {
        self.android.is_none() && self.ios.is_none()
    }

    fn for_platform(&self, platform: Platform) -> Option<&Arc<dyn PushSender>> {
        match platform {
            Platform::Android => self.android.as_ref(),
            Platform::Ios => self.ios.as_ref(),
        }
    }
}

#[async_trait]
impl ReadinessProbe for Senders {
    /// Every configured provider's credentials can be obtained.
    async fn check(&self) -> Result<(), String> {
        for (name, sender) in [("fcm", &self.android), ("apns", &self.ios)] {
            if let Some(sender) = sender {
                sender.check().await.map_err(|error| format!("{name}: {error}"))?;
            }
        }
        if self.is_empty() {
            return Err("no push provider configured".into());
        }
        Ok(())
    }
}

/// Everything the stage's tasks share.
struct Stage {
    backends: Backends,
    media: MediaLinks,
    senders: Senders,
    status_writer: StatusWriter,
    config: PushConfig,
    in_flight: Semaphore,
}

/// Runs the push stage until `shutdown` is cancelled; the batch in hand is finished, its
/// waits for retries cut short and those devices re-queued. Errs on a backend failure that
/// retrying cannot help.
pub async fn run(
    backends: Backends,
    senders: Senders,
    status_writer: StatusWriter,
    config: PushConfig,
    shutdown: CancellationToken,
) -> Result<(), BackendError> {
    let stage = Arc::new(Stage {
        in_flight: Semaphore::new(config.concurrency.max(1)),
        media: MediaLinks::new(backends.media.clone(), backends.blobs.clone(), &config.media_links),
        backends,
        senders,
        status_writer,
        config,
    });
    let log = stage.backends.log.clone();
    let Some(mut consumer) =
        durably("subscribe", &shutdown, || log.subscribe(topics::PUSH_GROUP, &[topics::PUSH])).await?
    else {
        return Ok(());
    };
    while !shutdown.is_cancelled() {
        let (size, wait) = (stage.config.batch_size, stage.config.poll_wait);
        let consumer_ref: &mut dyn LogConsumer = consumer.as_mut();
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = consumer_ref.poll(size, wait) => polled,
        };
        let records = match polled {
            Ok(records) => records,
            Err(error) if error.kind() == ErrorKind::Transient => {
                tracing::warn!(%error, "push stage cannot poll, retrying");
                tokio::time::sleep(FIRST_WAIT).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        if records.is_empty() {
            continue;
        }
        if !stage.clone().notify_batch(decode(&records), &shutdown).await? {
            return Ok(());
        }
        if !commit(consumer.as_mut(), &records, &shutdown).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// Commits `records`, retrying transient failures; `false` on shutdown (they are redelivered).
async fn commit(
    consumer: &mut dyn LogConsumer,
    records: &[Consumed],
    shutdown: &CancellationToken,
) -> Result<bool, BackendError> {
    let mut wait = FIRST_WAIT;
    loop {
        match consumer.commit(records).await {
            Ok(()) => return Ok(true),
            Err(error) if error.kind() == ErrorKind::Transient => {
                tracing::warn!(%error, "push stage cannot commit, retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}

/// The push requests of a batch, each message once; undecodable records are logged and
/// left out (committed with the batch: retrying cannot repair them).
fn decode(records: &[Consumed]) -> Vec<PushRequest> {
    let mut seen = HashSet::new();
    records
        .iter()
        .filter_map(|record| match esh_common::records::decode::<PushRequest>(&record.value) {
            Ok(request) => Some(request),
            Err(error) => {
                tracing::error!(partition = record.partition, offset = record.offset, %error, "skipping an undecodable push request");
                None
            }
        })
        .filter(|request| seen.insert(request.message_id.clone()))
        .collect()
}

/// How the notification of one message to one device ended.
enum End {
    /// The provider gave a final answer.
    Settled(DeviceOutcome),
    /// Every retry got a retryable answer; the last one's error.
    Exhausted(String),
    /// Shutdown came during a wait; the attempts made so far.
    Interrupted(u32),
}

/// What the devices of one message of a batch came to.
struct MessageEnd {
    request: Arc<PushRequest>,
    /// Some device had a final answer, in this batch or before the request was re-queued.
    settled: bool,
    /// The devices a stop interrupted, after the attempts they had.
    pending: Vec<PendingDevice>,
    /// The last error of a device that ran out of retries.
    exhausted: Option<String>,
}

impl MessageEnd {
    /// The request again, for the pending devices alone.
    fn requeued(self) -> Result<Record, BackendError> {
        let request = PushRequest { devices: self.pending, settled_elsewhere: self.settled, ..(*self.request).clone() };
        let key = request.recipient_id.clone();
        let value = esh_common::records::encode(request)
            .map_err(|e| BackendError::Corrupt(format!("cannot encode a push request: {e}")))?;
        Ok(Record { key, value })
    }
}

/// A device to notify of a request, after the attempts it already had.
struct Target {
    request: Arc<PushRequest>,
    device: Device,
    attempts_made: u32,
}

struct DeviceResult {
    request: Arc<PushRequest>,
    device: Device,
    attempts: Vec<Attempt>,
    end: End,
}

impl Stage {
    /// Notifies every active device of every request's recipient and writes the effects.
    /// `false` if shutdown interrupted it (nothing is to be committed).
    async fn notify_batch(
        self: Arc<Self>,
        requests: Vec<PushRequest>,
        shutdown: &CancellationToken,
    ) -> Result<bool, BackendError> {
        let Some(targets) = self.targets(&requests, shutdown).await? else { return Ok(false) };
        let notifications = self.notifications(&requests).await;
        let mut sends = JoinSet::new();
        for Target { request, device, attempts_made } in targets {
            let Some(sender) = self.senders.for_platform(device.platform).cloned() else { continue };
            let notification = notifications[&request.message_id].clone();
            let notify =
                self.clone().notify_device(sender, request, notification, device, attempts_made, shutdown.clone());
            sends.spawn(notify);
        }
        let mut results = Vec::new();
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
        }
        self.write_effects(results, shutdown).await
    }

    /// Each request with the active devices of its recipient (those it names, if it was
    /// re-queued), if the recipient is a mobile user with notifications enabled (Req 3.6);
    /// `None` on shutdown.
    async fn targets(
        &self,
        requests: &[PushRequest],
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Target>>, BackendError> {
        let mut recipients: Vec<String> = requests.iter().map(|r| r.recipient_id.clone()).collect();
        recipients.sort_unstable();
        recipients.dedup();
        let store = &self.backends.store;
        let Some(users) = durably("read recipients", shutdown, || store.users(&recipients)).await? else {
            return Ok(None);
        };
        let mut devices: HashMap<String, Vec<Device>> = HashMap::new();
        for user in users.iter().filter(|user| user.kind == UserKind::Mobile && user.notifications_enabled) {
            let registry = &self.backends.devices;
            let Some(held) = durably("read devices", shutdown, || registry.devices(&user.id)).await? else {
                return Ok(None);
            };
            devices.insert(user.id.clone(), held.into_iter().filter(|device| device.active).collect());
        }
        let mut targets = Vec::new();
        for request in requests {
            let request = Arc::new(request.clone());
            for device in devices.get(&request.recipient_id).into_iter().flatten() {
                let attempts_made = if request.devices.is_empty() {
                    0
                } else {
                    let Some(pending) = request.devices.iter().find(|pending| pending.token == device.token) else {
                        continue;
                    };
                    pending.attempts
                };
                targets.push(Target { request: request.clone(), device: device.clone(), attempts_made });
            }
        }
        Ok(Some(targets))
    }

    /// The notification of each request, by message id, with its attachments' URLs signed
    /// now. Signing needs the media catalog: if it cannot be read, the notifications go
    /// without images rather than late.
    async fn notifications(&self, requests: &[PushRequest]) -> HashMap<String, Arc<PushNotification>> {
        let shown: &[PushRequest] = if self.config.privacy { &[] } else { requests };
        let base = self.media.base(None);
        let lists: Vec<&[String]> = shown.iter().map(|request| request.media_ids.as_slice()).collect();
        let media = match self.media.resolve_ids(&lists, &base).await {
            Ok(media) => media,
            Err(error) => {
                tracing::warn!(%error, "cannot sign the media of push previews; sending them without images");
                Vec::new()
            }
        };
        requests
            .iter()
            .enumerate()
            .map(|(i, request)| {
                let views = media.get(i).map(Vec::as_slice).unwrap_or_default();
                (request.message_id.clone(), Arc::new(PushNotification::of(request, views, self.config.privacy)))
            })
            .collect()
    }

    /// Sends to one device after the `attempts_made` it already had, retrying retryable
    /// answers on the schedule.
    async fn notify_device(
        self: Arc<Self>,
        sender: Arc<dyn PushSender>,
        request: Arc<PushRequest>,
        notification: Arc<PushNotification>,
        device: Device,
        attempts_made: u32,
        shutdown: CancellationToken,
    ) -> DeviceResult {
        let mut attempts = Vec::new();
        let mut attempt = attempts_made + 1;
        let end = loop {
            let outcome = {
                let _permit = self.in_flight.acquire().await;
                sender.send(&device, &notification).await
            };
            metrics::counter!("esh_push_sends_total", "platform" => device.platform.as_str(), "outcome" => outcome.name())
                .increment(1);
            attempts.push(Attempt {
                message_id: request.message_id.clone(),
                attempt,
                at: Millis::now(),
                channel: Channel::Push,
                outcome: outcome.name().to_owned(),
                error: outcome.error().map(|error| format!("{}: {error}", device.platform.as_str())),
            });
            let asked = match outcome {
                PushOutcome::Accepted => break End::Settled(DeviceOutcome::Accepted),
                PushOutcome::Unregistered { .. } => break End::Settled(DeviceOutcome::Unregistered),
                PushOutcome::Rejected { .. } => break End::Settled(DeviceOutcome::Failed),
                PushOutcome::Throttled { retry_after } => retry_after.unwrap_or_default(),
                PushOutcome::Unavailable { .. } => Duration::ZERO,
            };
            let Some(wait) = self.config.wait_before(attempt + 1, asked) else {
                break End::Exhausted(outcome.error().unwrap_or_default());
            };
            tokio::select! {
                _ = shutdown.cancelled() => break End::Interrupted(attempt),
                _ = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
        };
        DeviceResult { request, device, attempts, end }
    }

    /// Writes the batch's device outcomes, re-queues the devices a stop interrupted, then
    /// appends the attempts and dead letters; `false` on shutdown.
    async fn write_effects(
        &self,
        results: Vec<DeviceResult>,
        shutdown: &CancellationToken,
    ) -> Result<bool, BackendError> {
        let mut records = Vec::new();
        let mut outcomes = Vec::new();
        let mut messages: HashMap<String, MessageEnd> = HashMap::new();
        for result in results {
            records.extend(result.attempts.into_iter().map(|attempt| {
                let (sender_id, recipient_id) = (result.request.sender_id.clone(), result.request.recipient_id.clone());
                StatusRecord::Attempt(DeliveryAttempt { attempt, sender_id, recipient_id })
            }));
            let message = messages.entry(result.request.message_id.clone()).or_insert_with(|| MessageEnd {
                settled: result.request.settled_elsewhere,
                request: result.request.clone(),
                pending: Vec::new(),
                exhausted: None,
            });
            match result.end {
                End::Settled(outcome) => {
                    message.settled = true;
                    outcomes.push((result.device, outcome));
                }
                End::Exhausted(error) => {
                    message.exhausted = Some(error);
                    outcomes.push((result.device, DeviceOutcome::Failed));
                }
                End::Interrupted(attempts) => {
                    message.pending.push(PendingDevice { token: result.device.token, attempts });
                }
            }
        }
        // Device health first: once the attempts show, so do their effects on the devices.
        let registry = &self.backends.devices;
        let strikes = self.config.strikes;
        let Some(devices) =
            durably("record device outcomes", shutdown, || registry.record_outcomes(&outcomes, strikes)).await?
        else {
            return Ok(false);
        };
        let deactivated = devices.iter().filter(|device| !device.active).count();
        metrics::counter!("esh_push_devices_deactivated_total").increment(deactivated as u64);
        let mut requeued = Vec::new();
        let mut failed = Vec::new();
        for message in messages.into_values() {
            if !message.pending.is_empty() {
                requeued.push(message.requeued()?);
            } else if let (Some(error), false) = (message.exhausted, message.settled) {
                failed.push((message.request, error));
            }
        }
        if !requeued.is_empty() {
            let log = &self.backends.log;
            let requeue = || log.append(topics::PUSH, requeued.clone());
            if durably("re-queue interrupted devices", shutdown, requeue).await?.is_none() {
                return Ok(false);
            }
        }
        if !failed.is_empty() {
            let Some(events) = durably("read failed messages", shutdown, || self.dead_letters(&failed)).await? else {
                return Ok(false);
            };
            records.extend(events.into_iter().map(StatusRecord::Status));
        }
        let writer = &self.status_writer;
        Ok(durably("append attempts and dead letters", shutdown, || writer.apply(records.clone())).await?.is_some())
    }

    /// The `failed` events of messages whose pushes ran out of retries on every device: the
    /// socket delivery's dead-letter rule. Only messages still `sent` fail (one delivered
    /// or read meanwhile has reached its recipient).
    async fn dead_letters(&self, failed: &[(Arc<PushRequest>, String)]) -> Result<Vec<StatusEvent>, BackendError> {
        self.backends.caught_up().await?;
        let ids: Vec<String> = failed.iter().map(|(request, _)| request.message_id.clone()).collect();
        let stored: HashMap<String, esh_common::Message> =
            self.backends.store.messages(&ids).await?.into_iter().map(|m| (m.id.clone(), m)).collect();
        let now = Millis::now();
        let attempts = self.config.retry_schedule.max_attempts();
        Ok(failed
            .iter()
            .filter_map(|(request, error)| {
                let message = stored.get(&request.message_id).filter(|m| m.status == Status::Sent)?;
                let event = StatusEvent::of(message, Status::Failed, now);
                Some(StatusEvent { error: Some(format!("push: {error}")), attempts, ..event })
            })
            .collect())
    }
}

/// First wait after a transient backend failure; doubled up to `LONGEST_WAIT`.
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// Runs `step` until it succeeds, backing off between transient failures: `Some(value)`,
/// `None` on shutdown, or the failure retrying cannot help.
async fn durably<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut step: F) -> Result<Option<T>, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let mut wait = FIRST_WAIT;
    loop {
        match step().await {
            Ok(value) => return Ok(Some(value)),
            Err(error) if error.kind() == ErrorKind::Transient => {
                tracing::warn!(%error, step = what, wait_ms = wait.as_millis() as u64, "push stage step failed, retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_and_honour_retry_after_up_to_its_cap() {
        let secs = Duration::from_secs;
        let config = PushConfig {
            retry_schedule: RetrySchedule::new(vec![secs(1), secs(5)]).unwrap(),
            max_retry_after: secs(60),
            ..PushConfig::default()
        };
        // Attempt 2 and 3 wait the schedule's backoff; there is no attempt 4.
        assert_eq!(config.wait_before(2, Duration::ZERO), Some(secs(1)));
        assert_eq!(config.wait_before(3, Duration::ZERO), Some(secs(5)));
        assert_eq!(config.wait_before(4, Duration::ZERO), None);
        // A provider asking for longer is waited for, up to the cap; for less, the backoff holds.
        assert_eq!(config.wait_before(2, secs(30)), Some(secs(30)));
        assert_eq!(config.wait_before(2, secs(3600)), Some(secs(60)));
        assert_eq!(config.wait_before(3, secs(2)), Some(secs(5)));
        assert_eq!(config.wait_before(4, secs(30)), None, "Retry-After does not add attempts");
    }
}
