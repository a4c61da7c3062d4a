//! The state store: replication info per version, the failed set, pause state, metrics
//! counters, source cursors and locks (what the original keeps in MongoDB, Redis and ZooKeeper).
//!
//! The engine wraps the store in a [`RetryingStore`], which waits out an outage
//! ([`StoreError::Unavailable`]) for the pipeline and reports it to the healthcheck.
//!
//! Updates go through [`StateStore::apply`]: a list of operations applied atomically, all or
//! nothing. A replication state change is a [`StoreOp::Key`]: one source key's record changed
//! by [`crate::transitions::apply`] with its effects (pending counters, metrics, failed set),
//! which applies only from the state it expects ("site A of version v COMPLETED" only while A is
//! PENDING with v), so a replayed entry changes nothing and the counters stay exact under
//! at-least-once delivery.
//!
//! Time windows (as the original):
//! - failed set: hourly buckets, an entry lives until 24 h after the start of its hour; listings
//!   cover the current hour and the 23 before it, newest first;
//! - metrics: 5-minute buckets aligned on the wall clock, kept 24 h (288 buckets);
//! - pending counters never expire;
//! - the record of a key deleted at the source and replicated everywhere: 24 h
//!   ([`DELETED_KEY_TTL_MS`]); other records live as long as their key.

mod aggregates;
#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod retrying;
pub mod sled;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[cfg(feature = "mongodb")]
pub use self::mongo::MongoStore;
pub use self::retrying::RetryingStore;
pub use self::sled::SledStore;
use crate::model::{KeyState, VersionRef};
use crate::transitions::{FailedInfo, KeyChange};

/// Length of a metrics bucket.
pub const METRICS_BUCKET_MS: u64 = 5 * 60 * 1000;
/// Number of metrics buckets kept (24 h).
pub const METRICS_BUCKETS: usize = 288;
/// Length of a failed-set bucket.
pub const FAILED_BUCKET_MS: u64 = 60 * 60 * 1000;
/// Number of hourly failed-set buckets kept.
pub const FAILED_BUCKETS: u64 = 24;
/// Page size of failed-set listings.
pub const FAILED_PAGE: usize = 100;
/// How long the record of a key deleted at the source (and replicated everywhere) is kept,
/// for the object view, before the expiry sweep drops it.
pub const DELETED_KEY_TTL_MS: u64 = 24 * 60 * 60 * 1000;

pub use crate::model::Metric;

/// Object-level counters (progress and throughput of one version's transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectMetric {
    /// Total bytes announced when the transfer started.
    Bytes,
    /// Bytes written to the destination.
    BytesDone,
}

impl ObjectMetric {
    fn code(self) -> u8 {
        match self {
            ObjectMetric::Bytes => 1,
            ObjectMetric::BytesDone => 2,
        }
    }
}

/// One part of an atomic update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// A change to one source key's record, with its effects on the pending counters, the
    /// window metrics and the failed set ([`crate::transitions::apply`], at the store's
    /// clock). Changes nothing when it does not apply (a replay).
    Key {
        /// Source bucket.
        bucket: String,
        /// Object key.
        key: String,
        /// The change.
        change: KeyChange,
    },
    /// Adds to the pending counters of `site` directly. The pipeline never does (its counters
    /// move only with key changes, which keep them exact); this is for seeding a store (load
    /// benches, tests) and for an operator's repair.
    AddPending {
        /// The site.
        site: String,
        /// Operations delta.
        ops: i64,
        /// Bytes delta.
        bytes: i64,
    },
    /// Puts `(site, version)` in the failed set at `score_ms` directly (moved there if already
    /// listed). As [`StoreOp::AddPending`]: for seeding and repairs, not the pipeline.
    AddFailed {
        /// The site.
        site: String,
        /// The version.
        version: VersionRef,
        /// What is known of the failure.
        info: FailedInfo,
        /// Failure time (ms), its listing marker.
        score_ms: u64,
    },
    /// Adds to a 5-minute metrics bucket of `site`.
    AddMetric {
        /// The site.
        site: String,
        /// Which counter.
        metric: Metric,
        /// Amount.
        value: u64,
        /// When it happened (ms); picks the bucket.
        at_ms: u64,
    },
    /// Adds to a 5-minute object-level metrics bucket.
    AddObjectMetric {
        /// The site.
        site: String,
        /// The version.
        version: VersionRef,
        /// Which counter.
        metric: ObjectMetric,
        /// Amount.
        value: u64,
        /// When it happened (ms).
        at_ms: u64,
    },
    /// Stores the summary of a directory of a file source (its entries as of a pass whose
    /// changes are all queued).
    PutDirSummary {
        /// Source bucket.
        bucket: String,
        /// Directory key prefix (`""`, `a/`, `a/b/`).
        dir: String,
        /// The summary.
        summary: u64,
    },
    /// Forgets the summaries of `prefix` and every directory under it (removed directories).
    DeleteDirSummaries {
        /// Source bucket.
        bucket: String,
        /// Directory key prefix.
        prefix: String,
    },
    /// Records `bucket` as the owner of a `bucket_match` site unless one is recorded already.
    ClaimNamespace {
        /// The site.
        site: String,
        /// The source bucket.
        bucket: String,
    },
    /// Stores a source cursor.
    PutCursor {
        /// Cursor name.
        name: String,
        /// Opaque value.
        value: Vec<u8>,
    },
    /// Records (or updates) a multipart upload this engine starts at `site` (DESIGN
    /// section 9): written before the upload is created, so one a crash interrupts is found
    /// and aborted later.
    PutUpload {
        /// The site.
        site: String,
        /// The intent's id (unique per upload attempt).
        id: String,
        /// What is known of the upload.
        intent: UploadIntent,
    },
    /// Forgets an upload once completed or aborted.
    DeleteUpload {
        /// The site.
        site: String,
        /// The intent's id.
        id: String,
    },
}

