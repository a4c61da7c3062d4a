//! [`ReplicationProcessor`]: one per site. Reads `backbeat-replication` in the site's consumer
//! group, keeps the entries meant for the site, makes the site mirror each key's current
//! version, and appends the outcome to `backbeat-replication-status`. Offsets are committed
//! only after the status entries are appended (see [`super::runner`]).
//!
//! For an entry about version `v` of key `k` (DESIGN section 3):
//! 1. **Newest wins.** The source is asked for `k`'s current version (S3: a `GET` without
//!    `versionId`, which also serves the copy when it is `v`; file: a stat). If it is not `v`
//!    (a newer version, or `k` deleted since; or, for a deletion, `k` written again), `v` is
//!    *dropped* for the site as `superseded` and nothing is written: replays, retries,
//!    requeues and reordering after a crash can never put an older version on top of a newer
//!    one. A version that is itself a replica is dropped as `replica` (no loops).
//! 2. **Where it goes.** The key at the site is `<source bucket>/<key>`, or the key as it is
//!    for a site with `bucket_match = true`. A key the site cannot store is FAILED at once
//!    (`Rejected`, naming the limit).
//! 3. **No second copy.** An entry that may have been handled before (a replay, a retry or
//!    requeue, a later attempt, or one delivered again after a restart) first reads the site:
//!    a replica of `v` already there is COMPLETED without writing again, so a versioned site
//!    never gets two versions of one source version.
//! 4. **Integrity.** The site hashes what it writes and checks it against what the destination
//!    stored; a multipart copy reads each part with `If-Match`, so a version changed mid-copy
//!    never yields a torn replica (it is dropped as superseded instead).
//! 5. **Retries.** Transient errors are retried ([`super::retry`]), then the whole entry is
//!    replayed later through the log ([`super::replay`]); permanent errors, or replays
//!    exhausted, give FAILED with a typed reason. While the site is paused no new copy starts
//!    and a copy waiting to retry does not contact the site ([`super::pause`]).
//! 6. A deletion (a delete marker, or a key with no version left) removes the replica, writing
//!    nothing when it is already absent or already a delete marker.
//! 7. **Bandwidth.** Every body handed to the site (a single PUT, each multipart part) passes
//!    through the site's [`Limiter`], shared by all its copies ([`crate::bandwidth`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::local::{self, Local};
use super::pause::PauseGate;
use super::replay::next_replay;
use super::retry::{retry, Retried, RetryPolicy};
use super::runner::{self, Handler, Outcome, RunnerConfig};
use super::{StageError, StageTasks};
use crate::bandwidth::{self, Limiter};
use crate::checksum::hex;
use crate::entry::{Entry, EntryFormat};
use crate::error::{Disposition, FailureReason};
use crate::log::{replication_group, Delivery, Log, TOPIC_REPLICATION, TOPIC_REPLICATION_STATUS};
use crate::metrics::{count_attempt_failure, count_replay, count_retry};
use crate::model::{ByteStream, ObjectInfo, ReplicationStatus, NULL_VERSION};
use crate::observe::Observer;
use crate::site::parts::part_ranges;
use crate::site::{site_key, Durable, PartReceipt, PutReceipt, Site, SiteError};
use crate::source::{Source, SourceError};
use crate::store::{ObjectMetric, StateStore, StoreOp, UploadIntent};
use crate::transitions::{DropReason, FailedInfo, SiteOutcome};

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
    /// The site keeps source keys as they are (`bucket_match = true`) instead of
    /// `<source bucket>/<key>`.
    pub bucket_match: bool,
    /// The site's bandwidth limiter.
    pub bandwidth: Arc<Limiter>,
}

/// What every replication processor of an engine shares.
#[derive(Clone)]
pub struct ProcessorDeps {
    /// The log.
    pub log: Arc<dyn Log>,
    /// The source.
    pub source: Arc<dyn Source>,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The operator's view.
    pub observer: Arc<Observer>,
}

/// The replication processor of one site.
pub struct ReplicationProcessor {
    site: Arc<dyn Site>,
    source: Arc<dyn Source>,
    store: Arc<dyn StateStore>,
    cfg: ProcessorConfig,
    token: CancellationToken,
    log: Arc<dyn Log>,
    format: EntryFormat,
    gate: PauseGate,
    /// Per partition, the end offset when this processor started: entries below it may have
    /// been handled by an earlier run that stopped before committing them.
    ends_at_start: Mutex<HashMap<u32, u64>>,
    observer: Arc<Observer>,
    /// When each entry taken and not finished was queued (ms), with how many: the oldest is
    /// the site's oldest pending version.
    waiting: Mutex<std::collections::BTreeMap<u64, usize>>,
}

