//! `[source]`: where versions come from, by `type`: an S3-compatible server (`s3`) or a local
//! directory (`file`), and how often it is listed.

use std::path::PathBuf;

use super::defaults;
use super::fields::{is_bucket_name, Fields};
use super::s3_client::S3ClientConfig;

/// `[source]`: the settings of every kind, then the kind-specific part.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Seconds between versions listings (0 turns scanning off).
    pub scan_interval_s: u64,
    /// The kind of source (`type`) and its own settings.
    pub backend: SourceBackend,
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
    /// Directory watched; its last segment names the bucket.
    pub path: PathBuf,
}

/// Reads and checks `[source]`.
pub(super) fn read(value: toml::Value, e: &mut Vec<String>) -> Option<SourceConfig> {
    let mut f = Fields::new("source".into(), value, e)?;
    let kind: Option<String> = f.required("type");
    let scan_interval_s = f.or("scan_interval_s", defaults::scan_interval_s);
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
    f.finish();
    Some(SourceConfig {
        scan_interval_s,
        backend: backend?,
    })
}

fn read_s3(f: &mut Fields<'_>) -> Option<S3SourceConfig> {
    let client = S3ClientConfig::read(f);
    let buckets: Vec<String> = f.or("buckets", Vec::new);
    if buckets.is_empty() {
        f.problem("buckets", "at least one bucket is required");
    }
    for (i, b) in buckets.iter().enumerate() {
        if !is_bucket_name(b) {
            f.problem(
                &format!("buckets[{i}]"),
                format!("{b:?} is not a bucket name"),
            );
        }
    }
    Some(S3SourceConfig {
        client: client?,
        buckets,
    })
}

fn read_file(f: &mut Fields<'_>) -> Option<FileSourceConfig> {
    let path: PathBuf = f.required("path")?;
    if path.file_name().is_none() {
        f.problem(
            "path",
            format!("{} has no last segment to name the bucket", path.display()),
        );
        return None;
    }
    Some(FileSourceConfig { path })
}
