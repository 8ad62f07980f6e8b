//! The one typed configuration of the `esh` process. Every field is an `ESH_*` environment
//! variable and a mirroring command-line flag; the defaults are those of API.md
//! ("Configuration every deployment and test relies on").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use esh_common::retry::RetrySchedule;
use esh_ingest::log_ingest::Integrators;

/// A part of the pipeline this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Stage {
    /// The HTTP API (`/v1/...` except the WebSocket).
    Ingest,
    /// The consumer of the message topics that hands messages to deliverer nodes.
    Router,
    /// The store projection: writes the store from the log (consumer group `store`).
    Store,
    /// The WebSocket gateway (`GET /v1/ws`), resends, and status frames to senders.
    Deliverer,
    /// Push notifications to offline users (consumer group `push` on `esh.push.v1`); runs
    /// only when provider credentials are configured.
    Push,
}

impl Stage {
    /// Every stage, in start order of a one-process platform.
    pub const ALL: [Stage; 5] = [Stage::Ingest, Stage::Store, Stage::Router, Stage::Deliverer, Stage::Push];
}

/// Configuration of the whole platform.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the HTTP and WebSocket listener (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "ESH_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Where the embedded backends keep their files, and where generated secrets are stored.
    #[arg(long, env = "ESH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The admin bearer token; when unset, one is generated at first start, stored in
    /// `<data dir>/admin_token` (mode 0600) and printed once.
    #[arg(long, env = "ESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// HS256 secret of user tokens; when unset, one is generated at first start and stored
    /// in `<data dir>/jwt_secret` (mode 0600).
    #[arg(long, env = "ESH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Public keys of integrators' identity providers, whose RS256 or ES256 user tokens are
    /// accepted beside the platform's HS256 ones: comma-separated `kid=path` pairs naming
    /// PEM files (an RSA key or a P-256 key); a token chooses its key by the `kid` of its
    /// header. None by default. Read at start: a restart applies changes.
    #[arg(long, env = "ESH_JWT_PUBLIC_KEYS", value_delimiter = ',', value_parser = parse_public_key_file)]
    pub jwt_public_keys: Vec<PublicKeyFile>,

    /// A JWKS file (`{"keys": [...]}`) of identity-provider public keys, each with a `kid`,
    /// RSA (RS256) or EC P-256 (ES256); keys with `"use": "enc"` are skipped. None by default.
    /// Read at start: a restart applies a rotation.
    #[arg(long, env = "ESH_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// The `iss` every RS256/ES256 token must carry; not checked when unset.
    #[arg(long, env = "ESH_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The audience every RS256/ES256 token must name in `aud`; not checked when unset.
    #[arg(long, env = "ESH_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Sends a sender may make in any 60 s window (one-way and chat, HTTP and socket).
    #[arg(long, env = "ESH_RATE_LIMIT_PER_MINUTE", default_value_t = 100)]
    pub rate_limit_per_minute: u64,

    /// Broadcast recipients a business may address in any hour.
    #[arg(long, env = "ESH_BROADCAST_RECIPIENTS_PER_HOUR", default_value_t = 1_000_000)]
    pub broadcast_recipients_per_hour: u64,

    /// Unprocessed messages in the log beyond which ingest answers `503 overloaded`
    /// (low and normal priority first, high priority last).
    #[arg(long, env = "ESH_BACKLOG_LIMIT", default_value_t = 10_000)]
    pub backlog_limit: u64,

    /// How long a delivered message may stay unacknowledged before it is sent again.
    #[arg(long, env = "ESH_ACK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub ack_timeout: Duration,

    /// Waits before each retry of an unacknowledged delivery, comma-separated; the message
    /// is dead-lettered when the retry after the last wait is not acknowledged either
    /// (Req 4.1, 4.2: the default makes 7 attempts).
    #[arg(long, env = "ESH_RETRY_SCHEDULE", default_value = "1s,2s,4s,8s,16s,32s", value_parser = parse_retry_schedule)]
    pub retry_schedule: RetrySchedule,

    /// Heartbeat announced to clients (`heartbeat_s`); a socket silent for three of them is closed.
    #[arg(long, env = "ESH_HEARTBEAT", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Message log URL (`kafka://…`); the embedded log under the data directory when unset.
    #[arg(long = "log", env = "ESH_LOG")]
    pub log_url: Option<String>,

    /// Store URL (`scylla://…`); the embedded store under the data directory when unset.
    #[arg(long = "store", env = "ESH_STORE")]
    pub store_url: Option<String>,

    /// Cache and presence URL (`redis://…`); in-process when unset.
    #[arg(long = "cache", env = "ESH_CACHE")]
    pub cache_url: Option<String>,

    /// Blob store URL for media: `s3://bucket?endpoint=…&region=…&path_style=true`
    /// (credentials from the AWS variables); a directory under the data directory when unset.
    #[arg(long = "blobs", env = "ESH_BLOBS")]
    pub blobs_url: Option<String>,

    /// Base of the absolute URLs in answers (signed media URLs), e.g. `https://api.example.com`;
    /// when unset, the request's host (and where the listener is bound for WebSocket frames).
    #[arg(long, env = "ESH_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// HMAC key of the media URLs `esh` signs (instances behind one URL share it); when
    /// unset, one is generated at first start and stored in `<data dir>/media_url_key` (mode 0600).
    #[arg(long, env = "ESH_MEDIA_URL_KEY", hide_env_values = true)]
    pub media_url_key: Option<String>,

    /// How long an upload may wait for a message to reference it before it is deleted.
    #[arg(long, env = "ESH_MEDIA_UNREFERENCED_TTL", default_value = "24h", value_parser = parse_duration)]
    pub media_unreferenced_ttl: Duration,

    /// Media records each process keeps in memory, so that sends and deliveries with media
    /// do not read the store each time (records never change; 0: always read the store).
    #[arg(long, env = "ESH_MEDIA_CACHE_ENTRIES", default_value_t = esh_backends::store::MEDIA_CACHE_ENTRIES)]
    pub media_cache_entries: usize,

    /// Partitions of each topic the log creates (embedded, or Kafka when the topic is missing).
    #[arg(long, env = "ESH_LOG_PARTITIONS", default_value_t = 8)]
    pub log_partitions: u32,

    /// Replication factor of each topic the Kafka log creates.
    #[arg(long, env = "ESH_LOG_REPLICATION", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub log_replication: u16,

    /// librdkafka properties of every Kafka client, from `ESH_KAFKA_<PROPERTY>` variables
    /// (`ESH_KAFKA_LINGER_MS=5` → `linger.ms=5`), applied over the log's own defaults.
    #[arg(skip = esh_backends::resolver::kafka_properties(std::env::vars()))]
    pub kafka_properties: Vec<(String, String)>,

    /// How long the embedded log keeps records of topics no consumer group reads (dead
    /// letters, topics only external consumers read), counted from when their journal
    /// segment was closed.
    #[arg(long, env = "ESH_LOG_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub log_retention: Duration,

    /// How long the embedded log waits for more appends before it syncs a group that is
    /// not full, while appends of several callers come at once: less CPU at moderate rates
    /// for up to this much more latency (0: never waits).
    #[arg(long, env = "ESH_LOG_GROUP_WAIT", default_value = "500us", value_parser = parse_duration)]
    pub log_group_wait: Duration,

    /// Threads running the async tasks (HTTP, sockets, routing). By default one per core,
    /// less one when the embedded log or store runs in this process: their writer threads
    /// need a core under load, and async workers competing with them for it only wake each
    /// other up (BENCHMARKS.md measures it).
    #[arg(long, env = "ESH_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Id of this deliverer node in presence and on the delivery bus; a random one when unset.
    #[arg(long, env = "ESH_NODE_ID")]
    pub node_id: Option<String>,

    /// Integrators that may produce sends to `esh.ingest.v1`, and the senders each may act
    /// for: `principal=sender,sender;principal=*` (`*`: any sender). Empty: nobody.
    #[arg(long, env = "ESH_INTEGRATORS", default_value = "")]
    pub integrators: Integrators,

    /// The stages this process runs, comma-separated; all of them by default.
    #[arg(long, env = "ESH_STAGES", value_delimiter = ',', default_value = "ingest,store,router,deliverer,push")]
    pub stages: Vec<Stage>,

    /// How long each shutdown step (in-flight requests, the router's batch, sockets) may take
    /// before it is cut short.
    #[arg(long, env = "ESH_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Devices a mobile user may register for push notifications.
    #[arg(long, env = "ESH_MAX_DEVICES_PER_USER", default_value_t = 10)]
    pub max_devices_per_user: usize,

    #[command(flatten)]
    pub push: PushSettings,
}