impl std::fmt::Debug for ReplicationProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationProcessor")
            .field("site", &self.site.name())
            .finish()
    }
}

/// An entry for this site, and whether it may have been handled before.
pub struct CopyJob {
    entry: Entry,
    seen_before: bool,
    /// When its record was appended to the log (ms).
    queued_ms: u64,
}

/// Why one copy attempt failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CopyError {
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

    fn reason(&self) -> FailureReason {
        match self {
            CopyError::Source(_) => FailureReason::SourceUnreadable,
            CopyError::Site(e) => e.reason(),
        }
    }
}

/// What one copy attempt achieved.
enum Copied {
    Written(PutReceipt),
    /// Written, durable once the [`Durable`] resolves.
    Deferred(PutReceipt, Durable),
    Dropped(DropReason),
}

/// Whether `current` (the source's answer about the key) is the version `entry` is about.
pub(super) fn is_current(entry: &Entry, current: &ObjectInfo) -> bool {
    current.version.version_id == entry.version.version_id
        && !current.is_delete_marker
        && (entry.version.version_id != NULL_VERSION || current.etag == entry.etag)
}

/// One line, at most 300 characters: what a failed entry and the status view show.
fn one_line(s: &str) -> String {
    let line: String = s.split(['\n', '\r']).collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

impl ReplicationProcessor {
    /// Starts the processor of `site` as a task of `stage`; `gate` follows the site's pause
    /// state.
    ///
    /// # Errors
    /// `StageError::Log` when the consumer cannot be opened.
    pub async fn start(
        deps: &ProcessorDeps,
        site: Arc<dyn Site>,
        cfg: ProcessorConfig,
        gate: PauseGate,
        stage: &StageTasks,
    ) -> Result<(), StageError> {
        let ProcessorDeps {
            log,
            source,
            store,
            observer,
        } = deps.clone();
        let group = replication_group(site.name());
        let ends = log
            .lag(TOPIC_REPLICATION, &group)
            .await?
            .into_iter()
            .map(|l| (l.partition, l.end))
            .collect();
        let consumer = log.consumer(TOPIC_REPLICATION, &group).await?;
        let runner_cfg = RunnerConfig {
            stage: "replication-processor",
            concurrency: cfg.concurrency,
            prefetch: cfg.concurrency.saturating_mul(4).max(512),
            output_topic: Some(TOPIC_REPLICATION_STATUS),
            drain_on_stop: false,
        };
        let handler = Arc::new(ReplicationProcessor {
            site,
            source,
            store,
            cfg,
            token: stage.token().clone(),
            format: log.entry_format(),
            log: log.clone(),
            gate,
            ends_at_start: Mutex::new(ends),
            observer,
            waiting: Mutex::new(Default::default()),
        });
        let token = stage.token().clone();
        let tracker = stage.tracker().clone();
        stage.spawn(runner::run(
            log, consumer, handler, runner_cfg, token, tracker,
        ));
        Ok(())
    }

    /// Whether the site already holds the replica of `entry`'s version at `key` with the
    /// source's bytes (the receipt of it when it does). `md5`: the MD5 of the source's bytes
    /// when known. A replica whose bytes the site hashed differently (an earlier attempt
    /// stored corrupted bytes under the right metadata) is not there; nor is one whose bytes
    /// the site hashed when the source's MD5 is unknown, since they cannot be compared.
    async fn already_there(
        &self,
        key: &str,
        entry: &Entry,
        md5: Option<&str>,
    ) -> Result<Option<PutReceipt>, SiteError> {
        Ok(self.site.replica(key).await?.and_then(|r| {
            let bytes_ok = match (r.content_md5.as_deref(), md5) {
                (None, _) => true,
                (Some(site), Some(source)) => site.eq_ignore_ascii_case(source),
                (Some(_), None) => false,
            };
            (r.source_version_id.as_deref() == Some(entry.version.version_id.as_str())
                && r.size == entry.size
                && !r.delete_marker
                && bytes_ok)
                .then_some(PutReceipt {
                    version_id: r.site_version_id,
                    etag: None,
                    wrote: false,
                })
        }))
    }

    async fn copy_once(&self, job: &CopyJob, key: &str, attempt: u32) -> Result<Copied, CopyError> {
        let e = &job.entry;
        let (bucket, src_key) = (&e.version.bucket, &e.version.key);
        // A replica of this version may be there already (an earlier delivery or attempt wrote
        // it): checked so a replay never writes a second version at a versioned site. Not for
        // an operator's requeue: it says the replica there is wrong, whatever it claims.
        let maybe_done = !e.requeued && (job.seen_before || attempt > 0);
        if e.deleted {
            // A deletion applies while the key is still deleted at the source.
            if let Some(cur) = self.source.current(bucket, src_key).await? {
                if !cur.is_delete_marker {
                    return Ok(Copied::Dropped(DropReason::Superseded));
                }
            }
            return Ok(Copied::Written(self.site.delete(key).await?));
        }
        let multipart = self
            .site
            .multipart()
            .filter(|_| e.size >= self.cfg.mpu_threshold && e.size > 0);
        let Some(mp) = multipart else {
            if let (false, Some(src), Some(dst)) =
                (maybe_done, self.source.as_file(), self.site.as_file())
            {
                let receipt = PutReceipt {
                    wrote: true,
                    ..PutReceipt::default()
                };
                match local::copy_small(src, dst, e, key, &self.cfg.bandwidth).await? {
                    Local::Written(durable) => return Ok(Copied::Deferred(receipt, durable)),
                    Local::Superseded => return Ok(Copied::Dropped(DropReason::Superseded)),
                    Local::Replica => return Ok(Copied::Dropped(DropReason::Replica)),
                    Local::Unsuited => {}
                }
            }
            let want_md5 = self.site.needs_md5_up_front();
            let Some((cur, body)) = self.source.open_current(bucket, src_key, want_md5).await?
            else {
                return Ok(Copied::Dropped(DropReason::Superseded));
            };
            if !is_current(e, &cur) {
                return Ok(Copied::Dropped(DropReason::Superseded));
            }
            if cur.replica {
                return Ok(Copied::Dropped(DropReason::Replica));
            }
            if maybe_done {
                let md5 = cur.content_md5.as_deref();
                if let Some(r) = self.already_there(key, e, md5).await? {
                    return Ok(Copied::Written(r));
                }
            }
            let body: ByteStream = match body {
                Some(b) => b,
                None => Box::pin(futures_util::stream::empty()),
            };
            let body = bandwidth::limit(body, self.cfg.bandwidth.clone());
            return Ok(match self.site.put_deferred(key, &cur, body).await? {
                (r, Some(durable)) => Copied::Deferred(r, durable),
                (r, None) => Copied::Written(r),
            });
        };
        let Some(mut cur) = self.source.current(bucket, src_key).await? else {
            return Ok(Copied::Dropped(DropReason::Superseded));
        };
        if !is_current(e, &cur) {
            return Ok(Copied::Dropped(DropReason::Superseded));
        }
        if cur.replica {
            return Ok(Copied::Dropped(DropReason::Replica));
        }
        if maybe_done {
            let md5 = cur.content_md5.as_deref();
            if let Some(r) = self.already_there(key, e, md5).await? {
                return Ok(Copied::Written(r));
            }
        }
        self.object_metric(&cur, ObjectMetric::Bytes, cur.size)
            .await;
        // The upload is recorded before it exists and forgotten once it is completed or
        // aborted: one a crash interrupts is found and aborted (DESIGN section 9).
        let intent_id = super::gc::new_intent_id();
        let mut intent = UploadIntent {
            key: key.to_string(),
            started_ms: self.store.now_ms(),
            upload_id: None,
            owner: super::gc::instance().to_string(),
        };
        self.record_upload(&intent_id, &intent).await?;
        let _active = super::gc::Active::begin(&intent_id);
        let upload = match mp.create(key, &cur).await {
            Ok(u) => u,
            Err(e) => {
                self.forget_upload(&intent_id).await;
                return Err(e.into());
            }
        };
        intent.upload_id = Some(upload.clone());
        if let Err(e) = self.record_upload(&intent_id, &intent).await {
            self.abort(mp, key, &upload, &intent_id).await;
            return Err(e);
        }
        let result = async {
            let mut parts: Vec<PartReceipt> = Vec::new();
            // The whole object's MD5, over the parts in order, for the sites that record it
            // after the data (Azure's block list, the file site's sidecar).
            let whole = Arc::new(Mutex::new(<md5::Md5 as md5::Digest>::new()));
            for (i, (start, end)) in part_ranges(cur.size).into_iter().enumerate() {
                let len = end - start + 1;
                let body = self
                    .source
                    .get_range(&cur.version, &cur.etag, (start, end))
                    .await?;
                let body = feed(body, whole.clone());
                let body = bandwidth::limit(body, self.cfg.bandwidth.clone());
                let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
                parts.push(mp.put_part(key, &upload, number, len, body).await?);
                self.object_metric(&cur, ObjectMetric::BytesDone, len).await;
            }
            if cur.content_md5.is_none() {
                let h = std::mem::replace(&mut *whole.lock(), <md5::Md5 as md5::Digest>::new());
                let d: [u8; 16] = md5::Digest::finalize(h).into();
                cur.content_md5 = Some(hex(&d));
            }
            Ok::<_, CopyError>(mp.complete(key, &cur, &upload, &parts).await?)
        }
        .await;
        match result {
            Ok(r) => {
                self.forget_upload(&intent_id).await;
                Ok(Copied::Written(r))
            }
            Err(CopyError::Source(SourceError::NotFound(_))) => {
                // Changed mid-copy (If-Match refused it): the newer version supersedes it.
                self.abort(mp, key, &upload, &intent_id).await;
                Ok(Copied::Dropped(DropReason::Superseded))
            }
            Err(err) => {
                self.abort(mp, key, &upload, &intent_id).await;
                Err(err)
            }
        }
    }

    /// Aborts an upload; its record goes once it is aborted (else the collector retries).
    async fn abort(
        &self,
        mp: &dyn crate::site::MultipartSite,
        key: &str,
        upload: &str,
        intent_id: &str,
    ) {
        match mp.abort(key, upload).await {
            Ok(()) => self.forget_upload(intent_id).await,
            Err(abort) => {
                tracing::warn!(site = self.site.name(), key, error = %abort,
                    "Could not abort a multipart upload; the garbage collector will.");
            }
        }
    }

    async fn record_upload(&self, id: &str, intent: &UploadIntent) -> Result<(), CopyError> {
        let op = StoreOp::PutUpload {
            site: self.site.name().to_string(),
            id: id.to_string(),
            intent: intent.clone(),
        };
        self.store.apply(vec![op]).await.map(|_| ()).map_err(|e| {
            CopyError::Site(SiteError::transient(
                self.site.name(),
                format!("cannot record the upload before starting it: {e}"),
            ))
        })
    }

    /// Forgets a finished upload; a failure leaves a record the collector clears later.
    async fn forget_upload(&self, id: &str) {
        let op = StoreOp::DeleteUpload {
            site: self.site.name().to_string(),
            id: id.to_string(),
        };
        if let Err(e) = self.store.apply(vec![op]).await {
            tracing::warn!(site = self.site.name(), error = %e,
                "Could not forget a finished upload; the garbage collector will.");
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
        if let Err(e) = self.store.apply(vec![op]).await {
            tracing::warn!(site = self.site.name(), error = %e, "Could not record object progress.");
        }
    }

    /// Counts `job` as waiting (or, `done`, no longer) and tells the observer the oldest.
    fn waiting(&self, job: &CopyJob, done: bool) {
        let mut w = self.waiting.lock();
        if done {
            if let Some(n) = w.get_mut(&job.queued_ms) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&job.queued_ms);
                }
            }
        } else {
            *w.entry(job.queued_ms).or_default() += 1;
        }
        let oldest = w.keys().next().copied();
        drop(w);
        self.observer.set_oldest_pending(self.site.name(), oldest);
    }

    fn status(&self, job: &CopyJob, outcome: SiteOutcome) -> Outcome {
        let record = job
            .entry
            .outcome(self.site.name(), outcome)
            .record(self.format);
        Outcome::Done(Some(record))
    }

    fn failed(&self, job: &CopyJob, error: &CopyError, attempts: u32) -> Outcome {
        let e = &job.entry;
        self.status(
            job,
            SiteOutcome::Failed(FailedInfo {
                size: e.size,
                written_ms: e.written_ms,
                reason: error.reason(),
                attempts: e.attempts.saturating_add(attempts),
                last_error: one_line(&crate::error::chain(error)),
                last_attempt_ms: self.store.now_ms(),
            }),
        )
    }
}

