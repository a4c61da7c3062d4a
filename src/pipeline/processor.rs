//! [`ReplicationProcessor`]: one per site. Reads `backbeat-replication` in the site's consumer
//! group, keeps the entries whose `storageClass` names the site, copies each version's data
//! from the source to the site (streaming; multipart from `replication.mpu_threshold_mb`), and
//! appends the outcome (COMPLETED with the replica's version id, or FAILED) to
//! `backbeat-replication-status`. Offsets are committed only after the status entries are
//! appended (see [`super::runner`]).
//!
//! Outcomes as the original (reference 3.3 step 9, 3.4 step 8): a version that is gone from
//! the source, or changed since it was queued, is not copied; unlike the original, which
//! writes no status and leaves it PENDING (counted as pending forever), a status entry marked
//! `skipped` takes the site off the version and off the pending counters; a site already
//! COMPLETED for the version is skipped; transient errors are retried ([`super::retry`]),
//! then the whole entry is replayed later through the log ([`super::replay`]); permanent
//! errors, or replays exhausted, give FAILED. While the site is paused no new copy starts
//! ([`super::pause`]).

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::pause::PauseGate;
use super::replay::next_replay;
use super::retry::{retry, Retried, RetryPolicy};
use super::runner::{self, Handler, Outcome, RunnerConfig};
use super::{StageError, StageTasks};
use crate::entry::{EntryKind, Parsed, SkipReason};
use crate::error::Disposition;
use crate::log::{
    replication_group, Delivery, Log, Record, TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS,
};
use crate::metrics::{count_replay, count_retry, count_skip};
use crate::model::{ObjectInfo, ReplicationStatus};
use crate::site::parts::part_ranges;
use crate::site::{PutReceipt, Site, SiteError};
use crate::source::{Source, SourceError};
use crate::store::{ObjectMetric, StateStore, StoreOp};

/// Settings of a replication processor.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Copies in flight.
    pub concurrency: usize,
    /// Objects of at least this many bytes go by multipart.
    pub mpu_threshold: u64,
    /// Retry policy of one copy.
    pub retry: RetryPolicy,
    /// Whole-entry replays after the retries are spent on a transient error.
    pub replay: u32,
}

/// The replication processor of one site.
pub struct ReplicationProcessor {
    site: Arc<dyn Site>,
    source: Arc<dyn Source>,
    store: Arc<dyn StateStore>,
    cfg: ProcessorConfig,
    token: CancellationToken,
    log: Arc<dyn Log>,
    gate: PauseGate,
}

impl std::fmt::Debug for ReplicationProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationProcessor")
            .field("site", &self.site.name())
            .finish()
    }
}

/// A parsed entry for this site.
pub type CopyJob = Parsed;

/// Why one copy attempt failed.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Site(#[from] SiteError),
}

impl CopyError {
    fn disposition(&self) -> Disposition {
        match self {
            CopyError::Source(e) => e.disposition(),
            CopyError::Site(e) => e.disposition(),
        }
    }
}

/// What one copy attempt achieved.
enum Copied {
    Written(PutReceipt),
    /// Gone or changed at the source: reported as `skipped`, never copied.
    Skipped(SkipReason),
}

impl ReplicationProcessor {
    /// Starts the processor of `site` as a task of `stage`; `gate` follows the site's pause
    /// state.
    ///
    /// # Errors
    /// `StageError::Log` when the consumer cannot be opened.
    pub async fn start(
        log: Arc<dyn Log>,
        source: Arc<dyn Source>,
        site: Arc<dyn Site>,
        store: Arc<dyn StateStore>,
        cfg: ProcessorConfig,
        gate: PauseGate,
        stage: &StageTasks,
    ) -> Result<(), StageError> {
        let consumer = log
            .consumer(TOPIC_REPLICATION, &replication_group(site.name()))
            .await?;
        let runner_cfg = RunnerConfig {
            stage: "replication-processor",
            concurrency: cfg.concurrency,
            prefetch: cfg.concurrency.saturating_mul(4).max(64),
            output_topic: Some(TOPIC_REPLICATION_STATUS),
            drain_on_stop: false,
        };
        let handler = Arc::new(ReplicationProcessor {
            site,
            source,
            store,
            cfg,
            token: stage.token().clone(),
            log: log.clone(),
            gate,
        });
        let token = stage.token().clone();
        let tracker = stage.tracker().clone();
        stage.spawn(runner::run(
            log, consumer, handler, runner_cfg, token, tracker,
        ));
        Ok(())
    }

