//! Media over HTTP (API.md "Media", Req 2.1-2.7): uploads of real files generated here,
//! their limits and refusals, signed downloads, access, sends carrying media, and the
//! collection of uploads no message references.

mod support;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use esh_backends::media_links::{MediaLinkConfig, UrlSigner};
use esh_common::{Media, MediaVariant, Millis};
use esh_ingest::IngestConfig;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{Answer, Server, ADMIN};

const MIB: usize = 1024 * 1024;
const KEY: &[u8] = b"media-url-key-of-the-media-tests";
const BOUNDARY: &str = "esh-test-boundary-7d1f";

async fn start() -> Server {
    let media_links = MediaLinkConfig { key: Arc::from(KEY), ..MediaLinkConfig::default() };
    Server::start_with(IngestConfig { media_links, ..IngestConfig::default() }).await
}

/// One multipart part: name, filename, content type, bytes.
type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content_type, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(filename) = filename {
            body.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload_parts(server: &Server, token: &str, parts: &[Part<'_>]) -> Answer {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    server.post_raw("/v1/media", token, &content_type, multipart(parts)).await
}

async fn upload(server: &Server, token: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Answer {
    upload_parts(server, token, &[("file", Some(filename), Some(content_type), bytes)]).await
}

async fn uploaded(server: &Server, token: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Value {
    let answer = upload(server, token, filename, content_type, bytes).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{filename} as {content_type}: {}", answer.json);
    answer.json
}

async fn fetch(server: &Server, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = server.client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Server::answer(request).await
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

fn photo(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90])))
}

fn png(width: u32, height: u32) -> Vec<u8> {
    encoded(&photo(width, height), ImageFormat::Png)
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encoded(&photo(width, height), ImageFormat::Jpeg)
}

fn gif(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, _| Rgba([(x % 256) as u8, 10, 200, 255]));
    encoded(&DynamicImage::ImageRgba8(image), ImageFormat::Gif)
}

fn webp(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| Rgba([(x % 256) as u8, (y % 256) as u8, 0, 128]));
    encoded(&DynamicImage::ImageRgba8(image), ImageFormat::WebP)
}

fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n\
trailer << /Root 1 0 R >>\n%%EOF\n"
        .to_vec()
}

/// The start of an MP4 file: an `ftyp` box (brand mp42) and an empty `mdat`.
fn mp4() -> Vec<u8> {
    let mut bytes = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    bytes.extend_from_slice(b"\0\0\0\x08mdat");
    bytes
}

/// The start of a WebM file: the EBML header with doctype `webm`.
fn webm() -> Vec<u8> {
    let mut bytes = vec![0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81, 0x01, 0x42, 0xF7, 0x81, 0x01];
    bytes.extend_from_slice(&[0x42, 0xF2, 0x81, 0x04, 0x42, 0xF3, 0x81, 0x08, 0x42, 0x82, 0x84]);
    bytes.extend_from_slice(b"webm");
    bytes.extend_from_slice(&[0x42, 0x87, 0x81, 0x04, 0x42, 0x85, 0x81, 0x02]);
    bytes
}

/// An MP3 file start: an ID3v2 tag and one MPEG-1 Layer III frame header.
fn mp3() -> Vec<u8> {
    let mut bytes = b"ID3\x03\x00\x00\x00\x00\x00\x00".to_vec();
    bytes.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
    bytes.extend(std::iter::repeat_n(0u8, 413));
    bytes
}

/// A WAV file: RIFF/WAVE header, 8 kHz mono 8-bit, a little silence.
fn wav() -> Vec<u8> {
    let data = vec![128u8; 800];
    let mut bytes = b"RIFF".to_vec();
    bytes.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&[16, 0, 0, 0, 1, 0, 1, 0]);
    bytes.extend_from_slice(&8000u32.to_le_bytes());
    bytes.extend_from_slice(&8000u32.to_le_bytes());
    bytes.extend_from_slice(&[1, 0, 8, 0]);
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&data);
    bytes
}

