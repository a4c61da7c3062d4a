//! [`SledStore`]: the state store on sled.
//!
//! Everything lives in one tree, `state`, so one sled transaction covers any multi-key update.
//! Key layout (site and service names never contain a NUL byte; `vref` is
//! [`VersionRef::encode`], a length-prefixed encoding):
//!
//! ```text
//! "V"                                     -> u32 BE format version
//! "R" vref                                -> [1][bincode ReplicationInfo]
//! "F" site 0x00 score u64 BE              -> vref                failed set, by time
//! "G" site 0x00 vref                      -> score u64 BE        failed set, by version
//! "H" site 0x00 hour u64 BE               -> u64 BE              entries per hourly bucket
//! "M" site 0x00 metric u8 bucket u64 BE   -> u64 BE              5-minute site counters
//! "O" bucket u64 BE metric u8 site 0x00 vref -> u64 BE           5-minute object counters
//! "P" site 0x00 ("o" | "b")               -> i64 BE              pending ops / bytes
//! "S" service 0x00 site                   -> JSON PauseState
//! "C" name                                -> bytes               source cursors
//! "L" name                                -> u64 BE              lock expiry (ms)
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{
    check_name, check_op_names, failed_bucket, failed_page_upper, failed_window_start,
    metrics_bucket, FailedEntry, FailedPage, Guard, Metric, ObjectMetric, PauseState, StateStore,
    StoreError, StoreOp, FAILED_BUCKETS, FAILED_BUCKET_MS, METRICS_BUCKETS, METRICS_BUCKET_MS,
};
use crate::clock::SharedClock;
use crate::durability::SledDb;
use crate::model::{ReplicationInfo, VersionRef};

/// On-disk format version of the state store.
pub const FORMAT_VERSION: u32 = 1;

const INFO_VERSION: u8 = 1;

/// Transactions of at most this many guards and operations run on the calling task.
const INLINE_OPS: usize = 16;

/// The embedded state store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    db: SledDb,
    tree: sled::Tree,
    clock: SharedClock,
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

