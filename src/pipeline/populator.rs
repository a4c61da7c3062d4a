//! [`Populator`]: turns discovered versions into queued replication entries, each version
//! once, and [`Scanner`]: the periodic versions listing (and initial sync) feeding it.
//!
//! Every discovery (scanner pages, webhook intake) goes through **one** task, over a channel,
//! so two discoveries of one version never race. For a batch of versions the task:
//! 1. drops those already known (`store.replication`) or repeated in the batch;
//! 2. reads each one's full metadata (`Source::head`); a vanished version is dropped;
//! 3. picks the rule: the bucket's own replication rules (cached, refreshed at each scan), else
//!    `[[replication.rules]]`; the first enabled rule whose prefix matches; no rule, nothing;
//! 4. appends all the entries to `backbeat-replication` in one call (one flush), **then**
//! 5. per version, one guarded store update (`Absent(version)`): PENDING replication info and
//!    the queued counters. A crash between 4 and 5 re-discovers and re-queues the version
//!    (at-least-once); the guard keeps the counters exact.
//!
//! A delete marker is queued like any version, with `isDeleteMarker` (reference 3.1); the
//! replication processor then has each site remove its replica of the key.
//!
//! A key's versions come newest first in a versions listing and are queued oldest first, so the
//! newest is written last at each site. When a listing page ends inside a key, the scanner holds
//! that key's versions back and queues them with the rest of the key from the next page.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::batch::apply_merged;
use super::transitions;
use super::{StageError, StageTasks};
use crate::config::{Config, SiteKind};
use crate::entry::{ObjectMd, QueueEntry};
use crate::intake::{DiscoveredVersion, Intake, IntakeError};
use crate::log::{Log, Record, TOPIC_REPLICATION};
use crate::model::{ObjectInfo, ReplicationInfo, VersionRef, NULL_VERSION};
use crate::source::{Rule, Source};
use crate::store::{StateStore, StoreOp};

/// Versions merged into one batch at most.
const MAX_BATCH: usize = 4096;
/// Metadata reads in flight.
const HEAD_CONCURRENCY: usize = 16;

/// A discovered version, with its full metadata when the discovery already has it.
struct Discovered {
    version: VersionRef,
    info: Option<ObjectInfo>,
}

enum Request {
    Versions {
        versions: Vec<Discovered>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    RefreshRules {
        bucket: String,
        reply: oneshot::Sender<()>,
    },
}

/// Handle of the populator task; implements [`Intake`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Populator {
    tx: mpsc::Sender<Request>,
}

/// The populator task's state.
struct PopulatorTask {
    source: Arc<dyn Source>,
    store: Arc<dyn StateStore>,
    log: Arc<dyn Log>,
    config: Arc<Config>,
    rules: HashMap<String, Vec<Rule>>,
}

impl Populator {
    /// Starts the populator task in `stage`; returns its handle.
    pub fn start(
        source: Arc<dyn Source>,
        store: Arc<dyn StateStore>,
        log: Arc<dyn Log>,
        config: Arc<Config>,
        stage: &StageTasks,
    ) -> Populator {
        let (tx, rx) = mpsc::channel(256);
        let task = PopulatorTask {
            source,
            store,
            log,
            config,
            rules: HashMap::new(),
        };
        stage.spawn(task.run(rx, stage.token().clone()));
        Populator { tx }
    }

    /// Queues `versions` (each once); returns how many were newly queued. Durable on return.
    ///
    /// # Errors
    /// A description when the populator is stopped or a source read failed (the versions that
    /// could be read are queued all the same).
    pub async fn submit(&self, versions: Vec<VersionRef>) -> Result<usize, String> {
        let versions = versions
            .into_iter()
            .map(|version| Discovered {
                version,
                info: None,
            })
            .collect();
        self.send(versions).await
    }

    /// [`Populator::submit`] for versions whose listing carries their full metadata (see
    /// [`Source::listing_is_full_metadata`]): they are not read again.
    ///
    /// # Errors
    /// As [`Populator::submit`].
    pub async fn submit_listed(&self, versions: Vec<ObjectInfo>) -> Result<usize, String> {
        let versions = versions
            .into_iter()
            .map(|info| Discovered {
                version: info.version.clone(),
                info: Some(info),
            })
            .collect();
        self.send(versions).await
    }

    async fn send(&self, versions: Vec<Discovered>) -> Result<usize, String> {
        if versions.is_empty() {
            return Ok(0);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Versions { versions, reply })
            .await
            .map_err(|_| "populator stopped".to_string())?;
        rx.await.map_err(|_| "populator stopped".to_string())?
    }

