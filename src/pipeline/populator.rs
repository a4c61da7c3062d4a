//! [`Populator`]: turns discoveries about source keys into queued entries, each key's current
//! version once (DESIGN section 3, "newest wins").
//!
//! Every discovery (the scanner's passes, the directory watch, S3 event notifications, an
//! operator's requeue) goes through **one** task, over a channel, so two discoveries of one
//! key never race. For a batch of discoveries the task:
//! 1. learns each key's current version: a listing or a stat gives it; an event or a watch
//!    only names the key, so the source is asked (S3: a HEAD without `versionId`);
//! 2. picks the rule: the bucket's own replication configuration (read again at least every
//!    30 s, and at once for an event about a bucket whose copy is older), else
//!    `[[replication.rules]]`: the enabled matching rule of highest priority; a deletion only
//!    under a rule that replicates delete markers; no rule, nothing;
//! 3. compares with the key's record in the store: the same version already queued to every
//!    site of the rule, nothing; a site missing from it (a site added to the rule), that site
//!    only (backfill); another version, every site;
//! 4. appends the entries to `backbeat-replication` in one call (one flush), **then**
//! 5. records each key's version in the store ([`KeyChange::Queued`], one transaction for the
//!    batch). A crash between 4 and 5 re-discovers the key and the status processor records
//!    it from its entry (at-least-once); the record's own checks keep the counters exact.
//!
//! A site keeping keys as they are (`bucket_match = true`) belongs to one source bucket: the
//! one whose configured rule names it, else the first that sends it a version (recorded in the
//! store). A version of any other bucket is FAILED there with reason `NamespaceConflict`,
//! never written.
//!
//! A version first seen more than `[replication] lag_target_s` after its write (initial sync,
//! a rescan's find, a new site's backfill) is marked backfill: it counts in
//! `backbeat_replication_backfill_total`, not in the lag.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::batch::apply_merged;
use super::{StageError, StageTasks};
use crate::config::Config;
use crate::entry::{Entry, EntryFormat};
use crate::error::FailureReason;
use crate::intake::{DiscoveredVersion, Intake, IntakeError};
use crate::log::{Log, TOPIC_REPLICATION};
use crate::model::{KeyState, ObjectInfo, VersionRef};
use crate::observe::Observer;
use crate::source::{bucket_rules, rule_for, Rule, Source};
use crate::store::{StateStore, StoreOp};
use crate::transitions::{FailedInfo, KeyChange, QueuedVersion, SiteOutcome};

/// Discoveries merged into one batch at most.
const MAX_BATCH: usize = 4096;
/// A bucket's replication configuration is read again after this long.
pub const RULES_TTL: Duration = Duration::from_secs(30);

/// What is known about one source key.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// The key's current version as a listing or a stat gave it (`None`: the key has no
    /// version any more). `full` when it carries the full metadata.
    Current {
        /// Source bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Its current version.
        current: Option<Box<ObjectInfo>>,
        /// The metadata is complete (no need to read it again).
        full: bool,
    },
    /// Something happened to the key (an event, the watch): its current version is read.
    Changed {
        /// Source bucket.
        bucket: String,
        /// Key.
        key: String,
        /// When it happened at the source (an event's `eventTime`), in ms.
        at_ms: Option<u64>,
    },
    /// An operator asked for `version` to be copied again to `sites`, whatever their status.
    Requeue {
        /// The version.
        version: VersionRef,
        /// The sites.
        sites: Vec<String>,
    },
}

impl Discovery {
    fn bucket_key(&self) -> (&str, &str) {
        match self {
            Discovery::Current { bucket, key, .. } | Discovery::Changed { bucket, key, .. } => {
                (bucket, key)
            }
            Discovery::Requeue { version, .. } => (&version.bucket, &version.key),
        }
    }
}

enum Request {
    Discoveries {
        items: Vec<Discovery>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    Rules {
        bucket: String,
        reply: oneshot::Sender<Result<Vec<Rule>, String>>,
    },
}

/// Handle of the populator task; implements [`Intake`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Populator {
    tx: mpsc::Sender<Request>,
    /// The source's buckets.
    buckets: Arc<[String]>,
}

