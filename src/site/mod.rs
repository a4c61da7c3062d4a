//! Sites: destinations replicas are written to (DESIGN section 4).
//!
//! A [`Site`] writes a replica under a key the processor chose (the namespace rule of DESIGN
//! section 3), streaming; large objects go through the optional [`MultipartSite`] capability.
//! Implementations: `aws_s3`, `azure`, `file`. Every write is checked end to end: the site
//! hashes what it sends ([`crate::checksum`]) and compares it with what the destination says it
//! stored (S3: the ETag of a PUT, of each part and of the completed upload; Azure: the
//! Content-MD5 of each block and blob; file: the bytes it wrote), so a corrupted replica is a
//! [`SiteError::ChecksumMismatch`], retried, never COMPLETED. Every error is classified where
//! it arises ([`SiteError::disposition`], [`SiteError::reason`]).
//!
//! Each replica records, as REPLICA metadata under the site's naming rules, the source version
//! id (`scal-version-id`), size (`scal-size`) and MD5 (`scal-md5`, the MD5 of the bytes when
//! known before writing them; for a source object uploaded in parts whose MD5 was not known,
//! its ETag), so [`Site::replica`] and `backbeat verify` can compare without reading data.

pub mod azure;
pub mod file;
pub mod parts;
pub mod s3;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{ConfigError, SiteBackend, SiteConfig, SiteKind};
use crate::error::{Disposition, FailureReason};
use crate::model::{ByteStream, ObjectInfo};
use crate::s3::S3Client;

/// User metadata name of the replication status marker.
pub const META_STATUS: &str = "scal-replication-status";
/// User metadata name of the source version id marker.
pub const META_VERSION: &str = "scal-version-id";
/// User metadata name of the replica's size.
pub const META_SIZE: &str = "scal-size";
/// User metadata name of the replica's MD5 (hex).
pub const META_MD5: &str = "scal-md5";
/// User metadata name of the source bucket (ours, for `verify` and the namespace rule).
pub const META_BUCKET: &str = "scal-source-bucket";

/// The key a replica of source `bucket/key` has at a site (DESIGN section 3, "Where a replica
/// lives"): `<bucket>/<key>`, or the key as it is at a `bucket_match` site.
pub fn site_key(bucket: &str, key: &str, bucket_match: bool) -> String {
    if bucket_match {
        key.to_string()
    } else {
        format!("{bucket}/{key}")
    }
}

/// What a site answered for a written replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutReceipt {
    /// The replica's version id at the site, when the site versions objects.
    pub version_id: Option<String>,
    /// The replica's ETag at the site.
    pub etag: Option<String>,
    /// Whether anything was written (a deletion of a replica already absent writes nothing).
    pub wrote: bool,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    /// Part number, from 1.
    pub number: u32,
    /// Part ETag (S3) or block id (Azure).
    pub etag: String,
    /// MD5 of the part's bytes, as sent.
    pub md5: [u8; 16],
}

/// What a site holds at a key: what `backbeat verify` and the replay check read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaInfo {
    /// The site key.
    pub key: String,
    /// `scal-version-id`: the source version this replica is (`None`: not written by us).
    pub source_version_id: Option<String>,
    /// The source bucket, when the replica says (ours).
    pub source_bucket: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// `scal-md5`, when recorded: the MD5 the writer meant to store.
    pub md5: Option<String>,
    /// The MD5 (hex) of the bytes the site holds, as the site itself computed or checked it
    /// when it knows one: the ETag of a single-part S3 object, an Azure blob's `Content-MD5`
    /// property, the file site's sidecar (hashed while writing). A replica whose bytes differ
    /// from the source's is told apart by it, whatever its `scal-*` metadata says.
    pub content_md5: Option<String>,
    /// The site's own version id of the replica, when it versions objects.
    pub site_version_id: Option<String>,
    /// The key's newest version at the site is a delete marker (no replica readable).
    pub delete_marker: bool,
}

impl ReplicaInfo {
    /// Whether this is a replica written by a replication engine.
    pub fn is_replica(&self) -> bool {
        self.source_version_id.is_some()
    }
}

/// One page of a site's keys, in byte order (for `backbeat verify`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// `(key, size, replica)` in key byte order; `replica` is filled when the listing carries
    /// the REPLICA metadata (Azure, file), else it is read with [`Site::replica`].
    pub items: Vec<(String, u64, Option<ReplicaInfo>)>,
    /// Where the next page starts (opaque, the site's own), when another page follows.
    pub next: Option<String>,
}

