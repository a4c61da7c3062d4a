//! `packaging/grafana-dashboard.json` and `packaging/prometheus-alerts.yml` name only metrics
//! the engine exports (issue 16 item 5): both files are parsed, every PromQL expression in
//! them is read for metric names, and each name must appear in a real `GET
//! monitoring/metrics` answer of the running binary (a sample, or a family's `# TYPE` line
//! for a counter with no sample yet). The only exceptions are node exporter's file system
//! metrics the disk alert needs ([`NODE_EXPORTER`]).

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::api::request;
use failures_support::{api_of, get_json, wait_for};
use pipeline_support::*;
use serde_json::Value;

/// Metrics of node exporter (not ours) that the alert rules may use.
const NODE_EXPORTER: [&str; 2] = ["node_filesystem_avail_bytes", "node_filesystem_size_bytes"];

/// PromQL words that are not metric names: aggregation operators, keywords, set operators.
const KEYWORDS: [&str; 26] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
];

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// `expr` without what is between `open` and `close` (nested), or between two `open` when
/// they are the same (quotes).
fn drop_between(expr: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut depth = 0usize;
    for c in expr.chars() {
        if open == close && c == open {
            depth = 1 - depth;
        } else if c == open {
            depth += 1;
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, label matchers and ranges hold no metric name.
    let e = drop_between(&drop_between(expr, '"', '"'), '{', '}');
    let e = drop_between(&e, '[', ']');
    let chars: Vec<char> = e.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false; // inside the label list of by/without/on/ignoring/group_*
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '(' && after_grouping {
            skip_list = true;
            after_grouping = false;
            i += 1;
            continue;
        }
        if c == ')' && skip_list {
            skip_list = false;
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if skip_list {
                continue;
            }
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                after_grouping = true;
                continue;
            }
            after_grouping = false;
            if next == Some(&'(') || KEYWORDS.contains(&word.as_str()) {
                continue;
            }
            names.insert(word);
            continue;
        }
        if !c.is_whitespace() {
            after_grouping = false;
        }
        // Numbers (0.99, 1e3) are skipped whole.
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Every PromQL expression of a Grafana dashboard: panel targets (rows included) and
/// `label_values(<metric>, <label>)` variables (as `<metric>`).
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    fn panels(v: &Value, out: &mut Vec<String>) {
        for p in v.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().unwrap().to_string());
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().unwrap() {
        let q = match &var["query"] {
            Value::Object(o) => o["query"].as_str().unwrap_or("").to_string(),
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        if let Some(args) = q.strip_prefix("label_values(") {
            out.push(args.split([',', ')']).next().unwrap().trim().to_string());
        }
    }
    out
}

/// One alerting rule of the rules file.
#[derive(Debug, Default)]
struct Rule {
    alert: String,
    expr: String,
    severity: Option<String>,
    summary: Option<String>,
}

/// Reads the subset of YAML the rules file is written in (block mappings and sequences, plain
/// and quoted scalars, `|` block scalars): `groups[].rules[]` with `alert`, `expr`,
/// `labels.severity` and `annotations.summary`.
fn alert_rules(text: &str) -> Vec<Rule> {
    assert!(!text.contains('\t'), "no tabs in YAML");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"groups:"), "a top-level `groups:`");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let unquote = |v: &str| v.trim().trim_matches('"').to_string();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        i += 1;
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: unquote(name),
                ..Rule::default()
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if let Some(v) = t.strip_prefix("expr:") {
            let v = v.trim();
            if v == "|" || v == ">" {
                let mut body = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
                {
                    body.push(lines[i].trim());
                    i += 1;
                }
                rule.expr = body.join(" ").trim().to_string();
            } else {
                rule.expr = unquote(v);
            }
        } else if let Some(v) = t.strip_prefix("severity:") {
            rule.severity = Some(unquote(v));
        } else if let Some(v) = t.strip_prefix("summary:") {
            rule.summary = Some(unquote(v));
        }
    }
    rules
}

#[test]
fn promql_names_are_read_as_prometheus_reads_them() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (instance, site, le) (rate(a_bucket{site=~\"$site\", le!=\"x\"}[10m]))) > on(instance) group_left() b_target and c offset 5m",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_target", "c"]
    );
    let names = metric_names("sum without (reason) (increase(x_total[1h])) > 0 or vector(1)");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["x_total"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_name_only_exported_metrics() {
    // The files, parsed.
    let dash: Value = serde_json::from_str(&repo_file("packaging/grafana-dashboard.json")).unwrap();
    let mut exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules = alert_rules(&repo_file("packaging/prometheus-alerts.yml"));
    let titles: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for want in [
        "BackbeatSiteStalled",
        "BackbeatLagOverTarget",
        "BackbeatFailuresRising",
        "BackbeatDiskNearlyFull",
    ] {
        assert!(titles.contains(&want), "{titles:?}");
    }
    for r in &rules {
        assert!(!r.expr.is_empty(), "{r:?}");
        assert!(r.severity.is_some() && r.summary.is_some(), "{r:?}");
    }
    exprs.extend(rules.iter().map(|r| r.expr.clone()));
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for ours in [
        "backbeat_site_state",
        "backbeat_replication_lag_seconds_bucket",
        "backbeat_replication_failures_total",
        "backbeat_replication_oldest_pending_seconds",
        "s3_replication_pending_objects",
    ] {
        assert!(used.contains(ours), "{ours} in {used:?}");
    }

    // What a running engine exports.
    let dir = tempfile::tempdir().unwrap();
    let (data, src) = (dir.path().join("data"), dir.path().join("inbox"));
    let (ra, rb) = (dir.path().join("replica-a"), dir.path().join("replica-b"));
    for d in [&src, &ra, &rb] {
        std::fs::create_dir_all(d).unwrap();
    }
    put_file(&src, "one.txt", b"one");
    let sites = file_site("site-a", &ra) + &file_site("site-b", &rb);
    let text = config(
        &data,
        &src,
        &sites,
        &rule("inbox", "", &["site-a", "site-b"], true),
        "",
    );
    let engine = EngineProc::start(&write_config(dir.path(), &text), dir.path());
    let api = api_of(&engine);
    wait_for("the version completes", Duration::from_secs(60), || async {
        let m = get_json(api, "/_/metrics/crr/all/completions").await;
        m["completions"]["results"]["count"] == 2
    })
    .await;
    let r = request(api, "GET", "/_/monitoring/metrics", None).await;
    assert_eq!(r.status, 200);
    let exposition = r.text();
    let mut exported = BTreeSet::new();
    for l in exposition.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            exported.insert(rest.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') && !l.is_empty() {
            exported.insert(l.split(['{', ' ']).next().unwrap().to_string());
        }
    }
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(*n) && !NODE_EXPORTER.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named by packaging/ but not exported: {missing:?}\n{exposition}"
    );
    assert!(engine.stop().success());
}
