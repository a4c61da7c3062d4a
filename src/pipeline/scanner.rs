//! [`Scanner`]: finds what the events and the watch did not say. A *pass* compares each
//! source bucket with the state store's records and hands the differences to the
//! [`Populator`] (new keys, new versions, keys deleted, sites a rule gained); a pass runs at
//! start (the initial sync), every `[source] scan_interval_s`, when a bucket's replication
//! rules change, and when the directory watch lost events.
//!
//! - S3 (and any source listing keys in byte order): the listing of each key's current
//!   version and the store's records are walked side by side, both in key byte order; a key
//!   missing from the listing is deleted at the source. A durable cursor per bucket
//!   (`scan:<kind>:<bucket>`) lets an interrupted pass resume.
//! - A directory: directory by directory. A directory whose entries' summary (name, kind,
//!   size, mtime, inode) equals the one stored at the last pass is unchanged: nothing of it is
//!   compared with the store (a pass over an unchanged tree of a million files costs its
//!   `stat`s, and no store reads). A changed one is compared file by file; the summary is
//!   stored once its changes are queued, and not when a file in it was modified less than
//!   `settle_ms` ago (the watch, or the next pass, takes it once it has settled).
//! - A watched directory costs less still: while the watch has reported every change since
//!   a directory was last read ([`FileSource::watch_generation`] unchanged), a directory
//!   whose own inode, mtime and ctime are unchanged has the same entries, and its files'
//!   in-place writes were reported by the watch. Its files are not read again: the pass
//!   costs one `stat` of the directory (and a read of its entries' kinds if it has
//!   subdirectories). A directory is read whole again at least every [`STAMP_TTL_MS`] (a
//!   file kept open and written, which the watch reports only once closed), and always
//!   after a restart or a lost event. The stamps are kept in memory, at most
//!   [`MAX_STAMPS`] directories.
//!
//! [`watch`] runs beside it for a watched directory: a file closed after writing or renamed
//! in, or removed, is handed over within milliseconds; a directory created or moved in is
//! walked at once; a directory moved out asks for a pass of its bucket (its files' deletions
//! are found when its parent, changed, is read); lost events ask for a pass.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::populator::{up_to_date, Discovery, Populator};
use super::{StageError, StageTasks};
use crate::error::FailureReason;
use crate::model::{KeyState, ObjectInfo};
use crate::observe::Observer;
use crate::source::file::{DirStamp, FileSource, FileWatch, WatchEvent};
use crate::source::{rule_for, Rule, Source};
use crate::store::{StateStore, StoreOp};

/// Discoveries handed to the populator at once.
const SUBMIT_BATCH: usize = 1000;
/// Records read from the store at once.
const STORE_PAGE: usize = 1000;
/// Failed-set entries read per page when unreadable versions are asked for again.
const FAILED_PAGE: usize = 1000;
/// A watched directory trusted unchanged from its stamp is read whole again after this long.
pub const STAMP_TTL_MS: u64 = 3_600_000;
/// Directories whose stamps are kept (about 100 bytes each); beyond, they are read whole.
pub const MAX_STAMPS: usize = 100_000;
/// A directory changed less than this long ago gets no stamp: file system timestamps are
/// coarse, and an entry added in the same tick as the reading would not change them.
const STAMP_MIN_AGE_MS: u64 = 2_000;

/// What the scanner knows of a watched directory it read whole.
#[derive(Debug, Clone)]
struct Stamped {
    /// The watch generation when it was read.
    generation: u64,
    /// Its summary (with the rules' fingerprint), as stored.
    summary: u64,
    /// The fingerprint of the rules it was compared with.
    rules: u64,
    stamp: DirStamp,
    /// It had no subdirectories.
    leaf: bool,
    /// When it was read whole.
    read_ms: u64,
}

/// The stamps of one pass: those of the last pass, and those this pass made.
struct Stamps {
    last: HashMap<String, Stamped>,
    next: HashMap<String, Stamped>,
}

