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
//!   directory, is fsynced, then renamed over the target; the directory is fsynced after.
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
//! A key that needs a name both as a file and as a directory (`a` and `a/b`) cannot be stored:
//! the second one is [`SiteError::Rejected`].

use std::collections::BTreeMap;
use std::io::{ErrorKind, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tracing::debug;

use super::parts::part_ranges;
use super::{ListPage, MultipartSite, PartReceipt, PutReceipt, ReplicaInfo, Site, SiteError};
use crate::config::SiteKind;
use crate::model::{ByteStream, ObjectInfo};

/// Suffix of the sidecar metadata file of a replica.
pub const SIDECAR_SUFFIX: &str = "%meta.json";
const TMP_INFIX: &str = "%tmp.";
const MPU_INFIX: &str = "%mpu.";

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
            .map(|root| FileSite { name, root })
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
        SiteError::Rejected {
            site: self.name.clone(),
            detail: detail.into(),
        }
    }

    fn io_error(&self, what: &str, path: &Path, e: std::io::Error) -> SiteError {
        let detail = format!("{what} {}: {e}", path.display());
        // Linux errno values: EEXIST, ENOTDIR, EISDIR, EINVAL, ENAMETOOLONG are about the key
        // (a name too long, a file where a directory is needed): retrying cannot help.
        if e.kind() == ErrorKind::PermissionDenied {
            SiteError::Unauthorized {
                site: self.name.clone(),
                detail,
            }
        } else if matches!(e.raw_os_error(), Some(17 | 20 | 21 | 22 | 36)) {
            self.rejected(detail)
        } else {
            SiteError::transient(&self.name, detail)
        }
    }

    /// Creates the directories leading to `key`'s file, never following a symbolic link, and
    /// returns `(directory, encoded file name)`.
    async fn prepare(&self, key: &str) -> Result<(PathBuf, String), SiteError> {
        if key.is_empty() {
            return Err(self.rejected("empty key"));
        }
        let mut segs: Vec<String> = key.split('/').map(encode_segment).collect();
        let file = segs.pop().ok_or_else(|| self.rejected("empty key"))?;
        let mut dir = self.root.clone();
        for seg in segs {
            dir.push(seg);
            match tokio::fs::symlink_metadata(&dir).await {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.rejected(format!("{} is a symbolic link", dir.display())))
                }
                Ok(_) => {
                    return Err(self.rejected(format!(
                        "{} is a file, cannot hold key {key:?}",
                        dir.display()
                    )))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    match tokio::fs::create_dir(&dir).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            // Created concurrently: accept only a real directory.
                            let m = tokio::fs::symlink_metadata(&dir)
                                .await
                                .map_err(|e| self.io_error("cannot inspect", &dir, e))?;
                            if !m.file_type().is_dir() {
                                return Err(
                                    self.rejected(format!("{} is not a directory", dir.display()))
                                );
                            }
                        }
                        Err(e) => return Err(self.io_error("cannot create directory", &dir, e)),
                    }
                }
                Err(e) => return Err(self.io_error("cannot inspect", &dir, e)),
            }
        }
        if let Ok(m) = tokio::fs::symlink_metadata(dir.join(&file)).await {
            if m.file_type().is_dir() {
                return Err(self.rejected(format!(
                    "{} is a directory, cannot hold key {key:?}",
                    dir.join(&file).display()
                )));
            }
        }
        Ok((dir, file))
    }

    /// Writes the sidecar of `obj` to a temporary file, fsynced; returns its path.
    async fn write_sidecar_tmp(
        &self,
        dir: &Path,
        file: &str,
        obj: &ObjectInfo,
        md5: &str,
    ) -> Result<PathBuf, SiteError> {
        let json = serde_json::to_vec_pretty(&Sidecar::of(obj, md5))
            .map_err(|e| self.rejected(format!("cannot encode sidecar: {e}")))?;
        let tmp = dir.join(format!("{file}{TMP_INFIX}{}", random_hex()));
        let res = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&json).await?;
            f.sync_all().await
        }
        .await;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.io_error("cannot write sidecar", &tmp, e));
        }
        Ok(tmp)
    }

    /// Renames the data then the sidecar into place and fsyncs the directory.
    async fn publish(
        &self,
        dir: &Path,
        file: &str,
        data_tmp: &Path,
        meta_tmp: &Path,
    ) -> Result<(), SiteError> {
        let target = dir.join(file);
        let meta = dir.join(format!("{file}{SIDECAR_SUFFIX}"));
        if let Err(e) = tokio::fs::rename(data_tmp, &target).await {
            let _ = tokio::fs::remove_file(data_tmp).await;
            let _ = tokio::fs::remove_file(meta_tmp).await;
            return Err(self.io_error("cannot rename into", &target, e));
        }
        if let Err(e) = tokio::fs::rename(meta_tmp, &meta).await {
            let _ = tokio::fs::remove_file(meta_tmp).await;
            return Err(self.io_error("cannot rename into", &meta, e));
        }
        sync_dir(dir)
            .await
            .map_err(|e| self.io_error("cannot sync directory", dir, e))
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

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let d = tokio::fs::File::open(dir).await?;
    d.sync_all().await
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
        let (dir, file) = self.prepare(key).await?;
        let tmp = dir.join(format!("{file}{TMP_INFIX}{}", random_hex()));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| self.io_error("cannot create", &tmp, e))?;
        let copied = copy_exact(&mut f, body, obj.size).await;
        let synced = match copied {
            Ok(md5) => f
                .sync_all()
                .await
                .map(|()| md5)
                .map_err(|e| format!("fsync failed: {e}")),
            Err(e) => Err(e),
        };
        drop(f);
        let md5 = match synced {
            Ok(md5) => md5,
            Err(detail) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(SiteError::transient(&self.name, detail));
            }
        };
        let meta_tmp = match self
            .write_sidecar_tmp(&dir, &file, obj, &crate::checksum::hex(&md5))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        self.publish(&dir, &file, &tmp, &meta_tmp).await?;
        debug!(site = %self.name, key, size = obj.size, "Replica written.");
        Ok(PutReceipt {
            wrote: true,
            ..PutReceipt::default()
        })
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
            sync_dir(&dir)
                .await
                .map_err(|e| self.io_error("cannot sync directory", &dir, e))?;
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
        let meta_tmp = self.write_sidecar_tmp(&dir, &file, obj, &md5).await?;
        self.publish(&dir, &file, &path, &meta_tmp).await?;
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
