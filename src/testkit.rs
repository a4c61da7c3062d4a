//! Helpers for tests that need a real separate process (the log crash test).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::durability::{Durability, SledDb};
use crate::log::{Log, Record, SledLog};

/// Topic used by the crash test.
pub const TORTURE_TOPIC: &str = "torture";
/// Group used by the crash test.
pub const TORTURE_GROUP: &str = "torture-group";
/// Partitions of the crash-test topic.
pub const TORTURE_PARTITIONS: u32 = 4;

/// The value written for record number `n`.
pub fn torture_value(n: u64) -> Vec<u8> {
    format!("record-{n:012}-{}", "x".repeat((n % 97) as usize)).into_bytes()
}

/// Appends batches and commits consumed offsets forever, printing to stdout, after each
/// acknowledgement: `A <partition> <offset> <n>` per appended record and `C <partition>
/// <offset>` per committed offset.
///
/// # Errors
/// A description of the failure.
pub async fn log_torture(path: &Path, first: u64, durability: &str) -> Result<(), String> {
    let mode = match durability {
        "every" => Durability::Every,
        "interval" => Durability::Interval,
        _ => Durability::Group,
    };
    // The parent may still be closing its own handle on the directory: retry for a while.
    let mut attempt = 0;
    let db = loop {
        match SledDb::open(path, mode, Duration::from_millis(50)) {
            Ok(db) => break db,
            Err(e) if attempt >= 250 => return Err(crate::error::chain(&e)),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let log = SledLog::open(db).map_err(|e| crate::error::chain(&e))?;
    log.create_topic(TORTURE_TOPIC, TORTURE_PARTITIONS)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let mut consumer = log
        .consumer(TORTURE_TOPIC, TORTURE_GROUP)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let mut n = first;
    let mut i: u64 = 0;
    let stdout = std::io::stdout();
    loop {
        i += 1;
        let size = 1 + (i * 7 % 23) as usize;
        let records: Vec<Record> = (0..size as u64)
            .map(|j| Record {
                key: format!("key-{}", (n + j) % 13).into_bytes(),
                value: torture_value(n + j),
                timestamp_ms: 0,
            })
            .collect();
        let positions = log
            .append(TORTURE_TOPIC, records)
            .await
            .map_err(|e| crate::error::chain(&e))?;
        {
            let mut out = stdout.lock();
            for (j, p) in positions.iter().enumerate() {
                let _ = writeln!(out, "A {} {} {}", p.partition, p.offset, n + j as u64);
            }
            let _ = out.flush();
        }
        n += size as u64;
        if i.is_multiple_of(3) {
            let got = consumer
                .poll(64, Duration::from_millis(0))
                .await
                .map_err(|e| crate::error::chain(&e))?;
            let mut last: std::collections::BTreeMap<u32, u64> = Default::default();
            for d in &got {
                last.insert(d.position.partition, d.position.offset + 1);
            }
            let commits: Vec<crate::log::Position> = last
                .into_iter()
                .map(|(partition, offset)| crate::log::Position { partition, offset })
                .collect();
            consumer
                .commit(&commits)
                .await
                .map_err(|e| crate::error::chain(&e))?;
            let mut out = stdout.lock();
            for c in &commits {
                let _ = writeln!(out, "C {} {}", c.partition, c.offset);
            }
            let _ = out.flush();
        }
    }
}