fn info_key(v: &VersionRef) -> Vec<u8> {
    let mut k = vec![b'R'];
    k.extend_from_slice(&v.encode());
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

fn encode_info(info: &ReplicationInfo) -> Vec<u8> {
    let mut out = vec![INFO_VERSION];
    if let Ok(body) = bincode::serde::encode_to_vec(info, bincode::config::standard()) {
        out.extend_from_slice(&body);
    }
    out
}

fn decode_info(bytes: &[u8]) -> Result<ReplicationInfo, StoreError> {
    match bytes.split_first() {
        Some((&INFO_VERSION, body)) => {
            bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map(|(info, _)| info)
                .map_err(|e| StoreError::Corrupt(format!("replication info: {e}")))
        }
        _ => Err(StoreError::Corrupt(
            "replication info: unknown version".into(),
        )),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_info(tx: &TransactionalTree, v: &VersionRef) -> TxResult<Option<ReplicationInfo>> {
    match tx.get(info_key(v))? {
        Some(bytes) => match decode_info(&bytes) {
            Ok(i) => Ok(Some(i)),
            Err(e) => abort(e),
        },
        None => Ok(None),
    }
}

fn tx_add_u64(tx: &TransactionalTree, key: Vec<u8>, delta: i64) -> TxResult<()> {
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
    Ok(())
}

fn tx_remove_failed(tx: &TransactionalTree, site: &str, v: &VersionRef) -> TxResult<()> {
    let g = g_key(site, v);
    if let Some(old) = tx.get(&g)? {
        let score = be_u64(&old);
        tx.remove(g)?;
        tx.remove(f_key(site, score))?;
        tx_add_u64(tx, h_key(site, failed_bucket(score)), -1)?;
    }
    Ok(())
}

fn eval_guard(tx: &TransactionalTree, g: &Guard) -> TxResult<bool> {
    Ok(match g {
        Guard::Absent(v) => tx.get(info_key(v))?.is_none(),
        Guard::Present(v) => tx.get(info_key(v))?.is_some(),
        Guard::SiteStatus {
            version,
            site,
            any_of,
        } => match tx_info(tx, version)? {
            Some(info) => info
                .site(site)
                .map(|s| any_of.contains(&s.status))
                .unwrap_or(false),
            None => false,
        },
    })
}

/// Applies `change` to `version`'s info, if any, and writes it back when it changed.
fn update_info(
    tx: &TransactionalTree,
    version: &VersionRef,
    change: impl FnOnce(&mut ReplicationInfo) -> bool,
) -> TxResult<()> {
    if let Some(mut info) = tx_info(tx, version)? {
        if change(&mut info) {
            tx.insert(info_key(version), encode_info(&info))?;
        }
    }
    Ok(())
}

fn apply_op(tx: &TransactionalTree, op: &StoreOp) -> TxResult<()> {
    match op {
        StoreOp::PutReplication { version, info } => {
            tx.insert(info_key(version), encode_info(info))?;
        }
        StoreOp::SetSiteStatus {
            version,
            site,
            status,
            data_store_version_id,
        } => update_info(tx, version, |info| {
            info.set_site_status(site, *status, data_store_version_id.as_deref())
        })?,
        StoreOp::RemoveSite { version, site } => {
            update_info(tx, version, |info| info.remove_site(site))?
        }
        StoreOp::AddPending { site, ops, bytes } => {
            for (which, delta) in [(b'o', *ops), (b'b', *bytes)] {
                if delta == 0 {
                    continue;
                }
                let k = p_key(site, which);
                let cur = tx.get(&k)?.map(|v| be_i64(&v)).unwrap_or(0);
                tx.insert(k, &cur.saturating_add(delta).to_be_bytes())?;
            }
        }
        StoreOp::AddMetric {
            site,
            metric,
            value,
            at_ms,
        } => {
            if *value > 0 {
                tx_add_u64(
                    tx,
                    m_key(site, *metric, metrics_bucket(*at_ms)),
                    *value as i64,
                )?;
            }
        }
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
        StoreOp::AddFailed {
            site,
            version,
            score_ms,
        } => {
            tx_remove_failed(tx, site, version)?;
            let mut score = *score_ms;
            while tx.get(f_key(site, score))?.is_some() {
                score += 1;
            }
            tx.insert(f_key(site, score), version.encode())?;
            tx.insert(g_key(site, version), &score.to_be_bytes())?;
            tx_add_u64(tx, h_key(site, failed_bucket(score)), 1)?;
        }
        StoreOp::RemoveFailed { site, version } => tx_remove_failed(tx, site, version)?,
        StoreOp::PutCursor { name, value } => {
            tx.insert(named_key(b'C', name), value.as_slice())?;
        }
    }
    Ok(())
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
        Ok(SledStore { db, tree, clock })
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
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn apply(&self, guards: Vec<Guard>, ops: Vec<StoreOp>) -> Result<bool, StoreError> {
        self.db.check()?;
        let n_ops = ops.len() + guards.len();
        check_op_names(&ops)?;
        let run = move |tree: &sled::Tree| {
            tree.transaction(|tx| {
                for g in &guards {
                    if !eval_guard(tx, g)? {
                        return Ok(false);
                    }
                }
                for op in &ops {
                    apply_op(tx, op)?;
                }
                Ok(true)
            })
        };
        // A small transaction is a few microseconds of in-memory work (sled writes to disk in
        // its own threads): run it in place rather than pay a hop to the blocking pool.
        let applied = if n_ops <= INLINE_OPS {
            run(&self.tree)
        } else {
            let tree = self.tree.clone();
            tokio::task::spawn_blocking(move || run(&tree))
                .await
                .map_err(|e| StoreError::Storage(Box::new(e)))?
        };
        let applied = match applied {
            Ok(a) => a,
            Err(sled::transaction::TransactionError::Abort(e)) => return Err(e),
            Err(sled::transaction::TransactionError::Storage(e)) => {
                return Err(self.db.poison_on(&e).into())
            }
        };
        if applied {
            self.db.sync().await?;
        }
        Ok(applied)
    }

    async fn replication(
        &self,
        version: &VersionRef,
    ) -> Result<Option<ReplicationInfo>, StoreError> {
        match self.tree.get(info_key(version))? {
            Some(b) => Ok(Some(decode_info(&b)?)),
            None => Ok(None),
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
                entries.push(FailedEntry {
                    site: site.clone(),
                    version,
                    score_ms: score,
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
                let score = be_u64(&v);
                (score >= window_start).then(|| FailedEntry {
                    site: site.to_string(),
                    version: version.clone(),
                    score_ms: score,
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
                        if tree.get(&g)?.map(|s| be_u64(&s)) == Some(score) {
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
