//! The JSON frames of the WebSocket protocol (API.md "WebSocket"): parsing what clients
//! send — untrusted text, so every input ends in a frame or a refusal, never a panic — and
//! writing what the server sends, serialized once into shareable bytes.

use std::borrow::Cow;

use axum::extract::ws::Utf8Bytes;
use esh_common::ingress::ChatRequest;
use esh_common::view::{MediaView, MessageView};
use esh_common::{ApiError, Message, Millis, Priority, Status};
use serde::{Deserialize, Serialize};

/// A frame a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientFrame {
    /// `{"type":"ack","message_ids":[...]}`: these messages arrived.
    Ack { message_ids: Vec<String> },
    /// `{"type":"read","message_ids":[...]}`: these messages were read.
    Read { message_ids: Vec<String> },
    /// `{"type":"send","ref"?,"to","content","media_ids"?,"idempotency_key"?,"priority"?}`.
    Send { reference: Option<String>, request: ChatRequest },
    /// `{"type":"ping"}`.
    Ping,
}

/// A refused client frame: what the `error` frame says (code `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameError {
    /// The `ref` of the refused frame, echoed when it had a string one.
    pub(crate) reference: Option<String>,
    pub(crate) message: String,
}

impl FrameError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        FrameError { reference: None, message: message.into() }
    }

    pub(crate) fn to_api_error(&self) -> ApiError {
        ApiError::invalid(self.message.clone())
    }
}

/// Reads only the `type` field; every other field is skipped without being built.
#[derive(Deserialize)]
struct TypeProbe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IdsFrame {
    message_ids: Vec<String>,
}

#[derive(Deserialize)]
struct SendFrame {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    to: String,
    content: String,
    #[serde(default)]
    media_ids: Option<Vec<String>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    priority: Option<Priority>,
}

/// The `ref` of a frame that failed to parse, if it is there and a string.
#[derive(Deserialize)]
struct RefProbe {
    #[serde(rename = "ref", default)]
    reference: Option<serde_json::Value>,
}

/// Parses one text frame. Unknown fields are ignored; a missing or unknown `type`, a known
/// field of the wrong type, or anything but a JSON object is a `FrameError`.
pub(crate) fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::new("a frame must be a json object"));
    }
    let probe: TypeProbe<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::new(format!("malformed json: {e}")))?;
    let kind = probe.kind.ok_or_else(|| FrameError::new("the frame has no type"))?;
    match kind.as_ref() {
        "ack" => ids(text, "ack").map(|message_ids| ClientFrame::Ack { message_ids }),
        "read" => ids(text, "read").map(|message_ids| ClientFrame::Read { message_ids }),
        "ping" => Ok(ClientFrame::Ping),
        "send" => match serde_json::from_str::<SendFrame>(text) {
            Ok(frame) => Ok(ClientFrame::Send {
                reference: frame.reference,
                request: ChatRequest {
                    to: frame.to,
                    content: frame.content,
                    media_ids: frame.media_ids.unwrap_or_default(),
                    priority: frame.priority,
                    idempotency_key: frame.idempotency_key,
                },
            }),
            Err(error) => Err(FrameError { reference: echoed_ref(text), message: format!("invalid send frame: {error}") }),
        },
        other => Err(FrameError::new(format!("unknown frame type {:?}", truncate(other, 64)))),
    }
}

fn ids(text: &str, kind: &str) -> Result<Vec<String>, FrameError> {
    serde_json::from_str::<IdsFrame>(text)
        .map(|frame| frame.message_ids)
        .map_err(|error| FrameError::new(format!("invalid {kind} frame: {error}")))
}

fn echoed_ref(text: &str) -> Option<String> {
    match serde_json::from_str::<RefProbe>(text).ok()?.reference? {
        serde_json::Value::String(reference) => Some(reference),
        _ => None,
    }
}

fn truncate(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// A frame the server sends.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Hello {
        user_id: &'a str,
        heartbeat_s: u64,
    },
    Message {
        message: MessageView<'a>,
    },
    Status {
        message_id: &'a str,
        status: Status,
        at: Millis,
    },
    Accepted {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        message: MessageView<'a>,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        details: Option<&'a serde_json::Value>,
    },
}

