//! The `file` site: replicas written under a local directory (edge installs).
//!
//! Invariants:
//! - **Nothing is ever written outside the root directory.** A key is split on `/` and each
//!   segment is encoded reversibly ([`encode_segment`]): `%` and NUL are percent-encoded, and the
//!   segments that mean something to a file system (`""`, `.`, `..`) become `%`, `%2E`,
//!   `%2E%2E`. So `../x` lands at `<root>/%2E%2E/x`, `/etc/passwd` at `<root>/%/etc/passwd`.
//!   Intermediate directories are created one by one and never followed when they are symbolic
//!   links (such a key is rejected), so a link planted in the tree cannot lead out of it.
//! - **A reader never sees a partial replica.** Data goes to a temporary file in the target's
//!   directory, is made durable, then renamed over the target; the directory is fsynced after.
//! - **A replica is durable when `put` returns** (DESIGN section 3: COMPLETED only once durable),
//!   and replicas written concurrently share their syncs (group commit, issue 17): each `put`
//!   writes its data and sidecar to temporary files and hands them to the site's committer,
//!   which takes every replica waiting at that moment as one batch: it fdatasyncs all their
//!   files at once (concurrent syncs share the file system's journal commits), renames each
//!   replica's data then sidecar into place, fsyncs each directory touched once for the whole
//!   batch, and only then answers each `put`. A failed sync or rename fails only the replicas it
//!   concerns (their temporary files removed); a failed directory sync fails those of that
//!   directory. A crash before the answer leaves either the previous replica or the new one, each
//!   whole, never acknowledged early.
//! - Versions of one key overwrite each other: the newest applied wins.
//!
//! Layout, for a key `a/b c` (source bucket `photos`, source version `v1`):
//!
//! ```text
//! <root>/a/b c                  the replica's bytes
//! <root>/a/b c%meta.json        sidecar: {"scal-replication-status":"REPLICA",
//!                                         "scal-version-id":"v1", "bucket":"photos",
//!                                         "key":"a/b c", "content-type":..., "size":...,
//!                                         "etag":..., "last-modified":...,
//!                                         "user-metadata":{...}, "tags":{...}}
//! <root>/a/b c%tmp.<hex>        a write in progress (data or sidecar)
//! <root>/a/b c%mpu.<hex>        a multipart upload in progress (preallocated, parts at offsets)
//! ```
//!
//! The suffixes `%meta.json`, `%tmp.`, `%mpu.` can never end an encoded key segment: in an
//! encoded segment `%` is always followed by two hex digits or is the whole segment, and `m`/`t`
//! are not hex digits. So no key can collide with a sidecar or a temporary file.
//!
//! The sidecar is renamed into place right after the data, so for a brief moment a reader may
//! see the new data with the previous sidecar; the data itself is never partial.
//!
//! Objects up to [`SMALL_OBJECT`] bytes are read whole into memory and written in one blocking
//! call (directories, data and sidecar), sparing a thread hop per system call; larger ones are
//! streamed to disk as they arrive. A [`SmallWriter`] does the same write for a caller already
//! off the runtime's threads (a small file from a directory source, read and written in the
//! same call); its replica then goes through the same group commit ([`FileSite::commit_written`]).
//!
//! A key that needs a name both as a file and as a directory (`a` and `a/b`) cannot be stored:
//! the second one is [`SiteError::Rejected`].

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::parts::part_ranges;
use super::{
    Durable, ListPage, MultipartSite, PartReceipt, PutReceipt, ReplicaInfo, Site, SiteError,
};
use crate::config::SiteKind;
use crate::model::{ByteStream, ObjectInfo};

/// Suffix of the sidecar metadata file of a replica.
pub const SIDECAR_SUFFIX: &str = "%meta.json";
const TMP_INFIX: &str = "%tmp.";
const MPU_INFIX: &str = "%mpu.";
/// Objects up to this size are read whole into memory before they are written (bounded: one
/// per copy in flight).
pub const SMALL_OBJECT: u64 = 1024 * 1024;
/// Most replicas one group commit takes (the rest wait for the next).
const MAX_BATCH: usize = 256;
/// From this many files in a batch, the batch is synced with one `syncfs` per file system
/// (before the renames, and again after them for the directories) instead of one
/// `fdatasync` per file and one `fsync` per directory: concurrent per-file syncs top out near
/// 2,000 files/s here, `syncfs` passes 20,000. Below it (a trickle of live files) the
/// per-file syncs never wait on unrelated dirty data of the same file system.
const SYNCFS_FROM: usize = 16;

/// The sidecar metadata written beside each replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Always `REPLICA`.
    #[serde(rename = "scal-replication-status")]
    pub replication_status: String,
    /// The source version id.
    #[serde(rename = "scal-version-id")]
    pub version_id: String,
    /// MD5 (hex) of the replica's bytes, computed as they were written.
    #[serde(rename = "scal-md5", default)]
    pub md5: String,
    /// Source bucket.
    pub bucket: String,
    /// Source object key, as given (not encoded).
    pub key: String,
    /// Content type.
    #[serde(
        rename = "content-type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    /// The other standard headers (`content-encoding`, `content-disposition`,
    /// `content-language`, `cache-control`, `expires`), by lowercase name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Size in bytes.
    pub size: u64,
    /// Source ETag.
    pub etag: String,
    /// Source last-modified.
    #[serde(rename = "last-modified")]
    pub last_modified: String,
    /// User metadata.
    #[serde(rename = "user-metadata", default)]
    pub user_metadata: BTreeMap<String, String>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Sidecar {
    fn of(obj: &ObjectInfo, md5: &str) -> Sidecar {
        let headers = obj
            .headers
            .pairs()
            .into_iter()
            .filter(|(n, _)| *n != "content-type")
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Sidecar {
            replication_status: "REPLICA".into(),
            version_id: obj.version.version_id.clone(),
            md5: md5.to_string(),
            bucket: obj.version.bucket.clone(),
            key: obj.version.key.clone(),
            content_type: obj.headers.content_type.clone(),
            headers,
            size: obj.size,
            etag: obj.etag.clone(),
            last_modified: obj.last_modified.clone(),
            user_metadata: obj.user_metadata.clone(),
            tags: obj.tags.clone(),
        }
    }
}

