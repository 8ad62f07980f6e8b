//! Starting and stopping the stages of one process.
//!
//! Start: backends → status writer → deliverer → store projection → router → push stage
//! (when provider credentials are configured) → (the projection catches up with the log
//! and idempotency answers are restored) → HTTP listener. Stop, when the shutdown token is
//! cancelled (SIGTERM, SIGINT, or [`Platform::shutdown`]): stop accepting and finish
//! in-flight HTTP requests → let the router finish its batch and commit → let the push
//! stage finish its batch → close the sockets → drain the status writer → let
//! the projection apply what it holds → drop the backends (closing the log and store).
//! Each step gets `shutdown_grace`; a step that overruns is cut short and logged.

use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use esh_backends::resolver::{resolve, BackendUrls, Backends};
use esh_backends::status_writer::StatusWriter;
use esh_backends::media_links::MediaLinkConfig;
use esh_backends::BackendError;
use esh_common::auth::{ExternalKeys, TokenKeys};
use esh_common::ingress::ChatIngress;
use esh_deliverer::{Deliverer, DelivererConfig};
use esh_ingest::log_ingest::LogIngestConfig;
use esh_ingest::{Ingest, IngestConfig};
use esh_push_worker::PushConfig;
use esh_router::RouterConfig;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, Id, JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::config::{Config, Stage};
use crate::push;
use crate::secrets::{self, ADMIN_TOKEN_FILE, JWT_SECRET_FILE, MEDIA_URL_KEY_FILE};

/// Status changes queued for the status writer before callers wait.
const STATUS_QUEUE: usize = 1024;

