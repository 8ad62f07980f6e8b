//! The retry schedule of every message this node sent (Req 4.1, 4.2, 4.4, 4.7): one task
//! with one `DelayQueue` for the whole node, not a task or timer per message.
//!
//! Each message sent to a user's sockets is attempt 1. If it is not acknowledged within
//! the ack timeout it is sent again to all the user's sockets after the next wait of the
//! node's `RetrySchedule` (by default 1, 2, 4, 8, 16, 32 s); when the last attempt (the 7th
//! by default) is not acknowledged either, the message fails ("not acknowledged after 7
//! attempts") and the store dead-letters it. An
//! acknowledgement (or a read) stops the schedule. A user with no socket left on this node
//! is not failing: the schedule stops and the next connection replays the message.
//!
//! Before a retry or a failure the store is asked (one read for all that are due) whether
//! the message was delivered meanwhile — over HTTP, or by a socket on another node.
//!
//! Every attempt gets exactly one outcome in the message's timeline: `delivered` (acked
//! before the next attempt went out), `timeout` (the next attempt or the failure followed),
//! or `disconnected` (the user's last socket here closed while it waited for an ack).

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use esh_backends::MessageStore;
use esh_common::records::{DeliveryAttempt, StatusEvent};
use esh_common::retry::RetrySchedule;
use esh_common::{Attempt, Channel, MessageRoute, Millis, Status};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::delay_queue::{DelayQueue, Key};

use crate::persist::Persist;
use crate::registry::{Outgoing, Registry};

/// A message frame that went to a user's sockets.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) user: String,
    pub(crate) message_id: String,
    pub(crate) frame: Utf8Bytes,
    /// Whom the message's status events concern.
    pub(crate) route: MessageRoute,
}

/// What the tracker is told.
#[derive(Debug)]
pub(crate) enum Command {
    /// Attempt 1 of these messages just went to their recipients' sockets (already tracked
    /// ones keep their schedule).
    Sent(Vec<Delivery>),
    /// `user` acknowledged (`Delivered`) or read (`Read`) these messages.
    Receipts { user: String, message_ids: Vec<String>, status: Status },
    /// A socket of `user` closed; if it was the last one here, the user's schedules stop.
    Disconnected { user: String },
}

struct Entry {
    user: String,
    frame: Utf8Bytes,
    route: MessageRoute,
    /// The attempt last sent (1..=the schedule's max_attempts).
    attempt: u32,
    /// When it was sent.
    sent_at: Millis,
    /// Its ack timeout passed; the entry now waits for the next attempt.
    timed_out: bool,
    /// The pending timer, if any.
    key: Option<Key>,
}

/// The state of the tracker task.
pub(crate) struct Tracker {
    entries: HashMap<String, Entry>,
    by_user: HashMap<String, HashSet<String>>,
    timers: DelayQueue<String>,
    registry: Arc<Registry>,
    store: Arc<dyn MessageStore>,
    persist: mpsc::Sender<Persist>,
    ack_timeout: Duration,
    schedule: RetrySchedule,
    timeout_error: String,
    /// Effects gathered during one turn of the loop, handed to the persister together.
    pending: Persist,
}

impl Tracker {
    pub(crate) fn new(
        registry: Arc<Registry>,
        store: Arc<dyn MessageStore>,
        persist: mpsc::Sender<Persist>,
        ack_timeout: Duration,
        schedule: RetrySchedule,
    ) -> Self {
        Tracker {
            entries: HashMap::new(),
            by_user: HashMap::new(),
            timers: DelayQueue::new(),
            registry,
            store,
            persist,
            ack_timeout,
            schedule,
            timeout_error: format!("not acknowledged within {}", describe(ack_timeout)),
            pending: Persist::default(),
        }
    }

