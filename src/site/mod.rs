//! Sites: destinations replicas are written to (DESIGN section 4).
//!
//! A [`Site`] puts a replica, streaming; large objects go through the optional
//! [`MultipartSite`] capability. Implementations: `aws_s3`, `azure`, `file`.
//! Every error is classified where it arises ([`SiteError::disposition`]).

pub mod azure;
pub mod file;
pub mod parts;
pub mod s3;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{ConfigError, SiteBackend, SiteConfig, SiteKind};
use crate::error::Disposition;
use crate::model::{ByteStream, ObjectInfo};
use crate::s3::S3Client;

/// What a site answered for a written replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutReceipt {
    /// The replica's version id at the site, when the site versions objects.
    pub version_id: Option<String>,
    /// The replica's ETag at the site.
    pub etag: Option<String>,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    /// Part number, from 1.
    pub number: u32,
    /// Part ETag (S3) or block id (Azure).
    pub etag: String,
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
    /// The request can never succeed as it is (invalid key for the site, 4xx).
    #[error("site {site} refused the request: {detail}")]
    Rejected {
        /// Site name.
        site: String,
        /// What the site said.
        detail: String,
    },
    /// Network failure, timeout, 5xx, or a source stream that broke mid-copy.
    #[error("transient failure talking to site {site}: {detail}")]
    Transient {
        /// Site name.
        site: String,
        /// What happened.
        detail: String,
    },
}

impl SiteError {
    /// What to do with an entry that hit this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            SiteError::Throttled { retry_after, .. } => Disposition::Retry {
                after: *retry_after,
            },
            SiteError::Transient { .. } => Disposition::Retry { after: None },
            SiteError::Unauthorized { .. }
            | SiteError::NoSuchBucket { .. }
            | SiteError::Rejected { .. } => Disposition::Fail,
        }
    }
}

/// A destination site.
#[async_trait]
pub trait Site: Send + Sync + 'static {
    /// The site's name.
    fn name(&self) -> &str;

    /// The site's kind.
    fn kind(&self) -> SiteKind;

    /// Writes the replica of `obj` in one request, streaming `body` (exactly `obj.size` bytes).
    /// The replica carries the REPLICA markers (`scal-replication-status: REPLICA`,
    /// `scal-version-id: <source version id>`, under the site's naming rules), the content type,
    /// user metadata and tags.
    async fn put(&self, obj: &ObjectInfo, body: ByteStream) -> Result<PutReceipt, SiteError>;

    /// Replicates a deletion: removes the replica of `obj.version.key` (S3: writes a delete
    /// marker when the bucket is versioned). Deleting what does not exist succeeds. The receipt
    /// carries the delete marker's version id, when the site has one.
    ///
    /// The default refuses, for sites that cannot delete.
    async fn delete(&self, obj: &ObjectInfo) -> Result<PutReceipt, SiteError> {
        Err(SiteError::Rejected {
            site: self.name().to_string(),
            detail: format!("site cannot delete {}", obj.version.key),
        })
    }

    /// Multipart capability, when the site has it.
    fn multipart(&self) -> Option<&dyn MultipartSite> {
        None
    }

    /// Checks that the site is reachable and the target exists.
    async fn health(&self) -> Result<(), SiteError>;
}

/// Multipart uploads (S3 multipart, Azure blocks + block list).
#[async_trait]
pub trait MultipartSite: Send + Sync {
    /// Starts an upload for `obj`; returns its id.
    async fn create(&self, obj: &ObjectInfo) -> Result<String, SiteError>;

    /// Uploads part `number` (from 1) of `len` bytes.
    async fn put_part(
        &self,
        obj: &ObjectInfo,
        upload_id: &str,
        number: u32,
        len: u64,
        body: ByteStream,
    ) -> Result<PartReceipt, SiteError>;

    /// Completes the upload from its parts, in order.
    async fn complete(
        &self,
        obj: &ObjectInfo,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt, SiteError>;

    /// Aborts the upload so no part remains at the site.
    async fn abort(&self, obj: &ObjectInfo, upload_id: &str) -> Result<(), SiteError>;
}

/// Builds the site a `[[sites]]` entry describes (already checked by the configuration). Never
/// logs secrets.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field whose value the site cannot use (a directory that
/// cannot be created, an endpoint the HTTP client refuses).
pub fn build_site(cfg: &SiteConfig) -> Result<Arc<dyn Site>, ConfigError> {
    let invalid = |field: &str, e: String| {
        ConfigError::Invalid(vec![format!("sites.{}.{field}: {e}", cfg.name)])
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
                .map_err(|e| invalid("endpoint", e))?,
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
            "name = \"aws\"\ntype = \"aws_s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\n\
             access_key = \"ak\"\nsecret_key_env = \"BACKBEAT_TEST_SITE_SK\"",
        )
        .unwrap();
        assert_eq!(build_site(&s3).unwrap().kind(), SiteKind::AwsS3);

        // Missing fields and unset variables are the configuration's to report, once.
        let no_bucket = site("name = \"aws\"\ntype = \"aws_s3\"\nendpoint = \"http://h\"\naccess_key = \"a\"\nsecret_key = \"s\"");
        let err = no_bucket.err().unwrap().to_string();
        assert!(err.contains("sites[0].bucket"), "{err}");
        let unset = site(
            "name = \"az\"\ntype = \"azure\"\nendpoint = \"http://127.0.0.1:1/acct\"\naccount = \"acct\"\n\
             container = \"c\"\nkey_env = \"BACKBEAT_TEST_UNSET_VARIABLE\"",
        );
        let err = unset.err().unwrap().to_string();
        assert!(err.contains("BACKBEAT_TEST_UNSET_VARIABLE"), "{err}");

        // What only the client can refuse is named by the factory.
        let userinfo = site(
            "name = \"aws\"\ntype = \"aws_s3\"\nendpoint = \"http://user@h\"\nbucket = \"b\"\n\
             access_key = \"a\"\nsecret_key = \"s\"",
        )
        .unwrap();
        let err = build_site(&userinfo).err().unwrap().to_string();
        assert!(err.contains("sites.aws.endpoint"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("backbeat-site-factory-{}", std::process::id()))
    }
}
