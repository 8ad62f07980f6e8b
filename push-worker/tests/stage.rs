//! The push stage end to end on embedded backends and the local providers (tests/support):
//! requests appended to `esh.push.v1` reach every active device of their recipient, with
//! the attempts in the message's timeline (appended to `esh.status.v1`, written by the store
//! projection running beside the stage) and the devices' health kept.

mod support;

use std::sync::Arc;
use std::time::Duration;

use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::status_writer::StatusWriter;
use esh_backends::testsuite::fixtures;
use esh_backends::{BackendError, DeviceOutcome, Record};
use esh_common::retry::RetrySchedule;
use esh_common::{topics, Attempt, Channel, Device, Message, Millis, Platform, Status, User, UserKind};
use esh_push_worker::{PushConfig, PushRequest, Senders, PREVIEW_CHARS};
use esh_common::records::StatusRecord;
use esh_router::RouterConfig;
use support::{Answer, Providers};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Harness {
    backends: Backends,
    providers: Providers,
    stop: CancellationToken,
    /// The push stage running, and what stops it alone.
    stage: (CancellationToken, JoinHandle<Result<(), BackendError>>),
    _dir: TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Three attempts, 10 ms apart; `Retry-After` honoured up to 50 ms.
fn config(privacy: bool) -> PushConfig {
    PushConfig {
        privacy,
        retry_schedule: RetrySchedule::new(vec![Duration::from_millis(10); 2]).unwrap(),
        max_retry_after: Duration::from_millis(50),
        poll_wait: Duration::from_millis(10),
        ..PushConfig::default()
    }
}

async fn start(config: PushConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let backends =
        resolve(&BackendUrls { data_dir: dir.path().to_path_buf(), log_partitions: 2, ..Default::default() })
            .await
            .unwrap();
    let providers = Providers::start().await;
    let stop = CancellationToken::new();
    tokio::spawn(esh_router::project_store(backends.clone(), RouterConfig::default(), stop.clone()));
    let stage = start_stage(&backends, &providers, config, &stop);
    Harness { backends, providers, stop, stage, _dir: dir }
}

fn start_stage(
    backends: &Backends,
    providers: &Providers,
    config: PushConfig,
    stop: &CancellationToken,
) -> (CancellationToken, JoinHandle<Result<(), BackendError>>) {
    let senders = Senders { android: Some(Arc::new(providers.fcm())), ios: Some(Arc::new(providers.apns())) };
    let (writer, _) = StatusWriter::start(backends.log.clone(), 16, esh_backends::status_writer::LINGER);
    let stage_stop = stop.child_token();
    (stage_stop.clone(), tokio::spawn(esh_push_worker::run(backends.clone(), senders, writer, config, stage_stop)))
}

impl Harness {
    /// Stops the push stage, waits for it to finish, and starts it again with `config`.
    async fn restart_stage(&mut self, config: PushConfig) {
        self.stage.0.cancel();
        (&mut self.stage.1).await.unwrap().unwrap();
        self.stage = start_stage(&self.backends, &self.providers, config, &self.stop);
    }

    async fn user(&self, id: &str, kind: UserKind, notifications_enabled: bool) -> User {
        let user = User {
            id: id.into(),
            kind,
            display_name: format!("{id} name"),
            created_at: Millis::now(),
            permissions: Vec::new(),
            verified: true,
            notifications_enabled,
        };
        self.backends.store.create_user(&user).await.unwrap();
        user
    }

    async fn device(&self, user: &str, platform: Platform, token: &str) -> Device {
        self.backends.devices.register(user, platform, token, Millis::now(), 10).await.unwrap().device
    }

    /// Appends the push request of a message from "biz" to `recipient`.
    async fn push(&self, message: &Message) {
        let request = PushRequest::of(message, "Acme");
        let record = Record { key: request.recipient_id.clone(), value: esh_common::records::encode(request.clone()).unwrap() };
        self.backends.log.append(topics::PUSH, vec![record]).await.unwrap();
    }

    /// The message's timeline once it holds `count` attempts (fails after 10 s).
    async fn attempts(&self, message_id: &str, count: usize) -> Vec<Attempt> {
        for _ in 0..1000 {
            let attempts = self.backends.store.attempts(message_id).await.unwrap();
            if attempts.len() >= count {
                return attempts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("message {message_id} never got {count} attempts");
    }

    async fn devices(&self, user: &str) -> Vec<Device> {
        self.backends.devices.devices(user).await.unwrap()
    }
}

fn outcomes(attempts: &[Attempt]) -> Vec<(Channel, String)> {
    let mut outcomes: Vec<(Channel, String)> = attempts.iter().map(|a| (a.channel, a.outcome.clone())).collect();
    outcomes.sort_by(|a, b| a.1.cmp(&b.1));
    outcomes
}

#[tokio::test]
async fn every_active_device_gets_the_notification_req_3_2_3_4_3_7() {
    let esh = start(config(false)).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Android, "android-1").await;
    esh.device("m1", Platform::Ios, "ios-1").await;
    let gone = esh.device("m1", Platform::Android, "android-old").await;
    esh.backends.devices.record_outcomes(&[(gone, DeviceOutcome::Unregistered)], 3).await.unwrap();
    // APNs asks to slow down first: the send is retried after Retry-After.
    esh.providers.script("ios-1", &[Answer::Throttled(1)]);

    let message = fixtures::one_way("biz", "m1");
    esh.push(&message).await;
    let attempts = esh.attempts(&message.id, 3).await;
    assert_eq!(
        outcomes(&attempts),
        [(Channel::Push, "accepted".into()), (Channel::Push, "accepted".into()), (Channel::Push, "throttled".into())]
    );
    // The retry waited for Retry-After (1 s asked, held to `max_retry_after`, 50 ms), not
    // only the schedule's 10 ms.
    let throttled = attempts.iter().find(|a| a.outcome == "throttled").unwrap();
    let retried = attempts.iter().find(|a| a.attempt == 2).unwrap();
    assert!(retried.at.0 - throttled.at.0 >= 50, "{attempts:?}");
    assert_eq!(esh.providers.problems(), Vec::<String>::new());
    assert_eq!(esh.providers.received_for("android-1").len(), 1);
    assert_eq!(esh.providers.received_for("ios-1").len(), 2);
    assert!(esh.providers.received_for("android-old").is_empty(), "inactive devices get nothing");
    let sent = &esh.providers.received_for("android-1")[0].body["message"];
    assert_eq!(sent["notification"]["title"], "Acme");
    assert_eq!(sent["data"]["message_id"], message.id.as_str());
}

#[tokio::test]
async fn disabled_notifications_get_nothing_req_3_6() {
    let esh = start(config(false)).await;
    esh.user("quiet", UserKind::Mobile, false).await;
    esh.device("quiet", Platform::Android, "quiet-token").await;
    esh.user("loud", UserKind::Mobile, true).await;
    esh.device("loud", Platform::Android, "loud-token").await;

    let muted = fixtures::one_way("biz", "quiet");
    let heard = fixtures::one_way("biz", "loud");
    esh.push(&muted).await;
    esh.push(&heard).await;
    esh.attempts(&heard.id, 1).await;
    assert!(esh.providers.received_for("quiet-token").is_empty());
    assert!(esh.backends.store.attempts(&muted.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn three_failed_notifications_in_a_row_deactivate_a_device_and_a_success_resets_req_3_5() {
    let esh = start(config(false)).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Ios, "flaky").await;
    let fail = [Answer::ServerError; 3];

    // A notification fails for good once its three attempts all fail.
    esh.providers.script("flaky", &fail);
    let first = fixtures::one_way("biz", "m1");
    esh.push(&first).await;
    let attempts = esh.attempts(&first.id, 3).await;
    assert!(attempts.iter().all(|a| a.channel == Channel::Push && a.outcome == "unavailable"));
    assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(esh.devices("m1").await[0].failures, 1);

    let success = fixtures::one_way("biz", "m1");
    esh.push(&success).await;
    esh.attempts(&success.id, 1).await;
    let reset = esh.devices("m1").await.remove(0);
    assert_eq!((reset.failures, reset.active), (0, true));

    for _ in 0..3 {
        esh.providers.script("flaky", &fail);
        let message = fixtures::one_way("biz", "m1");
        esh.push(&message).await;
        esh.attempts(&message.id, 3).await;
    }
    let struck = esh.devices("m1").await.remove(0);
    assert_eq!((struck.failures, struck.active), (3, false));

    let after = fixtures::one_way("biz", "m1");
    let before = esh.providers.received_for("flaky").len();
    esh.push(&after).await;
    // A later request for a device that has a notification goes through: the inactive one gets nothing.
    esh.device("m1", Platform::Android, "fresh").await;
    let later = fixtures::one_way("biz", "m1");
    esh.push(&later).await;
    esh.attempts(&later.id, 1).await;
    assert_eq!(esh.providers.received_for("flaky").len(), before);
}

#[tokio::test]
async fn an_unregistered_token_is_deactivated_at_once() {
    let esh = start(config(false)).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Android, "gone").await;
    esh.providers.script("gone", &[Answer::Unregistered]);
    let message = fixtures::one_way("biz", "m1");
    esh.push(&message).await;
    let attempts = esh.attempts(&message.id, 1).await;
    assert_eq!(attempts[0].outcome, "unregistered");
    let device = esh.devices("m1").await.remove(0);
    assert!(!device.active);
}

#[tokio::test]
async fn privacy_mode_sends_only_ids_and_previews_keep_100_characters() {
    let esh = start(config(true)).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Android, "a").await;
    let message = Message { content: "secret".into(), ..fixtures::one_way("biz", "m1") };
    esh.push(&message).await;
    esh.attempts(&message.id, 1).await;
    let sent = esh.providers.received_for("a")[0].body["message"].clone();
    assert!(sent.get("notification").is_none());
    assert!(!sent.to_string().contains("secret") && !sent.to_string().contains("Acme"));

    let esh = start(config(false)).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Ios, "i").await;
    let long = Message { content: "é🙂".repeat(80), ..fixtures::one_way("biz", "m1") };
    esh.push(&long).await;
    esh.attempts(&long.id, 1).await;
    let body = esh.providers.received_for("i")[0].body["aps"]["alert"]["body"].as_str().unwrap().to_owned();
    assert_eq!(body.chars().count(), PREVIEW_CHARS);
    assert_eq!(body, "é🙂".repeat(50));
}

#[tokio::test]
async fn a_message_whose_pushes_run_out_of_retries_is_dead_lettered_like_a_socket_delivery() {
    let esh = start(config(false)).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Android, "down").await;
    let message = fixtures::one_way("biz", "m1");
    esh.backends.store.insert_messages(std::slice::from_ref(&message)).await.unwrap();
    esh.providers.script("down", &[Answer::ServerError; 3]);
    esh.push(&message).await;
    esh.attempts(&message.id, 3).await;

    // The attempts and the failure are status records of the message, in that order.
    let mut status = esh.backends.log.subscribe("test", &[topics::STATUS]).await.unwrap();
    let mut found = Vec::new();
    for _ in 0..100 {
        found.extend(status.poll(10, Duration::from_millis(50)).await.unwrap());
        if found.len() >= 4 {
            break;
        }
    }
    assert!(found.iter().all(|record| record.key == message.id));
    let records: Vec<StatusRecord> =
        found.iter().map(|record| esh_common::records::decode(&record.value).unwrap()).collect();
    let [StatusRecord::Attempt(_), StatusRecord::Attempt(_), StatusRecord::Attempt(_), StatusRecord::Status(event)] =
        &records[..]
    else {
        panic!("three attempts then the failure: {records:?}");
    };
    assert_eq!((event.message_id.as_str(), event.status, event.attempts), (message.id.as_str(), Status::Failed, 3));
    assert!(event.error.as_deref().unwrap().starts_with("push: "));
}

