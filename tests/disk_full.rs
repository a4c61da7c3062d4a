//! Disk full: the log refuses writes with an error (never a panic), the healthcheck answers
//! 500, and every record acknowledged before is still there once space is back.
//!
//! Needs root to mount a small tmpfs; elsewhere the test says it is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use backbeat::app::Engine;
use backbeat::config::Config;
use backbeat::log::{Record, TOPIC_REPLICATION};
use common::tmpfs::{fill, mount_tmpfs};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_writes_reports_unhealthy_and_loses_nothing() {
    let Some(mount) = mount_tmpfs("48m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = mount.path().join("data");
    let mut cfg = Config::default();
    cfg.server.port = 0;
    cfg.storage.path = data.clone();
    let engine = Engine::start_default_clock(cfg.clone()).await.unwrap();
    let (code, _) = get(engine.api_addr, "/_/backbeat/api/healthcheck").await;
    assert_eq!(code, 200);
    let mut acked = Vec::new();
    for i in 0..50u32 {
        let r = Record::new(format!("k{i}"), vec![b'a'; 1000]);
        let pos = engine.log.append(TOPIC_REPLICATION, vec![r]).await.unwrap();
        acked.push(pos[0]);
    }
    fill(mount.path());
    // Keep writing until the full disk surfaces as an error (sled buffers some writes).
    let mut failed = false;
    for i in 0..20_000u32 {
        let recs = (0..10)
            .map(|j| Record::new(format!("k{i}-{j}"), vec![b'b'; 4000]))
            .collect();
        match engine.log.append(TOPIC_REPLICATION, recs).await {
            Ok(pos) => acked.extend(pos),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "writes on a full disk must fail");
    assert!(
        engine.log.check().is_err(),
        "the log refuses further writes"
    );
    let (code, body) = get(engine.api_addr, "/_/backbeat/api/healthcheck").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("\"InternalError\":true"), "{body}");
    // Free the space, restart on the same directory: every acknowledged record is there.
    std::fs::remove_file(mount.path().join("filler")).unwrap();
    engine.stop().await;
    let mut restarted = None;
    for _ in 0..100 {
        match Engine::start_default_clock(cfg.clone()).await {
            Ok(e) => {
                restarted = Some(e);
                break;
            }
            // The stopped engine's last handles may take a moment to close the database.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let engine = restarted.expect("restart after the disk was freed");
    let mut c = engine
        .log
        .consumer(TOPIC_REPLICATION, "verify")
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    loop {
        let got = c.poll(10_000, Duration::from_millis(100)).await.unwrap();
        if got.is_empty() {
            break;
        }
        seen.extend(got.into_iter().map(|d| d.position));
    }
    for p in &acked {
        assert!(seen.contains(p), "acknowledged record {p:?} lost");
    }
    eprintln!(
        "disk full: {} acknowledged records all present after restart",
        acked.len()
    );
    let (code, _) = get(engine.api_addr, "/_/backbeat/api/healthcheck").await;
    assert_eq!(code, 200);
    engine.stop().await;
}