impl Stamps {
    fn keep(&mut self, key: String, s: Stamped) {
        if self.next.len() < MAX_STAMPS {
            self.next.insert(key, s);
        }
    }
}

/// What a directory pass read.
enum DirRead {
    /// Every entry.
    Whole(crate::source::file::DirScan),
    /// Trusted unchanged from its stamp: only its subdirectories.
    Unchanged(Vec<String>),
}

/// What a pass is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassRequest {
    /// Every bucket.
    All,
    /// One bucket.
    Bucket(String),
}

/// Handle to ask the scanner for a pass.
#[derive(Debug, Clone)]
pub struct PassHandle {
    tx: mpsc::UnboundedSender<PassRequest>,
}

impl PassHandle {
    /// Asks for a pass (coalesced with one already waiting).
    pub fn request(&self, r: PassRequest) {
        let _ = self.tx.send(r);
    }
}

/// When passes run and what they take.
#[derive(Debug, Clone, Copy)]
pub struct ScanConfig {
    /// Between two full passes (zero: only when asked).
    pub interval: Duration,
    /// A directory pass leaves files modified less than this long ago (ms) to a later pass.
    pub settle_ms: u64,
}

/// The periodic passes over every source bucket.
pub struct Scanner {
    populator: Populator,
    source: Arc<dyn Source>,
    store: Arc<dyn StateStore>,
    interval: Duration,
    settle_ms: u64,
    token: CancellationToken,
    requests: mpsc::UnboundedReceiver<PassRequest>,
    observer: Arc<Observer>,
    /// Files of the current directory pass left for being modified too recently.
    unsettled: AtomicUsize,
    /// The stamps of the last pass over a watched directory, by `bucket/dir`.
    stamps: Mutex<HashMap<String, Stamped>>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("interval", &self.interval)
            .finish()
    }
}

/// The store cursor name of a pass over `bucket` of a source of `kind`.
pub fn cursor_name(kind: &str, bucket: &str) -> String {
    format!("scan:{kind}:{bucket}")
}

/// The sites `rules` send `key` to, for rules without tag filters (with them, only the
/// populator can tell: it reads the tags).
fn sites_for(rules: &[Rule], key: &str) -> Vec<String> {
    rule_for(rules, key, &Default::default())
        .map(|r| r.sites.clone())
        .unwrap_or_default()
}

