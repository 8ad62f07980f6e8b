//! One-way sends over HTTP as API.md has them: one message a request
//! (`POST /v1/messages` → `202` message) or several (`POST /v1/messages/batch` →
//! `207 {items}`, one result per message in request order), and what the answer says
//! about each message, counted in the run's [`Stats`](crate::stats::Stats).

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::content::{self, Stamp};
use crate::ctx::Ctx;
use crate::http::{refusal_code, Answer};
use crate::stats::now_us;
use crate::ws;

/// Which send endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/messages`: exactly one message a request.
    One,
    /// `POST /v1/messages/batch`: 1..1000 messages a request.
    Batch,
}

/// One message of a request body.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a> {
    pub(crate) recipient_id: &'a str,
    pub(crate) content: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(crate) media_ids: &'a [&'a str],
}

#[derive(Serialize)]
struct BatchBody<'a> {
    messages: &'a [Outgoing<'a>],
}

/// What the answer says about one message of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `202`: durable and on its way.
    Accepted,
    /// Refused, as `"404 not_found"` (status and the contract's error code).
    Refused(String),
    /// The answer does not follow the contract for this message.
    Unanswered(String),
}

/// A `207` answer of `POST /v1/messages/batch`.
#[derive(Deserialize)]
struct BatchAnswer {
    items: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    status: u16,
    message: Option<ItemMessage>,
    error: Option<ItemError>,
}

/// An accepted item's message: only its id is looked at.
#[derive(Deserialize)]
struct ItemMessage {
    id: String,
}

#[derive(Deserialize)]
struct ItemError {
    code: String,
}

impl Endpoint {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::One => "/v1/messages",
            Endpoint::Batch => "/v1/messages/batch",
        }
    }

    /// The JSON body carrying `messages` (exactly one for [`Endpoint::One`]).
    pub(crate) fn body(self, messages: &[Outgoing<'_>]) -> serde_json::Result<Vec<u8>> {
        match (self, messages) {
            (Endpoint::One, [message]) => serde_json::to_vec(message),
            (Endpoint::One, _) => Err(serde::ser::Error::custom(format!("POST /v1/messages carries one message, not {}", messages.len()))),
            (Endpoint::Batch, _) => serde_json::to_vec(&BatchBody { messages }),
        }
    }

    /// The outcome of each of the `sent` messages of a request, in request order. A refusal
    /// of the whole request (4xx, 5xx) refuses every message with the same code.
    pub(crate) fn outcomes(self, answer: &Answer, sent: usize) -> Vec<Outcome> {
        let status = answer.status.as_u16();
        match (self, status) {
            (Endpoint::One, 202) => vec![Outcome::Accepted; sent],
            (Endpoint::Batch, 207) => batch_outcomes(answer, sent),
            (_, 200..=299) => vec![Outcome::Unanswered(format!("{status} is no answer of POST {}", self.path())); sent],
            _ => vec![Outcome::Refused(answer.code()); sent],
        }
    }
}

fn batch_outcomes(answer: &Answer, sent: usize) -> Vec<Outcome> {
    let items = match serde_json::from_slice::<BatchAnswer>(&answer.body) {
        Ok(parsed) => parsed.items,
        Err(error) => return vec![Outcome::Unanswered(format!("unparsable 207 answer: {error}")); sent],
    };
    let answered = items.len();
    let mut outcomes: Vec<Outcome> = items
        .into_iter()
        .take(sent)
        .map(|item| match (item.status, item.message, item.error) {
            (202, Some(message), _) if !message.id.is_empty() => Outcome::Accepted,
            (202, _, _) => Outcome::Unanswered("207 item with status 202 and no message id".to_owned()),
            (status, _, error) => Outcome::Refused(refusal_code(status, error.as_ref().map(|e| e.code.as_str()))),
        })
        .collect();
    // Items are one a message: a short answer leaves the rest without one.
    outcomes.resize(sent, Outcome::Unanswered(format!("207 answer with {answered} items for {sent} messages")));
    outcomes
}

