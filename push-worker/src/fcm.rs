//! `FcmPushSender`: Firebase Cloud Messaging HTTP v1 for Android devices.
//!
//! Credentials are a Google service account (its JSON key file). An access token is
//! obtained with the OAuth2 JWT-bearer grant: an RS256 assertion signed with the account's
//! key is posted to the account's `token_uri`; the token is cached until a minute before it
//! expires, and renewed once when FCM refuses it. Notifications are posted to
//! `{endpoint}/v1/projects/{project_id}/messages:send` on one pooled client.

use std::time::Duration;

use async_trait::async_trait;
use esh_common::{Device, Priority};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{retry_after, unreachable, CredentialsError, PushNotification, PushOutcome, PushSender};

/// The OAuth2 scope of FCM sends.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_TTL_S: i64 = 3600;

/// The fields of a service-account key file that the JWT-bearer grant needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    /// PEM (PKCS#8) RSA private key.
    pub private_key: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a service-account key file's JSON.
    pub fn from_json(json: &str) -> Result<ServiceAccount, CredentialsError> {
        serde_json::from_str(json)
            .map_err(|error| CredentialsError::Invalid { what: "fcm service account", reason: error.to_string() })
    }
}

/// Settings of the FCM sender.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    pub account: ServiceAccount,
    /// Base URL of the FCM API (`https://fcm.googleapis.com`).
    pub endpoint: String,
    /// Longest wait for one request (token or send).
    pub timeout: Duration,
}

impl FcmConfig {
    pub const DEFAULT_ENDPOINT: &'static str = "https://fcm.googleapis.com";
}

/// The cached access token.
struct AccessToken {
    value: String,
    renew_at: Instant,
}

/// FCM HTTP v1 (see the module docs).
pub struct FcmPushSender {
    client: reqwest::Client,
    account: ServiceAccount,
    key: EncodingKey,
    send_url: String,
    token: Mutex<Option<AccessToken>>,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

impl FcmPushSender {
    pub fn new(config: FcmConfig) -> Result<FcmPushSender, CredentialsError> {
        let key = EncodingKey::from_rsa_pem(config.account.private_key.as_bytes())
            .map_err(|error| CredentialsError::Invalid { what: "fcm private key", reason: error.to_string() })?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|error| CredentialsError::Client(error.to_string()))?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            config.endpoint.trim_end_matches('/'),
            config.account.project_id
        );
        Ok(FcmPushSender { client, account: config.account, key, send_url, token: Mutex::new(None) })
    }

    /// The cached access token, or a new one when it is due (or `renew` asks for one).
    /// An error is the outcome of the send that needed the token.
    async fn access_token(&self, renew: bool) -> Result<String, PushOutcome> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|token| !renew && Instant::now() < token.renew_at) {
            return Ok(token.value.clone());
        }
        let fetched = self.fetch_token().await?;
        let value = fetched.access_token.clone();
        let lifetime = Duration::from_secs(fetched.expires_in).saturating_sub(RENEW_BEFORE);
        *cached = Some(AccessToken { value: fetched.access_token, renew_at: Instant::now() + lifetime });
        Ok(value)
    }

    /// The OAuth2 JWT-bearer grant (RFC 7523). A refusal is `Rejected` (the credentials are
    /// wrong); no answer or a server error is `Unavailable`.
    async fn fetch_token(&self) -> Result<TokenAnswer, PushOutcome> {
        let iat = esh_common::Millis::now().0 / 1000;
        let claims = Assertion {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + ASSERTION_TTL_S,
        };
        let header = Header { kid: self.account.private_key_id.clone(), ..Header::new(Algorithm::RS256) };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|error| PushOutcome::Rejected { error: format!("fcm: cannot sign the assertion: {error}") })?;
        let answer = self
            .client
            .post(&self.account.token_uri)
            .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|error| PushOutcome::Unavailable { error: format!("fcm token endpoint unreachable: {error}") })?;
        let status = answer.status();
        if !status.is_success() {
            let body = answer.text().await.unwrap_or_default();
            let error = format!("fcm token endpoint answered {status}: {}", body.chars().take(200).collect::<String>());
            return Err(if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                PushOutcome::Unavailable { error }
            } else {
                PushOutcome::Rejected { error }
            });
        }
        answer
            .json::<TokenAnswer>()
            .await
            .map_err(|error| PushOutcome::Unavailable { error: format!("fcm: unreadable token answer: {error}") })
    }

    /// The `messages:send` body.
    fn body(device: &Device, notification: &PushNotification) -> Value {
        let mut data = notification.ids();
        let mut message = json!({
            "token": device.token,
            "android": {
                "priority": if notification.priority == Priority::Low { "NORMAL" } else { "HIGH" },
                // A notification sent again (a retry after a restart) replaces the first one.
                "collapse_key": notification.message_id,
            },
        });
        if let Some(display) = &notification.display {
            message["notification"] = json!({ "title": display.sender_name, "body": display.preview });
            if let Some(image) = &display.image_url {
                message["notification"]["image"] = image.clone().into();
            }
            if display.media_count > 0 {
                data.insert("media_count".into(), display.media_count.to_string().into());
            }
        }
        // FCM data values are strings.
        message["data"] = Value::Object(data);
        json!({ "message": message })
    }

    async fn post(&self, token: &str, body: &Value) -> Result<reqwest::Response, reqwest::Error> {
        self.client.post(&self.send_url).bearer_auth(token).json(body).send().await
    }
}

