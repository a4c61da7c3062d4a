//! Failed CRR routes (reference 1.7-1.9): the paged listing of a site's failed set, the failed
//! entries of one version across sites, and the retry.
//!
//! A listing page holds the 100 newest entries at or below the marker, in the original's order:
//! hour by hour from the newest, and within an hour from the oldest entry (its `ZRANGE`).
//!
//! The first page (no marker), what a dashboard polls, is kept as rendered (its JSON bytes,
//! shared by every answer) while the failed sets it was read from are unchanged: the store's [`SiteTotals::failed_version`] of each site
//! and the 24-hour window's start are its key (issue 17). A store that cannot tell when its
//! set changes (`None`) is read every time.
//!
//! Each entry carries, besides the original's members, what the failed set knows of the
//! failure (ours): `Reason` (typed, DESIGN section 5), `Attempts`, `LastError` (one line, no
//! secrets) and `LastAttempt`. Without `sitename` the listing spans every site.
//!
//! A retry of `(version, site)`:
//! 1. takes the retry lock (with a TTL, so a crashed retry never blocks the version forever);
//! 2. without `ForceRetry`, the pair must be in the failed set;
//! 3. the version must still be its key's current one (newest wins): a failed entry of a
//!    version the key has moved past is dropped, never retried;
//! 4. a FAILED site: [`KeyChange::Retry`] sets it PENDING and adds 1 op / size to the
//!    pending counters, *keeping* the failed-set entry; then the retry entry is appended to
//!    `backbeat-replication`; then [`KeyChange::Unlisted`] removes the failed-set entry
//!    unless the site is FAILED again. The site is PENDING before its entry is queued, so the
//!    status processor always accepts the outcome, however fast the copy is. A crash between
//!    the steps leaves the version PENDING *and* listed as failed: the next retry of it (step 5)
//!    re-queues it, so a retry is never lost (at-least-once) and never counted twice;
//! 5. a PENDING site still in the failed set (an interrupted retry), or any PENDING site with
//!    `ForceRetry` (a stuck version): the entry is appended again, counters untouched;
//! 6. anything else (COMPLETED, unknown site) is skipped; a COMPLETED site's stale failed
//!    entry is dropped;
//! 7. releases the lock.
//!
//! A skipped element is left out of the answer; the answer lists the re-queued ones with
//! `"ReplicationStatus": "PENDING"`.

use std::cmp::Reverse;
use std::collections::HashSet;

use bytes::Bytes;
use parking_lot::Mutex;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::error::ApiError;
use super::routes::{parse_marker, Route};
use super::state::AppState;
use crate::entry::{iso_ms, Entry};
use crate::log::TOPIC_REPLICATION;
use crate::model::{KeyState, ReplicationStatus, VersionRef, NULL_VERSION};
use crate::store::{
    failed_bucket, failed_window_start, FailedEntry, SiteTotals, StoreError, StoreOp, FAILED_PAGE,
};
use crate::transitions::{KeyChange, QueuedVersion};

/// Time-to-live of a retry lock.
pub const RETRY_LOCK_TTL_MS: u64 = 5 * 60 * 1000;

/// Retries processed at once.
const RETRY_CONCURRENCY: usize = 10;

fn entry_json(e: &FailedEntry) -> Value {
    let v = &e.version;
    json!({
        "Bucket": v.bucket,
        "Key": v.key,
        "VersionId": v.version_id,
        "StorageClass": e.site,
        "Size": e.info.size,
        "LastModified": iso_ms(e.info.written_ms),
        "Reason": e.info.reason.as_str(),
        "Attempts": e.info.attempts,
        "LastError": e.info.last_error,
        "LastAttempt": iso_ms(e.info.last_attempt_ms),
    })
}

/// What names the content of a first page: each site listed with its failed-set version, and
/// the window's start.
type FirstPageKey = (Vec<(String, u64)>, u64);

/// First pages kept (one per site and one for every site, per store).
const FIRST_PAGES: usize = 64;

/// The first pages last rendered (their JSON), newest last.
static FIRST_PAGE_CACHE: Mutex<Vec<(FirstPageKey, Bytes)>> = Mutex::new(Vec::new());

