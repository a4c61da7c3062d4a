//! [`StatusProcessor`]: reads `backbeat-replication-status` in [`STATUS_GROUP`] and applies
//! each per-site outcome to the state store in one guarded update, so replaying an entry
//! changes nothing (reference 3.6, 3.10):
//!
//! ```text
//! COMPLETED  guard: site PENDING   set site COMPLETED (+ dataStoreVersionId), pending -1/-size,
//!                                   opsdone +1, bytesdone +size (+ object bytes for small objects)
//! FAILED     guard: site PENDING   set site FAILED, pending -1/-size, failed set += (site, v),
//!                                   opsfail +1, bytesfail +size
//! skipped    guard: site PENDING   drop the site from the version, pending -1/-size
//! ```
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
use super::populator::queued_ops;
use super::runner::{self, Handler, Outcome, RunnerConfig};
use super::{StageError, StageTasks};
use crate::entry::{ObjectMd, QueueEntry};
use crate::log::{Delivery, Log, STATUS_GROUP, TOPIC_REPLICATION_STATUS};
use crate::model::{ReplicationInfo, ReplicationStatus, VersionRef};
use crate::store::{Guard, Metric, ObjectMetric, StateStore, StoreOp};

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

/// A parsed status entry.
pub struct StatusJob {
    version: VersionRef,
    site: String,
    status: ReplicationStatus,
    data_store_version_id: Option<String>,
    /// Gone or changed at the source (no copy).
    skipped: bool,
    md: ObjectMd,
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

    /// The guard and operations applying `job`'s outcome.
    pub fn outcome_update(&self, job: &StatusJob, now: u64) -> (Vec<Guard>, Vec<StoreOp>) {
        let size = job.md.content_length;
        let site = job.site.clone();
        let guard = Guard::SiteStatus {
            version: job.version.clone(),
            site: site.clone(),
            any_of: vec![ReplicationStatus::Pending],
        };
        let metric = |metric, value| StoreOp::AddMetric {
            site: site.clone(),
            metric,
            value,
            at_ms: now,
        };
        let pending = StoreOp::AddPending {
            site: site.clone(),
            ops: -1,
            bytes: -(size.min(i64::MAX as u64) as i64),
        };
        if job.skipped {
            let remove = StoreOp::RemoveSite {
                version: job.version.clone(),
                site,
            };
            return (vec![guard], vec![remove, pending]);
        }
        let mut ops = vec![
            StoreOp::SetSiteStatus {
                version: job.version.clone(),
                site: site.clone(),
                status: job.status,
                data_store_version_id: job.data_store_version_id.clone(),
            },
            pending,
        ];
        if job.status == ReplicationStatus::Completed {
            ops.push(metric(Metric::OpsDone, 1));
            ops.push(metric(Metric::BytesDone, size));
            if size < self.mpu_threshold {
                for m in [ObjectMetric::Bytes, ObjectMetric::BytesDone] {
                    ops.push(StoreOp::AddObjectMetric {
                        site: site.clone(),
                        version: job.version.clone(),
                        metric: m,
                        value: size,
                        at_ms: now,
                    });
                }
            }
        } else {
            ops.push(metric(Metric::OpsFail, 1));
            ops.push(metric(Metric::BytesFail, size));
            ops.push(StoreOp::AddFailed {
                site: site.clone(),
                version: job.version.clone(),
                score_ms: now,
            });
        }
        (vec![guard], ops)
    }
}

#[async_trait]
impl Handler for StatusProcessor {
    type Job = StatusJob;

    fn prepare(&self, delivery: &Delivery) -> Option<StatusJob> {
        let entry = match serde_json::from_slice::<QueueEntry>(&delivery.record.value) {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(partition = delivery.position.partition, offset = delivery.position.offset,
                    %error, "Skipping an undecodable status entry.");
                return None;
            }
        };
        if entry.bucket.is_empty() {
            return None;
        }
        let site = entry.site.clone()?;
        let md = entry.metadata().ok()?;
        let version = super::processor::version_of(&entry, &md);
        if entry.skipped.is_some() {
            return Some(StatusJob {
                version,
                site,
                status: ReplicationStatus::Pending,
                data_store_version_id: None,
                skipped: true,
                md,
            });
        }
        let state = md
            .replication_info
            .backends
            .iter()
            .find(|b| b.site == site)?;
        let status = state.status;
        if !matches!(
            status,
            ReplicationStatus::Completed | ReplicationStatus::Failed
        ) {
            tracing::debug!(site, version = %version, %status, "Status entry without an outcome; ignored.");
            return None;
        }
        let dsv = Some(state.data_store_version_id.clone()).filter(|s| !s.is_empty());
        Some(StatusJob {
            version,
            site,
            status,
            data_store_version_id: dsv,
            skipped: false,
            md,
        })
    }

    async fn handle(&self, job: StatusJob) -> Result<Outcome, StageError> {
        let now = self.store.now_ms();
        let (guards, ops) = self.outcome_update(&job, now);
        if self.batcher.apply(guards.clone(), ops.clone()).await? {
            tracing::debug!(site = %job.site, version = %job.version, status = %job.status, "Status applied.");
            return Ok(Outcome::Done(None));
        }
        // The guard failed: the site is already past PENDING (a replayed entry), or the version
        // had no info yet.
        if self.store.replication(&job.version).await?.is_none() {
            // The populator appended the entry but crashed before its store update (or its
            // update is still on its way: its guarded update then finds ours and does nothing).
            let mut info = job.md.to_info();
            let sites = crate::entry::sites_of(&info.storage_class);
            let pending = ReplicationInfo::pending(&sites);
            info.backends = pending.backends;
            info.status = pending.status;
            let (g, o) = queued_ops(&job.version, info, now);
            self.store.apply(g, o).await?;
            tracing::debug!(site = %job.site, version = %job.version, "Replication info recreated from a status entry.");
        }
        // Once more now that the info exists, whoever wrote it: the populator's update may
        // have landed between the failed guard and the read above. For a replayed entry the
        // guard fails again and nothing changes.
        if self.store.apply(guards, ops).await? {
            tracing::debug!(site = %job.site, version = %job.version, status = %job.status, "Status applied.");
        }
        Ok(Outcome::Done(None))
    }
}
