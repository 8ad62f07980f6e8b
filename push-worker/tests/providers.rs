//! The FCM and APNs senders against local providers that check what the real ones check
//! (tests/support): every provider answer maps to its outcome (Req 3.5, 3.7).

mod support;

use std::time::Duration;

use esh_common::{Device, Millis, Platform, Priority};
use esh_push_worker::{PushNotification, PushOutcome, PushRequest, PushSender};
use support::{Answer, Providers};

fn device(platform: Platform, token: &str) -> Device {
    Device { user_id: "m1".into(), platform, token: token.into(), active: true, failures: 0, created_at: Millis(0) }
}

fn notification(privacy: bool) -> PushNotification {
    let request = PushRequest {
        recipient_id: "m1".into(),
        message_id: "01J00000000000000000000001".into(),
        conversation_id: Some("c1".into()),
        sender_id: "b1".into(),
        sender_name: "Acme".into(),
        preview: "Your order shipped".into(),
        priority: Priority::High,
        created_at: Millis(0),
        media_ids: Vec::new(),
        devices: Vec::new(),
        settled_elsewhere: false,
    };
    PushNotification::of(&request, &[], privacy)
}

/// Every scripted answer, in order, through one sender.
async fn outcomes(sender: &dyn PushSender, platform: Platform, providers: &Providers) -> Vec<PushOutcome> {
    let token = format!("{}-token", platform.as_str());
    providers.script(&token, &[Answer::Success, Answer::Unregistered, Answer::Throttled(7), Answer::ServerError]);
    let device = device(platform, &token);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(sender.send(&device, &notification(false)).await);
    }
    outcomes
}

fn names(outcomes: &[PushOutcome]) -> Vec<&'static str> {
    outcomes.iter().map(PushOutcome::name).collect()
}

#[tokio::test]
async fn fcm_sends_with_a_token_from_a_signed_assertion_and_maps_every_answer_req_3_7() {
    let providers = Providers::start().await;
    let fcm = providers.fcm();
    let outcomes = outcomes(&fcm, Platform::Android, &providers).await;
    assert_eq!(providers.problems(), Vec::<String>::new());
    assert_eq!(names(&outcomes), ["accepted", "unregistered", "throttled", "unavailable"]);
    assert_eq!(outcomes[2], PushOutcome::Throttled { retry_after: Some(Duration::from_secs(7)) });
    assert_eq!(providers.token_requests(), 1, "the access token is cached");

    let sent = &providers.received()[0].body["message"];
    assert_eq!(sent["token"], "android-token");
    assert_eq!(sent["notification"]["title"], "Acme");
    assert_eq!(sent["notification"]["body"], "Your order shipped");
    assert_eq!(sent["data"]["message_id"], "01J00000000000000000000001");
    assert_eq!(sent["data"]["conversation_id"], "c1");
    assert_eq!(sent["android"]["priority"], "HIGH");
}

#[tokio::test]
async fn fcm_renews_a_refused_access_token_once_then_fails() {
    let providers = Providers::start().await;
    let fcm = providers.fcm();
    providers.script("t", &[Answer::AuthExpired]);
    assert_eq!(fcm.send(&device(Platform::Android, "t"), &notification(false)).await, PushOutcome::Accepted);
    assert_eq!(providers.token_requests(), 2, "a new token after the refusal");

    providers.script("t", &[Answer::AuthExpired, Answer::AuthExpired]);
    let outcome = fcm.send(&device(Platform::Android, "t"), &notification(false)).await;
    assert_eq!(outcome.name(), "rejected", "{outcome:?}");
    assert_eq!(providers.token_requests(), 3, "only one renewal a send");
}

#[tokio::test]
async fn fcm_credentials_the_token_endpoint_refuses_are_rejected_and_fail_the_check() {
    let providers = Providers::start().await;
    let mut config = providers.fcm_config();
    config.account.client_email = "someone-else@example.com".into();
    let fcm = esh_push_worker::FcmPushSender::new(config).expect("sender");
    assert!(fcm.check().await.is_err());
    assert_eq!(fcm.send(&device(Platform::Android, "t"), &notification(false)).await.name(), "rejected");
    assert!(providers.received().is_empty(), "nothing is sent without a token");
    assert!(providers.fcm().check().await.is_ok());
}

#[tokio::test]
async fn apns_sends_over_http2_with_an_es256_provider_token_and_maps_every_answer_req_3_7() {
    let providers = Providers::start().await;
    let apns = providers.apns();
    let outcomes = outcomes(&apns, Platform::Ios, &providers).await;
    assert_eq!(providers.problems(), Vec::<String>::new());
    assert_eq!(names(&outcomes), ["accepted", "unregistered", "throttled", "unavailable"]);
    assert_eq!(outcomes[2], PushOutcome::Throttled { retry_after: Some(Duration::from_secs(7)) });

    let first = &providers.received()[0];
    assert_eq!(first.headers["apns-priority"], "10");
    assert_eq!(first.body["aps"]["alert"]["title"], "Acme");
    assert_eq!(first.body["aps"]["alert"]["body"], "Your order shipped");
    assert_eq!(first.body["conversation_id"], "c1");
    assert!(apns.check().await.is_ok());
}

#[tokio::test]
async fn apns_signs_a_new_provider_token_once_when_it_is_refused() {
    let providers = Providers::start().await;
    let apns = providers.apns();
    providers.script("t", &[Answer::AuthExpired]);
    assert_eq!(apns.send(&device(Platform::Ios, "t"), &notification(false)).await, PushOutcome::Accepted);
    providers.script("t", &[Answer::AuthExpired, Answer::AuthExpired]);
    assert_eq!(apns.send(&device(Platform::Ios, "t"), &notification(false)).await.name(), "rejected");
    assert_eq!(providers.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn privacy_mode_sends_only_the_ids() {
    let providers = Providers::start().await;
    providers.fcm().send(&device(Platform::Android, "a"), &notification(true)).await;
    providers.apns().send(&device(Platform::Ios, "i"), &notification(true)).await;
    assert_eq!(providers.problems(), Vec::<String>::new());
    let fcm = &providers.received_for("a")[0].body["message"];
    assert!(fcm.get("notification").is_none());
    assert_eq!(fcm["data"], serde_json::json!({"message_id": "01J00000000000000000000001", "conversation_id": "c1"}));
    let apns = &providers.received_for("i")[0].body;
    assert!(!apns.to_string().contains("Acme") && !apns.to_string().contains("shipped"));
    assert_eq!(apns["message_id"], "01J00000000000000000000001");
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable() {
    let mut config = Providers::start().await.apns_config();
    config.endpoint = "http://127.0.0.1:9".into();
    let apns = esh_push_worker::ApnsPushSender::new(config).expect("sender");
    assert_eq!(apns.send(&device(Platform::Ios, "t"), &notification(false)).await.name(), "unavailable");
}
