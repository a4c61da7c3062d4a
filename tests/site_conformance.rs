//! One conformance contract run against every site: the `file` site on a temporary directory,
//! `aws_s3` on moto, `azure` on Azurite. Each replica is read back through a path independent
//! of the site under test (std::fs for files, S3 listing plus GET, the Azure crate).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use async_trait::async_trait;
use backbeat::http::{uri_decode, Xml};
use backbeat::model::{ByteStream, ContentHeaders, ObjectInfo, VersionRef};
use backbeat::s3::{S3Client, S3Options, S3Request};
use backbeat::site::azure::AzureSite;
use backbeat::site::file::{FileSite, Sidecar};
use backbeat::site::parts::part_ranges;
use backbeat::site::s3::S3Site;
use backbeat::site::{Site, SiteError};
use bytes::Bytes;
use common::peers::{
    free_port, moto_bin, start_azurite, start_moto, start_peer, Peer, AZURITE_ACCOUNT, AZURITE_KEY,
};
use common::{azure, moto};
use hyper::Method;

/// What a site holds for one key, read back independently.
#[derive(Debug, Default)]
pub struct Replica {
    pub data: Vec<u8>,
    pub content_type: Option<String>,
    /// Content-Encoding, Content-Disposition, Content-Language, Cache-Control, Expires.
    pub headers: BTreeMap<String, String>,
    pub user_metadata: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub replication_status: String,
    pub version_id: String,
}

/// Independent access to what a site stored.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The replica of `key`, `None` if absent.
    async fn read(&self, key: &str) -> anyhow::Result<Option<Replica>>;
    /// Multipart uploads (or uncommitted blocks) still pending for `key`.
    async fn pending_uploads(&self, key: &str) -> anyhow::Result<usize>;
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

pub fn body(data: Vec<u8>) -> ByteStream {
    let data = Bytes::from(data);
    let chunks: Vec<Result<Bytes, std::io::Error>> = if data.is_empty() {
        Vec::new()
    } else {
        (0..data.len())
            .step_by(64 * 1024)
            .map(|s| Ok(data.slice(s..(s + 64 * 1024).min(data.len()))))
            .collect()
    };
    Box::pin(futures_util::stream::iter(chunks))
}

pub fn info(key: &str, size: u64, vid: &str) -> ObjectInfo {
    ObjectInfo {
        version: VersionRef::new("src-bucket", key, vid),
        size,
        etag: "0123456789abcdef0123456789abcdef".into(),
        last_modified: "2026-11-26T10:00:00.000Z".into(),
        headers: ContentHeaders {
            content_type: Some("application/x-backbeat-test".into()),
            content_encoding: Some("identity".into()),
            content_disposition: Some("attachment; filename=\"report.txt\"".into()),
            content_language: Some("fr-CA".into()),
            cache_control: Some("max-age=60".into()),
            expires: Some("Thu, 01 Dec 2039 16:00:00 GMT".into()),
        },
        user_metadata: BTreeMap::from([
            ("color".to_string(), "blue".to_string()),
            ("owner".to_string(), "ann".to_string()),
        ]),
        tags: BTreeMap::from([
            ("project".to_string(), "x y".to_string()),
            // Needs URL-encoding in x-amz-tagging; valid for S3, not for Azure index tags.
            ("k+:/".to_string(), "v=1 @".to_string()),
        ]),
        ..ObjectInfo::default()
    }
}

