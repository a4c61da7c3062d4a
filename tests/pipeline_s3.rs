//! End-to-end on real peers: an S3 source on moto replicated at once to an `aws_s3` site
//! (moto), an `azure` site (Azurite) and a `file` site; versions of one key in order.

#![allow(clippy::unwrap_used)]

mod common;
mod pipeline_support;

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use backbeat::model::{ReplicationStatus, VersionRef};
use backbeat::s3::{S3Client, S3Request};
use backbeat::site::file::{FileSite, Sidecar};
use backbeat::store::{Metric, StateStore};
use common::peers::{start_azurite, start_moto, Peer, AZURITE_ACCOUNT, AZURITE_KEY};
use http_body_util::BodyExt;
use hyper::Method;
use pipeline_support::*;

static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);
static AZURITE: LazyLock<Peer> = LazyLock::new(start_azurite);

fn s3_config(data: &Path, buckets: &[&str], sites: &str, rules: &str) -> String {
    let list: Vec<String> = buckets.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"
partitions = 4

[source]
type = "s3"
endpoint = "{moto}"
access_key = "AKIDTEST"
secret_key = "secret"
buckets = [{buckets}]
scan_interval_s = 2

{sites}

[replication]
concurrency = 10

[replication.retry]
max_retries = 5
timeout_s = 60
backoff_min_ms = 100
backoff_max_ms = 1000

{rules}
"#,
        data = data.display(),
        moto = MOTO.url(),
        buckets = list.join(", "),
    )
}

fn s3_site(name: &str, bucket: &str) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\ntype = \"aws_s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\naccess_key = \"AKIDTEST\"\nsecret_key = \"secret\"\npath_style = true\n",
        MOTO.url()
    )
}

fn azure_site(name: &str, container: &str) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\ntype = \"azure\"\nendpoint = \"{}/{AZURITE_ACCOUNT}\"\naccount = \"{AZURITE_ACCOUNT}\"\nkey = \"{AZURITE_KEY}\"\ncontainer = \"{container}\"\n",
        AZURITE.url()
    )
}