/// A stable fingerprint of `rules`: summaries of a directory taken under other rules do not
/// count (a site added to a rule must get what already exists).
fn rules_fingerprint(rules: &[Rule]) -> u64 {
    let text = format!("{rules:?}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Scanner {
    /// Starts the scanner in `stage`: a pass at once, then every `interval` (zero: only when
    /// asked), and whenever `rules_changed` names a bucket. Returns the handle to ask for
    /// passes.
    pub fn start(
        populator: Populator,
        source: Arc<dyn Source>,
        store: Arc<dyn StateStore>,
        cfg: ScanConfig,
        mut rules_changed: mpsc::UnboundedReceiver<String>,
        observer: Arc<Observer>,
        stage: &StageTasks,
    ) -> PassHandle {
        let ScanConfig {
            interval,
            settle_ms,
        } = cfg;
        let (tx, requests) = mpsc::unbounded_channel();
        let handle = PassHandle { tx };
        let forward = handle.clone();
        let token = stage.token().clone();
        stage.spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    b = rules_changed.recv() => match b {
                        Some(b) => forward.request(PassRequest::Bucket(b)),
                        None => {
                            token.cancelled().await;
                            return Ok(());
                        }
                    },
                }
            }
        });
        let s = Scanner {
            populator,
            source,
            store,
            interval,
            settle_ms,
            token: stage.token().clone(),
            requests,
            observer,
            unsettled: AtomicUsize::new(0),
            stamps: Mutex::new(HashMap::new()),
        };
        stage.spawn(s.run());
        handle
    }

    async fn run(mut self) -> Result<(), StageError> {
        for bucket in self.source.buckets() {
            match self.source.versioning_enabled(&bucket).await {
                Ok(Some(false)) => tracing::warn!(bucket,
                    "Source bucket without versioning: overwrites replace the null version; they are replicated by comparing ETags."),
                Ok(_) => {}
                Err(e) => tracing::debug!(bucket, error = %crate::error::chain(&e),
                    "Cannot read the bucket's versioning state."),
            }
        }
        let mut pending: Option<PassRequest> = Some(PassRequest::All);
        let mut first = true;
        loop {
            let mut follow_up = None;
            if let Some(req) = pending.take() {
                let buckets = match req {
                    PassRequest::All => self.source.buckets(),
                    PassRequest::Bucket(b) => vec![b],
                };
                for bucket in buckets {
                    if self.token.is_cancelled() {
                        return Ok(());
                    }
                    self.unsettled.store(0, Ordering::Relaxed);
                    self.pass(&bucket).await?;
                    // Files still being written when the first pass reached them may predate
                    // the watch: they are looked at again once settled, not at the next
                    // rescan minutes later.
                    if first && self.unsettled.load(Ordering::Relaxed) > 0 {
                        follow_up = Some(Duration::from_millis(self.settle_ms.saturating_add(100)));
                    }
                }
                first = false;
            }
            let interval = self.interval;
            let sleep = async move {
                match follow_up {
                    Some(d) => tokio::time::sleep(d).await,
                    None if interval.is_zero() => std::future::pending::<()>().await,
                    None => tokio::time::sleep(interval).await,
                }
            };
            tokio::select! {
                biased;
                () = self.token.cancelled() => return Ok(()),
                r = self.requests.recv() => {
                    let Some(r) = r else { return Ok(()) };
                    pending = Some(r);
                    // Coalesce what else is waiting: one pass covers it.
                    while let Ok(more) = self.requests.try_recv() {
                        if more == PassRequest::All || pending.as_ref() != Some(&more) {
                            pending = Some(if more == PassRequest::All { more } else { PassRequest::All });
                        }
                    }
                }
                () = sleep => pending = Some(PassRequest::All),
            }
        }
    }

    async fn pass(&self, bucket: &str) -> Result<(), StageError> {
        let rules = match self.populator.rules(bucket).await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(bucket, %error, "Cannot read the replication rules; the next pass retries.");
                return Ok(());
            }
        };
        let started = std::time::Instant::now();
        match self.retry_unreadable(bucket, &rules).await {
            Ok(_) => {}
            Err(Stop::Stage(e)) => return Err(e),
            Err(Stop::Cancelled) => return Ok(()),
            Err(Stop::Retry(error)) => {
                tracing::warn!(bucket, %error, "Cannot ask again for unreadable versions; the next pass does.");
            }
        }
        let result = match self.source.as_file() {
            Some(file) => self.file_pass(file, bucket, &rules).await,
            None => self.keyspace_pass(bucket, &rules).await.map(|n| (n, None)),
        };
        match result {
            Ok((n, dirs)) => {
                self.observer.scan_done(bucket);
                let (dirs, dirs_read) = dirs.map_or((None, None), |c| (Some(c.dirs), Some(c.read)));
                tracing::info!(
                    bucket,
                    queued = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    dirs,
                    dirs_read,
                    "Scan pass done."
                );
            }
            Err(Stop::Stage(e)) => return Err(e),
            Err(Stop::Cancelled) => {}
            Err(Stop::Retry(error)) => {
                tracing::warn!(bucket, %error, "Scan pass interrupted; the next pass resumes.")
            }
        }
        Ok(())
    }

    /// Versions of `bucket` FAILED because the source could not be read (reason
    /// `SourceUnreadable`) are asked for again at every pass: copied if they can be read now,
    /// FAILED again (with this attempt's error) if not.
    async fn retry_unreadable(&self, bucket: &str, rules: &[Rule]) -> Result<usize, Stop> {
        let mut sites: Vec<&String> = rules.iter().flat_map(|r| r.sites.iter()).collect();
        sites.sort();
        sites.dedup();
        let mut asked = 0;
        for site in sites {
            let mut marker = None;
            let mut out = Vec::new();
            // The failed set is bounded by its 24 h window; so is this walk.
            loop {
                if self.token.is_cancelled() {
                    return Err(Stop::Cancelled);
                }
                let page = self
                    .store
                    .failed_page(site, marker, FAILED_PAGE)
                    .await
                    .map_err(Stop::store)?;
                out.extend(
                    page.entries
                        .into_iter()
                        .filter(|e| {
                            e.info.reason == FailureReason::SourceUnreadable
                                && e.version.bucket == bucket
                        })
                        .map(|e| Discovery::Requeue {
                            version: e.version,
                            sites: vec![site.clone()],
                        }),
                );
                match page.next_marker {
                    Some(m) => marker = Some(m),
                    None => break,
                }
            }
            asked += out.len();
            for chunk in out.chunks(SUBMIT_BATCH) {
                if let Err(error) = self.populator.submit(chunk.to_vec()).await {
                    tracing::warn!(bucket, site, %error, "Cannot ask again for unreadable versions; the next pass does.");
                }
            }
        }
        if asked > 0 {
            tracing::info!(
                bucket,
                versions = asked,
                "Versions the source could not be read for asked again."
            );
        }
        Ok(asked)
    }

    async fn submit(&self, items: &mut Vec<Discovery>) -> Result<usize, Stop> {
        if items.is_empty() {
            return Ok(0);
        }
        self.populator
            .submit(std::mem::take(items))
            .await
            .map_err(Stop::Retry)
    }

    /// A pass over a source listing keys in byte order, side by side with the records.
    async fn keyspace_pass(&self, bucket: &str, rules: &[Rule]) -> Result<usize, Stop> {
        let name = cursor_name(self.source.kind(), bucket);
        // Where an interrupted pass stopped: the listing's cursor and the last key compared.
        let saved: Option<PassCursor> = self
            .store
            .cursor(&name)
            .await
            .map_err(Stop::store)?
            .and_then(|c| serde_json::from_slice(&c).ok());
        let (mut cursor, mut records_after) = match saved {
            Some(c) => (Some(c.listing), Some(c.key)),
            None => (None, None),
        };
        let full = self.source.listing_is_full_metadata();
        let needs_tags = rules.iter().any(Rule::needs_tags);
        let mut queued = 0;
        let mut records = Records {
            store: self.store.clone(),
            bucket: bucket.to_string(),
            buffer: Default::default(),
            after: records_after.clone(),
            done: false,
        };
        loop {
            if self.token.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            // A listing whose marker does not advance would loop for ever, and a saved marker
            // the source refuses would fail every pass: either starts the next pass over.
            let page = match self.source.list_current(bucket, cursor.as_deref()).await {
                Ok(p) if p.next.is_some() && p.next == cursor => Err(format!(
                    "the listing does not advance past marker {cursor:?}"
                )),
                Ok(p) => Ok(p),
                Err(crate::source::SourceError::Invalid(e)) => Err(e),
                Err(e) => return Err(Stop::Retry(e.to_string())),
            };
            let page = match page {
                Ok(p) => p,
                Err(stuck) => {
                    tracing::error!(bucket, marker = ?cursor, error = %stuck,
                    "Listing stuck; the next pass starts over from the first key.");
                    self.store
                        .apply(vec![StoreOp::PutCursor {
                            name: name.clone(),
                            value: Vec::new(),
                        }])
                        .await
                        .map_err(Stop::store)?;
                    return Err(Stop::Retry(format!("listing of {bucket}: {stuck}")));
                }
            };
            let mut out: Vec<Discovery> = Vec::new();
            let deleted = |key: String| Discovery::Current {
                bucket: bucket.to_string(),
                key,
                current: None,
                full: true,
            };
            for item in page.items {
                let key = item.version.key.clone();
                // Records before this key are keys the listing no longer has: deleted.
                for (k, r) in records.before(&key).await? {
                    if !r.deleted {
                        out.push(deleted(k));
                    }
                }
                let record = records.take(&key).await?;
                records_after = Some(key.clone());
                let covered = needs_tags || !sites_for(rules, &key).is_empty();
                let sites = if needs_tags {
                    Vec::new()
                } else {
                    sites_for(rules, &key)
                };
                if covered && !up_to_date(record.as_ref(), Some(&item), &sites) {
                    out.push(Discovery::Current {
                        bucket: bucket.to_string(),
                        key,
                        current: Some(Box::new(item)),
                        full,
                    });
                }
                if out.len() >= SUBMIT_BATCH {
                    queued += self.submit(&mut out).await?;
                }
            }
            if page.next.is_none() {
                // The listing is over: every record left is a deleted key.
                while let Some((k, r)) = records.next().await? {
                    if !r.deleted {
                        out.push(deleted(k));
                    }
                    if out.len() >= SUBMIT_BATCH {
                        queued += self.submit(&mut out).await?;
                    }
                }
            }
            queued += self.submit(&mut out).await?;
            let value = match (&page.next, &records_after) {
                (Some(listing), Some(key)) => serde_json::to_vec(&PassCursor {
                    listing: listing.clone(),
                    key: key.clone(),
                })
                .unwrap_or_default(),
                _ => Vec::new(),
            };
            self.store
                .apply(vec![StoreOp::PutCursor {
                    name: name.clone(),
                    value,
                }])
                .await
                .map_err(Stop::store)?;
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        Ok(queued)
    }

    /// A pass over a directory source, directory by directory.
    async fn file_pass(
        &self,
        file: &FileSource,
        bucket: &str,
        rules: &[Rule],
    ) -> Result<(usize, Option<PassCount>), Stop> {
        let fp = rules_fingerprint(rules);
        let mut stamps = Stamps {
            last: std::mem::take(&mut *self.stamps.lock().unwrap_or_else(|e| e.into_inner())),
            next: HashMap::new(),
        };
        let mut count = PassCount::default();
        let result = async {
            let mut queued = 0;
            let mut dirs = vec![String::new()];
            while let Some(dir) = dirs.pop() {
                if self.token.is_cancelled() {
                    return Err(Stop::Cancelled);
                }
                queued += self
                    .dir_pass(
                        file,
                        bucket,
                        rules,
                        fp,
                        &dir,
                        &mut dirs,
                        &mut stamps,
                        &mut count,
                    )
                    .await?;
            }
            Ok(queued)
        }
        .await;
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps.next;
        result.map(|queued| (queued, Some(count)))
    }

    /// Compares one directory with the records; pushes its subdirectories on `dirs`.
    #[allow(clippy::too_many_arguments)]
    async fn dir_pass(
        &self,
        file: &FileSource,
        bucket: &str,
        rules: &[Rule],
        fp: u64,
        dir: &str,
        dirs: &mut Vec<String>,
        stamps: &mut Stamps,
        count: &mut PassCount,
    ) -> Result<usize, Stop> {
        let now = self.store.now_ms();
        let settled = now.saturating_sub(self.settle_ms);
        let stored = self
            .store
            .dir_summary(bucket, dir)
            .await
            .map_err(Stop::store)?;
        // Read before the directory: a change after this reading ends the trust in what
        // is read now.
        let generation = file.watch_generation();
        let stamp_key = format!("{bucket}/{dir}");
        let trusted = generation.and_then(|g| {
            stamps.last.remove(&stamp_key).filter(|s| {
                s.generation == g
                    && s.rules == fp
                    && stored == Some(s.summary)
                    && now.saturating_sub(s.read_ms) < STAMP_TTL_MS
            })
        });
        let f = file.clone();
        let d = dir.to_string();
        let expected = trusted.as_ref().map(|s| (s.stamp, s.leaf));
        let read = tokio::task::spawn_blocking(move || {
            let Some(stamp) = f.dir_stamp(&d)? else {
                return Ok(None);
            };
            if let Some((_, leaf)) = expected.filter(|(known, _)| *known == stamp) {
                if leaf {
                    return Ok(Some((stamp, DirRead::Unchanged(Vec::new()))));
                }
                return Ok(f.subdirs(&d)?.map(|s| (stamp, DirRead::Unchanged(s))));
            }
            Ok(f.scan_dir(&d, settled, None)?
                .map(|s| (stamp, DirRead::Whole(s))))
        })
        .await
        .map_err(|e| Stop::Retry(format!("scan task failed: {e}")))?
        .map_err(|e: std::io::Error| Stop::Retry(format!("cannot read directory {dir:?}: {e}")))?;
        let Some((stamp, read)) = read else {
            return Ok(0);
        };
        count.dirs += 1;
        let scan = match read {
            DirRead::Unchanged(subdirs) => {
                dirs.extend(subdirs);
                if let Some(s) = trusted {
                    stamps.keep(stamp_key, s);
                }
                return Ok(0);
            }
            DirRead::Whole(scan) => scan,
        };
        count.read += 1;
        dirs.extend(scan.subdirs.iter().cloned());
        let summary = scan.summary ^ fp;
        // Trusted next time only if nothing in it may change unseen in the same tick.
        let stamped = generation
            .filter(|_| {
                stamp.changed_ms() < now.saturating_sub(self.settle_ms.max(STAMP_MIN_AGE_MS))
            })
            .map(|generation| Stamped {
                generation,
                summary,
                rules: fp,
                stamp,
                leaf: scan.subdirs.is_empty(),
                read_ms: now,
            });
        if stored == Some(summary) {
            if let Some(s) = stamped {
                stamps.keep(stamp_key, s);
            }
            return Ok(0);
        }
        // Changed: its files, compared one by one (streamed, never held whole).
        let mut queued = 0;
        let (tx, mut rx) = mpsc::channel::<ObjectInfo>(SUBMIT_BATCH);
        let f = file.clone();
        let d = dir.to_string();
        let reader = tokio::task::spawn_blocking(move || {
            f.scan_dir(
                &d,
                settled,
                Some(&mut |info| {
                    let _ = tx.blocking_send(info);
                }),
            )
        });
        let mut out = Vec::new();
        while let Some(info) = rx.recv().await {
            let key = info.version.key.clone();
            let record = self
                .store
                .key_state(bucket, &key)
                .await
                .map_err(Stop::store)?;
            let needs_tags = rules.iter().any(Rule::needs_tags);
            let sites = if needs_tags {
                Vec::new()
            } else {
                sites_for(rules, &key)
            };
            let covered = needs_tags || !sites.is_empty();
            if covered && !up_to_date(record.as_ref(), Some(&info), &sites) {
                out.push(Discovery::Current {
                    bucket: bucket.to_string(),
                    key,
                    current: Some(Box::new(info)),
                    full: true,
                });
            }
            if out.len() >= SUBMIT_BATCH {
                queued += self.submit(&mut out).await?;
            }
        }
        let rescan = reader
            .await
            .map_err(|e| Stop::Retry(format!("scan task failed: {e}")))?
            .map_err(|e| Stop::Retry(format!("cannot read directory {dir:?}: {e}")))?;
        let unsettled = rescan.as_ref().map_or(0, |s| s.unsettled);
        self.unsettled.fetch_add(unsettled, Ordering::Relaxed);
        // Records of files no longer there, and of subdirectories gone whole.
        let present: HashSet<&str> = scan.subdirs.iter().map(String::as_str).collect();
        let mut gone_dirs = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (children, subdirs) = self
                .store
                .key_children(bucket, dir, after.as_deref(), STORE_PAGE)
                .await
                .map_err(Stop::store)?;
            for sub in subdirs {
                if !present.contains(sub.as_str()) && !gone_dirs.contains(&sub) {
                    gone_dirs.push(sub);
                }
            }
            let more = children.len() >= STORE_PAGE;
            after = children.last().map(|(k, _)| k.clone());
            for (key, r) in children {
                if r.deleted {
                    continue;
                }
                let exists = file
                    .path_of(&key)
                    .is_some_and(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
                if !exists {
                    out.push(Discovery::Current {
                        bucket: bucket.to_string(),
                        key,
                        current: None,
                        full: true,
                    });
                }
            }
            if out.len() >= SUBMIT_BATCH {
                queued += self.submit(&mut out).await?;
            }
            if !more {
                break;
            }
        }
        for sub in &gone_dirs {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .key_states(bucket, sub, after.as_deref(), STORE_PAGE)
                    .await
                    .map_err(Stop::store)?;
                let more = page.len() >= STORE_PAGE;
                after = page.last().map(|(k, _)| k.clone());
                for (key, r) in page {
                    if !r.deleted {
                        out.push(Discovery::Current {
                            bucket: bucket.to_string(),
                            key,
                            current: None,
                            full: true,
                        });
                    }
                }
                if out.len() >= SUBMIT_BATCH {
                    queued += self.submit(&mut out).await?;
                }
                if !more {
                    break;
                }
            }
        }
        queued += self.submit(&mut out).await?;
        let mut ops: Vec<StoreOp> = gone_dirs
            .into_iter()
            .map(|prefix| StoreOp::DeleteDirSummaries {
                bucket: bucket.to_string(),
                prefix,
            })
            .collect();
        if unsettled == 0 {
            ops.push(StoreOp::PutDirSummary {
                bucket: bucket.to_string(),
                dir: dir.to_string(),
                summary,
            });
        }
        if !ops.is_empty() {
            self.store.apply(ops).await.map_err(Stop::store)?;
        }
        if let (0, Some(s)) = (unsettled, stamped) {
            stamps.keep(stamp_key, s);
        }
        Ok(queued)
    }
}