/// A multipart upload this engine started at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadIntent {
    /// The site key.
    pub key: String,
    /// When the intent was recorded (ms; the upload was created after).
    pub started_ms: u64,
    /// The site's upload id, once known.
    pub upload_id: Option<String>,
    /// The engine process that started it (an id drawn at start).
    pub owner: String,
}

impl StoreOp {
    /// A [`StoreOp::Key`] change of `version`'s key.
    pub fn key(version: &VersionRef, change: KeyChange) -> StoreOp {
        StoreOp::Key {
            bucket: version.bucket.clone(),
            key: version.key.clone(),
            change,
        }
    }
}

/// One failed-set entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    /// The site that failed.
    pub site: String,
    /// The version.
    pub version: VersionRef,
    /// When it failed (ms), also its listing marker.
    pub score_ms: u64,
    /// What is known of the failure.
    pub info: FailedInfo,
}

/// One page of a site's failed set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailedPage {
    /// Entries, newest first.
    pub entries: Vec<FailedEntry>,
    /// Marker of the next page, present only when there is one.
    pub next_marker: Option<u64>,
}

/// A site's numbers as the metric routes read them (REST metrics, Prometheus, `GET status`),
/// at the store's clock: one call instead of a range of buckets per metric.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SiteTotals {
    /// The pending counters `(ops, bytes)` (raw, may be negative).
    pub pending: (i64, i64),
    /// Entries in the failed set (24 h window).
    pub failed: u64,
    /// Each metric, in [`Metric::ALL`] order, summed over the 288 buckets of the last 24 h.
    pub sums: [u64; 6],
    /// The four newest buckets of each metric (the current one first), for the 900 s
    /// throughput.
    pub recent: [[u64; 4]; 6],
    /// A number that changes whenever the site's failed set changes and never names another
    /// content in this process, so a rendered listing can be reused while it holds; `None`
    /// when the store cannot tell (a store that other processes write to).
    pub failed_version: Option<u64>,
}

/// Pause state of a site for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PauseState {
    /// Whether the site is paused.
    pub paused: bool,
    /// When a scheduled resume fires (ms since the epoch).
    pub scheduled_resume_ms: Option<u64>,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's files are unreadable or written by an incompatible version.
    #[error("state store format version {found} is not supported (expected {expected})")]
    UnsupportedFormat {
        /// Version on disk.
        found: u32,
        /// Version this binary writes.
        expected: u32,
    },
    /// A stored value failed to decode.
    #[error("corrupt state store value under {0}")]
    Corrupt(String),
    /// Invalid argument (site name with a NUL byte, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The storage engine failed; the store refuses further writes.
    #[error("state store storage failure")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be reached for now (MongoDB: network error, no primary, server
    /// selection timeout); the same call may succeed later. [`RetryingStore`] retries these.
    #[error("state store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether the error is transient: the store is unreachable for now, not broken.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<crate::durability::DbError> for StoreError {
    fn from(e: crate::durability::DbError) -> Self {
        StoreError::Storage(Box::new(e))
    }
}

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> Self {
        StoreError::Storage(Box::new(e))
    }
}

/// Start of the 5-minute metrics bucket holding `ms`.
pub fn metrics_bucket(ms: u64) -> u64 {
    ms - ms % METRICS_BUCKET_MS
}

/// Start of the hourly failed-set bucket holding `ms`.
pub fn failed_bucket(ms: u64) -> u64 {
    ms - ms % FAILED_BUCKET_MS
}

