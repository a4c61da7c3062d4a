//! [`StatusProcessor`]: reads `backbeat-replication-status` in [`STATUS_GROUP`] and applies
//! each per-site outcome to its key's record in the state store as one
//! [`KeyChange::Outcome`] (reference 3.6, 3.10). The change applies only while the site is
//! PENDING with that very version, so a replayed entry, a late FAILED after COMPLETED, or an
//! outcome about a version the key has moved past (newest wins) changes nothing.
//!
//! A key with no record, or a record of a version written before this one at the source, is
//! one whose populator appended the entry but crashed before its store update (or whose update
//! is still on its way): the version is first recorded from the entry ([`KeyChange::Queued`],
//! as the populator would have), then the outcome applies, in one transaction. The populator's
//! own update then finds it done. At a transient source a key's record also goes when its file
//! is collected (DESIGN section 9): a missing record whose version is no longer in the source
//! is not recorded again from a replayed entry.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::task::TaskTracker;

use super::batch::StoreBatcher;
use super::runner::{self, Handler, Outcome, RunnerConfig};
use super::{StageError, StageTasks};
use crate::entry::Entry;
use crate::log::{Delivery, Log, STATUS_GROUP, TOPIC_REPLICATION_STATUS};
use crate::observe::Observer;
use crate::store::{StateStore, StoreOp};
use crate::transitions::{KeyChange, SiteOutcome};

/// Status updates in flight. Those waiting together are merged into one store transaction
/// (up to 512, [`StoreBatcher`]): as many in flight as one transaction takes, so a drain's
/// updates share a few transactions and flushes instead of one per 64 (issue 17).
const STATUS_CONCURRENCY: usize = 512;

/// The status processor.
pub struct StatusProcessor {
    store: Arc<dyn StateStore>,
    batcher: StoreBatcher,
    observer: Arc<Observer>,
    /// Where completed keys are hinted to the garbage collector (a transient source).
    hints: Option<super::gc::Hints>,
}

impl std::fmt::Debug for StatusProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusProcessor").finish()
    }
}

/// A status entry: its site and outcome are present.
pub struct StatusJob {
    entry: Entry,
    site: String,
    outcome: SiteOutcome,
}

impl StatusProcessor {
    /// Starts the status processor as a task of `stage`.
    ///
    /// # Errors
    /// `StageError::Log` when the consumer cannot be opened.
    pub async fn start(
        log: Arc<dyn Log>,
        store: Arc<dyn StateStore>,
        observer: Arc<Observer>,
        hints: Option<super::gc::Hints>,
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
        let mut handler = StatusProcessor::new(store, observer, stage.tracker());
        handler.hints = hints;
        let handler = Arc::new(handler);
        let token = stage.token().clone();
        let tracker = stage.tracker().clone();
        stage.spawn(runner::run(log, consumer, handler, cfg, token, tracker));
        Ok(())
    }

    /// A status processor whose store batching task runs on `tracker` (for tests that drive
    /// the [`Handler`] directly).
    pub fn new(
        store: Arc<dyn StateStore>,
        observer: Arc<Observer>,
        tracker: &TaskTracker,
    ) -> StatusProcessor {
        let batcher = StoreBatcher::start(store.clone(), tracker);
        StatusProcessor {
            store,
            batcher,
            observer,
            hints: None,
        }
    }

    /// Tells the observer about an outcome that changed the key's record (once per outcome,
    /// however often its entry is replayed).
    fn observe(&self, job: &StatusJob) {
        let e = &job.entry;
        match &job.outcome {
            SiteOutcome::Completed { .. } => {
                let lag = (!e.backfill).then(|| {
                    let now = self.store.now_ms();
                    std::time::Duration::from_millis(now.saturating_sub(e.written_ms))
                });
                self.observer.completed(&job.site, e.size, lag);
            }
            SiteOutcome::Failed(info) => self.observer.failed(&job.site, info.reason, e.size),
            SiteOutcome::Dropped(why) => self.observer.skipped(&job.site, why.as_str()),
        }
    }

    fn outcome_op(job: &StatusJob) -> StoreOp {
        StoreOp::key(
            &job.entry.version,
            KeyChange::Outcome {
                version_id: job.entry.version.version_id.clone(),
                site: job.site.clone(),
                outcome: job.outcome.clone(),
            },
        )
    }
}

#[async_trait]
impl Handler for StatusProcessor {
    type Job = StatusJob;

    fn prepare(&self, delivery: &Delivery) -> Option<StatusJob> {
        let entry = Entry::from_delivery(TOPIC_REPLICATION_STATUS, delivery)?;
        let site = entry.site.clone()?;
        let Some(outcome) = entry.outcome.clone() else {
            tracing::debug!(site, version = %entry.version,
                "Status entry without an outcome; ignored.");
            return None;
        };
        Some(StatusJob {
            entry,
            site,
            outcome,
        })
    }

    async fn handle(self: Arc<Self>, job: StatusJob) -> Result<Outcome, StageError> {
        let v = &job.entry.version;
        let changed = self.batcher.apply(vec![Self::outcome_op(&job)]).await?;
        if changed.first().copied().unwrap_or(false) {
            self.observe(&job);
            if let (Some(h), SiteOutcome::Completed { .. }) = (&self.hints, &job.outcome) {
                h.completed(&v.bucket, &v.key);
            }
            tracing::debug!(site = %job.site, version = %v, outcome = ?job.outcome, "Status applied.");
            return Ok(Outcome::Done(None));
        }
        // Not applied: a replay, a version the key moved past, or a record not written yet
        // (the populator appends entries before it writes their records: a crash between
        // leaves entries whose record is missing or older). Older is told by when each was
        // queued, not by the source's write times: an undelete makes an older version
        // current again.
        let record = self.store.key_state(&v.bucket, &v.key).await?;
        let missing = match &record {
            None => true,
            Some(k) => {
                k.version_id != v.version_id
                    && job.entry.queued_ms != 0
                    && job.entry.queued_ms > k.queued_ms
            }
        };
        if let (SiteOutcome::Dropped(why), Some(k)) = (&job.outcome, &record) {
            // A version the key moved past while its entry waited: not copied, counted once
            // per entry (the record, at the newer version, has nothing to change).
            if k.version_id != v.version_id && !missing {
                self.observer.skipped(&job.site, why.as_str());
            }
        }
        if missing {
            if let Some(h) = &self.hints {
                // A transient source: a record also goes when its file is collected, and a
                // replayed entry must not bring it back.
                if record.is_none() && !h.still_there(&v.key, &v.version_id).await {
                    tracing::debug!(site = %job.site, version = %v,
                        "Version no longer in the transient source; its replayed status is not recorded.");
                    return Ok(Outcome::Done(None));
                }
            }
            let queued = StoreOp::key(
                v,
                KeyChange::Queued {
                    version: job.entry.queued_version(),
                    sites: job.entry.sites.clone(),
                },
            );
            let changed = self
                .store
                .apply(vec![queued, Self::outcome_op(&job)])
                .await?;
            tracing::debug!(site = %job.site, version = %v, applied = ?changed,
                "Version recorded from its status entry.");
        }
        Ok(Outcome::Done(None))
    }
}