    fn object_info(&self, job: &CopyJob, head: &ObjectInfo) -> ObjectInfo {
        let mut obj = head.clone();
        obj.version = job.version.clone();
        obj
    }

    async fn copy_once(&self, job: &CopyJob) -> Result<Copied, CopyError> {
        let md = &job.md;
        if md.is_delete_marker {
            // Nothing to read: the site removes its replica of the key (an S3 site with
            // versioning writes a delete marker of its own).
            let obj = ObjectInfo {
                version: job.version.clone(),
                size: 0,
                etag: String::new(),
                last_modified: md.last_modified.clone(),
                content_type: None,
                user_metadata: Default::default(),
                tags: Default::default(),
                is_delete_marker: true,
            };
            return Ok(Copied::Written(self.site.delete(&obj).await?));
        }
        let changed = |head: &ObjectInfo| {
            head.size != md.content_length
                || (!md.content_md5.is_empty() && head.etag != md.content_md5)
        };
        let mp = self
            .site
            .multipart()
            .filter(|_| md.content_length >= self.cfg.mpu_threshold && md.content_length > 0);
        match mp {
            None => {
                // Metadata and data in one call (one blocking hop for the file source).
                let Some((head, body)) = self.source.open(&job.version).await? else {
                    return Ok(Copied::Skipped(SkipReason::Gone));
                };
                if changed(&head) {
                    return Ok(Copied::Skipped(SkipReason::Changed));
                }
                let obj = self.object_info(job, &head);
                Ok(Copied::Written(self.site.put(&obj, body).await?))
            }
            Some(mp) => {
                let Some(head) = self.source.head(&job.version).await? else {
                    return Ok(Copied::Skipped(SkipReason::Gone));
                };
                if changed(&head) {
                    return Ok(Copied::Skipped(SkipReason::Changed));
                }
                let obj = self.object_info(job, &head);
                self.object_metric(&obj, ObjectMetric::Bytes, obj.size)
                    .await;
                let upload = mp.create(&obj).await?;
                let result = async {
                    let mut parts = Vec::new();
                    for (i, (start, end)) in part_ranges(obj.size).into_iter().enumerate() {
                        let len = end - start + 1;
                        let body = self.source.get(&job.version, Some((start, end))).await?;
                        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
                        parts.push(mp.put_part(&obj, &upload, number, len, body).await?);
                        self.object_metric(&obj, ObjectMetric::BytesDone, len).await;
                    }
                    Ok::<_, CopyError>(mp.complete(&obj, &upload, &parts).await?)
                }
                .await;
                match result {
                    Ok(r) => Ok(Copied::Written(r)),
                    Err(e) => {
                        if let Err(abort) = mp.abort(&obj, &upload).await {
                            tracing::warn!(site = self.site.name(), version = %job.version, error = %abort,
                                "Could not abort a multipart upload.");
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// Object-level progress counters; a failure is only logged (the status update that
    /// follows reports a broken store).
    async fn object_metric(&self, obj: &ObjectInfo, metric: ObjectMetric, value: u64) {
        let op = StoreOp::AddObjectMetric {
            site: self.site.name().to_string(),
            version: obj.version.clone(),
            metric,
            value,
            at_ms: self.store.now_ms(),
        };
        if let Err(e) = self.store.apply(Vec::new(), vec![op]).await {
            tracing::warn!(site = self.site.name(), error = %e, "Could not record object progress.");
        }
    }

    fn status_record(
        &self,
        job: &CopyJob,
        status: ReplicationStatus,
        dsv: Option<String>,
    ) -> Record {
        job.outcome(self.site.name(), status, dsv).record()
    }

    /// The status entry of a version not copied because it is gone or changed at the source.
    fn skip_record(&self, job: &CopyJob, why: SkipReason) -> Record {
        let site = self.site.name();
        count_skip(site);
        tracing::info!(site, key = %job.version.key, version_id = %job.version.version_id,
            why = why.as_str(), "Version gone or changed at the source; not copied.");
        job.skipped(site, why).record()
    }
}

#[async_trait]
impl Handler for ReplicationProcessor {
    type Job = CopyJob;

    fn prepare(&self, delivery: &Delivery) -> Option<CopyJob> {
        let job = Parsed::from_delivery(TOPIC_REPLICATION, delivery)?;
        if job.entry.kind != EntryKind::Put {
            return None;
        }
        job.md
            .sites()
            .iter()
            .any(|s| s == self.site.name())
            .then_some(job)
    }

    async fn handle(&self, job: CopyJob) -> Result<Outcome, StageError> {
        let site = self.site.name();
        if !self.gate.wait(&self.token).await {
            return Ok(Outcome::Abandoned);
        }
        if let Some(info) = self.store.replication(&job.version).await? {
            if info.site(site).map(|s| s.status) == Some(ReplicationStatus::Completed) {
                tracing::debug!(site, version = %job.version, "Already replicated; skipping.");
                return Ok(Outcome::Done(None));
            }
        }
        // The error of the last attempt, logged when the next one starts.
        let last_error = parking_lot::Mutex::new(String::new());
        let out = retry(&self.cfg.retry, &self.token, CopyError::disposition, |n| {
            let last_error = &last_error;
            let job = &job;
            async move {
                if n > 0 {
                    count_retry(site);
                    let error = last_error.lock().clone();
                    tracing::warn!(site, key = %job.version.key, version_id = %job.version.version_id,
                        attempt = n + 1, %error, "Retrying a copy after a transient error.");
                }
                let r = self.copy_once(job).await;
                if let Err(e) = &r {
                    *last_error.lock() = crate::error::chain(e);
                }
                r
            }
        })
        .await;
        let record = match out {
            Retried::Cancelled => return Ok(Outcome::Abandoned),
            Retried::Done(Copied::Skipped(why)) => self.skip_record(&job, why),
            Retried::Done(Copied::Written(receipt)) => {
                tracing::debug!(site, version = %job.version, "Replicated.");
                self.status_record(&job, ReplicationStatus::Completed, receipt.version_id)
            }
            Retried::Failed {
                error: CopyError::Source(SourceError::NotFound(_)),
                ..
            } => self.skip_record(&job, SkipReason::Gone),
            Retried::Failed { error, attempts } => {
                let transient = matches!(error.disposition(), Disposition::Retry { .. });
                let replay = if transient {
                    next_replay(job.entry.replay_count, self.cfg.replay)
                } else {
                    None
                };
                if let Some(count) = replay {
                    // Appended before this entry's offset is committed (at-least-once).
                    let record = job.replay(site, count).record();
                    self.log.append(TOPIC_REPLICATION, vec![record]).await?;
                    count_replay(site);
                    tracing::warn!(site, key = %job.version.key, version_id = %job.version.version_id,
                        attempts, replay_count = count, error = %crate::error::chain(&error),
                        "Retries spent; the entry is queued again for a replay.");
                    return Ok(Outcome::Done(None));
                }
                tracing::error!(site, key = %job.version.key, version_id = %job.version.version_id,
                    attempts, replay_count = ?job.entry.replay_count, permanent = !transient,
                    error = %crate::error::chain(&error), "Replication failed.");
                self.status_record(&job, ReplicationStatus::Failed, None)
            }
        };
        Ok(Outcome::Done(Some(record)))
    }
}