/// Errors of a site.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    /// Throttled (429/503 SlowDown); retry no sooner than `retry_after`.
    #[error("site {site} throttled the request")]
    Throttled {
        /// Site name.
        site: String,
        /// Delay asked by the site.
        retry_after: Option<Duration>,
    },
    /// Credentials refused (401/403, bad signature, bad account key).
    #[error("site {site} rejected our credentials or the operation: {detail}")]
    Unauthorized {
        /// Site name.
        site: String,
        /// What the site said.
        detail: String,
    },
    /// The target bucket or container does not exist.
    #[error("target bucket {bucket} does not exist on site {site}")]
    NoSuchBucket {
        /// Site name.
        site: String,
        /// Bucket or container.
        bucket: String,
    },
    /// The request can never succeed as it is (a key the site cannot store, another 4xx).
    #[error("site {site} refused the request: {detail}")]
    Rejected {
        /// Site name.
        site: String,
        /// What the site said.
        detail: String,
    },
    /// The object is larger than the site accepts.
    #[error("site {site} cannot store {size} bytes: {detail}")]
    TooLarge {
        /// Site name.
        site: String,
        /// Object size.
        size: u64,
        /// The limit.
        detail: String,
    },
    /// The bytes the site stored are not the bytes sent (retried: a new copy is made).
    #[error("site {site} stored other bytes than sent: {detail}")]
    ChecksumMismatch {
        /// Site name.
        site: String,
        /// What differs.
        detail: String,
    },
    /// Network failure, timeout, 5xx, or a source stream that broke mid-copy.
    #[error("transient failure talking to site {site}: {detail}")]
    Transient {
        /// Site name.
        site: String,
        /// What happened.
        detail: String,
        /// `Unreachable`, `Timeout` or `ServerError`.
        reason: FailureReason,
    },
}

impl SiteError {
    /// What to do with an entry that hit this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            SiteError::Throttled { retry_after, .. } => Disposition::Retry {
                after: *retry_after,
            },
            SiteError::Transient { .. } | SiteError::ChecksumMismatch { .. } => {
                Disposition::Retry { after: None }
            }
            SiteError::Unauthorized { .. }
            | SiteError::NoSuchBucket { .. }
            | SiteError::Rejected { .. }
            | SiteError::TooLarge { .. } => Disposition::Fail,
        }
    }

    /// The typed reason of this failure (DESIGN section 5).
    pub fn reason(&self) -> FailureReason {
        match self {
            SiteError::Throttled { .. } => FailureReason::Throttled,
            SiteError::Unauthorized { .. } => FailureReason::AccessDenied,
            SiteError::NoSuchBucket { .. } => FailureReason::NoSuchBucket,
            SiteError::Rejected { .. } => FailureReason::Rejected,
            SiteError::TooLarge { .. } => FailureReason::TooLarge,
            SiteError::ChecksumMismatch { .. } => FailureReason::ChecksumMismatch,
            SiteError::Transient { reason, .. } => *reason,
        }
    }

    /// A transient error of `site`, its reason read from the message (a transport error's
    /// words are all we have: connection refused or reset is `Unreachable`, timed out or
    /// stalled is `Timeout`, anything else `ServerError`).
    pub fn transient(site: &str, detail: impl Into<String>) -> SiteError {
        let detail = detail.into();
        SiteError::Transient {
            site: site.to_string(),
            reason: transient_reason(&detail),
            detail,
        }
    }
}

/// The reason of a transient failure described by `detail`.
pub fn transient_reason(detail: &str) -> FailureReason {
    let d = detail.to_ascii_lowercase();
    if d.contains("timed out") || d.contains("timeout") || d.contains("stalled") {
        FailureReason::Timeout
    } else if d.contains("refused")
        || d.contains("reset")
        || d.contains("unreachable")
        || d.contains("dns")
        || d.contains("connect")
        || d.contains("broken pipe")
    {
        FailureReason::Unreachable
    } else {
        FailureReason::ServerError
    }
}

/// A replica written but not yet durable: resolves once the site has made it durable (`Ok`),
/// or with what failed. Given by [`Site::put_deferred`].
pub struct Durable(
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SiteError>> + Send>>,
);

impl Durable {
    /// Wraps the future that resolves once the replica is durable.
    pub fn new(
        f: impl std::future::Future<Output = Result<(), SiteError>> + Send + 'static,
    ) -> Durable {
        Durable(Box::pin(f))
    }

