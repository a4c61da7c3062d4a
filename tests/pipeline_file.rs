//! End-to-end pipeline tests on the real binary: file source -> file sites (no peer needed).

#![allow(clippy::unwrap_used)]

mod pipeline_support;

use std::collections::BTreeMap;
use std::time::Duration;

use backbeat::model::{ReplicationStatus, VersionRef};
use backbeat::site::file::{FileSite, Sidecar};
use backbeat::source::file::version_id_of;
use backbeat::store::{Metric, StateStore};
use pipeline_support::*;

/// Where the replica of source key `key` of bucket `photos` lives at a site: under its
/// bucket (DESIGN 3, "Where a replica lives").
fn at(key: &str) -> String {
    format!("photos/{key}")
}

fn site_has(site: &FileSite, key: &str, data: &[u8]) -> bool {
    std::fs::read(site.path_of(&at(key)))
        .map(|d| d == data)
        .unwrap_or(false)
        && site.sidecar_of(&at(key)).exists()
}

fn version_of(src: &std::path::Path, bucket: &str, key: &str) -> VersionRef {
    let m = std::fs::metadata(src.join(key)).unwrap();
    VersionRef::new(bucket, key, version_id_of(&m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_keys_reach_every_site_with_markers_and_exact_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    let site_names = ["site-a", "site-b", "site-c"];
    let site_paths: Vec<_> = site_names.iter().map(|n| tmp.path().join(n)).collect();
    let mut objects = BTreeMap::new();
    for i in 0..200usize {
        let len = match i % 10 {
            0 => 0,
            1 => 1024 * 1024,
            2 => 300 * 1024,
            _ => (i * 997) % 20_000,
        };
        let key = tricky_key(i);
        let body = bytes_for(i as u64, len);
        put_file(&src, &key, &body);
        objects.insert(key, body);
    }
    let sites: String = site_names
        .iter()
        .zip(&site_paths)
        .map(|(n, p)| file_site(n, p))
        .collect();
    let cfg = config(
        &data,
        &src,
        &sites,
        &rule("photos", "", &site_names, true),
        "",
    );
    let cfg_path = write_config(tmp.path(), &cfg);
    let engine = EngineProc::start(&cfg_path, tmp.path());
    let fsites: Vec<FileSite> = site_names
        .iter()
        .zip(&site_paths)
        .map(|(n, p)| FileSite::new(*n, p).unwrap())
        .collect();
    wait_until("every replica", Duration::from_secs(120), || {
        fsites
            .iter()
            .all(|s| objects.iter().all(|(k, d)| site_has(s, k, d)))
    });
    // A clean stop drains the status topic.
    let status = engine.stop();
    assert!(status.success(), "exit status {status:?}");

    let store = open_store(&data);
    // Sidecars carry the REPLICA markers and the source version id.
    for s in &fsites {
        for key in objects.keys() {
            let side: Sidecar =
                serde_json::from_slice(&std::fs::read(s.sidecar_of(&at(key))).unwrap()).unwrap();
            let v = version_of(&src, "photos", key);
            assert_eq!(side.replication_status, "REPLICA");
            assert_eq!(side.version_id, v.version_id);
            assert_eq!(side.key, *key);
            assert_eq!(side.bucket, "photos");
            let data = &objects[key];
            assert_eq!(side.size, data.len() as u64);
            assert_eq!(
                side.md5,
                backbeat::checksum::hex(&backbeat::checksum::md5(data))
            );
        }
    }
    // Allow the last status updates to land (they may be after the last replica appears): the
    // clean stop drains the status topic, so everything is COMPLETED now.
    for key in objects.keys() {
        let v = version_of(&src, "photos", key);
        let info = store
            .key_state("photos", key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no record for {v}"));
        assert_eq!(info.version_id, v.version_id);
        assert_eq!(
            info.status(),
            Some(ReplicationStatus::Completed),
            "{v}: {info:?}"
        );
        for n in site_names {
            assert_eq!(
                info.site(n).map(|s| s.status),
                Some(ReplicationStatus::Completed)
            );
        }
    }
    let total: u64 = objects.values().map(|d| d.len() as u64).sum();
    for n in site_names {
        assert_eq!(store.pending(n).await.unwrap(), (0, 0), "pending of {n}");
        assert_eq!(metric_total(&store, n, Metric::Ops).await, 200);
        assert_eq!(metric_total(&store, n, Metric::OpsDone).await, 200);
        assert_eq!(metric_total(&store, n, Metric::Bytes).await, total);
        assert_eq!(metric_total(&store, n, Metric::BytesDone).await, total);
        assert_eq!(metric_total(&store, n, Metric::OpsFail).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_rule_or_disabled_rule_replicates_nothing() {
    for rules in [
        rule("photos", "", &["site-a"], false),
        rule("photos", "only-this/", &["site-a"], true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("photos");
        let data = tmp.path().join("data");
        let site = tmp.path().join("site-a");
        for i in 0..5 {
            put_file(&src, &format!("k{i}"), b"hello");
        }
        let cfg = config(&data, &src, &file_site("site-a", &site), &rules, "");
        let engine = EngineProc::start(&write_config(tmp.path(), &cfg), tmp.path());
        engine.wait_log("Scan pass done.", Duration::from_secs(30));
        assert!(engine.stop().success());
        let fs = FileSite::new("site-a", &site).unwrap();
        let store = open_store(&data);
        for i in 0..5 {
            assert!(
                !fs.path_of(&at(&format!("k{i}"))).exists(),
                "rules {rules}: k{i} replicated"
            );
            let k = format!("k{i}");
            assert!(store.key_state("photos", &k).await.unwrap().is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_site_error_gives_failed_with_exact_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let data = tmp.path().join("data");
    let site = tmp.path().join("site-a");
    put_file(&src, "d/x", b"needs d as a directory");
    put_file(&src, "ok", b"fine");
    // The site already has a file where the key needs a directory: the site rejects the key.
    put_file(&site, "photos/d", b"in the way");
    let cfg = config(
        &data,
        &src,
        &file_site("site-a", &site),
        &rule("photos", "", &["site-a"], true),
        "",
    );
    let engine = EngineProc::start(&write_config(tmp.path(), &cfg), tmp.path());
    engine.wait_log("Replication failed.", Duration::from_secs(60));
    let fs = FileSite::new("site-a", &site).unwrap();
    wait_until("the other replica", Duration::from_secs(30), || {
        fs.sidecar_of(&at("ok")).exists()
    });
    assert!(engine.stop().success());
    let store = open_store(&data);
    let v = version_of(&src, "photos", "d/x");
    let info = store.key_state("photos", "d/x").await.unwrap().unwrap();
    assert_eq!(
        info.site("site-a").map(|s| s.status),
        Some(ReplicationStatus::Failed)
    );
    assert_eq!(info.status(), Some(ReplicationStatus::Failed));
    let failed = store.failed_entry("site-a", &v).await.unwrap().unwrap();
    assert_eq!(failed.info.reason, backbeat::error::FailureReason::Rejected);
    assert_eq!(store.pending("site-a").await.unwrap(), (0, 0));
    assert_eq!(metric_total(&store, "site-a", Metric::OpsFail).await, 1);
    assert_eq!(metric_total(&store, "site-a", Metric::OpsDone).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_version_of_a_key_replaces_the_older_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let data = tmp.path().join("data");
    let site = tmp.path().join("site-a");
    put_file(&src, "doc/a b.txt", b"version one");
    let v1 = version_of(&src, "photos", "doc/a b.txt");
    let cfg = config(
        &data,
        &src,
        &file_site("site-a", &site),
        &rule("photos", "", &["site-a"], true),
        "",
    );
    let engine = EngineProc::start(&write_config(tmp.path(), &cfg), tmp.path());
    let fs = FileSite::new("site-a", &site).unwrap();
    wait_until("v1 replica", Duration::from_secs(30), || {
        site_has(&fs, "doc/a b.txt", b"version one")
    });
    // A new version (different size, so a different version id even within one mtime tick).
    put_file(&src, "doc/a b.txt", b"version two, longer");
    let v2 = version_of(&src, "photos", "doc/a b.txt");
    assert_ne!(v1, v2);
    wait_until("v2 replica", Duration::from_secs(30), || {
        site_has(&fs, "doc/a b.txt", b"version two, longer")
            && std::fs::read(fs.sidecar_of(&at("doc/a b.txt")))
                .map(|b| {
                    serde_json::from_slice::<Sidecar>(&b)
                        .map(|s| s.version_id == v2.version_id)
                        .unwrap_or(false)
                })
                .unwrap_or(false)
    });
    assert!(engine.stop().success());
    let store = open_store(&data);
    // One record per key: the newest version's, COMPLETED.
    let info = store
        .key_state("photos", "doc/a b.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version_id, v2.version_id);
    assert_eq!(info.status(), Some(ReplicationStatus::Completed));
}