    /// Forgets the cached rules of `bucket`, so the next version of it reads them again.
    pub async fn refresh_rules(&self, bucket: &str) {
        let (reply, rx) = oneshot::channel();
        let req = Request::RefreshRules {
            bucket: bucket.to_string(),
            reply,
        };
        if self.tx.send(req).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[async_trait]
impl Intake for Populator {
    async fn discovered(&self, versions: Vec<DiscoveredVersion>) -> Result<usize, IntakeError> {
        let versions: Vec<VersionRef> = versions
            .into_iter()
            // A delete marker is a version to replicate; other removals (a version deleted
            // for good) have nothing to replicate.
            .filter(|d| {
                !d.event_name.starts_with("ObjectRemoved")
                    || d.event_name
                        .starts_with("ObjectRemoved:DeleteMarkerCreated")
            })
            .map(|d| {
                VersionRef::new(
                    d.bucket,
                    d.key,
                    d.version_id.unwrap_or_else(|| NULL_VERSION.into()),
                )
            })
            .collect();
        self.submit(versions)
            .await
            .map_err(|e| IntakeError::Unavailable(e.into()))
    }
}

impl PopulatorTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        token: CancellationToken,
    ) -> Result<(), StageError> {
        loop {
            let first = tokio::select! {
                biased;
                () = token.cancelled() => return Ok(()),
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return Ok(()),
                },
            };
            let mut batch = Vec::new();
            let mut total = 0;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::RefreshRules { bucket, reply } => {
                        self.rules.remove(&bucket);
                        let _ = reply.send(());
                    }
                    Request::Versions { versions, reply } => {
                        total += versions.len();
                        batch.push((versions, reply));
                    }
                }
                if total < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let results = self
                .process(batch.iter().map(|(v, _)| v.as_slice()).collect())
                .await?;
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }

    /// The rule for `key` in `bucket`, or `Err` when the bucket's rules cannot be read.
    async fn rule_for(&mut self, bucket: &str, key: &str) -> Result<Option<Rule>, String> {
        if !self.rules.contains_key(bucket) {
            let rules = match self.source.replication_rules(bucket).await {
                Ok(Some(rules)) => rules,
                Ok(None) => self
                    .config
                    .replication
                    .rules
                    .iter()
                    .filter(|r| r.bucket == bucket)
                    .map(|r| Rule {
                        id: String::new(),
                        enabled: r.enabled,
                        prefix: r.prefix.clone(),
                        sites: r.sites.clone(),
                        destination: String::new(),
                    })
                    .collect(),
                Err(e) => {
                    return Err(format!(
                        "cannot read the replication rules of bucket {bucket}: {e}"
                    ))
                }
            };
            self.rules.insert(bucket.to_string(), rules);
        }
        let rules = self
            .rules
            .get(bucket)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(rules
            .iter()
            .find(|r| r.enabled && key.starts_with(&r.prefix))
            .cloned())
    }

    fn entry_for(&self, info: &ObjectInfo, rule: &Rule) -> Option<(Record, ReplicationInfo)> {
        let sites: Vec<String> = rule
            .sites
            .iter()
            .filter(|s| {
                let known = self.config.sites.iter().any(|c| &c.name == *s);
                if !known {
                    tracing::warn!(site = %s, bucket = %info.version.bucket, "Rule names an unknown site; ignored.");
                }
                known
            })
            .cloned()
            .collect();
        if sites.is_empty() {
            return None;
        }
        let mut ri = ReplicationInfo::pending(&sites);
        ri.content = if info.size == 0 || info.is_delete_marker {
            vec!["METADATA".into()]
        } else {
            vec!["DATA".into(), "METADATA".into()]
        };
        ri.destination = rule.destination.clone();
        ri.size = info.size;
        ri.etag = info.etag.clone();
        ri.last_modified = info.last_modified.clone();
        ri.content_type = info.content_type.clone();
        ri.user_metadata = info.user_metadata.clone();
        ri.tags = info.tags.clone();
        let mut md = ObjectMd::from_info(&info.version, &ri);
        // A delete marker is a put with `isDeleteMarker` (reference 3.1); its sites delete.
        md.is_delete_marker = info.is_delete_marker;
        let mut types: Vec<&str> = Vec::new();
        for s in &sites {
            if let Some(c) = self.config.sites.iter().find(|c| &c.name == s) {
                if c.kind() != SiteKind::File && !types.contains(&c.kind().as_str()) {
                    types.push(c.kind().as_str());
                }
            }
        }
        md.replication_info.storage_type = types.join(",");
        let entry = QueueEntry::queued(&info.version, &md);
        Some((entry.record(), ri))
    }

    /// Queues the versions of each request; returns per request the count newly queued.
    async fn process(
        &mut self,
        requests: Vec<&[Discovered]>,
    ) -> Result<Vec<Result<usize, String>>, StageError> {
        let mut results: Vec<Result<usize, String>> = vec![Ok(0); requests.len()];
        let mut seen = HashSet::new();
        let mut todo = Vec::new();
        for (i, versions) in requests.iter().enumerate() {
            for d in versions.iter() {
                if !seen.insert(d.version.clone()) {
                    continue;
                }
                if self.store.replication(&d.version).await?.is_some() {
                    continue;
                }
                todo.push((i, d.version.clone(), d.info.clone()));
            }
        }
        if todo.is_empty() {
            return Ok(results);
        }
        let source = self.source.clone();
        let heads: Vec<_> = stream::iter(todo)
            .map(|(i, v, known)| {
                let source = source.clone();
                async move {
                    let r = match known {
                        Some(info) => Ok(Some(info)),
                        None => source.head(&v).await,
                    };
                    (i, v, r)
                }
            })
            .buffered(HEAD_CONCURRENCY)
            .collect()
            .await;
        let mut records = Vec::new();
        let mut updates = Vec::new();
        for (i, v, head) in heads {
            let info = match head {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(version = %v, error = %e, "Cannot read a discovered version; the next scan retries.");
                    results[i] = Err(format!("cannot read {v}: {e}"));
                    continue;
                }
            };
            let rule = match self.rule_for(&v.bucket, &v.key).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(version = %v, error = %e, "Cannot read replication rules; the next scan retries.");
                    results[i] = Err(e);
                    continue;
                }
            };
            let mut info = info;
            info.version = v.clone();
            if let Some((record, ri)) = self.entry_for(&info, &rule) {
                records.push(record);
                updates.push((i, v, ri));
            }
        }
        if records.is_empty() {
            return Ok(results);
        }
        let n = records.len();
        self.log.append(TOPIC_REPLICATION, records).await?;
        // One transaction for the whole batch (versions are distinct and were absent); if a
        // guard fails after all (a racing status processor recreated one), one by one.
        let now = self.store.now_ms();
        let mut merged = Vec::with_capacity(updates.len());
        let mut waits = Vec::with_capacity(updates.len());
        for (i, v, ri) in updates {
            let (g, o) = transitions::queued(&v, ri, now);
            let (reply, rx) = oneshot::channel();
            merged.push((g, o, reply));
            waits.push((i, rx));
        }
        apply_merged(&*self.store, merged).await;
        for (i, rx) in waits {
            let applied = rx.await.map_err(|_| StageError::Closed)??;
            if applied {
                if let Some(Ok(c)) = results.get_mut(i) {
                    *c += 1;
                }
            }
        }
        tracing::debug!(queued = n, "Versions queued.");
        Ok(results)
    }
}

