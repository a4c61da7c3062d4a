//! `backbeat status [--config FILE] [--json]` against the real binary (DESIGN section 7): the
//! table by default, exactly the API's JSON with `--json`, the bearer token from the
//! configuration, and its exit codes (0; 1 when the API cannot be reached or refuses; 2 on a
//! bad configuration or usage).

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::api::request_with;
use common::peers::free_port;
use failures_support::{api_of, wait_for};
use pipeline_support::*;
use serde_json::Value;

const TOKEN: &str = "cli-token-1";

fn status(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .arg("status")
        .args(args)
        .output()
        .unwrap()
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A copy of the engine's configuration `text` naming `port` (what an operator's file holds).
fn cli_config(dir: &Path, name: &str, text: &str, port: u16, token: &str) -> String {
    let t = text
        .replace("port = 0\n", &format!("port = {port}\n"))
        .replace(TOKEN, token);
    let p = dir.join(name);
    std::fs::write(&p, t).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_table_or_the_json_and_exits_as_documented() {
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
    )
    .replace("port = 0\n", &format!("port = 0\ntoken = \"{TOKEN}\"\n"));
    let engine = EngineProc::start(&write_config(dir.path(), &text), dir.path());
    let api = api_of(&engine);
    let auth = format!("Bearer {TOKEN}");
    let get = |path: &'static str| {
        let auth = auth.clone();
        async move {
            let r = request_with(api, "GET", path, &[("Authorization", &auth)], None).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    wait_for("the version completes", Duration::from_secs(60), || async {
        let st: Value = get("/_/status").await;
        st["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["completions24h"] == 1)
    })
    .await;
    let good = cli_config(dir.path(), "cli.toml", &text, api.port(), TOKEN);

    // The table.
    let out = status(&["--config", &good]);
    assert!(out.status.success(), "{}", utf8(&out.stderr));
    let table = utf8(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SITE"), "{table}");
    assert!(
        lines[1].starts_with("site-a") && lines[1].contains(" ok "),
        "{table}"
    );
    assert!(
        lines[2].starts_with("site-b") && lines[2].contains(" ok "),
        "{table}"
    );
    assert!(table.contains("inbox"), "{table}");

    // Exactly the route's JSON.
    let out = status(&["--config", &good, "--json"]);
    assert!(out.status.success(), "{}", utf8(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let served: Value = get("/_/backbeat/api/status").await;
    let shape = |v: &Value| -> Vec<(String, String, Value, Vec<String>)> {
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].to_string(),
                    s["state"].to_string(),
                    s["completions24h"].clone(),
                    s.as_object().unwrap().keys().cloned().collect(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&printed), shape(&served));
    assert_eq!(printed["sources"], served["sources"]);

    // The API refuses a wrong token: 1, saying so.
    let wrong = cli_config(dir.path(), "wrong.toml", &text, api.port(), "not-it");
    let out = status(&["--config", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(utf8(&out.stderr).contains("401"), "{}", utf8(&out.stderr));

    // Nobody listens: 1, saying so.
    let closed = cli_config(dir.path(), "closed.toml", &text, free_port(), TOKEN);
    let out = status(&["--config", &closed, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        utf8(&out.stderr).contains("cannot reach the engine's API"),
        "{}",
        utf8(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // A bad configuration or usage: 2.
    let out = status(&[
        "--config",
        &dir.path().join("missing.toml").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = status(&["--jsn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(engine.stop().success());
}
