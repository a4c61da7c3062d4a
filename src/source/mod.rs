//! Sources: where object versions come from (DESIGN section 4).
//!
//! A [`Source`] lists a bucket's keys with their current versions (for scans and the initial
//! sync), tells a key's current version, streams it (whole, or a byte range of a version
//! guarded by its ETag), and reads a bucket's own replication rules when it has them.
//! Implementations: `s3` (any S3-compatible server, SigV4) and `file` (a local directory).

pub mod file;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{ConfigError, RuleConfig, SourceBackend, SourceConfig};
use crate::error::Disposition;
use crate::model::{ByteStream, ObjectInfo, VersionRef};
use crate::s3::S3Client;

/// Lookups of [`Source::current_many`] in flight at once (by default).
pub const CURRENT_CONCURRENCY: usize = 16;

/// A replication rule of a source bucket: from the bucket's own replication configuration
/// (AWS semantics, field by field) or from `[[replication.rules]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Rule id, when the source has one.
    pub id: String,
    /// Whether the rule is enabled (`Status`).
    pub enabled: bool,
    /// Key prefix (`Prefix`, `Filter/Prefix` or `Filter/And/Prefix`).
    pub prefix: String,
    /// Tags a version must carry, all of them (`Filter/Tag`, `Filter/And/Tag`).
    pub tags: Vec<(String, String)>,
    /// `Priority`: among the enabled rules that match a key, the highest wins (ties: the
    /// first listed).
    pub priority: i64,
    /// Whether delete markers are replicated (`DeleteMarkerReplication/Status`; a V1 rule,
    /// with a top-level `Prefix`, replicates them, and so do configured rules).
    pub delete_markers: bool,
    /// Destination sites (the comma list of the rule's `StorageClass`).
    pub sites: Vec<String>,
    /// Destination bucket, when given (ARN or name).
    pub destination: String,
}

impl Rule {
    /// Whether the rule covers `key`, for a version with `tags` (a delete marker has none).
    pub fn matches(&self, key: &str, tags: &std::collections::BTreeMap<String, String>) -> bool {
        self.enabled
            && key.starts_with(&self.prefix)
            && self
                .tags
                .iter()
                .all(|(k, v)| tags.get(k).map(String::as_str) == Some(v.as_str()))
    }

    /// Whether the rule needs a version's tags to decide.
    pub fn needs_tags(&self) -> bool {
        !self.tags.is_empty()
    }
}

/// The rule that applies to `key` among `rules`: the enabled matching rule of highest
/// priority (the first of them on a tie); `None` when no rule covers the key.
pub fn rule_for<'a>(
    rules: &'a [Rule],
    key: &str,
    tags: &std::collections::BTreeMap<String, String>,
) -> Option<&'a Rule> {
    let mut best: Option<&Rule> = None;
    for r in rules.iter().filter(|r| r.matches(key, tags)) {
        if best.is_none_or(|b| r.priority > b.priority) {
            best = Some(r);
        }
    }
    best
}

/// The rules of `bucket`: its own replication configuration when it has one, else the
/// configured `[[replication.rules]]` of the bucket (which replicate delete markers).
///
/// # Errors
/// The source's error reading the bucket's configuration.
pub async fn bucket_rules(
    source: &dyn Source,
    configured: &[RuleConfig],
    bucket: &str,
) -> Result<Vec<Rule>, SourceError> {
    Ok(match source.replication_rules(bucket).await? {
        Some(rules) => rules,
        None => configured
            .iter()
            .filter(|r| r.bucket == bucket)
            .map(|r| Rule {
                enabled: r.enabled,
                prefix: r.prefix.clone(),
                sites: r.sites.clone(),
                delete_markers: true,
                ..Rule::default()
            })
            .collect(),
    })
}

/// One page of a bucket's keys in byte order, each with its current version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    /// One entry per key (a delete marker when the key is deleted in a versioned bucket),
    /// keys in byte order. Metadata as the listing gives it; [`Source::current`] completes it.
    pub items: Vec<ObjectInfo>,
    /// Where the next page starts; `None` at the end of the bucket.
    pub next: Option<String>,
}

/// Errors of a source, classified where they arise.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The version or bucket does not exist (any more).
    #[error("not found at the source: {0}")]
    NotFound(String),
    /// The source refused our credentials or the operation.
    #[error("source denied access: {0}")]
    Denied(String),
    /// Throttled; retry no sooner than the given delay.
    #[error("source throttled the request")]
    Throttled {
        /// Delay asked by the source.
        retry_after: Option<std::time::Duration>,
    },
    /// Network failure, timeout or 5xx.
    #[error("transient source failure: {0}")]
    Transient(String),
    /// The source answered something we cannot use.
    #[error("invalid answer from the source: {0}")]
    Invalid(String),
}