/// The directories of a pass over a directory source.
#[derive(Debug, Default)]
struct PassCount {
    /// Directories passed.
    dirs: u64,
    /// Those read whole (not trusted unchanged from a stamp).
    read: u64,
}

/// Where an interrupted keyspace pass resumes.
#[derive(serde::Serialize, serde::Deserialize)]
struct PassCursor {
    /// The source listing's cursor.
    listing: String,
    /// The last key compared.
    key: String,
}

/// The records of a bucket, read page by page in key order.
struct Records {
    store: Arc<dyn StateStore>,
    bucket: String,
    buffer: std::collections::VecDeque<(String, KeyState)>,
    after: Option<String>,
    done: bool,
}

impl Records {
    async fn fill(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() && !self.done {
            let more = self
                .store
                .key_states(&self.bucket, "", self.after.as_deref(), STORE_PAGE)
                .await
                .map_err(Stop::store)?;
            self.done = more.len() < STORE_PAGE;
            if let Some((k, _)) = more.last() {
                self.after = Some(k.clone());
            }
            self.buffer.extend(more);
        }
        Ok(())
    }

    /// The next record.
    async fn next(&mut self) -> Result<Option<(String, KeyState)>, Stop> {
        self.fill().await?;
        Ok(self.buffer.pop_front())
    }

