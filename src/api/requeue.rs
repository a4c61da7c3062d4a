//! `POST crr/requeue` (ours, DESIGN 6): queues versions for the named sites whatever their
//! status — what `backbeat verify --repair` sends for a replica that is missing, stale or
//! corrupt. The body is that of `POST crr/failed` (`Bucket`, `Key`, `VersionId`,
//! `StorageClass` = the site); `ForceRetry` is accepted and means nothing here.
//!
//! A version that is no longer its key's current one queues the current one instead (newest
//! wins, DESIGN 3). Answers `{"requested": N, "queued": M}`: `M` counts the entries queued
//! (one per key and request, for all its named sites).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::error::ApiError;
use super::failed::RetryRequest;
use super::state::AppState;
use crate::model::VersionRef;

/// `POST crr/requeue`, with the body validated by
/// [`parse_retry_body`](super::failed::parse_retry_body).
///
/// # Errors
/// 400 MalformedPOSTRequest naming a site that is not configured; 503 ServiceUnavailable
/// without a source or when the versions cannot be queued durably.
pub async fn requeue(state: &AppState, requests: Vec<RetryRequest>) -> Result<Value, ApiError> {
    if let Some(r) = requests.iter().find(|r| !state.sites.contains(&r.site)) {
        return Err(ApiError::malformed_post(format!(
            "StorageClass {:?} is not a configured site",
            r.site
        )));
    }
    let Some(intake) = &state.intake else {
        return Err(ApiError::service_unavailable("no source configured"));
    };
    if let Some(r) = requests.iter().find(|r| !intake.serves(&r.version.bucket)) {
        return Err(ApiError::malformed_post(format!(
            "bucket {:?} is not a source bucket of this engine",
            r.version.bucket
        )));
    }
    let requested = requests.len();
    // One request a version, for all its sites.
    let mut by_version: BTreeMap<VersionRef, Vec<String>> = BTreeMap::new();
    for r in requests {
        by_version.entry(r.version).or_default().push(r.site);
    }
    let queued = intake
        .requeue(by_version.into_iter().collect())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Requeue failed.");
            ApiError::service_unavailable("cannot queue the versions; retry later")
        })?;
    Ok(json!({"requested": requested, "queued": queued}))
}
