//! Crash test: a child process appends and commits in a loop, printing every acknowledgement;
//! it is killed with SIGKILL at random moments, at least 50 times, and after each kill the log
//! is reopened and checked: every acknowledged record is present once at its offset, every
//! acknowledged commit holds, and nothing is torn (every record passes its checksum).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backbeat::durability::{Durability, SledDb};
use backbeat::log::{Log, SledLog};
use backbeat::testkit::{torture_value, TORTURE_GROUP, TORTURE_TOPIC};

const CYCLES: usize = 50;

#[derive(Default)]
struct Acked {
    /// (partition, offset) -> record number.
    records: HashMap<(u32, u64), u64>,
    /// partition -> highest committed offset acknowledged.
    commits: BTreeMap<u32, u64>,
    /// First record number of the next run.
    next_n: u64,
}

/// A small deterministic generator (xorshift) so a failing run can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn run_cycle(dir: &Path, acked: &mut Acked, kill_after: Duration, durability: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["log-torture", "--path"])
        .arg(dir)
        .args([
            "--first",
            &acked.next_n.to_string(),
            "--durability",
            durability,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    // Wait for the first acknowledgement so every kill lands in the middle of real work.
    let started = Instant::now();
    let mut lines = Vec::new();
    while lines.is_empty() && started.elapsed() < Duration::from_secs(20) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            lines.push(l);
        }
    }
    assert!(!lines.is_empty(), "child acknowledged nothing within 20 s");
    std::thread::sleep(kill_after);
    // SIGKILL: no chance to flush or clean up.
    child.kill().expect("kill -9");
    let _ = child.wait();
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["A", p, o, n] => {
                let (p, o, n): (u32, u64, u64) =
                    (p.parse().unwrap(), o.parse().unwrap(), n.parse().unwrap());
                acked.records.insert((p, o), n);
            }
            ["C", p, o] => {
                let (p, o): (u32, u64) = (p.parse().unwrap(), o.parse().unwrap());
                let e = acked.commits.entry(p).or_insert(0);
                *e = (*e).max(o);
            }
            // A line cut by the kill is not an acknowledgement.
            _ => {}
        }
    }
}

async fn verify(dir: &Path, acked: &Acked, cycle: usize) {
    let mut db = None;
    for _ in 0..200 {
        if let Ok(d) = SledDb::open(dir, Durability::Group, Duration::from_millis(20)) {
            db = Some(d);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = SledLog::open(db.expect("reopen after kill")).expect("open log");
    // Read everything through a throw-away group (every record is checksummed on the way).
    let group = format!("verify-{cycle}");
    let mut c = log.consumer(TORTURE_TOPIC, &group).await.expect("consumer");
    let mut present: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
    let mut seen_n: HashMap<Vec<u8>, (u32, u64)> = HashMap::new();
    loop {
        let got = c
            .poll(10_000, Duration::from_millis(0))
            .await
            .expect("no torn or corrupt record");
        if got.is_empty() {
            break;
        }
        for d in got {
            let key = (d.position.partition, d.position.offset);
            if let Some(prev) = seen_n.insert(d.record.value.clone(), key) {
                panic!("cycle {cycle}: record stored twice, at {prev:?} and {key:?}");
            }
            present.insert(key, d.record.value);
        }
    }
    for (pos, n) in &acked.records {
        match present.get(pos) {
            Some(v) => assert_eq!(
                v,
                &torture_value(*n),
                "cycle {cycle}: record at {pos:?} differs"
            ),
            None => panic!("cycle {cycle}: acknowledged record {n} at {pos:?} is missing"),
        }
    }
    let lags = log.lag(TORTURE_TOPIC, TORTURE_GROUP).await.expect("lag");
    for l in lags {
        let acked_commit = acked.commits.get(&l.partition).copied().unwrap_or(0);
        assert!(
            l.committed >= acked_commit,
            "cycle {cycle}: partition {} committed {} below acknowledged {}",
            l.partition,
            l.committed,
            acked_commit
        );
    }
    drop(c);
    log.delete_group(TORTURE_TOPIC, &group)
        .await
        .expect("delete group");
}

#[test]
fn acknowledged_records_and_commits_survive_kill_9() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for durability in ["group", "every"] {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = Acked::default();
        let cycles = if durability == "group" { CYCLES } else { 10 };
        for cycle in 0..cycles {
            let kill_after = Duration::from_millis(5 + rng.next() % 250);
            // Each run numbers its records from its own range: records written but not yet
            // acknowledged when the kill came are durable too, and must not be confused with
            // the next run's.
            acked.next_n = (cycle as u64 + 1) * 100_000_000;
            run_cycle(dir.path(), &mut acked, kill_after, durability);
            rt.block_on(verify(dir.path(), &acked, cycle));
        }
        eprintln!(
            "{durability}: {cycles} kills, {} acknowledged records and {} partitions of commits verified",
            acked.records.len(),
            acked.commits.len()
        );
        assert!(acked.records.len() > 1000, "the child did real work");
    }
}
