//! Media end to end (Req 2.6, 2.7): a message with an image reaches an online user (live
//! frame) and an offline one (replay on connect), each with the thumbnails and signed URLs
//! that work; on the local blob store (URLs served by `esh`) and on S3 (presigned URLs
//! served by the bucket, here `s3s-fs`).

mod common;

use common::{id, jpeg, Harness};
use serde_json::{json, Value};

/// Checks the media object a recipient got: the image, its three thumbnails, URLs that work.
async fn assert_usable(esh: &Harness, media: &Value, original: &[u8]) {
    assert_eq!(media["content_type"], "image/jpeg");
    assert_eq!(media["size"], original.len());
    assert!(esh.download(media["url"].as_str().unwrap()).await == original, "the download differs from the upload");
    for (size, bound) in [("small", 150), ("medium", 300), ("large", 600)] {
        let thumbnail = &media["thumbnails"][size];
        assert_eq!(thumbnail["width"], bound, "{media}");
        assert_eq!(thumbnail["height"], bound / 2, "{media}");
        let bytes = esh.download(thumbnail["url"].as_str().unwrap()).await;
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (bound, bound / 2));
    }
}

/// One image, one message to a user online and one to a user offline.
async fn image_reaches_online_and_offline_users(esh: &Harness) -> Value {
    let business = esh.business("acme").await;
    let online = esh.mobile("mona").await;
    let offline = esh.mobile("omar").await;
    let image = jpeg(1600, 800);
    let media = esh.upload(&business, "poster.jpg", "image/jpeg", &image).await;
    let media_id = media["id"].as_str().unwrap();

    let mut socket = esh.connect(&online).await;
    let live = esh
        .one_way_with(&business, json!({"recipient_id": "mona", "content": "new poster", "media_ids": [media_id]}))
        .await;
    let frame = socket.next_of("message").await;
    assert_eq!(frame["message"]["id"], live["id"]);
    assert_eq!(frame["message"]["media"][0]["id"], media_id);
    assert_usable(esh, &frame["message"]["media"][0], &image).await;
    socket.ack(&[&id(&live)]).await;

    let stored = esh
        .one_way_with(&business, json!({"recipient_id": "omar", "content": "new poster", "media_ids": [media_id]}))
        .await;
    esh.wait_routed().await;
    let mut later = esh.connect(&offline).await;
    let replayed = later.next_of("message").await;
    assert_eq!(replayed["message"]["id"], stored["id"]);
    assert_usable(esh, &replayed["message"]["media"][0], &image).await;

    // The recipients may read the media object; over HTTP the message shows it too.
    assert_eq!(esh.get(&offline, &format!("/v1/media/{media_id}")).await.status, 200);
    let read = esh.message(&offline, &id(&stored)).await;
    assert_usable(esh, &read["media"][0], &image).await;
    media
}

#[tokio::test]
async fn req_2_7_an_image_reaches_online_and_offline_users_on_the_local_store() {
    let esh = Harness::start().await;
    let media = image_reaches_online_and_offline_users(&esh).await;
    assert!(media["url"].as_str().unwrap().starts_with(&format!("{}/v1/media/", esh.base)), "{media}");
    let ready = esh.get("", "/health/ready").await;
    assert_eq!(ready.body["checks"]["blobs"]["ok"], true, "{}", ready.body);
}

#[tokio::test]
async fn req_2_6_an_image_reaches_online_and_offline_users_on_s3_through_presigned_urls() {
    let (url, _server) = esh_backends::testsuite::blob::s3_test_server();
    let esh = Harness::start_with(|config| config.blobs_url = Some(url)).await;
    let media = image_reaches_online_and_offline_users(&esh).await;
    let signed = media["url"].as_str().unwrap();
    assert!(signed.contains("X-Amz-Signature=") && signed.contains("X-Amz-Expires=3600"), "{signed}");
    let ready = esh.get("", "/health/ready").await;
    assert_eq!(ready.body["checks"]["blobs"]["ok"], true, "{}", ready.body);
}
