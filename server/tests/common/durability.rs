//! Helpers of the crash and shutdown tests: concurrent senders against the real binary that
//! send with idempotency keys and keep a ledger of every answer, and the checks that nothing
//! they were promised is lost.
//!
//! A sender behaves like a careful client (API.md "Idempotency"): every request carries an
//! `Idempotency-Key`; a `202` is a promise; a `5xx` or a request left without an answer is
//! not, and is sent again with the same key once the server is back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::{Api, Read, WAIT};

pub const SENDERS: usize = 8;
pub const MOBILES: [&str; 4] = ["m0", "m1", "m2", "m3"];

/// One send: its key, recipient and content (unique per send, so that a content seen under
/// two ids is a duplicate).
#[derive(Debug, Clone)]
pub struct Request {
    pub key: String,
    pub recipient: String,
    pub content: String,
}

/// A request answered `202` with message `id`.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub request: Request,
    pub id: String,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `202` with this message id.
    Accepted(String),
    /// A `5xx` answer: refused, no promise.
    ServerError(u16),
    /// No HTTP answer (connection refused, reset or closed): no promise either.
    NoAnswer,
}

/// One request with the times it started and ended, as the client saw them.
#[derive(Debug, Clone)]
pub struct Timed {
    pub request: Request,
    pub started: Instant,
    pub finished: Instant,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
struct State {
    accepted: Vec<Accepted>,
    unanswered: Vec<Request>,
    history: Vec<Timed>,
    server_errors: usize,
    no_answers: usize,
}

/// Every answer the senders got, shared by them and the test.
#[derive(Debug)]
pub struct Ledger {
    state: Mutex<State>,
    accepted: watch::Sender<usize>,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger { state: Mutex::new(State::default()), accepted: watch::Sender::new(0) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records how `request` ended.
    pub fn record(&self, request: Request, started: Instant, outcome: Outcome) {
        let finished = Instant::now();
        let mut state = self.state();
        match &outcome {
            Outcome::Accepted(id) => {
                state.accepted.push(Accepted { request: request.clone(), id: id.clone() });
                let count = state.accepted.len();
                self.accepted.send_replace(count);
            }
            Outcome::ServerError(_) => {
                state.server_errors += 1;
                state.unanswered.push(request.clone());
            }
            Outcome::NoAnswer => {
                state.no_answers += 1;
                state.unanswered.push(request.clone());
            }
        }
        state.history.push(Timed { request, started, finished, outcome });
    }

    /// Waits until at least `count` requests have been accepted in all; fails after [`WAIT`].
    pub async fn wait_accepted(&self, count: usize) {
        let mut accepted = self.accepted.subscribe();
        let reached = tokio::time::timeout(WAIT, accepted.wait_for(|n| *n >= count)).await.is_ok();
        assert!(reached, "{count} sends were never accepted (only {})", *accepted.borrow());
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state().accepted.clone()
    }

    pub fn history(&self) -> Vec<Timed> {
        self.state().history.clone()
    }

    /// The requests without a promise so far, taken out of the ledger (to send again).
    pub fn take_unanswered(&self) -> Vec<Request> {
        std::mem::take(&mut self.state().unanswered)
    }

    /// `accepted, 5xx answers, requests without an answer` so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.state();
        (state.accepted.len(), state.server_errors, state.no_answers)
    }
}

/// Creates the business and the (offline) mobile users; returns their tokens.
pub async fn setup_users(api: &Api) -> (String, HashMap<String, String>) {
    let business = api.business("acme").await;
    let mut mobiles = HashMap::new();
    for user in MOBILES {
        mobiles.insert(user.to_owned(), api.mobile(user).await);
    }
    (business, mobiles)
}

/// `POST /v1/messages` with the request's `Idempotency-Key`.
pub async fn post(api: &Api, token: &str, request: &Request) -> Outcome {
    let body = json!({"recipient_id": request.recipient, "content": request.content});
    let sent = api
        .http
        .post(format!("{}/v1/messages", api.base))
        .bearer_auth(token)
        .header("Idempotency-Key", &request.key)
        .json(&body)
        .send()
        .await;
    let Ok(response) = sent else { return Outcome::NoAnswer };
    let status = response.status().as_u16();
    let Ok(answer) = response.json::<Value>().await else {
        // The status line came but the body was cut: the answer was not complete.
        return if status == 202 { Outcome::NoAnswer } else { Outcome::ServerError(status) };
    };
    match status {
        202 => {
            assert_eq!(answer["content"], request.content.as_str(), "the 202 is for this request: {answer}");
            Outcome::Accepted(answer["id"].as_str().expect("id in a 202").to_owned())
        }
        500.. => Outcome::ServerError(status),
        other => panic!("unexpected answer {other} to {}: {answer}", request.key),
    }
}

/// `SENDERS` tasks posting one-way messages with unique keys and contents (`{marker}-s{n}-{i}`)
/// until a request gets no answer (the server is gone); every outcome goes to `ledger`.
pub fn start_senders(api: &Api, business: &str, marker: &str, ledger: &Arc<Ledger>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SENDERS)
        .map(|sender| {
            let api = api.clone();
            let business = business.to_owned();
            let marker = marker.to_owned();
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let content = format!("{marker}-s{sender}-{i}");
                    let recipient = MOBILES[(sender + i) % MOBILES.len()].to_owned();
                    let request = Request { key: content.clone(), recipient, content };
                    let started = Instant::now();
                    let outcome = post(&api, &business, &request).await;
                    let gone = outcome == Outcome::NoAnswer;
                    ledger.record(request, started, outcome);
                    if gone {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// Waits for every sender to end (each ends on its first request without an answer).
pub async fn join(senders: Vec<tokio::task::JoinHandle<()>>) {
    for sender in senders {
        sender.await.expect("sender task");
    }
}

/// Sends every request still without a promise again, with its own key, against a server
/// that is up; each must be accepted now.
pub async fn retry_unanswered(api: &Api, token: &str, ledger: &Ledger) -> usize {
    let unanswered = ledger.take_unanswered();
    for request in &unanswered {
        let started = Instant::now();
        let outcome = post(api, token, request).await;
        assert!(matches!(outcome, Outcome::Accepted(_)), "{} sent again after the restart: {outcome:?}", request.key);
        ledger.record(request.clone(), started, outcome);
    }
    unanswered.len()
}

/// Req 4.6, API.md "Nothing that was accepted (2xx) is ever lost": every accepted message
/// is readable, and arrives on its recipient's socket on connect; no content of `marker`
/// arrives under two ids. Returns what is wrong, one line each.
pub async fn check_nothing_lost(api: &Api, business: &str, accepted: &[Accepted], marker: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for message in accepted {
        let stored = api.get(&api.admin, &format!("/v1/messages/{}", message.id)).await;
        if stored.status != 200 {
            problems.push(format!("accepted {} ({}) answers {}", message.id, message.request.key, stored.status));
        } else if stored.body["content"] != message.request.content.as_str() {
            problems.push(format!("accepted {} has content {}", message.id, stored.body["content"]));
        }
    }
    for user in MOBILES {
        let token = api.token(user).await;
        let mut missing: HashSet<&str> =
            accepted.iter().filter(|m| m.request.recipient == user).map(|m| m.id.as_str()).collect();
        let expected = missing.len();
        let mut socket = api.connect(&token).await;
        // One-way messages are ordered per business→mobile pair and the replay comes before
        // live messages: once this one arrives, everything stored before it has arrived.
        let end = api.one_way(business, user, &format!("end of the check of {user}")).await;
        let end_id = end["id"].as_str().expect("id").to_owned();
        let mut ids_by_content: HashMap<String, HashSet<String>> = HashMap::new();
        loop {
            let frame = match socket.read(WAIT).await {
                Read::Json(frame) => frame,
                other => {
                    problems.push(format!("{user}: the socket ended before the end marker: {other:?}"));
                    break;
                }
            };
            if frame["type"] != "message" {
                continue;
            }
            let id = frame["message"]["id"].as_str().expect("id").to_owned();
            let content = frame["message"]["content"].as_str().unwrap_or_default().to_owned();
            socket.ack(&[&id]).await;
            if id == end_id {
                break;
            }
            missing.remove(id.as_str());
            if content.starts_with(&format!("{marker}-")) {
                ids_by_content.entry(content).or_default().insert(id);
            }
        }
        if !missing.is_empty() {
            problems.push(format!("{user}: {} of {expected} accepted messages never arrived: {missing:?}", missing.len()));
        }
        for (content, ids) in ids_by_content {
            if ids.len() > 1 {
                problems.push(format!("{user}: {content} arrived under {} ids: {ids:?}", ids.len()));
            }
        }
    }
    problems
}

/// Req 4.3, API.md "A repeat gets the identical answer": each accepted request sent again
/// with its key gets the id of its first `202`. Returns what is wrong, one line each.
pub async fn check_same_ids_on_repeat(api: &Api, token: &str, accepted: &[Accepted]) -> Vec<String> {
    let mut problems = Vec::new();
    for message in accepted {
        match post(api, token, &message.request).await {
            Outcome::Accepted(id) if id == message.id => {}
            other => problems.push(format!("{} first got {}, now {other:?}", message.request.key, message.id)),
        }
    }
    problems
}

/// The contents of every one-way message `business` sent, as the store lists them.
pub async fn sent_contents(api: &Api, business: &str) -> HashSet<String> {
    let mut contents = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/one-way-messages?limit=100".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = api.get(business, &path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let items = page.body["items"].as_array().cloned().unwrap_or_default();
        contents.extend(items.iter().filter_map(|m| m["content"].as_str().map(str::to_owned)));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return contents,
        }
    }
}

/// Fails with every problem found, counted and the first few listed.
pub fn assert_no_problems(what: &str, problems: &[String]) {
    let shown: Vec<&str> = problems.iter().take(10).map(String::as_str).collect();
    assert!(problems.is_empty(), "{what}: {} problems, first ones:\n{}", problems.len(), shown.join("\n"));
}