    /// Runs until `shutdown` is cancelled or every command sender is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut received = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(first) = poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    let mut expired = vec![first.into_inner()];
                    while let Some(Some(more)) = poll_fn(|cx| self.timers.poll_expired(cx)).now_or_never() {
                        expired.push(more.into_inner());
                    }
                    self.expire(expired).await;
                }
                count = commands.recv_many(&mut received, 256) => {
                    if count == 0 {
                        break;
                    }
                    for command in received.drain(..) {
                        self.handle(command);
                    }
                }
            }
            self.flush().await;
        }
        self.flush().await;
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Sent(deliveries) => self.track(deliveries),
            Command::Receipts { user, message_ids, status } => self.receipts(user, message_ids, status),
            Command::Disconnected { user } => self.disconnected(&user),
        }
    }

    fn track(&mut self, deliveries: Vec<Delivery>) {
        let now = Millis::now();
        for delivery in deliveries {
            if self.entries.contains_key(&delivery.message_id) {
                continue;
            }
            let key = self.timers.insert(delivery.message_id.clone(), self.ack_timeout);
            self.by_user.entry(delivery.user.clone()).or_default().insert(delivery.message_id.clone());
            let entry =
                Entry {
                    user: delivery.user,
                    frame: delivery.frame,
                    route: delivery.route,
                    attempt: 1,
                    sent_at: now,
                    timed_out: false,
                    key: Some(key),
                };
            self.entries.insert(delivery.message_id, entry);
        }
    }

    fn receipts(&mut self, user: String, message_ids: Vec<String>, status: Status) {
        let now = Millis::now();
        let mut unverified = Vec::new();
        for id in message_ids {
            // A tracked message went to this user as its recipient: the receipt counts.
            if self.entries.get(&id).is_some_and(|entry| entry.user == user) {
                if let Some(entry) = self.remove(&id) {
                    self.record(&id, &entry, "delivered", None);
                    let route = entry.route;
                    self.pending.changes.push(StatusEvent { message_id: id, status, at: now, error: None, attempts: 0, route });
                }
            } else {
                unverified.push(id);
            }
        }
        if !unverified.is_empty() {
            self.pending.unverified.push((user, unverified, status));
        }
    }

    fn disconnected(&mut self, user: &str) {
        if self.registry.is_connected(user) {
            return;
        }
        let Some(ids) = self.by_user.remove(user) else { return };
        for id in ids {
            let Some(entry) = self.entries.remove(&id) else { continue };
            if let Some(key) = &entry.key {
                self.timers.remove(key);
            }
            let outcome = if entry.timed_out { "timeout" } else { "disconnected" };
            let error = entry.timed_out.then(|| self.timeout_error.clone());
            self.record(&id, &entry, outcome, error);
        }
    }

    /// Handles timers that fired: ack timeouts schedule the next attempt (or the failure),
    /// due retries are sent.
    async fn expire(&mut self, expired: Vec<String>) {
        let mut due = Vec::new();
        let mut exhausted = Vec::new();
        for id in expired {
            let Some(entry) = self.entries.get_mut(&id) else { continue };
            entry.key = None;
            if entry.timed_out {
                due.push(id);
                continue;
            }
            entry.timed_out = true;
            match self.schedule.backoff_before(entry.attempt + 1) {
                Some(wait) => entry.key = Some(self.timers.insert(id, wait)),
                None => exhausted.push(id),
            }
        }
        if due.is_empty() && exhausted.is_empty() {
            return;
        }
        let statuses = self.current_statuses(due.iter().chain(&exhausted)).await;

        let now = Millis::now();
        let mut resend = Vec::with_capacity(due.len());
        for id in due {
            match statuses.get(&id) {
                Some(status) if status.is_delivered() || *status == Status::Failed => self.finish_elsewhere(&id, *status),
                _ => resend.push(id),
            }
        }
        let frames: Vec<Outgoing> = resend
            .iter()
            .filter_map(|id| {
                let entry = self.entries.get(id)?;
                Some(Outgoing { user: entry.user.clone(), message_id: Some(id.clone()), frame: entry.frame.clone() })
            })
            .collect();
        let reached = self.registry.push(&frames);
        for (outgoing, reached) in frames.into_iter().zip(reached) {
            let Some(id) = outgoing.message_id else { continue };
            let error = Some(self.timeout_error.clone());
            if !reached {
                // No socket of the user is left here: the schedule stops, no failure.
                if let Some(entry) = self.remove(&id) {
                    self.record(&id, &entry, "timeout", error);
                }
                continue;
            }
            let Some(entry) = self.entries.get(&id) else { continue };
            self.pending.attempts.push(outcome_of(&id, entry, "timeout", error));
            let key = self.timers.insert(id.clone(), self.ack_timeout);
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.attempt += 1;
                entry.sent_at = now;
                entry.timed_out = false;
                entry.key = Some(key);
            }
        }

        let max_attempts = self.schedule.max_attempts();
        for id in exhausted {
            match statuses.get(&id) {
                Some(status) if status.is_delivered() || *status == Status::Failed => self.finish_elsewhere(&id, *status),
                _ => {
                    let Some(entry) = self.remove(&id) else { continue };
                    self.record(&id, &entry, "timeout", Some(self.timeout_error.clone()));
                    esh_common::telemetry::dead_lettered();
                    self.pending.changes.push(StatusEvent {
                        message_id: id,
                        status: Status::Failed,
                        at: now,
                        error: Some(format!("not acknowledged after {max_attempts} attempts")),
                        attempts: entry.attempt,
                        route: entry.route,
                    });
                }
            }
        }
    }

    /// The stored status of each of `ids`; on a store error none (they are treated as not
    /// delivered, which at worst sends a retry the client acks again).
    async fn current_statuses(&self, ids: impl Iterator<Item = &String>) -> HashMap<String, Status> {
        let ids: Vec<String> = ids.cloned().collect();
        match self.store.messages(&ids).await {
            Ok(messages) => messages.into_iter().map(|m| (m.id, m.status)).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read statuses before retrying; retrying anyway");
                HashMap::new()
            }
        }
    }

    /// Stops the schedule of a message another path delivered or failed.
    fn finish_elsewhere(&mut self, id: &str, status: Status) {
        if let Some(entry) = self.remove(id) {
            if status.is_delivered() {
                self.record(id, &entry, "delivered", None);
            } else {
                self.record(id, &entry, "timeout", Some(self.timeout_error.clone()));
            }
        }
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(key) = &entry.key {
            self.timers.remove(key);
        }
        if let Some(ids) = self.by_user.get_mut(&entry.user) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_user.remove(&entry.user);
            }
        }
        Some(entry)
    }

    fn record(&mut self, id: &str, entry: &Entry, outcome: &str, error: Option<String>) {
        self.pending.attempts.push(outcome_of(id, entry, outcome, error));
    }

    /// Hands the gathered effects to the persister.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut self.pending);
        if self.persist.send(effects).await.is_err() {
            tracing::warn!("persister stopped; delivery attempts and receipts are lost");
        }
    }
}

/// The timeline entry of the attempt `entry` last sent, ended with `outcome`.
fn outcome_of(id: &str, entry: &Entry, outcome: &str, error: Option<String>) -> DeliveryAttempt {
    let attempt = Attempt {
        message_id: id.to_owned(),
        attempt: entry.attempt,
        at: entry.sent_at,
        channel: Channel::Socket,
        outcome: outcome.to_owned(),
        error,
    };
    let route = &entry.route;
    DeliveryAttempt { attempt, sender_id: route.sender_id.clone(), recipient_id: route.recipient_id.clone() }
}

/// `5s`, `1.5s`, `250ms`.
fn describe(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.as_secs() == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::describe;
    use std::time::Duration;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(describe(Duration::from_secs(5)), "5s");
        assert_eq!(describe(Duration::from_millis(250)), "250ms");
        assert_eq!(describe(Duration::from_millis(1500)), "1.5s");
    }
}