/// The `errorCode` of an FCM error body (`error.details[].errorCode`).
fn error_code(body: &Value) -> Option<&str> {
    body["error"]["details"].as_array()?.iter().find_map(|detail| detail["errorCode"].as_str())
}

/// Maps an FCM answer other than an auth refusal.
fn outcome(status: StatusCode, headers: &reqwest::header::HeaderMap, body: &Value) -> PushOutcome {
    let code = error_code(body).unwrap_or_default();
    let message = || format!("fcm {status} {code}: {}", body["error"]["message"].as_str().unwrap_or_default());
    match (status, code) {
        (status, _) if status.is_success() => PushOutcome::Accepted,
        (StatusCode::NOT_FOUND, _) | (_, "UNREGISTERED") | (_, "SENDER_ID_MISMATCH") => {
            PushOutcome::Unregistered { reason: message() }
        }
        (StatusCode::TOO_MANY_REQUESTS, _) | (_, "QUOTA_EXCEEDED") => {
            PushOutcome::Throttled { retry_after: retry_after(headers) }
        }
        (status, _) if status.is_server_error() => PushOutcome::Unavailable { error: message() },
        _ => PushOutcome::Rejected { error: message() },
    }
}

fn is_auth_refusal(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::UNAUTHORIZED
        || (status == StatusCode::FORBIDDEN && error_code(body) != Some("SENDER_ID_MISMATCH"))
}

#[async_trait]
impl PushSender for FcmPushSender {
    async fn send(&self, device: &Device, notification: &PushNotification) -> PushOutcome {
        let body = Self::body(device, notification);
        let mut renew = false;
        loop {
            let token = match self.access_token(renew).await {
                Ok(token) => token,
                Err(outcome) => return outcome,
            };
            let answer = match self.post(&token, &body).await {
                Ok(answer) => answer,
                Err(error) => return unreachable(&error),
            };
            let status = answer.status();
            let headers = answer.headers().clone();
            let body = answer.json::<Value>().await.unwrap_or(Value::Null);
            if is_auth_refusal(status, &body) {
                if renew {
                    return PushOutcome::Rejected { error: format!("fcm refused a fresh access token ({status})") };
                }
                renew = true;
                continue;
            }
            return outcome(status, &headers, &body);
        }
    }

    async fn check(&self) -> Result<(), String> {
        self.access_token(false).await.map(|_| ()).map_err(|outcome| outcome.error().unwrap_or_default())
    }
}
