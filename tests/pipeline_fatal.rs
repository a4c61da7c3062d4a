//! A fatal failure of a pipeline stage: the state store's disk fills up in the middle of a
//! run. The engine must stop with exit code 1 (so systemd restarts it), never panic or hang,
//! and once space is back a restart replicates every version, with nothing lost.
//!
//! Needs root to mount a small tmpfs for the engine's data; elsewhere the test says it is
//! skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pipeline_support;

use std::time::{Duration, Instant};

use backbeat::model::{ReplicationStatus, VersionRef};
use backbeat::site::file::FileSite;
use backbeat::source::file::FileSource;
use backbeat::source::Source;
use backbeat::store::StateStore;
use common::tmpfs::{fill, mount_tmpfs};
use pipeline_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_disk_stops_the_engine_with_exit_1_and_a_restart_loses_nothing() {
    let Some(mount) = mount_tmpfs("24m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let site_dir = tmp.path().join("site");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..200 {
        put_file(&src, &format!("before/{i:04}"), &bytes_for(i, 8 * 1024));
    }
    let data = mount.path().join("data");
    let cfg = config(
        &data,
        &src,
        &file_site("local-1", &site_dir),
        &rule("photos", "", &["local-1"], true),
        "",
    );
    let cfg_path = write_config(tmp.path(), &cfg);
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let site = FileSite::new("local-1", &site_dir).unwrap();

    let mut engine = EngineProc::start(&cfg_path, &logs);
    wait_until("the first replicas", Duration::from_secs(60), || {
        (0..200).any(|i| site.path_of(&format!("photos/before/{i:04}")).exists())
    });
    // The disk of the log and the store fills up; new versions keep coming.
    fill(mount.path());
    let start = Instant::now();
    let mut n = 0u64;
    let status = loop {
        if let Some(s) = engine.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the engine did not stop on a full disk:\n{}",
            engine.log()
        );
        if n < 2_000 {
            put_file(
                &src,
                &format!("during/{n:05}"),
                &bytes_for(1000 + n, 8 * 1024),
            );
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let log = engine.log();
    eprintln!(
        "{n} versions added on a full disk; the engine stopped after {:?}; errors:\n{}",
        start.elapsed(),
        log.lines()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(status.code(), Some(1), "exit status {status:?}:\n{log}");
    assert!(!log.contains("panicked"), "a panic:\n{log}");
    assert!(log.contains("ERROR"), "the failure is logged:\n{log}");
    drop(engine);

    // Space is back: a restart catches up with everything.
    std::fs::remove_file(mount.path().join("filler")).unwrap();
    engine = EngineProc::start(&cfg_path, &logs);
    let source = FileSource::new(&src).unwrap();
    let mut versions: Vec<VersionRef> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = source
            .list_current("photos", cursor.as_deref())
            .await
            .unwrap();
        versions.extend(page.items.into_iter().map(|v| v.version));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(versions.len() as u64, 200 + n);
    wait_until("every file at the site", Duration::from_secs(120), || {
        versions
            .iter()
            .all(|v| site.sidecar_of(&format!("photos/{}", v.key)).exists())
    });
    assert!(engine.stop().success());
    let store = open_store(&data);
    for v in &versions {
        assert_eq!(
            std::fs::read(site.path_of(&format!("photos/{}", v.key))).unwrap(),
            std::fs::read(src.join(&v.key)).unwrap(),
            "{v}"
        );
        let info = store
            .key_state("photos", &v.key)
            .await
            .unwrap()
            .expect("tracked");
        assert_eq!(info.version_id, v.version_id);
        assert_eq!(info.status(), Some(ReplicationStatus::Completed), "{v}");
    }
}
