//! Builds the engine from a [`Config`] and runs it until shutdown.
//!
//! Start-up: open the embedded database when the log or the store is sled, and Kafka
//! (`[storage] log = "kafka"`, feature `kafka`) or MongoDB (`store = "mongodb"`, feature
//! `mongodb`) for the others, in any combination; create the topics, open the state store,
//! build the source and sites, start the pipeline stages `[engine] stages` names (status
//! processor, one replication processor per site, populator and scanner; all of them by
//! default), bind the API. With Kafka, creating the topics (the first exchange with the
//! brokers) happens in the background, retried with backoff: the API serves at once, its
//! healthcheck answering 500 with the log unhealthy until the brokers answer, and the pipeline
//! starts then (issue 14). Later outages of the log or the store are waited out by the stages
//! ([`RetryingLog`], [`RetryingStore`]), not fatal. Several processes sharing a Kafka log
//! split the work: the members of each consumer group share its partitions, and a process may
//! run only some stages.
//!
//! Shutdown, in data-flow order (STYLE section D): stop taking API requests, stop the
//! populator and scanner, let the processors finish the objects in hand, let the status
//! processor drain, then flush the database. A stage that fails (a log or store error that is
//! not an outage: a poisoned database, a full disk) stops the process, which then exits with
//! code 1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::bandwidth::{self, Bandwidths, LocalWeekClock};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, ConfigError, LogKind, SourceBackend, Stage, StoreKind};
use crate::control::{self, Control};
use crate::durability::{DbError, SledDb};
use crate::intake::{DiscoveredVersion, Intake, IntakeError};
use crate::log::retrying::Backoff;
use crate::log::{Log, LogError, RetryingLog, TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS};
use crate::observe::{self, Observer, Thresholds};
use crate::pipeline::gc;
use crate::pipeline::pause::PauseGate;
use crate::pipeline::processor::{ProcessorConfig, ProcessorDeps};
use crate::pipeline::retry::RetryPolicy;
use crate::pipeline::scanner;
use crate::pipeline::{
    Populator, ReplicationProcessor, Scanner, StageError, StageTasks, StatusProcessor,
};
use crate::store::{RetryingStore, StateStore, StoreError};