/// Waits until the store projection has applied everything the log held at start, then
/// restores the idempotency answers it kept; fails if the projection stops meanwhile.
/// Without a projection in this process, the answers the store holds are restored as they are.
async fn catch_up(backends: &Backends, ingest: &Ingest, projection: Option<&AbortHandle>) -> Result<(), PlatformError> {
    if let Some(projection) = projection {
        // Each wait is bounded (`Backends::caught_up`); the projection may need many, as
        // long as it runs.
        loop {
            match backends.caught_up().await {
                Ok(()) => break,
                Err(error) if projection.is_finished() => {
                    return Err(PlatformError::StageFailed { stage: "store", reason: error.to_string() });
                }
                Err(error) if error.kind() == esh_backends::ErrorKind::Transient => {
                    tracing::info!(%error, "waiting for the store projection to catch up with the log");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    let restored = ingest.restore_idempotency().await.map_err(|error| PlatformError::StageFailed {
        stage: "ingest",
        reason: format!("cannot restore idempotency keys: {error}"),
    })?;
    tracing::info!(restored, "idempotency keys restored");
    Ok(())
}

/// Why the platform could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read or write {what}")]
    Secret { what: &'static str, source: std::io::Error },
    #[error("cannot use the identity provider keys of {path}: {reason}")]
    JwtKeys { path: std::path::PathBuf, reason: String },
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("stage {stage} stopped unexpectedly: {reason}")]
    StageFailed { stage: &'static str, reason: String },
}

/// A task of the platform, as tracked in its `JoinSet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Http,
    /// The `esh.ingest.v1` consumer (Kafka-native sends): stops with the listener.
    LogIngest,
    Router,
    Store,
    Push,
    /// The collection of uploads no message references.
    Media,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Http => "http",
            Task::LogIngest => "ingest consumer",
            Task::Router => "router",
            Task::Store => "store",
            Task::Push => "push",
            Task::Media => "media",
        }
    }
}

type TaskOutcome = (Task, Result<(), String>);

/// The cancellation of each stage, fired in shutdown order by the platform.
struct StageTokens {
    http: CancellationToken,
    router: CancellationToken,
    deliverer: CancellationToken,
    store: CancellationToken,
    push: CancellationToken,
}

/// A running platform: every configured stage on one listener.
pub struct Platform {
    addr: SocketAddr,
    admin_token: String,
    generated_admin_token: bool,
    keys: TokenKeys,
    grace: Duration,
    shutdown: CancellationToken,
    stages: StageTokens,
    tasks: JoinSet<TaskOutcome>,
    aborts: Vec<(Task, AbortHandle)>,
    status_task: Option<JoinHandle<()>>,
    status_writer: Option<StatusWriter>,
    ingest: Option<Arc<Ingest>>,
    deliverer: Option<Arc<Deliverer>>,
    backends: Option<Backends>,
}

impl Platform {
    /// Starts every configured stage; it runs until [`Platform::shutdown`].
    pub async fn start(config: Config) -> Result<Platform, PlatformError> {
        Platform::start_with_shutdown(config, CancellationToken::new()).await
    }

    /// Starts every configured stage; cancelling `shutdown` stops them in order (see
    /// [`Platform::wait`]).
    pub async fn start_with_shutdown(config: Config, shutdown: CancellationToken) -> Result<Platform, PlatformError> {
        validate(&config)?;
        let external_keys = external_keys(&config)?;
        // Bind first: a taken port fails the start before anything is opened or generated.
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| PlatformError::Listen { addr: config.http_addr, source })?;
        let addr = listener.local_addr().map_err(|source| PlatformError::Listen { addr: config.http_addr, source })?;
        let backends = resolve(&BackendUrls {
            log: config.log_url.clone(),
            store: config.store_url.clone(),
            cache: config.cache_url.clone(),
            blobs: config.blobs_url.clone(),
            data_dir: config.data_dir.clone(),
            log_partitions: config.log_partitions,
            log_retention: Some(config.log_retention),
            log_group_wait: Some(config.log_group_wait),
            log_replication: config.log_replication,
            kafka_properties: config.kafka_properties.clone(),
            media_cache_entries: Some(config.media_cache_entries),
        })
        .await?;
        // Secrets last: a start that fails earlier (taken port, bad backend url, data
        // directory in use) generates nothing, so a generated admin token is always shown.
        let admin = secrets::load_or_generate(&config.data_dir, ADMIN_TOKEN_FILE, config.admin_token.as_deref())
            .map_err(|source| PlatformError::Secret { what: "the admin token", source })?;
        let jwt = secrets::load_or_generate(&config.data_dir, JWT_SECRET_FILE, config.jwt_secret.as_deref())
            .map_err(|source| PlatformError::Secret { what: "the jwt secret", source })?;
        let keys = TokenKeys::hs256(jwt.value.as_bytes()).with_external(external_keys);
        let senders = push::senders(&config.push)?;
        let media_key = secrets::load_or_generate(&config.data_dir, MEDIA_URL_KEY_FILE, config.media_url_key.as_deref())
            .map_err(|source| PlatformError::Secret { what: "the media url key", source })?;
        let media_links = MediaLinkConfig {
            key: media_key.value.as_bytes().into(),
            public_url: config.public_url.clone(),
            local_url: format!("http://{addr}"),
        };
        let (status_writer, status_task) =
            StatusWriter::start(backends.log.clone(), STATUS_QUEUE, esh_backends::status_writer::LINGER);
        let status_writer_for_push = status_writer.clone();

        let ingest = Ingest::new(
            backends.clone(),
            keys.clone(),
            admin.value.clone(),
            status_writer.clone(),
            IngestConfig {
                rate_limit_per_minute: config.rate_limit_per_minute,
                broadcast_recipients_per_hour: config.broadcast_recipients_per_hour,
                backlog_limit: config.backlog_limit,
                max_devices_per_user: config.max_devices_per_user,
                media_links: media_links.clone(),
                media_unreferenced_ttl: config.media_unreferenced_ttl,
                ..IngestConfig::default()
            },
        );
        if !senders.is_empty() {
            ingest.set_push_check(Arc::new(senders.clone()));
        }
        let router_config = RouterConfig { push: !senders.is_empty(), ..RouterConfig::default() };
        let stages = StageTokens {
            http: CancellationToken::new(),
            router: CancellationToken::new(),
            deliverer: CancellationToken::new(),
            store: CancellationToken::new(),
            push: CancellationToken::new(),
        };
        let mut platform = Platform {
            addr,
            admin_token: admin.value,
            generated_admin_token: admin.generated,
            keys: keys.clone(),
            grace: config.shutdown_grace,
            shutdown,
            stages,
            tasks: JoinSet::new(),
            aborts: Vec::new(),
            status_task: Some(status_task),
            status_writer: Some(status_writer.clone()),
            ingest: Some(ingest.clone()),
            deliverer: None,
            backends: Some(backends.clone()),
        };

        if config.runs(Stage::Deliverer) {
            let ingress: Arc<dyn ChatIngress> = ingest.clone();
            let deliverer_config = DelivererConfig {
                node_id: config.node_id.clone().unwrap_or_else(random_node_id),
                heartbeat: config.heartbeat,
                ack_timeout: config.ack_timeout,
                retry_schedule: config.retry_schedule.clone(),
                media_links: media_links.clone(),
                ..DelivererConfig::default()
            };
            let started = Deliverer::start(
                backends.clone(),
                keys,
                status_writer,
                ingress,
                deliverer_config,
                platform.stages.deliverer.clone(),
            )
            .await;
            match started {
                Ok(deliverer) => platform.deliverer = Some(deliverer),
                Err(error) => {
                    platform.stop_in_order().await;
                    return Err(error.into());
                }
            }
        }

        if config.runs(Stage::Store) {
            let token = platform.stages.store.clone();
            let store_backends = backends.clone();
            platform.spawn(Task::Store, async move {
                esh_router::project_store(store_backends, RouterConfig::default(), token).await.map_err(|e| e.to_string())
            });
        }

        if config.runs(Stage::Router) {
            let token = platform.stages.router.clone();
            let router_backends = backends.clone();
            platform.spawn(Task::Router, async move {
                esh_router::run(router_backends, router_config, token).await.map_err(|e| e.to_string())
            });
        }

        if config.runs(Stage::Push) {
            if senders.is_empty() {
                tracing::info!("push notifications are off: no provider credentials configured");
            } else {
                let token = platform.stages.push.clone();
                let push_backends = backends.clone();
                let push_config = PushConfig {
                    privacy: config.push.privacy,
                    concurrency: config.push.concurrency,
                    retry_schedule: config.retry_schedule.clone(),
                    media_links: media_links.clone(),
                    ..PushConfig::default()
                };
                let writer = status_writer_for_push;
                platform.spawn(Task::Push, async move {
                    esh_push_worker::run(push_backends, senders, writer, push_config, token).await.map_err(|e| e.to_string())
                });
            }
        }

        if config.runs(Stage::Ingest) {
            // Repeats of sends answered before a restart must get the same answer: the
            // store projection first applies what the log holds, then its idempotency
            // answers are loaded, and only then does the listener serve.
            let projection = platform.aborts.iter().find(|(task, _)| *task == Task::Store).map(|(_, abort)| abort.clone());
            if let Err(error) = catch_up(&backends, &ingest, projection.as_ref()).await {
                platform.stop_in_order().await;
                return Err(error);
            }
        }

        if config.runs(Stage::Ingest) {
            let token = platform.stages.http.clone();
            let consumer_ingest = ingest.clone();
            let log_ingest = LogIngestConfig { integrators: config.integrators.clone(), ..LogIngestConfig::default() };
            platform.spawn(Task::LogIngest, async move {
                esh_ingest::log_ingest::run(consumer_ingest, log_ingest, token).await.map_err(|e| e.to_string())
            });
            let token = platform.stages.http.clone();
            let collector = ingest.clone();
            platform.spawn(Task::Media, async move {
                collector.collect_unreferenced_media(token).await;
                Ok(())
            });
        }

        let mut app = axum::Router::new();
        if config.runs(Stage::Ingest) {
            app = app.merge(ingest.routes());
        } else {
            app = app.route("/health/live", get(|| async { "ok" }));
        }
        if let Some(deliverer) = &platform.deliverer {
            app = app.merge(deliverer.routes());
        }
        let app = app.layer(TraceLayer::new_for_http());
        let stop_accepting = platform.stages.http.clone();
        platform.spawn(Task::Http, async move {
            // Small frames must not wait for delayed ACKs (Nagle): latency is the product.
            let listener = listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stop_accepting.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        });
        tracing::info!(%addr, stages = ?config.stages, data_dir = %config.data_dir.display(), "esh3ar started");
        Ok(platform)
    }

    /// The address the listener is bound to (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin bearer token in effect.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The admin token if this start generated it (the first start without `ESH_ADMIN_TOKEN`),
    /// so that it can be shown once.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.then_some(self.admin_token.as_str())
    }

    /// The keys user tokens are signed with.
    pub fn token_keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// The backends the stages share (for embedding a stage the process does not run).
    pub fn backends(&self) -> &Backends {
        // Only the shutdown sequence takes them out, and it runs once the platform is consumed.
        self.backends.as_ref().expect("backends are present until shutdown")
    }

    /// The token whose cancellation stops the platform.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled or a stage stops by itself, then stops
    /// every stage in order. Errs if a stage had stopped by itself or with an error.
    pub async fn wait(mut self) -> Result<(), PlatformError> {
        let early = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            Some(joined) = self.tasks.join_next_with_id() => Some(self.outcome(joined)),
        };
        if let Some((task, result)) = &early {
            let reason = result.clone().err().unwrap_or_else(|| "it returned".into());
            tracing::error!(stage = task.name(), %reason, "stage stopped unexpectedly; shutting down");
        }
        let failure = self.stop_in_order().await;
        match (early, failure) {
            (Some((task, result)), _) => Err(PlatformError::StageFailed {
                stage: task.name(),
                reason: result.err().unwrap_or_else(|| "it returned before shutdown".into()),
            }),
            (None, Some(error)) => Err(error),
            (None, None) => Ok(()),
        }
    }

    /// Stops every stage in order and waits for it (see [`Platform::wait`]).
    pub async fn shutdown(self) -> Result<(), PlatformError> {
        self.shutdown.cancel();
        self.wait().await
    }

    fn spawn<F>(&mut self, task: Task, future: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let abort = self.tasks.spawn(async move { (task, future.await) });
        self.aborts.push((task, abort));
    }

    /// Which task ended and how, also when it panicked.
    fn outcome(&self, joined: Result<(Id, TaskOutcome), JoinError>) -> TaskOutcome {
        match joined {
            Ok((_, outcome)) => outcome,
            Err(error) => {
                let task =
                    self.aborts.iter().find(|(_, abort)| abort.id() == error.id()).map_or(Task::Http, |(t, _)| *t);
                (task, Err(format!("task panicked or was aborted: {error}")))
            }
        }
    }

    /// The shutdown sequence; returns the first stage error it saw.
    async fn stop_in_order(&mut self) -> Option<PlatformError> {
        self.shutdown.cancel();
        let mut failure = None;

        // 1. Stop accepting; in-flight requests finish (each 202 is durable before it is sent).
        self.stages.http.cancel();
        self.join(Task::Http, &mut failure).await;
        self.join(Task::LogIngest, &mut failure).await;
        self.join(Task::Media, &mut failure).await;

        // 2. The router finishes its batch and commits its offsets.
        self.stages.router.cancel();
        self.join(Task::Router, &mut failure).await;

        // 2b. The push stage finishes its sends (cutting retry waits short) and writes
        //     their effects; an unfinished batch is not committed and is notified again.
        self.stages.push.cancel();
        self.join(Task::Push, &mut failure).await;

        // 3. Close the sockets (unacked deliveries stay `sent` and are replayed on reconnect)
        //    and let the deliverer write the attempts and receipts it holds.
        self.stages.deliverer.cancel();
        if let Some(deliverer) = &self.deliverer {
            if tokio::time::timeout(self.grace, deliverer.closed()).await.is_err() {
                tracing::warn!("deliverer did not close its sockets within the shutdown grace");
            }
        }
        self.ingest.take();
        self.deliverer.take();
        self.status_writer.take();

        // 4. The status writer ends once the last handle is gone, after writing what it holds.
        if let Some(task) = self.status_task.take() {
            if tokio::time::timeout(self.grace, task).await.is_err() {
                tracing::warn!("status writer did not drain within the shutdown grace");
            }
        }

        // 5. The store projection applies what it holds and commits.
        self.stages.store.cancel();
        self.join(Task::Store, &mut failure).await;

        // 6. Close the backends.
        self.backends.take();
        self.tasks.abort_all();
        tracing::info!("esh3ar stopped");
        failure
    }

    /// Waits up to the grace period for `task` to end, recording failures of any task that
    /// ends meanwhile; aborts `task` when the grace runs out.
    async fn join(&mut self, task: Task, failure: &mut Option<PlatformError>) {
        if !self.aborts.iter().any(|(t, _)| *t == task) {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            let joined = match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => joined,
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(stage = task.name(), "stage did not stop within the shutdown grace; aborting it");
                    for (_, abort) in self.aborts.iter().filter(|(t, _)| *t == task) {
                        abort.abort();
                    }
                    return;
                }
            };
            let (ended, result) = self.outcome(joined);
            if let Err(reason) = result {
                tracing::error!(stage = ended.name(), %reason, "stage failed during shutdown");
                failure.get_or_insert(PlatformError::StageFailed { stage: ended.name(), reason });
            }
            if ended == task {
                return;
            }
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // A platform dropped without `shutdown` still stops its tasks.
        self.shutdown.cancel();
        self.stages.http.cancel();
        self.stages.router.cancel();
        self.stages.deliverer.cancel();
        self.stages.push.cancel();
    }
}