/// Encodes one key segment into a safe file name (see the module doc). Reversible with
/// [`decode_segment`].
pub fn encode_segment(seg: &str) -> String {
    match seg {
        "" => return "%".into(),
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        _ => {}
    }
    let mut out = String::with_capacity(seg.len());
    for c in seg.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes a file name made by [`encode_segment`]; `None` if it is not one.
pub fn decode_segment(name: &str) -> Option<String> {
    match name {
        "%" => return Some(String::new()),
        "%2E" => return Some(".".into()),
        "%2E%2E" => return Some("..".into()),
        _ => {}
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        match code {
            "25" => out.push('%'),
            "00" => out.push('\0'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The relative path of a key under the root: one encoded component per segment.
pub fn key_to_relative_path(key: &str) -> PathBuf {
    key.split('/').map(encode_segment).collect()
}

/// A local directory as a replication site.
#[derive(Debug)]
pub struct FileSite {
    name: String,
    root: PathBuf,
    committer: Committer,
}

/// Counters of the group commit, for tests and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Replicas (and deletions) made durable or failed through the committer.
    pub commits: u64,
    /// Batches: each shares its file syncs and one sync per directory.
    pub batches: u64,
}

/// What one replica (or deletion) asks of the group commit. It holds paths, not open files:
/// however many replicas wait for a commit, they hold no file descriptors.
struct Commit {
    /// Written files to make durable first (data, sidecar), closed.
    sync: Vec<PathBuf>,
    /// Renames `(from, to)`, in order, once every file of this commit is durable.
    renames: Vec<(PathBuf, PathBuf)>,
    /// The directory whose entries change, fsynced after the renames.
    dir: PathBuf,
    /// The answer: `Ok` once durable, else what failed on which path.
    done: oneshot::Sender<Result<(), CommitError>>,
}

/// A failed step of a commit.
#[derive(Debug)]
struct CommitError {
    what: &'static str,
    path: PathBuf,
    error: std::io::Error,
}

/// The site's group commit: a task, started on first use, that takes every waiting
/// [`Commit`] as one batch (see the module doc).
#[derive(Debug, Default)]
struct Committer {
    tx: OnceLock<mpsc::UnboundedSender<Commit>>,
    stats: Arc<CommitCounters>,
}

#[derive(Debug, Default)]
struct CommitCounters {
    commits: AtomicU64,
    batches: AtomicU64,
}

impl Committer {
    /// Makes `commit` durable with whatever else is waiting; returns once it is.
    async fn commit(
        &self,
        sync: Vec<PathBuf>,
        renames: Vec<(PathBuf, PathBuf)>,
        dir: PathBuf,
    ) -> Result<(), CommitError> {
        self.submit(sync, renames, dir).await
    }

    /// Hands a commit to the committer at once; the future resolves once it is durable.
    fn submit(
        &self,
        sync: Vec<PathBuf>,
        renames: Vec<(PathBuf, PathBuf)>,
        dir: PathBuf,
    ) -> impl std::future::Future<Output = Result<(), CommitError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let commit = Commit {
            sync,
            renames,
            dir: dir.clone(),
            done,
        };
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_committer(rx, self.stats.clone()));
            tx
        });
        let stopped = move || CommitError {
            what: "cannot commit in",
            path: dir.clone(),
            error: std::io::Error::other("the site's committer stopped"),
        };
        let sent = tx.send(commit).is_ok();
        async move {
            if !sent {
                return Err(stopped());
            }
            answer.await.unwrap_or_else(|_| Err(stopped()))
        }
    }
}

/// The committer's loop: one batch at a time, each made of every commit waiting when the
/// previous one finished (those that arrive meanwhile share the next).
async fn run_committer(mut rx: mpsc::UnboundedReceiver<Commit>, stats: Arc<CommitCounters>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .commits
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        commit_batch(batch).await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("sync task failed: {e}"))))
}

/// Makes a batch durable: all files synced at once, then the renames, then one sync per
/// directory; answers each commit.
async fn commit_batch(batch: Vec<Commit>) {
    let files: usize = batch.iter().map(|c| c.sync.len()).sum();
    if files >= SYNCFS_FROM && cfg!(target_os = "linux") {
        return commit_batch_syncfs(batch).await;
    }
    // 1. Every file of the batch synced concurrently: the syncs share journal commits.
    let mut syncs = Vec::new();
    let mut pending = Vec::with_capacity(batch.len());
    for (i, c) in batch.into_iter().enumerate() {
        for path in c.sync {
            syncs.push((i, blocking(move || sync_path(&path))));
        }
        pending.push(Some((c.renames, c.dir, c.done)));
    }
    let mut failed: Vec<Option<CommitError>> = (0..pending.len()).map(|_| None).collect();
    for (i, sync) in syncs {
        if let Err(error) = sync.await {
            if let Some((renames, dir, _)) = pending.get(i).and_then(Option::as_ref) {
                let path = renames.first().map_or_else(|| dir.clone(), |r| r.0.clone());
                failed[i].get_or_insert(CommitError {
                    what: "cannot sync",
                    path,
                    error,
                });
            }
        }
    }
    // 2. The renames, in one blocking call; a commit whose files failed to sync renames
    //    nothing and has its temporary files removed.
    let work: Vec<(Vec<(PathBuf, PathBuf)>, bool)> = pending
        .iter()
        .zip(&failed)
        .map(|(p, f)| {
            let renames = p.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            (renames, f.is_none())
        })
        .collect();
    let renamed = blocking(move || {
        Ok(work
            .into_iter()
            .map(|(renames, go)| rename_all(&renames, go))
            .collect::<Vec<_>>())
    })
    .await;
    match renamed {
        Ok(results) => {
            for (i, r) in results.into_iter().enumerate() {
                if let Err(e) = r {
                    failed[i].get_or_insert(e);
                }
            }
        }
        Err(error) => {
            for (i, f) in failed.iter_mut().enumerate() {
                if let Some((_, dir, _)) = pending.get(i).and_then(Option::as_ref) {
                    f.get_or_insert(CommitError {
                        what: "cannot rename in",
                        path: dir.clone(),
                        error: std::io::Error::new(error.kind(), error.to_string()),
                    });
                }
            }
        }
    }
    // 3. One sync per directory touched by a commit that got this far.
    let mut dirs: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    for (i, p) in pending.iter().enumerate() {
        if let (Some((_, dir, _)), None) = (p, &failed[i]) {
            dirs.entry(dir.clone()).or_default().push(i);
        }
    }
    let dir_syncs: Vec<_> = dirs
        .into_iter()
        .map(|(dir, who)| {
            let d = dir.clone();
            (dir, who, blocking(move || sync_dir_blocking(&d)))
        })
        .collect();
    for (dir, who, sync) in dir_syncs {
        if let Err(error) = sync.await {
            for i in who {
                failed[i] = Some(CommitError {
                    what: "cannot sync directory",
                    path: dir.clone(),
                    error: std::io::Error::new(error.kind(), error.to_string()),
                });
            }
        }
    }
    for (p, f) in pending.into_iter().zip(failed) {
        if let Some((_, _, done)) = p {
            let _ = done.send(f.map_or(Ok(()), Err));
        }
    }
}

