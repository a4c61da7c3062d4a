//! The `file` source: a local directory whose files are object versions (edge installs).
//!
//! - Bucket name: the directory's last path segment. Key: the path relative to the directory,
//!   segments joined with `/`. Only regular files with UTF-8 names are objects; symbolic links,
//!   sockets and the like are skipped (a link could lead out of the directory).
//! - Version id: derived from the file's `(size, mtime in ns, inode)`, as
//!   `<size hex>-<mtime ns hex>-<inode hex>`; a changed or replaced file is a new version, and
//!   the id is stable across restarts. The ETag is the version id. A removed file is the key
//!   deleted (no delete markers here: the engine names the deletion `del-<last version id>`).
//! - Listing order: keys in byte order (a directory `d` sorts as `d/`), the order of S3
//!   listings and of the state store, so a scan can walk both side by side. A page's cursor is
//!   its last key.
//! - [`FileSource::scan_dir`] reads one directory entry by entry (its files, its
//!   subdirectories and an order-independent summary of its entries) for the scanner's cheap
//!   passes: a directory whose summary did not change needs no comparison with the store, and
//!   a directory of a million files is never held in memory.
//! - [`Source::current`] and [`Source::open_current`] stat the file; a stream ends with an
//!   error if the file changed while it was read, and [`Source::get_range`] refuses a file
//!   that is no longer the version, so a torn copy is never completed.
//! - No replication configuration: rules come from the configuration file.
//! - Transient (`[source] transient = true`, DESIGN section 9): [`FileSource::collect`]
//!   deletes a replicated version if the file still is that version, grabbing it first with
//!   an atomic rename to a name containing [`GC_INFIX`] (never a key: such names are not
//!   listed, watched or read), so a file rewritten meanwhile is put back, never lost.
//! - [`FileSource::watch`] reports changes within milliseconds (inotify, read by a thread of
//!   its own: [`watch`]): a file closed after writing or renamed in, a directory created or
//!   moved in (to be walked at once), a file removed or moved out, a directory moved out (its
//!   files' deletions to be found), and a lost or overflowed watch (to be rescanned). Events
//!   may repeat; the periodic rescan catches what the watch lost.
//!   [`FileSource::watch_generation`] names the watch's present unbroken stretch: it is set
//!   once every directory is watched, changes whenever an event is lost, and is `None` when
//!   nothing watches, so the scanner can tell whether the watch saw every change since it
//!   last read a directory ([`FileSource::dir_stamp`]).

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{KeyPage, Rule, Source, SourceError};
use crate::blocking::BlockingQueue;
use crate::model::{ByteStream, ObjectInfo, VersionRef};

mod watch;
pub use watch::{FileWatch, WatchEvent};

/// Names containing this are the engine's own (a file being collected): never keys.
pub const GC_INFIX: &str = ".backbeat-gc-";

/// Whether a file name is reserved by the engine (never an object).
pub fn is_reserved(name: &str) -> bool {
    name.contains(GC_INFIX)
}

/// [`FileSource::recover_grabbed`], in a blocking thread.
fn recover_grabbed_blocking(root: &Path) -> std::io::Result<(usize, usize)> {
    let ours = format!("{GC_INFIX}{:x}-", std::process::id());
    let (mut back, mut removed) = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if crate::fswalk::is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((original, _)) = name.split_once(GC_INFIX) else {
                continue;
            };
            if !kind.is_file() || name.contains(&ours) || original.is_empty() {
                continue;
            }
            let grabbed = entry.path();
            let path = dir.join(original);
            match std::fs::symlink_metadata(&path) {
                Err(e) if crate::fswalk::is_gone(&e) => {
                    std::fs::rename(&grabbed, &path)?;
                    back += 1;
                }
                _ => {
                    std::fs::remove_file(&grabbed)?;
                    removed += 1;
                }
            }
        }
    }
    Ok((back, removed))
}

/// What [`FileSource::collect`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collected {
    /// The version was deleted; it held this many bytes.
    Deleted(u64),
    /// The file is another version now (kept: it is replicated in turn).
    Changed,
    /// There is no such file any more.
    Gone,
}