/// Errors that stop the engine.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The embedded database could not be opened.
    #[error("cannot open the embedded database in {path}")]
    Db {
        /// Its directory.
        path: String,
        /// Why.
        #[source]
        source: DbError,
    },
    /// The log failed.
    #[error("log failure")]
    Log(#[from] LogError),
    /// The store failed.
    #[error("state store failure")]
    Store(#[from] StoreError),
    /// The API could not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source or a site could not be built from the configuration.
    #[error("cannot build the source or a site")]
    Adapter(#[from] ConfigError),
    /// A pipeline stage could not start, or failed while running.
    #[error("pipeline stage failure")]
    Stage(#[from] StageError),
    /// A pipeline stage failed while running (the reason was logged where it happened).
    #[error("a pipeline stage failed")]
    StageFailed,
}

/// A running engine.
pub struct Engine {
    /// Address the API listens on.
    pub api_addr: SocketAddr,
    /// The log.
    pub log: Arc<dyn Log>,
    /// The store.
    pub store: Arc<dyn StateStore>,
    /// Where webhook-discovered versions go (the populator); `None` without a source.
    pub intake: Option<Arc<dyn Intake>>,
    /// The operator's view the pipeline feeds and the API reads.
    pub observer: Arc<Observer>,
    /// Pipeline stages, in data-flow (and stop) order.
    stages: Vec<StageTasks>,
    failed: Arc<AtomicBool>,
    /// The per-site pause channels (replication processors subscribe here).
    pub control: Arc<Control>,
    root: CancellationToken,
    api_tracker: TaskTracker,
    background: TaskTracker,
    db: Option<SledDb>,
    grace: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("api_addr", &self.api_addr)
            .finish()
    }
}

/// The topics every engine creates at start.
pub const TOPICS: [&str; 2] = [TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS];

impl Engine {
    /// Opens storage and starts the API and background stages.
    ///
    /// # Errors
    /// `AppError` when storage cannot be opened or the API cannot bind.
    pub async fn start(config: Config, clock: SharedClock) -> Result<Engine, AppError> {
        Engine::start_with_intake(config, clock, None).await
    }

    /// As [`Engine::start`], with the intake `POST notifications/s3` hands versions to.
    ///
    /// # Errors
    /// As [`Engine::start`].
    pub async fn start_with_intake(
        config: Config,
        clock: SharedClock,
        intake: Option<Arc<dyn Intake>>,
    ) -> Result<Engine, AppError> {
        let config = Arc::new(config);
        let st = &config.storage;
        let needs_sled = st.log == LogKind::Sled || st.store == StoreKind::Sled;
        let db = if needs_sled {
            std::fs::create_dir_all(&st.path).map_err(|e| AppError::Db {
                path: st.path.display().to_string(),
                source: DbError::Sled(sled::Error::Io(e)),
            })?;
            let path = st.path.clone();
            let mode = st.durability;
            let interval = Duration::from_millis(st.flush_interval_ms);
            let cache = st.cache_mb.saturating_mul(1 << 20);
            let db = tokio::task::spawn_blocking(move || {
                SledDb::open_with_cache(&path, mode, interval, cache)
            })
            .await
            .map_err(|e| AppError::Db {
                path: st.path.display().to_string(),
                source: DbError::Sled(sled::Error::Io(std::io::Error::other(e))),
            })?
            .map_err(|source| AppError::Db {
                path: st.path.display().to_string(),
                source,
            })?;
            Some(db)
        } else {
            None
        };
        // A configuration error of the log is fatal now; an unreachable Kafka is not (below).
        let log_client = crate::log::open_client(st, db.as_ref())?;
        let observer = Observer::new(
            &config
                .sites
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            &observe::source_buckets(&config),
            Thresholds {
                lag_target: Duration::from_secs(config.replication.lag_target_s),
                stall_after: Duration::from_secs(config.replication.stall_after_s),
            },
            clock.clone(),
        );
        let root = CancellationToken::new();
        // The pipeline waits out an outage of the store (retries with backoff); the API and
        // the background loops fail fast and the healthcheck reports it (issue 14).
        let retrying = RetryingStore::new(
            crate::store::open(st, db.as_ref(), clock).await?,
            root.clone(),
        );
        let store: Arc<dyn StateStore> = Arc::new(retrying.fail_fast());
        let pipeline_store: Arc<dyn StateStore> = Arc::new(retrying);
        // The same for the log, which may not even be connected yet: the API serves (and the
        // healthcheck reports the log) while the connection is retried.
        let retrying_log =
            RetryingLog::pending(log_client.kind(), log_client.entry_format(), root.clone());
        let log: Arc<dyn Log> = Arc::new(retrying_log.fail_fast());
        let pipeline_log: Arc<dyn Log> = Arc::new(retrying_log.clone());
        // The embedded log answers at once (its errors are never transient); a Kafka cluster
        // is connected to in the background, and the pipeline starts once it answers.
        let log_client = if st.log == LogKind::Sled {
            crate::log::create_topics(log_client.as_ref(), st).await?;
            retrying_log.connect(log_client);
            None
        } else {
            Some(log_client)
        };

        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| AppError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let api_addr = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?;

        let failed = Arc::new(AtomicBool::new(false));
        let sites: Vec<String> = config.sites.iter().map(|s| s.name.clone()).collect();
        // Loaded before the processors start, so a site paused before a restart starts paused.
        let control = Arc::new(Control::load(pipeline_store.as_ref(), &sites).await?);
        // Also loaded before: a limit set through the API before a restart applies from the start.
        let bandwidth = Arc::new(Bandwidths::new(
            config
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.bandwidth.clone())),
            Arc::new(LocalWeekClock::default()),
        ));
        bandwidth.load(pipeline_store.as_ref()).await?;
        let stages = Stages::new(&root, &failed);
        let api_tracker = TaskTracker::new();
        let background = TaskTracker::new();
        let pipeline = PipelineDeps {
            config: config.clone(),
            log: pipeline_log,
            store: pipeline_store,
            control: control.clone(),
            bandwidth: bandwidth.clone(),
            observer: observer.clone(),
            stages: stages.clone(),
        };
        let pipeline_intake: Option<Arc<dyn Intake>> = match log_client {
            None => match start_pipeline(&pipeline).await {
                Ok(intake) => intake,
                Err(e) => {
                    root.cancel();
                    return Err(e);
                }
            },
            Some(client) => {
                let late = Arc::new(LateIntake {
                    buckets: observe::source_buckets(&config),
                    intake: OnceLock::new(),
                });
                background.spawn(connect_then_start(
                    client,
                    retrying_log,
                    pipeline,
                    late.clone(),
                    root.clone(),
                    failed.clone(),
                ));
                config.source.is_some().then_some(late as Arc<dyn Intake>)
            }
        };
        // An intake given by the caller wins over the populator's.
        let intake = intake.or(pipeline_intake);
        let mut state = AppState::new(config.clone(), log.clone(), store.clone(), control.clone())
            .with_observer(observer.clone())
            .with_bandwidth(bandwidth.clone());
        if let Some(intake) = intake.clone() {
            state = state.with_intake(intake);
        }
        api_tracker.spawn(api::serve(listener, Arc::new(state), root.child_token()));

        // Backlog samples, so a site is judged `stalled` on time even when nobody reads it.
        background.spawn(observe::run_sampler(
            observer.clone(),
            store.clone(),
            control.clone(),
            root.child_token(),
        ));

        // Scheduled resumes (also those set before a restart).
        background.spawn(control::run_scheduler(
            store.clone(),
            control.clone(),
            sites,
            root.child_token(),
        ));

        // Bandwidth limits stored through another process's API.
        background.spawn(bandwidth::run_sync(
            store.clone(),
            bandwidth,
            root.child_token(),
        ));

        // Retention of consumed records and expiry of old state.
        {
            let log = log.clone();
            let store = store.clone();
            let token = root.child_token();
            let every = Duration::from_secs(config.storage.retention_interval_s.max(1));
            background.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    // Not connected yet, or unreachable: the healthcheck already says so.
                    let log_up = log.check().is_ok();
                    for topic in TOPICS.into_iter().filter(|_| log_up) {
                        match log.retain(topic).await {
                            Ok(n) if n > 0 => {
                                tracing::debug!(topic, deleted = n, "Retention pass.")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(topic, error = %e, "Retention pass failed."),
                        }
                    }
                    if let Err(e) = store.expire().await {
                        tracing::warn!(error = %e, "Expiry sweep failed.");
                    }
                }
            });
        }

        tracing::info!(
            api = %api_addr,
            log = log.kind(),
            store = store.kind(),
            durability = config.storage.durability.as_str(),
            path = %config.storage.path.display(),
            sites = config.sites.len(),
            stages = %config.engine.stage_names(),
            "Backbeat started."
        );
        Ok(Engine {
            api_addr,
            log,
            store,
            intake,
            observer,
            stages: stages.all(),
            failed,
            control,
            root,
            api_tracker,
            background,
            db,
            grace: Duration::from_secs(config.shutdown.grace_period_s),
        })
    }

    /// Starts with the system clock.
    ///
    /// # Errors
    /// As [`Engine::start`].
    pub async fn start_default_clock(config: Config) -> Result<Engine, AppError> {
        Engine::start(config, Arc::new(SystemClock)).await
    }

    /// A token that stops the engine when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.root.clone()
    }

    /// Waits until the engine is asked to stop, then drains it.
    ///
    /// # Errors
    /// `AppError::StageFailed` when a pipeline stage failed (the process should exit 1).
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        self.root.cancelled().await;
        let failed = self.failed.clone();
        self.stop().await;
        if failed.load(Ordering::SeqCst) {
            return Err(AppError::StageFailed);
        }
        Ok(())
    }

    /// Whether a pipeline stage failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stops intake, stops the pipeline stages in data-flow order, waits up to the grace
    /// period for in-flight work, flushes storage.
    pub async fn stop(self) {
        self.root.cancel();
        self.api_tracker.close();
        self.background.close();
        let grace = self.grace;
        let deadline = tokio::time::Instant::now() + grace;
        for stage in &self.stages {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !stage.stop(left).await {
                tracing::warn!(
                    grace_s = grace.as_secs(),
                    "Grace period over; a stage stopped with work in flight."
                );
            }
        }
        if tokio::time::timeout(grace, async {
            self.api_tracker.wait().await;
            self.background.wait().await;
        })
        .await
        .is_err()
        {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "Grace period over; stopping with work in flight."
            );
        }
        if let Some(db) = &self.db {
            if let Err(e) = db.flush_now().await {
                tracing::error!(error = %e, "Final flush failed.");
            }
        }
        tracing::info!("Backbeat stopped.");
    }
}