    /// Waits until the replica is durable.
    ///
    /// # Errors
    /// What failed while making it durable (the replica is then not in place).
    pub async fn wait(self) -> Result<(), SiteError> {
        self.0.await
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable")
    }
}

/// A destination site.
#[async_trait]
pub trait Site: Send + Sync + 'static {
    /// The site's name.
    fn name(&self) -> &str;

    /// The site's kind.
    fn kind(&self) -> SiteKind;

    /// Checks that the site can store `key` at all (DESIGN section 3, "Site limits"):
    /// [`SiteError::Rejected`] naming the limit when it cannot.
    fn check_key(&self, _key: &str) -> Result<(), SiteError> {
        Ok(())
    }

    /// Whether [`Site::put`] needs [`ObjectInfo::content_md5`] before the data (the site
    /// writes the REPLICA metadata in the request's headers).
    fn needs_md5_up_front(&self) -> bool {
        false
    }

    /// What the site holds at `key`: the replica's REPLICA metadata, a delete marker, or
    /// `None` when nothing is there.
    async fn replica(&self, key: &str) -> Result<Option<ReplicaInfo>, SiteError>;

    /// Writes the replica of source version `obj` at `key`, streaming `body` (exactly
    /// `obj.size` bytes), with the REPLICA markers, the standard headers, user metadata and
    /// tags; checks that the site stored the bytes sent.
    async fn put(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<PutReceipt, SiteError>;

    /// [`Site::put`], except that it may answer once the replica is written but before it is
    /// durable, with a [`Durable`] that resolves when it is (the file site's group commit).
    /// The caller reports the replica COMPLETED only after that; meanwhile it can start the
    /// next copy, so many replicas share one commit whatever the copy concurrency. Sites that
    /// are durable when `put` answers (S3, Azure) give `None`.
    async fn put_deferred(
        &self,
        key: &str,
        obj: &ObjectInfo,
        body: ByteStream,
    ) -> Result<(PutReceipt, Option<Durable>), SiteError> {
        Ok((self.put(key, obj, body).await?, None))
    }

    /// Replicates a deletion of the source key: removes the replica at `key` (S3: writes a
    /// delete marker when the bucket is versioned). Writes nothing when no replica is there or
    /// the newest version there is already a delete marker (so deletes never ping-pong between
    /// two buckets replicating to each other); `wrote` in the receipt says which.
    async fn delete(&self, key: &str) -> Result<PutReceipt, SiteError>;

    /// Multipart capability, when the site has it.
    fn multipart(&self) -> Option<&dyn MultipartSite> {
        None
    }

    /// The bytes of the replica at `key` (its newest version), streamed; `None` when there is
    /// none (or a delete marker). What `backbeat verify --deep` hashes.
    async fn read(&self, key: &str) -> Result<Option<ByteStream>, SiteError>;

    /// The file site behind this site, for what only a directory can do (a listing walked
    /// in one pass).
    fn as_file(&self) -> Option<&file::FileSite> {
        None
    }

    /// Up to `limit` keys under `prefix` in byte order, from `cursor` (a previous page's
    /// `next`) or the first (for `backbeat verify`).
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, SiteError>;

    /// Checks that the site is reachable and the target exists.
    async fn health(&self) -> Result<(), SiteError>;

    /// Removes the temporary files of copies that no longer run, last modified before
    /// `before_ms` (a site that writes through temporary files: the file site); returns how
    /// many. Nothing else is touched.
    async fn remove_temporaries(&self, _before_ms: u64) -> Result<u64, SiteError> {
        Ok(0)
    }
}

/// Multipart uploads (S3 multipart, Azure blocks + block list), each part checked like a put.
#[async_trait]
pub trait MultipartSite: Send + Sync {
    /// Starts an upload of `obj` at `key`; returns its id.
    async fn create(&self, key: &str, obj: &ObjectInfo) -> Result<String, SiteError>;

    /// Uploads part `number` (from 1) of `len` bytes.
    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartReceipt, SiteError>;

    /// Completes the upload from its parts, in order, with the REPLICA metadata of `obj`.
    async fn complete(
        &self,
        key: &str,
        obj: &ObjectInfo,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt, SiteError>;

    /// Aborts the upload so no part remains at the site.
    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), SiteError>;

    /// The uploads in progress at exactly `key`, as `(upload id, started ms)`: to find one a
    /// crash left before its id was recorded. A site whose staged parts expire by themselves
    /// (Azure drops uncommitted blocks) lists none.
    async fn uploads_at(&self, _key: &str) -> Result<Vec<(String, u64)>, SiteError> {
        Ok(Vec::new())
    }
}