/// A bucket's rules and when they were read.
struct CachedRules {
    rules: Vec<Rule>,
    at: Instant,
}

/// The populator task's state.
struct PopulatorTask {
    source: Arc<dyn Source>,
    store: Arc<dyn StateStore>,
    log: Arc<dyn Log>,
    format: EntryFormat,
    config: Arc<Config>,
    rules: HashMap<String, CachedRules>,
    /// Sites keeping keys as they are, and the bucket that owns each when known.
    owners: HashMap<String, Option<String>>,
    /// Buckets whose rules changed since they were last read: the scanner passes them again
    /// (new sites get what already exists).
    changed_rules: mpsc::UnboundedSender<String>,
    observer: Arc<Observer>,
    /// The source is transient: absent keys were collected, not deleted.
    transient: bool,
}

impl Populator {
    /// Starts the populator task in `stage`; returns its handle and a channel naming the
    /// buckets whose replication rules changed (to be scanned again).
    pub fn start(
        source: Arc<dyn Source>,
        store: Arc<dyn StateStore>,
        log: Arc<dyn Log>,
        config: Arc<Config>,
        observer: Arc<Observer>,
        stage: &StageTasks,
    ) -> (Populator, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::channel(256);
        let (changed_rules, changed_rx) = mpsc::unbounded_channel();
        let buckets: Arc<[String]> = source.buckets().into();
        let owners = config
            .sites
            .iter()
            .filter(|s| s.bucket_match)
            .map(|s| {
                let owner = config
                    .replication
                    .rules
                    .iter()
                    .find(|r| r.sites.contains(&s.name))
                    .map(|r| r.bucket.clone());
                (s.name.clone(), owner)
            })
            .collect();
        let transient = config.source.as_ref().is_some_and(|s| s.transient);
        let task = PopulatorTask {
            source,
            store,
            format: log.entry_format(),
            log,
            config,
            transient,
            rules: HashMap::new(),
            owners,
            changed_rules,
            observer,
        };
        stage.spawn(task.run(rx, stage.token().clone()));
        (Populator { tx, buckets }, changed_rx)
    }

    /// Queues what `items` say (each key's current version once); returns how many entries
    /// were queued. Durable on return.
    ///
    /// # Errors
    /// A description when the populator is stopped or a source read failed (the keys that
    /// could be read are queued all the same).
    pub async fn submit(&self, items: Vec<Discovery>) -> Result<usize, String> {
        if items.is_empty() {
            return Ok(0);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Discoveries { items, reply })
            .await
            .map_err(|_| "populator stopped".to_string())?;
        rx.await.map_err(|_| "populator stopped".to_string())?
    }

    /// The rules that apply to `bucket` now (read again when older than [`RULES_TTL`]).
    ///
    /// # Errors
    /// A description when the populator is stopped or the rules cannot be read.
    pub async fn rules(&self, bucket: &str) -> Result<Vec<Rule>, String> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Rules {
            bucket: bucket.to_string(),
            reply,
        };
        self.tx
            .send(req)
            .await
            .map_err(|_| "populator stopped".to_string())?;
        rx.await.map_err(|_| "populator stopped".to_string())?
    }
}

#[async_trait]
impl Intake for Populator {
    fn serves(&self, bucket: &str) -> bool {
        self.buckets.iter().any(|b| b == bucket)
    }

    async fn discovered(&self, versions: Vec<DiscoveredVersion>) -> Result<usize, IntakeError> {
        // Whatever the event (a put, a delete marker, a version deleted for good, an
        // undelete), the key's current version is what the sites must mirror.
        let items = versions
            .into_iter()
            .map(|d| Discovery::Changed {
                bucket: d.bucket,
                key: d.key,
                at_ms: d.event_time_ms,
            })
            .collect();
        self.submit(items)
            .await
            .map_err(|e| IntakeError::Unavailable(e.into()))
    }

    async fn requeue(&self, items: Vec<(VersionRef, Vec<String>)>) -> Result<usize, IntakeError> {
        let items = items
            .into_iter()
            .map(|(version, sites)| Discovery::Requeue { version, sites })
            .collect();
        self.submit(items)
            .await
            .map_err(|e| IntakeError::Unavailable(e.into()))
    }
}

