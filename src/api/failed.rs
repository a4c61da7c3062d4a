//! Failed CRR routes (reference 1.7-1.9): the paged listing of a site's failed set, the failed
//! entries of one version across sites, and the retry.
//!
//! A listing page holds the 100 newest entries at or below the marker, in the original's order:
//! hour by hour from the newest, and within an hour from the oldest entry (its `ZRANGE`).
//!
//! `Size` and `LastModified` come from the version's replication info in the store; an entry
//! whose info is missing is left out of the answer (the original drops entries whose metadata
//! fetch fails), so a page may hold fewer than 100 entries while `NextMarker` still leads on.
//!
//! A retry of `(version, site)`:
//! 1. takes the retry lock (with a TTL, so a crashed retry never blocks the version forever);
//! 2. without `ForceRetry`, the pair must be in the failed set;
//! 3. a FAILED site: one atomic update guarded by "site is FAILED" sets it PENDING and adds
//!    1 op / size to the pending counters, *keeping* the failed-set entry; then the retry entry
//!    is appended to `backbeat-replication`; then the failed-set entry is removed (guarded by
//!    "site is PENDING or COMPLETED", so a new failure recorded meanwhile stays listed).
//!    The site is PENDING before its entry is queued, so the status processor's "site is
//!    PENDING" guard always accepts the outcome, however fast the copy is. A crash between the
//!    steps leaves the version PENDING *and* listed as failed: the next retry of it (step 4)
//!    re-queues it, so a retry is never lost (at-least-once) and never counted twice;
//! 4. a PENDING site still in the failed set (an interrupted retry), or any PENDING site with
//!    `ForceRetry` (a stuck version): the entry is appended again, counters untouched;
//! 5. anything else (COMPLETED, unknown site, no info) is skipped; a COMPLETED site's stale
//!    failed entry is dropped;
//! 6. releases the lock.
//!
//! A skipped element is left out of the answer; the answer lists the re-queued ones with
//! `"ReplicationStatus": "PENDING"`.

use std::cmp::Reverse;
use std::collections::HashSet;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::error::ApiError;
use super::routes::{parse_marker, Route};
use super::state::AppState;
use crate::entry::QueueEntry;
use crate::log::TOPIC_REPLICATION;
use crate::model::{ReplicationInfo, ReplicationStatus, VersionRef, NULL_VERSION};
use crate::pipeline::transitions;
use crate::store::{failed_bucket, FailedEntry, StoreError, FAILED_PAGE};

/// Time-to-live of a retry lock.
pub const RETRY_LOCK_TTL_MS: u64 = 5 * 60 * 1000;

/// Retries processed at once.
const RETRY_CONCURRENCY: usize = 10;

fn version_json(v: &VersionRef, site: &str, info: &ReplicationInfo) -> Value {
    json!({
        "Bucket": v.bucket,
        "Key": v.key,
        "VersionId": v.version_id,
        "StorageClass": site,
        "Size": info.size,
        "LastModified": info.last_modified,
    })
}

async fn enrich(state: &AppState, entries: &[FailedEntry]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        match state.store.replication(&e.version).await {
            Ok(Some(info)) => out.push(version_json(&e.version, &e.site, &info)),
            Ok(None) => {
                tracing::debug!(site = %e.site, version = %e.version,
                    "Failed entry without replication info; left out of the listing.");
            }
            Err(e) => return Err(ApiError::from(e)),
        }
    }
    Ok(out)
}

/// `GET crr/failed?sitename=&marker=`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn list(state: &AppState, route: &Route) -> Result<Value, ApiError> {
    let empty = json!({"IsTruncated": false, "Versions": []});
    let Some(site) = route.query.get("sitename") else {
        return Ok(empty);
    };
    let marker = match route.query.get("marker").and_then(|m| parse_marker(m)) {
        None | Some(0) => None,
        Some(m) => match u64::try_from(m) {
            Ok(m) => Some(m),
            Err(_) => return Ok(empty),
        },
    };
    let mut page = match state.store.failed_page(site, marker, FAILED_PAGE).await {
        Ok(p) => p,
        Err(StoreError::Invalid(_)) => return Ok(empty),
        Err(e) => return Err(ApiError::from(e)),
    };
    // The original's order: hourly sets newest first, each set's members oldest first
    // (reference 1.7 step 3). The page holds the same entries either way.
    page.entries
        .sort_by_key(|e| (Reverse(failed_bucket(e.score_ms)), e.score_ms));
    let versions = enrich(state, &page.entries).await?;
    Ok(match page.next_marker {
        Some(m) => json!({"IsTruncated": true, "NextMarker": m, "Versions": versions}),
        None => json!({"IsTruncated": false, "Versions": versions}),
    })
}