    /// The records of keys before `key`.
    async fn before(&mut self, key: &str) -> Result<Vec<(String, KeyState)>, Stop> {
        let mut out = Vec::new();
        loop {
            self.fill().await?;
            match self.buffer.front() {
                Some((k, _)) if k.as_bytes() < key.as_bytes() => {
                    if let Some(x) = self.buffer.pop_front() {
                        out.push(x);
                    }
                }
                _ => return Ok(out),
            }
        }
    }

    /// The record of `key`, if it is the next one.
    async fn take(&mut self, key: &str) -> Result<Option<KeyState>, Stop> {
        self.fill().await?;
        match self.buffer.front() {
            Some((k, _)) if k == key => Ok(self.buffer.pop_front().map(|(_, r)| r)),
            _ => Ok(None),
        }
    }
}

/// Why a pass stopped early.
enum Stop {
    /// The store failed: fatal for the stage.
    Stage(StageError),
    /// The stage is stopping.
    Cancelled,
    /// Something to retry at the next pass.
    Retry(String),
}

impl Stop {
    fn store(e: crate::store::StoreError) -> Stop {
        Stop::Stage(StageError::Store(e))
    }
}

/// Starts the watch of a directory source in `stage`: what it reports reaches the populator
/// within milliseconds; lost events ask `passes` for a pass.
///
/// # Errors
/// The watch cannot be set up (e.g. the inotify watch limit).
pub fn watch(
    file: FileSource,
    populator: Populator,
    passes: PassHandle,
    capacity: usize,
    observer: Arc<Observer>,
    stage: &StageTasks,
) -> Result<(), crate::source::SourceError> {
    let w = file.watch(capacity)?;
    let token = stage.token().clone();
    // `GET status` shows the source watched while the watch runs.
    observer.set_watching(file.bucket(), true);
    stage.spawn(run_watch(file, w, populator, passes, observer, token));
    Ok(())
}

