//! Garbage collection (issue 15, DESIGN section 9) against the real binary: a transient inbox
//! emptied as its files reach every site (through `kill -9`s, with a file rewritten while its
//! old version is copied); a multipart upload cut by `kill -9` aborted at moto after the
//! restart while the object still arrives; a site removed from the configuration no longer
//! holding back log retention, its state forgotten.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use backbeat::s3::{S3Client, S3Request};
use common::peers::{start_moto, start_s3s_fs, Peer};
use failures_support::{api_of, metric, strip_ansi};
use hyper::Method;
use pipeline_support::*;

const AK: &str = "AKIDGC";
const SK: &str = "gc-secret";

static S3S: LazyLock<(Peer, tempfile::TempDir)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let peer = start_s3s_fs(dir.path(), AK, SK);
    (peer, dir)
});
static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);

fn dirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let d = root.join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect()
}

/// The value of the unlabelled Prometheus counter `name`.
async fn counter(api: std::net::SocketAddr, name: &str) -> u64 {
    let r = common::api::request(api, "GET", "/_/monitoring/metrics", None).await;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The regular files under `dir`, as keys.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_transient_inbox_empties_as_its_files_reach_every_site_through_kill_9() {
    let (peer, s3dir) = &*S3S;
    let tmp = tempfile::tempdir().unwrap();
    let [inbox, site, logs] = dirs(tmp.path(), &["inbox", "site", "logs"])
        .try_into()
        .unwrap();
    let s3 = s3dir.path().join("gc-transient");
    std::fs::create_dir_all(&s3).unwrap();
    let cfg = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"

[source]
type = "file"
path = "{inbox}"
transient = true

[[sites]]
name = "local"
type = "file"
path = "{site}"

[[sites]]
name = "s3"
type = "aws_s3"
endpoint = "{endpoint}"
bucket = "gc-transient"
access_key = "{AK}"
secret_key = "{SK}"
path_style = true

[replication]
mpu_threshold_mb = 5

[replication.retry]
max_retries = 3
timeout_s = 30
backoff_min_ms = 50
backoff_max_ms = 200

[[replication.rules]]
bucket = "inbox"
sites = ["local", "s3"]
"#,
        data = tmp.path().join("data").display(),
        inbox = inbox.display(),
        site = site.display(),
        endpoint = peer.url(),
    );
    let cfg = write_config(tmp.path(), &cfg);
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let put = |i: usize, want: &mut BTreeMap<String, Vec<u8>>| {
        let key = format!("d{}/f{i:03}", i % 9);
        let body = bytes_for(i as u64 + 7, 500 + (i * 131) % 9000);
        put_file(&inbox, &key, &body);
        want.insert(key, body);
    };
    let mut engine = EngineProc::start(&cfg, &logs);
    for round in 0..3 {
        for i in round * 160..(round + 1) * 160 {
            put(i, &mut want);
        }
        if round < 2 {
            // Killed while copies, statuses and deletes are under way.
            std::thread::sleep(Duration::from_millis(300 + 200 * round as u64));
            engine.kill9();
            engine = EngineProc::start(&cfg, &logs);
        }
    }
    for i in 480..500 {
        put(i, &mut want);
    }
    // A file rewritten while its old version is copied: the new one is replicated and only
    // then removed.
    let big_old = bytes_for(1, 12 << 20);
    let big_new = bytes_for(2, 12 << 20);
    put_file(&inbox, "big.bin", &big_old);
    std::thread::sleep(Duration::from_millis(150));
    put_file(&inbox, "big.bin", &big_new);
    want.insert("big.bin".into(), big_new);
    let start = Instant::now();
    loop {
        let left = files_under(&inbox);
        let at_sites = want.iter().all(|(k, body)| {
            std::fs::read(site.join("inbox").join(k)).ok().as_deref() == Some(body.as_slice())
                && std::fs::read(s3.join("inbox").join(k)).ok().as_deref() == Some(body.as_slice())
        });
        if left.is_empty() && at_sites {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "inbox still holds {} files ({:?}...), every file at both sites: {at_sites}",
            left.len(),
            left.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let api = api_of(&engine);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Collection deletes were never replicated: nothing pending, nothing failed, no
        // deletion copied (the replicas above are all there).
        // (Statuses may trail the replicas by a moment; a replayed status must not bring a
        // collected key's record back, PENDING for ever.)
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let local = metric(api, "local", "pending").await;
            let s3 = metric(api, "s3", "pending").await;
            if local == 0 && s3 == 0 {
                break;
            }
            if Instant::now() > deadline {
                let mut stuck = Vec::new();
                for k in want.keys() {
                    let path = format!("/_/crr/object/inbox/{k}");
                    let t = common::api::request(api, "GET", &path, None).await.text();
                    if t.contains("PENDING") {
                        stuck.push(t);
                    }
                }
                panic!("pending local {local} s3 {s3}: {stuck:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // This last run collected at least the files written after the last kill.
        assert!(counter(api, "backbeat_gc_deleted_total").await >= 21);
        assert!(counter(api, "backbeat_gc_bytes_freed_total").await >= 12 << 20);
    });
    let log = strip_ansi(&engine.log());
    assert!(!log.contains("ERROR"), "{log}");
    assert!(engine.stop().success());
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
async fn an_upload_cut_by_kill_9_is_aborted_after_the_restart_and_the_object_still_arrives() {
    let moto = common::moto::client(&MOTO);
    common::moto::create_bucket(&moto, "gc-uploads", false)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let [inbox, logs] = dirs(tmp.path(), &["inbox", "logs"]).try_into().unwrap();
    let body = bytes_for(60, 60 << 20);
    put_file(&inbox, "large.bin", &body);
    let sites = format!(
        "[[sites]]\nname = \"moto\"\ntype = \"aws_s3\"\nendpoint = \"{}\"\nbucket = \"gc-uploads\"\n\
         access_key = \"AKIDTEST\"\nsecret_key = \"secret\"\npath_style = true\n",
        MOTO.url()
    );
    let cfg = write_config(
        tmp.path(),
        &config(
            &tmp.path().join("data"),
            &inbox,
            &sites,
            &rule("inbox", "", &["moto"], true),
            "",
        ),
    );
    let engine = EngineProc::start(&cfg, &logs);
    let start = Instant::now();
    while uploads(&moto, "gc-uploads").await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no upload started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.kill9();
    assert_eq!(
        uploads(&moto, "gc-uploads").await,
        1,
        "the cut upload is left"
    );
    let engine = EngineProc::start(&cfg, &logs);
    let start = Instant::now();
    loop {
        let done = moto
            .send(S3Request::new(
                Method::HEAD,
                "gc-uploads",
                Some("inbox/large.bin"),
            ))
            .await
            .is_ok();
        if done && uploads(&moto, "gc-uploads").await == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "object there: {done}, uploads left: {}",
            uploads(&moto, "gc-uploads").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = common::moto::get_bytes(&moto, "gc-uploads", "inbox/large.bin")
        .await
        .unwrap();
    assert!(got == body, "the object's bytes differ");
    let api = api_of(&engine);
    assert!(counter(api, "backbeat_gc_orphans_total").await >= 1);
    assert!(engine.stop().success());
}

#[test]
fn a_removed_site_no_longer_holds_back_retention_and_its_state_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let [inbox, a, b, logs] = dirs(tmp.path(), &["inbox", "site-a", "site-b", "logs"])
        .try_into()
        .unwrap();
    let data = tmp.path().join("data");
    let both = format!("{}{}", file_site("A", &a), file_site("B", &b));
    let cfg_ab = config(
        &data,
        &inbox,
        &both,
        &rule("inbox", "", &["A", "B"], true),
        "",
    )
    .replace("partitions = 4", "partitions = 4\nretention_interval_s = 1");
    let cfg = write_config(tmp.path(), &cfg_ab);
    let e = EngineProc::start(&cfg, &logs);
    let api = api_of(&e);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // B paused: every entry waits for it.
    rt.block_on(failures_support::post(
        api,
        "/_/crr/pause/B",
        &serde_json::json!({}),
    ));
    for i in 0..200 {
        put_file(&inbox, &format!("k{i:03}"), &bytes_for(i, 300));
    }
    rt.block_on(failures_support::wait_for(
        "A has them, B waits",
        Duration::from_secs(60),
        || async {
            metric(api, "A", "completions").await == 200 && metric(api, "B", "pending").await == 200
        },
    ));
    assert!(e.stop().success());
    // B removed from the configuration.
    let cfg_a = config(
        &data,
        &inbox,
        &file_site("A", &a),
        &rule("inbox", "", &["A"], true),
        "",
    )
    .replace("partitions = 4", "partitions = 4\nretention_interval_s = 1");
    std::fs::write(&cfg, cfg_a).unwrap();
    let e = EngineProc::start_with_log(&cfg, &logs, "info,backbeat::app=debug");
    let api = api_of(&e);
    e.wait_log("Site no longer configured", Duration::from_secs(30));
    // The records only B had not read are deleted by the next retention passes.
    let deleted = |log: &str| -> u64 {
        strip_ansi(log)
            .lines()
            .filter(|l| l.contains("Retention pass.") && l.contains("backbeat-replication\""))
            .filter_map(|l| l.split("deleted=").nth(1))
            .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    let start = Instant::now();
    while deleted(&e.log()) < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "retention deleted {} records: {}",
            deleted(&e.log()),
            e.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "retention deleted {} records B held back",
        deleted(&e.log())
    );
    rt.block_on(async {
        // B's state went with it; A is untouched.
        assert_eq!(metric(api, "A", "pending").await, 0);
        let view = failures_support::get_json(api, "/_/crr/object/inbox/k007").await;
        assert_eq!(view["status"], "COMPLETED", "{view}");
        assert!(view["sites"].get("B").is_none(), "{view}");
    });
    assert!(e.stop().success());
    let store = open_store(&data);
    rt.block_on(async {
        use backbeat::store::StateStore;
        assert_eq!(store.pending("B").await.unwrap(), (0, 0));
    });
}