impl SourceError {
    /// What to do with an entry that hit this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            SourceError::Throttled { retry_after } => Disposition::Retry {
                after: *retry_after,
            },
            SourceError::Transient(_) => Disposition::Retry { after: None },
            SourceError::NotFound(_) | SourceError::Denied(_) | SourceError::Invalid(_) => {
                Disposition::Fail
            }
        }
    }
}

/// A source of object versions. A source is asked about a key's *current* version (DESIGN
/// section 3, newest wins): what a site must end up mirroring.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// `s3` or `file`.
    fn kind(&self) -> &'static str;

    /// The buckets this source replicates from.
    fn buckets(&self) -> Vec<String>;

    /// One page of `bucket`'s keys in byte order, each with its current version, starting
    /// after `cursor` (from a previous page's `next`). A key whose every version was deleted
    /// for good is not listed.
    async fn list_current(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<KeyPage, SourceError>;

    /// Whether the items of a listing page carry everything [`Source::current`] would give
    /// (the file source), so a listed version need not be read again. S3 listings lack user
    /// metadata, headers and tags.
    fn listing_is_full_metadata(&self) -> bool {
        false
    }

    /// The current version of `bucket/key` with its full metadata (a delete marker when the
    /// key is deleted in a versioned bucket); `Ok(None)` when the key has no version.
    async fn current(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, SourceError>;

    /// [`Source::current`] of each of `keys` of `bucket`, in the same order. By default up to
    /// [`CURRENT_CONCURRENCY`] lookups run at once; a source that reads many keys more cheaply
    /// together (the file source: a few blocking calls for the lot instead of one each)
    /// overrides it.
    async fn current_many(
        &self,
        bucket: &str,
        keys: &[String],
    ) -> Vec<Result<Option<ObjectInfo>, SourceError>> {
        use futures_util::stream::{self, StreamExt};
        let lookups: Vec<_> = keys.iter().map(|k| self.current(bucket, k)).collect();
        stream::iter(lookups)
            .buffered(CURRENT_CONCURRENCY)
            .collect()
            .await
    }

    /// The current version of `bucket/key` with its data, in one request where the source
    /// can (S3: a `GET` without `versionId`): what a copy needs. No body for a delete marker.
    /// `want_md5`: the caller needs the MD5 of the bytes before reading them (a site that
    /// writes it in headers); a source that can compute it cheaply (a local file) sets
    /// [`ObjectInfo::content_md5`].
    async fn open_current(
        &self,
        bucket: &str,
        key: &str,
        want_md5: bool,
    ) -> Result<Option<(ObjectInfo, Option<ByteStream>)>, SourceError>;

    /// Streams bytes `range` (inclusive) of `version`, refused (`NotFound`) unless the version
    /// is still the one with `etag` (S3: `versionId` and `If-Match`; file: the file unchanged),
    /// so a version changed mid-copy never yields a torn replica.
    async fn get_range(
        &self,
        version: &VersionRef,
        etag: &str,
        range: (u64, u64),
    ) -> Result<ByteStream, SourceError>;

    /// The bucket's own replication rules; `Ok(None)` when it has no replication configuration.
    async fn replication_rules(&self, bucket: &str) -> Result<Option<Vec<Rule>>, SourceError>;

    /// Whether the bucket keeps versions: `Some(false)` when its overwrites replace the
    /// `null` version; `None` when the question does not apply (the default; a directory has
    /// no such setting).
    async fn versioning_enabled(&self, _bucket: &str) -> Result<Option<bool>, SourceError> {
        Ok(None)
    }

    /// The directory source behind this source, for what only a directory can do (a watch,
    /// directory summaries).
    fn as_file(&self) -> Option<&file::FileSource> {
        None
    }
}

/// Builds the source a `[source]` section describes (already checked by the configuration).
/// Never logs secrets.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field whose value the source cannot use (a directory
/// that does not exist, an endpoint the HTTP client refuses).
pub fn build_source(cfg: &SourceConfig) -> Result<Arc<dyn Source>, ConfigError> {
    let invalid =
        |field: &str, e: String| ConfigError::Invalid(vec![format!("source.{field}: {e}")]);
    let source: Arc<dyn Source> = match &cfg.backend {
        SourceBackend::File(c) => {
            Arc::new(file::FileSource::new(&c.path).map_err(|e| invalid("path", e.to_string()))?)
        }
        SourceBackend::S3(c) => {
            let client = S3Client::from_config(&c.client).map_err(|e| invalid("endpoint", e))?;
            Arc::new(s3::S3Source::new(client, c.buckets.clone()))
        }
    };
    Ok(source)
}
