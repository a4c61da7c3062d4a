//! [`SledStore`]: the state store on sled.
//!
//! Everything lives in one tree, `state`, so one sled transaction covers any multi-key update.
//! Key layout (site and service names never contain a NUL byte; `vref` is
//! [`VersionRef::encode`], a length-prefixed encoding):
//!
//! ```text
//! "V"                                     -> u32 BE format version
//! "K" bucket 0x00 key                     -> [1][bincode KeyState]   one record per source key
//! "E" expiry u64 BE bucket 0x00 key       -> queued_ms u64 BE    a replicated deletion's record
//!                                                                 to drop once expired
//! "F" site 0x00 score u64 BE              -> vref                failed set, by time
//! "G" site 0x00 vref                      -> [1][bincode (score u64, FailedInfo)]
//!                                                                 failed set, by version
//! "H" site 0x00 hour u64 BE               -> u64 BE              entries per hourly bucket
//! "M" site 0x00 metric u8 bucket u64 BE   -> u64 BE              5-minute site counters
//! "O" bucket u64 BE metric u8 site 0x00 vref -> u64 BE           5-minute object counters
//! "P" site 0x00 ("o" | "b")               -> i64 BE              pending ops / bytes
//! "D" bucket 0x00 dir                      -> u64 BE              a file source directory's summary
//! "N" site                                -> bucket              owner of a bucket_match site
//! "S" service 0x00 site                   -> JSON PauseState
//! "C" name                                -> bytes               source cursors
//! "L" name                                -> u64 BE              lock expiry (ms)
//! "U" site 0x00 id                        -> [1][bincode UploadIntent] a multipart upload started
//! ```

use std::cell::RefCell;
use std::sync::Arc;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::aggregates::{Aggregates, Delta};
use super::{
    check_name, check_op_names, failed_bucket, failed_page_upper, failed_window_start,
    metrics_bucket, FailedEntry, FailedPage, Metric, ObjectMetric, PauseState, SiteTotals,
    StateStore, StoreError, StoreOp, UploadIntent, DELETED_KEY_TTL_MS, FAILED_BUCKETS,
    FAILED_BUCKET_MS, METRICS_BUCKETS, METRICS_BUCKET_MS,
};
use crate::clock::SharedClock;
use crate::durability::SledDb;
use crate::model::{KeyState, ReplicationStatus, VersionRef};
use crate::transitions::{self, FailedInfo, KeyChange};

/// On-disk format version of the state store. Version 1 kept one record per version (`R`).
pub const FORMAT_VERSION: u32 = 2;

/// Leading byte of encoded values (records, failed entries), so a later layout can be told
/// apart.
const VALUE_VERSION: u8 = 1;

/// Transactions of at most this many guards and operations run on the calling task.
const INLINE_OPS: usize = 16;

/// The embedded state store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    db: SledDb,
    tree: sled::Tree,
    clock: SharedClock,
    /// What the metric routes read, kept up to date as transactions commit.
    agg: Arc<Aggregates>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("db", &self.db).finish()
    }
}

fn be_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn be_i64(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

fn site_prefix(tag: u8, site: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(site.len() + 2);
    k.push(tag);
    k.extend_from_slice(site.as_bytes());
    k.push(0);
    k
}

fn u_key(site: &str, id: &str) -> Vec<u8> {
    let mut k = site_prefix(b'U', site);
    k.extend_from_slice(id.as_bytes());
    k
}

fn k_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + key.len() + 2);
    k.push(b'K');
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn d_key(bucket: &str, dir: &str) -> Vec<u8> {
    let mut k = k_key(bucket, dir);
    if let Some(t) = k.first_mut() {
        *t = b'D';
    }
    k
}

fn e_key(expiry: u64, bucket: &str, key: &str) -> Vec<u8> {
    let mut k = vec![b'E'];
    k.extend_from_slice(&expiry.to_be_bytes());
    k.extend_from_slice(&k_key(bucket, key)[1..]);
    k
}

fn f_key(site: &str, score: u64) -> Vec<u8> {
    let mut k = site_prefix(b'F', site);
    k.extend_from_slice(&score.to_be_bytes());
    k
}

fn g_key(site: &str, v: &VersionRef) -> Vec<u8> {
    let mut k = site_prefix(b'G', site);
    k.extend_from_slice(&v.encode());
    k
}

fn h_key(site: &str, hour: u64) -> Vec<u8> {
    let mut k = site_prefix(b'H', site);
    k.extend_from_slice(&hour.to_be_bytes());
    k
}

