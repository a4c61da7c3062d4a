//! The route table and everything read from a request line (reference sections 1.3 and 1.4):
//! [`ROUTES`], the route ids, path and query parsing, percent-decoding, failed-list markers,
//! matching and query validation. Pure: it runs no route (dispatch is in `api/mod.rs`) and
//! imports no handler, so every handler may import it.
//!
//! Every route is a row of [`ROUTES`]: a method, a path template and what it runs. Matching
//! walks the table, so the table is the whole API (the OpenAPI document is checked against it
//! by a test). Matching is exact: literal segments must be equal, `{site}` must name a
//! configured site (or `all` where allowed), `{bucket}` is one non-empty segment and `{key}` the
//! non-empty rest of the path (keys may contain `/`). Segments are percent-decoded after the
//! split, so `%2F` inside a key stays part of it. A misspelt service, type or site is a 404,
//! never a guess; an extra trailing segment is a 404. A trailing `/` is an empty last segment,
//! read as if absent (the original's `parts[n] || default`), except on the fixed routes and
//! inside a key (see `matching_rows`).
//!
//! Deliberate choices where the original is loose:
//! - `ingestion` has no sites in this engine: `metrics/ingestion/all[/<type>]` answers zeros,
//!   any other ingestion site is a 404 (as the original with an empty ingestion site list);
//!   `ingestion` and `lifecycle` pause/resume/status routes are 404 (no such services here).
//! - `GET crr/failed/<bucket>` and `GET crr/failed/<bucket>/<key>` without a (non-empty)
//!   `versionId` are site listings, as in the original; `POST crr/failed/<anything>` is a 404.
//! - A query string on `healthcheck` or `monitoring/metrics` is ignored (the original's exact
//!   string compare made it a 404).

use std::borrow::Cow;
use std::collections::HashMap;

use hyper::Method;

use super::error::ApiError;
use crate::model::VersionRef;

/// The OpenAPI 3 document of every route, served at `openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Type of a site-level metrics route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Every metric of the service.
    All,
    /// Incomplete operations (crr only).
    Backlog,
    /// Completed in 24 h.
    Completions,
    /// Failed in 24 h (crr only).
    Failures,
    /// Over 900 s.
    Throughput,
    /// Pending counters.
    Pending,
    /// Replication lag (ours, DESIGN section 5): p50/p99 of source write to COMPLETED over
    /// the last 5 minutes, and the oldest pending version's age (crr only).
    Lag,
}

/// Services with metrics routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Cross-region replication.
    Crr,
    /// Ingestion (no sites in this engine).
    Ingestion,
}

/// What a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    /// `GET healthcheck`.
    Healthcheck,
    /// `GET monitoring/metrics`.
    Monitoring,
    /// `GET openapi.json`.
    OpenApi,
    /// Site-level metrics.
    Metrics(Service, MetricKind),
    /// Object replication progress.
    ObjectProgress,
    /// Object replication throughput.
    ObjectThroughput,
    /// Failed list of a site.
    FailedList,
    /// Failed entries of one version (a listing without `versionId`).
    FailedVersion,
    /// Retry failed entries.
    Retry,
    /// Queue versions again whatever their status (ours, `POST crr/requeue`).
    Requeue,
    /// Pause sites.
    Pause,
    /// Resume sites now.
    Resume,
    /// Schedule a resume.
    ScheduleResume,
    /// Cancel a scheduled resume.
    CancelSchedule,
    /// Read scheduled resumes.
    GetSchedule,
    /// Read pause status.
    Status,
    /// The replication view of one version (ours).
    ObjectView,
    /// S3 event notifications (ours).
    NotifyS3,
    /// The operator's view of every site and source (ours, `GET status`).
    OperatorStatus,
    /// The status page's chart data (ours, `GET status/history`).
    StatusHistory,
    /// Read bandwidth limits (ours).
    GetBandwidth,
    /// Set bandwidth limits (ours, stored).
    SetBandwidth,
    /// Remove stored bandwidth limits: the configured ones apply again (ours).
    ResetBandwidth,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path template relative to the prefix, starting with `/`.
    pub path: &'static str,
    /// What it runs.
    pub id: RouteId,
}

