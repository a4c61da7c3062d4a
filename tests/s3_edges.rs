//! S3 edge cases of issue 14 against the real binary, moto started once for the binary and a
//! small proxy ([`common::flaky`]) in front of it answering what a real server may answer:
//!
//! - an S3 site and an Azure site that accept connections and never answer, with
//!   `request_timeout_s = 2`: the first failed attempt of each is logged and counted within
//!   seconds (not after a minute), and the version FAILED with reason `Timeout`; a silent S3
//!   source with `request_timeout_s = 2` is reported as soon;
//! - GetObjectTagging denied at the source (403 AccessDenied): the objects are replicated
//!   without tags and one WARN says so for the bucket (not one per object), while a bucket
//!   whose tags can be read replicates them;
//! - GetBucketReplication answering 403 and 501: the configured rules apply;
//! - a versions listing whose marker does not advance (the same truncated page for ever): the
//!   pass ends with an error, the next pass starts over from the first key, and the other
//!   bucket keeps replicating;
//! - a paused site is not contacted by garbage collection: an upload cut by `kill -9` is
//!   left alone at the paused site across a restart (no request reaches it), and is aborted
//!   once the site is resumed.
//!
//! Every wait is bounded; everything listens on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use backbeat::s3::{S3Client, S3Request};
use common::flaky;
use common::peers::{start_moto, Peer, AZURITE_ACCOUNT, AZURITE_KEY};
use failures_support::{api_of, failed_list, post, prom, strip_ansi, wait_for};
use hyper::{Method, StatusCode};
use pipeline_support::*;
use serde_json::json;

static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);

fn moto() -> S3Client {
    common::moto::client(&MOTO)
}

/// `root/<name>` for each name, created.
fn dirs<const N: usize>(root: &Path, names: [&str; N]) -> [PathBuf; N] {
    names.map(|n| {
        let d = root.join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// An `aws_s3` site writing into `bucket` at `endpoint`, with `extra` lines.
fn s3_site(name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\ntype = \"aws_s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         access_key = \"AKIDTEST\"\nsecret_key = \"secret\"\npath_style = true\n{extra}"
    )
}

/// A configuration with an S3 source at `endpoint` listing `buckets` every second.
fn s3_source_config(
    data: &Path,
    endpoint: &str,
    buckets: &[&str],
    sites: &str,
    rules: &str,
) -> String {
    let buckets: Vec<String> = buckets.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"
partitions = 2

[source]
type = "s3"
endpoint = "{endpoint}"
access_key = "AKIDTEST"
secret_key = "secret"
buckets = [{buckets}]
scan_interval_s = 1

{sites}
[replication.retry]
max_retries = 2
timeout_s = 20
backoff_min_ms = 50
backoff_max_ms = 100

{rules}
"#,
        data = data.display(),
        buckets = buckets.join(", "),
    )
}

/// An S3 error answer.
fn s3_error(status: u16, code: &str) -> (StatusCode, String) {
    (
        StatusCode::from_u16(status).unwrap(),
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{code} (test proxy)</Message></Error>"),
    )
}

/// Whether a request asks for `flag` (`?tagging`, `?replication`, `?versions`).
fn has_flag(parts: &hyper::http::request::Parts, flag: &str) -> bool {
    parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|p| p == flag || p.starts_with(&format!("{flag}=")))
}

/// Creates versioned `bucket` at moto and puts `objects` (key, body, `x-amz-tagging` or "").
async fn bucket_with(c: &S3Client, bucket: &str, objects: &[(&str, &str, &str)]) {
    common::moto::create_bucket(c, bucket, true).await.unwrap();
    for (key, body, tagging) in objects {
        let extra: Vec<(&str, &str)> = if tagging.is_empty() {
            Vec::new()
        } else {
            vec![("x-amz-tagging", *tagging)]
        };
        common::moto::put(c, bucket, key, body.as_bytes(), &extra)
            .await
            .unwrap();
    }
}

/// The tags of `key` at moto.
async fn tags_at(c: &S3Client, bucket: &str, key: &str) -> Vec<(String, String)> {
    let xml = common::moto::get_xml(c, bucket, Some(key), "tagging")
        .await
        .unwrap();
    backbeat::source::s3::parse_tags(&xml).into_iter().collect()
}

