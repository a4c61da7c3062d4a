//! `[source]`: where versions come from, by `type`: an S3-compatible server (`s3`) or a local
//! directory (`file`), and how often it is listed.

use std::path::PathBuf;

use super::defaults;
use super::fields::{is_s3_bucket_name, not_an_s3_bucket_name, Fields};
use super::s3_client::S3ClientConfig;

/// `[source]`: the settings of every kind, then the kind-specific part.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Seconds between full passes over the source (0: never, only allowed with the watch of
    /// a directory). Default: 300 for a watched directory, 30 otherwise.
    pub scan_interval_s: u64,
    /// Versions replicated everywhere are deleted from the source (an edge inbox); these
    /// deletions are not replicated.
    pub transient: bool,
    /// The kind of source (`type`) and its own settings.
    pub backend: SourceBackend,
}

impl SourceConfig {
    /// The buckets this source provides: the configured ones, or a directory's last segment.
    pub fn buckets(&self) -> Vec<String> {
        match &self.backend {
            SourceBackend::S3(c) => c.buckets.clone(),
            SourceBackend::File(c) => c
                .path
                .canonicalize()
                .unwrap_or_else(|_| c.path.clone())
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| vec![n.to_string()])
                .unwrap_or_default(),
        }
    }
}

/// The kind-specific part of `[source]`, tagged by `type`.
#[derive(Debug, Clone)]
pub enum SourceBackend {
    /// `type = "s3"`.
    S3(S3SourceConfig),
    /// `type = "file"`.
    File(FileSourceConfig),
}

/// `[source] type = "s3"`: an S3-compatible server.
#[derive(Debug, Clone)]
pub struct S3SourceConfig {
    /// Endpoint, region, credentials, addressing.
    pub client: S3ClientConfig,
    /// Buckets to replicate from (at least one).
    pub buckets: Vec<String>,
}

/// `[source] type = "file"`: a local directory.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// Directory replicated; its last segment names the bucket.
    pub path: PathBuf,
    /// Watch the directory (inotify) so changes are replicated at once; `false` for file
    /// systems without inotify events (NFS, SMB), which then rely on the rescans.
    pub watch: bool,
    /// A rescan leaves files modified less than this long ago to a later pass (or the watch),
    /// so a file still being written is not copied half-written.
    pub settle_ms: u64,
}

/// Reads and checks `[source]`.
pub(super) fn read(value: toml::Value, e: &mut Vec<String>) -> Option<SourceConfig> {
    let mut f = Fields::new("source".into(), value, e)?;
    let kind: Option<String> = f.required("type");
    let scan_interval_s: Option<u64> = f.optional("scan_interval_s");
    let transient = f.or("transient", || false);
    let backend = match kind.as_deref() {
        Some("s3") => read_s3(&mut f).map(SourceBackend::S3),
        Some("file") => read_file(&mut f).map(SourceBackend::File),
        Some(other) => {
            let built = if other == "mongodb" {
                " (not built yet)"
            } else {
                ""
            };
            f.problem(
                "type",
                format!("unknown source type {other:?}{built}; expected \"s3\" or \"file\""),
            );
            // The other fields belong to a kind this reader does not know: not reported.
            return None;
        }
        None => return None,
    };
    let backend = backend?;
    let watched = matches!(&backend, SourceBackend::File(c) if c.watch);
    let scan_interval_s = scan_interval_s.unwrap_or(if watched {
        defaults::WATCHED_SCAN_INTERVAL_S
    } else {
        defaults::scan_interval_s()
    });
    if scan_interval_s == 0 && !watched {
        f.problem(
            "scan_interval_s",
            "0 (never rescan) is only allowed for a directory source with watch = true: \
             without the watch nothing would ever be found",
        );
    }
    if transient && matches!(backend, SourceBackend::S3(_)) {
        f.problem(
            "transient",
            "only a directory source (type = \"file\") can be transient",
        );
    }
    f.finish();
    Some(SourceConfig {
        scan_interval_s,
        transient,
        backend,
    })
}

fn read_s3(f: &mut Fields<'_>) -> Option<S3SourceConfig> {
    let client = S3ClientConfig::read(f);
    let buckets: Vec<String> = f.or("buckets", Vec::new);
    if buckets.is_empty() {
        f.problem("buckets", "at least one bucket is required");
    }
    // Checked before a name goes near a URL or a host name (virtual-host addressing puts it
    // in the host).
    for b in buckets.iter().filter(|b| !is_s3_bucket_name(b)) {
        f.problem("buckets", not_an_s3_bucket_name(b));
    }
    Some(S3SourceConfig {
        client: client?,
        buckets,
    })
}

fn read_file(f: &mut Fields<'_>) -> Option<FileSourceConfig> {
    let watch = f.or("watch", || true);
    let settle_ms = f.or("settle_ms", || defaults::SETTLE_MS);
    let path: PathBuf = f.required("path")?;
    if path.file_name().is_none() {
        f.problem(
            "path",
            format!("{} has no last segment to name the bucket", path.display()),
        );
        return None;
    }
    if !path.is_dir() {
        f.problem(
            "path",
            format!("{} is not an existing directory", path.display()),
        );
        return None;
    }
    if settle_ms > 3_600_000 {
        f.problem("settle_ms", format!("{settle_ms} must be at most 3600000"));
    }
    Some(FileSourceConfig {
        path,
        watch,
        settle_ms,
    })
}