const fn r(method: &'static str, path: &'static str, id: RouteId) -> RouteSpec {
    RouteSpec { method, path, id }
}

use MetricKind as K;
use RouteId as R;
use Service as S;

/// The route table: every route of the API, relative to `/_/backbeat/api` and `/_`.
pub const ROUTES: &[RouteSpec] = &[
    r("GET", "/healthcheck", R::Healthcheck),
    r("GET", "/monitoring/metrics", R::Monitoring),
    r("GET", "/openapi.json", R::OpenApi),
    r("GET", "/metrics/crr/{site}", R::Metrics(S::Crr, K::All)),
    r("GET", "/metrics/crr/{site}/all", R::Metrics(S::Crr, K::All)),
    r(
        "GET",
        "/metrics/crr/{site}/backlog",
        R::Metrics(S::Crr, K::Backlog),
    ),
    r(
        "GET",
        "/metrics/crr/{site}/completions",
        R::Metrics(S::Crr, K::Completions),
    ),
    r(
        "GET",
        "/metrics/crr/{site}/failures",
        R::Metrics(S::Crr, K::Failures),
    ),
    r(
        "GET",
        "/metrics/crr/{site}/throughput",
        R::Metrics(S::Crr, K::Throughput),
    ),
    r(
        "GET",
        "/metrics/crr/{site}/pending",
        R::Metrics(S::Crr, K::Pending),
    ),
    r("GET", "/metrics/crr/{site}/lag", R::Metrics(S::Crr, K::Lag)),
    r(
        "GET",
        "/metrics/crr/{site}/progress/{bucket}/{key}",
        R::ObjectProgress,
    ),
    r(
        "GET",
        "/metrics/crr/{site}/throughput/{bucket}/{key}",
        R::ObjectThroughput,
    ),
    r(
        "GET",
        "/metrics/ingestion/{site}",
        R::Metrics(S::Ingestion, K::All),
    ),
    r(
        "GET",
        "/metrics/ingestion/{site}/all",
        R::Metrics(S::Ingestion, K::All),
    ),
    r(
        "GET",
        "/metrics/ingestion/{site}/completions",
        R::Metrics(S::Ingestion, K::Completions),
    ),
    r(
        "GET",
        "/metrics/ingestion/{site}/throughput",
        R::Metrics(S::Ingestion, K::Throughput),
    ),
    r(
        "GET",
        "/metrics/ingestion/{site}/pending",
        R::Metrics(S::Ingestion, K::Pending),
    ),
    r("GET", "/crr/failed", R::FailedList),
    r("GET", "/crr/failed/{bucket}", R::FailedList),
    r("GET", "/crr/failed/{bucket}/{key}", R::FailedVersion),
    r("POST", "/crr/failed", R::Retry),
    r("POST", "/crr/requeue", R::Requeue),
    r("POST", "/crr/pause", R::Pause),
    r("POST", "/crr/pause/{site}", R::Pause),
    r("POST", "/crr/resume", R::Resume),
    r("POST", "/crr/resume/{site}", R::Resume),
    r("POST", "/crr/resume/{site}/schedule", R::ScheduleResume),
    r("DELETE", "/crr/resume", R::CancelSchedule),
    r("DELETE", "/crr/resume/{site}", R::CancelSchedule),
    r("DELETE", "/crr/resume/{site}/schedule", R::CancelSchedule),
    r("GET", "/crr/resume", R::GetSchedule),
    r("GET", "/crr/resume/{site}", R::GetSchedule),
    r("GET", "/crr/resume/{site}/schedule", R::GetSchedule),
    r("GET", "/crr/status", R::Status),
    r("GET", "/crr/status/{site}", R::Status),
    r("GET", "/crr/object/{bucket}/{key}", R::ObjectView),
    r("HEAD", "/crr/object/{bucket}/{key}", R::ObjectView),
    r("POST", "/notifications/s3", R::NotifyS3),
    r("GET", "/status", R::OperatorStatus),
    r("GET", "/status/history", R::StatusHistory),
    r("GET", "/crr/bandwidth", R::GetBandwidth),
    r("GET", "/crr/bandwidth/{site}", R::GetBandwidth),
    r("POST", "/crr/bandwidth", R::SetBandwidth),
    r("POST", "/crr/bandwidth/{site}", R::SetBandwidth),
    r("DELETE", "/crr/bandwidth", R::ResetBandwidth),
    r("DELETE", "/crr/bandwidth/{site}", R::ResetBandwidth),
];

