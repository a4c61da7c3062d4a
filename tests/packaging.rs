//! `packaging/grafana-dashboard.json` and `packaging/prometheus-alerts.yml` name only metrics
//! the engine exports (issue 16 item 5): both files are parsed, every PromQL expression in
//! them is read for metric names, and each name must appear in a real `GET
//! monitoring/metrics` answer of the running binary (a sample, or a family's `# TYPE` line
//! for a counter with no sample yet). The only exceptions are node exporter's file system
//! metrics the disk alert needs ([`NODE_EXPORTER`]).
//!
//! `packaging/backbeat.service` never restarts into an invalid configuration (issue 14): no
//! `ExecStartPre` (whose failure `RestartPreventExitStatus` does not cover), and the command it
//! runs exits with a status that setting names when the configuration is invalid; the user it
//! runs as is the one `packaging/backbeat.sysusers.conf` creates; the README's install steps
//! name the unit's paths; and, where systemd's tools are installed, `systemd-analyze verify`
//! finds nothing to say, its offline security review rates the unit 2.0 or better, and
//! `systemd-sysusers --dry-run` accepts the users file.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
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

/// A unit file's `[Section]` `Key=value` lines: every value of each key, in order.
fn unit_entries(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=value");
        assert!(!line.ends_with('\\'), "no continuation lines: {line}");
        out.entry((section.clone(), key.trim().to_string()))
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

/// A tool of systemd's, when installed.
fn systemd_tool(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}

#[test]
fn the_systemd_unit_never_restarts_into_an_invalid_configuration() {
    let text = repo_file("packaging/backbeat.service");
    let unit = unit_entries(&text);
    let one = |key: &str| -> String {
        let v = unit
            .get(&("Service".to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("Service.{key} is set"));
        v.last().unwrap().clone()
    };
    let has = |key: &str| unit.contains_key(&("Service".to_string(), key.to_string()));
    assert!(
        !has("ExecStartPre"),
        "a failing ExecStartPre is restarted whatever RestartPreventExitStatus says"
    );
    assert_eq!(one("Restart"), "on-failure");
    let prevent: Vec<String> = one("RestartPreventExitStatus")
        .split_whitespace()
        .map(str::to_string)
        .collect();

    // The command the unit runs, on an invalid configuration, exits with a status that keeps
    // systemd from restarting it.
    let exec = one("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    let binary = args[0];
    let at = args.iter().position(|a| *a == "--config").unwrap();
    let config_path = args[at + 1];
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("backbeat.toml");
    std::fs::write(&bad, "[server]\nport = \"not a port\"\n").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(&args[1..at + 1])
        .arg(&bad)
        .args(&args[at + 2..])
        .output()
        .unwrap()
        .status;
    let code = status.code().unwrap().to_string();
    assert!(prevent.contains(&code), "exit {code}, not in {prevent:?}");

    // The user it runs as is the one the sysusers file creates; its data is in its state
    // directory; the hiding of /home and /tmp is said where it is set.
    let user = one("User");
    let sysusers = repo_file("packaging/backbeat.sysusers.conf");
    assert!(
        sysusers.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"u") && f.get(1) == Some(&user.as_str())
        }),
        "{sysusers}"
    );
    assert_eq!(
        one("WorkingDirectory"),
        format!("/var/lib/{}", one("StateDirectory"))
    );
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    for needle in [
        "ProtectHome=yes hides /home",
        "PrivateTmp=yes",
        "ReadWritePaths=",
    ] {
        assert!(
            text.contains(needle),
            "the unit's comments explain {needle}"
        );
    }

    // The README's install steps follow the unit.
    let readme = repo_file("README.md");
    let install = readme
        .split("\n## ")
        .find(|s| s.starts_with("Install"))
        .expect("an Install section in the README");
    for needle in [
        "cargo install --path .",
        binary,
        config_path,
        "/etc/default/backbeat",
        "/var/lib/backbeat",
        "backbeat.sysusers.conf",
        "systemctl enable --now backbeat",
        "ProtectHome",
        "PrivateTmp",
    ] {
        assert!(install.contains(needle), "README Install names {needle:?}");
    }
    assert!(install.contains(&format!("User={user}")) || install.contains(&format!("`{user}`")));

    // systemd's own checks, where its tools are installed (Debian's systemd package).
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: its checks are skipped");
        return;
    };
    let verify_dir = tempfile::tempdir().unwrap();
    let local = verify_dir.path().join("backbeat.service");
    std::fs::write(&local, text.replace(binary, env!("CARGO_BIN_EXE_backbeat"))).unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exposure level at most 2.0 of 10 ("OK").
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze security: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(sysusers_tool) = systemd_tool("systemd-sysusers") {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        let out = Command::new(sysusers_tool)
            .arg(format!("--root={}", root.path().display()))
            .arg("--dry-run")
            .arg(format!(
                "{}/packaging/backbeat.sysusers.conf",
                env!("CARGO_MANIFEST_DIR")
            ))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains(&format!("Creating user '{user}'")),
            "systemd-sysusers: {said}"
        );
    }
}