/// `GET crr/failed/<bucket>/<key>?versionId=`: the version's failed entries, every site.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn of_version(state: &AppState, version: &VersionRef) -> Result<Value, ApiError> {
    let mut entries = Vec::new();
    for site in &state.sites {
        if let Some(e) = state.store.failed_entry(site, version).await? {
            entries.push(e);
        }
    }
    let versions = enrich(state, &entries).await?;
    Ok(json!({"IsTruncated": false, "Versions": versions}))
}

/// One validated element of a retry body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RetryRequest {
    /// The version.
    pub version: VersionRef,
    /// The site (`StorageClass`).
    pub site: String,
    /// Skip the failed-set check.
    pub force: bool,
}

fn malformed(detail: &str) -> ApiError {
    ApiError::malformed_post(detail)
}

/// Validates a retry body as the original does (all 400 MalformedPOSTRequest) and drops
/// duplicates (same bucket, key, version and site).
///
/// # Errors
/// 400 MalformedPOSTRequest describing the first problem.
pub fn parse_retry_body(body: &[u8]) -> Result<Vec<RetryRequest>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| malformed("body must be valid JSON"))?;
    let items = match value.as_array() {
        Some(a) if !a.is_empty() => a,
        _ => return Err(malformed("body must be a non-empty array")),
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in items {
        let Some(obj) = item.as_object() else {
            return Err(malformed("body must be an array of objects"));
        };
        let field = |name: &str| -> Result<String, ApiError> {
            match obj.get(name).and_then(Value::as_str) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(malformed(&format!("{name} must be a non-empty string"))),
            }
        };
        let bucket = field("Bucket")?;
        let key = field("Key")?;
        let site = field("StorageClass")?;
        let version_id = match obj.get("VersionId") {
            None | Some(Value::Null) => NULL_VERSION.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => NULL_VERSION.to_string(),
            Some(_) => return Err(malformed("VersionId must be a string")),
        };
        let force = match obj.get("ForceRetry") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(malformed("ForceRetry must be a boolean")),
        };
        let req = RetryRequest {
            version: VersionRef::new(bucket, key, version_id),
            site,
            force,
        };
        if seen.insert((req.version.clone(), req.site.clone())) {
            out.push(req);
        }
    }
    Ok(out)
}