/// Routes that answer 405 (not 404) to a wrong method, as the original's fixed routes.
const FIXED: &[RouteId] = &[R::Healthcheck, R::Monitoring, R::OpenApi];

/// A matched route with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What it runs.
    pub id: RouteId,
    /// The `{site}` parameter; `all` when the template has none.
    pub site: String,
    /// The `{bucket}` parameter.
    pub bucket: Option<String>,
    /// The `{key}` parameter.
    pub key: Option<String>,
    /// The query string, decoded (first value of each name).
    pub query: HashMap<String, String>,
}

impl Route {
    /// The version named by `{bucket}`, `{key}` and a non-empty `versionId`.
    pub fn version(&self) -> Option<VersionRef> {
        let vid = self.query.get("versionId").filter(|v| !v.is_empty())?;
        Some(VersionRef::new(
            self.bucket.clone()?,
            self.key.clone()?,
            vid.clone(),
        ))
    }
}

/// Strips the two accepted prefixes; `None` if the path has neither.
pub fn strip_prefix(path: &str) -> Option<&str> {
    path.strip_prefix("/_/backbeat/api/")
        .or_else(|| path.strip_prefix("/_/"))
}

/// Percent-decodes `s` (and `+` as a space when `plus` is set); `None` on a bad escape or
/// invalid UTF-8.
pub fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a query string (form encoding); the first value of a name wins.
///
/// # Errors
/// 400 InvalidQueryParameter on a bad escape or invalid UTF-8.
pub fn parse_query(query: Option<&str>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || ApiError::invalid_query("query string is not valid percent-encoded UTF-8");
        let k = percent_decode(k, true).ok_or_else(bad)?;
        let v = percent_decode(v, true).ok_or_else(bad)?;
        out.entry(k).or_insert(v);
    }
    Ok(out)
}

fn site_ok(id: RouteId, site: &str, sites: &[String]) -> bool {
    match id {
        R::Metrics(S::Ingestion, _) => site == "all",
        R::ObjectProgress | R::ObjectThroughput => sites.iter().any(|s| s == site),
        _ => site == "all" || sites.iter().any(|s| s == site),
    }
}

/// The parameters of a matched template, borrowed from the path's segments: `(site, bucket,
/// key)`, the key as the index of its first segment (it runs to the end of the path). Only the
/// route chosen copies them out, so matching a request allocates nothing per template.
type Params<'a> = (Option<&'a str>, Option<&'a str>, Option<usize>);