fn encode(frame: &ServerFrame<'_>) -> Utf8Bytes {
    // These plain structs always serialize (string keys, no fallible Serialize impls).
    serde_json::to_string(frame).unwrap_or_default().into()
}

/// `{"type":"hello","user_id","heartbeat_s"}`
pub(crate) fn hello(user_id: &str, heartbeat_s: u64) -> Utf8Bytes {
    encode(&ServerFrame::Hello { user_id, heartbeat_s })
}

/// `{"type":"message","message":{...}}` with the message's media objects.
pub(crate) fn message(message: &Message, media: Vec<MediaView>) -> Utf8Bytes {
    encode(&ServerFrame::Message { message: MessageView::new(message, media) })
}

/// `{"type":"status","message_id","status","at"}`
pub(crate) fn status(message_id: &str, status: Status, at: Millis) -> Utf8Bytes {
    encode(&ServerFrame::Status { message_id, status, at })
}

/// `{"type":"accepted","ref"?,"message":{...}}`
pub(crate) fn accepted(reference: Option<&str>, message: &Message, media: Vec<MediaView>) -> Utf8Bytes {
    encode(&ServerFrame::Accepted { reference, message: MessageView::new(message, media) })
}

/// `{"type":"error","ref"?,"code","message","details"?}`
pub(crate) fn error(reference: Option<&str>, error: &ApiError) -> Utf8Bytes {
    encode(&ServerFrame::Error {
        reference,
        code: error.code.as_str(),
        message: &error.message,
        details: error.details.as_ref(),
    })
}