fn validate(config: &Config) -> Result<(), PlatformError> {
    if config.stages.is_empty() {
        return Err(PlatformError::Config("ESH_STAGES names no stage".into()));
    }
    if config.log_partitions == 0 {
        return Err(PlatformError::Config("ESH_LOG_PARTITIONS must be at least 1".into()));
    }
    if config.media_unreferenced_ttl < Duration::from_secs(1) {
        return Err(PlatformError::Config("ESH_MEDIA_UNREFERENCED_TTL must be at least 1s".into()));
    }
    if config.ack_timeout.is_zero() {
        return Err(PlatformError::Config("ESH_ACK_TIMEOUT must be positive".into()));
    }
    if config.heartbeat < Duration::from_secs(1) {
        return Err(PlatformError::Config("ESH_HEARTBEAT must be at least 1s".into()));
    }
    Ok(())
}

/// The public keys of `ESH_JWT_PUBLIC_KEYS` and `ESH_JWT_JWKS`, with the issuer and
/// audience their tokens must carry; any unreadable or unusable key fails the start.
fn external_keys(config: &Config) -> Result<ExternalKeys, PlatformError> {
    let mut keys = ExternalKeys::default();
    let unusable = |path: &std::path::Path, reason: String| PlatformError::JwtKeys { path: path.to_owned(), reason };
    for file in &config.jwt_public_keys {
        let pem = std::fs::read(&file.path).map_err(|e| unusable(&file.path, e.to_string()))?;
        keys.add_pem(&file.kid, &pem).map_err(|e| unusable(&file.path, e.to_string()))?;
    }
    if let Some(path) = &config.jwt_jwks {
        let document = std::fs::read(path).map_err(|e| unusable(path, e.to_string()))?;
        let added = keys.add_jwks(&document).map_err(|e| unusable(path, e.to_string()))?;
        if added == 0 {
            return Err(unusable(path, "the JWKS holds no signing key".into()));
        }
    }
    if keys.is_empty() && (config.jwt_issuer.is_some() || config.jwt_audience.is_some()) {
        return Err(PlatformError::Config(
            "ESH_JWT_ISSUER and ESH_JWT_AUDIENCE apply to RS256/ES256 tokens: set ESH_JWT_PUBLIC_KEYS or ESH_JWT_JWKS".into(),
        ));
    }
    if let Some(issuer) = &config.jwt_issuer {
        keys.require_issuer(issuer.clone());
    }
    if let Some(audience) = &config.jwt_audience {
        keys.require_audience(audience.clone());
    }
    if !keys.is_empty() {
        tracing::info!(keys = keys.len(), "identity provider keys loaded");
    }
    Ok(keys)
}

fn random_node_id() -> String {
    format!("node-{:08x}", rand::random::<u32>())
}
