//! Push notifications end to end (Req 3.2, 3.4, 3.7): the platform with FCM and APNs
//! credentials pointing at local providers that verify them (push-worker/tests/support).

mod common;
#[path = "../../push-worker/tests/support/mod.rs"]
mod providers;

use std::time::Instant;

use common::{jpeg, Harness, WAIT};
use providers::Providers;
use serde_json::{json, Value};

/// Writes the service-account key file and the APNs key for `providers` into `dir`.
fn credentials(providers: &Providers, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let account = dir.join("service-account.json");
    let fcm = providers.fcm_config();
    let json = json!({
        "type": "service_account",
        "project_id": fcm.account.project_id,
        "private_key_id": "key-1",
        "private_key": fcm.account.private_key,
        "client_email": fcm.account.client_email,
        "token_uri": fcm.account.token_uri,
    });
    std::fs::write(&account, json.to_string()).unwrap();
    let key = dir.join("AuthKey.p8");
    std::fs::write(&key, &providers.ec_private_pem).unwrap();
    (account, key)
}

/// A platform whose push stage sends to `providers`, with business `shop` and mobile user
/// `phone` (offline) holding an Android and an iOS device; the tokens of both.
async fn platform_with_devices(providers: &Providers, keys: &std::path::Path) -> (Harness, String, String) {
    let (account, key) = credentials(providers, keys);
    let base = providers.base.clone();
    let esh = Harness::start_with(move |config| {
        config.push.fcm_service_account = Some(account);
        config.push.fcm_endpoint = base.clone();
        config.push.apns_key = Some(key);
        config.push.apns_key_id = Some(providers::KEY_ID.into());
        config.push.apns_team_id = Some(providers::TEAM_ID.into());
        config.push.apns_topic = Some(providers::TOPIC.into());
        config.push.apns_endpoint = base;
    })
    .await;
    let business = esh.business("shop").await;
    let mobile = esh.mobile("phone").await;
    for (platform, token) in [("android", "fcm-device"), ("ios", "apns-device")] {
        let registered = esh.post(&mobile, "/v1/devices", json!({"platform": platform, "token": token})).await;
        assert_eq!(registered.status, 201, "{}", registered.body);
    }
    (esh, business, mobile)
}

/// The attempts in the timeline of message `id` once there are `count` of them.
async fn attempts(esh: &Harness, token: &str, id: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = esh.get(token, &format!("/v1/messages/{id}/attempts")).await;
        let items = answer.body["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= count || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_offline_mobile_user_gets_a_push_on_every_device_and_the_message_stays_sent_until_acked() {
    let providers = Providers::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (esh, business, mobile) = platform_with_devices(&providers, keys.path()).await;

    let message = esh.one_way(&business, "phone", "Your parcel is at the door").await;
    let id = message["id"].as_str().unwrap();

    // The timeline shows both pushes, accepted by their providers.
    let attempts = attempts(&esh, &business, id, 2).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|a| a["channel"] == "push" && a["outcome"] == "accepted"), "{attempts:?}");
    assert_eq!(providers.problems(), Vec::<String>::new());
    let fcm = &providers.received_for("fcm-device")[0].body["message"];
    assert_eq!(fcm["notification"]["title"], "shop display");
    assert_eq!(fcm["notification"]["body"], "Your parcel is at the door");
    assert_eq!(fcm["data"]["message_id"], id);
    assert_eq!(fcm["android"]["collapse_key"], id, "a notification sent again replaces the first");
    let apns = &providers.received_for("apns-device")[0];
    assert_eq!(apns.body["aps"]["alert"]["title"], "shop display");
    assert_eq!(apns.headers["apns-collapse-id"], id, "a notification sent again replaces the first");

    // Accepted by the providers is not delivered: only the device's ack is.
    assert_eq!(esh.message(&business, id).await["status"], "sent");
    assert_eq!(esh.post_empty(&mobile, &format!("/v1/messages/{id}/delivered")).await.status, 204);
    esh.wait_status(&business, id, "delivered").await;

    let ready = esh.get(&business, "/health/ready").await;
    assert_eq!(ready.body["checks"]["push"]["ok"], true, "{}", ready.body);
}


#[tokio::test]
async fn a_push_for_a_message_with_an_image_shows_its_thumbnail_through_a_signed_url() {
    // Req 2.6, 3.3: the preview carries the image's medium thumbnail, a signed URL that works.
    let providers = Providers::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (esh, business, _mobile) = platform_with_devices(&providers, keys.path()).await;
    let media = esh.upload(&business, "sofa.jpg", "image/jpeg", &jpeg(1200, 600)).await;
    let message = esh
        .one_way_with(&business, json!({"recipient_id": "phone", "content": "New in", "media_ids": [media["id"]]}))
        .await;
    let id = message["id"].as_str().unwrap();
    assert_eq!(attempts(&esh, &business, id, 2).await.len(), 2);

    let fcm = &providers.received_for("fcm-device")[0].body["message"];
    let apns = &providers.received_for("apns-device")[0].body;
    assert_eq!(fcm["data"]["media_count"], "1");
    assert_eq!(apns["media_count"], 1);
    assert_eq!(apns["aps"]["mutable-content"], 1);
    for url in [&fcm["notification"]["image"], &apns["image_url"]] {
        let url = url.as_str().unwrap_or_else(|| panic!("no image in {fcm} / {apns}"));
        let thumbnail = image::load_from_memory(&esh.download(url).await).unwrap();
        assert_eq!((thumbnail.width(), thumbnail.height()), (300, 150));
    }
}