/// [`commit_batch`] for a large batch: one `syncfs` per file system holding its files (their
/// data and inodes), the renames, then one `syncfs` per file system holding its directories
/// (the new entries). The same order as the per-file path: nothing is renamed into place
/// before its bytes are durable, and nothing is answered before the rename is.
async fn commit_batch_syncfs(batch: Vec<Commit>) {
    let n = batch.len();
    let mut failed: Vec<Option<CommitError>> = (0..n).map(|_| None).collect();
    let mut files = Vec::with_capacity(n);
    let mut renames = Vec::with_capacity(n);
    let mut dirs = Vec::with_capacity(n);
    let mut answers = Vec::with_capacity(n);
    for c in batch {
        files.push(c.sync);
        renames.push(c.renames);
        dirs.push(c.dir);
        answers.push(c.done);
    }
    // Kept for the answers should the blocking task itself fail.
    let dirs_kept = dirs.clone();
    let synced = blocking(move || Ok(sync_renamed(files, renames, dirs))).await;
    match synced {
        Ok(results) => {
            for (i, r) in results.into_iter().enumerate() {
                if let Err(e) = r {
                    failed[i] = Some(e);
                }
            }
        }
        Err(error) => {
            for (i, dir) in dirs_kept.into_iter().enumerate() {
                failed[i] = Some(CommitError {
                    what: "cannot commit in",
                    path: dir,
                    error: std::io::Error::new(error.kind(), error.to_string()),
                });
            }
        }
    }
    for (done, f) in answers.into_iter().zip(failed) {
        let _ = done.send(f.map_or(Ok(()), Err));
    }
}

/// The blocking part of [`commit_batch_syncfs`]: per commit, `Ok` or what failed.
fn sync_renamed(
    files: Vec<Vec<PathBuf>>,
    renames: Vec<Vec<(PathBuf, PathBuf)>>,
    dirs: Vec<PathBuf>,
) -> Vec<Result<(), CommitError>> {
    let n = files.len();
    let mut out: Vec<Result<(), CommitError>> = (0..n).map(|_| Ok(())).collect();
    // The file systems of the batch, found through the commits' directories (a file lives on
    // its directory's file system; a key's directory may be a mount): one open directory
    // each, to sync them through.
    let mut by_dir: HashMap<&Path, Option<u64>> = HashMap::new();
    let mut devs: HashMap<u64, (std::fs::File, Vec<usize>)> = HashMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let dev = match by_dir.get(dir.as_path()) {
            Some(d) => *d,
            None => {
                let opened = std::fs::File::open(dir).and_then(|d| Ok((device_of(&d)?, d)));
                let dev = match opened {
                    Ok((dev, d)) => {
                        devs.entry(dev).or_insert_with(|| (d, Vec::new()));
                        Some(dev)
                    }
                    Err(error) => {
                        out[i] = Err(CommitError {
                            what: "cannot inspect",
                            path: dir.clone(),
                            error,
                        });
                        None
                    }
                };
                by_dir.insert(dir.as_path(), dev);
                dev
            }
        };
        match (dev, out[i].is_ok()) {
            (Some(dev), true) => {
                if let Some(e) = devs.get_mut(&dev) {
                    e.1.push(i);
                }
            }
            (None, true) => {
                out[i] = Err(CommitError {
                    what: "cannot inspect",
                    path: dir.clone(),
                    error: std::io::Error::other("its directory could not be opened"),
                });
            }
            _ => {}
        }
    }
    // 1. The files' data and inodes, one syncfs per file system.
    let has_files: Vec<bool> = files.iter().map(|f| !f.is_empty()).collect();
    sync_devices(&devs, "cannot sync", &dirs, &mut out, |i, _| has_files[i]);
    // 2. The renames of every commit whose files are durable.
    for (i, r) in renames.iter().enumerate() {
        let go = out[i].is_ok();
        if let Err(e) = rename_all(r, go) {
            out[i] = Err(e);
        }
    }
    // 3. The directories' new entries, one syncfs per file system.
    sync_devices(&devs, "cannot sync directory", &dirs, &mut out, |_, ok| ok);
    out
}

/// One `syncfs` per file system of `devs` where `wanted(i, out[i].is_ok())` holds for a
/// commit `i` on it; a failure fails those of its commits still `Ok`, as `what`.
fn sync_devices(
    devs: &HashMap<u64, (std::fs::File, Vec<usize>)>,
    what: &'static str,
    dirs: &[PathBuf],
    out: &mut [Result<(), CommitError>],
    wanted: impl Fn(usize, bool) -> bool,
) {
    for (d, who) in devs.values() {
        if !who.iter().any(|&i| wanted(i, out[i].is_ok())) {
            continue;
        }
        if let Err(error) = syncfs(d) {
            for &i in who {
                if out[i].is_ok() {
                    out[i] = Err(CommitError {
                        what,
                        path: dirs[i].clone(),
                        error: std::io::Error::new(error.kind(), error.to_string()),
                    });
                }
            }
        }
    }
}

/// Makes the data of the (closed) file at `path` durable.
fn sync_path(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_data()
}

/// The file system (device) `f` lives on.
fn device_of(f: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(f.metadata()?.dev())
}

/// Commits the whole file system `f` lives on to disk.
#[cfg(target_os = "linux")]
fn syncfs(f: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(f).map_err(std::io::Error::from)
}

/// Elsewhere: the same guarantee for `f` alone (only reached through the per-file path).
#[cfg(not(target_os = "linux"))]
fn syncfs(f: &std::fs::File) -> std::io::Result<()> {
    f.sync_all()
}

/// Renames each `(from, to)` in order when `go`; removes the temporary files not renamed when
/// not, or when a rename fails.
fn rename_all(renames: &[(PathBuf, PathBuf)], go: bool) -> Result<(), CommitError> {
    let mut result = Ok(());
    for (from, to) in renames {
        if go && result.is_ok() {
            if let Err(error) = std::fs::rename(from, to) {
                result = Err(CommitError {
                    what: "cannot rename into",
                    path: to.clone(),
                    error,
                });
            } else {
                continue;
            }
        }
        // Not renamed: the temporary file goes (the data already in place stays, whole).
        let _ = std::fs::remove_file(from);
    }
    result
}

