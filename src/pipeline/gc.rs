//! Garbage collection (DESIGN section 9): what replication leaves behind.
//!
//! - **Transient source**: a version COMPLETED at every site of its rule leaves the source
//!   directory if the file still is that version ([`FileSource::collect`] grabs it with an
//!   atomic rename first, so a file rewritten meanwhile is kept and replicated in turn). The
//!   key's record goes with it ([`KeyChange::Collected`]), so the state of a transient inbox
//!   holds only what is not replicated yet. The status processor hints each key it completes;
//!   a pass at start and every `[gc] interval_s` catches whatever a hint missed (a crash
//!   between the last COMPLETED and the delete: the record, durable before the delete, is
//!   still there, and the file is deleted then or found gone). These deletes are never
//!   replicated: the populator takes absence at a transient source for collection, not
//!   deletion.
//! - **Orphan uploads**: a replication processor records each multipart upload before it
//!   exists and forgets it once completed or aborted ([`StoreOp::PutUpload`]). An upload
//!   recorded but no longer run by a copy (`kill -9`, a cut-off shutdown, a failed abort) is
//!   aborted: one of this process that no copy holds, one of another process when the store is
//!   the embedded one (nobody else writes it) or once older than `[gc] upload_max_age_s`. An
//!   upload whose id a crash lost is found by its key and start time. Only uploads the engine
//!   recorded are touched, and temporary files of the file site older than this process.
//! - **Removed sites**: a site whose consumer group remains but which is no longer configured
//!   loses its group (so log retention proceeds; a group that still has members, a process
//!   with the older configuration, is left for the next pass) and its state: every key record
//!   forgets the site ([`KeyChange::SiteRemoved`]: its pending counts and failed entries go,
//!   and a version waiting only on it is settled).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stage::StageTasks;
use super::StageError;
use crate::log::{replication_group, Log, TOPIC_REPLICATION};
use crate::model::{ReplicationStatus, VersionRef};
use crate::site::Site;
use crate::source::file::{Collected, FileSource};
use crate::store::{StateStore, StoreOp, UploadIntent};
use crate::transitions::KeyChange;

/// Keys hinted by the status processor that wait for the collector.
const HINTS: usize = 4096;
/// Records read per page of a pass.
const PAGE: usize = 1000;
/// An upload whose id was lost is one started this close to its intent.
const UPLOAD_SLACK_MS: u64 = 60_000;

/// First wait before abandoned uploads that could not be aborted are tried again.
const ORPHAN_RETRY: Duration = Duration::from_secs(5);

/// This process's id, drawn at start: the owner of the uploads it records.
pub fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{:x}-{nanos:x}", std::process::id())
    })
}

/// A new upload intent id.
pub fn new_intent_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{:x}", instance(), N.fetch_add(1, Ordering::Relaxed))
}

fn active() -> &'static Mutex<HashSet<String>> {
    static A: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    A.get_or_init(|| Mutex::new(HashSet::new()))
}

/// An upload a copy of this process is running: never collected while this lives.
#[derive(Debug)]
pub struct Active(String);

impl Active {
    /// Marks `intent_id` as running until the guard is dropped.
    pub fn begin(intent_id: &str) -> Active {
        active().lock().insert(intent_id.to_string());
        Active(intent_id.to_string())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        active().lock().remove(&self.0);
    }
}

/// What the collector works on.
pub struct Collector {
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The log (its groups of removed sites).
    pub log: Arc<dyn Log>,
    /// The configured sites whose uploads this process runs (none when it runs no
    /// replication processor).
    pub sites: Vec<Arc<dyn Site>>,
    /// Every configured site's name.
    pub configured: Vec<String>,
    /// A transient directory source and its bucket, when this process runs the status stage.
    pub transient: Option<FileSource>,
    /// The source buckets (whose records a removed site is cleared from).
    pub buckets: Vec<String>,
    /// Passes at start and this often.
    pub interval: Duration,
    /// Another process's upload is abandoned once this old.
    pub upload_max_age: Duration,
    /// No other process writes the store (the embedded one): another owner's upload is dead.
    pub exclusive: bool,
    /// When this process started (ms): older temporary files are no copy's.
    pub started_ms: u64,
    /// The sites' pause states: a paused site is not contacted.
    pub control: Arc<crate::control::Control>,
}

/// Where the status processor hints keys to collect, and the transient source they leave.
#[derive(Clone)]
pub struct Hints {
    tx: mpsc::Sender<(String, String)>,
    source: FileSource,
}

impl Hints {
    /// Hints that `bucket/key` completed a site; a full channel is fine (the collector's next
    /// pass finds the key).
    pub fn completed(&self, bucket: &str, key: &str) {
        let _ = self.tx.try_send((bucket.to_string(), key.to_string()));
    }