async fn s3_get(
    c: &S3Client,
    bucket: &str,
    key: &str,
    query: Option<&str>,
) -> (hyper::HeaderMap, Vec<u8>) {
    let mut req = S3Request::new(Method::GET, bucket, Some(key));
    if let Some(q) = query {
        req = req.flag(q);
    }
    let resp = c.send(req).await.unwrap();
    let headers = resp.headers().clone();
    (
        headers,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

fn azure_url(container: &str, key: &str) -> String {
    format!(
        "{}/{AZURITE_ACCOUNT}/{container}/{}",
        AZURITE.url(),
        backbeat::http::encode_key(key)
    )
}

fn header<'a>(h: &'a hyper::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Creates the versioned source bucket `src` and the destination bucket `dst` at moto.
async fn create_buckets(moto: &S3Client, src: &str, dst: &str, dst_versioned: bool) {
    common::moto::create_bucket(moto, src, true).await.unwrap();
    common::moto::create_bucket(moto, dst, dst_versioned)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_keys_reach_s3_azure_and_file_sites_with_metadata_tags_and_markers() {
    let moto = common::moto::client(&MOTO);
    let (src_bucket, dst_bucket, container) = ("src-three", "replica-three", "replica-three");
    create_buckets(&moto, src_bucket, dst_bucket, true).await;
    let (status, _, _) = common::azure::call(
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        Method::PUT,
        &format!(
            "{}/{AZURITE_ACCOUNT}/{container}?restype=container",
            AZURITE.url()
        ),
        b"",
    )
    .await
    .unwrap();
    assert!(status == 201 || status == 409, "container: {status}");

    let n = 200usize;
    let mut objects = Vec::new();
    for i in 0..n {
        let len = match i % 20 {
            0 => 0,
            1 => 1024 * 1024,
            2 => 100 * 1024,
            _ => (i * 997) % 8000,
        };
        let key = tricky_key(i);
        let body = bytes_for(i as u64, len);
        let vid = common::moto::put(
            &moto,
            src_bucket,
            &key,
            &body,
            &[
                ("content-type", "application/x-test"),
                ("content-encoding", "identity"),
                ("content-disposition", "inline"),
                ("content-language", "en"),
                ("cache-control", "max-age=5"),
                ("x-amz-meta-color", "blue"),
                ("x-amz-meta-padded", "=?UTF-8?B?IHNwYWNlZCA=?="),
                ("x-amz-tagging", "team=edge&n=1"),
            ],
        )
        .await
        .unwrap();
        objects.push((key, body, vid));
    }

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file_dir = tmp.path().join("site-file");
    let sites = format!(
        "{}{}{}",
        s3_site("aws-1", dst_bucket),
        azure_site("azure-1", container),
        file_site("local-1", &file_dir)
    );
    let names = ["aws-1", "azure-1", "local-1"];
    let cfg = s3_config(
        &data,
        &[src_bucket],
        &sites,
        &rule(src_bucket, "", &names, true),
    );
    let cfg_path = write_config(tmp.path(), &cfg);
    let engine = EngineProc::start_with_log(
        &cfg_path,
        tmp.path(),
        "info,backbeat::pipeline::status=debug",
    );
    let expected = n * names.len();
    wait_until("every status applied", Duration::from_secs(600), || {
        engine.count_log("Status applied.") >= expected
    });
    assert!(engine.stop().success());
    assert_eq!(engine_log_count(tmp.path(), "Replication failed."), 0);

    let store = open_store(&data);
    let fs = FileSite::new("local-1", &file_dir).unwrap();
    for (key, body, vid) in &objects {
        let v = VersionRef::new(src_bucket, key.clone(), vid.clone());
        let info = store
            .key_state(src_bucket, key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no record for {v}"));
        assert_eq!(info.version_id, *vid);
        assert_eq!(
            info.status(),
            Some(ReplicationStatus::Completed),
            "{v}: {info:?}"
        );
        // Every site keeps the replica under its source bucket.
        let at = format!("{src_bucket}/{key}");
        // aws_s3 site.
        let (h, got) = s3_get(&moto, dst_bucket, &at, None).await;
        assert!(got == *body, "{key}: S3 replica bytes differ");
        assert_eq!(header(&h, "content-type"), "application/x-test", "{key}");
        assert_eq!(header(&h, "content-encoding"), "identity", "{key}");
        assert_eq!(header(&h, "content-disposition"), "inline", "{key}");
        assert_eq!(header(&h, "content-language"), "en", "{key}");
        assert_eq!(header(&h, "cache-control"), "max-age=5", "{key}");
        assert_eq!(header(&h, "x-amz-meta-color"), "blue", "{key}");
        assert_eq!(
            header(&h, "x-amz-meta-padded"),
            "=?UTF-8?B?IHNwYWNlZCA=?=",
            "{key}"
        );
        assert_eq!(
            header(&h, "x-amz-meta-scal-size"),
            body.len().to_string(),
            "{key}"
        );
        assert_eq!(
            header(&h, "x-amz-meta-scal-md5"),
            backbeat::checksum::hex(&backbeat::checksum::md5(body)),
            "{key}"
        );
        assert_eq!(
            header(&h, "x-amz-meta-scal-replication-status"),
            "REPLICA",
            "{key}"
        );
        assert_eq!(header(&h, "x-amz-meta-scal-version-id"), vid, "{key}");
        let (_, tagging) = s3_get(&moto, dst_bucket, &at, Some("tagging")).await;
        let tagging = String::from_utf8_lossy(&tagging);
        assert!(
            tagging.contains("<Key>team</Key>") && tagging.contains("<Value>edge</Value>"),
            "{key}: {tagging}"
        );
        // azure site.
        let (status, h, got) = common::azure::call(
            AZURITE_ACCOUNT,
            AZURITE_KEY,
            Method::GET,
            &azure_url(container, &at),
            b"",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{key}: azure GET");
        assert!(
            got.as_ref() == body.as_slice(),
            "{key}: azure replica bytes differ"
        );
        assert_eq!(
            header(&h, "x-ms-meta-scal_replication_status"),
            "REPLICA",
            "{key}"
        );
        assert_eq!(header(&h, "x-ms-meta-color"), "blue", "{key}");
        assert_eq!(header(&h, "content-type"), "application/x-test", "{key}");
        assert_eq!(header(&h, "content-language"), "en", "{key}");
        assert_eq!(header(&h, "cache-control"), "max-age=5", "{key}");
        // file site.
        assert!(
            std::fs::read(fs.path_of(&at)).unwrap() == *body,
            "{key}: file replica bytes differ"
        );
        let side: Sidecar =
            serde_json::from_slice(&std::fs::read(fs.sidecar_of(&at)).unwrap()).unwrap();
        assert_eq!(
            side.headers.get("content-encoding").map(String::as_str),
            Some("identity")
        );
        assert_eq!(side.replication_status, "REPLICA");
        assert_eq!(side.version_id, *vid);
        assert_eq!(side.content_type.as_deref(), Some("application/x-test"));
        assert_eq!(
            side.user_metadata.get("color").map(String::as_str),
            Some("blue")
        );
        assert_eq!(side.tags.get("team").map(String::as_str), Some("edge"));
    }
    for s in names {
        assert_eq!(store.pending(s).await.unwrap(), (0, 0), "pending of {s}");
    }
}

/// Runs an engine replicating `src_bucket` to the S3 site `aws-1` (bucket `dst_bucket`) and the
/// file site `local-1` until `statuses` outcomes are applied, then stops it; returns the
/// temporary directory, the engine's data directory and the file site's directory.
fn replicate_to_s3_and_file(
    src_bucket: &str,
    dst_bucket: &str,
    statuses: usize,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file_dir = tmp.path().join("site-file");
    let sites = format!(
        "{}{}",
        s3_site("aws-1", dst_bucket),
        file_site("local-1", &file_dir)
    );
    let cfg = s3_config(
        &data,
        &[src_bucket],
        &sites,
        &rule(src_bucket, "", &["aws-1", "local-1"], true),
    );
    let engine = EngineProc::start_with_log(
        &write_config(tmp.path(), &cfg),
        tmp.path(),
        "info,backbeat::pipeline::status=debug",
    );
    wait_until("every status applied", Duration::from_secs(120), || {
        engine.count_log("Status applied.") >= statuses
    });
    assert!(engine.stop().success());
    (tmp, data, file_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_current_version_of_a_key_is_copied_and_the_newest_wins() {
    let moto = common::moto::client(&MOTO);
    let (src_bucket, dst_bucket) = ("src-versions", "replica-versions");
    create_buckets(&moto, src_bucket, dst_bucket, false).await;
    let mut vids = Vec::new();
    for i in 0..5 {
        let body = format!("version {i}").into_bytes();
        vids.push(
            common::moto::put(&moto, src_bucket, "doc/report.txt", &body, &[])
                .await
                .unwrap(),
        );
    }
    // One key, two sites: one copy each, of the current version only.
    let (_tmp, data, file_dir) = replicate_to_s3_and_file(src_bucket, dst_bucket, 2);

    let at = format!("{src_bucket}/doc/report.txt");
    let (_, got) = s3_get(&moto, dst_bucket, &at, None).await;
    assert_eq!(String::from_utf8_lossy(&got), "version 4");
    let fs = FileSite::new("local-1", &file_dir).unwrap();
    assert_eq!(std::fs::read(fs.path_of(&at)).unwrap(), b"version 4");
    let side: Sidecar =
        serde_json::from_slice(&std::fs::read(fs.sidecar_of(&at)).unwrap()).unwrap();
    assert_eq!(side.version_id, vids[4]);
    let store = open_store(&data);
    let info = store
        .key_state(src_bucket, "doc/report.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version_id, vids[4]);
    assert_eq!(info.status(), Some(ReplicationStatus::Completed));
    assert_eq!(metric_total(&store, "aws-1", Metric::Ops).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_marker_removes_the_replica_and_an_undelete_brings_it_back() {
    let moto = common::moto::client(&MOTO);
    let (src_bucket, dst_bucket) = ("src-deletes", "replica-deletes");
    create_buckets(&moto, src_bucket, dst_bucket, true).await;
    for (key, body) in [("gone", "gone 1"), ("back", "back 1"), ("never", "never")] {
        common::moto::put(&moto, src_bucket, key, body.as_bytes(), &[])
            .await
            .unwrap();
    }
    // Deleted before the engine ever saw it: nothing to replicate.
    common::moto::delete(&moto, src_bucket, "never")
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file_dir = tmp.path().join("site-file");
    let sites = format!(
        "{}{}",
        s3_site("aws-1", dst_bucket),
        file_site("local-1", &file_dir)
    );
    let cfg = s3_config(
        &data,
        &[src_bucket],
        &sites,
        &rule(src_bucket, "", &["aws-1", "local-1"], true),
    );
    let engine = EngineProc::start_with_log(
        &write_config(tmp.path(), &cfg),
        tmp.path(),
        "info,backbeat::pipeline::status=debug",
    );
    let fs = FileSite::new("local-1", &file_dir).unwrap();
    let at = |k: &str| format!("{src_bucket}/{k}");
    wait_until("both replicas", Duration::from_secs(60), || {
        fs.path_of(&at("gone")).exists() && fs.path_of(&at("back")).exists()
    });
    // Delete both; then undelete "back" (remove its delete marker): it is current again.
    common::moto::delete(&moto, src_bucket, "gone")
        .await
        .unwrap();
    let marker = common::moto::delete(&moto, src_bucket, "back")
        .await
        .unwrap();
    wait_until("the deletes replicated", Duration::from_secs(60), || {
        !fs.path_of(&at("gone")).exists() && !fs.path_of(&at("back")).exists()
    });
    moto.send(S3Request::new(Method::DELETE, src_bucket, Some("back")).query("versionId", marker))
        .await
        .unwrap();
    wait_until("the undeleted key back", Duration::from_secs(60), || {
        std::fs::read(fs.path_of(&at("back"))).ok().as_deref() == Some(b"back 1".as_slice())
    });
    assert!(engine.stop().success());
    // S3: the replica of the deleted key is gone (a delete marker on top), "back" is back.
    let gone = moto
        .send(S3Request::new(Method::HEAD, dst_bucket, Some(&at("gone"))))
        .await;
    assert!(gone.is_err(), "the replica of a deleted key is removed");
    let (_, got) = s3_get(&moto, dst_bucket, &at("back"), None).await;
    assert_eq!(got, b"back 1");
    assert!(!fs.sidecar_of(&at("gone")).exists());
    assert!(!fs.path_of(&at("never")).exists());
    let never = moto
        .send(S3Request::new(Method::HEAD, dst_bucket, Some(&at("never"))))
        .await;
    assert!(
        never.is_err(),
        "a key deleted before any copy is never written"
    );
    let store = open_store(&data);
    let gone = store.key_state(src_bucket, "gone").await.unwrap().unwrap();
    assert!(gone.deleted);
    assert_eq!(gone.status(), Some(ReplicationStatus::Completed));
    assert!(store
        .key_state(src_bucket, "never")
        .await
        .unwrap()
        .is_none());
    for s in ["aws-1", "local-1"] {
        assert_eq!(store.pending(s).await.unwrap(), (0, 0), "pending of {s}");
    }
}

/// Versions of `key` in `bucket` (delete markers included).
async fn version_count(c: &S3Client, bucket: &str, key: &str) -> usize {
    let (_, xml) = c
        .send_xml(
            S3Request::new(Method::GET, bucket, None)
                .flag("versions")
                .query("prefix", key),
        )
        .await
        .unwrap();
    xml.all("Version").count() + xml.all("DeleteMarker").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_b_and_b_to_a_never_loops_because_replicas_are_not_replicated() {
    // Each bucket is a source and the other's site (keys kept as they are): a version written
    // in one is copied to the other once, and its replica there is never copied back.
    let moto = common::moto::client(&MOTO);
    let (a, b) = ("loop-a", "loop-b");
    common::moto::create_bucket(&moto, a, true).await.unwrap();
    common::moto::create_bucket(&moto, b, true).await.unwrap();
    common::moto::put(&moto, a, "from-a.txt", b"written in a", &[])
        .await
        .unwrap();
    common::moto::put(&moto, b, "from-b.txt", b"written in b", &[])
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sites = format!(
        "{}bucket_match = true\n{}bucket_match = true\n",
        s3_site("site-a", a),
        s3_site("site-b", b)
    );
    let rules = format!(
        "{}{}",
        rule(a, "", &["site-b"], true),
        rule(b, "", &["site-a"], true)
    );
    let cfg = s3_config(&data, &[a, b], &sites, &rules);
    let engine = EngineProc::start(&write_config(tmp.path(), &cfg), tmp.path());
    for (bucket, key) in [(b, "from-a.txt"), (a, "from-b.txt")] {
        let start = std::time::Instant::now();
        while version_count(&moto, bucket, key).await == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{key} never reached {bucket}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A new version in a while the engine runs: copied once too.
    common::moto::put(&moto, a, "from-a.txt", b"written in a, again", &[])
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while version_count(&moto, b, "from-a.txt").await < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "v2 never reached b"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several scans later (every 2 s), nothing went back: one version per write, each once.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(version_count(&moto, a, "from-a.txt").await, 2);
    assert_eq!(version_count(&moto, b, "from-a.txt").await, 2);
    assert_eq!(version_count(&moto, a, "from-b.txt").await, 1);
    assert_eq!(version_count(&moto, b, "from-b.txt").await, 1);
    let (_, got) = s3_get(&moto, b, "from-a.txt", None).await;
    assert_eq!(got, b"written in a, again");
    assert!(engine.stop().success());
    let store = open_store(&data);
    // The replicas were never queued: one copy per site for each key's writes.
    assert_eq!(metric_total(&store, "site-b", Metric::Ops).await, 2);
    assert_eq!(metric_total(&store, "site-a", Metric::Ops).await, 1);
}
