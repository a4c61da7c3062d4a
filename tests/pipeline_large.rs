//! A 200 MiB object goes by multipart while the engine's peak RSS stays under 150 MB.

#![allow(clippy::unwrap_used)]

mod pipeline_support;

use std::io::{Read, Write};
use std::time::Duration;

use backbeat::model::{ReplicationStatus, VersionRef};
use backbeat::site::file::FileSite;
use backbeat::source::file::version_id_of;
use backbeat::store::{ObjectMetric, StateStore};
use pipeline_support::*;

const MIB: usize = 1024 * 1024;

fn block(i: usize) -> Vec<u8> {
    let mut b = bytes_for(3, MIB);
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_object_is_copied_by_multipart_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    let data = tmp.path().join("data");
    let site = tmp.path().join("site-a");
    std::fs::create_dir_all(&src).unwrap();
    // Written to a temporary name, then renamed, so the scanner never sees it half written.
    let tmp_file = tmp.path().join("big.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp_file).unwrap());
        for i in 0..200 {
            f.write_all(&block(i)).unwrap();
        }
        f.flush().unwrap();
    }
    std::fs::rename(&tmp_file, src.join("big.bin")).unwrap();
    let cfg = config(
        &data,
        &src,
        &file_site("site-a", &site),
        &rule("photos", "", &["site-a"], true),
        "",
    );
    let engine = EngineProc::start(&write_config(tmp.path(), &cfg), tmp.path());
    let fs = FileSite::new("site-a", &site).unwrap();
    wait_until("the replica", Duration::from_secs(300), || {
        fs.sidecar_of("photos/big.bin").exists()
            && std::fs::metadata(fs.path_of("photos/big.bin"))
                .map(|m| m.len() == 200 * MIB as u64)
                .unwrap_or(false)
    });
    let peak_kb = engine.peak_rss_kb();
    eprintln!(
        "engine peak RSS (VmHWM) while copying 200 MiB: {} MB",
        peak_kb / 1024
    );
    assert!(engine.stop().success());
    assert!(peak_kb > 0 && peak_kb < 150 * 1000, "peak RSS {peak_kb} kB");

    // Same bytes.
    let mut f = std::fs::File::open(fs.path_of("photos/big.bin")).unwrap();
    let mut buf = vec![0u8; MIB];
    for i in 0..200 {
        f.read_exact(&mut buf).unwrap();
        assert!(buf == block(i), "block {i} differs");
    }
    let store = open_store(&data);
    let v = VersionRef::new(
        "photos",
        "big.bin",
        version_id_of(&std::fs::metadata(src.join("big.bin")).unwrap()),
    );
    let info = store.key_state("photos", "big.bin").await.unwrap().unwrap();
    assert_eq!(info.version_id, v.version_id);
    assert_eq!(info.status(), Some(ReplicationStatus::Completed));
    // Object progress was recorded part by part: 13 parts of 16 MiB (the last one 8 MiB).
    let done: u64 = store
        .object_metric_buckets("site-a", &v, ObjectMetric::BytesDone)
        .await
        .unwrap()
        .iter()
        .sum();
    assert_eq!(done, 200 * MIB as u64);
}