/// Matches `segments` against one template; returns `(site, bucket, key)`.
fn match_template<'a>(template: &str, segments: &'a [Cow<'_, str>]) -> Option<Params<'a>> {
    let (mut site, mut bucket) = (None, None);
    let mut parts = 0;
    for (i, part) in template.trim_start_matches('/').split('/').enumerate() {
        parts = i + 1;
        match part {
            "{key}" => {
                let rest = segments.get(i..).filter(|r| !r.is_empty())?;
                // The key is the rest joined with `/`: empty only as one empty segment.
                if rest.len() == 1 && rest[0].is_empty() {
                    return None;
                }
                return Some((site, bucket, Some(i)));
            }
            "{site}" | "{bucket}" => {
                let seg = segments.get(i).filter(|s| !s.is_empty())?;
                if part == "{site}" {
                    site = Some(seg.as_ref());
                } else {
                    bucket = Some(seg.as_ref());
                }
            }
            lit => {
                if segments.get(i).map(AsRef::as_ref) != Some(lit) {
                    return None;
                }
            }
        }
    }
    (segments.len() == parts).then_some((site, bucket, None))
}

/// The rows whose template matches `segments`, with the template's parameters.
///
/// A path that matches no template as it is, but ends with `/`, is matched again without its
/// last (empty) segment: the original splits the path on `/` and reads a missing or empty
/// segment alike (`site = parts[2] || 'all'`, `type = parts[3] || 'all'`, reference 1.3), so
/// `metrics/crr/all/` is `metrics/crr/all`. The fixed routes (`healthcheck`,
/// `monitoring/metrics`, `openapi.json`) are compared as whole strings there, so they never
/// take a trailing `/`. A key keeps its trailing `/` (`crr/failed/b/dir/` names the key
/// `dir/`), since the `{key}` templates match the path as it is first.
fn matching_rows<'a>(segments: &'a [Cow<'_, str>]) -> Vec<(&'static RouteSpec, Params<'a>)> {
    let rows = |segs: &'a [Cow<'_, str>], trimmed: bool| -> Vec<(&'static RouteSpec, Params<'a>)> {
        ROUTES
            .iter()
            .filter(|spec| !(trimmed && FIXED.contains(&spec.id)))
            .filter_map(|spec| match_template(spec.path, segs).map(|p| (spec, p)))
            .collect()
    };
    let found = rows(segments, false);
    match segments.split_last() {
        Some((last, init)) if found.is_empty() && last.is_empty() && !init.is_empty() => {
            rows(init, true)
        }
        _ => found,
    }
}

/// The path's segments after the prefix, percent-decoded (borrowed when there is nothing to
/// decode); `None` without a prefix or on a bad escape.
fn path_segments(path: &str) -> Option<Vec<Cow<'_, str>>> {
    strip_prefix(path)?
        .split('/')
        .map(|s| {
            if s.contains('%') {
                percent_decode(s, false).map(Cow::Owned)
            } else {
                Some(Cow::Borrowed(s))
            }
        })
        .collect()
}

/// The methods the route table serves at `path` (for the `Allow` header of a 405).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let Some(segments) = path_segments(path) else {
        return Vec::new();
    };
    let mut out: Vec<&'static str> = Vec::new();
    for (spec, _) in matching_rows(&segments) {
        if !out.contains(&spec.method) {
            out.push(spec.method);
        }
    }
    out
}

/// Matches a request to a route.
///
/// # Errors
/// 404 RouteNotFound, 405 MethodNotAllowed or 400 InvalidQueryParameter, as the original.
pub fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    sites: &[String],
) -> Result<Route, ApiError> {
    let not_found = |what: &str| ApiError::route_not_found(format!("path {what} does not exist"));
    let Some(rest) = strip_prefix(path) else {
        return Err(not_found(path));
    };
    let Some(segments) = path_segments(path) else {
        return Err(not_found(rest));
    };
    let mut wrong_method = false;
    for (spec, (site, bucket, key)) in matching_rows(&segments) {
        if spec.method != method.as_str() {
            wrong_method |= FIXED.contains(&spec.id);
            continue;
        }
        let site = site.unwrap_or("all");
        if !site_ok(spec.id, site, sites) {
            return Err(not_found(rest));
        }
        let query = parse_query(query)?;
        let route = Route {
            id: spec.id,
            site: site.to_string(),
            bucket: bucket.map(str::to_string),
            key: key.and_then(|first| Some(segments.get(first..)?.join("/"))),
            query,
        };
        validate_query(&route)?;
        // Our object view also answers for a key's current version (no `versionId`).
        if matches!(route.id, R::ObjectProgress | R::ObjectThroughput) && route.version().is_none()
        {
            return Err(ApiError::route_not_found(format!(
                "must provide object key and version ID in route: {rest}"
            )));
        }
        return Ok(route);
    }
    if wrong_method {
        return Err(ApiError::method_not_allowed());
    }
    Err(not_found(rest))
}