/// The stages of the pipeline, made before it starts (the engine stops them in this order
/// whether or not the pipeline started).
#[derive(Clone)]
struct Stages {
    populator: StageTasks,
    processor: StageTasks,
    status: StageTasks,
    gc: StageTasks,
}

impl Stages {
    fn new(root: &CancellationToken, failed: &Arc<AtomicBool>) -> Stages {
        Stages {
            populator: StageTasks::new("populator", root.clone(), failed.clone()),
            processor: StageTasks::new("replication-processor", root.clone(), failed.clone()),
            status: StageTasks::new("status-processor", root.clone(), failed.clone()),
            gc: StageTasks::new("garbage-collector", root.clone(), failed.clone()),
        }
    }

    /// In data-flow (and stop) order.
    fn all(&self) -> Vec<StageTasks> {
        vec![
            self.populator.clone(),
            self.processor.clone(),
            self.status.clone(),
            self.gc.clone(),
        ]
    }
}

/// What the pipeline is built from.
struct PipelineDeps {
    config: Arc<Config>,
    log: Arc<dyn Log>,
    store: Arc<dyn StateStore>,
    control: Arc<Control>,
    bandwidth: Arc<Bandwidths>,
    observer: Arc<Observer>,
    stages: Stages,
}

/// The populator's intake once the pipeline started (it starts after the log connects);
/// until then, webhook events are refused with a 5xx so their sender retries.
struct LateIntake {
    buckets: Vec<String>,
    intake: OnceLock<Arc<dyn Intake>>,
}

