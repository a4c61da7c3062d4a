//! The `file` source: a local directory whose files are object versions (edge installs).
//!
//! - Bucket name: the directory's last path segment. Key: the path relative to the directory,
//!   segments joined with `/`. Only regular files with UTF-8 names are objects; symbolic links,
//!   sockets and the like are skipped (a link could lead out of the directory).
//! - Version id: derived from the file's `(size, mtime in ns, inode)`, as
//!   `<size hex>-<mtime ns hex>-<inode hex>`; a changed or replaced file is a new version, and
//!   the id is stable across restarts. The ETag is the version id (no content hash is computed).
//! - Listing order: depth-first, entries of a directory sorted by name bytes; equivalently,
//!   keys compared segment by segment. A page's cursor is its last key; the next page lists
//!   the keys after it in that order, skipping whole subtrees before it.
//! - [`Source::head`] and [`Source::get`] re-stat the file: a version that is no longer the
//!   file's current one is gone (`Ok(None)` / [`SourceError::NotFound`]). A `get` stream ends
//!   with an error if the file changed while it was read, so a torn copy is never completed.
//! - No replication configuration: rules come from the configuration file.
//! - [`FileSource::watch`] reports changed keys within milliseconds (inotify, through the
//!   `notify` crate), so new files need not wait for the next rescan. It is a hint: events may
//!   repeat, and some are lost (a full channel, a directory moved in whole, an overflowing
//!   kernel queue); the periodic rescan catches those.

use std::cmp::Ordering;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{Rule, Source, SourceError, VersionPage};
use crate::model::{ByteStream, ObjectInfo, VersionRef};

/// Default number of versions per listing page.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Size of the chunks `get` streams.
const CHUNK: usize = 256 * 1024;

/// A local directory as a source of versions.
#[derive(Debug, Clone)]
pub struct FileSource {
    root: PathBuf,
    bucket: String,
    page_size: usize,
}

/// Changed keys of a watched [`FileSource`]; watching stops when this is dropped.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    /// Keys whose file was created, written, renamed or removed (not deduplicated). Head them
    /// to learn their current version, if any.
    pub changes: tokio::sync::mpsc::Receiver<String>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
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

/// Compares two keys segment by segment (the listing order).
fn cmp_keys(a: &[String], b: &[String]) -> Ordering {
    a.iter()
        .map(String::as_bytes)
        .cmp(b.iter().map(String::as_bytes))
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

    /// Watches the directory tree and sends the key of every changed file on
    /// [`FileWatch::changes`] (at most `capacity` waiting; more are dropped, for the rescan to
    /// find).
    ///
    /// # Errors
    /// [`SourceError::Transient`] if the watch cannot be set up (e.g. the inotify watch limit).
    pub fn watch(&self, capacity: usize) -> Result<FileWatch, SourceError> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let root = self.root.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) {
                        return;
                    }
                    for p in &ev.paths {
                        if let Some(key) = key_of(&root, p) {
                            if tx.try_send(key).is_err() {
                                tracing::debug!(
                                    "File watch channel full or closed; the rescan will catch up."
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "File watch error; the rescan will catch up."),
            })
            .map_err(|e| {
                SourceError::Transient(format!("cannot watch {}: {e}", self.root.display()))
            })?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| {
                SourceError::Transient(format!("cannot watch {}: {e}", self.root.display()))
            })?;
        Ok(FileWatch {
            _watcher: watcher,
            changes: rx,
        })
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
            if seg.is_empty() || seg == "." || seg == ".." || seg.contains('\0') {
                return None;
            }
            p.push(seg);
        }
        Some(p)
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

    /// [`Source::open`] in one blocking call: the file opened and checked to be the version;
    /// a file of at most one chunk is read whole here (and checked unchanged after the read),
    /// a larger one is handed back open for streaming.
    fn open_blocking(&self, version: &VersionRef) -> std::io::Result<Option<(ObjectInfo, Opened)>> {
        let Some((path, m)) = self.stat_blocking(&version.key)? else {
            return Ok(None);
        };
        if version_id_of(&m) != version.version_id {
            return Ok(None);
        }
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // The file opened is the one stat'ed (not a replacement that raced in).
        let fm = file.metadata()?;
        if !fm.is_file() || version_id_of(&fm) != version.version_id {
            return Ok(None);
        }
        let info = self.info(version.key.clone(), &fm);
        let len = fm.len();
        if len > CHUNK as u64 {
            return Ok(Some((info, Opened::Stream { file, path, len })));
        }
        let mut buf = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, len), &mut buf)?;
        // Changed while read (or truncated): this version is gone.
        let unchanged = match std::fs::symlink_metadata(&path) {
            Ok(after) => version_id_of(&after) == version.version_id,
            Err(_) => false,
        };
        if !unchanged || buf.len() as u64 != len {
            return Ok(None);
        }
        Ok(Some((info, Opened::Whole(Bytes::from(buf)))))
    }

    fn info(&self, key: String, m: &std::fs::Metadata) -> ObjectInfo {
        let vid = version_id_of(m);
        ObjectInfo {
            version: VersionRef::new(self.bucket.clone(), key, vid.clone()),
            size: m.len(),
            etag: vid,
            last_modified: last_modified_of(m),
            content_type: None,
            user_metadata: Default::default(),
            tags: Default::default(),
            is_delete_marker: false,
        }
    }

    /// Lists up to `page_size` files after `cursor` (listing order), synchronously.
    fn list_blocking(&self, cursor: Option<Vec<String>>) -> std::io::Result<VersionPage> {
        let mut out = Vec::new();
        let mut full = false;
        let mut prefix = Vec::new();
        self.walk(
            &self.root.clone(),
            &mut prefix,
            cursor.as_deref(),
            &mut out,
            &mut full,
        )?;
        let next = if full {
            out.last().map(|o: &ObjectInfo| o.version.key.clone())
        } else {
            None
        };
        Ok(VersionPage {
            versions: out,
            next,
        })
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &mut Vec<String>,
        cursor: Option<&[String]>,
        out: &mut Vec<ObjectInfo>,
        full: &mut bool,
    ) -> std::io::Result<()> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            // A directory removed while we walk is simply gone.
            Err(e) if e.kind() == ErrorKind::NotFound && !prefix.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut entries: Vec<(String, std::fs::DirEntry)> = Vec::new();
        for entry in rd {
            let entry = entry?;
            match entry.file_name().into_string() {
                Ok(name) => entries.push((name, entry)),
                Err(name) => {
                    tracing::warn!(dir = %dir.display(), name = ?name, "Skipping a file whose name is not UTF-8.");
                }
            }
        }
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, entry) in entries {
            if *full {
                return Ok(());
            }
            prefix.push(name);
            let res = self.visit(&entry, prefix, cursor, out, full);
            prefix.pop();
            res?;
        }
        Ok(())
    }

    fn visit(
        &self,
        entry: &std::fs::DirEntry,
        segs: &mut Vec<String>,
        cursor: Option<&[String]>,
        out: &mut Vec<ObjectInfo>,
        full: &mut bool,
    ) -> std::io::Result<()> {
        // Position relative to the cursor: Less = entirely before it, skip.
        let pos = match cursor {
            None => Ordering::Greater,
            Some(c) => cmp_keys(segs, &c[..segs.len().min(c.len())]),
        };
        if pos == Ordering::Less {
            return Ok(());
        }
        let m = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let ft = m.file_type();
        if ft.is_dir() {
            return self.walk(&entry.path(), segs, cursor, out, full);
        }
        if !ft.is_file() {
            return Ok(());
        }
        // Equal means this is the cursor's key itself (or a file where the cursor went deeper).
        if pos == Ordering::Equal {
            return Ok(());
        }
        out.push(self.info(segs.join("/"), &m));
        if out.len() >= self.page_size {
            *full = true;
        }
        Ok(())
    }
}