/// A stop during a wait for a retry re-queues the devices still waiting: after the restart
/// they go on where they were, and a device that had its answer is not notified again.
#[tokio::test]
async fn a_stop_during_a_retry_wait_notifies_no_device_twice_and_the_retries_carry_on() {
    // Retries 10 s apart: the stop comes during the first wait.
    let slow = PushConfig { retry_schedule: RetrySchedule::new(vec![Duration::from_secs(10); 2]).unwrap(), ..config(false) };
    let mut esh = start(slow).await;
    esh.user("m1", UserKind::Mobile, true).await;
    esh.device("m1", Platform::Android, "steady").await;
    esh.device("m1", Platform::Ios, "busy").await;
    let message = fixtures::one_way("biz", "m1");
    esh.backends.store.insert_messages(std::slice::from_ref(&message)).await.unwrap();
    esh.providers.script("busy", &[Answer::ServerError]);
    esh.push(&message).await;
    for _ in 0..1000 {
        if !esh.providers.received_for("busy").is_empty() && !esh.providers.received_for("steady").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // After the restart the waiting device fails its two remaining attempts, numbered on.
    esh.providers.script("busy", &[Answer::ServerError; 2]);
    esh.restart_stage(config(false)).await;
    let attempts = esh.attempts(&message.id, 4).await;
    let mut numbered: Vec<(u32, String)> = attempts.iter().map(|a| (a.attempt, a.outcome.clone())).collect();
    numbered.sort();
    let expected = [(1, "accepted"), (1, "unavailable"), (2, "unavailable"), (3, "unavailable")];
    assert_eq!(numbered, expected.map(|(n, outcome)| (n, outcome.to_owned())));
    assert_eq!(esh.providers.received_for("steady").len(), 1, "the device that had its answer gets it once");
    assert_eq!(esh.providers.received_for("busy").len(), 3);
    // One device accepted the notification, so the message is not dead-lettered.
    esh.backends.caught_up().await.unwrap();
    let stored = esh.backends.store.messages(std::slice::from_ref(&message.id)).await.unwrap();
    assert_eq!(stored[0].status, Status::Sent);
    let busy = esh.devices("m1").await.into_iter().find(|d| d.token == "busy").unwrap();
    assert_eq!(busy.failures, 1, "the interrupted notification counts once, when it ends");
}