/// The standard headers of `obj` other than Content-Type, by lowercase name.
fn other_headers(obj: &ObjectInfo) -> BTreeMap<String, String> {
    obj.headers
        .pairs()
        .into_iter()
        .filter(|(n, _)| *n != "content-type")
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Keys every site must store and give back exactly.
pub const ODD_KEYS: &[&str] = &[
    "with space.txt",
    "unicode-é-日本語",
    "colon:key",
    "per%cent%20",
    "plus+sign",
    "question?mark",
    "hash#tag",
    "nested/dir/deep/key",
    "amp&eq=semi;",
];

async fn check(
    inspect: &dyn Inspect,
    key: &str,
    expected: &[u8],
    obj: &ObjectInfo,
) -> anyhow::Result<()> {
    let r = inspect
        .read(key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no replica for {key:?}"))?;
    assert_eq!(r.data.len(), expected.len(), "size of {key:?}");
    assert!(r.data == expected, "bytes of {key:?}");
    assert_eq!(
        r.content_type, obj.headers.content_type,
        "content type of {key:?}"
    );
    assert_eq!(r.headers, other_headers(obj), "standard headers of {key:?}");
    assert_eq!(
        r.user_metadata, obj.user_metadata,
        "user metadata of {key:?}"
    );
    assert_eq!(r.tags, obj.tags, "tags of {key:?}");
    assert_eq!(r.replication_status, "REPLICA", "marker of {key:?}");
    assert_eq!(
        r.version_id, obj.version.version_id,
        "source version of {key:?}"
    );
    Ok(())
}

/// The contract every site meets.
pub async fn conformance(
    site: &dyn Site,
    inspect: &dyn Inspect,
    prefix: &str,
) -> anyhow::Result<()> {
    // Sizes: 0 B, 1 B, 1 MiB + 3.
    for (name, len) in [("zero", 0usize), ("one", 1), ("mib", 1024 * 1024 + 3)] {
        let key = format!("{prefix}{name}");
        let data = pattern(len, 7);
        let obj = info(&key, len as u64, "v-size");
        let r = site.put(&key, &obj, body(data.clone())).await?;
        assert!(r.wrote);
        check(inspect, &key, &data, &obj).await?;
        // What the site says it holds: the REPLICA markers and the size.
        let held = site
            .replica(&key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no replica info for {key:?}"))?;
        assert_eq!(held.source_version_id.as_deref(), Some("v-size"));
        assert_eq!(held.source_bucket.as_deref(), Some("src-bucket"));
        assert_eq!(held.size, len as u64);
    }
    // Keys that need encoding.
    for (i, k) in ODD_KEYS.iter().enumerate() {
        let key = format!("{prefix}{k}");
        let data = pattern(100 + i, i as u8);
        let obj = info(&key, data.len() as u64, "v-odd");
        site.put(&key, &obj, body(data.clone())).await?;
        check(inspect, &key, &data, &obj).await?;
    }
    // A newer version of a key overwrites the older one.
    let key = format!("{prefix}versioned");
    site.put(&key, &info(&key, 3, "v1"), body(b"old".to_vec()))
        .await?;
    let newer = info(&key, 5, "v2");
    site.put(&key, &newer, body(b"newer".to_vec())).await?;
    check(inspect, &key, b"newer", &newer).await?;
    // A body shorter than announced never becomes a replica.
    let key = format!("{prefix}short");
    let err = site
        .put(&key, &info(&key, 10, "v1"), body(b"abc".to_vec()))
        .await;
    assert!(err.is_err(), "short body accepted");
    assert!(
        inspect.read(&key).await?.is_none(),
        "short body left a replica"
    );

    // Multipart: ~40 MiB in 16 MiB parts.
    let mp = site
        .multipart()
        .ok_or_else(|| anyhow::anyhow!("site has no multipart"))?;
    let key = format!("{prefix}big/multipart object");
    let len = 40 * 1024 * 1024 + 5;
    let data = pattern(len, 3);
    let obj = info(&key, len as u64, "v-mpu");
    let ranges = part_ranges(len as u64);
    assert_eq!(ranges.len(), 3);
    let upload = mp.create(&key, &obj).await?;
    let mut parts = Vec::new();
    for (i, (s, e)) in ranges.iter().enumerate() {
        let chunk = data[*s as usize..=*e as usize].to_vec();
        parts.push(
            mp.put_part(&key, &upload, i as u32 + 1, e - s + 1, body(chunk))
                .await?,
        );
    }
    let mut obj = obj;
    obj.content_md5 = Some(backbeat::checksum::hex(&backbeat::checksum::md5(&data)));
    mp.complete(&key, &obj, &upload, &parts).await?;
    check(inspect, &key, &data, &obj).await?;
    assert_eq!(
        inspect.pending_uploads(&key).await?,
        0,
        "completed upload still pending"
    );

    // An aborted upload leaves nothing behind.
    let key = format!("{prefix}aborted");
    let obj = info(&key, len as u64, "v-abort");
    let upload = mp.create(&key, &obj).await?;
    let (s, e) = ranges[0];
    mp.put_part(
        &key,
        &upload,
        1,
        e - s + 1,
        body(data[s as usize..=e as usize].to_vec()),
    )
    .await?;
    mp.abort(&key, &upload).await?;
    assert_eq!(
        inspect.pending_uploads(&key).await?,
        0,
        "aborted upload left parts"
    );
    assert!(
        inspect.read(&key).await?.is_none(),
        "aborted upload left a replica"
    );

    // Delete removes the replica; deleting what is not there writes nothing.
    let key = format!("{prefix}deleted");
    site.put(&key, &info(&key, 1, "v1"), body(b"x".to_vec()))
        .await?;
    assert!(site.delete(&key).await?.wrote);
    assert!(
        inspect.read(&key).await?.is_none(),
        "deleted replica still there"
    );
    assert!(!site.delete(&key).await?.wrote, "a second delete wrote");
    let nothing = format!("{prefix}never-there");
    assert!(!site.delete(&nothing).await?.wrote);

    // The listing, in key byte order, page by page, under a prefix.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = site.list(prefix, cursor.as_deref(), 3).await?;
        listed.extend(page.items.into_iter().map(|(k, _, _)| k));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "listing order");
    assert!(listed.contains(&format!("{prefix}versioned")), "{listed:?}");
    assert!(listed.contains(&format!("{prefix}big/multipart object")));
    assert!(!listed.contains(&format!("{prefix}deleted")));

    site.health().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// file site

struct FileInspect {
    site: FileSite,
}

#[async_trait]
impl Inspect for FileInspect {
    async fn read(&self, key: &str) -> anyhow::Result<Option<Replica>> {
        let path = self.site.path_of(key);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let side: Sidecar = serde_json::from_slice(&std::fs::read(self.site.sidecar_of(key))?)?;
        assert_eq!(side.key, key);
        Ok(Some(Replica {
            data,
            content_type: side.content_type,
            headers: side.headers,
            user_metadata: side.user_metadata,
            tags: side.tags,
            replication_status: side.replication_status,
            version_id: side.version_id,
        }))
    }

    async fn pending_uploads(&self, _key: &str) -> anyhow::Result<usize> {
        Ok(count_matching(self.site.root(), &|n| {
            n.contains("%mpu.") || n.contains("%tmp.")
        }))
    }
}

fn count_matching(dir: &Path, pred: &dyn Fn(&str) -> bool) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            n += count_matching(&e.path(), pred);
        } else if pred(&name) {
            n += 1;
        }
    }
    n
}

