//! `[[sites]]`: the destination sites, each a name plus a kind-specific part tagged by `type`
//! (`aws_s3`, `azure`, `file`); names are unique and usable in rules, URLs and `StorageClass`.
//! Problems name a site by its name (`site "azure-1".container: missing`), or by its position
//! (`sites[2]`) while it has no usable name.

use std::collections::HashSet;
use std::path::PathBuf;

use super::fields::Fields;
use super::s3_client::{request_timeout_s, S3ClientConfig};
use super::secret::Secret;
use crate::bandwidth::schedule::Bandwidth;

/// Kind of destination site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// Any S3-compatible endpoint.
    AwsS3,
    /// Azure Blob Storage.
    Azure,
    /// A local directory.
    File,
}

impl SiteKind {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::AwsS3 => "aws_s3",
            SiteKind::Azure => "azure",
            SiteKind::File => "file",
        }
    }
}

/// `[[sites]]`.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// Site name, as used in rules, the API and `StorageClass`.
    pub name: String,
    /// Keys are stored as they are (`true`) instead of `<source bucket>/<key>` (`false`, the
    /// default, so two source buckets never collide at one site); then only one source bucket
    /// may send versions to the site.
    pub bucket_match: bool,
    /// Limit on the bytes the site receives (`off` by default; a rate or a timetable, see
    /// the bandwidth module). A limit set through the API wins while it is stored.
    pub bandwidth: Bandwidth,
    /// The kind of site (`type`) and its own settings.
    pub backend: SiteBackend,
}

impl SiteConfig {
    /// The kind of site.
    pub fn kind(&self) -> SiteKind {
        match self.backend {
            SiteBackend::AwsS3(_) => SiteKind::AwsS3,
            SiteBackend::Azure(_) => SiteKind::Azure,
            SiteBackend::File(_) => SiteKind::File,
        }
    }
}

/// The kind-specific part of a `[[sites]]` entry, tagged by `type`.
#[derive(Debug, Clone)]
pub enum SiteBackend {
    /// `type = "aws_s3"`.
    AwsS3(AwsS3SiteConfig),
    /// `type = "azure"`.
    Azure(AzureSiteConfig),
    /// `type = "file"`.
    File(FileSiteConfig),
}

/// `type = "aws_s3"`: a bucket on any S3-compatible endpoint.
#[derive(Debug, Clone)]
pub struct AwsS3SiteConfig {
    /// Endpoint, region, credentials, addressing.
    pub client: S3ClientConfig,
    /// Target bucket.
    pub bucket: String,
}

/// `type = "azure"`: a container of an Azure Blob Storage account.
#[derive(Debug, Clone)]
pub struct AzureSiteConfig {
    /// Account URL (`https://<account>.blob.core.windows.net`, or Azurite's with the account).
    pub endpoint: String,
    /// Storage account.
    pub account: String,
    /// Account key, base64.
    pub key: Secret,
    /// Target container.
    pub container: String,
    /// PEM file of the CA(s) trusted for an `https://` endpoint instead of the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// Longest wait, in seconds, for an answer's head or the next piece of its body.
    pub request_timeout_s: u64,
}

/// `type = "file"`: a local directory.
#[derive(Debug, Clone)]
pub struct FileSiteConfig {
    /// Target directory.
    pub path: PathBuf,
}

/// Checks a site or bucket-like name used as an identifier.
pub fn valid_site_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "all"
}