/// Oldest score still inside the failed-set window at `now_ms`.
pub fn failed_window_start(now_ms: u64) -> u64 {
    failed_bucket(now_ms).saturating_sub((FAILED_BUCKETS - 1) * FAILED_BUCKET_MS)
}

/// The highest score a failed-set page starting at `marker` lists at `now_ms` (the original's
/// rule: no marker or 0 starts at the newest entry), or `None` when the marker's hour is outside
/// the 24 hourly buckets, which gives an empty, untruncated page.
pub fn failed_page_upper(marker: Option<u64>, now_ms: u64) -> Option<u64> {
    match marker {
        None | Some(0) => Some(u64::MAX),
        Some(m) => {
            let hour = failed_bucket(m);
            (hour >= failed_window_start(now_ms) && hour <= failed_bucket(now_ms)).then_some(m)
        }
    }
}

/// Opens the state store `[storage] store` names (sled in `db`, or MongoDB) on `clock`.
///
/// # Errors
/// [`StoreError::Invalid`] when the configured store is not part of this build or lacks its
/// section; any error of opening it.
pub async fn open(
    storage: &crate::config::StorageConfig,
    db: Option<&crate::durability::SledDb>,
    clock: crate::clock::SharedClock,
) -> Result<std::sync::Arc<dyn StateStore>, StoreError> {
    let store = open_inner(storage, db, clock).await?;
    #[cfg(feature = "test-util")]
    let store = crate::testkit::FaultyStore::wrap_from_env(store);
    Ok(store)
}

async fn open_inner(
    storage: &crate::config::StorageConfig,
    db: Option<&crate::durability::SledDb>,
    clock: crate::clock::SharedClock,
) -> Result<std::sync::Arc<dyn StateStore>, StoreError> {
    use crate::config::StoreKind;
    match (storage.store, db) {
        (StoreKind::Sled, Some(db)) => Ok(std::sync::Arc::new(SledStore::open(db.clone(), clock)?)),
        #[cfg(feature = "mongodb")]
        (StoreKind::Mongodb, _) => match &storage.mongodb {
            Some(m) => Ok(std::sync::Arc::new(MongoStore::open(m, clock).await?)),
            None => Err(StoreError::Invalid(
                "the mongodb store needs a [storage.mongodb] section".into(),
            )),
        },
        (StoreKind::Sled, None) => Err(StoreError::Invalid(
            "the sled store needs its database".into(),
        )),
        #[cfg(not(feature = "mongodb"))]
        (StoreKind::Mongodb, _) => Err(StoreError::Invalid(
            "the mongodb store is not available in this build (feature mongodb)".into(),
        )),
    }
}