fn snapshot(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn file_site_meets_the_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("replica");
    let site = FileSite::new("local-1", &root)?;
    let inspect = FileInspect {
        site: FileSite::new("local-1", &root)?,
    };
    conformance(&site, &inspect, "").await?;
    // Nothing but replicas and sidecars remain.
    assert_eq!(
        count_matching(&root, &|n| n.contains("%tmp.") || n.contains("%mpu.")),
        0
    );
    Ok(())
}

#[tokio::test]
async fn file_site_keys_cannot_escape_the_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let parent = dir.path().join("parent");
    std::fs::create_dir(&parent)?;
    std::fs::write(parent.join("x"), b"untouched")?;
    let root = parent.join("replica");
    let site = FileSite::new("local-1", &root)?;
    let before = snapshot(&parent);
    let keys = [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "..",
        ".",
        "a//b",
        "../../../../tmp/escape",
        "nul\0byte",
        "./a/./b",
        "trailing/",
    ];
    for key in keys {
        let obj = info(key, 4, "v1");
        match site.put(key, &obj, body(b"evil".to_vec())).await {
            Ok(_) => {
                let p = site.path_of(key);
                assert!(p.starts_with(site.root()), "{key:?} -> {}", p.display());
                assert_eq!(std::fs::read(&p)?, b"evil", "{key:?}");
            }
            Err(SiteError::Rejected { .. }) => {}
            Err(e) => panic!("{key:?}: unexpected error {e}"),
        }
    }
    assert_eq!(snapshot(&parent), before, "the parent directory changed");
    assert_eq!(std::fs::read(parent.join("x"))?, b"untouched");
    assert!(!Path::new("/etc/passwd%meta.json").exists());
    Ok(())
}

