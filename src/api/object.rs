//! Our additions (DESIGN 6): the replication view of one version, and the S3 event
//! notification intake.
//!
//! `GET|HEAD crr/object/<bucket>/<key>?versionId=<id>` (without `versionId`: the key's current
//! version, whatever its id):
//! ```json
//! {"bucket": "b", "key": "k", "versionId": "v", "status": "PROCESSING",
//!  "sites": {"s1": {"status": "COMPLETED", "versionId": "r1"}, "s2": {"status": "PENDING"}}}
//! ```
//! with, on both GET and HEAD, the headers CloudServer shows on a HEAD of the source object:
//! `x-amz-replication-status: <global>`, `x-amz-meta-<site>-replication-status: <status>` per
//! site, and `x-amz-meta-<site>-version-id: <id>` once a site is COMPLETED with a version id.
//! The state is kept per key, for its current version (DESIGN section 3, newest wins): a
//! version that is not its key's current one is a 404 `NoSuchKey`, and so is one no site will
//! get (superseded before any copy, or a replica). A FAILED site shows its `reason` and
//! `lastError`; `deleteMarker` says whether the version is a deletion.
//!
//! `POST notifications/s3`: the standard S3 event JSON (`Records[]`, keys form-encoded with
//! `+` for spaces). The whole body is validated before anything is handed to the intake;
//! `s3:TestEvent` is accepted and ignored. Without a source (no intake) -> 503.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::response::json_response;
use super::routes::percent_decode;
use super::state::AppState;
use crate::intake::DiscoveredVersion;
use crate::model::VersionRef;

/// `GET|HEAD crr/object/<bucket>/<key>[?versionId=]`: without a version id, the key's current
/// version (a deleted key's delete marker included).
///
/// # Errors
/// 404 NoSuchKey for an unknown version; 500 InternalError when the store fails.
pub async fn view(
    state: &AppState,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let record = state.store.key_state(bucket, key).await?;
    // Only the key's current version is known (newest wins: the state is per key), and a
    // version no site will get (superseded, a replica) has no sites left: unknown here.
    let Some(info) =
        record.filter(|k| version_id.is_none_or(|id| k.version_id == id) && !k.sites.is_empty())
    else {
        return Err(ApiError::no_such_key());
    };
    let v = &VersionRef::new(bucket, key, info.version_id.clone());
    let global = info.status().map(|s| s.as_str()).unwrap_or("");
    let mut sites = Map::new();
    let mut headers = vec![("x-amz-replication-status".to_string(), global.to_string())];
    for b in &info.sites {
        let mut s = Map::new();
        s.insert("status".into(), b.status.as_str().into());
        if !b.data_store_version_id.is_empty() {
            s.insert("versionId".into(), b.data_store_version_id.clone().into());
        }
        if b.status == crate::model::ReplicationStatus::Failed {
            if let Some(f) = state.store.failed_entry(&b.site, v).await? {
                s.insert("reason".into(), f.info.reason.as_str().into());
                s.insert("lastError".into(), f.info.last_error.clone().into());
            }
        }
        sites.insert(b.site.clone(), Value::Object(s));
        headers.push((
            format!("x-amz-meta-{}-replication-status", b.site),
            b.status.as_str().to_string(),
        ));
        if b.status == crate::model::ReplicationStatus::Completed
            && !b.data_store_version_id.is_empty()
        {
            headers.push((
                format!("x-amz-meta-{}-version-id", b.site),
                b.data_store_version_id.clone(),
            ));
        }
    }
    let body = json!({
        "bucket": v.bucket,
        "key": v.key,
        "versionId": v.version_id,
        "deleteMarker": info.deleted,
        "status": global,
        "sites": sites,
    });
    let mut resp = json_response(StatusCode::OK, &body);
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes());
        let value = HeaderValue::from_str(&value);
        if let (Ok(n), Ok(v)) = (name, value) {
            resp.headers_mut().insert(n, v);
        }
    }
    Ok(resp)
}

fn bad(detail: &str) -> ApiError {
    ApiError::malformed_post(detail)
}

