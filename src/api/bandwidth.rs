//! Bandwidth limits of the CRR sites at run time (ours, DESIGN section 6): `GET`, `POST` and
//! `DELETE crr/bandwidth[/<site>]`, `<site>` a configured site or `all` (every site, as when it
//! is left out, like the pause routes).
//!
//! - `POST` with `{"limit": "10MiB/s"}`, `{"limit": "off"}` or a timetable
//!   (`{"limit": "08:00,10MiB/s 19:00,off"}`; syntax in [`crate::bandwidth`]) stores the limit
//!   (durable) and applies it to the next piece of every copy before it answers; a limit that
//!   does not parse is a 400 MalformedPOSTRequest saying why. A stored limit wins over the
//!   configured one, also after a restart.
//! - `DELETE` removes the stored limit: the configured one applies again.
//! - Each answers every targeted site's limit:
//!   `{"<site>": {"limit": "<as set>", "current": "<rate now>" | "off",
//!   "bytesPerSecond": <rate now> | null, "origin": "configuration" | "api"}}`.

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::bandwidth::{rate_text, Bandwidth};

fn targets(state: &AppState, site: &str) -> Vec<String> {
    if site == "all" {
        state.sites.clone()
    } else {
        vec![site.to_string()]
    }
}

/// Parses a `POST crr/bandwidth` body: `{"limit": "<limit>"}`.
///
/// # Errors
/// 400 MalformedPOSTRequest when the body is not such an object or the limit does not parse.
pub fn parse_body(body: &[u8]) -> Result<Bandwidth, ApiError> {
    let bad = |d: &str| ApiError::malformed_post(d);
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("body must be valid JSON"))?;
    let Some(limit) = v.as_object().and_then(|o| o.get("limit")) else {
        return Err(bad(
            "body must be a JSON object with a \"limit\" string, such as {\"limit\": \"10MiB/s\"}",
        ));
    };
    let Some(text) = limit.as_str() else {
        return Err(bad(
            "limit must be a string, such as \"10MiB/s\" or \"off\"",
        ));
    };
    Bandwidth::parse(text).map_err(|e| bad(&format!("limit: {e}")))
}

/// `GET crr/bandwidth[/<site>]`.
///
/// # Errors
/// None today; the signature matches the other handlers.
pub async fn get(state: &AppState, site: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for s in targets(state, site) {
        if let Some(v) = state.bandwidth.view(&s) {
            out.insert(
                s,
                json!({
                    "limit": v.limit.to_string(),
                    "current": rate_text(v.current),
                    "bytesPerSecond": v.current,
                    "origin": v.origin.as_str(),
                }),
            );
        }
    }
    Ok(Value::Object(out))
}

/// `POST crr/bandwidth[/<site>]`, `limit` from [`parse_body`].
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn set(state: &AppState, site: &str, limit: Bandwidth) -> Result<Value, ApiError> {
    for s in targets(state, site) {
        state
            .bandwidth
            .set(state.store.as_ref(), &s, Some(limit.clone()))
            .await?;
    }
    get(state, site).await
}

/// `DELETE crr/bandwidth[/<site>]`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn reset(state: &AppState, site: &str) -> Result<Value, ApiError> {
    for s in targets(state, site) {
        state.bandwidth.set(state.store.as_ref(), &s, None).await?;
    }
    get(state, site).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            parse_body(br#"{"limit":"10MiB/s"}"#).unwrap(),
            Bandwidth::Rate(10 << 20)
        );
        assert_eq!(parse_body(br#"{"limit":"off"}"#).unwrap(), Bandwidth::Off);
        assert!(matches!(
            parse_body(br#"{"limit":"08:00,1M 19:00,off"}"#).unwrap(),
            Bandwidth::Timetable(_)
        ));
        for bad in [
            &b""[..],
            b"x",
            b"[]",
            b"{}",
            br#"{"limit":10}"#,
            br#"{"limit":"10"}"#,
            br#"{"limit":"25:00,1M"}"#,
        ] {
            let e = parse_body(bad).unwrap_err();
            assert_eq!(e.name, "MalformedPOSTRequest");
        }
        let e = parse_body(br#"{"limit":"10MB/s"}"#).unwrap_err();
        assert!(e.description.contains("ambiguous"), "{}", e.description);
    }
}