fn m_key(site: &str, metric: Metric, bucket: u64) -> Vec<u8> {
    let mut k = site_prefix(b'M', site);
    k.push(metric.code());
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

fn o_key(bucket: u64, metric: ObjectMetric, site: &str, v: &VersionRef) -> Vec<u8> {
    let mut k = vec![b'O'];
    k.extend_from_slice(&bucket.to_be_bytes());
    k.push(metric.code());
    k.extend_from_slice(site.as_bytes());
    k.push(0);
    k.extend_from_slice(&v.encode());
    k
}

fn p_key(site: &str, which: u8) -> Vec<u8> {
    let mut k = site_prefix(b'P', site);
    k.push(which);
    k
}

fn s_key(service: &str, site: &str) -> Vec<u8> {
    let mut k = site_prefix(b'S', service);
    k.extend_from_slice(site.as_bytes());
    k
}

fn named_key(tag: u8, name: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(name.as_bytes());
    k
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    if let Ok(body) = bincode::serde::encode_to_vec(value, bincode::config::standard()) {
        out.extend_from_slice(&body);
    }
    out
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => {
            bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }
        _ => Err(StoreError::Corrupt(format!("{what}: unknown encoding"))),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The aggregate deltas of one transaction attempt (see [`super::aggregates`]); reset when
/// sled retries the transaction, applied once it commits.
type Rec = RefCell<Vec<Delta>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_key(tx: &TransactionalTree, k: &[u8]) -> TxResult<Option<KeyState>> {
    match tx.get(k)? {
        Some(bytes) => match decode("key record", &bytes) {
            Ok(i) => Ok(Some(i)),
            Err(e) => abort(e),
        },
        None => Ok(None),
    }
}

/// Adds `delta` to the counter under `key` (saturating, removed at 0); returns the change made.
fn tx_add_u64(tx: &TransactionalTree, key: Vec<u8>, delta: i64) -> TxResult<i64> {
    let cur = tx.get(&key)?.map(|v| be_u64(&v)).unwrap_or(0);
    let next = if delta >= 0 {
        cur.saturating_add(delta as u64)
    } else {
        cur.saturating_sub(delta.unsigned_abs())
    };
    if next == 0 {
        tx.remove(key)?;
    } else {
        tx.insert(key, &next.to_be_bytes())?;
    }
    Ok(
        (i128::from(next) - i128::from(cur)).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
            as i64,
    )
}

fn tx_add_metric(
    tx: &TransactionalTree,
    site: &str,
    metric: Metric,
    value: u64,
    at_ms: u64,
    rec: &Rec,
) -> TxResult<()> {
    if value > 0 {
        let bucket = metrics_bucket(at_ms);
        let delta = tx_add_u64(
            tx,
            m_key(site, metric, bucket),
            value.min(i64::MAX as u64) as i64,
        )?;
        rec.borrow_mut().push(Delta::Metric {
            site: site.to_string(),
            metric,
            bucket,
            delta,
        });
    }
    Ok(())
}

fn tx_hour(tx: &TransactionalTree, site: &str, hour: u64, delta: i64, rec: &Rec) -> TxResult<()> {
    let delta = tx_add_u64(tx, h_key(site, hour), delta)?;
    rec.borrow_mut().push(Delta::Hour {
        site: site.to_string(),
        hour,
        delta,
    });
    Ok(())
}

fn tx_remove_failed(tx: &TransactionalTree, site: &str, v: &VersionRef, rec: &Rec) -> TxResult<()> {
    let g = g_key(site, v);
    if let Some(old) = tx.get(&g)? {
        let (score, _): (u64, FailedInfo) = match decode("failed entry", &old) {
            Ok(x) => x,
            Err(e) => return abort(e),
        };
        tx.remove(g)?;
        tx.remove(f_key(site, score))?;
        tx_hour(tx, site, failed_bucket(score), -1, rec)?;
        rec.borrow_mut().push(Delta::Failed {
            site: site.to_string(),
        });
    }
    Ok(())
}

/// Puts `(site, v)` in the failed set at `score_ms` (moved there if already present: one
/// entry per pair). Scores are unique per site: a taken score is bumped by 1 ms, so markers
/// page without duplicates.
fn tx_add_failed(
    tx: &TransactionalTree,
    site: &str,
    v: &VersionRef,
    info: &FailedInfo,
    score_ms: u64,
    rec: &Rec,
) -> TxResult<()> {
    tx_remove_failed(tx, site, v, rec)?;
    let mut score = score_ms;
    while tx.get(f_key(site, score))?.is_some() {
        score += 1;
    }
    tx.insert(f_key(site, score), v.encode())?;
    tx.insert(g_key(site, v), encode(&(score, info)))?;
    tx_hour(tx, site, failed_bucket(score), 1, rec)?;
    rec.borrow_mut().push(Delta::Failed {
        site: site.to_string(),
    });
    Ok(())
}

fn tx_add_pending(
    tx: &TransactionalTree,
    site: &str,
    ops: i64,
    bytes: i64,
    rec: &Rec,
) -> TxResult<()> {
    let mut made = [0i64; 2];
    for (i, (which, delta)) in [(b'o', ops), (b'b', bytes)].into_iter().enumerate() {
        if delta == 0 {
            continue;
        }
        let k = p_key(site, which);
        let cur = tx.get(&k)?.map(|v| be_i64(&v)).unwrap_or(0);
        let next = cur.saturating_add(delta);
        tx.insert(k, &next.to_be_bytes())?;
        made[i] = next.wrapping_sub(cur);
    }
    if made != [0, 0] {
        rec.borrow_mut().push(Delta::Pending {
            site: site.to_string(),
            ops: made[0],
            bytes: made[1],
        });
    }
    Ok(())
}

/// Applies a key change and its effects; returns whether it changed anything.
fn tx_key_change(
    tx: &TransactionalTree,
    bucket: &str,
    key: &str,
    change: &KeyChange,
    now: u64,
    rec: &Rec,
) -> TxResult<bool> {
    let k = k_key(bucket, key);
    let old = tx_key(tx, &k)?;
    let (new, fx) = transitions::apply(bucket, key, old, change, now);
    if !fx.changed {
        return Ok(false);
    }
    match &new {
        Some(state) => {
            tx.insert(k.as_slice(), encode(state))?;
            let settled = state.deleted
                && state
                    .sites
                    .iter()
                    .all(|s| s.status == ReplicationStatus::Completed);
            if settled {
                // The value names the write it settles: a key written again since keeps
                // its record when this entry comes due.
                tx.insert(
                    e_key(now.saturating_add(DELETED_KEY_TTL_MS), bucket, key),
                    &state.queued_ms.to_be_bytes(),
                )?;
            }
        }
        None => {
            tx.remove(k.as_slice())?;
        }
    }
    for (site, ops, bytes) in &fx.pending {
        tx_add_pending(tx, site, *ops, *bytes, rec)?;
    }
    for (site, metric, value) in &fx.metrics {
        tx_add_metric(tx, site, *metric, *value, now, rec)?;
    }
    for (site, v) in &fx.failed_remove {
        tx_remove_failed(tx, site, v, rec)?;
    }
    for (site, v, info) in &fx.failed_add {
        // Listed at the time of its last attempt (the change's time if unknown).
        let at = if info.last_attempt_ms > 0 {
            info.last_attempt_ms
        } else {
            now
        };
        tx_add_failed(tx, site, v, info, at, rec)?;
    }
    Ok(true)
}

fn apply_op(tx: &TransactionalTree, op: &StoreOp, now: u64, rec: &Rec) -> TxResult<bool> {
    match op {
        StoreOp::Key {
            bucket,
            key,
            change,
        } => return tx_key_change(tx, bucket, key, change, now, rec),
        StoreOp::AddMetric {
            site,
            metric,
            value,
            at_ms,
        } => tx_add_metric(tx, site, *metric, *value, *at_ms, rec)?,
        StoreOp::AddPending { site, ops, bytes } => tx_add_pending(tx, site, *ops, *bytes, rec)?,
        StoreOp::AddFailed {
            site,
            version,
            info,
            score_ms,
        } => tx_add_failed(tx, site, version, info, *score_ms, rec)?,
        StoreOp::AddObjectMetric {
            site,
            version,
            metric,
            value,
            at_ms,
        } => {
            if *value > 0 {
                tx_add_u64(
                    tx,
                    o_key(metrics_bucket(*at_ms), *metric, site, version),
                    *value as i64,
                )?;
            }
        }
        StoreOp::PutCursor { name, value } => {
            tx.insert(named_key(b'C', name), value.as_slice())?;
        }
        StoreOp::PutUpload { site, id, intent } => {
            tx.insert(u_key(site, id), encode(intent))?;
        }
        StoreOp::DeleteUpload { site, id } => {
            tx.remove(u_key(site, id))?;
        }
        StoreOp::PutDirSummary {
            bucket,
            dir,
            summary,
        } => {
            tx.insert(d_key(bucket, dir), &summary.to_be_bytes())?;
        }
        StoreOp::DeleteDirSummaries { .. } => {
            // A range removal, done outside transactions (see `SledStore::apply`).
        }
        StoreOp::ClaimNamespace { site, bucket } => {
            let k = named_key(b'N', site);
            if tx.get(&k)?.is_none() {
                tx.insert(k, bucket.as_bytes())?;
            } else {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl SledStore {
    /// Opens the state store kept in `db`, checking its format version.
    ///
    /// # Errors
    /// `StoreError::UnsupportedFormat` or `StoreError::Storage`.
    pub fn open(db: SledDb, clock: SharedClock) -> Result<SledStore, StoreError> {
        let tree = db.db().open_tree("state")?;
        match tree.get("V")? {
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None => {
                tree.insert("V", &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        // One set of aggregates per database, whichever handle opened the store first: two
        // stores on one database would otherwise each miss the other's changes.
        let agg = db
            .extension(|| Aggregates::load(&tree))?
            .ok_or_else(|| StoreError::Invalid("database extension of another type".into()))?;
        Ok(SledStore {
            db,
            tree,
            clock,
            agg,
        })
    }

    /// The embedded database this store lives in.
    pub fn db(&self) -> &SledDb {
        &self.db
    }

    fn buckets_newest_first(
        &self,
        mut get: impl FnMut(u64) -> Result<u64, StoreError>,
    ) -> Result<Vec<u64>, StoreError> {
        let current = metrics_bucket(self.now_ms());
        let mut out = Vec::with_capacity(METRICS_BUCKETS);
        for i in 0..METRICS_BUCKETS as u64 {
            match current.checked_sub(i * METRICS_BUCKET_MS) {
                Some(b) => out.push(get(b)?),
                None => out.push(0),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for SledStore {
    /// The embedded store is never out of reach: its errors are all fatal.
    fn may_be_unavailable(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "sled"
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
        self.db.check()?;
        check_op_names(&ops)?;
        let now = self.now_ms();
        let n_ops = ops.len();
        let ranges: Vec<StoreOp> = ops
            .iter()
            .filter(|o| matches!(o, StoreOp::DeleteDirSummaries { .. }))
            .cloned()
            .collect();
        let run = move |tree: &sled::Tree| {
            let rec: Rec = RefCell::new(Vec::new());
            tree.transaction(|tx| {
                // sled may run this again after a conflict: only the last attempt counts.
                rec.borrow_mut().clear();
                let mut changed = Vec::with_capacity(ops.len());
                for op in &ops {
                    changed.push(apply_op(tx, op, now, &rec)?);
                }
                Ok(changed)
            })
            .map(|changed| (changed, rec.into_inner()))
        };
        // A small transaction is a few microseconds of in-memory work (sled writes to disk in
        // its own threads): run it in place rather than pay a hop to the blocking pool.
        let changed = if n_ops <= INLINE_OPS {
            run(&self.tree)
        } else {
            let tree = self.tree.clone();
            tokio::task::spawn_blocking(move || run(&tree))
                .await
                .map_err(|e| StoreError::Storage(Box::new(e)))?
        };
        let changed = match changed {
            Ok((c, deltas)) => {
                self.agg.apply(deltas);
                c
            }
            Err(sled::transaction::TransactionError::Abort(e)) => return Err(e),
            Err(sled::transaction::TransactionError::Storage(e)) => {
                return Err(self.db.poison_on(&e).into())
            }
        };
        // Removals of whole ranges (a removed directory's summaries) after the transaction:
        // a crash in between only leaves summaries that the next pass finds stale.
        let mut removed = false;
        for op in &ranges {
            if let StoreOp::DeleteDirSummaries { bucket, prefix } = op {
                let start = d_key(bucket, prefix);
                for item in self.tree.scan_prefix(&start) {
                    let (k, _) = item?;
                    if let Err(e) = self.tree.remove(k) {
                        return Err(self.db.poison_on(&e).into());
                    }
                    removed = true;
                }
            }
        }
        if removed || changed.iter().any(|c| *c) {
            self.db.sync().await?;
        }
        Ok(changed)
    }

    async fn key_state(&self, bucket: &str, key: &str) -> Result<Option<KeyState>, StoreError> {
        check_name("bucket", bucket)?;
        match self.tree.get(k_key(bucket, key))? {
            Some(b) => Ok(Some(decode("key record", &b)?)),
            None => Ok(None),
        }
    }

    async fn key_states(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, KeyState)>, StoreError> {
        check_name("bucket", bucket)?;
        let tree = self.tree.clone();
        let head = k_key(bucket, prefix);
        let start = match after {
            // The smallest key after `after`: `after` followed by a NUL byte.
            Some(a) if a >= prefix => {
                let mut k = k_key(bucket, a);
                k.push(0);
                k
            }
            _ => head.clone(),
        };
        let base = k_key(bucket, "").len();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(limit.min(4096));
            for item in tree.range(start..) {
                let (k, v) = item?;
                if !k.starts_with(&head) || out.len() >= limit {
                    break;
                }
                let key = String::from_utf8(k.get(base..).unwrap_or_default().to_vec())
                    .map_err(|_| StoreError::Corrupt("key record name".into()))?;
                out.push((key, decode("key record", &v)?));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Storage(Box::new(e)))?
    }

    async fn key_children(
        &self,
        bucket: &str,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError> {
        check_name("bucket", bucket)?;
        let tree = self.tree.clone();
        let head = k_key(bucket, dir);
        let base = k_key(bucket, "").len();
        let mut start = match after {
            Some(a) if a >= dir => {
                let mut k = k_key(bucket, a);
                k.push(0);
                k
            }
            _ => head.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut subdirs = Vec::new();
            'seek: loop {
                for item in tree.range(start.clone()..) {
                    let (k, v) = item?;
                    if !k.starts_with(&head) || out.len() >= limit {
                        break 'seek;
                    }
                    let rest = k.get(head.len()..).unwrap_or_default();
                    if let Some(slash) = rest.iter().position(|b| *b == b'/') {
                        // A subtree: name it, then skip past it (`/` + 1 is `0`).
                        let sub = k.get(base..head.len() + slash + 1).unwrap_or_default();
                        subdirs.push(
                            String::from_utf8(sub.to_vec())
                                .map_err(|_| StoreError::Corrupt("key record name".into()))?,
                        );
                        let mut next = k.get(..head.len() + slash).unwrap_or_default().to_vec();
                        next.push(b'0');
                        start = next;
                        continue 'seek;
                    }
                    let key = String::from_utf8(k.get(base..).unwrap_or_default().to_vec())
                        .map_err(|_| StoreError::Corrupt("key record name".into()))?;
                    out.push((key, decode("key record", &v)?));
                }
                break;
            }
            Ok((out, subdirs))
        })
        .await
        .map_err(|e| StoreError::Storage(Box::new(e)))?
    }

    async fn dir_summary(&self, bucket: &str, dir: &str) -> Result<Option<u64>, StoreError> {
        check_name("bucket", bucket)?;
        Ok(self.tree.get(d_key(bucket, dir))?.map(|v| be_u64(&v)))
    }

    async fn claim_namespace(&self, site: &str, bucket: &str) -> Result<String, StoreError> {
        let op = StoreOp::ClaimNamespace {
            site: site.to_string(),
            bucket: bucket.to_string(),
        };
        self.apply(vec![op]).await?;
        match self.tree.get(named_key(b'N', site))? {
            Some(v) => String::from_utf8(v.to_vec())
                .map_err(|_| StoreError::Corrupt(format!("namespace owner of site {site}"))),
            None => Ok(bucket.to_string()),
        }
    }

    async fn failed_page(
        &self,
        site: &str,
        marker: Option<u64>,
        limit: usize,
    ) -> Result<FailedPage, StoreError> {
        check_name("site", site)?;
        let now = self.now_ms();
        let window_start = failed_window_start(now);
        let Some(upper) = failed_page_upper(marker, now) else {
            return Ok(FailedPage::default());
        };
        let tree = self.tree.clone();
        let site = site.to_string();
        tokio::task::spawn_blocking(move || {
            let lo = f_key(&site, window_start);
            let hi = f_key(&site, upper);
            let mut entries = Vec::with_capacity(limit.min(1024));
            let mut next_marker = None;
            for item in tree.range(lo..=hi).rev() {
                let (k, v) = item?;
                let score = k.len().checked_sub(8).map(|i| be_u64(&k[i..])).unwrap_or(0);
                if entries.len() >= limit {
                    next_marker = Some(score);
                    break;
                }
                let version = VersionRef::decode(&v)
                    .ok_or_else(|| StoreError::Corrupt(format!("failed entry of site {site}")))?;
                let info = match tree.get(g_key(&site, &version))? {
                    Some(g) => decode::<(u64, FailedInfo)>("failed entry", &g)?.1,
                    None => continue,
                };
                entries.push(FailedEntry {
                    site: site.clone(),
                    version,
                    score_ms: score,
                    info,
                });
            }
            Ok(FailedPage {
                entries,
                next_marker,
            })
        })
        .await
        .map_err(|e| StoreError::Storage(Box::new(e)))?
    }

    async fn failed_entry(
        &self,
        site: &str,
        version: &VersionRef,
    ) -> Result<Option<FailedEntry>, StoreError> {
        check_name("site", site)?;
        let window_start = failed_window_start(self.now_ms());
        Ok(match self.tree.get(g_key(site, version))? {
            Some(v) => {
                let (score, info): (u64, FailedInfo) = decode("failed entry", &v)?;
                (score >= window_start).then(|| FailedEntry {
                    site: site.to_string(),
                    version: version.clone(),
                    score_ms: score,
                    info,
                })
            }
            None => None,
        })
    }

    async fn failed_count(&self, site: &str) -> Result<u64, StoreError> {
        check_name("site", site)?;
        let window_start = failed_window_start(self.now_ms());
        let mut total = 0;
        for item in self
            .tree
            .range(h_key(site, window_start)..=h_key(site, u64::MAX))
        {
            let (_, v) = item?;
            total += be_u64(&v);
        }
        Ok(total)
    }

    async fn metric_buckets(&self, site: &str, metric: Metric) -> Result<Vec<u64>, StoreError> {
        check_name("site", site)?;
        let current = metrics_bucket(self.now_ms());
        let oldest = current.saturating_sub((METRICS_BUCKETS as u64 - 1) * METRICS_BUCKET_MS);
        let mut out = vec![0u64; METRICS_BUCKETS];
        for item in self
            .tree
            .range(m_key(site, metric, oldest)..=m_key(site, metric, current))
        {
            let (k, v) = item?;
            let b = k.len().checked_sub(8).map(|i| be_u64(&k[i..])).unwrap_or(0);
            let idx = ((current - b.min(current)) / METRICS_BUCKET_MS) as usize;
            if let Some(slot) = out.get_mut(idx) {
                *slot = be_u64(&v);
            }
        }
        Ok(out)
    }

    async fn object_metric_buckets(
        &self,
        site: &str,
        version: &VersionRef,
        metric: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError> {
        check_name("site", site)?;
        self.buckets_newest_first(|b| {
            Ok(self
                .tree
                .get(o_key(b, metric, site, version))?
                .map(|v| be_u64(&v))
                .unwrap_or(0))
        })
    }

    async fn pending(&self, site: &str) -> Result<(i64, i64), StoreError> {
        check_name("site", site)?;
        let ops = self
            .tree
            .get(p_key(site, b'o'))?
            .map(|v| be_i64(&v))
            .unwrap_or(0);
        let bytes = self
            .tree
            .get(p_key(site, b'b'))?
            .map(|v| be_i64(&v))
            .unwrap_or(0);
        Ok((ops, bytes))
    }

    async fn site_totals(&self, site: &str) -> Result<SiteTotals, StoreError> {
        check_name("site", site)?;
        Ok(self.agg.totals(site, self.now_ms()))
    }

    async fn pause_state(
        &self,
        service: &str,
        site: &str,
    ) -> Result<Option<PauseState>, StoreError> {
        check_name("service", service)?;
        match self.tree.get(s_key(service, site))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("pause state of {service}/{site}: {e}"))),
            None => Ok(None),
        }
    }

    async fn set_pause_state(
        &self,
        service: &str,
        site: &str,
        state: PauseState,
    ) -> Result<(), StoreError> {
        check_name("service", service)?;
        check_name("site", site)?;
        self.db.check()?;
        let json = serde_json::to_vec(&state).map_err(|e| StoreError::Storage(Box::new(e)))?;
        if let Err(e) = self.tree.insert(s_key(service, site), json) {
            return Err(self.db.poison_on(&e).into());
        }
        self.db.sync().await?;
        Ok(())
    }

    async fn cursor(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(named_key(b'C', name))?.map(|v| v.to_vec()))
    }

    async fn uploads(&self, site: &str) -> Result<Vec<(String, UploadIntent)>, StoreError> {
        let prefix = site_prefix(b'U', site);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let id =
                String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default()).into_owned();
            out.push((id, decode::<UploadIntent>("upload intent", &v)?));
        }
        Ok(out)
    }

    async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        self.db.check()?;
        let now = self.now_ms();
        let key = named_key(b'L', name);
        let tree = self.tree.clone();
        let taken = tokio::task::spawn_blocking(move || {
            tree.transaction(|tx| {
                if let Some(v) = tx.get(&key)? {
                    if be_u64(&v) > now {
                        return Ok(false);
                    }
                }
                tx.insert(key.as_slice(), &now.saturating_add(ttl_ms).to_be_bytes())?;
                Ok::<bool, ConflictableTransactionError<StoreError>>(true)
            })
        })
        .await
        .map_err(|e| StoreError::Storage(Box::new(e)))?;
        let taken = match taken {
            Ok(t) => t,
            Err(sled::transaction::TransactionError::Abort(e)) => return Err(e),
            Err(sled::transaction::TransactionError::Storage(e)) => {
                return Err(self.db.poison_on(&e).into())
            }
        };
        if taken {
            self.db.sync().await?;
        }
        Ok(taken)
    }

    async fn unlock(&self, name: &str) -> Result<(), StoreError> {
        self.db.check()?;
        self.tree.remove(named_key(b'L', name))?;
        self.db.sync().await?;
        Ok(())
    }

    async fn expire(&self) -> Result<u64, StoreError> {
        self.db.check()?;
        let now = self.now_ms();
        let tree = self.tree.clone();
        let removed = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let mut removed = 0u64;
            let window_start = failed_window_start(now);
            // Failed set: find sites through their hourly counters.
            let mut sites: Vec<Vec<u8>> = Vec::new();
            for item in tree.scan_prefix(b"H") {
                let (k, _) = item?;
                if k.len() < 10 {
                    continue;
                }
                let site = k[1..k.len() - 9].to_vec();
                if sites.last() != Some(&site) {
                    sites.push(site);
                }
            }
            for site_bytes in sites {
                let site = String::from_utf8_lossy(&site_bytes).into_owned();
                let lo = f_key(&site, 0);
                let hi = f_key(&site, window_start);
                for item in tree.range(lo..hi) {
                    let (k, v) = item?;
                    let score = k.len().checked_sub(8).map(|i| be_u64(&k[i..])).unwrap_or(0);
                    tree.remove(&k)?;
                    if let Some(version) = VersionRef::decode(&v) {
                        let g = g_key(&site, &version);
                        let listed = match tree.get(&g)? {
                            Some(x) => decode::<(u64, FailedInfo)>("failed entry", &x)?.0,
                            None => u64::MAX,
                        };
                        if listed == score {
                            tree.remove(g)?;
                        }
                    }
                    removed += 1;
                }
                for item in tree.range(h_key(&site, 0)..h_key(&site, window_start)) {
                    let (k, _) = item?;
                    tree.remove(k)?;
                    removed += 1;
                }
            }
            // Site metrics older than 24 h.
            let oldest = metrics_bucket(now)
                .saturating_sub((METRICS_BUCKETS as u64 - 1) * METRICS_BUCKET_MS);
            for item in tree.scan_prefix(b"M") {
                let (k, _) = item?;
                let b = k.len().checked_sub(8).map(|i| be_u64(&k[i..])).unwrap_or(0);
                if b < oldest {
                    tree.remove(k)?;
                    removed += 1;
                }
            }
            // Object metrics: keyed by time first.
            let mut hi = vec![b'O'];
            hi.extend_from_slice(&oldest.to_be_bytes());
            for item in tree.range(b"O".to_vec()..hi) {
                let (k, _) = item?;
                tree.remove(k)?;
                removed += 1;
            }
            // Records of keys deleted at the source, replicated everywhere, kept their TTL.
            let mut hi = vec![b'E'];
            hi.extend_from_slice(&now.to_be_bytes());
            for item in tree.range(b"E".to_vec()..hi) {
                let (k, queued) = item?;
                tree.remove(&k)?;
                removed += 1;
                let Some(rest) = k.get(9..) else { continue };
                let mut kk = vec![b'K'];
                kk.extend_from_slice(rest);
                let settled = match tree.get(&kk)? {
                    Some(v) => {
                        let state: KeyState = decode("key record", &v)?;
                        // Written again (and maybe deleted again) since: its own entry says.
                        state.queued_ms == be_u64(&queued)
                            && state.deleted
                            && state
                                .sites
                                .iter()
                                .all(|s| s.status == ReplicationStatus::Completed)
                    }
                    None => false,
                };
                // A key written again since then keeps its record.
                if settled {
                    tree.remove(kk)?;
                    removed += 1;
                }
            }
            // Expired locks.
            for item in tree.scan_prefix(b"L") {
                let (k, v) = item?;
                if be_u64(&v) <= now {
                    tree.remove(k)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| StoreError::Storage(Box::new(e)))??;
        if removed > 0 {
            self.db.sync().await?;
        }
        Ok(removed)
    }

    fn check(&self) -> Result<(), StoreError> {
        Ok(self.db.check()?)
    }
}

/// Shared handle to a state store.
pub type SharedStore = Arc<dyn StateStore>;

#[allow(dead_code)]
const _: u64 = FAILED_BUCKETS * FAILED_BUCKET_MS;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::durability::Durability;
    use crate::error::FailureReason;
    use crate::store::METRICS_BUCKET_MS;
    use crate::transitions::{QueuedVersion, SiteOutcome};

    /// What the totals must be: the trait's default, read from the tree.
    async fn from_tree(store: &SledStore, site: &str) -> SiteTotals {
        let mut t = SiteTotals {
            pending: store.pending(site).await.unwrap(),
            failed: store.failed_count(site).await.unwrap(),
            ..SiteTotals::default()
        };
        for m in Metric::ALL {
            let b = store.metric_buckets(site, m).await.unwrap();
            t.sums[m.index()] = b.iter().sum();
            for (slot, v) in t.recent[m.index()].iter_mut().zip(&b) {
                *slot = *v;
            }
        }
        t
    }

    fn numbers(t: &SiteTotals) -> (i64, i64, u64, [u64; 6], [[u64; 4]; 6]) {
        (t.pending.0, t.pending.1, t.failed, t.sums, t.recent)
    }

    fn failed(i: u64, at: u64) -> FailedInfo {
        FailedInfo {
            size: 10 + i,
            written_ms: at,
            reason: FailureReason::ServerError,
            attempts: 3,
            last_error: format!("error {i}"),
            last_attempt_ms: at,
        }
    }

    #[tokio::test]
    async fn maintained_totals_match_the_tree_through_changes_windows_and_a_reopen() {
        const T0: u64 = 1_700_000_000_000;
        let dir = std::env::temp_dir().join(format!(
            "backbeat-sled-totals-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let clock = ManualClock::new(T0);
        let db = SledDb::open(
            &dir,
            Durability::Group,
            std::time::Duration::from_millis(50),
        )
        .unwrap();
        let store = SledStore::open(db.clone(), clock.clone()).unwrap();
        // A second store on the same database shares the aggregates.
        let twin = SledStore::open(db.clone(), clock.clone()).unwrap();
        let sites = ["a", "b"];
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        for step in 0..400u64 {
            let site = sites[(next() % 2) as usize].to_string();
            let i = next() % 40;
            let v = VersionRef::new("bkt", format!("k{i}"), format!("v{}", next() % 3));
            let now = clock.now_ms();
            let op = match next() % 6 {
                0 => StoreOp::AddMetric {
                    site: site.clone(),
                    metric: Metric::ALL[(next() % 6) as usize],
                    value: next() % 100,
                    at_ms: now.saturating_sub((next() % 300) * METRICS_BUCKET_MS),
                },
                1 => StoreOp::AddPending {
                    site: site.clone(),
                    ops: (next() % 7) as i64 - 3,
                    bytes: (next() % 700) as i64 - 300,
                },
                2 => StoreOp::AddFailed {
                    site: site.clone(),
                    version: v.clone(),
                    info: failed(i, now),
                    score_ms: now.saturating_sub((next() % 30) * 3_600_000),
                },
                3 => StoreOp::key(
                    &v,
                    KeyChange::Queued {
                        version: QueuedVersion {
                            version_id: v.version_id.clone(),
                            etag: "e".into(),
                            size: 10 + i,
                            written_ms: now,
                            deleted: false,
                            backfill: false,
                        },
                        sites: vec![site.clone()],
                    },
                ),
                4 => StoreOp::key(
                    &v,
                    KeyChange::Outcome {
                        version_id: v.version_id.clone(),
                        site: site.clone(),
                        outcome: if next() % 2 == 0 {
                            SiteOutcome::Completed {
                                data_store_version_id: None,
                            }
                        } else {
                            SiteOutcome::Failed(failed(i, now))
                        },
                    },
                ),
                _ => StoreOp::key(
                    &v,
                    KeyChange::Retry {
                        version_id: v.version_id.clone(),
                        site: site.clone(),
                    },
                ),
            };
            let target = if step % 2 == 0 { &store } else { &twin };
            target.apply(vec![op]).await.unwrap();
            if step % 50 == 49 {
                // Windows slide: buckets and hours leave them.
                clock.advance(97 * 60_000);
                store.expire().await.unwrap();
            }
            for s in sites {
                let got = store.site_totals(s).await.unwrap();
                assert_eq!(
                    numbers(&got),
                    numbers(&from_tree(&store, s).await),
                    "site {s} after step {step}"
                );
            }
        }
        let before: Vec<_> = {
            let mut v = Vec::new();
            for s in sites {
                v.push(numbers(&store.site_totals(s).await.unwrap()));
            }
            v
        };
        drop((store, twin));
        db.flush_now().await.unwrap();
        drop(db);
        let db = SledDb::open(
            &dir,
            Durability::Group,
            std::time::Duration::from_millis(50),
        )
        .unwrap();
        let reopened = SledStore::open(db, clock).unwrap();
        for (s, want) in sites.iter().zip(before) {
            assert_eq!(numbers(&reopened.site_totals(s).await.unwrap()), want);
        }
        drop(reopened);
        let _ = std::fs::remove_dir_all(dir);
    }
}