/// Feeds every chunk of `body` into `hasher` as it passes.
fn feed(body: ByteStream, hasher: Arc<Mutex<md5::Md5>>) -> ByteStream {
    use futures_util::StreamExt;
    Box::pin(body.map(move |chunk| {
        if let Ok(c) = &chunk {
            md5::Digest::update(&mut *hasher.lock(), c);
        }
        chunk
    }))
}

#[async_trait]
impl Handler for ReplicationProcessor {
    type Job = CopyJob;

    fn prepare(&self, delivery: &Delivery) -> Option<CopyJob> {
        let entry = Entry::from_delivery(TOPIC_REPLICATION, delivery)?;
        let site = self.site.name();
        if entry.outcome.is_some() || !entry.is_for(site) {
            return None;
        }
        if entry.site.as_deref().is_some_and(|s| s != site) {
            return None;
        }
        let p = delivery.position;
        let before_start = self
            .ends_at_start
            .lock()
            .get(&p.partition)
            .is_some_and(|end| p.offset < *end);
        let seen_before = !entry.requeued
            && (before_start || entry.site.is_some() || entry.replay_count.is_some());
        let job = CopyJob {
            entry,
            seen_before,
            queued_ms: delivery.record.timestamp_ms,
        };
        self.waiting(&job, false);
        Some(job)
    }