/// Default number of versions per listing page.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Size of the chunks `get` streams.
const CHUNK: usize = 256 * 1024;

/// Keys stat'ed in one blocking call by [`Source::current_many`].
const STAT_BATCH: usize = 64;

/// Blocking calls of [`Source::current_many`] at once.
const STAT_CALLS: usize = 4;

/// A local directory as a source of versions.
#[derive(Debug, Clone)]
pub struct FileSource {
    root: PathBuf,
    bucket: String,
    page_size: usize,
    /// The generation of the watch (0: not watched), shared by the clones.
    watched: Arc<AtomicU64>,
    /// The copies' opens (and [`FileSource::run_blocking`]'s jobs), made together, shared by
    /// the clones.
    opener: Arc<BlockingQueue>,
}

/// Watch generations, never reused within a process.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// A directory's own identity and timestamps ([`FileSource::dir_stamp`]): creating, removing
/// or renaming an entry changes its mtime and ctime; writing a file in place changes neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirStamp {
    pub ino: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl DirStamp {
    fn of(m: &std::fs::Metadata) -> DirStamp {
        DirStamp {
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// The later of its mtime and ctime, in ms since the epoch.
    pub fn changed_ms(&self) -> u64 {
        u64::try_from(self.mtime_ns.max(self.ctime_ns) / 1_000_000).unwrap_or(0)
    }
}

/// What [`FileSource::scan_dir`] found in one directory, besides its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirScan {
    /// A summary of its entries (name, kind, size, mtime, inode), independent of their
    /// order: two scans with the same summary saw the same entries (up to a 64-bit hash
    /// collision).
    pub summary: u64,
    /// Its subdirectories, as key prefixes (`dir/sub/`).
    pub subdirs: Vec<String>,
    /// Files modified too recently to be taken (left to a later pass).
    pub unsettled: usize,
}

/// FNV-1a, 64 bits: a stable hash for directory summaries kept across restarts and Rust
/// versions (the standard library's hasher may change).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The key of `path` under `root`, if it is a UTF-8 path strictly inside it.
fn key_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let segs: Option<Vec<&str>> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let segs = segs?;
    if segs.iter().any(|s| is_reserved(s)) {
        return None;
    }
    (!segs.is_empty()).then(|| segs.join("/"))
}

/// The version id of a file with metadata `m`.
pub fn version_id_of(m: &std::fs::Metadata) -> String {
    let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    format!("{:x}-{:x}-{:x}", m.len(), mtime_ns, m.ino())
}