/// Reads and checks `[[sites]]`. Returns the usable sites and the names of every entry (usable
/// or not), against which the rules are checked.
pub(super) fn read(value: toml::Value, e: &mut Vec<String>) -> (Vec<SiteConfig>, Vec<String>) {
    let toml::Value::Array(items) = value else {
        e.push("sites: must be an array of tables ([[sites]])".into());
        return (Vec::new(), Vec::new());
    };
    let mut sites = Vec::with_capacity(items.len());
    let mut names = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let Some(mut f) = Fields::new(format!("sites[{i}]"), item, e) else {
            continue;
        };
        let name: Option<String> = f.required("name");
        if let Some(name) = &name {
            if !valid_site_name(name) {
                f.problem(
                    "name",
                    format!("{name:?} must be 1-64 characters of [A-Za-z0-9._-] and not \"all\""),
                );
            } else if !seen.insert(name.clone()) {
                f.problem("name", format!("{name:?} is used by another site"));
            } else {
                // A usable, unique name says which site is meant better than a position.
                f.rename(site_at(name));
            }
            names.push(name.clone());
        }
        let bucket_match = f.or("bucket_match", || false);
        let bandwidth = read_bandwidth(&mut f);
        if let (Some(name), Some(bandwidth), Some(backend)) = (name, bandwidth, read_backend(f)) {
            sites.push(SiteConfig {
                name,
                bucket_match,
                bandwidth,
                backend,
            });
        }
    }
    (sites, names)
}

/// `bandwidth` (default off); a problem names the site through its field path.
fn read_bandwidth(f: &mut Fields<'_>) -> Option<Bandwidth> {
    let text: String = f.or("bandwidth", || "off".to_string());
    match Bandwidth::parse(&text) {
        Ok(b) => Some(b),
        Err(e) => {
            f.problem("bandwidth", e.to_string());
            None
        }
    }
}

/// How problems name the site called `name`: `site "azure-1"`.
pub(super) fn site_at(name: &str) -> String {
    format!("site {name:?}")
}

/// Reads the `type` of a site and its kind's fields, then reports any other field.
fn read_backend(mut f: Fields<'_>) -> Option<SiteBackend> {
    let kind: String = f.required("type")?;
    let backend = match kind.as_str() {
        "aws_s3" => read_aws_s3(&mut f).map(SiteBackend::AwsS3),
        "azure" => read_azure(&mut f).map(SiteBackend::Azure),
        "file" => read_file(&mut f).map(SiteBackend::File),
        other => {
            f.problem(
                "type",
                format!("unknown site type {other:?}; expected \"aws_s3\", \"azure\" or \"file\""),
            );
            // The other fields belong to a kind this reader does not know: not reported.
            return None;
        }
    };
    f.finish();
    backend
}

fn read_aws_s3(f: &mut Fields<'_>) -> Option<AwsS3SiteConfig> {
    let client = S3ClientConfig::read(f);
    let bucket = f.s3_bucket("bucket");
    Some(AwsS3SiteConfig {
        client: client?,
        bucket: bucket?,
    })
}

fn read_azure(f: &mut Fields<'_>) -> Option<AzureSiteConfig> {
    let endpoint = f.url("endpoint");
    let account = non_empty(f, "account");
    let container = non_empty(f, "container");
    let key = f.secret("key", true);
    if key.as_ref().is_some_and(|k| !is_base64(&k.0)) {
        f.problem("key", "the account key must be base64");
    }
    let ca_file = f.ca_file("ca_file");
    let request_timeout_s = request_timeout_s(f);
    if ca_file.is_some()
        && endpoint
            .as_deref()
            .is_some_and(|u| !u.starts_with("https://"))
    {
        f.problem("ca_file", "only used with an https:// endpoint");
    }
    Some(AzureSiteConfig {
        endpoint: endpoint?,
        account: account?,
        key: key?,
        container: container?,
        ca_file,
        request_timeout_s,
    })
}

fn read_file(f: &mut Fields<'_>) -> Option<FileSiteConfig> {
    let path: PathBuf = f.required("path")?;
    if path.as_os_str().is_empty() {
        f.problem("path", "must not be empty");
        return None;
    }
    Some(FileSiteConfig { path })
}

/// A required string field that must not be empty.
fn non_empty(f: &mut Fields<'_>, name: &str) -> Option<String> {
    let value: String = f.required(name)?;
    if value.is_empty() {
        f.problem(name, "must not be empty");
        return None;
    }
    Some(value)
}

fn is_base64(s: &str) -> bool {
    !s.is_empty()
        && s.len().is_multiple_of(4)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}