fn sync_dir_blocking(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl FileSite {
    /// A site writing under `root`, which is created if missing.
    ///
    /// # Errors
    /// [`SiteError::Rejected`] if the directory cannot be created or is not a directory.
    pub fn new(name: impl Into<String>, root: impl AsRef<Path>) -> Result<FileSite, SiteError> {
        let name = name.into();
        let root = root.as_ref();
        std::fs::create_dir_all(root)
            .and_then(|()| root.canonicalize())
            .map_err(|e| SiteError::Rejected {
                site: name.clone(),
                detail: format!("cannot use directory {}: {e}", root.display()),
            })
            .map(|root| FileSite {
                name,
                root,
                committer: Committer::default(),
            })
    }

    /// How many replicas went through the group commit, in how many batches.
    pub fn commit_stats(&self) -> CommitStats {
        let s = &self.committer.stats;
        CommitStats {
            commits: s.commits.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
        }
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the replica of `key` is (or would be) stored.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key_to_relative_path(key))
    }

    /// Where the sidecar of `key` is (or would be) stored.
    pub fn sidecar_of(&self, key: &str) -> PathBuf {
        with_suffix(&self.path_of(key), SIDECAR_SUFFIX)
    }

    fn rejected(&self, detail: impl Into<String>) -> SiteError {
        rejected(&self.name, detail)
    }

    fn io_error(&self, what: &str, path: &Path, e: std::io::Error) -> SiteError {
        io_error(&self.name, what, path, e)
    }

    /// Creates the directories leading to `key`'s file (see [`prepare_blocking`]), off the
    /// runtime's threads.
    async fn prepare(&self, key: &str) -> Result<(PathBuf, String), SiteError> {
        let (name, root, key) = (self.name.clone(), self.root.clone(), key.to_string());
        tokio::task::spawn_blocking(move || prepare_blocking(&name, &root, &key))
            .await
            .map_err(|e| SiteError::transient(&self.name, format!("write task failed: {e}")))?
    }

    /// Hands the written temporary files of a replica to the group commit: `data_tmp` (already
    /// durable when `data_file` is `None`) then the sidecar are renamed into place once
    /// durable; the [`Durable`] resolves once the replica is.
    fn commit_replica(
        &self,
        dir: &Path,
        file: &str,
        data_tmp: PathBuf,
        data_file: Option<std::fs::File>,
        meta_tmp: PathBuf,
        meta_file: std::fs::File,
    ) -> Durable {
        let target = dir.join(file);
        let meta = dir.join(format!("{file}{SIDECAR_SUFFIX}"));
        // Closed now: a replica waiting for its commit holds no file descriptor.
        let mut sync = Vec::with_capacity(2);
        if let Some(f) = data_file {
            drop(f);
            sync.push(data_tmp.clone());
        }
        drop(meta_file);
        sync.push(meta_tmp.clone());
        let committed = self.committer.submit(
            sync,
            vec![(data_tmp, target), (meta_tmp, meta)],
            dir.to_path_buf(),
        );
        let name = self.name.clone();
        Durable::new(async move {
            committed
                .await
                .map_err(|e| io_error(&name, e.what, &e.path, e.error))
        })
    }

    /// Writes the sidecar of `obj` to a temporary file (not yet synced: the group commit does);
    /// returns its path and the open file.
    async fn write_sidecar_tmp(
        &self,
        dir: &Path,
        file: &str,
        obj: &ObjectInfo,
        md5: &str,
    ) -> Result<(PathBuf, std::fs::File), SiteError> {
        let json = sidecar_json(&self.name, obj, md5)?;
        let tmp = dir.join(format!("{file}{TMP_INFIX}{}", random_hex()));
        let path = tmp.clone();
        let written = tokio::task::spawn_blocking(move || write_new(&path, &[&json]))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("write task failed: {e}"))));
        match written {
            Ok(f) => Ok((tmp, f)),
            Err(e) => Err(self.io_error("cannot write sidecar", &tmp, e)),
        }
    }

    /// A small object: read whole, then directories, data and sidecar written in one blocking
    /// call, then handed to the group commit.
    async fn put_small(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<Durable, SiteError> {
        let (chunks, md5) = read_exact(body, obj.size)
            .await
            .map_err(|detail| SiteError::transient(&self.name, detail))?;
        let writer = self.small_writer();
        let (k, obj) = (key.to_string(), obj.clone());
        let written = tokio::task::spawn_blocking(move || {
            let slices: Vec<&[u8]> = chunks.iter().map(|c| c.as_ref()).collect();
            writer.write(&k, &obj, &slices, &crate::checksum::hex(&md5))
        })
        .await
        .map_err(|e| SiteError::transient(&self.name, format!("write task failed: {e}")))??;
        Ok(self.commit_written(written))
    }

    /// What writes a small replica on the calling thread ([`SmallWriter::write`]), for a
    /// caller that is already off the runtime's threads (a local copy read and written in one
    /// blocking call). Its replica is made durable by [`FileSite::commit_written`].
    pub fn small_writer(&self) -> SmallWriter {
        SmallWriter {
            name: self.name.clone(),
            root: self.root.clone(),
        }
    }

    /// Hands a replica written by a [`SmallWriter`] to the group commit; the [`Durable`]
    /// resolves once it is in place and durable.
    pub fn commit_written(&self, w: Written) -> Durable {
        self.commit_replica(
            &w.dir,
            &w.file,
            w.data_tmp,
            Some(w.data),
            w.meta_tmp,
            w.meta,
        )
    }

    /// A large object: streamed to a temporary file as it arrives, then the sidecar, then
    /// handed to the group commit.
    async fn put_streamed(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<Durable, SiteError> {
        let (dir, file) = self.prepare(key).await?;
        let tmp = dir.join(format!("{file}{TMP_INFIX}{}", random_hex()));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| self.io_error("cannot create", &tmp, e))?;
        let md5 = match copy_exact(&mut f, body, obj.size).await {
            Ok(md5) => md5,
            Err(detail) => {
                drop(f);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(SiteError::transient(&self.name, detail));
            }
        };
        let data = f.into_std().await;
        let (meta_tmp, meta) = match self
            .write_sidecar_tmp(&dir, &file, obj, &crate::checksum::hex(&md5))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                drop(data);
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        Ok(self.commit_replica(&dir, &file, tmp, Some(data), meta_tmp, meta))
    }

    fn mpu_path(&self, dir: &Path, file: &str, upload_id: &str) -> Result<PathBuf, SiteError> {
        if upload_id.is_empty()
            || upload_id.len() > 64
            || !upload_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(self.rejected(format!("invalid upload id {upload_id:?}")));
        }
        Ok(dir.join(format!("{file}{MPU_INFIX}{upload_id}")))
    }

    /// The directory and file name of `key`, without creating anything.
    fn locate(&self, key: &str) -> Result<(PathBuf, String), SiteError> {
        let path = self.path_of(key);
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .map(str::to_owned)
            .ok_or_else(|| self.rejected(format!("invalid key {key:?}")))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        Ok((dir, file))
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn random_hex() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Writes small replicas of a [`FileSite`] on the calling thread (blocking).
#[derive(Debug, Clone)]
pub struct SmallWriter {
    name: String,
    root: PathBuf,
}

/// A replica written to temporary files, not yet durable nor in place: for
/// [`FileSite::commit_written`].
#[derive(Debug)]
pub struct Written {
    dir: PathBuf,
    file: String,
    data_tmp: PathBuf,
    data: std::fs::File,
    meta_tmp: PathBuf,
    meta: std::fs::File,
}

impl SmallWriter {
    /// Creates the directories of `key`, then writes `chunks` (the object `obj`, whose MD5 is
    /// `md5`, in hexadecimal) and its sidecar to temporary files beside the target. Blocking.
    /// On failure nothing is left behind.
    ///
    /// # Errors
    /// The site's error for a key it cannot hold or a failed write.
    pub fn write(
        &self,
        key: &str,
        obj: &ObjectInfo,
        chunks: &[&[u8]],
        md5: &str,
    ) -> Result<Written, SiteError> {
        let name = &self.name;
        let sidecar = sidecar_json(name, obj, md5)?;
        let (dir, file) = prepare_blocking(name, &self.root, key)?;
        let data_tmp = dir.join(format!("{file}{TMP_INFIX}{}", random_hex()));
        let data = write_new(&data_tmp, chunks)
            .map_err(|e| io_error(name, "cannot write", &data_tmp, e))?;
        let meta_tmp = dir.join(format!("{file}{TMP_INFIX}{}", random_hex()));
        match write_new(&meta_tmp, &[&sidecar]) {
            Ok(meta) => Ok(Written {
                dir,
                file,
                data_tmp,
                data,
                meta_tmp,
                meta,
            }),
            Err(e) => {
                drop(data);
                let _ = std::fs::remove_file(&data_tmp);
                Err(io_error(name, "cannot write sidecar", &meta_tmp, e))
            }
        }
    }
}

fn rejected(site: &str, detail: impl Into<String>) -> SiteError {
    SiteError::Rejected {
        site: site.to_string(),
        detail: detail.into(),
    }
}

fn io_error(site: &str, what: &str, path: &Path, e: std::io::Error) -> SiteError {
    let detail = format!("{what} {}: {e}", path.display());
    // Linux errno values: EEXIST, ENOTDIR, EISDIR, EINVAL, ENAMETOOLONG are about the key
    // (a name too long, a file where a directory is needed): retrying cannot help.
    if e.kind() == ErrorKind::PermissionDenied {
        SiteError::Unauthorized {
            site: site.to_string(),
            detail,
        }
    } else if matches!(e.raw_os_error(), Some(17 | 20 | 21 | 22 | 36)) {
        rejected(site, detail)
    } else {
        SiteError::transient(site, detail)
    }
}

/// Creates the directories leading to `key`'s file under `root`, never following a symbolic
/// link, and returns `(directory, encoded file name)`. Blocking.
fn prepare_blocking(site: &str, root: &Path, key: &str) -> Result<(PathBuf, String), SiteError> {
    if key.is_empty() {
        return Err(rejected(site, "empty key"));
    }
    let mut segs: Vec<String> = key.split('/').map(encode_segment).collect();
    let file = segs.pop().ok_or_else(|| rejected(site, "empty key"))?;
    let mut dir = root.to_path_buf();
    for seg in segs {
        dir.push(seg);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(rejected(
                    site,
                    format!("{} is a symbolic link", dir.display()),
                ))
            }
            Ok(_) => {
                return Err(rejected(
                    site,
                    format!("{} is a file, cannot hold key {key:?}", dir.display()),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Created concurrently: accept only a real directory.
                    let m = std::fs::symlink_metadata(&dir)
                        .map_err(|e| io_error(site, "cannot inspect", &dir, e))?;
                    if !m.file_type().is_dir() {
                        return Err(rejected(
                            site,
                            format!("{} is not a directory", dir.display()),
                        ));
                    }
                }
                Err(e) => return Err(io_error(site, "cannot create directory", &dir, e)),
            },
            Err(e) => return Err(io_error(site, "cannot inspect", &dir, e)),
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(dir.join(&file)) {
        if m.file_type().is_dir() {
            return Err(rejected(
                site,
                format!(
                    "{} is a directory, cannot hold key {key:?}",
                    dir.join(&file).display()
                ),
            ));
        }
    }
    Ok((dir, file))
}

/// The sidecar of `obj` as written (one JSON object).
fn sidecar_json(site: &str, obj: &ObjectInfo, md5: &str) -> Result<Vec<u8>, SiteError> {
    serde_json::to_vec_pretty(&Sidecar::of(obj, md5))
        .map_err(|e| rejected(site, format!("cannot encode sidecar: {e}")))
}

/// Creates `path` (which must not exist) holding `chunks`; the file is returned open, not yet
/// synced. Removed again on failure. Blocking.
fn write_new(path: &Path, chunks: &[&[u8]]) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    for c in chunks {
        if let Err(e) = f.write_all(c) {
            drop(f);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(f)
}

/// Copies `body` into `file`, checking that exactly `expected` bytes arrive; returns the MD5
/// of what was written.
async fn copy_exact(
    file: &mut tokio::fs::File,
    body: ByteStream,
    expected: u64,
) -> Result<[u8; 16], String> {
    let (mut body, digest) = crate::checksum::hashed(body);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("source stream failed: {e}"))?;
        written += chunk.len() as u64;
        if written > expected {
            return Err(format!(
                "source stream longer than the expected {expected} bytes"
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
    }
    if written != expected {
        return Err(format!(
            "source stream ended after {written} of {expected} bytes"
        ));
    }
    file.flush()
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    digest
        .get()
        .filter(|d| d.len == expected)
        .map(|d| d.md5)
        .ok_or_else(|| "the body did not end cleanly".to_string())
}

/// Reads `body` whole, checking that exactly `expected` bytes arrive; returns its chunks and
/// their MD5.
async fn read_exact(body: ByteStream, expected: u64) -> Result<(Vec<Bytes>, [u8; 16]), String> {
    let (mut body, digest) = crate::checksum::hashed(body);
    let mut chunks = Vec::new();
    let mut read = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("source stream failed: {e}"))?;
        read += chunk.len() as u64;
        if read > expected {
            return Err(format!(
                "source stream longer than the expected {expected} bytes"
            ));
        }
        chunks.push(chunk);
    }
    if read != expected {
        return Err(format!(
            "source stream ended after {read} of {expected} bytes"
        ));
    }
    let md5 = digest
        .get()
        .filter(|d| d.len == expected)
        .map(|d| d.md5)
        .ok_or_else(|| "the body did not end cleanly".to_string())?;
    Ok((chunks, md5))
}

#[async_trait]
impl Site for FileSite {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SiteKind {
        SiteKind::File
    }

    async fn read(&self, key: &str) -> Result<Option<ByteStream>, SiteError> {
        let data = self.path_of(key);
        match tokio::fs::symlink_metadata(&data).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if crate::fswalk::is_gone(&e) => return Ok(None),
            Err(e) => return Err(self.io_error("cannot inspect", &data, e)),
        }
        match tokio::fs::File::open(&data).await {
            Ok(f) => Ok(Some(Box::pin(tokio_util::io::ReaderStream::new(f)))),
            Err(e) if crate::fswalk::is_gone(&e) => Ok(None),
            Err(e) => Err(self.io_error("cannot read", &data, e)),
        }
    }

    fn as_file(&self) -> Option<&FileSite> {
        Some(self)
    }

    async fn replica(&self, key: &str) -> Result<Option<ReplicaInfo>, SiteError> {
        let data = self.path_of(key);
        let m = match tokio::fs::symlink_metadata(&data).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
                return Ok(None)
            }
            Err(e) => return Err(self.io_error("cannot inspect", &data, e)),
        };
        let mut info = ReplicaInfo {
            key: key.to_string(),
            size: m.len(),
            ..ReplicaInfo::default()
        };
        let sidecar = self.sidecar_of(key);
        match tokio::fs::read(&sidecar).await {
            Ok(bytes) => {
                if let Ok(sc) = serde_json::from_slice::<Sidecar>(&bytes) {
                    if sc.replication_status == "REPLICA" {
                        info.source_version_id = Some(sc.version_id);
                        info.source_bucket = Some(sc.bucket);
                        // Hashed from the bytes as they were written: the site's own MD5.
                        info.md5 = Some(sc.md5).filter(|m| !m.is_empty());
                        info.content_md5 = info.md5.clone();
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error("cannot read", &sidecar, e)),
        }
        Ok(Some(info))
    }

    async fn put(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<PutReceipt, SiteError> {
        let (receipt, durable) = self.put_deferred(key, obj, body).await?;
        if let Some(d) = durable {
            d.wait().await?;
        }
        Ok(receipt)
    }

    async fn put_deferred(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<(PutReceipt, Option<Durable>), SiteError> {
        let durable = if obj.size <= SMALL_OBJECT {
            self.put_small(key, obj, body).await?
        } else {
            self.put_streamed(key, obj, body).await?
        };
        debug!(site = %self.name, key, size = obj.size, "Replica written.");
        let receipt = PutReceipt {
            wrote: true,
            ..PutReceipt::default()
        };
        Ok((receipt, Some(durable)))
    }

    fn multipart(&self) -> Option<&dyn MultipartSite> {
        Some(self)
    }

    async fn delete(&self, key: &str) -> Result<PutReceipt, SiteError> {
        let (dir, file) = self.locate(key)?;
        // Never follow a link on the way: only a real tree under the root is touched.
        let mut p = self.root.clone();
        if let Ok(rel) = dir.strip_prefix(&self.root) {
            for c in rel.components() {
                p.push(c);
                match tokio::fs::symlink_metadata(&p).await {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => return Ok(PutReceipt::default()),
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(PutReceipt::default()),
                    Err(e) => return Err(self.io_error("cannot inspect", &p, e)),
                }
            }
        }
        let mut wrote = false;
        for name in [file.clone(), format!("{file}{SIDECAR_SUFFIX}")] {
            let path = dir.join(&name);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => wrote = true,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error("cannot remove", &path, e)),
            }
        }
        if wrote {
            self.committer
                .commit(Vec::new(), Vec::new(), dir.clone())
                .await
                .map_err(|e| self.io_error(e.what, &e.path, e.error))?;
        }
        Ok(PutReceipt {
            wrote,
            ..PutReceipt::default()
        })
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, SiteError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let cursor = cursor.map(str::to_owned);
        let limit = limit.max(1);
        let listed = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let full = list_tree(&root, &prefix, cursor.as_deref(), limit, &mut out)?;
            Ok::<_, std::io::Error>((out, full))
        })
        .await
        .map_err(|e| SiteError::transient(&self.name, format!("listing task failed: {e}")))?
        .map_err(|e| self.io_error("cannot list", &self.root, e))?;
        let (keys, full) = listed;
        let mut items = Vec::with_capacity(keys.len());
        for (key, size) in keys {
            let r = self.replica(&key).await?;
            items.push((key, size, r));
        }
        let next = if full {
            items.last().map(|(k, _, _)| k.clone())
        } else {
            None
        };
        Ok(ListPage { items, next })
    }

    async fn remove_temporaries(&self, before_ms: u64) -> Result<u64, SiteError> {
        let root = self.root.clone();
        let removed = tokio::task::spawn_blocking(move || remove_temporaries(&root, before_ms))
            .await
            .map_err(|e| SiteError::transient(&self.name, format!("cleanup task failed: {e}")))?;
        removed.map_err(|e| self.io_error("cannot clean up", &self.root, e))
    }

    async fn health(&self) -> Result<(), SiteError> {
        let m = tokio::fs::metadata(&self.root)
            .await
            .map_err(|e| self.io_error("cannot inspect", &self.root, e))?;
        if !m.is_dir() {
            return Err(self.rejected(format!("{} is not a directory", self.root.display())));
        }
        let probe = self
            .root
            .join(format!("%{TMP_INFIX}health.{}", random_hex()));
        tokio::fs::write(&probe, b"")
            .await
            .map_err(|e| self.io_error("cannot write in", &self.root, e))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}

