//! Pause, resume, scheduled resume and status of the CRR sites (reference 1.10, 3.9).
//!
//! Each change is written to the state store (durable) and then published on the site's
//! [`Control`](crate::control::Control) channel before the answer `{}`. Store failures are a
//! real 500 (the original answered 200 with an error object; reference 8).
//!
//! - pause: `paused = true`, any schedule cancelled;
//! - resume: `paused = false`, any schedule cancelled;
//! - scheduled resume: `{"hours": N}` (fractional accepted; empty body, missing or 0 -> 6 h;
//!   anything else invalid -> 400 MalformedPOSTRequest) stores the date; the paused flag is
//!   left as it is, and the scheduler resumes the site when the date comes;
//! - cancel: schedule cleared, paused flag left as it is.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::clock::iso8601_ms;
use crate::store::PauseState;

/// Default delay of a scheduled resume.
pub const DEFAULT_RESUME_HOURS: f64 = 6.0;

/// Longest accepted delay (about 100 years).
const MAX_RESUME_HOURS: f64 = 876_600.0;

fn targets(state: &AppState, site: &str) -> Vec<String> {
    if site == "all" {
        state.sites.clone()
    } else {
        vec![site.to_string()]
    }
}

async fn change_all(
    state: &AppState,
    site: &str,
    change: impl Fn(PauseState) -> PauseState,
) -> Result<Value, ApiError> {
    for s in targets(state, site) {
        state
            .control
            .update(state.store.as_ref(), &s, &change)
            .await?;
    }
    Ok(Value::Object(Map::new()))
}

/// `POST crr/pause[/<site>]`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn pause(state: &AppState, site: &str) -> Result<Value, ApiError> {
    change_all(state, site, |_| PauseState {
        paused: true,
        scheduled_resume_ms: None,
    })
    .await
}

/// `POST crr/resume[/<site>]`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn resume(state: &AppState, site: &str) -> Result<Value, ApiError> {
    change_all(state, site, |_| PauseState {
        paused: false,
        scheduled_resume_ms: None,
    })
    .await
}

/// Parses a scheduled-resume body into hours.
///
/// # Errors
/// 400 MalformedPOSTRequest when the body is not JSON or `hours` is not a positive number.
pub fn parse_hours(body: &[u8]) -> Result<f64, ApiError> {
    let bad = |d: &str| ApiError::malformed_post(d);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_RESUME_HOURS);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("body must be valid JSON"))?;
    let Some(obj) = v.as_object() else {
        return Err(bad("body must be a JSON object"));
    };
    match obj.get("hours") {
        None | Some(Value::Null) => Ok(DEFAULT_RESUME_HOURS),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(0.0) => Ok(DEFAULT_RESUME_HOURS),
            Some(h) if h.is_finite() && h > 0.0 && h <= MAX_RESUME_HOURS => Ok(h),
            _ => Err(bad("hours must be a positive number")),
        },
        Some(_) => Err(bad("hours must be a positive number")),
    }
}

/// `POST crr/resume/<site>/schedule`, `hours` from [`parse_hours`].
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn schedule(state: &AppState, site: &str, hours: f64) -> Result<Value, ApiError> {
    let at = state
        .store
        .now_ms()
        .saturating_add((hours * 3_600_000.0).round() as u64);
    change_all(state, site, |s| PauseState {
        paused: s.paused,
        scheduled_resume_ms: Some(at),
    })
    .await
}

/// `DELETE crr/resume[/<site>[/schedule]]`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn cancel_schedule(state: &AppState, site: &str) -> Result<Value, ApiError> {
    change_all(state, site, |s| PauseState {
        paused: s.paused,
        scheduled_resume_ms: None,
    })
    .await
}

async fn read_all(
    state: &AppState,
    site: &str,
    show: impl Fn(PauseState) -> String,
) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for s in targets(state, site) {
        let st = state
            .store
            .pause_state(crate::control::CRR_SERVICE, &s)
            .await?
            .unwrap_or_default();
        out.insert(s, Value::String(show(st)));
    }
    Ok(Value::Object(out))
}

/// `GET crr/resume[/<site>[/schedule]]`: `{"<site>": "<ISO date>" | "none"}`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn get_schedule(state: &AppState, site: &str) -> Result<Value, ApiError> {
    read_all(state, site, |s| match s.scheduled_resume_ms {
        Some(ms) => iso8601_ms(ms),
        None => "none".to_string(),
    })
    .await
}

/// `GET crr/status[/<site>]`: `{"<site>": "enabled" | "disabled"}`.
///
/// # Errors
/// 500 InternalError when the store fails.
pub async fn status(state: &AppState, site: &str) -> Result<Value, ApiError> {
    read_all(state, site, |s| {
        if s.paused { "disabled" } else { "enabled" }.to_string()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_follow_the_original() {
        assert_eq!(parse_hours(b"").unwrap(), 6.0);
        assert_eq!(parse_hours(b"{}").unwrap(), 6.0);
        assert_eq!(parse_hours(b"{\"hours\":0}").unwrap(), 6.0);
        assert_eq!(parse_hours(b"{\"hours\":1.5}").unwrap(), 1.5);
        for bad in [
            &b"{\"hours\":-1}"[..],
            b"{\"hours\":\"2\"}",
            b"x",
            b"[]",
            b"{\"hours\":1e300}",
        ] {
            assert_eq!(parse_hours(bad).unwrap_err().name, "MalformedPOSTRequest");
        }
    }
}
