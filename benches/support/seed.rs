//! Seeding a state store for the API load bench: what an operator's dashboard reads (failed
//! entries with their reasons and errors, a day of metric buckets, some pending work), written
//! through the store's public operations. Bench-only: the release binary has no seeding
//! command (issue 14), and tests seed through their own helpers.

/// Writes what an API under load reads: `per_site` failed versions for each of `sites`
/// (each with its key's record and a typed reason), spread evenly over the last 24 hours,
/// newest first; one
/// sample of every metric in each 5-minute bucket of the last 24 hours; some pending work.
/// Returns how many failed entries were written.
///
/// # Errors
/// A description of the store's failure.
pub async fn seed_load(
    store: &dyn backbeat::store::StateStore,
    sites: &[String],
    per_site: u64,
) -> Result<u64, String> {
    use backbeat::error::FailureReason;
    use backbeat::model::VersionRef;
    use backbeat::store::{Metric, StoreOp, METRICS_BUCKET_MS};
    use backbeat::transitions::{FailedInfo, KeyChange, QueuedVersion, SiteOutcome};

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