    async fn handle(self: Arc<Self>, job: CopyJob) -> Result<Outcome, StageError> {
        let out = self.handle_job(&job).await;
        match out {
            Ok(Copy::Now(outcome)) => {
                self.waiting(&job, true);
                Ok(outcome)
            }
            Ok(Copy::Durable(receipt, durable)) => Ok(Outcome::Later(Box::pin(async move {
                let out = self.after_durable(&job, receipt, durable).await;
                self.waiting(&job, true);
                out
            }))),
            Err(e) => {
                self.waiting(&job, true);
                Err(e)
            }
        }
    }
}

/// Where a handled entry stands.
enum Copy {
    /// Its outcome.
    Now(Outcome),
    /// A replica written, its outcome known once the site has made it durable.
    Durable(PutReceipt, Durable),
}

impl From<Outcome> for Copy {
    fn from(o: Outcome) -> Copy {
        Copy::Now(o)
    }
}

impl ReplicationProcessor {
    /// The outcome of a replica written by [`Site::put_deferred`], once the site has made it
    /// durable: COMPLETED, or, when the commit failed (nothing was put in place), what a
    /// transient failure whose retries are spent gives (a replay, else FAILED).
    async fn after_durable(
        &self,
        job: &CopyJob,
        receipt: PutReceipt,
        durable: Durable,
    ) -> Result<Outcome, StageError> {
        let site = self.site.name();
        match durable.wait().await {
            Ok(()) => Ok(self.completed(job, receipt)),
            Err(e) => {
                let error = CopyError::Site(e);
                count_attempt_failure(site);
                self.observer
                    .attempt_failed(site, error.reason(), &crate::error::chain(&error));
                self.give_up(job, error, 1).await
            }
        }
    }

