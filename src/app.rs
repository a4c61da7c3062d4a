//! Builds the engine from a [`Config`] and runs it until shutdown.
//!
//! Start-up: open the embedded database when the log or the store is sled, and Kafka
//! (`[storage] log = "kafka"`, feature `kafka`) or MongoDB (`store = "mongodb"`, feature
//! `mongodb`) for the others, in any combination; create the topics, open
//! the state store, bind the API. Shutdown, in data-flow order: stop taking API requests, stop
//! the background stages, flush the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, LogKind, StoreKind};
use crate::control::{self, Control};
use crate::durability::{DbError, SledDb};
use crate::intake::Intake;
use crate::log::{Log, LogError, SledLog, TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS};
use crate::store::{SledStore, StateStore, StoreError};

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
    /// A configured engine is not part of this build.
    #[error("{0} is not available in this build")]
    Unsupported(&'static str),
}

/// A running engine.
pub struct Engine {
    /// Address the API listens on.
    pub api_addr: SocketAddr,
    /// The log.
    pub log: Arc<dyn Log>,
    /// The store.
    pub store: Arc<dyn StateStore>,
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
            let db = tokio::task::spawn_blocking(move || SledDb::open(&path, mode, interval))
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
        let log: Arc<dyn Log> = match (st.log, &db) {
            (LogKind::Sled, Some(db)) => Arc::new(SledLog::open(db.clone())?),
            #[cfg(feature = "kafka")]
            (LogKind::Kafka, _) => match &st.kafka {
                Some(k) => Arc::new(crate::log::KafkaLog::open(k)?),
                None => {
                    return Err(AppError::Unsupported(
                        "the kafka log without [storage.kafka]",
                    ))
                }
            },
            _ => return Err(AppError::Unsupported("the kafka log")),
        };
        for topic in TOPICS {
            let n = log.create_topic(topic, st.partitions).await?;
            if n != st.partitions {
                tracing::warn!(
                    topic,
                    existing = n,
                    configured = st.partitions,
                    "Topic keeps its existing partition count."
                );
            }
        }
        let store: Arc<dyn StateStore> = match (st.store, &db) {
            (StoreKind::Sled, Some(db)) => Arc::new(SledStore::open(db.clone(), clock)?),
            #[cfg(feature = "mongodb")]
            (StoreKind::Mongodb, _) => match &st.mongodb {
                Some(m) => Arc::new(crate::store::MongoStore::open(m, clock).await?),
                None => {
                    return Err(AppError::Unsupported(
                        "the mongodb store without [storage.mongodb]",
                    ))
                }
            },
            _ => return Err(AppError::Unsupported("the mongodb store")),
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

        let root = CancellationToken::new();
        let api_tracker = TaskTracker::new();
        let background = TaskTracker::new();
        let sites: Vec<String> = config.sites.iter().map(|s| s.name.clone()).collect();
        let control = Arc::new(Control::load(store.as_ref(), &sites).await?);
        let mut state = AppState::new(config.clone(), log.clone(), store.clone(), control.clone());
        if let Some(intake) = intake {
            state = state.with_intake(intake);
        }
        api_tracker.spawn(api::serve(listener, Arc::new(state), root.child_token()));

        // Scheduled resumes (also those set before a restart).
        background.spawn(control::run_scheduler(
            store.clone(),
            control.clone(),
            sites,
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
                    for topic in TOPICS {
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
            "Backbeat started."
        );
        Ok(Engine {
            api_addr,
            log,
            store,
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
    pub async fn run_until_stopped(self) {
        self.root.cancelled().await;
        self.stop().await;
    }

    /// Stops intake, waits up to the grace period for in-flight work, flushes storage.
    pub async fn stop(self) {
        self.root.cancel();
        self.api_tracker.close();
        self.background.close();
        let grace = self.grace;
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