/// Push providers and the push stage. Without credentials (neither FCM nor APNs set) the
/// push stage stays off and `/health/ready` says so.
#[derive(Debug, Clone, Args)]
pub struct PushSettings {
    /// Path of the FCM service-account key file (JSON); enables Android notifications.
    #[arg(long, env = "ESH_FCM_SERVICE_ACCOUNT")]
    pub fcm_service_account: Option<PathBuf>,

    /// Base URL of the FCM HTTP v1 API.
    #[arg(long, env = "ESH_FCM_ENDPOINT", default_value = "https://fcm.googleapis.com")]
    pub fcm_endpoint: String,

    /// Path of the APNs signing key (`.p8`); with the key id, team id and topic it enables
    /// iOS notifications.
    #[arg(long, env = "ESH_APNS_KEY")]
    pub apns_key: Option<PathBuf>,

    /// Id of the APNs signing key.
    #[arg(long, env = "ESH_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,

    /// Apple developer team id.
    #[arg(long, env = "ESH_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,

    /// The app's bundle id (`apns-topic`).
    #[arg(long, env = "ESH_APNS_TOPIC")]
    pub apns_topic: Option<String>,

    /// Base URL of APNs (`https://api.sandbox.push.apple.com` for development builds).
    #[arg(long, env = "ESH_APNS_ENDPOINT", default_value = "https://api.push.apple.com")]
    pub apns_endpoint: String,