/// Sends one request from `token` carrying a message to each `(recipient, seq)` of `to`
/// (all scheduled at `sched_us`, each with `media` attached if given), and counts each
/// message: sent, then accepted (answer latency from the request's start), refused by
/// code, or failed.
pub(crate) async fn post(
    ctx: Arc<Ctx>,
    endpoint: Endpoint,
    token: Arc<str>,
    media: Option<Arc<str>>,
    to: Vec<(Arc<str>, u64)>,
    sched_us: u64,
    size: usize,
) {
    let sent_us = now_us();
    let texts: Vec<String> = to.iter().map(|(_, seq)| content::content(ctx.run, Stamp { seq: *seq, sched_us, sent_us }, size)).collect();
    let media_ids: Vec<&str> = media.as_deref().into_iter().collect();
    let messages: Vec<Outgoing<'_>> = to
        .iter()
        .zip(&texts)
        .map(|((recipient, _), text)| Outgoing { recipient_id: recipient, content: text, media_ids: &media_ids })
        .collect();
    for _ in &messages {
        ctx.stats.on_sent(sched_us, sent_us);
    }
    let answer = match endpoint.body(&messages) {
        Ok(body) => ctx.http.post(endpoint.path(), &token, body).await,
        Err(error) => Err(error.into()),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let error = format!("{error:#}");
            for _ in &messages {
                ctx.stats.on_error(sched_us, &error);
            }
            return;
        }
    };
    for outcome in endpoint.outcomes(&answer, messages.len()) {
        match outcome {
            Outcome::Accepted => ctx.stats.on_accepted(sched_us, sent_us, 1),
            Outcome::Refused(code) => ctx.stats.on_refused(sched_us, &code),
            Outcome::Unanswered(why) => ctx.stats.on_error(sched_us, why),
        }
    }
    // Back off as a client told to retry later would (max-rate loops would otherwise spin
    // on refusals).
    if matches!(answer.status.as_u16(), 429 | 503) {
        tokio::time::sleep(ws::REFUSED_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use serde_json::json;

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        let status = StatusCode::from_u16(status).expect("a valid status");
        Answer { status, body: Bytes::from(body.to_string()) }
    }

    fn messages() -> Vec<Outgoing<'static>> {
        vec![
            Outgoing { recipient_id: "ld1-m0", content: "eshload:1:0:a:b:xx", media_ids: &[] },
            Outgoing { recipient_id: "ld1-m7", content: "eshload:1:1:a:b:xx", media_ids: &["01JD2Z8W4XK5N0M3Q7R9T1V6YB"] },
        ]
    }

    #[test]
    fn a_batch_body_lists_every_message_in_order() {
        let body = Endpoint::Batch.body(&messages()).expect("serialisable");
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            parsed,
            json!({"messages": [
                {"recipient_id": "ld1-m0", "content": "eshload:1:0:a:b:xx"},
                {"recipient_id": "ld1-m7", "content": "eshload:1:1:a:b:xx", "media_ids": ["01JD2Z8W4XK5N0M3Q7R9T1V6YB"]},
            ]})
        );
        assert_eq!(Endpoint::Batch.path(), "/v1/messages/batch");
    }

    #[test]
    fn a_single_send_body_is_the_message_itself() {
        let one = &messages()[..1];
        let parsed: serde_json::Value = serde_json::from_slice(&Endpoint::One.body(one).expect("serialisable")).expect("JSON");
        assert_eq!(parsed, json!({"recipient_id": "ld1-m0", "content": "eshload:1:0:a:b:xx"}));
        assert!(Endpoint::One.body(&messages()).is_err(), "POST /v1/messages takes one message");
    }

    #[test]
    fn a_207_with_mixed_items_gives_each_message_its_outcome() {
        let answer = answer(
            207,
            json!({"items": [
                {"status": 202, "message": {
                    "id": "01JD2Z8W4XK5N0M3Q7R9T1V6YB", "type": "one_way", "sender_id": "ld1-b0",
                    "recipient_id": "ld1-m0", "conversation_id": null, "content": "eshload:1:0:a:b:xx",
                    "media": [], "priority": "normal", "read_only": true, "status": "sent",
                    "status_changed_at": "2026-12-06T20:00:00.000Z", "created_at": "2026-12-06T20:00:00.000Z"
                }},
                {"status": 404, "error": {"code": "not_found", "message": "no user ld1-m7"}},
            ]}),
        );
        assert_eq!(Endpoint::Batch.outcomes(&answer, 2), vec![Outcome::Accepted, Outcome::Refused("404 not_found".to_owned())]);
    }

    #[test]
    fn a_short_or_broken_207_leaves_messages_unanswered() {
        let short = answer(207, json!({"items": [{"status": 400, "error": {"code": "invalid", "message": "empty content"}}]}));
        let outcomes = Endpoint::Batch.outcomes(&short, 3);
        assert_eq!(outcomes[0], Outcome::Refused("400 invalid".to_owned()));
        assert!(matches!(&outcomes[1..], [Outcome::Unanswered(_), Outcome::Unanswered(_)]), "{outcomes:?}");

        let no_message = answer(207, json!({"items": [{"status": 202}, {"status": 202, "message": {"id": ""}}]}));
        assert!(matches!(Endpoint::Batch.outcomes(&no_message, 2)[..], [Outcome::Unanswered(_), Outcome::Unanswered(_)]));

        let garbage = Answer { status: StatusCode::MULTI_STATUS, body: Bytes::from_static(b"<html>") };
        assert!(matches!(Endpoint::Batch.outcomes(&garbage, 2)[..], [Outcome::Unanswered(_), Outcome::Unanswered(_)]));
    }

    #[test]
    fn a_whole_request_refusal_refuses_every_message_of_it() {
        let limited = answer(429, json!({"error": {"code": "rate_limited", "message": "retry in 3 s"}}));
        assert_eq!(Endpoint::Batch.outcomes(&limited, 3), vec![Outcome::Refused("429 rate_limited".to_owned()); 3]);
        // A plain 202 is no batch answer: the batch endpoint answers 207.
        let single = answer(202, json!({"id": "01JD2Z8W4XK5N0M3Q7R9T1V6YB"}));
        assert!(matches!(Endpoint::Batch.outcomes(&single, 1)[..], [Outcome::Unanswered(_)]));
        assert_eq!(Endpoint::One.outcomes(&single, 1), vec![Outcome::Accepted]);
        let missing = answer(404, json!({"error": {"code": "not_found", "message": "no route"}}));
        assert_eq!(Endpoint::One.outcomes(&missing, 1), vec![Outcome::Refused("404 not_found".to_owned())]);
    }
}