    /// Whether `key`'s version `version_id` is still in the transient source. A record found
    /// missing for a version that is not there any more was collected (or the key moved on,
    /// and its newer version is discovered in turn): it must not be recorded again from a
    /// replayed entry. An unreadable source answers no: the populator's next scan discovers
    /// whatever is still there.
    pub async fn still_there(&self, key: &str, version_id: &str) -> bool {
        match self.source.holds(key, version_id).await {
            Ok(there) => there,
            Err(e) => {
                tracing::warn!(key, error = %e, "Cannot read a file of the transient source; the next scan finds it if it is still there.");
                false
            }
        }
    }
}

impl Collector {
    /// Starts the collector in `stage`; returns where to hint completed keys (when a
    /// transient source is collected).
    pub fn start(self, stage: &StageTasks) -> Option<Hints> {
        let (tx, rx) = mpsc::channel(HINTS);
        let hints = self.transient.clone().map(|source| Hints { tx, source });
        stage.spawn(self.run(rx, stage.token().clone()));
        hints
    }

    async fn run(
        self,
        mut hints: mpsc::Receiver<(String, String)>,
        token: CancellationToken,
    ) -> Result<(), StageError> {
        if let Some(file) = &self.transient {
            // Collections a crash cut short, before the first pass looks at the records.
            match file.recover_grabbed().await {
                Ok((0, 0)) => {}
                Ok((back, removed)) => tracing::info!(
                    back,
                    removed,
                    "Files a cut-short collection left renamed put back (or removed when their name was taken again)."
                ),
                Err(e) => tracing::warn!(error = %e,
                    "Cannot look for files a cut-short collection left renamed; the next start does."),
            }
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An abandoned upload that could not be aborted (a site slow or down for a moment) is
        // tried again after ORPHAN_RETRY, doubling up to the pass interval, rather than left
        // for an hour.
        let mut retry: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            let again = async {
                match retry {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let left = tokio::select! {
                biased;
                () = token.cancelled() => return Ok(()),
                _ = tick.tick() => self.pass(&token).await,
                () = again => self.orphans_everywhere(&token).await,
                Some((bucket, key)) = hints.recv() => {
                    self.collect(&bucket, &key).await;
                    continue;
                }
            };
            retry = left.then(|| {
                let wait = retry.map_or(ORPHAN_RETRY, |(_, w)| (w * 2).min(self.interval));
                (tokio::time::Instant::now() + wait, wait)
            });
        }
    }

    /// The orphans step of [`Collector::pass`] alone; `true` when some are left for later.
    async fn orphans_everywhere(&self, token: &CancellationToken) -> bool {
        let mut left = false;
        for site in &self.sites {
            if token.is_cancelled() {
                break;
            }
            // A paused site is not contacted; the next pass after the resume cleans up.
            if !self.control.current(site.name()).paused {
                left |= self.orphans(site.as_ref()).await;
            }
        }
        left
    }

    /// One pass over everything; `true` when abandoned uploads are left for a retry.
    async fn pass(&self, token: &CancellationToken) -> bool {
        self.removed_sites().await;
        let left = self.orphans_everywhere(token).await;
        if token.is_cancelled() {
            return left;
        }
        if let Some(file) = &self.transient {
            let bucket = file.bucket().to_string();
            let mut after: Option<String> = None;
            loop {
                if token.is_cancelled() {
                    return left;
                }
                let page = match self
                    .store
                    .key_states(&bucket, "", after.as_deref(), PAGE)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot read records to collect; the next pass retries.");
                        return left;
                    }
                };
                let last = page.last().map(|(k, _)| k.clone());
                for (key, state) in page {
                    if settled(&state) {
                        self.collect(&bucket, &key).await;
                    }
                }
                match last {
                    Some(l) => after = Some(l),
                    None => break,
                }
            }
        }
        left
    }