/// One key to queue: the entry, the record change, and what its request counts.
struct Queued {
    request: usize,
    entry: Option<Entry>,
    ops: Vec<StoreOp>,
}

impl PopulatorTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        token: CancellationToken,
    ) -> Result<(), StageError> {
        let mut refresh = tokio::time::interval(RULES_TTL);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                () = token.cancelled() => return Ok(()),
                _ = refresh.tick() => {
                    self.refresh_rules().await;
                    continue;
                }
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
                    Request::Rules { bucket, reply } => {
                        let r = self.rules_of(&bucket).await.map(<[Rule]>::to_vec);
                        let _ = reply.send(r);
                    }
                    Request::Discoveries { items, reply } => {
                        total += items.len();
                        batch.push((items, reply));
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

    /// Reads again the rules of every bucket read before; a bucket whose rules changed is
    /// passed to the scanner.
    async fn refresh_rules(&mut self) {
        let buckets: Vec<String> = self.rules.keys().cloned().collect();
        for bucket in buckets {
            let before = self.rules.get(&bucket).map(|c| c.rules.clone());
            self.rules.remove(&bucket);
            match self.rules_of(&bucket).await {
                Ok(now) => {
                    if before.as_deref() != Some(now) {
                        tracing::info!(
                            bucket,
                            "Replication rules changed; the bucket is scanned again."
                        );
                        let _ = self.changed_rules.send(bucket);
                    }
                }
                Err(error) => {
                    tracing::warn!(bucket, %error, "Cannot read replication rules; keeping the last ones.");
                    if let Some(rules) = before {
                        self.rules.insert(
                            bucket,
                            CachedRules {
                                rules,
                                at: Instant::now(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// The rules of `bucket`, read again when older than [`RULES_TTL`].
    async fn rules_of(&mut self, bucket: &str) -> Result<&[Rule], String> {
        let stale = self
            .rules
            .get(bucket)
            .is_none_or(|c| c.at.elapsed() >= RULES_TTL);
        if stale {
            let configured = &self.config.replication.rules;
            let rules = bucket_rules(self.source.as_ref(), configured, bucket)
                .await
                .map_err(|e| {
                    format!("cannot read the replication rules of bucket {bucket}: {e}")
                })?;
            self.rules.insert(
                bucket.to_string(),
                CachedRules {
                    rules,
                    at: Instant::now(),
                },
            );
        }
        Ok(self
            .rules
            .get(bucket)
            .map(|c| c.rules.as_slice())
            .unwrap_or_default())
    }

    /// Whether `bucket` may write to `site` (a `bucket_match` site belongs to one bucket).
    async fn owns(&mut self, site: &str, bucket: &str) -> Result<bool, StageError> {
        let Some(owner) = self.owners.get(site).cloned() else {
            return Ok(true);
        };
        if let Some(o) = owner {
            return Ok(o == bucket);
        }
        let o = self.store.claim_namespace(site, bucket).await?;
        if o == bucket {
            tracing::info!(
                site,
                bucket,
                "The site's keys now belong to this source bucket."
            );
        }
        self.owners.insert(site.to_string(), Some(o.clone()));
        Ok(o == bucket)
    }

    /// Queues the discoveries of each request; returns per request the count queued.
    async fn process(
        &mut self,
        requests: Vec<&[Discovery]>,
    ) -> Result<Vec<Result<usize, String>>, StageError> {
        let mut results: Vec<Result<usize, String>> = vec![Ok(0); requests.len()];
        // The last discovery of each key wins (the newest news about it), except that an
        // operator's requeue is never replaced by other news (it reads the key's current
        // version itself), and two requeues of a key ask for all their sites.
        let mut latest: HashMap<(String, String), (usize, Discovery)> = HashMap::new();
        let mut order = Vec::new();
        for (i, items) in requests.iter().enumerate() {
            for d in items.iter() {
                let (b, k) = d.bucket_key();
                let id = (b.to_string(), k.to_string());
                let merged = match (latest.get(&id), d) {
                    (
                        Some((j, Discovery::Requeue { version, sites })),
                        Discovery::Requeue { sites: more, .. },
                    ) => {
                        let mut all = sites.clone();
                        all.extend(more.iter().filter(|s| !sites.contains(s)).cloned());
                        let all = Discovery::Requeue {
                            version: version.clone(),
                            sites: all,
                        };
                        (*j, all)
                    }
                    (Some((j, r @ Discovery::Requeue { .. })), _) => (*j, r.clone()),
                    _ => (i, d.clone()),
                };
                if latest.insert(id.clone(), merged).is_none() {
                    order.push(id);
                }
            }
        }
        // 1. Current versions: read, per bucket in one call, where the discovery does not
        //    carry them.
        let items: Vec<(usize, Discovery)> = order
            .into_iter()
            .filter_map(|id| latest.remove(&id))
            .collect();
        let mut currents: Vec<Option<Result<Option<ObjectInfo>, _>>> = items
            .iter()
            .map(|(_, d)| match d {
                Discovery::Current { current, full, .. } if *full || current.is_none() => {
                    Some(Ok(current.as_deref().cloned()))
                }
                _ => None,
            })
            .collect();
        let mut lookups: BTreeMap<&str, (Vec<usize>, Vec<String>)> = BTreeMap::new();
        for (n, (_, d)) in items.iter().enumerate() {
            if currents[n].is_none() {
                let (b, k) = d.bucket_key();
                let (at, keys) = lookups.entry(b).or_default();
                at.push(n);
                keys.push(k.to_string());
            }
        }
        for (bucket, (at, keys)) in lookups {
            let found = self.source.current_many(bucket, &keys).await;
            for (n, c) in at.into_iter().zip(found) {
                currents[n] = Some(c);
            }
        }
        let resolved: Vec<_> = items
            .into_iter()
            .zip(currents)
            .map(|((i, d), c)| {
                let c = c.unwrap_or_else(|| {
                    Err(crate::source::SourceError::Transient(
                        "the source gave no answer about the key".into(),
                    ))
                });
                (i, d, c)
            })
            .collect();
        // 2-3. Rules and records.
        let now = self.store.now_ms();
        let lag_target = self.config.replication.lag_target_s.saturating_mul(1000);
        let mut queued = Vec::new();
        for (i, d, current) in resolved {
            let current = match current {
                Ok(c) => c,
                Err(e) => {
                    let error = crate::error::chain(&e).to_string();
                    self.unreadable(&d, &error, now, &mut results[i]).await?;
                    continue;
                }
            };
            match self.plan(&d, current, now, lag_target).await {
                Ok(Some((entry, ops))) => queued.push(Queued {
                    request: i,
                    entry,
                    ops,
                }),
                Ok(None) => {}
                Err(Plan::Stage(e)) => return Err(e),
                Err(Plan::Unreadable(error)) => {
                    self.unreadable(&d, &error, now, &mut results[i]).await?;
                }
                Err(Plan::Skip(e)) => {
                    let (b, k) = d.bucket_key();
                    tracing::warn!(bucket = b, key = k, error = %e, "Cannot queue a key; the next pass retries.");
                    results[i] = Err(e);
                }
            }
        }
        if queued.is_empty() {
            return Ok(results);
        }
        // 4. The entries, in one append.
        let records: Vec<_> = queued
            .iter()
            .filter_map(|q| q.entry.as_ref().map(|e| e.record(self.format)))
            .collect();
        let n = records.len();
        if !records.is_empty() {
            self.log.append(TOPIC_REPLICATION, records).await?;
        }
        // 5. The records, in one transaction.
        let mut merged = Vec::with_capacity(queued.len());
        let mut waits = Vec::with_capacity(queued.len());
        for q in queued {
            let (reply, rx) = oneshot::channel();
            merged.push((q.ops, reply));
            waits.push((q.request, q.entry, rx));
        }
        apply_merged(&*self.store, merged).await;
        for (i, entry, rx) in waits {
            rx.await.map_err(|_| StageError::Closed)??;
            if let Some(e) = entry {
                for site in &e.sites {
                    self.observer.queued(site, e.size);
                }
                if let Some(Ok(c)) = results.get_mut(i) {
                    *c += 1;
                }
            }
        }
        tracing::debug!(queued = n, "Versions queued.");
        Ok(results)
    }

    /// `d`'s source version cannot be read (its HEAD, tags or listing metadata fail: a 500,
    /// SSE-C, no permission). Never stops anything else (issue 14): the version the listing
    /// (or the key's record) names is recorded FAILED with reason `SourceUnreadable` at each
    /// site of its rule that does not hold it yet, counted, and asked again at the next scan
    /// pass ([`super::scanner`]). Without a version to name (an event about a key never
    /// recorded), `result` gets the error: the event's sender or the next pass retries.
    async fn unreadable(
        &mut self,
        d: &Discovery,
        error: &str,
        now: u64,
        result: &mut Result<usize, String>,
    ) -> Result<(), StageError> {
        let (bucket, key) = d.bucket_key();
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let record = self.store.key_state(&bucket, &key).await?;
        let listed = match d {
            Discovery::Current {
                current: Some(c), ..
            } if !c.is_delete_marker => Some(source_version(c, false)),
            _ => None,
        };
        let version = listed.or_else(|| {
            let k = record.as_ref().filter(|k| !k.deleted)?;
            if let Discovery::Requeue { version, .. } = d {
                if version.version_id != k.version_id {
                    return None;
                }
            }
            Some(QueuedVersion {
                version_id: k.version_id.clone(),
                etag: k.etag.clone(),
                size: k.size,
                written_ms: k.written_ms,
                deleted: false,
                backfill: k.backfill,
            })
        });
        let sites: Vec<String> = match (d, &version) {
            (_, None) => Vec::new(),
            (Discovery::Requeue { sites, .. }, Some(_)) => sites
                .iter()
                .filter(|s| self.config.sites.iter().any(|c| &&c.name == s))
                .cloned()
                .collect(),
            (_, Some(_)) => match self.rules_of(&bucket).await {
                // Tags cannot be read: the rule that covers the key without them.
                Ok(rules) => rule_for(rules, &key, &BTreeMap::new())
                    .map(|r| r.sites.clone())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            },
        };
        // Sites that hold this version, or have it on its way, are left alone.
        let sites: Vec<String> = match (&record, &version) {
            (Some(k), Some(v)) if k.is_version(&v.version_id, &v.etag) => sites
                .into_iter()
                .filter(|s| {
                    k.site(s)
                        .is_none_or(|x| x.status == crate::model::ReplicationStatus::Failed)
                })
                .collect(),
            _ => sites,
        };
        let Some(version) = version.filter(|_| !sites.is_empty()) else {
            tracing::warn!(
                bucket,
                key,
                error,
                "Cannot read a source version; the next pass retries."
            );
            if !matches!(d, Discovery::Current { .. }) {
                *result = Err(format!("cannot read {bucket}/{key}: {error}"));
            }
            return Ok(());
        };
        let vref = VersionRef::new(&bucket, &key, version.version_id.clone());
        let mut ops = vec![StoreOp::key(
            &vref,
            KeyChange::Requeued {
                version: version.clone(),
                sites: sites.clone(),
            },
        )];
        for site in &sites {
            let reason = FailureReason::SourceUnreadable;
            ops.push(failed_op(
                &vref,
                &version,
                site,
                reason,
                1,
                error.to_string(),
                now,
            ));
        }
        self.store.apply(ops).await?;
        for site in &sites {
            self.observer
                .failed(site, FailureReason::SourceUnreadable, version.size);
        }
        tracing::warn!(bucket, key, version_id = %version.version_id, ?sites, error,
            "Cannot read a source version: FAILED (SourceUnreadable) at its sites; the next scan pass asks again.");
        Ok(())
    }

    /// What to do about `d` whose key's current version is `current`: the entry to append
    /// (if any) and the store ops recording it; `None` when there is nothing to do.
    async fn plan(
        &mut self,
        d: &Discovery,
        current: Option<ObjectInfo>,
        now: u64,
        lag_target: u64,
    ) -> Result<Option<(Option<Entry>, Vec<StoreOp>)>, Plan> {
        let (bucket, key) = d.bucket_key();
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let record = self
            .store
            .key_state(&bucket, &key)
            .await
            .map_err(Plan::stage)?;
        let deleted = current.as_ref().is_none_or(|c| c.is_delete_marker);
        if let Some(c) = &current {
            if !deleted && c.replica {
                // Never replicated (DESIGN 3); remembered so scans do not ask again.
                return Ok(None);
            }
        }
        // The version the sites must end up with.
        let version = match &current {
            Some(c) => source_version(c, deleted),
            // A transient source's files leave once replicated (DESIGN section 9): absence
            // there is not a deletion. A replicated record of the key is all that is left.
            None if self.transient => {
                return Ok(record.map(|k| {
                    let collected = KeyChange::Collected {
                        version_id: k.version_id,
                    };
                    let op = StoreOp::key(&VersionRef::new(&bucket, &key, ""), collected);
                    (None, vec![op])
                }));
            }
            None => match &record {
                // The key has no version any more: a deletion named after the last one.
                Some(k) if !k.deleted => QueuedVersion {
                    version_id: format!("del-{}", k.version_id),
                    etag: String::new(),
                    size: 0,
                    written_ms: now,
                    deleted: true,
                    backfill: false,
                },
                _ => return Ok(None),
            },
        };
        let at_ms = match d {
            Discovery::Changed { at_ms: Some(t), .. } => *t,
            _ => version.written_ms,
        };
        let version = QueuedVersion {
            backfill: now.saturating_sub(at_ms.max(version.written_ms)) > lag_target,
            written_ms: if at_ms > 0 { at_ms } else { now },
            ..version
        };
        // The rule.
        let rules = self.rules_of(&bucket).await.map_err(Plan::Skip)?.to_vec();
        let needs_tags = rules.iter().any(Rule::needs_tags);
        let tags: BTreeMap<String, String> = match &current {
            Some(c)
                if needs_tags
                    && !deleted
                    && c.tags.is_empty()
                    && !matches!(d, Discovery::Changed { .. }) =>
            {
                // A listing carries no tags: read them for the tag filters.
                match self.source.current(&bucket, &key).await {
                    Ok(Some(full)) => full.tags,
                    Ok(None) => BTreeMap::new(),
                    Err(e) => {
                        return Err(Plan::Unreadable(format!(
                            "cannot read the tags: {}",
                            crate::error::chain(&e)
                        )))
                    }
                }
            }
            Some(c) => c.tags.clone(),
            None => BTreeMap::new(),
        };
        let rule = if deleted {
            // A deletion follows the rule that covers the key without tags (delete markers
            // carry none) and replicates delete markers.
            rule_for(&rules, &key, &BTreeMap::new()).filter(|r| r.delete_markers)
        } else {
            rule_for(&rules, &key, &tags)
        };
        let Some(rule) = rule else {
            return Ok(None);
        };
        let mut sites: Vec<String> = Vec::new();
        for s in &rule.sites {
            if self.config.sites.iter().any(|c| &c.name == s) {
                if !sites.contains(s) {
                    sites.push(s.clone());
                }
            } else {
                tracing::warn!(site = %s, bucket, "Rule names an unknown site; ignored.");
            }
        }
        if sites.is_empty() {
            return Ok(None);
        }
        let vref = VersionRef::new(&bucket, &key, &version.version_id);
        // What the record already has.
        let (sites_to_copy, force): (Vec<String>, bool) = match d {
            Discovery::Requeue {
                version: asked,
                sites: asked_sites,
            } => {
                if asked.version_id != version.version_id {
                    tracing::info!(version = %asked, current = %version.version_id,
                        "Requeue of a version that is not the key's current one: the current one is queued.");
                }
                let s: Vec<String> = asked_sites
                    .iter()
                    .filter(|s| self.config.sites.iter().any(|c| &&c.name == s))
                    .cloned()
                    .collect();
                (s, true)
            }
            _ => match &record {
                Some(k) if k.is_version(&version.version_id, &version.etag) => {
                    let missing: Vec<String> = sites
                        .iter()
                        .filter(|s| k.site(s).is_none())
                        .cloned()
                        .collect();
                    (missing, false)
                }
                Some(k) if deleted && k.deleted => (Vec::new(), false),
                _ => (sites.clone(), false),
            },
        };
        if sites_to_copy.is_empty() {
            return Ok(None);
        }
        // Namespaces: a site keeping keys as they are takes one bucket's versions only.
        let mut copy = Vec::new();
        let mut conflicts = Vec::new();
        for s in &sites_to_copy {
            if self.owns(s, &bucket).await.map_err(Plan::Stage)? {
                copy.push(s.clone());
            } else {
                conflicts.push(s.clone());
            }
        }
        let change = if force {
            KeyChange::Requeued {
                version: version.clone(),
                sites: sites_to_copy.clone(),
            }
        } else {
            KeyChange::Queued {
                version: version.clone(),
                sites: sites.clone(),
            }
        };
        let mut ops = vec![StoreOp::key(&vref, change)];
        for s in &conflicts {
            let owner = self.owners.get(s).cloned().flatten().unwrap_or_default();
            tracing::error!(site = %s, bucket, key, owner,
                "Namespace conflict: the site keeps keys as they are and belongs to another source bucket; not replicated there.");
            let why = format!(
                "site {s} keeps keys as they are (bucket_match) and belongs to source bucket {owner}"
            );
            let reason = FailureReason::NamespaceConflict;
            ops.push(failed_op(&vref, &version, s, reason, 0, why, now));
        }
        let entry = (!copy.is_empty()).then(|| {
            let e = if current.is_none() {
                Entry::deletion(&bucket, &key, &version, copy.clone())
            } else {
                Entry::queued(&bucket, &key, &version, copy.clone())
            };
            // A requeue copies again even a replica that looks right (it may be corrupt).
            Entry {
                requeued: force,
                queued_ms: now,
                ..e
            }
        });
        Ok(Some((entry, ops)))
    }
}

/// The version `c` (the key's current one at the source) as it is queued; a deletion carries
/// no size.
fn source_version(c: &ObjectInfo, deleted: bool) -> QueuedVersion {
    QueuedVersion {
        version_id: c.version.version_id.clone(),
        etag: c.etag.clone(),
        size: if deleted { 0 } else { c.size },
        written_ms: c.last_modified_ms(),
        deleted,
        backfill: false,
    }
}

/// The op recording `version` FAILED at `site` for `reason` (without a copy attempt by a
/// processor: the populator's own findings).
fn failed_op(
    vref: &VersionRef,
    version: &QueuedVersion,
    site: &str,
    reason: FailureReason,
    attempts: u32,
    last_error: String,
    now: u64,
) -> StoreOp {
    StoreOp::key(
        vref,
        KeyChange::Outcome {
            version_id: version.version_id.clone(),
            site: site.to_string(),
            outcome: SiteOutcome::Failed(FailedInfo {
                size: version.size,
                written_ms: version.written_ms,
                reason,
                attempts,
                last_error,
                last_attempt_ms: now,
            }),
        },
    )
}

/// Why a key could not be planned.
enum Plan {
    /// The store failed: fatal for the stage.
    Stage(StageError),
    /// The source version cannot be read (its tags): recorded FAILED with reason
    /// `SourceUnreadable`, retried at the next pass.
    Unreadable(String),
    /// This key only; the next pass retries.
    Skip(String),
}

impl Plan {
    fn stage(e: crate::store::StoreError) -> Plan {
        Plan::Stage(StageError::Store(e))
    }
}

/// Whether a record says the key's current version is `info`'s, already sent to `sites`.
pub fn up_to_date(record: Option<&KeyState>, info: Option<&ObjectInfo>, sites: &[String]) -> bool {
    match (record, info) {
        (None, None) => true,
        (Some(k), None) => k.deleted,
        (None, Some(i)) => i.is_delete_marker,
        (Some(k), Some(i)) => {
            if i.is_delete_marker {
                k.deleted
            } else {
                k.is_version(&i.version.version_id, &i.etag)
                    && sites.iter().all(|s| k.site(s).is_some())
            }
        }
    }
}