/// What [`FileSource::open_blocking`] found.
enum Opened {
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

    async fn list_versions(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<VersionPage, SourceError> {
        self.check_bucket(bucket)?;
        let cursor = cursor.map(|c| c.split('/').map(str::to_owned).collect::<Vec<_>>());
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.list_blocking(cursor))
            .await
            .map_err(|e| SourceError::Transient(format!("listing task failed: {e}")))?
            .map_err(io_to_source)
    }

    async fn head(&self, version: &VersionRef) -> Result<Option<ObjectInfo>, SourceError> {
        self.check_bucket(&version.bucket)?;
        let Some((_, m)) = self.stat(&version.key).await? else {
            return Ok(None);
        };
        if version_id_of(&m) != version.version_id {
            return Ok(None);
        }
        Ok(Some(self.info(version.key.clone(), &m)))
    }

    async fn get(
        &self,
        version: &VersionRef,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, SourceError> {
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
        let (start, len) = match range {
            None => (0, m.len()),
            Some((s, e)) if s <= e && e < m.len() => (s, e - s + 1),
            Some((s, e)) => {
                return Err(SourceError::Invalid(format!(
                    "range {s}-{e} outside of {} bytes",
                    m.len()
                )))
            }
        };
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(io_to_source)?;
        Ok(checked_stream(file, len, path, version.version_id.clone()))
    }

    async fn open(
        &self,
        version: &VersionRef,
    ) -> Result<Option<(ObjectInfo, ByteStream)>, SourceError> {
        self.check_bucket(&version.bucket)?;
        let me = self.clone();
        let v = version.clone();
        let opened = tokio::task::spawn_blocking(move || me.open_blocking(&v))
            .await
            .map_err(|e| SourceError::Transient(format!("open task failed: {e}")))?
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
                    version.version_id.clone(),
                ),
            };
            (info, body)
        }))
    }

    async fn replication_rules(&self, bucket: &str) -> Result<Option<Vec<Rule>>, SourceError> {
        self.check_bucket(bucket)?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(k: &str) -> Vec<String> {
        k.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn keys_compare_segment_by_segment() {
        assert_eq!(cmp_keys(&segs("a/b"), &segs("a-c")), Ordering::Less);
        assert_eq!(cmp_keys(&segs("a"), &segs("a/b")), Ordering::Less);
        assert_eq!(cmp_keys(&segs("b"), &segs("a/z")), Ordering::Greater);
    }
}
