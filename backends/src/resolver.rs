//! Picks each backend from its URL (`ESH_LOG`, `ESH_STORE`, `ESH_CACHE`, `ESH_BLOBS`): unset means the
//! embedded implementation under the data directory; an unknown or not-yet-supported
//! scheme is a typed error at start-up, never a silent fallback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::blob::{BlobStore, LocalBlobStore};
use crate::bus::{DeliveryBus, EmbeddedDeliveryBus};
use crate::cache::{
    EmbeddedIdempotencyKeys, EmbeddedPresence, EmbeddedRateLimiter, EmbeddedRecentMessages, IdempotencyKeys,
    Presence, RateLimiter, RecentMessages,
};
use crate::devices::DeviceRegistry;
use crate::error::BackendError;
use crate::freshness::Freshness;
use crate::log::{EmbeddedLogOptions, EmbeddedMessageLog, MessageLog};
use crate::store::{CachedMediaCatalog, EmbeddedMessageStore, MediaCatalog, MessageStore, MEDIA_CACHE_ENTRIES};

/// Where each backend is; `None` selects the embedded one.
#[derive(Debug, Clone, Default)]
pub struct BackendUrls {
    pub log: Option<String>,
    pub store: Option<String>,
    pub cache: Option<String>,
    /// Media blobs: unset is a directory under `data_dir`; `s3://bucket?…` with feature `s3`.
    pub blobs: Option<String>,
    /// Where embedded backends keep their files.
    pub data_dir: PathBuf,
    /// Partitions of each embedded log topic.
    pub log_partitions: u32,
    /// How long the embedded log keeps records of topics no consumer group reads;
    /// `None` keeps its default (`EmbeddedLogOptions::unclaimed_retention`).
    pub log_retention: Option<Duration>,
    /// How long the embedded log's writer waits to group requests;
    /// `None` keeps its default (`EmbeddedLogOptions::group_wait`).
    pub log_group_wait: Option<Duration>,
    /// Replication factor of the topics the Kafka log creates.
    pub log_replication: u16,
    /// librdkafka properties of every Kafka client, applied last ([`kafka_properties`]).
    pub kafka_properties: Vec<(String, String)>,
    /// Media records kept in memory (`CachedMediaCatalog`); `None` keeps
    /// `MEDIA_CACHE_ENTRIES`, 0 reads every one from the store.
    pub media_cache_entries: Option<usize>,
}

/// Every backend the stages use, shared.
#[derive(Clone)]
pub struct Backends {
    pub log: Arc<dyn MessageLog>,
    pub store: Arc<dyn MessageStore>,
    /// Devices registered for push notifications (the embedded store keeps them).
    pub devices: Arc<dyn DeviceRegistry>,
    /// What was uploaded and who may read it (the store's media tables).
    pub media: Arc<dyn MediaCatalog>,
    /// Media files and thumbnails.
    pub blobs: Arc<dyn BlobStore>,
    pub presence: Arc<dyn Presence>,
    pub recent: Arc<dyn RecentMessages>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub idempotency: Arc<dyn IdempotencyKeys>,
    pub bus: Arc<dyn DeliveryBus>,
    /// How far the store projection has applied the log (read-your-writes).
    pub freshness: Arc<Freshness>,
}

impl Backends {
    /// Waits (at most `freshness::READ_WAIT`) until the store holds everything the log
    /// held when called: the first step of a read that must see earlier writes.
    pub async fn caught_up(&self) -> Result<(), BackendError> {
        self.freshness.wait(self.log.as_ref(), self.store.as_ref(), crate::freshness::READ_WAIT).await
    }
}