    /// Notifications carry only the message and conversation ids (no sender, no preview).
    #[arg(long, env = "ESH_PUSH_PRIVACY", default_value_t = false)]
    pub privacy: bool,

    /// Most provider requests in flight at once.
    #[arg(long, env = "ESH_PUSH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Longest wait for one provider request.
    #[arg(long, env = "ESH_PUSH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            fcm_service_account: None,
            fcm_endpoint: "https://fcm.googleapis.com".into(),
            apns_key: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_topic: None,
            apns_endpoint: "https://api.push.apple.com".into(),
            privacy: false,
            concurrency: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Parses only the configuration, from the environment and `args`.
#[derive(Debug, Parser)]
#[command(name = "esh")]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The configuration given by `ESH_*` environment variables alone (defaults elsewhere).
    pub fn from_env() -> Result<Config, clap::Error> {
        Config::from_args(["esh"])
    }

    /// The configuration given by command-line `args` (the first is the program name) and
    /// the environment.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        ConfigOnly::try_parse_from(args).map(|parsed| parsed.config)
    }

    /// How many async worker threads to run on a machine of `cores` cores (see
    /// `worker_threads`).
    pub fn async_workers(&self, cores: usize) -> usize {
        if let Some(threads) = self.worker_threads {
            return usize::from(threads);
        }
        let embedded_writers = self.log_url.is_none() || self.store_url.is_none();
        cores.saturating_sub(usize::from(embedded_writers)).max(1)
    }

    /// The defaults with the data directory `data_dir` and the listener on a free local
    /// port, ignoring the environment (for embedding and tests).
    pub fn local(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            admin_token: None,
            jwt_secret: None,
            jwt_public_keys: Vec::new(),
            jwt_jwks: None,
            jwt_issuer: None,
            jwt_audience: None,
            rate_limit_per_minute: 100,
            broadcast_recipients_per_hour: 1_000_000,
            backlog_limit: 10_000,
            ack_timeout: Duration::from_secs(5),
            retry_schedule: RetrySchedule::default(),
            heartbeat: Duration::from_secs(30),
            log_url: None,
            store_url: None,
            cache_url: None,
            blobs_url: None,
            public_url: None,
            media_url_key: None,
            media_unreferenced_ttl: Duration::from_secs(24 * 3600),
            media_cache_entries: esh_backends::store::MEDIA_CACHE_ENTRIES,
            log_partitions: 8,
            log_replication: 1,
            kafka_properties: Vec::new(),
            log_retention: Duration::from_secs(7 * 24 * 3600),
            log_group_wait: esh_backends::log::DEFAULT_GROUP_WAIT,
            worker_threads: None,
            node_id: None,
            stages: Stage::ALL.to_vec(),
            shutdown_grace: Duration::from_secs(10),
            integrators: Integrators::default(),
            max_devices_per_user: 10,
            push: PushSettings::default(),
        }
    }

    /// Whether this process runs `stage`.
    pub fn runs(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }
}

/// A PEM public key file of an identity provider and the key id tokens name it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyFile {
    pub kid: String,
    pub path: PathBuf,
}

/// Parses `kid=path` (the key id must not be empty, nor the path).
pub fn parse_public_key_file(text: &str) -> Result<PublicKeyFile, String> {
    match text.trim().split_once('=') {
        Some((kid, path)) if !kid.trim().is_empty() && !path.trim().is_empty() => {
            Ok(PublicKeyFile { kid: kid.trim().to_owned(), path: PathBuf::from(path.trim()) })
        }
        _ => Err(format!("invalid public key {text:?}: expected kid=path/to/key.pem")),
    }
}

/// Parses a duration such as `30s`, `250ms`, `5m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. \"30s\""))?;
    let duration = match unit.trim() {
        "us" => Duration::from_micros(value),
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        "d" => Duration::from_secs(value.saturating_mul(24 * 3600)),
        other => return Err(format!("invalid duration unit {other:?} in {text:?}: use us, ms, s, m, h or d")),
    };
    Ok(duration)
}