/// `{"type":"pong"}`
pub(crate) fn pong() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"type":"pong"}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn refused(text: &str) -> FrameError {
        parse(text).expect_err(text)
    }

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            parse(r#"{"type":"ack","message_ids":["a","b"]}"#),
            Ok(ClientFrame::Ack { message_ids: vec!["a".into(), "b".into()] })
        );
        assert_eq!(parse(r#"{"message_ids":[],"type":"read"}"#), Ok(ClientFrame::Read { message_ids: vec![] }));
        assert_eq!(parse(r#" {"type":"ping"} "#), Ok(ClientFrame::Ping));
        let send = parse(
            r#"{"type":"send","ref":"r1","to":"b1","content":"hi","media_ids":["m"],"idempotency_key":"k","priority":"high"}"#,
        );
        assert_eq!(
            send,
            Ok(ClientFrame::Send {
                reference: Some("r1".into()),
                request: ChatRequest {
                    to: "b1".into(),
                    content: "hi".into(),
                    media_ids: vec!["m".into()],
                    priority: Some(Priority::High),
                    idempotency_key: Some("k".into()),
                },
            })
        );
        // `ref` and the optional fields may be left out (API.md "Precise rules → WebSocket").
        assert!(matches!(
            parse(r#"{"type":"send","to":"b1","content":"hi"}"#),
            Ok(ClientFrame::Send { reference: None, .. })
        ));
    }

    #[test]
    fn unknown_fields_are_ignored_even_with_odd_types() {
        assert_eq!(parse(r#"{"type":"ping","extra":{"deep":[1,2]},"content":5}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            parse(r#"{"type":"ack","message_ids":["a"],"to":false}"#),
            Ok(ClientFrame::Ack { message_ids: vec!["a".into()] })
        );
    }

    #[test]
    fn malformed_frames_are_refused() {
        for text in ["", "   ", "{", "not json", "[]", r#"["ack"]"#, "42", "null", r#"{"type":"ack""#] {
            refused(text);
        }
        assert!(refused(r#"{"message_ids":[]}"#).message.contains("no type"));
        assert!(refused(r#"{"type":"shout"}"#).message.contains("unknown frame type"));
        assert!(refused(r#"{"type":7}"#).message.contains("malformed"));
    }

    #[test]
    fn wrong_field_types_are_refused() {
        refused(r#"{"type":"ack","message_ids":"a"}"#);
        refused(r#"{"type":"ack","message_ids":[1]}"#);
        refused(r#"{"type":"ack"}"#);
        refused(r#"{"type":"read","message_ids":null}"#);
        refused(r#"{"type":"send","to":"b1","content":7}"#);
        refused(r#"{"type":"send","to":"b1"}"#);
        refused(r#"{"type":"send","to":"b1","content":"x","priority":"urgent"}"#);
        refused(r#"{"type":"send","to":"b1","content":"x","media_ids":"m"}"#);
    }

    #[test]
    fn a_refused_send_echoes_its_string_ref() {
        assert_eq!(refused(r#"{"type":"send","ref":"r9","to":5,"content":"x"}"#).reference.as_deref(), Some("r9"));
        assert_eq!(refused(r#"{"type":"send","ref":5,"to":"b","content":"x"}"#).reference, None);
    }

    #[test]
    fn server_frames_have_the_contract_shapes() {
        let hello: Value = serde_json::from_str(&hello("u1", 30)).unwrap();
        assert_eq!(hello, json!({"type": "hello", "user_id": "u1", "heartbeat_s": 30}));
        let status: Value = serde_json::from_str(&status("m1", Status::Read, Millis(0))).unwrap();
        assert_eq!(
            status,
            json!({"type": "status", "message_id": "m1", "status": "read", "at": "1970-01-01T00:00:00.000Z"})
        );
        let pong: Value = serde_json::from_str(&pong()).unwrap();
        assert_eq!(pong, json!({"type": "pong"}));
        let error: Value = serde_json::from_str(&error(Some("r"), &ApiError::invalid("bad"))).unwrap();
        assert_eq!(error, json!({"type": "error", "ref": "r", "code": "invalid_request", "message": "bad"}));
        let error: Value = serde_json::from_str(&super::error(None, &ApiError::forbidden("no"))).unwrap();
        assert_eq!(error, json!({"type": "error", "code": "forbidden", "message": "no"}));

        let message_value = Message {
            id: "01J00000000000000000000000".into(),
            kind: esh_common::MessageType::Chat,
            sender_id: "b1".into(),
            recipient_id: "m1".into(),
            conversation_id: Some("c1".into()),
            content: "hi".into(),
            media_ids: vec!["x".into()],
            priority: Priority::Normal,
            status: Status::Sent,
            status_changed_at: Millis(0),
            created_at: Millis(0),
            error: None,
            broadcast_id: None,
        };
        let media = MediaView {
            id: "x".into(),
            filename: "a.png".into(),
            content_type: "image/png".into(),
            size: 3,
            url: "http://h/v1/media/x/content/original?expires=1&signature=s".into(),
            expires_at: Millis(1000),
            thumbnails: None,
        };
        let frame: Value = serde_json::from_str(&message(&message_value, vec![media])).unwrap();
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["message"]["id"], "01J00000000000000000000000");
        assert_eq!(frame["message"]["type"], "chat");
        assert_eq!(frame["message"]["media"][0]["id"], "x");
        assert_eq!(frame["message"]["media"][0]["url"], "http://h/v1/media/x/content/original?expires=1&signature=s");
        assert!(frame["message"]["media"][0].get("thumbnails").is_none());
        assert_eq!(frame["message"]["read_only"], false);
        assert_eq!(frame["message"]["status"], "sent");
        let accepted: Value = serde_json::from_str(&accepted(None, &message_value, Vec::new())).unwrap();
        assert_eq!(accepted["type"], "accepted");
        assert!(accepted.get("ref").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_json_shaped_text_never_panics(
            kind in prop::sample::select(vec!["ack", "read", "send", "ping", "", "x"]),
            body in "[\\[\\]{}\":,a-z0-9 \\\\]{0,120}",
        ) {
            let _ = parse(&format!(r#"{{"type":"{kind}",{body}"#));
            let _ = parse(&format!(r#"{{"type":"{kind}","message_ids":{body}}}"#));
        }
    }
}