    /// Deletes `bucket/key` from the transient source if its record is replicated
    /// everywhere and the file still is that version; the record goes with it.
    async fn collect(&self, bucket: &str, key: &str) {
        let Some(file) = &self.transient else { return };
        let state = match self.store.key_state(bucket, key).await {
            Ok(Some(s)) if settled(&s) => s,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(bucket, key, error = %e, "Cannot read a record to collect.");
                return;
            }
        };
        let done = match file.collect(key, &state.version_id).await {
            Ok(Collected::Deleted(bytes)) => {
                crate::metrics::count_gc_deleted(bytes);
                tracing::debug!(
                    bucket,
                    key,
                    bytes,
                    "Replicated file removed from the transient source."
                );
                true
            }
            Ok(Collected::Gone) => true,
            Ok(Collected::Changed) => false,
            Err(e) => {
                tracing::warn!(bucket, key, error = %e,
                    "Cannot remove a replicated file from the transient source; the next pass retries.");
                false
            }
        };
        if done {
            let op = StoreOp::key(
                &VersionRef::new(bucket, key, state.version_id.clone()),
                KeyChange::Collected {
                    version_id: state.version_id,
                },
            );
            if let Err(e) = self.store.apply(vec![op]).await {
                tracing::warn!(bucket, key, error = %e, "Cannot drop a collected record; the next pass does.");
            }
        }
    }

    /// Aborts the uploads recorded at `site` that no copy runs any more.
    async fn orphans(&self, site: &dyn Site) -> bool {
        let name = site.name();
        let intents = match self.store.uploads(name).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(site = name, error = %e, "Cannot read recorded uploads.");
                return true;
            }
        };
        let mut left = false;
        let now = self.store.now_ms();
        let max_age = u64::try_from(self.upload_max_age.as_millis()).unwrap_or(u64::MAX);
        let mut cleaned = 0u64;
        for (id, intent) in intents {
            if active().lock().contains(&id) {
                continue;
            }
            let abandoned = intent.owner == instance()
                || self.exclusive
                || now.saturating_sub(intent.started_ms) > max_age;
            if !abandoned {
                continue;
            }
            match self.abort_upload(site, &intent).await {
                Ok(n) => {
                    cleaned += n;
                    let op = StoreOp::DeleteUpload {
                        site: name.to_string(),
                        id,
                    };
                    if let Err(e) = self.store.apply(vec![op]).await {
                        tracing::warn!(site = name, error = %e, "Cannot forget an aborted upload.");
                    }
                }
                Err(e) => {
                    left = true;
                    tracing::warn!(site = name, key = %intent.key, error = %e,
                        "Cannot abort an abandoned upload; it is tried again shortly.");
                }
            }
        }
        // Temporary files of single writes cut off before this process started.
        match site.remove_temporaries(self.started_ms).await {
            Ok(n) => cleaned += n,
            Err(e) => tracing::warn!(site = name, error = %e, "Cannot remove temporary files."),
        }
        if cleaned > 0 {
            crate::metrics::count_gc_orphans(cleaned);
            tracing::info!(
                site = name,
                cleaned,
                "Abandoned uploads and temporary files removed."
            );
        }
        left
    }

    /// Aborts the upload of `intent` (found by key and start time when its id was lost);
    /// returns how many were aborted.
    async fn abort_upload(&self, site: &dyn Site, intent: &UploadIntent) -> Result<u64, String> {
        let Some(mp) = site.multipart() else {
            return Ok(0);
        };
        let ids: Vec<String> = match &intent.upload_id {
            Some(id) => vec![id.clone()],
            None => mp
                .uploads_at(&intent.key)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|(_, at)| {
                    *at + UPLOAD_SLACK_MS >= intent.started_ms
                        && *at <= intent.started_ms + UPLOAD_SLACK_MS
                })
                .map(|(id, _)| id)
                .collect(),
        };
        for id in &ids {
            mp.abort(&intent.key, id).await.map_err(|e| e.to_string())?;
        }
        Ok(ids.len() as u64)
    }

    /// Deletes the replication groups of sites no longer configured and forgets those sites
    /// in every key record.
    async fn removed_sites(&self) {
        let groups = match self.log.groups(TOPIC_REPLICATION).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot list consumer groups.");
                return;
            }
        };
        let configured: HashSet<String> = self
            .configured
            .iter()
            .map(|s| replication_group(s))
            .collect();
        for group in groups {
            if configured.contains(&group) {
                continue;
            }
            let Some(site) = group.strip_prefix(&replication_group("")) else {
                continue;
            };
            if site.is_empty() {
                continue;
            }
            let site = site.to_string();
            let forgotten = self.forget_site(&site).await;
            match self.log.delete_group(TOPIC_REPLICATION, &group).await {
                Ok(()) => tracing::info!(
                    site,
                    group,
                    records = forgotten,
                    "Site no longer configured: its consumer group and state removed."
                ),
                Err(e) => tracing::warn!(site, group, error = %e,
                    "Site no longer configured, but its consumer group cannot be deleted yet (a process with the older configuration may still use it); the next pass retries."),
            }
        }
    }

    /// Applies [`KeyChange::SiteRemoved`] to every record naming `site`; returns how many
    /// changed.
    async fn forget_site(&self, site: &str) -> u64 {
        let mut changed = 0;
        for bucket in &self.buckets {
            let mut after: Option<String> = None;
            loop {
                let page = match self
                    .store
                    .key_states(bucket, "", after.as_deref(), PAGE)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(site, error = %e, "Cannot read records of a removed site.");
                        return changed;
                    }
                };
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                let ops: Vec<StoreOp> = page
                    .iter()
                    .filter(|(_, s)| s.site(site).is_some())
                    .map(|(k, s)| {
                        StoreOp::key(
                            &VersionRef::new(bucket, k, s.version_id.clone()),
                            KeyChange::SiteRemoved {
                                site: site.to_string(),
                            },
                        )
                    })
                    .collect();
                if ops.is_empty() {
                    continue;
                }
                match self.store.apply(ops).await {
                    Ok(applied) => changed += applied.iter().filter(|a| **a).count() as u64,
                    Err(e) => {
                        tracing::warn!(site, error = %e, "Cannot forget a removed site.");
                        return changed;
                    }
                }
            }
        }
        changed
    }
}

/// A record replicated everywhere: a live version COMPLETED at every site.
fn settled(s: &crate::model::KeyState) -> bool {
    !s.deleted
        && !s.sites.is_empty()
        && s.sites
            .iter()
            .all(|x| x.status == ReplicationStatus::Completed)
}