/// librdkafka properties from `ESH_KAFKA_<PROPERTY>` variables: the rest of the name in
/// lower case with `_` for `.` (`ESH_KAFKA_LINGER_MS=5` → `linger.ms=5`).
pub fn kafka_properties(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let property = name.strip_prefix("ESH_KAFKA_")?;
            (!property.is_empty()).then(|| (property.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    properties.sort();
    properties
}

/// The scheme of a backend URL, or `embedded` when unset.
fn scheme(url: &Option<String>) -> Result<&str, BackendError> {
    let Some(url) = url else { return Ok("embedded") };
    url.split_once("://").map(|(scheme, _)| scheme).ok_or_else(|| BackendError::UnsupportedUrl {
        url: url.clone(),
        reason: "expected scheme://…".into(),
    })
}

fn unsupported(url: &Option<String>, known: &str) -> BackendError {
    BackendError::UnsupportedUrl {
        url: url.clone().unwrap_or_default(),
        reason: format!("this build supports {known}"),
    }
}

/// Opens every backend named by `urls`.
pub async fn resolve(urls: &BackendUrls) -> Result<Backends, BackendError> {
    std::fs::create_dir_all(&urls.data_dir)?;
    let log: Arc<dyn MessageLog> = match scheme(&urls.log)? {
        "embedded" => {
            let defaults = EmbeddedLogOptions::default();
            let options = EmbeddedLogOptions {
                partitions: urls.log_partitions.max(1),
                unclaimed_retention: urls.log_retention.unwrap_or(defaults.unclaimed_retention),
                group_wait: urls.log_group_wait.unwrap_or(defaults.group_wait),
                ..defaults
            };
            Arc::new(EmbeddedMessageLog::open_with(&urls.data_dir.join("log"), options)?)
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            let mut settings = crate::log::KafkaSettings::from_url(urls.log.as_deref().unwrap_or_default())?;
            settings.partitions = urls.log_partitions.max(1);
            settings.replication = urls.log_replication.max(1);
            settings.properties = urls.kafka_properties.clone();
            Arc::new(crate::log::KafkaMessageLog::open(settings).await?)
        }
        #[cfg(feature = "kafka")]
        _ => return Err(unsupported(&urls.log, "the embedded log (ESH_LOG unset) and kafka://host:port[,host:port…]")),
        #[cfg(not(feature = "kafka"))]
        _ => return Err(unsupported(&urls.log, "the embedded log (ESH_LOG unset); kafka:// needs the `kafka` feature")),
    };
    let (store, devices, media): (Arc<dyn MessageStore>, Arc<dyn DeviceRegistry>, Arc<dyn MediaCatalog>) =
        match scheme(&urls.store)? {
        "embedded" => {
            let store = Arc::new(EmbeddedMessageStore::open(&urls.data_dir.join("store.sqlite3"))?);
            let entries = urls.media_cache_entries.unwrap_or(MEDIA_CACHE_ENTRIES);
            let media = Arc::new(CachedMediaCatalog::new(store.clone(), entries));
            (store.clone(), store, media)
        }
        _ => return Err(unsupported(&urls.store, "the embedded store (ESH_STORE unset)")),
    };
    let blobs = resolve_blobs(urls)?;
    match scheme(&urls.cache)? {
        "embedded" => {}
        _ => return Err(unsupported(&urls.cache, "the in-process cache (ESH_CACHE unset)")),
    }
    Ok(Backends {
        log,
        store,
        devices,
        media,
        blobs,
        presence: Arc::new(EmbeddedPresence::new()),
        recent: Arc::new(EmbeddedRecentMessages::new()),
        rate_limiter: Arc::new(EmbeddedRateLimiter::new()),
        idempotency: Arc::new(EmbeddedIdempotencyKeys::new()),
        bus: Arc::new(EmbeddedDeliveryBus::new()),
        freshness: Arc::new(Freshness::default()),
    })
}

/// The blob store of `urls.blobs`.
fn resolve_blobs(urls: &BackendUrls) -> Result<Arc<dyn BlobStore>, BackendError> {
    match scheme(&urls.blobs)? {
        "embedded" => Ok(Arc::new(LocalBlobStore::open(&urls.data_dir.join("blobs"))?)),
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(crate::blob::S3BlobStore::from_url(urls.blobs.as_deref().unwrap_or_default())?)),
        _ if cfg!(feature = "s3") => Err(unsupported(&urls.blobs, "s3:// and the local directory (ESH_BLOBS unset)")),
        _ => Err(unsupported(&urls.blobs, "the local directory (ESH_BLOBS unset; s3:// needs feature s3)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let urls = BackendUrls {
            log: Some("carrier-pigeon://coop".into()),
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        assert!(matches!(resolve(&urls).await, Err(BackendError::UnsupportedUrl { .. })));
        let urls = BackendUrls { store: Some("no-scheme".into()), data_dir: dir.path().to_path_buf(), ..Default::default() };
        assert!(matches!(resolve(&urls).await, Err(BackendError::UnsupportedUrl { .. })));
        let urls = BackendUrls { blobs: Some("ftp://host/x".into()), data_dir: dir.path().to_path_buf(), ..Default::default() };
        assert!(matches!(resolve(&urls).await, Err(BackendError::UnsupportedUrl { .. })));
    }

    #[test]
    fn kafka_properties_come_from_esh_kafka_variables() {
        let vars = [("ESH_KAFKA_LINGER_MS", "5"), ("ESH_LOG", "kafka://x:1"), ("ESH_KAFKA_", "x"), ("ESH_KAFKA_SESSION_TIMEOUT_MS", "6000")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            kafka_properties(vars),
            [("linger.ms".to_owned(), "5".to_owned()), ("session.timeout.ms".to_owned(), "6000".to_owned())]
        );
    }
}
