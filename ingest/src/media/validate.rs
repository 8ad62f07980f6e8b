//! What an upload may be (API.md "Media", "Precise rules/Media"): the allowed types, their
//! size limits, the check of the declared type against the file's magic numbers (`infer`),
//! and the file name kept.

use esh_common::{ApiError, ErrorCode};
use serde_json::json;

const MIB: u64 = 1024 * 1024;
/// Bytes read before the type is judged: enough for every signature `infer` knows.
pub(crate) const SNIFF_BYTES: usize = 8 * 1024;
/// Longest file name kept, in bytes.
const MAX_FILENAME_BYTES: usize = 255;

/// The kinds of media, each with its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

impl MediaKind {
    /// The largest file of this kind, in bytes.
    pub(crate) fn limit(self) -> u64 {
        match self {
            MediaKind::Video => 50 * MIB,
            MediaKind::Image | MediaKind::Audio => 10 * MIB,
            MediaKind::Document => 5 * MIB,
        }
    }

    /// The largest upload of any kind.
    pub(crate) const LARGEST: u64 = 50 * MIB;
}

/// Other names of the types `infer` reports.
const ALIASES: &[(&str, &str)] = &[
    ("image/jpg", "image/jpeg"),
    ("image/pjpeg", "image/jpeg"),
    ("audio/mp3", "audio/mpeg"),
    ("audio/x-mp3", "audio/mpeg"),
    ("audio/mpeg3", "audio/mpeg"),
    ("audio/wav", "audio/x-wav"),
    ("audio/wave", "audio/x-wav"),
    ("audio/vnd.wave", "audio/x-wav"),
    ("audio/flac", "audio/x-flac"),
    ("audio/aiff", "audio/x-aiff"),
    ("audio/x-m4a", "audio/m4a"),
    ("audio/mp4", "audio/m4a"),
    ("video/avi", "video/x-msvideo"),
    ("video/mkv", "video/x-matroska"),
];

/// Containers that hold audio or video alike: a declared type may be carried by bytes
/// `infer` names by the other one.
const SHARED_CONTAINERS: &[(&str, &str)] =
    &[("audio/webm", "video/webm"), ("video/ogg", "audio/ogg"), ("audio/m4a", "video/mp4")];

/// The canonical form of a content type: lowercase, without parameters, aliases resolved.
pub(crate) fn canonical(content_type: &str) -> String {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    ALIASES.iter().find(|(alias, _)| *alias == essence).map(|(_, name)| (*name).to_owned()).unwrap_or(essence)
}

fn unsupported(message: impl Into<String>, declared: &str) -> ApiError {
    ApiError::new(ErrorCode::UnsupportedMediaType, message).with_details(json!({ "content_type": declared }))
}

/// The kind of an allowed (canonical) declared type; anything else is 415.
pub(crate) fn kind_of(declared: &str) -> Result<MediaKind, ApiError> {
    let (top, sub) = declared.split_once('/').unwrap_or((declared, ""));
    let valid_sub = !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    match (top, valid_sub) {
        ("image", true) => Ok(MediaKind::Image),
        ("video", true) => Ok(MediaKind::Video),
        ("audio", true) => Ok(MediaKind::Audio),
        ("application", _) if declared == "application/pdf" || declared == "application/msword" => {
            Ok(MediaKind::Document)
        }
        _ => Err(unsupported(
            "allowed types are image/*, video/*, audio/*, application/pdf and application/msword",
            declared,
        )),
    }
}

/// Checks that the first bytes of a file are of its (canonical) declared type: 415 if not.
pub(crate) fn check_bytes(declared: &str, head: &[u8]) -> Result<(), ApiError> {
    let Some(sniffed) = infer::get(head).map(|found| canonical(found.mime_type())) else {
        return Err(unsupported(format!("the bytes are not recognisably {declared}"), declared));
    };
    let same_container =
        SHARED_CONTAINERS.iter().any(|(a, b)| (declared == *a && sniffed == *b) || (declared == *b && sniffed == *a));
    if sniffed == declared || same_container {
        return Ok(());
    }
    Err(unsupported(format!("declared {declared} but the bytes are {sniffed}"), declared)
        .with_details(json!({ "content_type": declared, "detected": sniffed })))
}

/// The file name kept: its last path component, without control characters, at most 255
/// bytes; `file` when nothing is left.
pub(crate) fn filename(given: Option<&str>) -> String {
    let last = given.unwrap_or_default().rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = last.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned();
    while name.len() > MAX_FILENAME_BYTES {
        name.pop();
    }
    if name.is_empty() || name == "." || name == ".." {
        "file".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn req_2_1_allowed_types_and_aliases() {
        assert_eq!(canonical("Image/JPG; q=1"), "image/jpeg");
        assert_eq!(kind_of("image/png").unwrap(), MediaKind::Image);
        assert_eq!(kind_of("video/mp4").unwrap(), MediaKind::Video);
        assert_eq!(kind_of("audio/mpeg").unwrap(), MediaKind::Audio);
        assert_eq!(kind_of("application/pdf").unwrap(), MediaKind::Document);
        assert_eq!(kind_of("application/msword").unwrap(), MediaKind::Document);
        for refused in [
            "text/plain",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/octet-stream",
            "image/",
            "image",
            "",
        ] {
            assert_eq!(kind_of(refused).unwrap_err().code, ErrorCode::UnsupportedMediaType, "{refused}");
        }
    }

    #[test]
    fn req_2_2_limits_in_mib() {
        assert_eq!(MediaKind::Video.limit(), 52_428_800);
        assert_eq!(MediaKind::Image.limit(), 10_485_760);
        assert_eq!(MediaKind::Audio.limit(), 10_485_760);
        assert_eq!(MediaKind::Document.limit(), 5_242_880);
    }

    #[test]
    fn declared_types_must_match_the_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(check_bytes("image/png", png).is_ok());
        assert_eq!(check_bytes("application/pdf", png).unwrap_err().code, ErrorCode::UnsupportedMediaType);
        assert_eq!(check_bytes("image/png", b"just some text").unwrap_err().code, ErrorCode::UnsupportedMediaType);
        assert!(check_bytes("application/pdf", b"%PDF-1.4\n").is_ok());
    }

    #[test]
    fn filenames_keep_only_their_last_component() {
        assert_eq!(filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(filename(Some("C:\\Users\\a\\photo.png")), "photo.png");
        assert_eq!(filename(Some("..")), "file");
        assert_eq!(filename(Some("a/")), "file");
        assert_eq!(filename(None), "file");
        assert_eq!(filename(Some("bad\u{0}\nname.pdf")), "badname.pdf");
        assert_eq!(filename(Some(&"é".repeat(300))).len(), 254);
    }
}