/// Appends the replicas whose key starts with `prefix` and sorts after `cursor`, in key byte
/// order, as `(key, size)`; `true` once `limit` were appended.
fn list_tree(
    root: &Path,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
    out: &mut Vec<(String, u64)>,
) -> std::io::Result<bool> {
    let done = walk_replicas(root, prefix, cursor, &mut |key, size| {
        out.push((key.to_string(), size));
        out.len() < limit
    })?;
    Ok(!done)
}

/// Visits the replicas under the site directory `root` whose key starts with `prefix` and
/// sorts after `cursor`, in key byte order, as `(key, size)`; `visit` returns `false` to stop.
/// Returns `false` when stopped. Sidecars, temporary and part files are not replicas; names
/// that are not encoded segments are skipped. Memory stays bounded whatever a directory holds
/// ([`crate::fswalk`]).
///
/// # Errors
/// An I/O error other than "not found".
pub fn walk_replicas(
    root: &Path,
    prefix: &str,
    cursor: Option<&str>,
    visit: &mut dyn FnMut(&str, u64) -> bool,
) -> std::io::Result<bool> {
    let name_of = |name: &str| {
        if name.ends_with(SIDECAR_SUFFIX) || name.contains(TMP_INFIX) || name.contains(MPU_INFIX) {
            return None;
        }
        decode_segment(name)
    };
    crate::fswalk::walk(root, "", prefix, cursor, &name_of, &mut |key, path| {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => Ok(visit(key, m.len())),
            Ok(_) => Ok(true),
            Err(e) if crate::fswalk::is_gone(&e) => Ok(true),
            Err(e) => Err(e),
        }
    })
}