/// The original's query checks (reference 1.2 step 5), on every `crr/failed` route: the
/// original parses `marker` and `sitename` there whatever the method, so the retry POST is
/// checked too (before its body).
fn validate_query(route: &Route) -> Result<(), ApiError> {
    if route.id == R::StatusHistory {
        return history_hours(route).map(|_| ());
    }
    if !matches!(route.id, R::FailedList | R::FailedVersion | R::Retry) {
        return Ok(());
    }
    if let Some(m) = route.query.get("marker") {
        if parse_marker(m).is_none() {
            return Err(ApiError::invalid_query("marker must be a number"));
        }
    }
    if route.query.get("sitename").is_some_and(|s| s.is_empty()) {
        return Err(ApiError::invalid_query("must be a non-empty string"));
    }
    Ok(())
}

/// `hours` of `status/history`: an integer from 1 to 24, 6 when absent.
///
/// # Errors
/// 400 InvalidQueryParameter otherwise.
pub fn history_hours(route: &Route) -> Result<u32, ApiError> {
    let Some(v) = route.query.get("hours") else {
        return Ok(DEFAULT_HISTORY_HOURS);
    };
    match v.parse::<u32>() {
        Ok(h) if (1..=MAX_HISTORY_HOURS).contains(&h) => Ok(h),
        _ => Err(ApiError::invalid_query(format!(
            "hours must be an integer from 1 to {MAX_HISTORY_HOURS}"
        ))),
    }
}

/// Default `hours` of `status/history`.
pub const DEFAULT_HISTORY_HOURS: u32 = 6;
/// Largest `hours` of `status/history` (the store keeps 24 h of metrics buckets).
pub const MAX_HISTORY_HOURS: u32 = 24;