#[tokio::test]
async fn file_site_does_not_follow_symbolic_links_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside)?;
    let root = dir.path().join("replica");
    let site = FileSite::new("local-1", &root)?;
    std::os::unix::fs::symlink(&outside, site.root().join("link"))?;
    let res = site
        .put(
            "link/file",
            &info("link/file", 1, "v1"),
            body(b"x".to_vec()),
        )
        .await;
    assert!(matches!(res, Err(SiteError::Rejected { .. })), "{res:?}");
    assert_eq!(
        std::fs::read_dir(&outside)?.count(),
        0,
        "wrote through the link"
    );
    Ok(())
}

#[tokio::test]
async fn file_site_rejects_a_key_that_is_both_file_and_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let site = FileSite::new("local-1", dir.path().join("r"))?;
    site.put("a", &info("a", 1, "v1"), body(b"x".to_vec()))
        .await?;
    let res = site
        .put("a/b", &info("a/b", 1, "v1"), body(b"y".to_vec()))
        .await;
    assert!(matches!(res, Err(SiteError::Rejected { .. })), "{res:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// aws_s3 site on moto

static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);

struct S3Inspect {
    client: S3Client,
    bucket: String,
}

#[async_trait]
impl Inspect for S3Inspect {
    async fn read(&self, key: &str) -> anyhow::Result<Option<Replica>> {
        // moto's own listing must show the exact key.
        let listed = moto::list_keys(&self.client, &self.bucket, key).await?;
        if !listed.iter().any(|k| k == key) {
            return Ok(None);
        }
        let resp = self
            .client
            .send(S3Request::new(Method::GET, &self.bucket, Some(key)))
            .await?;
        let h = resp.headers().clone();
        let data = self
            .client
            .read_capped(resp.into_body(), 64 << 20)
            .await?
            .to_vec();
        let mut user_metadata = BTreeMap::new();
        let mut headers = BTreeMap::new();
        let (mut status, mut vid) = (String::new(), String::new());
        for (n, v) in &h {
            if let Some(k) = n.as_str().strip_prefix("x-amz-meta-") {
                let v = v.to_str()?.to_string();
                match k {
                    "scal-replication-status" => status = v,
                    "scal-version-id" => vid = v,
                    k if k.starts_with("scal-") => {}
                    _ => {
                        user_metadata.insert(k.to_string(), v);
                    }
                }
            } else if [
                "content-encoding",
                "content-disposition",
                "content-language",
                "cache-control",
                "expires",
            ]
            .contains(&n.as_str())
            {
                headers.insert(n.as_str().to_string(), v.to_str()?.to_string());
            }
        }
        let tagging = moto::get_xml(&self.client, &self.bucket, Some(key), "tagging").await?;
        Ok(Some(Replica {
            data,
            content_type: h
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string()),
            headers,
            user_metadata,
            tags: backbeat::source::s3::parse_tags(&tagging),
            replication_status: status,
            version_id: vid,
        }))
    }

    async fn pending_uploads(&self, key: &str) -> anyhow::Result<usize> {
        let (_, xml) = self
            .client
            .send_xml(
                S3Request::new(Method::GET, &self.bucket, None)
                    .flag("uploads")
                    .query("prefix", key),
            )
            .await?;
        Ok(xml.all("Upload").count())
    }
}