/// The key of the first page of `sites` now, or `None` when a site's set cannot be versioned.
async fn first_page_key(state: &AppState, sites: &[String]) -> Option<FirstPageKey> {
    let mut versions = Vec::with_capacity(sites.len());
    for site in sites {
        let t: SiteTotals = state.store.site_totals(site).await.ok()?;
        versions.push((site.clone(), t.failed_version?));
    }
    Some((versions, failed_window_start(state.store.now_ms())))
}

/// `GET crr/failed?sitename=&marker=`, as JSON bytes; without `sitename`, every site's
/// failures, merged by time and paged the same way (entries of two sites failed in the same
/// millisecond at a page boundary may show on both pages).
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn list(state: &AppState, route: &Route) -> Result<Bytes, ApiError> {
    let first = !route.query.contains_key("marker");
    let sites: Vec<String> = match route.query.get("sitename") {
        Some(site) => vec![site.clone()],
        None => state.sites.clone(),
    };
    let key = if first {
        first_page_key(state, &sites).await
    } else {
        None
    };
    if let Some(key) = &key {
        let cache = FIRST_PAGE_CACHE.lock();
        if let Some((_, page)) = cache.iter().rev().find(|(k, _)| k == key) {
            return Ok(page.clone());
        }
    }
    let page = read_page(state, route, &sites).await?;
    let page =
        Bytes::from(serde_json::to_vec(&page).map_err(|e| ApiError::internal(e.to_string()))?);
    if let Some(key) = key {
        let mut cache = FIRST_PAGE_CACHE.lock();
        // An older rendering of the same sites will not be asked for again.
        let same_sites = |k: &FirstPageKey| k.0.iter().map(|s| &s.0).eq(key.0.iter().map(|s| &s.0));
        cache.retain(|(k, _)| !same_sites(k));
        if cache.len() >= FIRST_PAGES {
            cache.remove(0);
        }
        cache.push((key, page.clone()));
    }
    Ok(page)
}

/// Reads a listing page from the store.
async fn read_page(state: &AppState, route: &Route, sites: &[String]) -> Result<Value, ApiError> {
    let empty = json!({"IsTruncated": false, "Versions": []});
    let marker = match route.query.get("marker").and_then(|m| parse_marker(m)) {
        None | Some(0) => None,
        Some(m) => match u64::try_from(m) {
            Ok(m) => Some(m),
            Err(_) => return Ok(empty),
        },
    };
    let mut entries = Vec::new();
    for site in sites {
        match state.store.failed_page(site, marker, FAILED_PAGE + 1).await {
            Ok(p) => entries.extend(p.entries),
            Err(StoreError::Invalid(_)) => {}
            Err(e) => return Err(ApiError::from(e)),
        }
    }
    // The newest first across sites; one more than a page tells whether another follows.
    entries.sort_by_key(|e| Reverse(e.score_ms));
    let next_marker = entries.get(FAILED_PAGE).map(|e| e.score_ms);
    entries.truncate(FAILED_PAGE);
    // The original's order: hourly sets newest first, each set's members oldest first
    // (reference 1.7 step 3). The page holds the same entries either way.
    entries.sort_by_key(|e| (Reverse(failed_bucket(e.score_ms)), e.score_ms));
    let versions: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(match next_marker {
        Some(m) => json!({"IsTruncated": true, "NextMarker": m, "Versions": versions}),
        None => json!({"IsTruncated": false, "Versions": versions}),
    })
}

/// `GET crr/failed/<bucket>/<key>?versionId=`: the version's failed entries, every site.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn of_version(state: &AppState, version: &VersionRef) -> Result<Value, ApiError> {
    let mut versions = Vec::new();
    for site in &state.sites {
        if let Some(e) = state.store.failed_entry(site, version).await? {
            versions.push(entry_json(&e));
        }
    }
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

/// Most versions one retry or requeue body may name (DESIGN 8; `verify --repair` sends as
/// many at most).
pub const MAX_RETRY_ITEMS: usize = 1000;

