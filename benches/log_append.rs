//! Log benchmarks (criterion): appends from 16 concurrent producers, in batches of 100 and as
//! single records, in each durability mode; the raw sled baseline (same records, one flush per
//! 1,000 inserts); one flush alone; the consume rate. Records per flush are printed for each
//! append run, since with ~4 ms per fsync they decide the rate.
//!
//! `cargo bench --bench log_append`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backbeat::durability::{Durability, SledDb};
use backbeat::log::{Log, Record, SledLog};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const PRODUCERS: usize = 16;
const RECORD_BYTES: usize = 500;

fn record(p: usize, i: u64) -> Record {
    let mut value = format!("producer-{p}-record-{i}-").into_bytes();
    value.resize(RECORD_BYTES, b'x');
    Record {
        key: format!("bucket/key-{p}-{}", i % 50).into_bytes(),
        value,
        timestamp_ms: i,
    }
}

fn open(mode: Durability) -> (tempfile::TempDir, SledLog) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = SledDb::open(dir.path(), mode, Duration::from_millis(100)).expect("open");
    let log = SledLog::open(db).expect("log");
    (dir, log)
}

/// Runs `rounds` appends of `batch` records from each of 16 producers; returns the elapsed time.
async fn run_producers(log: &SledLog, rounds: u64, batch: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(PRODUCERS);
    for p in 0..PRODUCERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let recs = (0..batch as u64)
                    .map(|i| record(p, r * batch as u64 + i))
                    .collect();
                log.append("bench", recs).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer");
    }
    start.elapsed()
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    for (label, batch) in [("batch100", 100usize), ("single", 1usize)] {
        let mut group = c.benchmark_group(format!("append_16_producers_{label}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .warm_up_time(Duration::from_secs(1));
        group.throughput(Throughput::Elements((PRODUCERS * batch) as u64));
        for mode in [Durability::Every, Durability::Group, Durability::Interval] {
            let (_dir, log) = open(mode);
            rt.block_on(log.create_topic("bench", 8)).expect("topic");
            let before = log.db().stats();
            let appended_before = log.appended_records();
            group.bench_with_input(BenchmarkId::from_parameter(mode.as_str()), &mode, |b, _| {
                b.iter_custom(|iters| rt.block_on(run_producers(&log, iters, batch)))
            });
            let after = log.db().stats();
            let records = log.appended_records() - appended_before;
            let flushes = (after.flushes - before.flushes).max(1);
            eprintln!(
                "append {label} {}: {records} records, {flushes} flushes, {:.1} records per flush",
                mode.as_str(),
                records as f64 / flushes as f64
            );
        }
        group.finish();
    }
}

fn raw_sled_baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_sled_baseline");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .expect("sled");
    let tree = db.open_tree("raw").expect("tree");
    let mut next: u64 = 0;
    group.bench_function("insert_1000_then_flush", |b| {
        b.iter(|| {
            for i in 0..1_000u64 {
                let r = record((i % PRODUCERS as u64) as usize, next);
                tree.insert(next.to_be_bytes(), backbeat::log::codec::encode(&r))
                    .expect("insert");
                next += 1;
                let _ = i;
            }
            db.flush().expect("flush");
        })
    });
    group.finish();
    let mut group = c.benchmark_group("flush_alone");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group.bench_function("insert_1_then_flush", |b| {
        b.iter(|| {
            tree.insert(next.to_be_bytes(), &b"x"[..]).expect("insert");
            next += 1;
            db.flush().expect("flush");
        })
    });
    group.finish();
}

fn consume(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let (_dir, log) = open(Durability::Group);
    let log = Arc::new(log);
    rt.block_on(log.create_topic("bench", 8)).expect("topic");
    let per_iter: u64 = 10_000;
    let mut group = c.benchmark_group("consume");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(per_iter));
    let mut consumer = rt
        .block_on(log.consumer("bench", "bench-group"))
        .expect("consumer");
    group.bench_function("poll_and_commit_10000", |b| {
        b.iter_custom(|iters| {
            // Fill outside the timed part.
            for _ in 0..iters {
                let recs: Vec<Record> = (0..per_iter)
                    .map(|i| record((i % 16) as usize, i))
                    .collect();
                rt.block_on(log.append("bench", recs)).expect("fill");
            }
            let start = Instant::now();
            rt.block_on(async {
                let mut left = iters * per_iter;
                while left > 0 {
                    let ds = consumer
                        .poll(1_000, Duration::from_secs(1))
                        .await
                        .expect("poll");
                    left = left.saturating_sub(ds.len() as u64);
                    let mut last = std::collections::BTreeMap::new();
                    for d in &ds {
                        last.insert(d.position.partition, d.position.offset + 1);
                    }
                    let pos: Vec<_> = last
                        .into_iter()
                        .map(|(partition, offset)| backbeat::log::Position { partition, offset })
                        .collect();
                    consumer.commit(&pos).await.expect("commit");
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, append, raw_sled_baseline, consume);
criterion_main!(benches);