/// `bytes` padded with zeros to exactly `size` (decoders stop at the end of the image).
fn padded(mut bytes: Vec<u8>, size: usize) -> Vec<u8> {
    assert!(bytes.len() <= size);
    bytes.resize(size, 0);
    bytes
}

/// A small PNG whose header claims `width`×`height` RGBA pixels (CRC fixed): a bomb.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = encoded(&DynamicImage::ImageRgba8(RgbaImage::new(4, 4)), ImageFormat::Png);
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Files the blob directory holds (unfinished uploads included).
fn stored_files(server: &Server) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&server.dir.path().join("blobs"), &mut found);
    found
}

fn thumbnail_sizes(media: &Value) -> Vec<(u64, u64)> {
    ["small", "medium", "large"]
        .iter()
        .map(|size| {
            let thumbnail = &media["thumbnails"][size];
            (thumbnail["width"].as_u64().unwrap(), thumbnail["height"].as_u64().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn req_2_1_req_2_3_req_2_4_accepted_types_are_stored_with_thumbnails_for_images() {
    let server = start().await;
    let mobile = server.mobile("m1").await;
    // Name, declared type, bytes, and the pixel size of an image.
    type File = (&'static str, &'static str, Vec<u8>, Option<(u32, u32)>);
    let files: Vec<File> = vec![
        ("photo.png", "image/png", png(1200, 800), Some((1200, 800))),
        ("photo.jpg", "image/jpg", jpeg(800, 1600), Some((800, 1600))),
        ("anim.gif", "image/gif", gif(90, 60), Some((90, 60))),
        ("pic.webp", "image/webp", webp(640, 640), Some((640, 640))),
        ("doc.pdf", "application/pdf", pdf(), None),
        ("clip.mp4", "video/mp4", mp4(), None),
        ("clip.webm", "video/webm", webm(), None),
        ("song.mp3", "audio/mpeg", mp3(), None),
        ("voice.wav", "audio/wav", wav(), None),
    ];
    let mut ids = Vec::new();
    for (filename, content_type, bytes, dimensions) in &files {
        let media = uploaded(&server, &mobile, filename, content_type, bytes).await;
        assert_eq!(media["filename"], *filename);
        assert_eq!(media["size"], bytes.len());
        assert!(media["expires_at"].is_string());
        let original = fetch(&server, media["url"].as_str().unwrap(), &[]).await;
        assert_eq!(original.status, StatusCode::OK, "{filename}");
        assert!(original.bytes == *bytes, "{filename}: the download differs from the upload");
        assert_eq!(original.headers["content-type"], media["content_type"].as_str().unwrap());
        match dimensions {
            None => assert!(media.get("thumbnails").is_none(), "{filename}: {media}"),
            Some((width, height)) => {
                let sizes = thumbnail_sizes(&media);
                for ((thumb_width, thumb_height), bound) in sizes.iter().zip([150u64, 300, 600]) {
                    assert!(*thumb_width <= bound && *thumb_height <= bound, "{filename}: {sizes:?}");
                    let (width, height) = (u64::from(*width), u64::from(*height));
                    assert!(
                        *thumb_width == width.min(bound) || *thumb_height == height.min(bound),
                        "{filename}: {sizes:?}"
                    );
                    // Aspect ratio kept (to the rounding of one pixel).
                    assert!(
                        (thumb_width * height).abs_diff(thumb_height * width) <= width.max(height),
                        "{filename}: {sizes:?}"
                    );
                }
                let small = fetch(&server, media["thumbnails"]["small"]["url"].as_str().unwrap(), &[]).await;
                assert_eq!(small.status, StatusCode::OK);
                let decoded = image::load_from_memory(&small.bytes).unwrap();
                assert_eq!((u64::from(decoded.width()), u64::from(decoded.height())), sizes[0]);
            }
        }
        ids.push(media["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        thumbnail_sizes(
            &serde_json::from_slice(&upload(&server, &mobile, "p.png", "image/png", &png(1200, 800)).await.bytes)
                .unwrap()
        ),
        [(150, 100), (300, 200), (600, 400)]
    );
    let again = uploaded(&server, &mobile, "doc.pdf", "application/pdf", &pdf()).await;
    assert!(!ids.contains(&again["id"].as_str().unwrap().to_owned()), "an upload is not deduplicated");
}

#[tokio::test]
async fn req_2_2_each_size_limit_is_accepted_at_and_refused_above() {
    let server = start().await;
    let mobile = server.mobile("m1").await;
    let cases: [(&str, &str, Vec<u8>, usize); 4] = [
        ("big.png", "image/png", png(64, 64), 10 * MIB),
        ("big.mp3", "audio/mpeg", mp3(), 10 * MIB),
        ("big.pdf", "application/pdf", pdf(), 5 * MIB),
        ("big.mp4", "video/mp4", mp4(), 50 * MIB),
    ];
    for (filename, content_type, start, limit) in cases {
        let at_limit = uploaded(&server, &mobile, filename, content_type, &padded(start.clone(), limit)).await;
        assert_eq!(at_limit["size"], limit, "{filename}");
        let above = upload(&server, &mobile, filename, content_type, &padded(start, limit + 1)).await;
        assert_eq!((above.status, above.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"), "{filename}");
        assert_eq!(above.json["error"]["details"]["limit_bytes"], limit);
    }
    let originals = stored_files(&server).iter().filter(|path| path.ends_with("original")).count();
    assert_eq!(originals, 4, "refused uploads leave no blob: {:?}", stored_files(&server));
    assert!(stored_files(&server).iter().all(|path| !path.to_string_lossy().contains(".partial")));
}

#[tokio::test]
async fn declared_types_must_be_allowed_and_match_the_bytes() {
    let server = start().await;
    let mobile = server.mobile("m1").await;
    let cases: [(&str, &str, Vec<u8>); 6] = [
        ("photo.pdf", "application/pdf", png(10, 10)),
        ("notes.png", "image/png", b"just some text, not an image".to_vec()),
        ("notes.txt", "text/plain", b"plain text".to_vec()),
        ("page.html", "text/html", b"<html></html>".to_vec()),
        (
            "report.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            b"PK\x03\x04zip".to_vec(),
        ),
        ("photo.jpg", "image/jpeg", png(10, 10)),
    ];
    for (filename, content_type, bytes) in cases {
        let answer = upload(&server, &mobile, filename, content_type, &bytes).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{filename}"
        );
    }
    let no_type = upload_parts(&server, &mobile, &[("file", Some("x.png"), None, &png(4, 4))]).await;
    assert_eq!(no_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(stored_files(&server).is_empty(), "{:?}", stored_files(&server));
}

#[tokio::test]
async fn truncated_corrupt_and_bomb_images_are_refused_not_crashed_on() {
    let server = start().await;
    let mobile = server.mobile("m1").await;
    let whole = png(300, 300);
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", whole[..whole.len() / 2].to_vec()),
        ("corrupt", {
            let mut bytes = whole.clone();
            bytes[40..200].fill(0xAB);
            bytes
        }),
        ("wider than any side allowed", png_claiming(100_000, 100_000)),
        ("more pixels than the decoder may allocate", png_claiming(11_000, 11_000)),
    ];
    for (what, bytes) in cases {
        let answer = upload(&server, &mobile, "bomb.png", "image/png", &bytes).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{what}: {}",
            answer.json
        );
    }
    assert!(stored_files(&server).is_empty());
    // The server still serves.
    uploaded(&server, &mobile, "fine.png", "image/png", &png(20, 20)).await;
}

#[tokio::test]
async fn malformed_empty_unauthorized_and_traversing_uploads() {
    let server = start().await;
    let mobile = server.mobile("m1").await;
    let empty = upload(&server, &mobile, "empty.png", "image/png", b"").await;
    assert_eq!((empty.status, empty.code()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let no_file = upload_parts(&server, &mobile, &[("other", None, None, b"x")]).await;
    assert_eq!(no_file.status, StatusCode::BAD_REQUEST);
    let image = png(8, 8);
    let two = upload_parts(
        &server,
        &mobile,
        &[("file", Some("a.png"), Some("image/png"), &image), ("file", Some("b.png"), Some("image/png"), &image)],
    )
    .await;
    assert_eq!(two.status, StatusCode::BAD_REQUEST);
    let not_multipart = server.post_raw("/v1/media", &mobile, "application/json", "{}").await;
    assert_eq!(
        (not_multipart.status, not_multipart.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let broken =
        server.post_raw("/v1/media", &mobile, &format!("multipart/form-data; boundary={BOUNDARY}"), "--nope").await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    let anonymous = Server::answer(
        server
            .client
            .post(format!("{}/v1/media", server.base))
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(multipart(&[("file", Some("a.png"), Some("image/png"), &image)])),
    )
    .await;
    assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    let admin = upload(&server, ADMIN, "a.png", "image/png", &image).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    assert!(stored_files(&server).is_empty(), "{:?}", stored_files(&server));

    for (given, kept) in [("../../etc/passwd.png", "passwd.png"), ("..\\..\\boot.png", "boot.png"), ("..", "file")] {
        let media = uploaded(&server, &mobile, given, "image/png", &image).await;
        assert_eq!(media["filename"], kept);
    }
    let blobs = server.dir.path().join("blobs").canonicalize().unwrap();
    for path in stored_files(&server) {
        assert!(path.canonicalize().unwrap().starts_with(blobs.join("media")), "{path:?}");
    }
    assert!(!server.dir.path().join("etc").exists() && !server.dir.path().join("boot.png").exists());
}

/// Decoders of untrusted bytes get property tests: any body sent as multipart (a valid
/// upload cut short, with bytes changed or inserted, or garbage) is stored whole (`201`) or
/// refused with the contract's error (400, 413, 415), never a 5xx, and a refused body leaves
/// no file behind.
#[test]
fn any_multipart_body_is_stored_whole_or_refused_with_a_contract_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = runtime.block_on(start());
    let mobile = runtime.block_on(server.mobile("m1"));
    let valid = multipart(&[("file", Some("a.png"), Some("image/png"), &png(8, 8))]);
    let length = valid.len();
    let cut = {
        let valid = valid.clone();
        move |end: usize| valid[..end].to_vec()
    };
    let edited = {
        let valid = valid.clone();
        move |edits: Vec<(usize, u8, bool)>| {
            let mut body = valid.clone();
            for (at, byte, insert) in edits {
                let at = at.min(body.len() - 1);
                if insert {
                    body.insert(at, byte);
                } else {
                    body[at] = byte;
                }
            }
            body
        }
    };
    let with_epilogue = {
        let valid = valid.clone();
        move |tail: Vec<u8>| [valid.as_slice(), &tail].concat()
    };
    let bodies = prop_oneof![
        Just(valid.clone()),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(with_epilogue),
        proptest::collection::vec(any::<u8>(), 0..600),
        (0..length).prop_map(cut),
        proptest::collection::vec((0..length, any::<u8>(), any::<bool>()), 1..8).prop_map(edited),
    ];
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let (stored, refused) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
    let mut runner = TestRunner::new(Config { cases: 128, failure_persistence: None, ..Config::default() });
    runner
        .run(&bodies, |body| {
            let before = stored_files(&server).len();
            let answer = runtime.block_on(server.post_raw("/v1/media", &mobile, &content_type, body));
            let after = stored_files(&server).len();
            match answer.status {
                StatusCode::CREATED => {
                    stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    prop_assert!(after > before, "an upload answered 201 stored nothing");
                }
                StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    prop_assert!(answer.json["error"]["message"].is_string(), "{:?}", answer.json);
                    prop_assert_eq!(after, before, "a refused upload left files behind");
                }
                other => prop_assert!(false, "answered {other}: {:?}", answer.json),
            }
            Ok(())
        })
        .unwrap();
    let (stored, refused) = (stored.into_inner(), refused.into_inner());
    assert!(stored > 0 && refused > 0, "the bodies tried both answers: {stored} stored, {refused} refused");
}

#[tokio::test]
async fn req_2_6_signed_downloads_support_range_etag_and_cache_control_and_refuse_bad_signatures() {
    let server = start().await;
    let mobile = server.mobile("m1").await;
    let bytes = padded(pdf(), 100_000);
    let media = uploaded(&server, &mobile, "doc.pdf", "application/pdf", &bytes).await;
    let url = media["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&server.base), "{url}");
    let whole = fetch(&server, &url, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    let etag = whole.headers["etag"].to_str().unwrap().to_owned();
    let cache = whole.headers["cache-control"].to_str().unwrap().to_owned();
    assert!(cache.starts_with("public, max-age=") && cache.ends_with(", immutable"), "{cache}");
    let max_age: u64 = cache.trim_start_matches("public, max-age=").trim_end_matches(", immutable").parse().unwrap();
    assert!((3500..=3600).contains(&max_age), "{cache}");
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    assert_eq!(whole.headers["content-length"], "100000");

    let part = fetch(&server, &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers["content-range"], "bytes 100-199/100000");
    assert_eq!(part.bytes, bytes[100..200]);
    let tail = fetch(&server, &url, &[("range", "bytes=-10")]).await;
    assert_eq!(tail.bytes, bytes[99_990..]);
    let outside = fetch(&server, &url, &[("range", "bytes=100000-")]).await;
    assert_eq!(outside.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(outside.headers["content-range"], "bytes */100000");
    let unchanged = fetch(&server, &url, &[("if-none-match", &etag)]).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert!(unchanged.bytes.is_empty());
    assert_eq!(fetch(&server, &url, &[("if-none-match", "\"other\"")]).await.status, StatusCode::OK);

    // Altered: another expiry, another signature, another variant, no signature.
    let (path, query) = url.split_once('?').unwrap();
    let expires: i64 = query.split('&').find_map(|pair| pair.strip_prefix("expires=")).unwrap().parse().unwrap();
    let signature = query.split('&').find_map(|pair| pair.strip_prefix("signature=")).unwrap();
    let mut flipped = signature.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for altered in [
        format!("{path}?expires={}&signature={signature}", expires + 3600),
        format!("{path}?expires={expires}&signature={flipped}"),
        format!("{}?expires={expires}&signature={signature}", path.replace("/original", "/small")),
        path.to_owned(),
    ] {
        let refused = fetch(&server, &altered, &[]).await;
        assert_eq!((refused.status, refused.code()), (StatusCode::FORBIDDEN, "forbidden"), "{altered}");
    }
    // Expired: signed with the right key for a time already past.
    let id = media["id"].as_str().unwrap();
    let past = Millis::now().0 / 1000 - 1;
    let signer = UrlSigner::new(Arc::from(KEY));
    let expired = format!("{path}?expires={past}&signature={}", signer.sign(id, MediaVariant::Original, past));
    let refused = fetch(&server, &expired, &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.json["error"]["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn req_2_5_media_objects_are_readable_by_the_uploader_and_participants_only() {
    let server = start().await;
    let business = server.business("b1").await;
    let mobile = server.mobile("m1").await;
    let stranger = server.mobile("m2").await;
    let media = uploaded(&server, &business, "p.png", "image/png", &png(400, 200)).await;
    let id = media["id"].as_str().unwrap();
    let path = format!("/v1/media/{id}");
    let mine = server.get(&path, &business).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.json["thumbnails"]["large"]["width"], 400);
    assert_eq!(server.get(&path, &mobile).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get("/v1/media/unknown-id", &business).await.status, StatusCode::NOT_FOUND);

    let sent = server
        .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "look", "media_ids": [id]}))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
    assert_eq!(sent.json["media"][0]["id"], id);
    assert_eq!(server.get(&path, &mobile).await.status, StatusCode::OK);
    assert_eq!(server.get(&path, &stranger).await.status, StatusCode::FORBIDDEN);
    assert_eq!(server.get(&path, ADMIN).await.status, StatusCode::OK);
}

#[tokio::test]
async fn req_2_7_sends_carry_media_objects_and_refuse_unknown_or_foreign_ids() {
    let server = start().await;
    let business = server.business("b1").await;
    let other = server.business("b2").await;
    let mobile = server.mobile("m1").await;
    let media = uploaded(&server, &business, "p.jpg", "image/jpeg", &jpeg(900, 300)).await;
    let id = media["id"].as_str().unwrap().to_owned();
    let foreign = uploaded(&server, &other, "q.png", "image/png", &png(10, 10)).await;
    let foreign_id = foreign["id"].as_str().unwrap();

    let unknown = server
        .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "x", "media_ids": ["nope"]}))
        .await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::BAD_REQUEST, "invalid_request"));
    assert_eq!(unknown.json["error"]["details"]["unknown_ids"], json!(["nope"]));
    let not_mine = server
        .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "x", "media_ids": [foreign_id]}))
        .await;
    assert_eq!(not_mine.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_mine.json["error"]["details"]["refused_ids"], json!([foreign_id]));
    let too_many: Vec<String> = (0..11).map(|i| format!("m{i}")).collect();
    let refused = server
        .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "x", "media_ids": too_many}))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let sent = server
        .post("/v1/messages", &business, json!({"recipient_id": "m1", "content": "hi", "media_ids": [id, id]}))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
    assert_eq!(sent.json["media"].as_array().unwrap().len(), 1, "duplicate ids count once");
    let message_id = sent.json["id"].as_str().unwrap();
    let read = server.get(&format!("/v1/messages/{message_id}"), &mobile).await;
    assert_eq!(read.status, StatusCode::OK);
    let shown = &read.json["media"][0];
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["filename"], "p.jpg");
    assert_eq!(thumbnail_sizes(shown), [(150, 50), (300, 100), (600, 200)]);
    let download = fetch(&server, shown["thumbnails"]["medium"]["url"].as_str().unwrap(), &[]).await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.headers["content-type"], "image/jpeg");
    let history = server.walk("/v1/one-way-messages", &mobile, 10).await;
    assert_eq!(history[0]["media"][0]["id"], id.as_str());

    // The recipient may pass on what it received; chat carries media too.
    let chat =
        server.post("/v1/chat/messages", &mobile, json!({"to": "b1", "content": "back", "media_ids": [id]})).await;
    assert_eq!(chat.status, StatusCode::ACCEPTED, "{}", chat.json);
    assert_eq!(chat.json["media"][0]["id"], id.as_str());
    let conversation = chat.json["conversation_id"].as_str().unwrap();
    let page = server.get(&format!("/v1/conversations/{conversation}/messages"), &business).await;
    assert_eq!(page.json["items"][0]["media"][0]["id"], id.as_str());
    let list = server.get("/v1/conversations", &business).await;
    assert_eq!(list.json["items"][0]["last_message"]["media"][0]["id"], id.as_str());

    let batch = server
        .post(
            "/v1/messages/batch",
            &business,
            json!({"messages": [
                {"recipient_id": "m1", "content": "one", "media_ids": [id]},
                {"recipient_id": "m1", "content": "two", "media_ids": ["unknown"]},
            ]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::MULTI_STATUS);
    assert_eq!(batch.json["items"][0]["status"], 202);
    assert_eq!(batch.json["items"][0]["message"]["media"][0]["id"], id.as_str());
    assert_eq!(batch.json["items"][1]["status"], 400);
    let broadcast = server
        .post("/v1/broadcasts", &business, json!({"recipient_ids": ["m1"], "content": "all", "media_ids": ["unknown"]}))
        .await;
    assert_eq!(broadcast.status, StatusCode::BAD_REQUEST);
}

/// Req 10.5: uploads no message references within the time-to-live are collected (row
/// and blobs), on the collector's schedule (paused time); referenced and fresh ones stay.
#[tokio::test(start_paused = true)]
async fn unreferenced_uploads_are_collected_after_their_time_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let urls = esh_backends::resolver::BackendUrls { data_dir: dir.path().to_path_buf(), ..Default::default() };
    let backends = esh_backends::resolver::resolve(&urls).await.unwrap();
    let (status_writer, _task) =
        esh_backends::status_writer::StatusWriter::start(backends.log.clone(), 8, Duration::ZERO);
    let ttl = Duration::from_secs(24 * 3600);
    let config = IngestConfig { media_unreferenced_ttl: ttl, ..IngestConfig::default() };
    let ingest = esh_ingest::Ingest::new(
        backends.clone(),
        esh_common::auth::TokenKeys::hs256(support::SECRET),
        ADMIN.into(),
        status_writer,
        config,
    );
    let day_ago = Millis::now().plus_ms(-(ttl.as_millis() as i64) - 1000);
    let add = |id: &str, created_at: Millis| {
        let backends = backends.clone();
        let media = Media {
            id: id.into(),
            owner_id: "b1".into(),
            filename: "f.pdf".into(),
            content_type: "application/pdf".into(),
            size: 4,
            created_at,
            thumbnails: Vec::new(),
        };
        async move {
            let key = Media::blob_key(&media.id, MediaVariant::Original);
            let body = futures::stream::iter([Ok(bytes::Bytes::from_static(b"%PDF"))]);
            backends.blobs.put(&key, "application/pdf", Box::pin(body)).await.unwrap();
            backends.media.add_media(&media).await.unwrap();
        }
    };
    add("old", day_ago).await;
    add("old-referenced", day_ago).await;
    add("fresh", Millis::now()).await;
    let mut message = support::message("b1", "m1");
    message.media_ids = vec!["old-referenced".into()];
    backends.store.insert_messages(&[message]).await.unwrap();
    // Whether the record and the blob of `id` are there.
    let stored = |id: &'static str| {
        let backends = backends.clone();
        async move {
            let recorded = !backends.media.media(&[id.to_owned()]).await.unwrap().is_empty();
            let blob = backends.blobs.size(&Media::blob_key(id, MediaVariant::Original)).await.is_ok();
            (recorded, blob)
        }
    };
    // The collector's store work runs on blocking threads, in real time: wait (without
    // moving the paused clock) until its round has removed the record and the blob of `id`.
    let collected = |id: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stored(id).await != (false, false) {
            assert!(std::time::Instant::now() < deadline, "{id} was not collected");
            tokio::task::yield_now().await;
        }
    };

    let shutdown = tokio_util::sync::CancellationToken::new();
    let collector = tokio::spawn(ingest.clone().collect_unreferenced_media(shutdown.clone()));
    collected("old").await;
    assert_eq!(stored("old-referenced").await, (true, true));
    assert_eq!(stored("fresh").await, (true, true));

    // Runs again a quarter of the time-to-live later.
    add("later", day_ago).await;
    tokio::time::sleep(ttl / 8).await;
    assert_eq!(stored("later").await, (true, true), "not before the next round");
    tokio::time::sleep(ttl / 8 + Duration::from_secs(1)).await;
    collected("later").await;
    assert_eq!(stored("fresh").await, (true, true));
    shutdown.cancel();
    collector.await.unwrap();
}