/// The mtime of `m` in ms since the epoch.
fn mtime_ms(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    u64::try_from(m.mtime()).unwrap_or(0).saturating_mul(1000)
        + u64::try_from(m.mtime_nsec()).unwrap_or(0) / 1_000_000
}

/// Removes the temporary files of single writes (their names hold [`TMP_INFIX`]) under `dir`
/// last modified before `before_ms`: what a copy killed mid-write leaves. Walks directory by
/// directory, holding one directory's iterator per level.
fn remove_temporaries(dir: &Path, before_ms: u64) -> std::io::Result<u64> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if crate::fswalk::is_gone(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if crate::fswalk::is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            removed += remove_temporaries(&entry.path(), before_ms)?;
        } else if ft.is_file()
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.contains(TMP_INFIX))
            && entry.metadata().is_ok_and(|m| mtime_ms(&m) < before_ms)
        {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if crate::fswalk::is_gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Multipart for the file site: the upload is a temporary file preallocated to the object's
/// size; part `n` is written at the offset [`part_ranges`] gives for that size (read back from
/// the upload file), so parts may arrive in any order and concurrently. Parts must follow
/// [`part_ranges`]; others are [`SiteError::Rejected`].
#[async_trait]
impl MultipartSite for FileSite {
    async fn create(&self, key: &str, obj: &ObjectInfo) -> Result<String, SiteError> {
        let (dir, file) = self.prepare(key).await?;
        let id = random_hex();
        let path = self.mpu_path(&dir, &file, &id)?;
        let f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| self.io_error("cannot create", &path, e))?;
        if let Err(e) = f.set_len(obj.size).await {
            drop(f);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(self.io_error("cannot size", &path, e));
        }
        Ok(id)
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartReceipt, SiteError> {
        let (dir, file) = self.locate(key)?;
        let path = self.mpu_path(&dir, &file, upload_id)?;
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => self.rejected(format!("no such upload {upload_id}")),
                _ => self.io_error("cannot open", &path, e),
            })?;
        let size = f
            .metadata()
            .await
            .map_err(|e| self.io_error("cannot inspect", &path, e))?
            .len();
        let ranges = part_ranges(size);
        let (start, end) = match (number as usize).checked_sub(1).and_then(|i| ranges.get(i)) {
            Some(r) => *r,
            None if size == 0 && number == 1 && len == 0 => (0, 0),
            None => return Err(self.rejected(format!("part {number} out of range"))),
        };
        if size > 0 && end - start + 1 != len {
            return Err(self.rejected(format!("part {number} must be {} bytes", end - start + 1)));
        }
        f.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| self.io_error("cannot seek", &path, e))?;
        let res = match copy_exact(&mut f, body, len).await {
            Ok(md5) => f
                .sync_data()
                .await
                .map(|()| md5)
                .map_err(|e| format!("fsync failed: {e}")),
            Err(e) => Err(e),
        };
        let md5 = res.map_err(|detail| SiteError::transient(&self.name, detail))?;
        Ok(PartReceipt {
            number,
            etag: format!("{number}"),
            md5,
        })
    }

    async fn complete(
        &self,
        key: &str,
        obj: &ObjectInfo,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt, SiteError> {
        let expected = part_ranges(obj.size).len().max(1);
        let in_order = parts
            .iter()
            .enumerate()
            .all(|(i, p)| p.number as usize == i + 1);
        if parts.len() != expected || !in_order {
            return Err(self.rejected(format!("expected parts 1..={expected} in order")));
        }
        let (dir, file) = self.prepare(key).await?;
        let path = self.mpu_path(&dir, &file, upload_id)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() == obj.size => {}
            Ok(m) => {
                return Err(self.rejected(format!(
                    "upload has {} bytes, expected {}",
                    m.len(),
                    obj.size
                )))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(self.rejected(format!("no such upload {upload_id}")))
            }
            Err(e) => return Err(self.io_error("cannot inspect", &path, e)),
        }
        // The caller computed the whole object's MD5 over the parts.
        let md5 = crate::site::recorded_md5(obj);
        let (meta_tmp, meta) = self.write_sidecar_tmp(&dir, &file, obj, &md5).await?;
        // The upload's parts were synced as they were written.
        self.commit_replica(&dir, &file, path, None, meta_tmp, meta)
            .wait()
            .await?;
        debug!(site = %self.name, key, size = obj.size, "Multipart replica written.");
        Ok(PutReceipt {
            wrote: true,
            ..PutReceipt::default()
        })
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), SiteError> {
        let (dir, file) = self.locate(key)?;
        let path = self.mpu_path(&dir, &file, upload_id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("cannot remove", &path, e)),
        }
    }

    async fn uploads_at(&self, key: &str) -> Result<Vec<(String, u64)>, SiteError> {
        let (dir, file) = self.locate(key)?;
        let prefix = format!("{file}{MPU_INFIX}");
        let listed = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if crate::fswalk::is_gone(&e) => return Ok(out),
                Err(e) => return Err(e),
            };
            for entry in rd.flatten() {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                    continue;
                };
                let at = entry.metadata().map(|m| mtime_ms(&m)).unwrap_or(0);
                out.push((id.to_string(), at));
            }
            Ok(out)
        })
        .await
        .map_err(|e| SiteError::transient(&self.name, format!("listing task failed: {e}")))?;
        listed.map_err(|e| self.io_error("cannot list", &self.root, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_segments_are_encoded_reversibly() {
        for seg in [
            "",
            ".",
            "..",
            "a%b",
            "nul\0byte",
            "%",
            "%25",
            "%2E",
            "ok",
            "...",
            "é:+?#",
        ] {
            let enc = encode_segment(seg);
            assert!(
                !matches!(enc.as_str(), "" | "." | ".."),
                "{seg:?} -> {enc:?}"
            );
            assert!(!enc.contains('/') && !enc.contains('\0'));
            assert_eq!(
                decode_segment(&enc).as_deref(),
                Some(seg),
                "{seg:?} -> {enc:?}"
            );
        }
    }

    #[test]
    fn encoded_paths_never_leave_the_root() {
        for key in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            ".",
            "a//b",
            "..",
            "a/./b",
            "../../..",
        ] {
            let rel = key_to_relative_path(key);
            for c in rel.components() {
                assert!(
                    matches!(c, std::path::Component::Normal(_)),
                    "{key:?} -> {rel:?}"
                );
            }
        }
    }

    fn object(key: &str, body: &[u8]) -> (ObjectInfo, ByteStream) {
        let obj = ObjectInfo {
            version: crate::model::VersionRef::new("photos", key, "v1"),
            size: body.len() as u64,
            ..ObjectInfo::default()
        };
        let chunk: Result<Bytes, std::io::Error> = Ok(Bytes::copy_from_slice(body));
        (obj, Box::pin(futures_util::stream::iter(vec![chunk])))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_replicas_share_their_syncs_and_are_whole_on_return() {
        let dir = std::env::temp_dir().join(format!(
            "backbeat-file-commit-{}-{}",
            std::process::id(),
            random_hex()
        ));
        let site = Arc::new(FileSite::new("local", &dir).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let site = site.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("d{}/k{i}", i % 4);
                let body = vec![i as u8; 100 + i];
                let (obj, stream) = object(&key, &body);
                site.put(&key, &obj, stream).await.unwrap();
                // On return: the data and its sidecar are in place, whole.
                assert_eq!(std::fs::read(site.path_of(&key)).unwrap(), body);
                let sc: Sidecar =
                    serde_json::from_slice(&std::fs::read(site.sidecar_of(&key)).unwrap()).unwrap();
                assert_eq!(sc.size, body.len() as u64);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = site.commit_stats();
        assert_eq!(stats.commits, 64);
        assert!(
            stats.batches < stats.commits,
            "concurrent replicas shared no batch: {stats:?}"
        );
        // No temporary file is left behind.
        let mut names = Vec::new();
        for d in std::fs::read_dir(dir.join("d0")).unwrap() {
            names.push(d.unwrap().file_name().to_string_lossy().into_owned());
        }
        assert!(names.iter().all(|n| !n.contains(TMP_INFIX)), "{names:?}");
        // A deletion goes through the commit too.
        assert!(site.delete("d0/k0").await.unwrap().wrote);
        assert!(!site.path_of("d0/k0").exists());
        assert_eq!(site.commit_stats().commits, 65);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_replicas_are_durable_together_and_whole_once_answered() {
        let dir = std::env::temp_dir().join(format!(
            "backbeat-file-deferred-{}-{}",
            std::process::id(),
            random_hex()
        ));
        let site = FileSite::new("local", &dir).unwrap();
        // Written one after another without waiting: the commits pile up behind the first
        // batch and go as one or two large ones (past SYNCFS_FROM files: the syncfs path).
        let mut waiting = Vec::new();
        for i in 0..40usize {
            let key = format!("d{}/k{i}", i % 3);
            let body = vec![i as u8; 10 + i];
            let (obj, stream) = object(&key, &body);
            let (receipt, durable) = site.put_deferred(&key, &obj, stream).await.unwrap();
            assert!(receipt.wrote);
            waiting.push((key, body, durable.expect("the file site defers")));
        }
        for (key, body, durable) in waiting {
            durable.wait().await.unwrap();
            assert_eq!(std::fs::read(site.path_of(&key)).unwrap(), body);
            let sc: Sidecar =
                serde_json::from_slice(&std::fs::read(site.sidecar_of(&key)).unwrap()).unwrap();
            assert_eq!(sc.size, body.len() as u64);
        }
        let stats = site.commit_stats();
        assert_eq!(stats.commits, 40);
        assert!(stats.batches <= 20, "{stats:?}");
        for d in 0..3 {
            for e in std::fs::read_dir(dir.join(format!("d{d}"))).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.contains(TMP_INFIX), "{name} left behind");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_short_or_long_body_fails_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!(
            "backbeat-file-short-{}-{}",
            std::process::id(),
            random_hex()
        ));
        let site = FileSite::new("local", &dir).unwrap();
        for (claimed, sent) in [(10u64, 5usize), (3, 5)] {
            let (mut obj, stream) = object("a/b", &vec![7u8; sent]);
            obj.size = claimed;
            let err = site.put("a/b", &obj, stream).await.unwrap_err();
            assert!(matches!(err, SiteError::Transient { .. }), "{err}");
        }
        // The body is read before anything is created: not even the directory is there.
        let left = std::fs::read_dir(dir.join("a")).map_or(0, |d| d.count());
        assert_eq!(left, 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sidecar_and_temporary_suffixes_cannot_end_an_encoded_segment() {
        for seg in ["x%meta.json", "x%tmp.00", "x%mpu.ab", "%meta.json", "a%"] {
            let enc = encode_segment(seg);
            assert!(!enc.ends_with(SIDECAR_SUFFIX), "{enc}");
            assert!(
                !enc.contains(TMP_INFIX) && !enc.contains(MPU_INFIX),
                "{enc}"
            );
        }
    }
}
