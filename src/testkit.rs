//! Helpers for tests that need a real separate process (crash tests, load tests).

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

/// Seeds the state store under `config.storage.path` with [`seed_load`] (`count` failed
/// versions per configured site), for load measurements of the API with the `seed-failed`
/// command. Returns how many failed entries were written.
///
/// # Errors
/// A description of the failure.
pub async fn seed_failed(config: &crate::config::Config, count: u64) -> Result<u64, String> {
    use crate::store::SledStore;

    let st = &config.storage;
    std::fs::create_dir_all(&st.path).map_err(|e| e.to_string())?;
    let db = SledDb::open(
        &st.path,
        st.durability,
        Duration::from_millis(st.flush_interval_ms),
    )
    .map_err(|e| e.to_string())?;
    let store = SledStore::open(db.clone(), std::sync::Arc::new(crate::clock::SystemClock))
        .map_err(|e| e.to_string())?;
    let sites: Vec<String> = config.sites.iter().map(|s| s.name.clone()).collect();
    let written = seed_load(&store, &sites, count).await?;
    db.flush_now().await.map_err(|e| e.to_string())?;
    Ok(written)
}

/// Writes what an API under load reads: `per_site` failed versions for each of `sites`
/// (each with its key's record and a typed reason), spread evenly over the last 24 hours,
/// newest first; one
/// sample of every metric in each 5-minute bucket of the last 24 hours; some pending work.
/// Returns how many failed entries were written.
///
/// # Errors
/// A description of the store's failure.
pub async fn seed_load(
    store: &dyn crate::store::StateStore,
    sites: &[String],
    per_site: u64,
) -> Result<u64, String> {
    use crate::error::FailureReason;
    use crate::model::VersionRef;
    use crate::store::{Metric, StoreOp, METRICS_BUCKET_MS};
    use crate::transitions::{FailedInfo, KeyChange, QueuedVersion, SiteOutcome};

    const DAY_MS: u64 = 24 * 3_600_000;
    let now = store.now_ms();
    let mut ops = Vec::new();
    let flush = |ops: Vec<StoreOp>| async move {
        store
            .apply(ops)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for site in sites {
        for i in 0..per_site {
            let v = VersionRef::new(
                "load",
                format!("{site}/dir-{}/key-{i}", i % 97),
                format!("v{i}"),
            );
            let at = now.saturating_sub(i * DAY_MS / per_site.max(1));
            ops.push(StoreOp::key(
                &v,
                KeyChange::Queued {
                    version: QueuedVersion {
                        version_id: v.version_id.clone(),
                        etag: format!("etag-{i}"),
                        size: 1000 + i,
                        written_ms: at,
                        deleted: false,
                        backfill: false,
                    },
                    sites: vec![site.clone()],
                },
            ));
            ops.push(StoreOp::key(
                &v,
                KeyChange::Outcome {
                    version_id: v.version_id.clone(),
                    site: site.clone(),
                    outcome: SiteOutcome::Failed(FailedInfo {
                        size: 1000 + i,
                        written_ms: at,
                        reason: FailureReason::ALL[(i as usize) % FailureReason::ALL.len()],
                        attempts: 30,
                        last_error: format!(
                            "transient failure talking to site {site}: connection refused (attempt {i})"
                        ),
                        last_attempt_ms: at,
                    }),
                },
            ));
            if ops.len() >= 1000 {
                flush(std::mem::take(&mut ops)).await?;
            }
        }
        for b in 0..DAY_MS / METRICS_BUCKET_MS {
            for (metric, value) in [
                (Metric::Ops, 40 + b),
                (Metric::Bytes, 40_960 + b),
                (Metric::OpsDone, 35 + b),
                (Metric::BytesDone, 35_840 + b),
                (Metric::OpsFail, 1),
                (Metric::BytesFail, 1024),
            ] {
                ops.push(StoreOp::AddMetric {
                    site: site.clone(),
                    metric,
                    value,
                    at_ms: now.saturating_sub(b * METRICS_BUCKET_MS),
                });
            }
        }
        for i in 0..12u64 {
            let v = VersionRef::new("load", format!("{site}/pending-{i}"), "p1");
            ops.push(StoreOp::key(
                &v,
                KeyChange::Queued {
                    version: QueuedVersion {
                        version_id: v.version_id.clone(),
                        etag: "pending".into(),
                        size: 1024,
                        written_ms: now,
                        deleted: false,
                        backfill: false,
                    },
                    sites: vec![site.clone()],
                },
            ));
        }
        flush(std::mem::take(&mut ops)).await?;
    }
    Ok(per_site * sites.len() as u64)
}