/// The state store.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The name of the implementation (`sled`, `mongodb`).
    fn kind(&self) -> &'static str;

    /// The store's clock (ms since the epoch).
    fn now_ms(&self) -> u64;

    /// Whether calls may fail with [`StoreError::Unavailable`] (a store reached over the
    /// network). [`RetryingStore`] passes the calls of a store that never does straight
    /// through, without keeping a copy of an update to re-do it.
    fn may_be_unavailable(&self) -> bool {
        true
    }

    /// Applies `ops` atomically, all or nothing; returns for each op whether it changed
    /// anything (a replayed key change does not). Durable on return.
    async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError>;

    /// The record of a source key.
    async fn key_state(&self, bucket: &str, key: &str) -> Result<Option<KeyState>, StoreError>;

    /// Up to `limit` records of `bucket`'s keys starting with `prefix`, in key byte order,
    /// after `after` (or from the first).
    async fn key_states(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, KeyState)>, StoreError>;

    /// The records of the keys directly in directory `dir` (`""`, `a/`; keys with no further
    /// `/`), up to `limit` after `after`, and the names of the subdirectories with records
    /// (`a/sub/`), for a file source's scan; subtrees are skipped, not read.
    async fn key_children(
        &self,
        bucket: &str,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError>;

    /// The summary of directory `dir` of a file source, when stored.
    async fn dir_summary(&self, bucket: &str, dir: &str) -> Result<Option<u64>, StoreError>;

    /// The source bucket owning `bucket_match` site `site`: the one recorded, or `bucket`,
    /// recorded now when none was.
    async fn claim_namespace(&self, site: &str, bucket: &str) -> Result<String, StoreError>;

    /// A page (at most `limit`) of `site`'s failed set, newest first, starting at `marker`
    /// (a score: entries with a score at or below it) or at the newest entry.
    async fn failed_page(
        &self,
        site: &str,
        marker: Option<u64>,
        limit: usize,
    ) -> Result<FailedPage, StoreError>;

    /// The failed-set entry of `(site, version)`, if present and not expired.
    async fn failed_entry(
        &self,
        site: &str,
        version: &VersionRef,
    ) -> Result<Option<FailedEntry>, StoreError>;

    /// Number of entries in `site`'s failed set (24 h window).
    async fn failed_count(&self, site: &str) -> Result<u64, StoreError>;

    /// The 288 five-minute buckets of a site metric, newest (current) first.
    async fn metric_buckets(&self, site: &str, metric: Metric) -> Result<Vec<u64>, StoreError>;

    /// The 288 five-minute buckets of an object metric, newest (current) first.
    async fn object_metric_buckets(
        &self,
        site: &str,
        version: &VersionRef,
        metric: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError>;

    /// The pending counters `(ops, bytes)` of a site (raw, may be negative).
    async fn pending(&self, site: &str) -> Result<(i64, i64), StoreError>;

    /// `site`'s [`SiteTotals`]. By default computed from [`StateStore::pending`],
    /// [`StateStore::failed_count`] and [`StateStore::metric_buckets`] (a store shared by
    /// several processes, like MongoDB, must read them); the sled store keeps them up to date
    /// in memory as it commits.
    async fn site_totals(&self, site: &str) -> Result<SiteTotals, StoreError> {
        let mut t = SiteTotals {
            pending: self.pending(site).await?,
            failed: self.failed_count(site).await?,
            ..SiteTotals::default()
        };
        for m in Metric::ALL {
            let buckets = self.metric_buckets(site, m).await?;
            t.sums[m.index()] = buckets.iter().fold(0u64, |s, v| s.saturating_add(*v));
            for (slot, v) in t.recent[m.index()].iter_mut().zip(&buckets) {
                *slot = *v;
            }
        }
        Ok(t)
    }

    /// The pause state of `site` for `service` (`crr`, ...); `None` if never set.
    async fn pause_state(
        &self,
        service: &str,
        site: &str,
    ) -> Result<Option<PauseState>, StoreError>;

    /// Writes the pause state. Durable on return.
    async fn set_pause_state(
        &self,
        service: &str,
        site: &str,
        state: PauseState,
    ) -> Result<(), StoreError>;

    /// A source cursor.
    async fn cursor(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The multipart uploads recorded for `site`, as `(id, intent)`.
    async fn uploads(&self, site: &str) -> Result<Vec<(String, UploadIntent)>, StoreError>;

    /// Takes the lock `name` for `ttl_ms` if it is free or expired. Durable on return.
    async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Releases the lock `name`.
    async fn unlock(&self, name: &str) -> Result<(), StoreError>;

    /// Deletes expired failed entries, metrics buckets and locks; returns how many keys went.
    async fn expire(&self) -> Result<u64, StoreError>;

    /// Fails when the store cannot serve requests.
    fn check(&self) -> Result<(), StoreError>;
}

/// Refuses an empty site, cursor or other name, or one with a NUL byte (the stores use NUL as
/// a key separator).
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.as_bytes().contains(&0) {
        return Err(StoreError::Invalid(format!(
            "{what} name {name:?} is empty or has a NUL byte"
        )));
    }
    Ok(())
}

/// [`check_name`] on every name `ops` carry, before a store applies them.
pub(crate) fn check_op_names(ops: &[StoreOp]) -> Result<(), StoreError> {
    for op in ops {
        let (what, name) = match op {
            StoreOp::AddMetric { site, .. }
            | StoreOp::AddObjectMetric { site, .. }
            | StoreOp::AddPending { site, .. }
            | StoreOp::AddFailed { site, .. } => ("site", site.as_str()),
            StoreOp::PutCursor { name, .. } => ("cursor", name.as_str()),
            StoreOp::PutUpload { site, id, .. } | StoreOp::DeleteUpload { site, id } => {
                check_name("upload", id)?;
                ("site", site.as_str())
            }
            StoreOp::PutDirSummary { bucket, .. } | StoreOp::DeleteDirSummaries { bucket, .. } => {
                ("bucket", bucket.as_str())
            }
            StoreOp::ClaimNamespace { site, bucket } => {
                check_name("bucket", bucket)?;
                ("site", site.as_str())
            }
            StoreOp::Key { bucket, change, .. } => {
                check_name("bucket", bucket)?;
                match change {
                    KeyChange::Queued { sites, .. } | KeyChange::Requeued { sites, .. } => {
                        for s in sites {
                            check_name("site", s)?;
                        }
                        continue;
                    }
                    KeyChange::Outcome { site, .. }
                    | KeyChange::Retry { site, .. }
                    | KeyChange::RetryUndone { site, .. }
                    | KeyChange::Unlisted { site, .. }
                    | KeyChange::SiteRemoved { site } => ("site", site.as_str()),
                    KeyChange::Collected { .. } => continue,
                }
            }
        };
        check_name(what, name)?;
    }
    Ok(())
}