    fn completed(&self, job: &CopyJob, receipt: PutReceipt) -> Outcome {
        tracing::debug!(site = self.site.name(), version = %job.entry.version,
            wrote = receipt.wrote, "Replicated.");
        self.status(
            job,
            SiteOutcome::Completed {
                data_store_version_id: receipt.version_id,
            },
        )
    }

    /// A copy that failed for good in this delivery: queued again whole for a replay while
    /// the error is transient and replays are left, else FAILED.
    async fn give_up(
        &self,
        job: &CopyJob,
        error: CopyError,
        attempts: u32,
    ) -> Result<Outcome, StageError> {
        let (site, v) = (self.site.name(), &job.entry.version);
        let transient = matches!(error.disposition(), Disposition::Retry { .. });
        let replay = if transient {
            next_replay(job.entry.replay_count, self.cfg.replay)
        } else {
            None
        };
        if let Some(count) = replay {
            // Appended before this entry's offset is committed (at-least-once).
            let attempts = job.entry.attempts.saturating_add(attempts);
            let record = job.entry.replay(site, count, attempts).record(self.format);
            self.log.append(TOPIC_REPLICATION, vec![record]).await?;
            count_replay(site);
            tracing::warn!(site, key = %v.key, version_id = %v.version_id,
                attempts, replay_count = count, reason = %error.reason(),
                error = %crate::error::chain(&error),
                "Retries spent; the entry is queued again for a replay.");
            return Ok(Outcome::Done(None));
        }
        tracing::error!(site, key = %v.key, version_id = %v.version_id,
            attempts, replay_count = ?job.entry.replay_count, permanent = !transient,
            reason = %error.reason(), error = %crate::error::chain(&error),
            "Replication failed.");
        Ok(self.failed(job, &error, attempts))
    }