/// Parses an S3 event notification body; `Ok(None)` for `s3:TestEvent`.
///
/// # Errors
/// 400 MalformedPOSTRequest naming the first problem.
pub fn parse_s3_event(body: &[u8]) -> Result<Option<Vec<DiscoveredVersion>>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("body must be valid JSON"))?;
    let Some(obj) = v.as_object() else {
        return Err(bad("body must be a JSON object"));
    };
    if obj.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(None);
    }
    let Some(records) = obj.get("Records").and_then(Value::as_array) else {
        return Err(bad("Records must be an array"));
    };
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let at = |what: &str| bad(&format!("Records[{i}]: {what}"));
        let event_name = rec
            .get("eventName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| at("eventName must be a non-empty string"))?;
        let s3 = rec.get("s3").ok_or_else(|| at("s3 is missing"))?;
        let bucket = s3
            .pointer("/bucket/name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| at("s3.bucket.name must be a non-empty string"))?;
        let object = s3
            .get("object")
            .and_then(Value::as_object)
            .ok_or_else(|| at("s3.object must be an object"))?;
        let raw_key = object
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| at("s3.object.key must be a string"))?;
        let key = percent_decode(raw_key, true)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| at("s3.object.key must be a non-empty URL-encoded string"))?;
        let version_id = match object.get("versionId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(at("s3.object.versionId must be a string")),
        };
        let size = match object.get("size") {
            None | Some(Value::Null) => None,
            Some(n) => Some(
                n.as_u64()
                    .ok_or_else(|| at("s3.object.size must be a non-negative integer"))?,
            ),
        };
        let etag = match object.get("eTag") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(at("s3.object.eTag must be a string")),
        };
        let event_time_ms = match rec.get("eventTime") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(crate::model::ms_of_iso(t)).filter(|ms| *ms > 0),
            Some(_) => return Err(at("eventTime must be an ISO-8601 string")),
        };
        if !crate::config::is_s3_bucket_name(bucket) {
            return Err(at(&format!(
                "s3.bucket.name {bucket:?} is not a valid S3 bucket name"
            )));
        }
        out.push(DiscoveredVersion {
            event_name: event_name.to_string(),
            bucket: bucket.to_string(),
            key,
            version_id,
            size,
            etag,
            event_time_ms,
        });
    }
    Ok(Some(out))
}

/// `POST notifications/s3`: `{"received": N, "queued": M}`.
///
/// # Errors
/// 400 MalformedPOSTRequest on a bad body; 503 ServiceUnavailable without a source or when
/// the intake cannot queue durably.
pub async fn notify_s3(state: &AppState, body: &[u8]) -> Result<Value, ApiError> {
    let Some(versions) = parse_s3_event(body)? else {
        return Ok(json!({"received": 0, "queued": 0}));
    };
    let Some(intake) = &state.intake else {
        return Err(ApiError::service_unavailable("no source configured"));
    };
    // Only the configured source buckets: anything else is refused, named, and logged.
    if let Some(v) = versions.iter().find(|v| !intake.serves(&v.bucket)) {
        tracing::warn!(bucket = %v.bucket, "Event notification about a bucket that is not a configured source; refused.");
        return Err(bad(&format!(
            "bucket {:?} is not a source bucket of this engine",
            v.bucket
        )));
    }
    let received = versions.len();
    let queued = intake.discovered(versions).await.map_err(|e| {
        tracing::warn!(error = %e, "Notification intake failed.");
        ApiError::service_unavailable("cannot queue the notified versions; retry later")
    })?;
    Ok(json!({"received": received, "queued": queued}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_events_parse() {
        let body = br#"{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"2026-01-01T00:00:01.500Z",
            "s3":{"bucket":{"name":"photos"},
            "object":{"key":"a+b%2Fc","versionId":"v1","size":3,"eTag":"e"}}}]}"#;
        let v = parse_s3_event(body).unwrap().unwrap();
        assert_eq!(v[0].key, "a b/c");
        assert_eq!(v[0].version_id.as_deref(), Some("v1"));
        assert_eq!(v[0].event_time_ms, Some(1_767_225_601_500));
        // A crafted bucket name never goes near a URL or a host name.
        for name in ["evil.com/x", "a", "UPPER", "x..y", "10.0.0.1", "h:80"] {
            let body = format!(
                r#"{{"Records":[{{"eventName":"ObjectCreated:Put","s3":{{"bucket":{{"name":"{name}"}},"object":{{"key":"k"}}}}}}]}}"#
            );
            assert_eq!(
                parse_s3_event(body.as_bytes()).unwrap_err().status,
                400,
                "{name}"
            );
        }
        assert!(parse_s3_event(br#"{"Event":"s3:TestEvent"}"#)
            .unwrap()
            .is_none());
        for bad in [
            &b"x"[..],
            b"[]",
            b"{}",
            br#"{"Records":[{}]}"#,
            br#"{"Records":[1]}"#,
        ] {
            assert_eq!(parse_s3_event(bad).unwrap_err().status, 400);
        }
    }
}