/// Keys of `bucket` at moto.
async fn keys_at(c: &S3Client, bucket: &str) -> Vec<String> {
    let mut k = common::moto::list_keys(c, bucket, "").await.unwrap();
    k.sort();
    k
}

/// A listener that accepts connections (at most 64) and never answers; stops when dropped.
struct Silent {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn silent() -> Silent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 64 {
            match listener.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        std::future::pending::<()>().await;
    });
    Silent { url, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_site_fails_its_first_attempt_within_its_request_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let [src, logs] = dirs(tmp.path(), ["inbox", "logs"]);
    let peer = silent().await;
    let sites = s3_site("silent", &peer.url, "replica", "request_timeout_s = 2\n")
        + &format!(
            "[[sites]]\nname = \"silent-az\"\ntype = \"azure\"\nendpoint = \"{}/{AZURITE_ACCOUNT}\"\n\
             account = \"{AZURITE_ACCOUNT}\"\ncontainer = \"replica\"\nkey = \"{AZURITE_KEY}\"\n\
             request_timeout_s = 2\n",
            peer.url
        );
    // A long backoff: the failure seen is the first attempt's.
    let retry =
        "max_retries = 2\ntimeout_s = 60\nbackoff_min_ms = 3000\nbackoff_max_ms = 3000\nreplay = 0\n";
    let cfg = config_with_retry(
        &tmp.path().join("data"),
        &src,
        &sites,
        &rule("inbox", "", &["silent", "silent-az"], true),
        "",
        retry,
    );
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let api = api_of(&e);
    put_file(&src, "one", b"to a site that never answers");
    let put_at = Instant::now();
    // The watch hands the file over at once; the attempt then waits 2 s, not 15 or 60.
    wait_for(
        "the first failed attempts counted",
        Duration::from_secs(8),
        || async {
            prom(api, "backbeat_replication_attempt_failures_total", "silent").await >= 1
                && prom(
                    api,
                    "backbeat_replication_attempt_failures_total",
                    "silent-az",
                )
                .await
                    >= 1
        },
    )
    .await;
    let counted_after = put_at.elapsed();
    assert!(
        counted_after >= Duration::from_millis(1500),
        "counted after {counted_after:?}: before the request timeout?"
    );
    e.wait_log(
        "Copy to the site failed; copies retry with backoff.",
        Duration::from_secs(2),
    );
    let log = strip_ansi(&e.log());
    for site in ["silent", "silent-az"] {
        let line = log
            .lines()
            .find(|l| {
                l.contains("Copy to the site failed") && l.contains(&format!("site=\"{site}\" "))
            })
            .unwrap_or_else(|| panic!("no failure logged for {site}:\n{log}"));
        assert!(
            line.contains("WARN") && line.contains("timed out after 2"),
            "{line}"
        );
    }
    for site in ["silent", "silent-az"] {
        wait_for(
            &format!("{site} FAILED"),
            Duration::from_secs(20),
            || async { !failed_list(api, site).await.is_empty() },
        )
        .await;
        let failed = failed_list(api, site).await;
        assert_eq!(failed[0]["Reason"], "Timeout", "{site}: {}", failed[0]);
    }
    eprintln!("first failed attempts counted {counted_after:?} after the put");
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_s3_source_is_reported_within_its_request_timeout() {
    let peer = silent().await;
    let tmp = tempfile::tempdir().unwrap();
    let [site, logs] = dirs(tmp.path(), ["site", "logs"]);
    let cfg = s3_source_config(
        &tmp.path().join("data"),
        &peer.url,
        &["edge-silent"],
        &file_site("local", &site),
        &rule("edge-silent", "", &["local"], true),
    )
    .replace(
        "scan_interval_s = 1",
        "scan_interval_s = 1\nrequest_timeout_s = 2",
    );
    let started = Instant::now();
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    // The versioning check, then the rules of the first pass: each waits 2 s, not 15 or 60.
    e.wait_log(
        "Cannot read the replication rules; the next pass retries.",
        Duration::from_secs(10),
    );
    let log = strip_ansi(&e.log());
    let line = log
        .lines()
        .find(|l| l.contains("Cannot read the replication rules"))
        .unwrap();
    assert!(line.contains("timed out after 2s"), "{line}");
    eprintln!("silent source reported after {:?}", started.elapsed());
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_tagging_replicates_without_tags_and_warns_once() {
    let c = moto();
    let objects: Vec<(String, String)> = (0..5)
        .map(|i| (format!("t{i}"), format!("tagged body {i}")))
        .collect();
    let tagged: Vec<(&str, &str, &str)> = objects
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_str(), "team=blue&tier=hot"))
        .collect();
    bucket_with(&c, "edge-tags-denied", &tagged).await;
    bucket_with(
        &c,
        "edge-tags-ok",
        &[("control", "control body", "team=blue&tier=hot")],
    )
    .await;
    common::moto::create_bucket(&c, "edge-tags-replica", true)
        .await
        .unwrap();
    let denied = Arc::new(AtomicUsize::new(0));
    let d = denied.clone();
    let proxy = flaky::start_with(
        MOTO.addr,
        Arc::new(move |_, parts| {
            (parts.method == Method::GET
                && parts.uri.path().starts_with("/edge-tags-denied/")
                && has_flag(parts, "tagging"))
            .then(|| {
                d.fetch_add(1, Ordering::SeqCst);
                s3_error(403, "AccessDenied")
            })
        }),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let [logs] = dirs(tmp.path(), ["logs"]);
    let cfg = s3_source_config(
        &tmp.path().join("data"),
        &proxy.url(),
        &["edge-tags-denied", "edge-tags-ok"],
        &s3_site("moto", &MOTO.url(), "edge-tags-replica", ""),
        &(rule("edge-tags-denied", "", &["moto"], true)
            + &rule("edge-tags-ok", "", &["moto"], true)),
    );
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let mut want: Vec<String> = objects
        .iter()
        .map(|(k, _)| format!("edge-tags-denied/{k}"))
        .collect();
    want.push("edge-tags-ok/control".into());
    want.sort();
    wait_for(
        "every object replicated",
        Duration::from_secs(60),
        || async { keys_at(&c, "edge-tags-replica").await == want },
    )
    .await;
    for (k, body) in &objects {
        let site_key = format!("edge-tags-denied/{k}");
        let got = common::moto::get_bytes(&c, "edge-tags-replica", &site_key)
            .await
            .unwrap();
        assert_eq!(got, body.as_bytes(), "{site_key}");
        assert!(
            tags_at(&c, "edge-tags-replica", &site_key).await.is_empty(),
            "{site_key} has tags"
        );
    }
    // Where the tags can be read they are replicated: the denial is what removed them.
    assert_eq!(
        tags_at(&c, "edge-tags-replica", "edge-tags-ok/control").await,
        [
            ("team".to_string(), "blue".to_string()),
            ("tier".to_string(), "hot".to_string())
        ]
    );
    assert!(denied.load(Ordering::SeqCst) >= 1, "tagging never asked");
    // A few more passes: still one warning for the bucket.
    e.wait_log("Scan pass done.", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = strip_ansi(&e.log());
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Cannot read object tags in this bucket"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("edge-tags-denied"),
        "{}",
        warned[0]
    );
    let api = api_of(&e);
    assert!(failed_list(api, "moto").await.is_empty());
    assert!(e.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_bucket_replication_403_or_501_uses_the_configured_rules() {
    let c = moto();
    let objects = [
        ("in/a", "in a", ""),
        ("in/b", "in b", ""),
        ("out/c", "out c", ""),
    ];
    bucket_with(&c, "edge-repl-403", &objects).await;
    bucket_with(&c, "edge-repl-501", &objects).await;
    let asked = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let a = asked.clone();
    let proxy = flaky::start_with(
        MOTO.addr,
        Arc::new(move |_, parts| {
            if parts.method != Method::GET || !has_flag(parts, "replication") {
                return None;
            }
            match parts.uri.path().trim_end_matches('/') {
                "/edge-repl-403" => {
                    a[0].fetch_add(1, Ordering::SeqCst);
                    Some(s3_error(403, "AccessDenied"))
                }
                "/edge-repl-501" => {
                    a[1].fetch_add(1, Ordering::SeqCst);
                    Some(s3_error(501, "NotImplemented"))
                }
                _ => None,
            }
        }),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let [site, logs] = dirs(tmp.path(), ["site", "logs"]);
    // The configured rules replicate `in/` only.
    let cfg = s3_source_config(
        &tmp.path().join("data"),
        &proxy.url(),
        &["edge-repl-403", "edge-repl-501"],
        &file_site("local", &site),
        &(rule("edge-repl-403", "in/", &["local"], true)
            + &rule("edge-repl-501", "in/", &["local"], true)),
    );
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let replica = |b: &str, k: &str| std::fs::read(site.join(b).join(k)).ok();
    wait_for(
        "the in/ objects of both buckets replicated",
        Duration::from_secs(60),
        || async {
            ["edge-repl-403", "edge-repl-501"].iter().all(|b| {
                objects
                    .iter()
                    .filter(|(k, _, _)| k.starts_with("in/"))
                    .all(|(k, body, _)| replica(b, k).as_deref() == Some(body.as_bytes()))
            })
        },
    )
    .await;
    assert!(asked[0].load(Ordering::SeqCst) >= 1, "403 bucket not asked");
    assert!(asked[1].load(Ordering::SeqCst) >= 1, "501 bucket not asked");
    // Another pass or two under the same rules: out/ is still not replicated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for b in ["edge-repl-403", "edge-repl-501"] {
        assert!(replica(b, "out/c").is_none(), "{b}/out/c replicated");
    }
    let log = strip_ansi(&e.log());
    assert!(!log.contains("Cannot read the replication rules"), "{log}");
    assert!(e.stop().success());
}

/// A truncated page of `ListObjectVersions` listing `key` (version `vid`) whose next marker
/// is always that key: the page asked from the marker is the same page again.
fn stuck_page(key: &str, vid: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListVersionsResult>\
         <Name>edge-stuck</Name><Prefix></Prefix><KeyMarker></KeyMarker><VersionIdMarker></VersionIdMarker>\
         <NextKeyMarker>{key}</NextKeyMarker><NextVersionIdMarker>{vid}</NextVersionIdMarker>\
         <MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>\
         <Version><Key>{key}</Key><VersionId>{vid}</VersionId><IsLatest>true</IsLatest>\
         <LastModified>2026-01-01T00:00:00.000Z</LastModified><Size>12</Size></Version>\
         </ListVersionsResult>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_does_not_advance_ends_the_pass_and_other_buckets_go_on() {
    let c = moto();
    bucket_with(&c, "edge-stuck", &[]).await;
    let vid = common::moto::put(&c, "edge-stuck", "stuck", b"stuck body", &[])
        .await
        .unwrap();
    // The page holds an entry, so the pass saves a cursor after it: only the reset after the
    // error makes the next pass start from the first key again.
    let page = stuck_page("stuck", &vid);
    bucket_with(&c, "edge-flow", &[("first", "first body", "")]).await;
    // Listings of edge-stuck: [from the first key, from a marker].
    let listed = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let l = listed.clone();
    let proxy = flaky::start_with(
        MOTO.addr,
        Arc::new(move |_, parts| {
            (parts.method == Method::GET
                && parts.uri.path().trim_end_matches('/') == "/edge-stuck"
                && has_flag(parts, "versions"))
            .then(|| {
                let from_marker = has_flag(parts, "key-marker");
                l[usize::from(from_marker)].fetch_add(1, Ordering::SeqCst);
                (StatusCode::OK, page.clone())
            })
        }),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let [site, logs] = dirs(tmp.path(), ["site", "logs"]);
    // edge-stuck first: every pass reaches it before edge-flow.
    let cfg = s3_source_config(
        &tmp.path().join("data"),
        &proxy.url(),
        &["edge-stuck", "edge-flow"],
        &file_site("local", &site),
        &(rule("edge-stuck", "", &["local"], true) + &rule("edge-flow", "", &["local"], true)),
    );
    let e = EngineProc::start(&write_config(tmp.path(), &cfg), &logs);
    let replica = |k: &str| std::fs::read(site.join("edge-flow").join(k)).ok();
    wait_for("edge-flow replicated", Duration::from_secs(30), || async {
        replica("first").as_deref() == Some(&b"first body"[..])
    })
    .await;
    // Each pass ends with the error and the next starts over from the first key.
    wait_for(
        "three passes over the stuck listing",
        Duration::from_secs(30),
        || async {
            e.count_log("Listing stuck; the next pass starts over from the first key.") >= 3
        },
    )
    .await;
    let (fresh, marked) = (
        listed[0].load(Ordering::SeqCst),
        listed[1].load(Ordering::SeqCst),
    );
    let errors = e.count_log("Listing stuck; the next pass starts over from the first key.");
    assert!(fresh >= 3, "listings from the first key: {fresh}");
    // Two pages a pass: no loop (one more pass may be under way).
    assert!(
        marked <= errors + 1 && fresh <= errors + 1,
        "{fresh} fresh and {marked} marked listings for {errors} passes"
    );
    let log = strip_ansi(&e.log());
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("Listing stuck")
            && l.contains("edge-stuck")),
        "{log}"
    );
    // The other bucket keeps replicating what is written later.
    common::moto::put(&c, "edge-flow", "later", b"later body", &[])
        .await
        .unwrap();
    wait_for(
        "a later edge-flow object replicated",
        Duration::from_secs(30),
        || async { replica("later").as_deref() == Some(&b"later body"[..]) },
    )
    .await;
    assert!(e.stop().success());
}

/// Multipart uploads in progress in `bucket` at moto.
async fn uploads(c: &S3Client, bucket: &str) -> usize {
    let (_, xml) = c
        .send_xml(S3Request::new(Method::GET, bucket, None).flag("uploads"))
        .await
        .unwrap();
    xml.all("Upload").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_does_not_contact_a_paused_site() {
    let c = moto();
    common::moto::create_bucket(&c, "edge-gc", false)
        .await
        .unwrap();
    // Counts every request the site receives.
    let proxy = flaky::start_with(MOTO.addr, Arc::new(|_, _| None)).await;
    let tmp = tempfile::tempdir().unwrap();
    let [src, logs] = dirs(tmp.path(), ["inbox", "logs"]);
    // 24 MiB at 1 MiB/s: two parts (above the 20 MiB threshold), the upload lasts ~24 s.
    let sites = s3_site(
        "paused",
        &proxy.url(),
        "edge-gc",
        "bandwidth = \"1MiB/s\"\n",
    );
    let cfg = config(
        &tmp.path().join("data"),
        &src,
        &sites,
        &rule("inbox", "", &["paused"], true),
        "",
    ) + "\n[gc]\ninterval_s = 1\n";
    let cfg = write_config(tmp.path(), &cfg);
    let body = bytes_for(14, 24 << 20);
    put_file(&src, "large.bin", &body);
    let e = EngineProc::start(&cfg, &logs);
    let api = api_of(&e);
    wait_for("an upload started", Duration::from_secs(60), || async {
        uploads(&c, "edge-gc").await == 1
    })
    .await;
    post(api, "/_/crr/pause/paused", &json!({})).await;
    e.kill9();
    assert_eq!(uploads(&c, "edge-gc").await, 1, "the cut upload is left");

    // Restarted paused, with a collection pass every second: the site hears nothing.
    let before = proxy.counts.requests.load(Ordering::SeqCst);
    let e = EngineProc::start(&cfg, &logs);
    let api = api_of(&e);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = proxy.counts.requests.load(Ordering::SeqCst) - before;
    assert_eq!(during, 0, "requests to the paused site");
    assert_eq!(uploads(&c, "edge-gc").await, 1, "the cut upload is left");

    // Resumed (and unlimited): the orphan is aborted and the object arrives.
    post(
        api,
        "/_/backbeat/api/crr/bandwidth/paused",
        &json!({"limit": "off"}),
    )
    .await;
    post(api, "/_/crr/resume/paused", &json!({})).await;
    let start = Instant::now();
    loop {
        let done = c
            .send(S3Request::new(
                Method::HEAD,
                "edge-gc",
                Some("inbox/large.bin"),
            ))
            .await
            .is_ok();
        if done && uploads(&c, "edge-gc").await == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "object there: {done}, uploads left: {}",
            uploads(&c, "edge-gc").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = common::moto::get_bytes(&c, "edge-gc", "inbox/large.bin")
        .await
        .unwrap();
    assert!(got == body, "the object's bytes differ");
    assert!(proxy.counts.requests.load(Ordering::SeqCst) > before);
    assert!(e.stop().success());
}