    async fn handle_job(&self, job: &CopyJob) -> Result<Copy, StageError> {
        let site = self.site.name();
        let v = &job.entry.version;
        if !self.gate.wait(&self.token).await {
            return Ok(Outcome::Abandoned.into());
        }
        // A replayed entry of a version already COMPLETED here (when this process sees the
        // store the status processor writes). Never for an operator's requeue: its record is
        // written only after its entry (the populator appends first), so the record read here
        // may still say COMPLETED about the replica the operator says is wrong.
        let record = if job.entry.requeued {
            None
        } else {
            self.store.key_state(&v.bucket, &v.key).await?
        };
        if let Some(k) = record {
            if k.version_id == v.version_id
                && k.site(site).map(|s| s.status) == Some(ReplicationStatus::Completed)
            {
                tracing::debug!(site, version = %v, "Already replicated; skipping.");
                return Ok(Outcome::Done(None).into());
            }
        }
        let key = site_key(&v.bucket, &v.key, self.cfg.bucket_match);
        if let Err(e) = self.site.check_key(&key) {
            let error = CopyError::Site(e);
            tracing::error!(site, key = %v.key, version_id = %v.version_id,
                error = %crate::error::chain(&error), "Replication failed: the site cannot store this key.");
            return Ok(self.failed(job, &error, 0).into());
        }
        let last_error = parking_lot::Mutex::new(String::new());
        let out = retry(&self.cfg.retry, &self.token, CopyError::disposition, |n| {
            let job = &job;
            let key = &key;
            let last_error = &last_error;
            async move {
                if n > 0 {
                    // Waiting to retry while the site is paused: it is not contacted.
                    if self.gate.is_paused() && !self.gate.wait(&self.token).await {
                        return Err(CopyError::Site(SiteError::transient(site, "stopping")));
                    }
                    count_retry(site);
                    let error = last_error.lock().clone();
                    tracing::warn!(site, key = %job.entry.version.key,
                        version_id = %job.entry.version.version_id, attempt = n + 1, %error,
                        "Retrying a copy after a transient error.");
                }
                let r = self.copy_once(job, key, n).await;
                match &r {
                    Err(error) => {
                        let message = crate::error::chain(error);
                        count_attempt_failure(site);
                        if self.observer.attempt_failed(site, error.reason(), &message) {
                            // The first failure after a success is told at once; the
                            // following ones of the outage at each retry.
                            tracing::warn!(site, key = %job.entry.version.key,
                                version_id = %job.entry.version.version_id, attempt = n + 1,
                                reason = %error.reason(), error = %message,
                                "Copy to the site failed; copies retry with backoff.");
                        } else {
                            tracing::debug!(site, key = %job.entry.version.key,
                                version_id = %job.entry.version.version_id, attempt = n + 1,
                                reason = %error.reason(), error = %message,
                                "Copy attempt failed.");
                        }
                        *last_error.lock() = message;
                    }
                    Ok(_) => self.observer.attempt_succeeded(site),
                }
                r
            }
        })
        .await;
        let outcome = match out {
            Retried::Cancelled => Outcome::Abandoned,
            Retried::Done(Copied::Dropped(why)) => {
                tracing::info!(site, key = %v.key, version_id = %v.version_id,
                    why = why.as_str(), "Version not copied.");
                self.status(job, SiteOutcome::Dropped(why))
            }
            Retried::Done(Copied::Written(receipt)) => self.completed(job, receipt),
            Retried::Done(Copied::Deferred(receipt, durable)) => {
                return Ok(Copy::Durable(receipt, durable))
            }
            Retried::Failed {
                error: CopyError::Source(SourceError::NotFound(_)),
                ..
            } => self.status(job, SiteOutcome::Dropped(DropReason::Superseded)),
            Retried::Failed { error, attempts } => self.give_up(job, error, attempts).await?,
        };
        Ok(Copy::Now(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_shown_to_operators_are_one_short_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
        assert!(one_line(&"x".repeat(1000)).len() <= 303);
    }
}
