//! The `s3` source against moto: versioned listings in small pages, head/get/range, tags,
//! bucket replication configuration.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::LazyLock;

use backbeat::http::Body;
use backbeat::model::{ByteStream, VersionRef};
use backbeat::s3::S3Request;
use backbeat::source::s3::S3Source;
use backbeat::source::{Source, SourceError};
use common::moto;
use common::peers::{start_moto, Peer};
use futures_util::StreamExt;
use hyper::Method;

static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);

async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[tokio::test]
async fn versions_are_listed_in_pages_and_read_back() -> anyhow::Result<()> {
    let c = moto::client(&MOTO);
    moto::create_bucket(&c, "src-versions", true).await?;
    let key = "dir/a key+é:%?#";
    let mut vids = Vec::new();
    for i in 0..3 {
        let data = format!("version {i} of the object");
        vids.push(
            moto::put(
                &c,
                "src-versions",
                key,
                data.as_bytes(),
                &[
                    ("content-type", "text/plain"),
                    ("x-amz-meta-color", "blue"),
                    ("x-amz-tagging", "project=x%20y&k=v"),
                ],
            )
            .await?,
        );
    }
    moto::put(&c, "src-versions", "other", b"o", &[]).await?;
    // A delete marker on "other".
    c.send(S3Request::new(
        Method::DELETE,
        "src-versions",
        Some("other"),
    ))
    .await?;

    let src = S3Source::new(c.clone(), vec!["src-versions".into()]).with_page_size(2);
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = src.list_versions("src-versions", cursor.as_deref()).await?;
        pages += 1;
        assert!(page.versions.len() <= 2);
        all.extend(page.versions);
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
        assert!(pages < 10);
    }
    assert!(pages >= 3, "pages: {pages}");
    let of_key: Vec<_> = all.iter().filter(|v| v.version.key == key).collect();
    assert_eq!(of_key.len(), 3);
    let listed: std::collections::BTreeSet<_> = of_key
        .iter()
        .map(|v| v.version.version_id.clone())
        .collect();
    assert_eq!(listed, vids.iter().cloned().collect());
    let other: Vec<_> = all.iter().filter(|v| v.version.key == "other").collect();
    assert_eq!(other.len(), 2);
    assert_eq!(other.iter().filter(|v| v.is_delete_marker).count(), 1);

    // head / get / range of an older version.
    let v0 = VersionRef::new("src-versions", key, vids[0].clone());
    let info = src.head(&v0).await?.expect("version exists");
    assert_eq!(info.size, 23);
    assert_eq!(info.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        info.user_metadata.get("color").map(String::as_str),
        Some("blue")
    );
    assert_eq!(info.tags.get("project").map(String::as_str), Some("x y"));
    assert_eq!(info.tags.get("k").map(String::as_str), Some("v"));
    assert!(
        info.last_modified.ends_with('Z') && info.last_modified.contains('.'),
        "{}",
        info.last_modified
    );
    assert!(!info.etag.is_empty() && !info.etag.contains('"'));
    assert_eq!(
        collect(src.get(&v0, None).await?).await?,
        b"version 0 of the object"
    );
    assert_eq!(collect(src.get(&v0, Some((8, 8))).await?).await?, b"0");
    assert_eq!(
        collect(src.get(&v0, Some((0, 6))).await?).await?,
        b"version"
    );

    // Unknown versions and keys.
    assert_eq!(
        src.head(&VersionRef::new("src-versions", key, "nope"))
            .await?,
        None
    );
    assert_eq!(
        src.head(&VersionRef::new("src-versions", "missing", "null"))
            .await?,
        None
    );
    assert!(matches!(
        src.get(&VersionRef::new("src-versions", "missing", "null"), None)
            .await,
        Err(SourceError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn unversioned_objects_use_the_null_version() -> anyhow::Result<()> {
    let c = moto::client(&MOTO);
    moto::create_bucket(&c, "src-plain", false).await?;
    moto::put(&c, "src-plain", "plain", b"data", &[]).await?;
    let src = S3Source::new(c.clone(), vec!["src-plain".into()]);
    assert_eq!(src.versioning_enabled("src-plain").await?, Some(false));
    moto::create_bucket(&c, "src-versioned", true).await?;
    assert_eq!(src.versioning_enabled("src-versioned").await?, Some(true));
    let page = src.list_versions("src-plain", None).await?;
    assert_eq!(page.versions.len(), 1);
    assert_eq!(page.versions[0].version.version_id, "null");
    assert_eq!(page.next, None);
    let info = src.head(&page.versions[0].version).await?.expect("exists");
    assert_eq!(info.size, 4);
    assert!(info.tags.is_empty());
    assert_eq!(
        collect(src.get(&page.versions[0].version, None).await?).await?,
        b"data"
    );
    Ok(())
}

#[tokio::test]
async fn bucket_replication_configuration_gives_rules() -> anyhow::Result<()> {
    let c = moto::client(&MOTO);
    moto::create_bucket(&c, "src-repl", true).await?;
    let src = S3Source::new(c.clone(), vec!["src-repl".into()]);
    assert_eq!(src.replication_rules("src-repl").await?, None);

    // moto 5.2 answers every rule with an empty `Filter/Prefix` whatever was put
    // (moto/s3/responses.py, get_bucket_replication); prefix parsing, V1 `Prefix` and V2
    // `Filter/Prefix`, is covered by the unit tests of `source::s3`.
    let xml = r#"<ReplicationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Role>arn:aws:iam::123456789012:role/src,arn:aws:iam::123456789012:role/dst</Role>
<Rule><ID>r1</ID><Status>Enabled</Status><Filter><Prefix>photos/</Prefix></Filter>
<Destination><Bucket>arn:aws:s3:::target-bucket</Bucket><StorageClass>site-a,site-b</StorageClass></Destination></Rule>
</ReplicationConfiguration>"#;
    c.send(
        S3Request::new(Method::PUT, "src-repl", None)
            .flag("replication")
            .body(Body::Bytes(xml.into())),
    )
    .await?;
    let rules = src
        .replication_rules("src-repl")
        .await?
        .expect("configured");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id, "r1");
    assert!(rules[0].enabled);
    assert_eq!(rules[0].prefix, "", "moto changed: it now keeps the prefix");
    assert_eq!(rules[0].sites, vec!["site-a", "site-b"]);
    assert_eq!(rules[0].destination, "arn:aws:s3:::target-bucket");

    assert!(matches!(
        src.replication_rules("no-such-bucket-x").await,
        Err(SourceError::NotFound(_))
    ));
    Ok(())
}
