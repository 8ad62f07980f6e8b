//! `ApnsPushSender`: the Apple Push Notification service over HTTP/2 for iOS devices.
//!
//! Token-based auth: an ES256 JWT (`kid` = the key id, `iss` = the team id, `iat`) signed
//! with the team's `.p8` key goes in `authorization: bearer`; it is renewed every
//! `token_refresh` (Apple accepts a token for an hour and refuses renewals more often than
//! every 20 minutes) and once when APNs calls it expired or invalid. Each notification is a
//! `POST {endpoint}/3/device/{token}` with `apns-topic`, `apns-push-type` and
//! `apns-priority`, on one client whose HTTP/2 connection carries every request (ALPN over
//! TLS; HTTP/2 with prior knowledge for a plain `http://` endpoint, as local test servers use).

use std::time::Duration;

use async_trait::async_trait;
use esh_common::{Device, Priority};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{retry_after, unreachable, CredentialsError, PushNotification, PushOutcome, PushSender};

/// Settings of the APNs sender.
#[derive(Clone)]
pub struct ApnsConfig {
    /// The `.p8` signing key (PEM, PKCS#8 P-256).
    pub key_pem: String,
    /// The key's id (`kid`).
    pub key_id: String,
    /// The developer team id (`iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Base URL of APNs (`https://api.push.apple.com`; the sandbox for development builds).
    pub endpoint: String,
    /// Longest wait for one request.
    pub timeout: Duration,
    /// How long a provider token is used before a new one is signed (under Apple's hour).
    pub token_refresh: Duration,
}

impl ApnsConfig {
    pub const DEFAULT_ENDPOINT: &'static str = "https://api.push.apple.com";
    pub const DEFAULT_TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);
}

impl std::fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

struct ProviderToken {
    value: String,
    renew_at: Instant,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

/// APNs over HTTP/2 (see the module docs).
pub struct ApnsPushSender {
    client: reqwest::Client,
    key: EncodingKey,
    config: ApnsConfig,
    token: Mutex<Option<ProviderToken>>,
}

impl ApnsPushSender {
    pub fn new(config: ApnsConfig) -> Result<ApnsPushSender, CredentialsError> {
        let key = EncodingKey::from_ec_pem(config.key_pem.as_bytes())
            .map_err(|error| CredentialsError::Invalid { what: "apns signing key", reason: error.to_string() })?;
        let mut client = reqwest::Client::builder().timeout(config.timeout);
        if config.endpoint.starts_with("http://") {
            client = client.http2_prior_knowledge();
        }
        let client = client.build().map_err(|error| CredentialsError::Client(error.to_string()))?;
        Ok(ApnsPushSender { client, key, config, token: Mutex::new(None) })
    }

    /// The current provider token, or a newly signed one when it is due (or `renew` asks).
    async fn provider_token(&self, renew: bool) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|token| !renew && Instant::now() < token.renew_at) {
            return Ok(token.value.clone());
        }
        let header = Header { kid: Some(self.config.key_id.clone()), ..Header::new(Algorithm::ES256) };
        let claims = Claims { iss: &self.config.team_id, iat: esh_common::Millis::now().0 / 1000 };
        let value = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|error| error.to_string())?;
        *cached = Some(ProviderToken { value: value.clone(), renew_at: Instant::now() + self.config.token_refresh });
        Ok(value)
    }

    /// The JSON payload: `aps` with the alert, and the ids beside it (with `image_url`, which
    /// the app's notification service extension attaches). In privacy mode the alert is a
    /// localization key and `mutable-content` lets the app's extension fill it.
    fn payload(notification: &PushNotification) -> Value {
        let mut payload = notification.ids();
        let aps = match &notification.display {
            Some(display) => {
                if display.media_count > 0 {
                    payload.insert("media_count".into(), display.media_count.into());
                }
                if let Some(image) = &display.image_url {
                    payload.insert("image_url".into(), image.clone().into());
                }
                json!({
                    "alert": { "title": display.sender_name, "body": display.preview },
                    "sound": "default",
                    "mutable-content": u8::from(display.media_count > 0),
                })
            }
            None => json!({ "alert": { "loc-key": "NEW_MESSAGE" }, "sound": "default", "mutable-content": 1 }),
        };
        payload.insert("aps".into(), aps);
        Value::Object(payload)
    }

    async fn post(
        &self,
        token: &str,
        device: &Device,
        notification: &PushNotification,
        payload: &Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        // 10: deliver now; 5: when the device's power allows (low priority).
        let priority = if notification.priority == Priority::Low { "5" } else { "10" };
        self.client
            .post(format!("{}/3/device/{}", self.config.endpoint.trim_end_matches('/'), device.token))
            .bearer_auth(token)
            .header("apns-topic", &self.config.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", priority)
            // A notification sent again (a retry after a restart) replaces the first one.
            .header("apns-collapse-id", &notification.message_id)
            .json(payload)
            .send()
            .await
    }
}

/// Maps an APNs answer other than a provider-token refusal (`reason` from the JSON body).
fn outcome(status: StatusCode, headers: &reqwest::header::HeaderMap, reason: &str) -> PushOutcome {
    let message = || format!("apns {status} {reason}");
    match (status, reason) {
        (status, _) if status.is_success() => PushOutcome::Accepted,
        (StatusCode::GONE, _) | (_, "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic") => {
            PushOutcome::Unregistered { reason: message() }
        }
        (StatusCode::TOO_MANY_REQUESTS, _) => PushOutcome::Throttled { retry_after: retry_after(headers) },
        (status, _) if status.is_server_error() => PushOutcome::Unavailable { error: message() },
        _ => PushOutcome::Rejected { error: message() },
    }
}

fn is_token_refusal(status: StatusCode, reason: &str) -> bool {
    status == StatusCode::FORBIDDEN && matches!(reason, "ExpiredProviderToken" | "InvalidProviderToken")
}

#[async_trait]
impl PushSender for ApnsPushSender {
    async fn send(&self, device: &Device, notification: &PushNotification) -> PushOutcome {
        let payload = Self::payload(notification);
        let mut renew = false;
        loop {
            let token = match self.provider_token(renew).await {
                Ok(token) => token,
                Err(error) => {
                    return PushOutcome::Rejected { error: format!("apns: cannot sign the provider token: {error}") }
                }
            };
            let answer = match self.post(&token, device, notification, &payload).await {
                Ok(answer) => answer,
                Err(error) => return unreachable(&error),
            };
            let status = answer.status();
            let headers = answer.headers().clone();
            let body = answer.json::<Value>().await.unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or_default();
            if is_token_refusal(status, reason) {
                if renew {
                    return PushOutcome::Rejected { error: format!("apns refused a fresh provider token ({reason})") };
                }
                renew = true;
                continue;
            }
            return outcome(status, &headers, reason);
        }
    }

    async fn check(&self) -> Result<(), String> {
        self.provider_token(false).await.map(|_| ())
    }
}
