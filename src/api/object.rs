//! Our additions (DESIGN 6): the replication view of one version, and the S3 event
//! notification intake.
//!
//! `GET|HEAD crr/object/<bucket>/<key>?versionId=<id>`:
//! ```json
//! {"bucket": "b", "key": "k", "versionId": "v", "status": "PROCESSING",
//!  "sites": {"s1": {"status": "COMPLETED", "versionId": "r1"}, "s2": {"status": "PENDING"}}}
//! ```
//! with, on both GET and HEAD, the headers CloudServer shows on a HEAD of the source object:
//! `x-amz-replication-status: <global>`, `x-amz-meta-<site>-replication-status: <status>` per
//! site, and `x-amz-meta-<site>-version-id: <id>` once a site is COMPLETED with a version id.
//! An unknown version is a 404 `NoSuchKey`, and so is one that was gone or changed at the
//! source before any site got it (every site dropped it, see `pipeline::status`).
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

/// `GET|HEAD crr/object/<bucket>/<key>?versionId=`.
///
/// # Errors
/// 404 NoSuchKey for an unknown version; 500 InternalError when the store fails.
pub async fn view(state: &AppState, v: &VersionRef) -> Result<Response<Full<Bytes>>, ApiError> {
    let info = state.store.replication(v).await?;
    // A version gone from the source before any site got it has no sites left: gone here too.
    let Some(info) = info.filter(|i| !i.backends.is_empty()) else {
        return Err(ApiError::no_such_key());
    };
    let global = info.status.map(|s| s.as_str()).unwrap_or("");
    let mut sites = Map::new();
    let mut headers = vec![("x-amz-replication-status".to_string(), global.to_string())];
    for b in &info.backends {
        let mut s = Map::new();
        s.insert("status".into(), b.status.as_str().into());
        if !b.data_store_version_id.is_empty() {
            s.insert("versionId".into(), b.data_store_version_id.clone().into());
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
        out.push(DiscoveredVersion {
            event_name: event_name.to_string(),
            bucket: bucket.to_string(),
            key,
            version_id,
            size,
            etag,
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
        let body = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},
            "object":{"key":"a+b%2Fc","versionId":"v1","size":3,"eTag":"e"}}}]}"#;
        let v = parse_s3_event(body).unwrap().unwrap();
        assert_eq!(v[0].key, "a b/c");
        assert_eq!(v[0].version_id.as_deref(), Some("v1"));
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