/// JavaScript's `parseInt` on a marker: optional whitespace and sign, then the leading digits;
/// `None` when there are none.
pub fn parse_marker(s: &str) -> Option<i128> {
    let t = s.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .bytes()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let n: i128 = digits[..end.min(30)].parse().ok()?;
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites() -> Vec<String> {
        vec!["s1".into(), "s2".into()]
    }

    fn p(method: Method, path: &str, q: Option<&str>) -> Result<Route, u16> {
        parse(&method, path, q, &sites()).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn exact_matching() {
        assert_eq!(
            p(Method::GET, "/_/healthcheck", None).map(|r| r.id),
            Ok(R::Healthcheck)
        );
        assert_eq!(
            p(Method::POST, "/_/healthcheck", None).map(|r| r.id),
            Err(405)
        );
        assert_eq!(
            p(Method::GET, "/_/healthcheck/", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(
            p(Method::GET, "/_/backbeat/api/metrics/crr/s1", None).map(|r| r.id),
            Ok(R::Metrics(S::Crr, K::All))
        );
        assert_eq!(
            p(Method::GET, "/_/metrics/crr/s3/backlog", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(
            p(Method::GET, "/_/metrics/crrr/s1/backlog", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(
            p(Method::GET, "/_/metrics/crr/s1/backlogs", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(
            p(Method::GET, "/_/metrics/ingestion/all/backlog", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(
            p(Method::POST, "/_/crr/status", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(p(Method::GET, "/_/crr/pause", None).map(|r| r.id), Err(404));
        assert_eq!(
            p(Method::POST, "/_/ingestion/pause", None).map(|r| r.id),
            Err(404)
        );
    }

    #[test]
    fn keys_keep_slashes_and_escapes() {
        let r = p(
            Method::GET,
            "/_/crr/object/b/a/b%2Fc%20d",
            Some("versionId=v+1"),
        )
        .unwrap();
        assert_eq!(r.version(), Some(VersionRef::new("b", "a/b/c d", "v 1")));
        // Our view answers for the key's current version without one.
        assert_eq!(
            p(Method::GET, "/_/crr/object/b/k", None).map(|r| r.id),
            Ok(R::ObjectView)
        );
        assert_eq!(
            p(Method::GET, "/_/metrics/crr/s1/progress/b/k", None).map(|r| r.id),
            Err(404)
        );
        assert_eq!(
            p(Method::GET, "/_/crr/object/b/k", Some("versionId=")).map(|r| r.id),
            Ok(R::ObjectView)
        );
        assert_eq!(
            p(Method::GET, "/_/crr/object/b", Some("versionId=1")).map(|r| r.id),
            Err(404)
        );
    }

    #[test]
    fn a_trailing_slash_is_an_absent_segment_except_in_keys_and_fixed_routes() {
        let id = |m: Method, path: &str| p(m, path, None).map(|r| r.id);
        assert_eq!(
            id(Method::GET, "/_/metrics/crr/all/"),
            Ok(R::Metrics(S::Crr, K::All))
        );
        assert_eq!(
            id(Method::GET, "/_/metrics/crr/s1/backlog/"),
            Ok(R::Metrics(S::Crr, K::Backlog))
        );
        assert_eq!(id(Method::GET, "/_/crr/status/"), Ok(R::Status));
        assert_eq!(id(Method::GET, "/_/crr/failed/"), Ok(R::FailedList));
        assert_eq!(id(Method::POST, "/_/crr/failed/"), Ok(R::Retry));
        assert_eq!(id(Method::GET, "/_/crr/failed/b/"), Ok(R::FailedList));
        assert_eq!(
            id(Method::POST, "/_/crr/resume/all/schedule/"),
            Ok(R::ScheduleResume)
        );
        assert_eq!(id(Method::GET, "/_/crr/status/s3/"), Err(404));
        assert_eq!(id(Method::GET, "/_/metrics/crr/all//"), Err(404));
        assert_eq!(id(Method::GET, "/_/healthcheck/"), Err(404));
        assert_eq!(id(Method::POST, "/_/healthcheck/"), Err(404));
        assert_eq!(id(Method::GET, "/_/monitoring/metrics/"), Err(404));
        assert_eq!(id(Method::GET, "/_/openapi.json/"), Err(404));
        let r = p(Method::GET, "/_/crr/failed/b/dir/", Some("versionId=v")).unwrap();
        assert_eq!(r.version(), Some(VersionRef::new("b", "dir/", "v")));
        assert_eq!(allowed_methods("/_/crr/status/"), vec!["GET"]);
        assert!(allowed_methods("/_/healthcheck/").is_empty());
    }

    #[test]
    fn marker_validation() {
        assert_eq!(parse_marker("12abc"), Some(12));
        assert_eq!(parse_marker(""), None);
        assert_eq!(parse_marker("x"), None);
        assert_eq!(
            p(Method::GET, "/_/crr/failed", Some("marker=")).map(|r| r.id),
            Err(400)
        );
        assert_eq!(
            p(Method::GET, "/_/crr/failed", Some("sitename=")).map(|r| r.id),
            Err(400)
        );
        assert_eq!(
            p(Method::GET, "/_/crr/failed", Some("marker=%zz")).map(|r| r.id),
            Err(400)
        );
        assert_eq!(
            p(Method::POST, "/_/crr/failed", Some("marker=x")).map(|r| r.id),
            Err(400)
        );
        assert_eq!(
            p(Method::POST, "/_/crr/failed", Some("sitename=")).map(|r| r.id),
            Err(400)
        );
        assert_eq!(
            p(Method::POST, "/_/crr/pause", Some("marker=x")).map(|r| r.id),
            Ok(R::Pause)
        );
    }
}