/// How long events are gathered before they are handed over (one populator batch).
const WATCH_LINGER: Duration = Duration::from_millis(5);

/// Moves the events waiting in `rx` to `events`, up to [`SUBMIT_BATCH`] in all.
fn take_ready(rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>, events: &mut Vec<WatchEvent>) {
    while events.len() < SUBMIT_BATCH {
        match rx.try_recv() {
            Ok(e) => events.push(e),
            Err(_) => break,
        }
    }
}

async fn run_watch(
    file: FileSource,
    mut w: FileWatch,
    populator: Populator,
    passes: PassHandle,
    observer: Arc<Observer>,
    token: CancellationToken,
) -> Result<(), StageError> {
    let bucket = file.bucket().to_string();
    loop {
        let first = tokio::select! {
            biased;
            () = token.cancelled() => return Ok(()),
            e = w.events.recv() => match e {
                Some(e) => e,
                None => {
                    file.watch_missed();
                    observer.set_watching(&bucket, false);
                    tracing::error!(bucket, "The watch of the source directory ended; changes are found by the rescans only.");
                    passes.request(PassRequest::All);
                    return Ok(());
                }
            },
        };
        // What comes within WATCH_LINGER joins the batch. The task sleeps meanwhile, then
        // takes what came: waiting on the channel instead would wake it once per event (a
        // file written is an event; a burst of small files, thousands of wake-ups a second).
        let mut events = vec![first];
        take_ready(&mut w.events, &mut events);
        // Not cut short by a stop: what was taken is handed over, as before the linger.
        if events.len() < SUBMIT_BATCH {
            tokio::time::sleep(WATCH_LINGER).await;
            take_ready(&mut w.events, &mut events);
        }
        let mut items = Vec::new();
        for e in events {
            match e {
                WatchEvent::Written(key) | WatchEvent::Removed(key) => {
                    items.push(Discovery::Changed {
                        bucket: bucket.clone(),
                        key,
                        at_ms: None,
                    });
                }
                WatchEvent::Directory(prefix) => {
                    // Moved or created whole: its files are not announced one by one.
                    let f = file.clone();
                    let found = tokio::task::spawn_blocking(move || {
                        let mut found = Vec::new();
                        let r = f.walk_sorted(&prefix, None, &mut |info| {
                            found.push(info);
                            true
                        });
                        r.map(|_| found)
                    })
                    .await;
                    match found {
                        Ok(Ok(found)) => {
                            items.extend(found.into_iter().map(|info| Discovery::Current {
                                bucket: bucket.clone(),
                                key: info.version.key.clone(),
                                current: Some(Box::new(info)),
                                full: true,
                            }))
                        }
                        _ => {
                            file.watch_missed();
                            passes.request(PassRequest::All);
                        }
                    }
                }
                WatchEvent::Rescan => passes.request(PassRequest::All),
                // Its files' records are compared when its parent, changed, is read: a pass
                // of this bucket, with the watch's generation kept (only changed directories
                // are read).
                WatchEvent::DirectoryGone(_) => passes.request(PassRequest::Bucket(bucket.clone())),
            }
        }
        for chunk in items.chunks(SUBMIT_BATCH) {
            if let Err(error) = populator.submit(chunk.to_vec()).await {
                tracing::warn!(%error, "Could not queue what the watch saw; a pass will.");
                file.watch_missed();
                passes.request(PassRequest::All);
            }
        }
    }
}
