//! [`S3ClientConfig`]: where an S3-compatible server is and how to sign for it, the fields
//! `[source] type = "s3"` and `[[sites]] type = "aws_s3"` share (`endpoint`, `region`,
//! `access_key`/`_env`, `secret_key`/`_env`, `path_style`, `ca_file`, `request_timeout_s`), and
//! the reader of `request_timeout_s`, which Azure sites take too.

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
    /// Longest wait, in seconds, for an answer's head or for the next piece of its body (a
    /// request with a body gets its upload time on top, see [`crate::s3::S3Options`]).
    pub request_timeout_s: u64,
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
        let request_timeout_s = request_timeout_s(f);
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
            request_timeout_s,
        })
    }
}

/// Largest `request_timeout_s`: an hour (a longer silence is an outage, not a slow answer).
pub const MAX_REQUEST_TIMEOUT_S: u64 = 3600;

/// `request_timeout_s` of a site or source talking HTTP (default
/// [`defaults::request_timeout_s`]), checked to be 1 to [`MAX_REQUEST_TIMEOUT_S`].
pub(super) fn request_timeout_s(f: &mut Fields<'_>) -> u64 {
    let t: u64 = f.or("request_timeout_s", defaults::request_timeout_s);
    if !(1..=MAX_REQUEST_TIMEOUT_S).contains(&t) {
        f.problem(
            "request_timeout_s",
            format!("{t} must be from 1 to {MAX_REQUEST_TIMEOUT_S} seconds"),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, SiteBackend, SourceBackend};

    const SOURCE: &str = "[source]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\n\
        access_key = \"a\"\nsecret_key = \"s\"\nbuckets = [\"src\"]\n";
    const S3_SITE: &str = "[[sites]]\nname = \"s3\"\ntype = \"aws_s3\"\n\
        endpoint = \"http://127.0.0.1:1\"\nbucket = \"replica\"\naccess_key = \"a\"\nsecret_key = \"s\"\n";
    const AZURE_SITE: &str = "[[sites]]\nname = \"az\"\ntype = \"azure\"\n\
        endpoint = \"http://127.0.0.1:1/acct\"\naccount = \"acct\"\ncontainer = \"c\"\nkey = \"a2V5\"\n";

    /// The request timeouts of the source, the S3 site and the Azure site.
    fn timeouts(text: &str) -> Result<(u64, u64, u64), ConfigError> {
        let c = Config::parse(text)?;
        let Some(SourceBackend::S3(src)) = c.source.map(|s| s.backend) else {
            panic!("no s3 source");
        };
        let (SiteBackend::AwsS3(s3), SiteBackend::Azure(az)) =
            (&c.sites[0].backend, &c.sites[1].backend)
        else {
            panic!("sites");
        };
        Ok((
            src.client.request_timeout_s,
            s3.client.request_timeout_s,
            az.request_timeout_s,
        ))
    }

    #[test]
    fn request_timeout_defaults_to_15_s_is_per_site_and_bounded() {
        let all = format!("{SOURCE}{S3_SITE}{AZURE_SITE}");
        assert_eq!(timeouts(&all).unwrap(), (15, 15, 15));
        let set = |block: &str, t: &str| block.to_string() + &format!("request_timeout_s = {t}\n");
        let given = format!(
            "{}{}{}",
            set(SOURCE, "2"),
            set(S3_SITE, "3600"),
            set(AZURE_SITE, "1")
        );
        assert_eq!(timeouts(&given).unwrap(), (2, 3600, 1));
        for bad in ["0", "3601"] {
            let text = format!(
                "{}{}{}",
                set(SOURCE, bad),
                set(S3_SITE, bad),
                set(AZURE_SITE, bad)
            );
            let Err(ConfigError::Invalid(problems)) = Config::parse(&text) else {
                panic!("{bad} accepted");
            };
            for at in [
                "source.request_timeout_s",
                "site \"s3\".request_timeout_s",
                "site \"az\".request_timeout_s",
            ] {
                assert!(
                    problems.iter().any(|p| p.starts_with(at)
                        && p.contains(&format!("{bad} must be from 1 to 3600"))),
                    "{at} for {bad}: {problems:?}"
                );
            }
        }
    }
}
