//! Sources: where object versions come from (DESIGN section 4).
//!
//! A [`Source`] lists versions (for scans and the initial sync), reads one version's metadata,
//! streams its data (whole or by range), and reads a bucket's own replication rules when it has
//! them. Implementations: `s3` (any S3-compatible server, SigV4) and `file` (a local
//! directory).

pub mod file;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{ConfigError, SourceBackend, SourceConfig};
use crate::error::Disposition;
use crate::model::{ByteStream, ObjectInfo, VersionRef};
use crate::s3::S3Client;

/// A replication rule of a source bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Rule id, when the source has one.
    pub id: String,
    /// Whether the rule is enabled.
    pub enabled: bool,
    /// Key prefix.
    pub prefix: String,
    /// Destination sites (the comma list of the rule's `StorageClass`).
    pub sites: Vec<String>,
    /// Destination bucket, when given (ARN or name).
    pub destination: String,
}

/// One page of a versions listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionPage {
    /// Versions listed (metadata as a listing gives it; `head` completes it).
    pub versions: Vec<ObjectInfo>,
    /// Where the next page starts; `None` at the end of the bucket.
    pub next: Option<String>,
}

/// Errors of a source, classified where they arise.
#[derive(Debug, thiserror::Error)]
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

/// A source of object versions.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// `s3` or `file`.
    fn kind(&self) -> &'static str;

    /// The buckets this source replicates from.
    fn buckets(&self) -> Vec<String>;

    /// One page of `bucket`'s versions, starting at `cursor` (from a previous page's `next`).
    async fn list_versions(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<VersionPage, SourceError>;

    /// Whether the versions of a listing page carry everything [`Source::head`] would give
    /// (the file source: a file has no content type, user metadata or tags), so a discovered
    /// version need not be read again. S3 listings lack user metadata, tags and content type.
    fn listing_is_full_metadata(&self) -> bool {
        false
    }

    /// The full metadata of one version; `Ok(None)` when it no longer exists.
    async fn head(&self, version: &VersionRef) -> Result<Option<ObjectInfo>, SourceError>;

    /// Streams a version's data; `range` is an inclusive byte range.
    async fn get(
        &self,
        version: &VersionRef,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, SourceError>;

    /// The metadata and the data of one version in one call (what a copy needs); `Ok(None)`
    /// when the version no longer exists. The default is [`Source::head`] then
    /// [`Source::get`]; a source that can do both at once (the file source reads a small file
    /// whole in one blocking call) overrides it.
    async fn open(
        &self,
        version: &VersionRef,
    ) -> Result<Option<(ObjectInfo, ByteStream)>, SourceError> {
        let Some(info) = self.head(version).await? else {
            return Ok(None);
        };
        match self.get(version, None).await {
            Ok(body) => Ok(Some((info, body))),
            Err(SourceError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bucket's own replication rules; `Ok(None)` when it has no replication configuration.
    async fn replication_rules(&self, bucket: &str) -> Result<Option<Vec<Rule>>, SourceError>;

    /// Whether the bucket keeps versions: `Some(false)` when its overwrites replace the
    /// `null` version (then an overwrite of a key already replicated is not seen as new);
    /// `None` when the question does not apply (the default; a directory has no such setting).
    async fn versioning_enabled(&self, _bucket: &str) -> Result<Option<bool>, SourceError> {
        Ok(None)
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