/// Parses a retry schedule such as `1s,2s,4s,8s,16s,32s` or `10ms,20ms`: durations as
/// [`parse_duration`] reads them, at least one, none zero.
pub fn parse_retry_schedule(text: &str) -> Result<RetrySchedule, String> {
    let waits = text.split(',').map(parse_duration).collect::<Result<Vec<_>, _>>()?;
    RetrySchedule::new(waits).map_err(|error| format!("invalid retry schedule {text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_docs() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn a_core_is_left_to_the_embedded_writers_unless_told_otherwise() {
        let embedded = Config::local("/tmp/unused");
        assert_eq!(embedded.async_workers(2), 1);
        assert_eq!(embedded.async_workers(8), 7);
        assert_eq!(embedded.async_workers(1), 1);
        let remote = Config {
            log_url: Some("kafka://k:9092".into()),
            store_url: Some("scylla://s:9042".into()),
            ..Config::local("/tmp/unused")
        };
        assert_eq!(remote.async_workers(2), 2);
        let half_embedded = Config { store_url: None, ..remote.clone() };
        assert_eq!(half_embedded.async_workers(2), 1);
        let told = Config::from_args(["esh", "--worker-threads", "3"]).unwrap();
        assert_eq!(told.async_workers(2), 3);
        assert!(Config::from_args(["esh", "--worker-threads", "0"]).is_err());
    }

    #[test]
    fn retry_schedules_read_like_durations() {
        let schedule = parse_retry_schedule("10ms, 20ms,1s").unwrap();
        assert_eq!(schedule.waits(), [Duration::from_millis(10), Duration::from_millis(20), Duration::from_secs(1)]);
        assert!(parse_retry_schedule("").is_err());
        assert!(parse_retry_schedule("1s,,2s").is_err());
        assert!(parse_retry_schedule("1s,0ms").is_err());
        assert!(parse_retry_schedule("1s,soon").is_err());
    }

    #[test]
    fn public_keys_are_kid_path_pairs() {
        let config = Config::from_args(["esh", "--jwt-public-keys", "2026-01=/keys/a.pem, 2026-02=b.pem"]).unwrap();
        let expected = [("2026-01", "/keys/a.pem"), ("2026-02", "b.pem")]
            .map(|(kid, path)| PublicKeyFile { kid: kid.into(), path: path.into() });
        assert_eq!(config.jwt_public_keys, expected);
        assert!(Config::local("/tmp/x").jwt_public_keys.is_empty());
        for bad in ["a.pem", "=a.pem", "kid=", ""] {
            assert!(parse_public_key_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_override_defaults_and_defaults_match_the_contract() {
        let config = Config::from_args([
            "esh",
            "--http-addr",
            "127.0.0.1:9999",
            "--ack-timeout",
            "50ms",
            "--stages",
            "ingest,deliverer",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(config.http_addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(config.ack_timeout, Duration::from_millis(50));
        assert_eq!(config.stages, vec![Stage::Ingest, Stage::Deliverer]);
        assert!(!config.runs(Stage::Router));
        assert_eq!(config.retry_schedule, RetrySchedule::default(), "Req 4.1: 1, 2, 4, 8, 16, 32 s unless set");
        let config = Config::from_args(["esh", "--retry-schedule", "5ms,7ms"]).unwrap();
        assert_eq!(config.retry_schedule.waits(), [Duration::from_millis(5), Duration::from_millis(7)]);

        let local = Config::local("/tmp/x");
        assert_eq!(local.rate_limit_per_minute, 100);
        assert_eq!(local.broadcast_recipients_per_hour, 1_000_000);
        assert_eq!(local.backlog_limit, 10_000);
        assert_eq!(local.heartbeat, Duration::from_secs(30));
        assert_eq!(local.log_partitions, 8);
        assert_eq!(local.log_retention, Duration::from_secs(7 * 24 * 3600), "Kafka's default retention.ms");
        assert_eq!(Config::from_args(["esh"]).unwrap().log_retention, local.log_retention);
        let config = Config::from_args(["esh", "--log-retention", "36h"]).unwrap();
        assert_eq!(config.log_retention, Duration::from_secs(36 * 3600));
        assert_eq!(Config::from_args(["esh"]).unwrap().log_group_wait, local.log_group_wait);
        let config = Config::from_args(["esh", "--log-group-wait", "0us"]).unwrap();
        assert_eq!(config.log_group_wait, Duration::ZERO);
        assert_eq!(local.retry_schedule.to_string(), "1s,2s,4s,8s,16s,32s");
    }
}