/// Validates a retry body as the original does (all 400 MalformedPOSTRequest) and drops
/// duplicates (same bucket, key, version and site).
///
/// # Errors
/// 400 MalformedPOSTRequest describing the first problem; 413 EntityTooLarge beyond
/// [`MAX_RETRY_ITEMS`] elements.
pub fn parse_retry_body(body: &[u8]) -> Result<Vec<RetryRequest>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| malformed("body must be valid JSON"))?;
    let items = match value.as_array() {
        Some(a) if !a.is_empty() => a,
        _ => return Err(malformed("body must be a non-empty array")),
    };
    if items.len() > MAX_RETRY_ITEMS {
        return Err(ApiError::entity_too_large(format!(
            "the body names {} versions; at most {MAX_RETRY_ITEMS} per request",
            items.len()
        )));
    }
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
    let listed = match store.failed_entry(site, v).await {
        Ok(e) => e,
        Err(StoreError::Invalid(_)) => return Ok(None),
        Err(e) => return Err(ApiError::from(e)),
    };
    if !req.force && listed.is_none() {
        return Ok(None);
    }
    let change = |change: KeyChange| async move {
        let changed = store.apply(vec![StoreOp::key(v, change)]).await?;
        Ok::<bool, ApiError>(changed.first().copied().unwrap_or(false))
    };
    let unlisted = || KeyChange::Unlisted {
        version_id: v.version_id.clone(),
        site: site.to_string(),
    };
    let record = store.key_state(&v.bucket, &v.key).await?;
    let Some(k) = record.filter(|k| k.version_id == v.version_id) else {
        // The key moved on to another version (newest wins), or has no record: nothing to
        // retry; a failed entry left behind goes (the original drops a member whose metadata
        // cannot be fetched).
        if listed.is_some() {
            change(unlisted()).await?;
        }
        return Ok(None);
    };
    match k.site(site).map(|s| s.status) {
        Some(Failed) => {
            // Step 1: PENDING and counted, still listed as failed until the entry is queued.
            let retry = KeyChange::Retry {
                version_id: v.version_id.clone(),
                site: site.to_string(),
            };
            if !change(retry).await? {
                return Ok(None);
            }
            if let Err(e) = append_retry(state, v, &k, site).await {
                // Best effort back to FAILED; if this fails too, the version stays PENDING and
                // in the failed set, and the next retry re-queues it.
                let undo = KeyChange::RetryUndone {
                    version_id: v.version_id.clone(),
                    site: site.to_string(),
                };
                if let Err(u) = change(undo).await {
                    tracing::warn!(error = ?u, site, version = %v, "Cannot undo a retry.");
                }
                return Err(e);
            }
        }
        // PENDING and still in the failed set: a retry interrupted between its two steps;
        // with ForceRetry, a stuck version. Re-queued; the counters already count it.
        Some(Pending) if listed.is_some() || req.force => append_retry(state, v, &k, site).await?,
        Some(Completed) if listed.is_some() => {
            // A stale failed entry: drop it, nothing to retry.
            change(unlisted()).await?;
            return Ok(None);
        }
        _ => return Ok(None),
    }
    // Step 2: out of the failed set, unless the site already failed again meanwhile.
    change(unlisted()).await?;
    tracing::info!(site, version = %v, force = req.force, "Failed version re-queued.");
    Ok(Some(json!({
        "Bucket": v.bucket,
        "Key": v.key,
        "VersionId": v.version_id,
        "StorageClass": site,
        "Size": k.size,
        "LastModified": iso_ms(k.written_ms),
        "ReplicationStatus": "PENDING",
    })))
}

/// Appends the retry entry of `(v, site)` to `backbeat-replication`.
async fn append_retry(
    state: &AppState,
    v: &VersionRef,
    k: &KeyState,
    site: &str,
) -> Result<(), ApiError> {
    let mut entry = Entry::queued(
        &v.bucket,
        &v.key,
        &queued_version(k),
        vec![site.to_string()],
    )
    .retry(site);
    // Not newer news than the record it retries.
    entry.queued_ms = k.queued_ms;
    state
        .log
        .append(
            TOPIC_REPLICATION,
            vec![entry.record(state.log.entry_format())],
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::warn!(error = %e, "Cannot append a retry entry.");
            ApiError::internal(format!("error connecting to internal client: {e}"))
        })
}

/// The version a key's record says, as entries carry it.
pub fn queued_version(k: &KeyState) -> QueuedVersion {
    QueuedVersion {
        version_id: k.version_id.clone(),
        etag: k.etag.clone(),
        size: k.size,
        written_ms: k.written_ms,
        deleted: k.deleted,
        backfill: k.backfill,
    }
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