fn lock_name(req: &RetryRequest) -> String {
    let mut name = format!("crr-retry\u{0}{}\u{0}", req.site);
    for b in req.version.encode() {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// `POST crr/failed`, with the body validated by [`parse_retry_body`].
///
/// # Errors
/// 500 InternalError when the log or store fails.
pub async fn retry(
    state: &std::sync::Arc<AppState>,
    requests: Vec<RetryRequest>,
) -> Result<Value, ApiError> {
    let mut results: Vec<Option<Value>> = vec![None; requests.len()];
    let mut set = JoinSet::new();
    let mut first_error = None;
    for (i, req) in requests.into_iter().enumerate() {
        if set.len() >= RETRY_CONCURRENCY {
            collect_one(&mut set, &mut results, &mut first_error).await;
        }
        let st = state.clone();
        set.spawn(async move { (i, retry_one(&st, &req).await) });
    }
    while !set.is_empty() {
        collect_one(&mut set, &mut results, &mut first_error).await;
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(Value::Array(results.into_iter().flatten().collect()))
}

type RetryOutcome = (usize, Result<Option<Value>, ApiError>);

async fn collect_one(
    set: &mut JoinSet<RetryOutcome>,
    results: &mut [Option<Value>],
    first_error: &mut Option<ApiError>,
) {
    match set.join_next().await {
        Some(Ok((i, Ok(v)))) => {
            if let Some(slot) = results.get_mut(i) {
                *slot = v;
            }
        }
        Some(Ok((_, Err(e)))) => {
            first_error.get_or_insert(e);
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "Retry task failed.");
            first_error.get_or_insert(ApiError::internal("retry task failed"));
        }
        None => {}
    }
}

async fn retry_one(state: &AppState, req: &RetryRequest) -> Result<Option<Value>, ApiError> {
    let store = &state.store;
    let lock = lock_name(req);
    match store.try_lock(&lock, RETRY_LOCK_TTL_MS).await {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(StoreError::Invalid(_)) => return Ok(None),
        Err(e) => return Err(ApiError::from(e)),
    }
    let res = retry_locked(state, req).await;
    if let Err(e) = store.unlock(&lock).await {
        tracing::warn!(error = %e, site = %req.site, version = %req.version,
            "Cannot release a retry lock; it expires with its TTL.");
    }
    res
}

async fn retry_locked(state: &AppState, req: &RetryRequest) -> Result<Option<Value>, ApiError> {
    use ReplicationStatus::{Completed, Failed, Pending};
    let store = &state.store;
    let (v, site) = (&req.version, req.site.as_str());
    let in_failed_set = match store.failed_entry(site, v).await {
        Ok(e) => e.is_some(),
        Err(StoreError::Invalid(_)) => return Ok(None),
        Err(e) => return Err(ApiError::from(e)),
    };
    if !req.force && !in_failed_set {
        return Ok(None);
    }
    let apply = |(g, o): transitions::Update| async move {
        store.apply(g, o).await.map_err(ApiError::from)
    };
    let Some(info) = store.replication(v).await.map_err(ApiError::from)? else {
        if in_failed_set && !req.force {
            apply(transitions::orphan_failed(v, site)).await?;
        }
        return Ok(None);
    };
    match info.site(site).map(|s| s.status) {
        Some(Failed) => {
            // Step 1: PENDING and counted, still listed as failed until the entry is queued.
            if !apply(transitions::retry_requested(v, site, info.size)).await? {
                return Ok(None);
            }
            if let Err(e) = append_retry(state, v, &info, site).await {
                // Best effort back to FAILED; if this fails too, the version stays PENDING and
                // in the failed set, and the next retry re-queues it.
                if let Err(u) = apply(transitions::retry_undone(v, site, info.size)).await {
                    tracing::warn!(error = ?u, site, version = %v, "Cannot undo a retry.");
                }
                return Err(e);
            }
        }
        // PENDING and still in the failed set: a retry interrupted between its two steps;
        // with ForceRetry, a stuck version. Re-queued; the counters already count it.
        Some(Pending) if in_failed_set || req.force => append_retry(state, v, &info, site).await?,
        Some(Completed) if in_failed_set => {
            // A stale failed entry: drop it, nothing to retry.
            apply(transitions::stale_failed(v, site)).await?;
            return Ok(None);
        }
        _ => return Ok(None),
    }
    // Step 2: out of the failed set, unless the site already failed again meanwhile.
    apply(transitions::retry_queued(v, site)).await?;
    tracing::info!(site, version = %v, force = req.force, "Failed version re-queued.");
    let mut out = version_json(v, site, &info);
    if let Some(obj) = out.as_object_mut() {
        obj.insert("ReplicationStatus".into(), "PENDING".into());
    }
    Ok(Some(out))
}

/// Appends the original's retry entry of `(v, site)` to `backbeat-replication`.
async fn append_retry(
    state: &AppState,
    v: &VersionRef,
    info: &ReplicationInfo,
    site: &str,
) -> Result<(), ApiError> {
    let entry = QueueEntry::retry(v, info, site);
    state
        .log
        .append(TOPIC_REPLICATION, vec![entry.record()])
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::warn!(error = %e, "Cannot append a retry entry.");
            ApiError::internal(format!("error connecting to internal client: {e}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_validated_like_the_original() {
        for bad in [
            &b"a"[..],
            b"\"a\"",
            b"{}",
            b"[]",
            b"[\"a\"]",
            b"[{\"Key\":\"k\",\"StorageClass\":\"s\"}]",
            b"[{\"Bucket\":\"b\",\"StorageClass\":\"s\"}]",
            b"[{\"Bucket\":\"b\",\"Key\":\"k\"}]",
            b"[{\"Bucket\":\"\",\"Key\":\"k\",\"StorageClass\":\"s\"}]",
            b"\xff\xfe",
        ] {
            let e = parse_retry_body(bad).unwrap_err();
            assert_eq!(e.name, "MalformedPOSTRequest");
            assert!(e
                .description
                .starts_with("The body of your POST request is not well-formed"));
        }
        let ok = parse_retry_body(
            br#"[{"Bucket":"b","Key":"k","VersionId":"v","StorageClass":"s"},
                 {"Bucket":"b","Key":"k","VersionId":"v","StorageClass":"s"},
                 {"Bucket":"b","Key":"k","StorageClass":"s","ForceRetry":true}]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].version.version_id, "null");
        assert!(ok[1].force);
    }
}