/// The periodic versions listing of every source bucket (and the initial sync at start), with
/// a durable cursor per bucket so an interrupted pass resumes where it stopped.
pub struct Scanner {
    populator: Populator,
    source: Arc<dyn Source>,
    store: Arc<dyn StateStore>,
    interval: Duration,
    token: CancellationToken,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("interval", &self.interval)
            .finish()
    }
}

/// The store cursor name of `bucket`'s scan.
pub fn cursor_name(bucket: &str) -> String {
    format!("scan:{bucket}")
}

/// Splits off the versions of the last key of `versions` (a listing keeps a key's versions
/// together).
fn split_last_key(versions: &mut Vec<ObjectInfo>) -> Vec<ObjectInfo> {
    let Some(last) = versions.last().map(|v| v.version.clone()) else {
        return Vec::new();
    };
    let at = versions
        .iter()
        .rposition(|v| v.version.bucket != last.bucket || v.version.key != last.key)
        .map_or(0, |i| i + 1);
    versions.split_off(at)
}

/// Orders a listing page for queueing: a key's versions come newest first in a versions
/// listing (S3 `ListObjectVersions`); they are queued oldest first so the newest is written
/// last at each site.
fn oldest_first(versions: Vec<ObjectInfo>) -> Vec<VersionRef> {
    oldest_first_infos(versions)
        .into_iter()
        .map(|i| i.version)
        .collect()
}

/// [`oldest_first`], keeping the listed metadata.
fn oldest_first_infos(versions: Vec<ObjectInfo>) -> Vec<ObjectInfo> {
    let mut groups: Vec<Vec<ObjectInfo>> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for v in versions {
        let k = (v.version.bucket.clone(), v.version.key.clone());
        let i = *index.entry(k).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(g) = groups.get_mut(i) {
            g.push(v);
        }
    }
    groups
        .into_iter()
        .flat_map(|g| g.into_iter().rev())
        .collect()
}

