//! `kill -9` of the engine in the middle of a run, then a restart: every version ends
//! COMPLETED at every site, and the counters are exact (guards make replays no-ops).

#![allow(clippy::unwrap_used)]

mod pipeline_support;

use std::time::Duration;

use backbeat::model::{ReplicationStatus, VersionRef};
use backbeat::site::file::FileSite;
use backbeat::source::file::version_id_of;
use backbeat::store::{Metric, StateStore};
use pipeline_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_run_then_restart_completes_every_version_at_every_site() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let data = tmp.path().join("data");
    let names = ["site-a", "site-b", "site-c"];
    let paths: Vec<_> = names.iter().map(|n| tmp.path().join(n)).collect();
    let mut objects = Vec::new();
    for i in 0..100usize {
        let key = tricky_key(i);
        let body = bytes_for(i as u64 + 7, 256 * 1024 + i);
        put_file(&src, &key, &body);
        objects.push((key, body));
    }
    let sites: String = names
        .iter()
        .zip(&paths)
        .map(|(n, p)| file_site(n, p))
        .collect();
    let cfg = config(&data, &src, &sites, &rule("photos", "", &names, true), "");
    let cfg_path = write_config(tmp.path(), &cfg);
    let fsites: Vec<FileSite> = names
        .iter()
        .zip(&paths)
        .map(|(n, p)| FileSite::new(*n, p).unwrap())
        .collect();
    let done = |s: &FileSite| {
        objects
            .iter()
            .filter(|(k, d)| {
                std::fs::read(s.path_of(&format!("photos/{k}")))
                    .map(|x| x == *d)
                    .unwrap_or(false)
            })
            .count()
    };

    let engine = EngineProc::start(&cfg_path, tmp.path());
    wait_until("some replicas", Duration::from_secs(60), || {
        done(&fsites[0]) >= 10
    });
    let before: Vec<usize> = fsites.iter().map(done).collect();
    engine.kill9();
    eprintln!("replicas per site at kill -9: {before:?}");

    let engine = EngineProc::start(&cfg_path, tmp.path());
    wait_until(
        "every replica after restart",
        Duration::from_secs(120),
        || fsites.iter().all(|s| done(s) == objects.len()),
    );
    assert!(engine.stop().success());

    let store = open_store(&data);
    for (key, _) in &objects {
        let v = VersionRef::new(
            "photos",
            key.clone(),
            version_id_of(&std::fs::metadata(src.join(key)).unwrap()),
        );
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
        for n in names {
            assert_eq!(
                info.site(n).map(|s| s.status),
                Some(ReplicationStatus::Completed),
                "{v} at {n}"
            );
        }
    }
    for n in names {
        let sum = |m| metric_total(&store, n, m);
        assert_eq!(store.pending(n).await.unwrap(), (0, 0), "pending of {n}");
        assert_eq!(sum(Metric::Ops).await, 100, "ops of {n}");
        assert_eq!(sum(Metric::OpsDone).await, 100, "opsdone of {n}");
        assert_eq!(sum(Metric::OpsFail).await, 0, "opsfail of {n}");
    }
}
