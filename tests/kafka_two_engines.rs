//! Two engine processes on one Kafka log (a Tansu broker). Engine A runs every stage (file
//! source, populator, replication, status) on its own sled store; engine B runs only
//! `stages = ["replication"]`, with the same sites, topics and consumer groups, on another
//! sled store. Each site's consumer group splits its partitions between A and B; B is killed
//! with `kill -9` in the middle of a batch; the groups move B's partitions to A, and every
//! version ends COMPLETED at every site in A's store, the newest bytes at the sites, and each
//! version counted once.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kafka_support;
mod pipeline_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backbeat::log::replication_group;

use common::peers::{free_port, start_tansu};
use kafka_support::*;
use pipeline_support::*;

const SITES: [&str; 2] = ["site-a", "site-b"];
const PREFIX: &str = "two-";
const PARTITIONS: u32 = 4;
const LIMIT: Duration = Duration::from_secs(60);

/// The partitions of Kafka group `group` an engine holds now, from its "Kafka partitions
/// rebalanced." log lines (an eager rebalance revokes everything, then assigns).
fn held(log: &str, group: &str) -> BTreeSet<u32> {
    let tag = format!("group={group} assigned=");
    let mut now = BTreeSet::new();
    for line in log
        .lines()
        .filter(|l| l.contains("Kafka partitions rebalanced."))
    {
        let Some(i) = line.find(&tag) else { continue };
        let assigned = line[i + tag.len()..].starts_with("true");
        let parts: BTreeSet<u32> = line
            .split_once("partitions=[")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| list.split(", ").filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        if assigned {
            now = parts;
        } else {
            now.retain(|p| !parts.contains(p));
        }
    }
    now
}

fn site_groups() -> Vec<String> {
    SITES
        .iter()
        .map(|s| format!("{PREFIX}{}", replication_group(s)))
        .collect()
}

/// Waits until `cond` holds on the engines' logs, polling every 50 ms; panics after `limit`.
fn wait_logs(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_split_the_partitions_and_one_killed_mid_run_loses_nothing() {
    let tansu = start_tansu();
    let brokers = tansu.addr.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let src = root.join("photos");
    let staging = root.join("staging");
    let (dir_a, dir_b) = (root.join("engine-a"), root.join("engine-b"));
    for d in [&src, &staging, &dir_a, &dir_b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let paths: Vec<_> = SITES.iter().map(|n| root.join(n)).collect();
    let sites: String = SITES
        .iter()
        .zip(&paths)
        .map(|(n, p)| file_site(n, p))
        .collect();
    let rules = rule("photos", "", &SITES, true);
    let data_a = root.join("data-a");
    let (port_a, port_b) = (free_port(), free_port());
    let cfg_a = engine_config(
        &config(&data_a, &src, &sites, &rules, ""),
        port_a,
        Some(&brokers),
        PREFIX,
        None,
    );
    let cfg_b = engine_config(
        &config(&root.join("data-b"), &src, &sites, &rules, ""),
        port_b,
        Some(&brokers),
        PREFIX,
        Some(&["replication"]),
    );
    assert!(cfg_a.contains(&format!("partitions = {PARTITIONS}")));
    let a = EngineProc::start(&write_config(&dir_a, &cfg_a), &dir_a);
    // B logs each copy it makes ("Replicated.", debug).
    let b = EngineProc::start_with_log(
        &write_config(&dir_b, &cfg_b),
        &dir_b,
        "info,backbeat::pipeline::processor=debug",
    );
    let api_a: SocketAddr = format!("127.0.0.1:{port_a}").parse().unwrap();
    let groups = site_groups();
    let both_logs = || {
        format!(
            "--- A ---\n{}\n--- B ---\n{}",
            tail(&a.log(), 100),
            tail(&b.log(), 100)
        )
    };

    // Each site's group settles with both engines, each holding a disjoint share.
    let all: BTreeSet<u32> = (0..PARTITIONS).collect();
    wait_logs(
        "both engines holding partitions of every site group",
        LIMIT,
        || {
            let (la, lb) = (a.log(), b.log());
            groups.iter().all(|g| {
                let (pa, pb) = (held(&la, g), held(&lb, g));
                !pa.is_empty()
                    && !pb.is_empty()
                    && pa.is_disjoint(&pb)
                    && pa.union(&pb).copied().collect::<BTreeSet<_>>() == all
            })
        },
        both_logs,
    );
    let b_share: Vec<BTreeSet<u32>> = groups.iter().map(|g| held(&b.log(), g)).collect();
    eprintln!("B holds {b_share:?} of {groups:?}");

    // Batch 1: new objects, replicated by both engines.
    let mut versions: Vec<(String, String)> = Vec::new();
    let mut newest: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut put = |i: usize, seed: u64, len: usize, versions: &mut Vec<(String, String)>| {
        let key = tricky_key(i);
        let body = bytes_for(seed, len);
        versions.push((key.clone(), put_atomic(&staging, &src, &key, &body)));
        newest.insert(key, body);
    };
    for i in 0..100 {
        put(i, i as u64, 64 * 1024 + i * 101, &mut versions);
    }
    wait_completions(api_a, &SITES, versions.len() as u64, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; engine A:\n{}", tail(&a.log(), 200)));
    let b_batch1 = b.count_log("Replicated.");
    assert!(
        b_batch1 > 0,
        "engine B replicated nothing while it held partitions:\n{}",
        tail(&b.log(), 100)
    );

    // Batch 2: second versions of some keys and new objects; B is killed while it copies.
    for i in (0..100).step_by(5) {
        put(i, i as u64 + 1_000_000, 96 * 1024 + i, &mut versions);
    }
    for i in 100..160 {
        put(i, i as u64, 64 * 1024 + i * 101, &mut versions);
    }
    wait_logs(
        "engine B copying batch 2",
        LIMIT,
        || b.count_log("Replicated.") >= b_batch1 + 3,
        both_logs,
    );
    let b_done = b.count_log("Replicated.");
    let b_log = b.log();
    b.kill9();
    let done_at_kill = completions(api_a, SITES[0]).await;
    eprintln!(
        "B killed after {b_done} copies ({b_batch1} in batch 1); {done_at_kill} of {} versions \
         completed at {} then",
        versions.len(),
        SITES[0]
    );

    // Batch 3, after the kill: entries on B's former partitions wait for the groups to move
    // them to A.
    for i in 160..200 {
        put(i, i as u64, 64 * 1024 + i * 101, &mut versions);
    }
    wait_logs(
        "A holding every partition of every site group",
        LIMIT,
        || {
            let la = a.log();
            groups.iter().all(|g| held(&la, g) == all)
        },
        || tail(&a.log(), 100),
    );
    wait_completions(api_a, &SITES, versions.len() as u64, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; engine A:\n{}", tail(&a.log(), 200)));

    // Every version COMPLETED everywhere (A's API), the newest bytes at the sites.
    assert_completed(api_a, "photos", &versions, &SITES).await;
    assert_newest_bytes("photos", &SITES, &paths, &newest);
    let status = a.stop();
    assert!(status.success(), "exit status {status:?}");

    // Each version counted once per site, whoever copied it and however often.
    assert_counted_once(&data_a, &SITES, versions.len() as u64).await;
    assert!(
        b_log.contains("stages=replication"),
        "B ran only the replication stage"
    );
}
