//! Helpers of the crash and shutdown tests: concurrent senders against the real binary and
//! the check that nothing they were promised is lost.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use super::{Api, Read, WAIT};

pub const SENDERS: usize = 8;
pub const MOBILES: [&str; 4] = ["m0", "m1", "m2", "m3"];

/// A message answered 202.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub recipient: String,
    pub content: String,
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

/// `SENDERS` tasks posting one-way messages with unique contents until the server stops answering.
pub fn start_senders(api: &Api, business: &str, marker: &str) -> Vec<tokio::task::JoinHandle<Vec<Accepted>>> {
    (0..SENDERS)
        .map(|sender| {
            let api = api.clone();
            let business = business.to_owned();
            let marker = marker.to_owned();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for i in 0.. {
                    let recipient = MOBILES[(sender + i) % MOBILES.len()];
                    let content = format!("{marker}-{sender}-{i}");
                    let body = json!({"recipient_id": recipient, "content": content});
                    match api.try_call(reqwest::Method::POST, &business, "/v1/messages", Some(body)).await {
                        Ok(answer) if answer.status == 202 => {
                            assert_eq!(answer.body["content"], content.as_str());
                            accepted.push(Accepted {
                                id: answer.body["id"].as_str().expect("id").to_owned(),
                                recipient: recipient.to_owned(),
                                content,
                            });
                        }
                        // Refused while stopping (503) or not at all: no promise was made.
                        Ok(answer) if answer.status >= 500 => break,
                        Ok(answer) => panic!("unexpected answer {}: {}", answer.status, answer.body),
                        Err(_) => break,
                    }
                }
                accepted
            })
        })
        .collect()
}

pub async fn collect(senders: Vec<tokio::task::JoinHandle<Vec<Accepted>>>) -> Vec<Accepted> {
    let mut accepted = Vec::new();
    for sender in senders {
        accepted.extend(sender.await.expect("sender task"));
    }
    accepted
}

/// Every accepted message is readable and arrives on its recipient's socket on connect;
/// no content of this run arrives under two different ids.
pub async fn verify_nothing_lost(api: &Api, accepted: &[Accepted], marker: &str) {
    for message in accepted {
        let stored = api.get(&api.admin, &format!("/v1/messages/{}", message.id)).await;
        assert_eq!(stored.status, 200, "accepted message {} is readable after the restart", message.id);
        assert_eq!(stored.body["content"], message.content.as_str());
    }
    for user in MOBILES {
        let token = api.token(user).await;
        let expected: HashSet<&str> = accepted.iter().filter(|m| m.recipient == user).map(|m| m.id.as_str()).collect();
        let mut socket = api.connect(&token).await;
        let mut ids_by_content: HashMap<String, HashSet<String>> = HashMap::new();
        let mut missing = expected.clone();
        loop {
            let wait = if missing.is_empty() { Duration::from_millis(500) } else { WAIT };
            let frame = match socket.read(wait).await {
                Read::Json(frame) => frame,
                Read::Silent if missing.is_empty() => break,
                other => panic!("{user}: {} accepted messages never arrived ({other:?}): {missing:?}", missing.len()),
            };
            if frame["type"] != "message" {
                continue;
            }
            let id = frame["message"]["id"].as_str().expect("id").to_owned();
            let content = frame["message"]["content"].as_str().unwrap_or_default().to_owned();
            socket.ack(&[&id]).await;
            missing.remove(id.as_str());
            if content.starts_with(&format!("{marker}-")) {
                ids_by_content.entry(content).or_default().insert(id);
            }
        }
        for (content, ids) in ids_by_content {
            assert_eq!(ids.len(), 1, "{content} arrived under several ids: {ids:?}");
        }
    }
}