#[tokio::test]
async fn s3_site_meets_the_contract_on_moto() -> anyhow::Result<()> {
    let client = moto::client(&MOTO);
    moto::create_bucket(&client, "replica-conf", true).await?;
    let site = S3Site::new("aws-1", "replica-conf", client.clone());
    let inspect = S3Inspect {
        client,
        bucket: "replica-conf".into(),
    };
    conformance(&site, &inspect, "p/").await?;
    // The receipt carries the replica's version id in a versioned bucket.
    let r = site
        .put("receipt", &info("receipt", 1, "v1"), body(b"r".to_vec()))
        .await?;
    assert!(r.version_id.is_some(), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn s3_site_missing_bucket_is_no_such_bucket() -> anyhow::Result<()> {
    let site = S3Site::new("aws-1", "no-such-bucket", moto::client(&MOTO));
    let res = site
        .put("k", &info("k", 1, "v1"), body(b"x".to_vec()))
        .await;
    assert!(
        matches!(res, Err(SiteError::NoSuchBucket { .. })),
        "{res:?}"
    );
    let res = site.health().await;
    assert!(
        matches!(res, Err(SiteError::NoSuchBucket { .. })),
        "{res:?}"
    );
    Ok(())
}

#[tokio::test]
async fn s3_site_closed_port_is_transient() -> anyhow::Result<()> {
    let port = free_port();
    let client = S3Client::new(
        &format!("http://127.0.0.1:{port}"),
        "us-east-1",
        "ak",
        "sk",
        S3Options::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let site = S3Site::new("aws-1", "b", client);
    let res = site
        .put("k", &info("k", 1, "v1"), body(b"x".to_vec()))
        .await;
    assert!(matches!(res, Err(SiteError::Transient { .. })), "{res:?}");
    assert!(matches!(
        site.health().await,
        Err(SiteError::Transient { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn s3_site_wrong_credentials_are_unauthorized() -> anyhow::Result<()> {
    // A separate moto that enforces authentication from its first request.
    let bin = moto_bin();
    let port = free_port();
    let peer = start_peer(
        "moto-auth",
        &bin,
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")],
        port,
        None,
    );
    let site = S3Site::new("aws-1", "b", moto::client_with(&peer, "AKIDWRONG", "wrong"));
    let res = site
        .put("k", &info("k", 1, "v1"), body(b"x".to_vec()))
        .await;
    assert!(
        matches!(res, Err(SiteError::Unauthorized { .. })),
        "{res:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// azure site on Azurite

static AZURITE: LazyLock<Peer> = LazyLock::new(start_azurite);

fn azurite_endpoint() -> String {
    format!("{}/{AZURITE_ACCOUNT}", AZURITE.url())
}

async fn create_container(name: &str) -> anyhow::Result<()> {
    let url = format!("{}/{name}?restype=container", azurite_endpoint());
    let (status, _, body) =
        azure::call(AZURITE_ACCOUNT, AZURITE_KEY, Method::PUT, &url, b"").await?;
    anyhow::ensure!(
        status == 201 || status == 409,
        "create container: {status} {body:?}"
    );
    Ok(())
}

struct AzureInspect {
    site: AzureSite,
}

impl AzureInspect {
    async fn get(&self, key: &str, query: &str) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
        azure::call(
            AZURITE_ACCOUNT,
            AZURITE_KEY,
            Method::GET,
            &self.site.url(Some(key), query),
            b"",
        )
        .await
    }
}

fn decode_tags(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (uri_decode(k).unwrap(), uri_decode(v).unwrap()))
        .collect()
}

#[async_trait]
impl Inspect for AzureInspect {
    async fn read(&self, key: &str) -> anyhow::Result<Option<Replica>> {
        let (status, h, data) = self.get(key, "").await?;
        if status == 404 {
            return Ok(None);
        }
        anyhow::ensure!(status == 200, "GET {key:?}: {status}");
        let mut r = Replica {
            data: data.to_vec(),
            content_type: h
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string()),
            ..Replica::default()
        };
        for (n, v) in &h {
            if let Some(k) = n.as_str().strip_prefix("x-ms-meta-") {
                let v = v.to_str()?.to_string();
                match k {
                    "scal_replication_status" => r.replication_status = v,
                    "scal_version_id" => r.version_id = v,
                    "scal_tags" => r.tags = decode_tags(&v),
                    "scal_expires" => {
                        r.headers.insert("expires".into(), v);
                    }
                    k if k.starts_with("scal_") => {}
                    _ => {
                        r.user_metadata.insert(k.to_string(), v);
                    }
                }
            }
        }
        for (n, name) in [
            ("content-encoding", "content-encoding"),
            ("content-disposition", "content-disposition"),
            ("content-language", "content-language"),
            ("cache-control", "cache-control"),
        ] {
            if let Some(v) = h.get(n) {
                r.headers.insert(name.to_string(), v.to_str()?.to_string());
            }
        }
        if r.tags.is_empty() {
            let (status, _, body) = self.get(key, "comp=tags").await?;
            anyhow::ensure!(status == 200, "GET tags {key:?}: {status}");
            let xml = Xml::parse(&body).map_err(anyhow::Error::msg)?;
            if let Some(set) = xml.child("TagSet") {
                for t in set.all("Tag") {
                    r.tags.insert(
                        t.text_of("Key").unwrap_or_default().to_string(),
                        t.text_of("Value").unwrap_or_default().to_string(),
                    );
                }
            }
        }
        Ok(Some(r))
    }

    async fn pending_uploads(&self, key: &str) -> anyhow::Result<usize> {
        let (status, _, body) = self
            .get(key, "comp=blocklist&blocklisttype=uncommitted")
            .await?;
        if status == 404 {
            return Ok(0);
        }
        anyhow::ensure!(status == 200, "GET block list {key:?}: {status}");
        let xml = Xml::parse(&body).map_err(anyhow::Error::msg)?;
        Ok(xml
            .child("UncommittedBlocks")
            .map(|u| u.all("Block").count())
            .unwrap_or(0))
    }
}

fn azure_site(container: &str, key: &str) -> AzureSite {
    AzureSite::new(
        "azure-1",
        &azurite_endpoint(),
        AZURITE_ACCOUNT,
        key,
        container,
    )
    .unwrap()
}

#[tokio::test]
async fn azure_site_meets_the_contract_on_azurite() -> anyhow::Result<()> {
    create_container("replica").await?;
    let site = azure_site("replica", AZURITE_KEY);
    let inspect = AzureInspect {
        site: azure_site("replica", AZURITE_KEY),
    };
    conformance(&site, &inspect, "p/").await
}

#[tokio::test]
async fn azure_site_stores_compatible_tags_as_index_tags() -> anyhow::Result<()> {
    create_container("tagged").await?;
    let site = azure_site("tagged", AZURITE_KEY);
    let mut obj = info("tagged object", 2, "v1");
    obj.tags = BTreeMap::from([
        ("project".to_string(), "x y".to_string()),
        ("k".to_string(), "v=1".to_string()),
    ]);
    site.put("tagged object", &obj, body(b"ok".to_vec()))
        .await?;
    let inspect = AzureInspect { site };
    let (status, h, body) = inspect.get("tagged object", "comp=tags").await?;
    assert_eq!(status, 200);
    let xml = Xml::parse(&body).map_err(anyhow::Error::msg)?;
    assert_eq!(
        xml.child("TagSet").map(|s| s.all("Tag").count()),
        Some(2),
        "{body:?}"
    );
    assert!(h.get("x-ms-meta-scal_tags").is_none());
    let r = inspect.read("tagged object").await?.unwrap();
    assert_eq!(r.tags, obj.tags);
    Ok(())
}

#[tokio::test]
async fn azure_site_wrong_key_is_unauthorized() -> anyhow::Result<()> {
    create_container("authz").await?;
    let wrong = "d3JvbmcgYWNjb3VudCBrZXkgZm9yIHRoZSB0ZXN0cyBvZiBiYWNrYmVhdCBhenVyZSBzaXRl";
    let site = azure_site("authz", wrong);
    let res = site
        .put("k", &info("k", 1, "v1"), body(b"x".to_vec()))
        .await;
    assert!(
        matches!(res, Err(SiteError::Unauthorized { .. })),
        "{res:?}"
    );
    Ok(())
}

#[tokio::test]
async fn azure_site_missing_container_is_no_such_bucket() -> anyhow::Result<()> {
    let site = azure_site("no-such-container", AZURITE_KEY);
    let res = site
        .put("k", &info("k", 1, "v1"), body(b"x".to_vec()))
        .await;
    assert!(
        matches!(res, Err(SiteError::NoSuchBucket { .. })),
        "{res:?}"
    );
    assert!(matches!(
        site.health().await,
        Err(SiteError::NoSuchBucket { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn azure_site_closed_port_is_transient() -> anyhow::Result<()> {
    let endpoint = format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", free_port());
    let site = AzureSite::new("azure-1", &endpoint, AZURITE_ACCOUNT, AZURITE_KEY, "c")
        .map_err(anyhow::Error::msg)?;
    let res = site
        .put("k", &info("k", 1, "v1"), body(b"x".to_vec()))
        .await;
    assert!(matches!(res, Err(SiteError::Transient { .. })), "{res:?}");
    Ok(())
}

#[tokio::test]
async fn azure_site_refuses_keys_azure_cannot_store_naming_the_limit() -> anyhow::Result<()> {
    let site = azure_site("replica", AZURITE_KEY);
    for key in ["a/./b", "a/../b", "..", "ends-with-dot."] {
        let err = site.check_key(key).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("Azure Blob Storage cannot store")),
            "{key:?}: {err:?}"
        );
    }
    assert!(site.check_key("photos/a.b/c").is_ok());
    Ok(())
}