fn last_modified_of(m: &std::fs::Metadata) -> String {
    let ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    let ms = ns - ns.rem_euclid(1_000_000);
    OffsetDateTime::from_unix_timestamp_nanos(ms)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl FileSource {
    /// A source over directory `root`.
    ///
    /// # Errors
    /// [`SourceError::NotFound`] if it is not a directory, [`SourceError::Invalid`] if its name
    /// is not a usable bucket name.
    pub fn new(root: impl AsRef<Path>) -> Result<FileSource, SourceError> {
        let root = root.as_ref();
        let root = root
            .canonicalize()
            .map_err(|e| SourceError::NotFound(format!("{}: {e}", root.display())))?;
        if !root.is_dir() {
            return Err(SourceError::NotFound(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let bucket = root
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                SourceError::Invalid(format!("{}: no usable bucket name", root.display()))
            })?
            .to_string();
        Ok(FileSource {
            root,
            bucket,
            page_size: DEFAULT_PAGE_SIZE,
            watched: Arc::new(AtomicU64::new(0)),
            opener: Arc::new(BlockingQueue::new()),
        })
    }

    /// Sets the number of versions per listing page (at least 1).
    pub fn with_page_size(mut self, page_size: usize) -> FileSource {
        self.page_size = page_size.max(1);
        self
    }

    /// The directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The present generation of the watch: `None` when the tree is not watched (or not yet
    /// wholly). It changes whenever the watch may have missed a change (an event dropped or
    /// not handled, an overflow, a watch error), so two equal readings mean every change of
    /// the tree in between was reported as an event.
    pub fn watch_generation(&self) -> Option<u64> {
        match self.watched.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    /// Starts a new watch generation (if watched): what the watch reported may not all have
    /// been handled, e.g. events that could not be queued.
    pub fn watch_missed(&self) {
        bump(&self.watched);
    }

    /// Watches the directory tree; at most `capacity` events wait in [`FileWatch::events`]
    /// (more are dropped, then a [`WatchEvent::Rescan`] is sent).
    ///
    /// # Errors
    /// [`SourceError::Transient`] if the watch cannot be set up (e.g. the inotify watch limit).
    pub fn watch(&self, capacity: usize) -> Result<FileWatch, SourceError> {
        watch::start(&self.root, capacity, self.watched.clone())
    }

    /// The bucket name (the directory's last segment).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn check_bucket(&self, bucket: &str) -> Result<(), SourceError> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(SourceError::NotFound(format!(
                "no bucket {bucket:?} in this file source"
            )))
        }
    }

    /// The path of `key`, or `None` if the key cannot name a file under the root (empty, `.`
    /// or `..` segments, NUL bytes).
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        let mut p = self.root.clone();
        for seg in key.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." || seg.contains('\0') || is_reserved(seg)
            {
                return None;
            }
            p.push(seg);
        }
        Some(p)
    }

    /// Deletes `key`'s file if it still is version `version_id` (a transient source's
    /// collection, DESIGN section 9). The file is first renamed to a reserved name, atomically,
    /// and the version checked on what was renamed: a file replaced or rewritten meanwhile is
    /// put back under its name, never deleted.
    ///
    /// # Errors
    /// The I/O error that stopped it.
    /// Puts back what a collection cut short (`kill -9` between its rename and its delete, or
    /// before a rewritten file was renamed back): each file of another process named with
    /// [`GC_INFIX`] goes back under its name when that name is free (then it is collected, or
    /// replicated, like any file), else it is removed (a newer file took the name). Nothing is
    /// lost: only a grabbed file whose name was taken again is deleted. Walks the whole tree:
    /// run once at start. Returns how many were put back and removed.
    ///
    /// # Errors
    /// The directory walk failed.
    pub async fn recover_grabbed(&self) -> Result<(usize, usize), SourceError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || recover_grabbed_blocking(&root))
            .await
            .map_err(|e| SourceError::Transient(format!("recovery task failed: {e}")))?
            .map_err(io_to_source)
    }

    /// Whether `key`'s file is still version `version_id`.
    ///
    /// # Errors
    /// `SourceError::Transient` when the file cannot be read.
    pub async fn holds(&self, key: &str, version_id: &str) -> Result<bool, SourceError> {
        Ok(self
            .stat(key)
            .await?
            .is_some_and(|(_, m)| version_id_of(&m) == version_id))
    }

    pub async fn collect(&self, key: &str, version_id: &str) -> Result<Collected, SourceError> {
        let me = self.clone();
        let (key, version_id) = (key.to_owned(), version_id.to_owned());
        tokio::task::spawn_blocking(move || me.collect_blocking(&key, &version_id))
            .await
            .map_err(|e| SourceError::Transient(format!("collect task failed: {e}")))?
            .map_err(io_to_source)
    }

    fn collect_blocking(&self, key: &str, version_id: &str) -> std::io::Result<Collected> {
        let Some((path, m)) = self.stat_blocking(key)? else {
            return Ok(Collected::Gone);
        };
        if version_id_of(&m) != version_id {
            return Ok(Collected::Changed);
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(Collected::Gone);
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let grabbed = path.with_file_name(format!(
            "{name}{GC_INFIX}{:x}-{nanos:x}",
            std::process::id()
        ));
        match std::fs::rename(&path, &grabbed) {
            Ok(()) => {}
            Err(e) if crate::fswalk::is_gone(&e) => return Ok(Collected::Gone),
            Err(e) => return Err(e),
        }
        let m = std::fs::symlink_metadata(&grabbed)?;
        if version_id_of(&m) == version_id && m.is_file() {
            std::fs::remove_file(&grabbed)?;
            return Ok(Collected::Deleted(m.len()));
        }
        // Rewritten between the check and the rename: back under its name, unless a newer
        // file took the name meanwhile (then the grabbed one is superseded anyway).
        match std::fs::symlink_metadata(&path) {
            Err(e) if crate::fswalk::is_gone(&e) => std::fs::rename(&grabbed, &path)?,
            _ => std::fs::remove_file(&grabbed)?,
        }
        Ok(Collected::Changed)
    }

    /// Stats `key` without following links anywhere on its path; `None` if it is not a regular
    /// file reached through real directories.
    async fn stat(&self, key: &str) -> Result<Option<(PathBuf, std::fs::Metadata)>, SourceError> {
        let me = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || me.stat_blocking(&key))
            .await
            .map_err(|e| SourceError::Transient(format!("stat task failed: {e}")))?
            .map_err(io_to_source)
    }

    /// The path and metadata of `key`'s file, if it is a regular file reached through
    /// directories only (no symbolic link on the way).
    fn stat_blocking(&self, key: &str) -> std::io::Result<Option<(PathBuf, std::fs::Metadata)>> {
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        let rel = match path.strip_prefix(&self.root) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        let mut p = self.root.clone();
        let n = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            p.push(c);
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound) || e.raw_os_error() == Some(20) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            let last = i + 1 == n;
            if (last && !m.file_type().is_file()) || (!last && !m.file_type().is_dir()) {
                return Ok(None);
            }
            if last {
                return Ok(Some((p, m)));
            }
        }
        Ok(None)
    }

    /// [`Source::open_current`] in one blocking call: the key's file opened; a file of at most
    /// one chunk is read whole here (and checked unchanged after the read), a larger one is
    /// handed back open for streaming, hashed first when `want_md5` (a second local read,
    /// cheaper than a site without the MD5 up front).
    fn open_blocking(
        &self,
        key: &str,
        want_md5: bool,
    ) -> std::io::Result<Option<(ObjectInfo, Opened)>> {
        // A file replaced between the stat and the open is opened again (a few times).
        for _ in 0..3 {
            let Some((path, m)) = self.stat_blocking(key)? else {
                return Ok(None);
            };
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // The file opened is the one stat'ed (not a replacement that raced in).
            let fm = file.metadata()?;
            let vid = version_id_of(&m);
            if !fm.is_file() || version_id_of(&fm) != vid {
                continue;
            }
            let mut info = self.info(key.to_string(), &fm);
            let len = fm.len();
            let unchanged = |path: &Path| match std::fs::symlink_metadata(path) {
                Ok(after) => version_id_of(&after) == vid,
                Err(_) => false,
            };
            if len > CHUNK as u64 {
                if want_md5 {
                    let mut h = <md5::Md5 as md5::Digest>::new();
                    let mut buf = vec![0u8; CHUNK];
                    let mut reader = std::io::Read::take(&mut file, len);
                    loop {
                        let n = std::io::Read::read(&mut reader, &mut buf)?;
                        if n == 0 {
                            break;
                        }
                        md5::Digest::update(&mut h, buf.get(..n).unwrap_or_default());
                    }
                    if !unchanged(&path) {
                        continue;
                    }
                    let d: [u8; 16] = md5::Digest::finalize(h).into();
                    info.content_md5 = Some(crate::checksum::hex(&d));
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
                }
                return Ok(Some((info, Opened::Stream { file, path, len })));
            }
            let mut buf = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, len), &mut buf)?;
            // Changed while read (or truncated): read the new one.
            if !unchanged(&path) || buf.len() as u64 != len {
                continue;
            }
            info.content_md5 = Some(crate::checksum::hex(&crate::checksum::md5(&buf)));
            return Ok(Some((info, Opened::Whole(Bytes::from(buf)))));
        }
        Err(std::io::Error::other(format!(
            "{key} keeps changing while it is opened"
        )))
    }

    /// Runs `job` (blocking work on this source's files, e.g. a read then a write elsewhere)
    /// in the queue the copies' opens share, so that jobs asked together share one hand-off to
    /// the blocking pool ([`BlockingQueue`]).
    ///
    /// # Errors
    /// Transient if the job panicked.
    pub async fn run_blocking<T, F>(&self, job: F) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.opener
            .run(job)
            .await
            .map_err(|e| SourceError::Transient(format!("blocking task failed: {e}")))
    }

    /// [`Source::open_current`] on the calling thread (blocking), for a caller already off the
    /// runtime's threads: `key`'s current version and its bytes, whole when the file is at
    /// most one chunk (256 KiB), else open to stream. `None` when there is no such file.
    ///
    /// # Errors
    /// The source's error for a file that cannot be read (or keeps changing while read).
    pub fn open_current_blocking(
        &self,
        key: &str,
    ) -> Result<Option<(ObjectInfo, Opened)>, SourceError> {
        self.open_blocking(key, false).map_err(io_to_source)
    }

    /// [`Source::current`] on the calling thread (blocking): `key`'s file stat'ed.
    fn current_blocking(&self, key: &str) -> Result<Option<ObjectInfo>, SourceError> {
        Ok(self
            .stat_blocking(key)
            .map_err(io_to_source)?
            .map(|(_, m)| self.info(key.to_string(), &m)))
    }

    fn info(&self, key: String, m: &std::fs::Metadata) -> ObjectInfo {
        let vid = version_id_of(m);
        ObjectInfo {
            version: VersionRef::new(self.bucket.clone(), key, vid.clone()),
            size: m.len(),
            etag: vid,
            last_modified: last_modified_of(m),
            ..ObjectInfo::default()
        }
    }

    /// The directory of key prefix `prefix` (`""` for the root, else `dir/`), if it is one.
    fn dir_path(&self, prefix: &str) -> std::io::Result<Option<PathBuf>> {
        Ok(self.dir_meta(prefix)?.map(|(p, _)| p))
    }

    /// The path and metadata of directory `prefix`, `None` if it is not a directory.
    fn dir_meta(&self, prefix: &str) -> std::io::Result<Option<(PathBuf, std::fs::Metadata)>> {
        let dir = if prefix.is_empty() {
            self.root.clone()
        } else {
            match self.path_of(prefix.trim_end_matches('/')) {
                Some(p) => p,
                None => return Ok(None),
            }
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some((dir, m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(20) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The path and entries of directory `prefix`, `None` if it is not a directory (any more).
    fn read_dir(&self, prefix: &str) -> std::io::Result<Option<(PathBuf, std::fs::ReadDir)>> {
        let Some(dir) = self.dir_path(prefix)? else {
            return Ok(None);
        };
        match std::fs::read_dir(&dir) {
            Ok(rd) => Ok(Some((dir, rd))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stamp of directory `prefix` (`None` if it is not a directory).
    ///
    /// # Errors
    /// An I/O error other than "not found".
    pub fn dir_stamp(&self, prefix: &str) -> std::io::Result<Option<DirStamp>> {
        Ok(self.dir_meta(prefix)?.map(|(_, m)| DirStamp::of(&m)))
    }

    /// The subdirectories of directory `prefix`, as key prefixes, from the directory's
    /// entries alone (no `stat` of its files where the file system reports entry kinds).
    /// `None` when it is not a directory (any more).
    ///
    /// # Errors
    /// An I/O error other than "not found".
    pub fn subdirs(&self, prefix: &str) -> std::io::Result<Option<Vec<String>>> {
        let Some((_, rd)) = self.read_dir(prefix)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry?;
            match entry.file_type() {
                Ok(ft) if ft.is_dir() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            if let Ok(name) = entry.file_name().into_string() {
                if !is_reserved(&name) {
                    out.push(format!("{prefix}{name}/"));
                }
            }
        }
        Ok(Some(out))
    }

    /// Reads directory `prefix` (`""` for the root, else `dir/` or `dir/sub/`) entry by
    /// entry, in no particular order and without holding them: its summary and
    /// subdirectories, and, with `emit`, each regular file modified at or before
    /// `settled_before_ms` as a version. `None` when it is not a directory (any more).
    ///
    /// # Errors
    /// An I/O error other than "not found".
    pub fn scan_dir(
        &self,
        prefix: &str,
        settled_before_ms: u64,
        mut emit: Option<&mut dyn FnMut(ObjectInfo)>,
    ) -> std::io::Result<Option<DirScan>> {
        let Some((dir, rd)) = self.read_dir(prefix)? else {
            return Ok(None);
        };
        let mut scan = DirScan {
            summary: 0,
            subdirs: Vec::new(),
            unsettled: 0,
        };
        for entry in rd {
            let entry = entry?;
            let name = match entry.file_name().into_string() {
                Ok(n) if is_reserved(&n) => continue,
                Ok(n) => n,
                Err(name) => {
                    tracing::warn!(dir = %dir.display(), name = ?name, "Skipping a file whose name is not UTF-8.");
                    continue;
                }
            };
            let m = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let ft = m.file_type();
            let mut h = Fnv::new();
            h.bytes(name.as_bytes());
            h.bytes(&[0]);
            if ft.is_dir() {
                h.bytes(b"/");
                h.bytes(&m.ino().to_le_bytes());
                scan.subdirs.push(format!("{prefix}{name}/"));
            } else if ft.is_file() {
                let vid = version_id_of(&m);
                h.bytes(vid.as_bytes());
                let mtime_ms = u64::try_from(m.mtime()).unwrap_or(0).saturating_mul(1000)
                    + u64::try_from(m.mtime_nsec()).unwrap_or(0) / 1_000_000;
                if mtime_ms > settled_before_ms {
                    scan.unsettled += 1;
                } else if let Some(f) = emit.as_mut() {
                    f(self.info(format!("{prefix}{name}"), &m));
                }
            } else {
                continue;
            }
            scan.summary = scan.summary.wrapping_add(h.0);
        }
        Ok(Some(scan))
    }

    /// Visits every file whose key starts with `prefix` (a directory `dir/`, or any prefix)
    /// after `cursor`, in key byte order, holding a bounded number of names per directory
    /// level ([`crate::fswalk`]); `f` returns `false` to stop. Returns `false` when stopped.
    ///
    /// # Errors
    /// An I/O error other than "not found".
    pub fn walk_sorted(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        f: &mut dyn FnMut(ObjectInfo) -> bool,
    ) -> std::io::Result<bool> {
        // The deepest directory the prefix names.
        let dir_key = prefix
            .rfind('/')
            .and_then(|i| prefix.get(..=i))
            .unwrap_or("");
        let Some(dir) = self.dir_path(dir_key)? else {
            return Ok(true);
        };
        let name_of = |n: &str| (!is_reserved(n)).then(|| n.to_string());
        crate::fswalk::walk(&dir, dir_key, prefix, cursor, &name_of, &mut |key, path| {
            let m = match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return Ok(true),
                Err(e) if crate::fswalk::is_gone(&e) => return Ok(true),
                Err(e) => return Err(e),
            };
            Ok(f(self.info(key.to_string(), &m)))
        })
    }

    /// Lists up to `page_size` files after `cursor` in key byte order, synchronously.
    fn list_blocking(&self, cursor: Option<&str>) -> std::io::Result<KeyPage> {
        let mut out = Vec::new();
        let page = self.page_size;
        let done = self.walk_sorted("", cursor, &mut |info| {
            out.push(info);
            out.len() < page
        })?;
        let next = if done {
            None
        } else {
            out.last().map(|o: &ObjectInfo| o.version.key.clone())
        };
        Ok(KeyPage { items: out, next })
    }
}

/// Starts a new generation of a watch, unless it is not watched.
fn bump(generation: &AtomicU64) {
    let next = next_generation();
    let _ = generation.fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
        (g != 0).then_some(next)
    });
}

/// What [`FileSource::open_current_blocking`] found.
#[derive(Debug)]
pub enum Opened {
    /// The whole file (at most one chunk).
    Whole(Bytes),
    /// A larger file, open at offset 0, to stream.
    Stream {
        file: std::fs::File,
        path: PathBuf,
        len: u64,
    },
}

/// Streams `len` bytes of `file` from its current offset; after the last chunk, checks that
/// `path` is still version `expected`, so a file changed while read ends the stream with an
/// error (a torn copy is never completed).
fn checked_stream(file: tokio::fs::File, len: u64, path: PathBuf, expected: String) -> ByteStream {
    let body = ReaderStream::with_capacity(file.take(len), CHUNK);
    let tail = futures_util::stream::once(async move {
        match tokio::fs::symlink_metadata(&path).await {
            Ok(m) if version_id_of(&m) == expected => None,
            _ => Some(Err(std::io::Error::other(
                "the file changed while it was read",
            ))),
        }
    })
    .filter_map(std::future::ready);
    Box::pin(body.chain(tail))
}

fn io_to_source(e: std::io::Error) -> SourceError {
    match e.kind() {
        ErrorKind::NotFound => SourceError::NotFound(e.to_string()),
        ErrorKind::PermissionDenied => SourceError::Denied(e.to_string()),
        _ => SourceError::Transient(e.to_string()),
    }
}

#[async_trait]
impl Source for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn buckets(&self) -> Vec<String> {
        vec![self.bucket.clone()]
    }

    fn listing_is_full_metadata(&self) -> bool {
        true
    }

    fn as_file(&self) -> Option<&FileSource> {
        Some(self)
    }

    async fn list_current(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<KeyPage, SourceError> {
        self.check_bucket(bucket)?;
        let cursor = cursor.map(str::to_owned);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.list_blocking(cursor.as_deref()))
            .await
            .map_err(|e| SourceError::Transient(format!("listing task failed: {e}")))?
            .map_err(io_to_source)
    }

    async fn current(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, SourceError> {
        self.check_bucket(bucket)?;
        let (me, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || me.current_blocking(&key))
            .await
            .map_err(|e| SourceError::Transient(format!("stat task failed: {e}")))?
    }

    async fn current_many(
        &self,
        bucket: &str,
        keys: &[String],
    ) -> Vec<Result<Option<ObjectInfo>, SourceError>> {
        if let Err(e) = self.check_bucket(bucket) {
            return keys.iter().map(|_| Err(e.clone())).collect();
        }
        // A few keys per blocking call (a hand-off to the blocking pool costs more than the
        // stats of a cached directory), a few calls at once (a cold disk still sees several
        // stats in flight).
        let calls: Vec<_> = keys
            .chunks(STAT_BATCH)
            .map(|chunk| (self.clone(), chunk.to_vec()))
            .map(|(me, chunk)| async move {
                let n = chunk.len();
                match tokio::task::spawn_blocking(move || {
                    chunk
                        .iter()
                        .map(|k| me.current_blocking(k))
                        .collect::<Vec<_>>()
                })
                .await
                {
                    Ok(found) => found,
                    Err(e) => {
                        let e = SourceError::Transient(format!("stat task failed: {e}"));
                        (0..n).map(|_| Err(e.clone())).collect()
                    }
                }
            })
            .collect();
        futures_util::stream::iter(calls)
            .buffered(STAT_CALLS)
            .flat_map(futures_util::stream::iter)
            .collect()
            .await
    }

    async fn open_current(
        &self,
        bucket: &str,
        key: &str,
        want_md5: bool,
    ) -> Result<Option<(ObjectInfo, Option<ByteStream>)>, SourceError> {
        self.check_bucket(bucket)?;
        // Opens asked together share one blocking call ([`BlockingQueue`]).
        let me = self.clone();
        let k = key.to_string();
        let opened = self
            .run_blocking(move || me.open_blocking(&k, want_md5))
            .await?
            .map_err(io_to_source)?;
        Ok(opened.map(|(info, opened)| {
            let body: ByteStream = match opened {
                Opened::Whole(bytes) => {
                    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
                }
                Opened::Stream { file, path, len } => checked_stream(
                    tokio::fs::File::from_std(file),
                    len,
                    path,
                    info.version.version_id.clone(),
                ),
            };
            (info, Some(body))
        }))
    }

    async fn get_range(
        &self,
        version: &VersionRef,
        _etag: &str,
        range: (u64, u64),
    ) -> Result<ByteStream, SourceError> {
        // A file's ETag is its version id, checked below.
        self.check_bucket(&version.bucket)?;
        let gone = || SourceError::NotFound(format!("{version} is no longer the current file"));
        let Some((path, _)) = self.stat(&version.key).await? else {
            return Err(gone());
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(io_to_source)?;
        let m = file.metadata().await.map_err(io_to_source)?;
        if !m.is_file() || version_id_of(&m) != version.version_id {
            return Err(gone());
        }
        let (s, e) = range;
        if s > e || e >= m.len() {
            return Err(SourceError::Invalid(format!(
                "range {s}-{e} outside of {} bytes",
                m.len()
            )));
        }
        file.seek(std::io::SeekFrom::Start(s))
            .await
            .map_err(io_to_source)?;
        Ok(checked_stream(
            file,
            e - s + 1,
            path,
            version.version_id.clone(),
        ))
    }

    async fn replication_rules(&self, bucket: &str) -> Result<Option<Vec<Rule>>, SourceError> {
        self.check_bucket(bucket)?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_short_collection_is_put_back_or_removed_and_ours_are_left() {
        let root = std::env::temp_dir().join(format!("bb-grabbed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a")).unwrap();
        let other = format!("{GC_INFIX}1-2");
        let ours = format!("{GC_INFIX}{:x}-3", std::process::id());
        // Grabbed, its name free: put back. Grabbed, its name taken again: removed.
        std::fs::write(root.join(format!("a/x.txt{other}")), "x").unwrap();
        std::fs::write(root.join("a/y"), "new y").unwrap();
        std::fs::write(root.join(format!("a/y{other}")), "old y").unwrap();
        // This process's own grab (a collection under way) is not touched.
        std::fs::write(root.join(format!("z{ours}")), "z").unwrap();
        assert_eq!(recover_grabbed_blocking(&root).unwrap(), (1, 1));
        assert_eq!(std::fs::read(root.join("a/x.txt")).unwrap(), b"x");
        assert_eq!(std::fs::read(root.join("a/y")).unwrap(), b"new y");
        assert!(!root.join(format!("a/y{other}")).exists());
        assert!(root.join(format!("z{ours}")).exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn listing_is_in_key_byte_order_and_pages_resume_after_the_cursor() {
        let tmp = std::env::temp_dir().join(format!("bb-file-src-{}", std::process::id()));
        let root = tmp.join("bk");
        for k in ["a-c", "a/b", "a/c/d", "a0", "b", "a/b0"] {
            let p = root.join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, k).unwrap();
        }
        let src = FileSource::new(&root).unwrap().with_page_size(2);
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = src.list_blocking(cursor.as_deref()).unwrap();
            keys.extend(page.items.iter().map(|i| i.version.key.clone()));
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys, ["a-c", "a/b", "a/b0", "a/c/d", "a0", "b"]);
        let root_dir = src.scan_dir("", u64::MAX, None).unwrap().unwrap();
        assert_eq!(root_dir.subdirs, ["a/"]);
        let again = src.scan_dir("", u64::MAX, None).unwrap().unwrap();
        assert_eq!(root_dir.summary, again.summary);
        std::fs::write(root.join("a0"), "changed!").unwrap();
        let mut files = Vec::new();
        let changed = src
            .scan_dir(
                "",
                u64::MAX,
                Some(&mut |i: ObjectInfo| files.push(i.version.key)),
            )
            .unwrap()
            .unwrap();
        assert_ne!(changed.summary, root_dir.summary);
        files.sort();
        assert_eq!(files, ["a-c", "a0", "b"]);
        // Too recent to be taken: counted, not listed.
        let recent = src.scan_dir("", 0, None).unwrap().unwrap();
        assert_eq!(recent.unsettled, 3);
        let _ = std::fs::remove_dir_all(tmp);
    }
}
