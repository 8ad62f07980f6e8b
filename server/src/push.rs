//! The push providers named by the configuration (`PushSettings`): FCM when a service
//! account is given, APNs when its key, key id, team id and topic are; none without
//! credentials (the push stage then stays off).

use esh_push_worker::{ApnsConfig, ApnsPushSender, FcmConfig, FcmPushSender, Senders, ServiceAccount};
use std::sync::Arc;

use crate::config::PushSettings;
use crate::platform::PlatformError;

fn read(path: &std::path::Path, what: &str) -> Result<String, PlatformError> {
    std::fs::read_to_string(path)
        .map_err(|error| PlatformError::Config(format!("cannot read {what} {}: {error}", path.display())))
}

/// The senders of the configured providers; a half-configured provider is an error.
pub(crate) fn senders(settings: &PushSettings) -> Result<Senders, PlatformError> {
    let invalid = |error: esh_push_worker::CredentialsError| PlatformError::Config(error.to_string());
    let mut senders = Senders::default();
    if let Some(path) = &settings.fcm_service_account {
        let account = ServiceAccount::from_json(&read(path, "ESH_FCM_SERVICE_ACCOUNT")?).map_err(invalid)?;
        let config = FcmConfig { account, endpoint: settings.fcm_endpoint.clone(), timeout: settings.timeout };
        senders.android = Some(Arc::new(FcmPushSender::new(config).map_err(invalid)?));
    }
    let apns = [&settings.apns_key_id, &settings.apns_team_id, &settings.apns_topic];
    match (&settings.apns_key, apns) {
        (Some(path), [Some(key_id), Some(team_id), Some(topic)]) => {
            let config = ApnsConfig {
                key_pem: read(path, "ESH_APNS_KEY")?,
                key_id: key_id.clone(),
                team_id: team_id.clone(),
                topic: topic.clone(),
                endpoint: settings.apns_endpoint.clone(),
                timeout: settings.timeout,
                token_refresh: ApnsConfig::DEFAULT_TOKEN_REFRESH,
            };
            senders.ios = Some(Arc::new(ApnsPushSender::new(config).map_err(invalid)?));
        }
        (None, [None, None, None]) => {}
        _ => {
            return Err(PlatformError::Config(
                "APNs needs ESH_APNS_KEY, ESH_APNS_KEY_ID, ESH_APNS_TEAM_ID and ESH_APNS_TOPIC together".into(),
            ))
        }
    }
    Ok(senders)
}
