//! Helpers of the failure tests: the engine's API address from its log, the failed listing
//! (all pages), metrics counts, Prometheus samples, bounded async waits.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::api::request;
use crate::pipeline_support::EngineProc;

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The API address of a started engine, from its start line.
pub fn api_of(e: &EngineProc) -> SocketAddr {
    let log = strip_ansi(&e.log());
    let line = log
        .lines()
        .find(|l| l.contains("Backbeat started."))
        .unwrap();
    let at = line.find("api=").unwrap() + 4;
    let addr: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    addr.parse().unwrap()
}

pub async fn get_json(api: SocketAddr, path: &str) -> Value {
    let r = request(api, "GET", path, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

pub async fn post(api: SocketAddr, path: &str, body: &Value) -> Value {
    let b = serde_json::to_vec(body).unwrap();
    let r = request(api, "POST", path, Some(&b)).await;
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// Every entry of `GET crr/failed?sitename=<site>`, all pages.
pub async fn failed_list(api: SocketAddr, site: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..1000 {
        let path = match &marker {
            Some(m) => format!("/_/crr/failed?sitename={site}&marker={m}"),
            None => format!("/_/crr/failed?sitename={site}"),
        };
        let page = get_json(api, &path).await;
        out.extend(page["Versions"].as_array().unwrap().iter().cloned());
        if page["IsTruncated"] != json!(true) {
            return out;
        }
        marker = Some(match &page["NextMarker"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        });
    }
    panic!("too many failed pages");
}

/// `count` of one metric of `GET metrics/crr/<site>/<kind>`.
pub async fn metric(api: SocketAddr, site: &str, kind: &str) -> i64 {
    let m = get_json(api, &format!("/_/metrics/crr/{site}/{kind}")).await;
    m[kind]["results"]["count"].as_i64().unwrap()
}

/// The Prometheus samples of `name` labelled `site="<site>"`, summed over their other labels.
pub async fn prom(api: SocketAddr, name: &str, site: &str) -> u64 {
    let r = request(api, "GET", "/_/monitoring/metrics", None).await;
    assert_eq!(r.status, 200);
    // Summed over the family's other labels (`reason` of the skipped versions...).
    let label = format!("site=\"{site}\"");
    r.text()
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?.strip_prefix('{')?;
            labels
                .trim_end_matches('}')
                .split(',')
                .any(|kv| kv == label)
                .then(|| value.trim().parse::<u64>().unwrap())
        })
        .sum()
}

/// Async-friendly bounded wait.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 2 minutes) until each of `total` versions is settled at `site`: nothing
/// pending, and COMPLETED plus listed FAILED make `total`.
pub async fn wait_settled(api: SocketAddr, site: &str, total: i64) {
    wait_for(
        &format!("every version settled at {site}"),
        Duration::from_secs(120),
        || async {
            let failed = failed_list(api, site).await.len() as i64;
            metric(api, site, "pending").await == 0
                && failed + metric(api, site, "completions").await == total
        },
    )
    .await;
}
