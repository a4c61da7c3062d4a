//! `ca_file`: S3 and Azure endpoints behind a private CA. A TLS proxy presenting a certificate
//! of a test CA stands in front of moto and of Azurite; the source and sites are built from a
//! configuration as `serve` builds them. With the CA's file they work; without it (or with
//! another CA's file) the certificate is refused, said plainly, and classified as a transport
//! failure (`Unreachable`), never as a credentials problem.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use backbeat::config::{Config, SourceBackend};
use backbeat::error::FailureReason;
use backbeat::s3::S3Client;
use backbeat::site::{build_site, SiteError};
use backbeat::source::build_source;
use common::peers::{start_azurite, start_moto, AZURITE_ACCOUNT, AZURITE_KEY};
use common::tls::{make_ca, tls_proxy, TestCa};
use common::{azure, moto};

fn toml_path(ca: &TestCa) -> String {
    format!("{:?}", ca.ca.display().to_string())
}

/// A refused certificate: a transient transport failure whose message says why.
fn assert_certificate_refused(res: Result<(), SiteError>) {
    let err = res.expect_err("the certificate must be refused");
    assert_eq!(err.reason(), FailureReason::Unreachable, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("invalid peer certificate"),
        "a clear message: {text}"
    );
}

#[tokio::test]
async fn s3_endpoints_behind_a_private_ca_are_trusted_through_their_ca_file() -> anyhow::Result<()>
{
    let moto = start_moto();
    let ca = make_ca();
    let other = make_ca();
    let proxy = tls_proxy(&ca, moto.addr).await;
    let endpoint = format!("https://127.0.0.1:{}", proxy.port());
    let s3 = |name: &str, ca_line: &str| {
        format!(
            "[[sites]]\nname = \"{name}\"\ntype = \"aws_s3\"\nendpoint = \"{endpoint}\"\n\
             access_key = \"AKIDTEST\"\nsecret_key = \"secret\"\nbucket = \"replica\"\n{ca_line}"
        )
    };
    let cfg = Config::parse(&format!(
        "[source]\ntype = \"s3\"\nendpoint = \"{endpoint}\"\naccess_key = \"AKIDTEST\"\n\
         secret_key = \"secret\"\nbuckets = [\"photos\"]\nca_file = {}\n{}{}{}",
        toml_path(&ca),
        s3("with-ca", &format!("ca_file = {}\n", toml_path(&ca))),
        s3("without-ca", ""),
        s3("other-ca", &format!("ca_file = {}\n", toml_path(&other))),
    ))?;
    let Some(SourceBackend::S3(src)) = cfg.source.as_ref().map(|s| &s.backend) else {
        panic!("an s3 source");
    };
    // Buckets made and an object written through TLS, by the source's own client.
    let client = S3Client::from_config(&src.client).map_err(anyhow::Error::msg)?;
    moto::create_bucket(&client, "photos", true).await?;
    moto::create_bucket(&client, "replica", false).await?;
    moto::put(&client, "photos", "a.txt", b"hello", &[]).await?;

    let source = build_source(cfg.source.as_ref().unwrap())?;
    let found = source.current("photos", "a.txt").await?;
    assert_eq!(found.map(|o| o.size), Some(5));

    let with_ca = build_site(&cfg.sites[0])?;
    with_ca.health().await?;
    assert_certificate_refused(build_site(&cfg.sites[1])?.health().await);
    // Trust is the file's CAs only: another CA's certificate is not enough.
    assert_certificate_refused(build_site(&cfg.sites[2])?.health().await);
    Ok(())
}

#[tokio::test]
async fn an_azure_endpoint_behind_a_private_ca_is_trusted_through_its_ca_file() -> anyhow::Result<()>
{
    let azurite = start_azurite();
    let plain = format!("{}/{AZURITE_ACCOUNT}", azurite.url());
    azure::create_container(AZURITE_ACCOUNT, AZURITE_KEY, &plain, "replica").await?;
    let ca = make_ca();
    let proxy = tls_proxy(&ca, azurite.addr).await;
    let az = |name: &str, ca_line: &str| {
        format!(
            "[[sites]]\nname = \"{name}\"\ntype = \"azure\"\n\
             endpoint = \"https://127.0.0.1:{}/{AZURITE_ACCOUNT}\"\naccount = \"{AZURITE_ACCOUNT}\"\n\
             key = \"{AZURITE_KEY}\"\ncontainer = \"replica\"\n{ca_line}",
            proxy.port()
        )
    };
    let cfg = Config::parse(&format!(
        "{}{}",
        az("with-ca", &format!("ca_file = {}\n", toml_path(&ca))),
        az("without-ca", "")
    ))?;
    build_site(&cfg.sites[0])?.health().await?;
    assert_certificate_refused(build_site(&cfg.sites[1])?.health().await);
    Ok(())
}