/// The value `scal-md5` records for `obj`: its MD5 when known, else (a source object uploaded
/// in parts) its ETag.
pub fn recorded_md5(obj: &ObjectInfo) -> String {
    obj.content_md5.clone().unwrap_or_else(|| obj.etag.clone())
}

/// Builds the site a `[[sites]]` entry describes (already checked by the configuration). Never
/// logs secrets.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field whose value the site cannot use (a directory that
/// cannot be created, an endpoint the HTTP client refuses).
pub fn build_site(cfg: &SiteConfig) -> Result<Arc<dyn Site>, ConfigError> {
    let invalid = |field: &str, e: String| {
        ConfigError::Invalid(vec![format!("site {:?}.{field}: {e}", cfg.name)])
    };
    let site: Arc<dyn Site> = match &cfg.backend {
        SiteBackend::File(c) => Arc::new(
            file::FileSite::new(cfg.name.clone(), &c.path)
                .map_err(|e| invalid("path", e.to_string()))?,
        ),
        SiteBackend::AwsS3(c) => {
            let client = S3Client::from_config(&c.client).map_err(|e| invalid("endpoint", e))?;
            Arc::new(s3::S3Site::new(cfg.name.clone(), c.bucket.clone(), client))
        }
        SiteBackend::Azure(c) => Arc::new(
            azure::AzureSite::new(&cfg.name, &c.endpoint, &c.account, &c.key.0, &c.container)
                .map_err(|e| invalid("endpoint", e))?
                .with_ca_file(c.ca_file.as_deref())
                .map_err(|e| invalid("ca_file", e))?
                .with_request_timeout(std::time::Duration::from_secs(c.request_timeout_s)),
        ),
    };
    Ok(site)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The one site of a `[[sites]]` block, as the configuration reads and checks it.
    fn site(toml_text: &str) -> Result<SiteConfig, ConfigError> {
        let mut cfg = Config::parse(&format!("[[sites]]\n{toml_text}"))?;
        Ok(cfg.sites.remove(0))
    }

    #[test]
    fn replicas_live_under_their_source_bucket_unless_bucket_match() {
        assert_eq!(site_key("photos", "a/b.jpg", false), "photos/a/b.jpg");
        assert_eq!(site_key("photos", "a/b.jpg", true), "a/b.jpg");
    }

    #[test]
    fn factory_builds_each_kind_and_names_unusable_fields() {
        let dir = tempfile_dir();
        let file = site(&format!(
            "name = \"local\"\ntype = \"file\"\npath = {:?}",
            dir.display()
        ))
        .unwrap();
        let built = build_site(&file).unwrap();
        assert_eq!((built.name(), built.kind()), ("local", SiteKind::File));

        std::env::set_var("BACKBEAT_TEST_SITE_SK", "secret");
        let s3 = site(
            "name = \"aws\"\ntype = \"aws_s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"bkt\"\n\
             access_key = \"ak\"\nsecret_key_env = \"BACKBEAT_TEST_SITE_SK\"",
        )
        .unwrap();
        assert_eq!(build_site(&s3).unwrap().kind(), SiteKind::AwsS3);

        // Missing fields and unset variables are the configuration's to report, once.
        let no_bucket = site("name = \"aws\"\ntype = \"aws_s3\"\nendpoint = \"http://h\"\naccess_key = \"a\"\nsecret_key = \"s\"");
        let err = no_bucket.err().unwrap().to_string();
        assert!(err.contains("site \"aws\".bucket"), "{err}");
        let unset = site(
            "name = \"az\"\ntype = \"azure\"\nendpoint = \"http://127.0.0.1:1/acct\"\naccount = \"acct\"\n\
             container = \"c\"\nkey_env = \"BACKBEAT_TEST_UNSET_VARIABLE\"",
        );
        let err = unset.err().unwrap().to_string();
        assert!(err.contains("BACKBEAT_TEST_UNSET_VARIABLE"), "{err}");

        // What only the client can refuse is named by the factory.
        let userinfo = site(
            "name = \"aws\"\ntype = \"aws_s3\"\nendpoint = \"http://user@h\"\nbucket = \"bkt\"\n\
             access_key = \"a\"\nsecret_key = \"s\"",
        )
        .unwrap();
        let err = build_site(&userinfo).err().unwrap().to_string();
        assert!(err.contains("site \"aws\".endpoint"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("backbeat-site-factory-{}", std::process::id()))
    }
}
