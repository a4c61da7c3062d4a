//! [`StatusProcessor`]: reads `backbeat-replication-status` in [`STATUS_GROUP`] and applies
//! each per-site outcome to the state store in one guarded update, so replaying an entry
//! changes nothing (reference 3.6, 3.10):
//!
//! (the updates are [`super::transitions::outcome`]'s: COMPLETED, FAILED or `skipped`, each
//! guarded by "site is PENDING").
//!
//! `skipped` is a version gone or changed at the source: it will never reach the site (a
//! changed file is a new version, queued on its own), so it must not stay pending.
//!
//! COMPLETED is final: a late FAILED finds the guard false. A version with no replication info
//! (the populator crashed between its log append and its store update, or a fast site overtook
//! that update) is first created from the entry's metadata with the counters the populator
//! would have written. After a failed guard the update is tried once more, so an outcome is
//! never dropped because the populator's update landed while it was being applied.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::task::TaskTracker;

use super::batch::StoreBatcher;
use super::runner::{self, Handler, Outcome, RunnerConfig};
use super::transitions::{self, SiteOutcome};
use super::{StageError, StageTasks};
use crate::entry::Parsed;
use crate::log::{Delivery, Log, STATUS_GROUP, TOPIC_REPLICATION_STATUS};
use crate::model::ReplicationStatus;
use crate::store::StateStore;

/// Status updates in flight (each is one store transaction; their flushes are shared).
const STATUS_CONCURRENCY: usize = 64;

/// The status processor.
pub struct StatusProcessor {
    store: Arc<dyn StateStore>,
    batcher: StoreBatcher,
    mpu_threshold: u64,
}

impl std::fmt::Debug for StatusProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusProcessor").finish()
    }
}

/// A parsed status entry: the site and what it reported.
pub struct StatusJob {
    parsed: Parsed,
    site: String,
    outcome: SiteOutcome,
}

impl StatusProcessor {
    /// Starts the status processor as a task of `stage`. `mpu_threshold` tells which objects
    /// had their object-level progress recorded part by part by the processor.
    ///
    /// # Errors
    /// `StageError::Log` when the consumer cannot be opened.
    pub async fn start(
        log: Arc<dyn Log>,
        store: Arc<dyn StateStore>,
        mpu_threshold: u64,
        stage: &StageTasks,
    ) -> Result<(), StageError> {
        let consumer = log.consumer(TOPIC_REPLICATION_STATUS, STATUS_GROUP).await?;
        let cfg = RunnerConfig {
            stage: "status-processor",
            concurrency: STATUS_CONCURRENCY,
            prefetch: STATUS_CONCURRENCY * 4,
            output_topic: None,
            drain_on_stop: true,
        };
        let handler = Arc::new(StatusProcessor::new(store, mpu_threshold, stage.tracker()));
        let token = stage.token().clone();
        let tracker = stage.tracker().clone();
        stage.spawn(runner::run(log, consumer, handler, cfg, token, tracker));
        Ok(())
    }

    /// A status processor whose store batching task runs on `tracker` (for tests that drive
    /// the [`Handler`] directly).
    pub fn new(
        store: Arc<dyn StateStore>,
        mpu_threshold: u64,
        tracker: &TaskTracker,
    ) -> StatusProcessor {
        let batcher = StoreBatcher::start(store.clone(), tracker);
        StatusProcessor {
            store,
            batcher,
            mpu_threshold,
        }
    }
}

#[async_trait]
impl Handler for StatusProcessor {
    type Job = StatusJob;

    fn prepare(&self, delivery: &Delivery) -> Option<StatusJob> {
        let parsed = Parsed::from_delivery(TOPIC_REPLICATION_STATUS, delivery)?;
        let site = parsed.entry.site.clone()?;
        if parsed.entry.skipped.is_some() {
            return Some(StatusJob {
                parsed,
                site,
                outcome: SiteOutcome::Skipped,
            });
        }
        let state = parsed
            .md
            .replication_info
            .backends
            .iter()
            .find(|b| b.site == site)?;
        let outcome = match state.status {
            ReplicationStatus::Completed => SiteOutcome::Completed {
                data_store_version_id: Some(state.data_store_version_id.clone())
                    .filter(|s| !s.is_empty()),
            },
            ReplicationStatus::Failed => SiteOutcome::Failed,
            status => {
                tracing::debug!(site, version = %parsed.version, %status,
                    "Status entry without an outcome; ignored.");
                return None;
            }
        };
        Some(StatusJob {
            parsed,
            site,
            outcome,
        })
    }

    async fn handle(&self, job: StatusJob) -> Result<Outcome, StageError> {
        let now = self.store.now_ms();
        let version = &job.parsed.version;
        let size = job.parsed.md.content_length;
        let (guards, ops) = transitions::outcome(
            version,
            &job.site,
            &job.outcome,
            size,
            self.mpu_threshold,
            now,
        );
        if self.batcher.apply(guards.clone(), ops.clone()).await? {
            tracing::debug!(site = %job.site, %version, outcome = ?job.outcome, "Status applied.");
            return Ok(Outcome::Done(None));
        }
        // The guard failed: the site is already past PENDING (a replayed entry), or the version
        // had no info yet.
        if self.store.replication(version).await?.is_none() {
            // The populator appended the entry but crashed before its store update (or its
            // update is still on its way: its guarded update then finds ours and does nothing).
            let (g, o) = transitions::recreated(version, &job.parsed.md, now);
            self.store.apply(g, o).await?;
            tracing::debug!(site = %job.site, %version, "Replication info recreated from a status entry.");
        }
        // Once more now that the info exists, whoever wrote it: the populator's update may
        // have landed between the failed guard and the read above. For a replayed entry the
        // guard fails again and nothing changes.
        if self.store.apply(guards, ops).await? {
            tracing::debug!(site = %job.site, %version, outcome = ?job.outcome, "Status applied.");
        }
        Ok(Outcome::Done(None))
    }
}