impl LateIntake {
    fn get(&self) -> Result<&Arc<dyn Intake>, IntakeError> {
        self.intake.get().ok_or_else(|| {
            IntakeError::Unavailable("the pipeline waits for the log to connect".into())
        })
    }
}

#[async_trait::async_trait]
impl Intake for LateIntake {
    fn serves(&self, bucket: &str) -> bool {
        match self.intake.get() {
            Some(i) => i.serves(bucket),
            None => self.buckets.iter().any(|b| b == bucket),
        }
    }

    async fn discovered(&self, versions: Vec<DiscoveredVersion>) -> Result<usize, IntakeError> {
        self.get()?.discovered(versions).await
    }

    async fn requeue(
        &self,
        items: Vec<(crate::model::VersionRef, Vec<String>)>,
    ) -> Result<usize, IntakeError> {
        self.get()?.requeue(items).await
    }
}

/// First wait between two attempts to reach the log at start.
const LOG_CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to reach the log at start.
const LOG_CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Creates the topics on `client` (retried with backoff while the brokers are unreachable or
/// slow, the healthcheck reporting the log meanwhile), connects `log` to it, then starts the
/// pipeline and hands its intake to `late`. A non-transient error stops the engine (exit 1).
async fn connect_then_start(
    client: Arc<dyn Log>,
    log: RetryingLog,
    deps: PipelineDeps,
    late: Arc<LateIntake>,
    root: CancellationToken,
    failed: Arc<AtomicBool>,
) {
    let fail = |what: &str, e: &dyn std::error::Error| {
        tracing::error!(error = %crate::error::chain(e), "{what}; shutting down.");
        failed.store(true, Ordering::SeqCst);
        root.cancel();
    };
    let mut backoff = Backoff::new(LOG_CONNECT_BACKOFF_MIN, LOG_CONNECT_BACKOFF_MAX);
    loop {
        match crate::log::create_topics(client.as_ref(), &deps.config.storage).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                log.mark_down(&e);
                crate::metrics::count_log_retry();
                let delay = backoff.next_delay();
                tracing::info!(error = %crate::error::chain(&e), retry_in_ms = delay.as_millis() as u64,
                    "Log not reachable yet; the pipeline starts once it is.");
                tokio::select! {
                    () = root.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return fail("Cannot create the log's topics", &e),
        }
    }
    log.connect(client);
    if root.is_cancelled() {
        return;
    }
    tracing::info!(log = log.kind(), "Log connected; starting the pipeline.");
    match start_pipeline(&deps).await {
        Ok(Some(intake)) => {
            let _ = late.intake.set(intake);
        }
        Ok(None) => {}
        Err(e) => fail("The pipeline could not start", &e),
    }
}

/// Heals records lost to the broker's retention before a group read them
/// ([`crate::log::OffsetLoss`]): which versions they carried is unknown once they are gone,
/// so every version the store still has PENDING at an affected site (the site of a
/// replication processor's group; every site for the status processor's) is queued again
/// for it, and a pass of every bucket asked for (it finds what was never recorded). A version
/// whose entry was not lost is copied once more, which changes nothing (at-least-once).
struct Healer {
    intake: Arc<dyn Intake>,
    store: Arc<dyn StateStore>,
    sites: Vec<String>,
    buckets: Vec<String>,
    /// Asks the scanner for a pass of every bucket.
    pass_all: Box<dyn Fn() + Send + Sync>,
}

/// Versions queued again per request.
const HEAL_BATCH: usize = 1000;

impl Healer {
    async fn run(
        self,
        mut losses: tokio::sync::broadcast::Receiver<crate::log::OffsetLoss>,
        token: CancellationToken,
    ) -> Result<(), StageError> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let affected = tokio::select! {
                () = token.cancelled() => return Ok(()),
                r = losses.recv() => match r {
                    Ok(loss) => affected_sites(&loss, &self.sites),
                    // Some announcements were missed: heal every site.
                    Err(RecvError::Lagged(_)) => self.sites.clone(),
                    Err(RecvError::Closed) => {
                        token.cancelled().await;
                        return Ok(());
                    }
                },
            };
            if affected.is_empty() {
                continue;
            }
            match self.requeue_pending(&affected).await {
                Ok(n) => tracing::warn!(
                    sites = ?affected,
                    requeued = n,
                    "Versions pending at sites whose log records were lost are queued again."
                ),
                Err(e) => tracing::error!(sites = ?affected, error = %e,
                    "Cannot queue again the versions of lost log records; a requeue (POST crr/requeue) or a restart heals them."),
            }
            (self.pass_all)();
        }
    }

    /// Queues again every version PENDING at one of `sites`; returns how many entries were
    /// queued.
    async fn requeue_pending(&self, sites: &[String]) -> Result<usize, String> {
        let mut queued = 0;
        for bucket in &self.buckets {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .key_states(bucket, "", after.as_deref(), HEAL_BATCH)
                    .await
                    .map_err(|e| crate::error::chain(&e))?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                let items = pending_at(bucket, &page, sites);
                if !items.is_empty() {
                    queued += self
                        .intake
                        .requeue(items)
                        .await
                        .map_err(|e| crate::error::chain(&e))?;
                }
                if page.len() < HEAL_BATCH {
                    break;
                }
            }
        }
        Ok(queued)
    }
}

