//! [`S3ClientConfig`]: where an S3-compatible server is and how to sign for it, the fields
//! `[source] type = "s3"` and `[[sites]] type = "aws_s3"` share (`endpoint`, `region`,
//! `access_key`/`_env`, `secret_key`/`_env`, `path_style`, `ca_file`).

use std::path::PathBuf;

use super::defaults;
use super::fields::Fields;
use super::secret::Secret;

/// What an S3 client needs: the endpoint, the region signed for, the credentials (resolved
/// from the environment when given as `*_env`) and the addressing style.
#[derive(Debug, Clone)]
pub struct S3ClientConfig {
    /// Endpoint URL (`http://` or `https://`, optionally with a base path).
    pub endpoint: String,
    /// Region used for signing.
    pub region: String,
    /// Access key.
    pub access_key: Secret,
    /// Secret key.
    pub secret_key: Secret,
    /// Path-style addressing (`http://host/bucket/key`) rather than virtual-host style.
    pub path_style: bool,
    /// PEM file of the CA(s) trusted for an `https://` endpoint instead of the bundled roots
    /// (a server behind a private CA).
    pub ca_file: Option<PathBuf>,
}

impl S3ClientConfig {
    /// Reads the shared S3 fields of a table; every problem is recorded.
    pub(super) fn read(f: &mut Fields<'_>) -> Option<S3ClientConfig> {
        let endpoint = f.url("endpoint");
        let region: String = f.or("region", defaults::region);
        if region.is_empty() {
            f.problem("region", "must not be empty");
        }
        let access_key = f.secret("access_key", true);
        let secret_key = f.secret("secret_key", true);
        let path_style = f.or("path_style", defaults::path_style);
        let ca_file = f.ca_file("ca_file");
        if ca_file.is_some()
            && endpoint
                .as_deref()
                .is_some_and(|u| !u.starts_with("https://"))
        {
            f.problem("ca_file", "only used with an https:// endpoint");
        }
        Some(S3ClientConfig {
            endpoint: endpoint?,
            region,
            access_key: access_key?,
            secret_key: secret_key?,
            path_style,
            ca_file,
        })
    }
}