impl Scanner {
    /// Starts the scanner in `stage`: a pass at once, then every `interval` (zero: only the
    /// initial pass).
    pub fn start(
        populator: Populator,
        source: Arc<dyn Source>,
        store: Arc<dyn StateStore>,
        interval: Duration,
        stage: &StageTasks,
    ) {
        let s = Scanner {
            populator,
            source,
            store,
            interval,
            token: stage.token().clone(),
        };
        stage.spawn(s.run());
    }

    async fn run(self) -> Result<(), StageError> {
        for bucket in self.source.buckets() {
            match self.source.versioning_enabled(&bucket).await {
                Ok(Some(false)) => tracing::warn!(bucket,
                    "Source bucket without versioning: an overwrite of a key already replicated will not be replicated again. Enable versioning on it."),
                Ok(_) => {}
                Err(e) => tracing::debug!(bucket, error = %crate::error::chain(&e),
                    "Cannot read the bucket's versioning state."),
            }
        }
        loop {
            for bucket in self.source.buckets() {
                if self.token.is_cancelled() {
                    return Ok(());
                }
                self.scan_bucket(&bucket).await?;
            }
            if self.interval.is_zero() {
                self.token.cancelled().await;
                return Ok(());
            }
            tokio::select! {
                biased;
                () = self.token.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn scan_bucket(&self, bucket: &str) -> Result<(), StageError> {
        self.populator.refresh_rules(bucket).await;
        let name = cursor_name(bucket);
        let mut cursor = self
            .store
            .cursor(&name)
            .await?
            .and_then(|c| String::from_utf8(c).ok())
            .filter(|c| !c.is_empty());
        let mut listed = 0usize;
        let mut queued = 0usize;
        // The versions of the last key of a page that goes on (they may continue on the next
        // page). Only in memory: after a crash the next pass lists them again.
        let mut carry: Vec<ObjectInfo> = Vec::new();
        loop {
            if self.token.is_cancelled() {
                return Ok(());
            }
            let page = match self.source.list_versions(bucket, cursor.as_deref()).await {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(bucket, %error, "Versions listing failed; the next scan resumes.");
                    return Ok(());
                }
            };
            listed += page.versions.len();
            let mut versions = std::mem::take(&mut carry);
            versions.extend(page.versions);
            if page.next.is_some() {
                carry = split_last_key(&mut versions);
            }
            let submitted = if self.source.listing_is_full_metadata() {
                self.populator
                    .submit_listed(oldest_first_infos(versions))
                    .await
            } else {
                self.populator.submit(oldest_first(versions)).await
            };
            match submitted {
                Ok(n) => queued += n,
                Err(error) => {
                    tracing::warn!(bucket, %error, "Could not queue a listing page; the next scan resumes.");
                    return Ok(());
                }
            }
            let value = page.next.clone().unwrap_or_default().into_bytes();
            self.store
                .apply(
                    Vec::new(),
                    vec![StoreOp::PutCursor {
                        name: name.clone(),
                        value,
                    }],
                )
                .await?;
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        tracing::info!(bucket, listed, queued, "Scan pass done.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key: &str, vid: &str) -> ObjectInfo {
        ObjectInfo {
            version: VersionRef::new("b", key, vid),
            size: 0,
            etag: String::new(),
            last_modified: String::new(),
            content_type: None,
            user_metadata: Default::default(),
            tags: Default::default(),
            is_delete_marker: false,
        }
    }

    #[test]
    fn listing_pages_are_queued_oldest_version_first_per_key() {
        let page = vec![
            info("a", "a3"),
            info("a", "a2"),
            info("a", "a1"),
            info("b", "b2"),
            info("b", "b1"),
            info("c", "c1"),
        ];
        let ids: Vec<String> = oldest_first(page)
            .into_iter()
            .map(|v| v.version_id)
            .collect();
        assert_eq!(ids, ["a1", "a2", "a3", "b1", "b2", "c1"]);
    }

    #[test]
    fn a_key_split_across_pages_is_held_back_whole() {
        let mut page = vec![info("a", "a1"), info("b", "b3"), info("b", "b2")];
        let carry = split_last_key(&mut page);
        assert_eq!(page, vec![info("a", "a1")]);
        assert_eq!(carry, vec![info("b", "b3"), info("b", "b2")]);
        // The next page goes on with b: all of b is queued oldest first.
        let mut next = carry;
        next.extend([info("b", "b1"), info("c", "c1")]);
        let ids: Vec<String> = oldest_first(next)
            .into_iter()
            .map(|v| v.version_id)
            .collect();
        assert_eq!(ids, ["b1", "b2", "b3", "c1"]);
        // A page of one key only: everything is held back.
        let mut only = vec![info("z", "z2"), info("z", "z1")];
        assert_eq!(split_last_key(&mut only).len(), 2);
        assert!(only.is_empty());
    }
}