/// The sites whose entries a loss took: a replication processor's group is one site's; the
/// status processor's group carries every site's outcomes.
fn affected_sites(loss: &crate::log::OffsetLoss, sites: &[String]) -> Vec<String> {
    if loss.topic == TOPIC_REPLICATION {
        sites
            .iter()
            .filter(|s| crate::log::replication_group(s) == loss.group)
            .cloned()
            .collect()
    } else {
        sites.to_vec()
    }
}

/// The versions of `records` (keys of `bucket`) PENDING at one of `sites`, with those sites.
fn pending_at(
    bucket: &str,
    records: &[(String, crate::model::KeyState)],
    sites: &[String],
) -> Vec<(crate::model::VersionRef, Vec<String>)> {
    records
        .iter()
        .filter_map(|(key, st)| {
            let pending: Vec<String> = sites
                .iter()
                .filter(|s| {
                    st.site(s)
                        .is_some_and(|b| b.status == crate::model::ReplicationStatus::Pending)
                })
                .cloned()
                .collect();
            (!pending.is_empty()).then(|| {
                (
                    crate::model::VersionRef::new(bucket, key.clone(), st.version_id.clone()),
                    pending,
                )
            })
        })
        .collect()
}

/// Events the directory watch may hold before it drops some (and asks for a pass):
/// `BACKBEAT_WATCH_CAPACITY` (tests force a full channel with it), else 65,536.
fn watch_capacity() -> usize {
    std::env::var("BACKBEAT_WATCH_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(65_536)
}

/// Builds the source and sites and starts the stages `[engine] stages` names on `deps`'s
/// stages; returns the intake (the populator, when it runs here). Without a source, nothing
/// runs.
async fn start_pipeline(deps: &PipelineDeps) -> Result<Option<Arc<dyn Intake>>, AppError> {
    let PipelineDeps {
        config,
        log,
        store,
        control,
        bandwidth,
        observer,
        stages: st,
    } = deps;
    let Some(source_cfg) = &config.source else {
        return Ok(None);
    };
    let source = crate::source::build_source(source_cfg)?;
    let mut sites = Vec::with_capacity(config.sites.len());
    for s in &config.sites {
        sites.push(crate::site::build_site(s)?);
    }
    let (populator_stage, processor_stage, status_stage, gc_stage) =
        (&st.populator, &st.processor, &st.status, &st.gc);
    let runs = |s: Stage| config.engine.runs(s);
    let started = async {
        let r = &config.replication;
        let mpu_threshold = r.mpu_threshold_mb.saturating_mul(1_000_000);
        // Garbage collection (DESIGN section 9): with the stages that leave something behind
        // (uploads: the processors; replicated files of a transient source: the status stage).
        let hints = if runs(Stage::Replication) || runs(Stage::Status) {
            let transient = source_cfg
                .transient
                .then(|| source.as_file().cloned())
                .flatten()
                .filter(|_| runs(Stage::Status));
            let collector = gc::Collector {
                store: store.clone(),
                log: log.clone(),
                sites: if runs(Stage::Replication) {
                    sites.clone()
                } else {
                    Vec::new()
                },
                configured: config.sites.iter().map(|s| s.name.clone()).collect(),
                transient,
                buckets: source.buckets(),
                interval: Duration::from_secs(config.gc.interval_s.max(1)),
                upload_max_age: Duration::from_secs(config.gc.upload_max_age_s),
                exclusive: config.storage.store == crate::config::StoreKind::Sled,
                started_ms: store.now_ms(),
                control: control.clone(),
            };
            collector.start(gc_stage)
        } else {
            None
        };
        if runs(Stage::Status) {
            StatusProcessor::start(
                log.clone(),
                store.clone(),
                observer.clone(),
                hints,
                status_stage,
            )
            .await?;
        }
        if runs(Stage::Replication) {
            let pdeps = ProcessorDeps {
                log: log.clone(),
                source: source.clone(),
                store: store.clone(),
                observer: observer.clone(),
            };
            for (site, site_cfg) in sites.into_iter().zip(&config.sites) {
                let pcfg = ProcessorConfig {
                    concurrency: r.concurrency.max(1),
                    mpu_threshold,
                    retry: RetryPolicy::from(&r.retry),
                    replay: r.retry.replay,
                    bucket_match: site_cfg.bucket_match,
                    bandwidth: bandwidth
                        .limiter(site.name())
                        .unwrap_or_else(|| Arc::new(bandwidth::Limiter::unlimited())),
                };
                let gate = PauseGate::new(control.subscribe(site.name()));
                ReplicationProcessor::start(&pdeps, site, pcfg, gate, processor_stage).await?;
            }
        }
        if !runs(Stage::Populator) {
            return Ok(None);
        }
        let (populator, rules_changed) = Populator::start(
            source.clone(),
            store.clone(),
            log.clone(),
            config.clone(),
            observer.clone(),
            populator_stage,
        );
        let (settle_ms, watched) = match &source_cfg.backend {
            SourceBackend::File(f) => (f.settle_ms, f.watch),
            SourceBackend::S3(_) => (0, false),
        };
        let passes = Scanner::start(
            populator.clone(),
            source.clone(),
            store.clone(),
            scanner::ScanConfig {
                interval: Duration::from_secs(source_cfg.scan_interval_s),
                settle_ms,
            },
            rules_changed,
            observer.clone(),
            populator_stage,
        );
        // Records lost to the broker's retention (issue 14) are healed here, where the
        // populator runs: their versions are queued again, and the buckets scanned.
        if let Some(losses) = log.offset_losses() {
            let heal = Healer {
                intake: Arc::new(populator.clone()),
                store: store.clone(),
                sites: config.sites.iter().map(|s| s.name.clone()).collect(),
                buckets: source.buckets(),
                pass_all: Box::new({
                    let passes = passes.clone();
                    move || passes.request(scanner::PassRequest::All)
                }),
            };
            populator_stage.spawn(heal.run(losses, populator_stage.token().clone()));
        }
        if let (true, Some(file)) = (watched, source.as_file()) {
            let capacity = watch_capacity();
            if let Err(e) = scanner::watch(
                file.clone(),
                populator.clone(),
                passes.clone(),
                capacity,
                observer.clone(),
                populator_stage,
            ) {
                // Without the watch the rescans still find everything, later.
                tracing::error!(error = %e,
                    "Cannot watch the source directory; changes are found by the rescans only.");
                passes.request(scanner::PassRequest::All);
            }
        }
        Ok::<_, StageError>(Some(populator))
    }
    .await;
    match started {
        Ok(populator) => Ok(populator.map(|p| Arc::new(p) as Arc<dyn Intake>)),
        Err(e) => {
            for s in &st.all() {
                s.stop(Duration::from_secs(5)).await;
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::durability::Durability;
    use crate::log::OffsetLoss;
    use crate::model::VersionRef;
    use crate::store::{SledStore, StoreOp};
    use crate::transitions::{KeyChange, QueuedVersion, SiteOutcome};

    /// Records what it is asked to queue again.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(VersionRef, Vec<String>)>>);

    #[async_trait::async_trait]
    impl Intake for Recorder {
        fn serves(&self, _: &str) -> bool {
            true
        }
        async fn discovered(&self, _: Vec<DiscoveredVersion>) -> Result<usize, IntakeError> {
            Ok(0)
        }
        async fn requeue(
            &self,
            items: Vec<(VersionRef, Vec<String>)>,
        ) -> Result<usize, IntakeError> {
            let n = items.iter().map(|(_, s)| s.len()).sum();
            self.0.lock().extend(items);
            Ok(n)
        }
    }

    fn loss(topic: &str, group: &str) -> OffsetLoss {
        OffsetLoss {
            topic: topic.into(),
            group: group.into(),
            partition: 0,
            from: 10,
            to: 40,
        }
    }

    #[test]
    fn a_loss_affects_its_groups_sites() {
        let sites = vec!["a".to_string(), "b".to_string()];
        let a = crate::log::replication_group("a");
        assert_eq!(affected_sites(&loss(TOPIC_REPLICATION, &a), &sites), ["a"]);
        assert_eq!(
            affected_sites(
                &loss(TOPIC_REPLICATION_STATUS, crate::log::STATUS_GROUP),
                &sites
            ),
            ["a", "b"]
        );
        assert!(affected_sites(&loss(TOPIC_REPLICATION, "other"), &sites).is_empty());
    }

    #[tokio::test]
    async fn a_loss_queues_again_the_versions_pending_at_the_affected_site_and_asks_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledDb::open(dir.path(), Durability::Group, Duration::from_millis(5)).unwrap();
        let store: Arc<dyn StateStore> =
            Arc::new(SledStore::open(db, ManualClock::new(1_000_000)).unwrap());
        let sites = vec!["a".to_string(), "b".to_string()];
        let mut ops = Vec::new();
        for i in 0..3 {
            let v = VersionRef::new("photos", format!("k{i}"), format!("v{i}"));
            ops.push(StoreOp::key(
                &v,
                KeyChange::Queued {
                    version: QueuedVersion {
                        version_id: v.version_id.clone(),
                        etag: "e".into(),
                        size: 1,
                        written_ms: 1,
                        deleted: false,
                        backfill: false,
                    },
                    sites: sites.clone(),
                },
            ));
        }
        // k1 is done at a; k2 done everywhere.
        for (k, site) in [("k1", "a"), ("k2", "a"), ("k2", "b")] {
            let v = VersionRef::new("photos", k, format!("v{}", &k[1..]));
            ops.push(StoreOp::key(
                &v,
                KeyChange::Outcome {
                    version_id: v.version_id.clone(),
                    site: site.into(),
                    outcome: SiteOutcome::Completed {
                        data_store_version_id: None,
                    },
                },
            ));
        }
        store.apply(ops).await.unwrap();

        let recorder = Arc::new(Recorder::default());
        let (pass_tx, mut passes) = tokio::sync::mpsc::unbounded_channel();
        let healer = Healer {
            intake: recorder.clone(),
            store,
            sites: sites.clone(),
            buckets: vec!["photos".into()],
            pass_all: Box::new(move || {
                let _ = pass_tx.send(());
            }),
        };
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let token = CancellationToken::new();
        let task = tokio::spawn(healer.run(rx, token.clone()));
        tx.send(loss(TOPIC_REPLICATION, &crate::log::replication_group("a")))
            .unwrap();
        let pass = tokio::time::timeout(Duration::from_secs(5), passes.recv())
            .await
            .unwrap();
        assert_eq!(pass, Some(()));
        let got = recorder.0.lock().clone();
        assert_eq!(
            got,
            vec![(VersionRef::new("photos", "k0", "v0"), vec!["a".to_string()])]
        );
        // The status group's loss: every site.
        tx.send(loss(TOPIC_REPLICATION_STATUS, crate::log::STATUS_GROUP))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), passes.recv())
            .await
            .unwrap();
        let got = recorder.0.lock().clone();
        assert_eq!(
            got[1..],
            [
                (
                    VersionRef::new("photos", "k0", "v0"),
                    vec!["a".to_string(), "b".to_string()]
                ),
                (VersionRef::new("photos", "k1", "v1"), vec!["b".to_string()]),
            ]
        );
        token.cancel();
        task.await.unwrap().unwrap();
    }
}
