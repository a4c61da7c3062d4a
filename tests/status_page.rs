//! The status page in a real browser (DESIGN section 6, issue 16 item 4): Debian's Chromium,
//! headless, against the real binary (a file source and two file sites) with a bearer token
//! configured.
//!
//! `--dump-dom` prints the page after its scripts ran (under a virtual-time budget) but cannot
//! click, so the page takes actions from its address: `#token=...` (kept in the tab's
//! `sessionStorage`, then dropped from the address) and `#pause=<site>`, which makes the
//! page's own script click that site's Pause button once the sites are shown. That drives the
//! same button handler a person clicks, with no DevTools client to write and no
//! WebSocket dependency to add; the outcome is checked through the API (`GET crr/status`).

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::api::request_with;
use common::peers::chromium_bin;
use failures_support::{api_of, wait_for};
use pipeline_support::*;
use serde_json::{json, Value};

const TOKEN: &str = "page-token-1";

async fn get(api: SocketAddr, path: &str) -> Value {
    let auth = format!("Bearer {TOKEN}");
    let r = request_with(api, "GET", path, &[("Authorization", &auth)], None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// Runs headless Chromium on `url` with `extra` flags; returns its standard output.
async fn chromium(bin: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn dump_dom(bin: &Path, url: &str) -> String {
    chromium(bin, url, &["--dump-dom".to_string()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_sites_and_pauses_one_in_a_real_browser() {
    let bin = tokio::task::spawn_blocking(chromium_bin).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (data, src) = (dir.path().join("data"), dir.path().join("inbox"));
    let (ra, rb) = (dir.path().join("replica-a"), dir.path().join("replica-b"));
    for d in [&src, &ra, &rb] {
        std::fs::create_dir_all(d).unwrap();
    }
    for i in 0..3 {
        put_file(&src, &format!("f{i}.txt"), &bytes_for(i, 1000));
    }
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
    wait_for(
        "both sites complete 3 versions",
        Duration::from_secs(60),
        || async {
            let st = get(api, "/_/backbeat/api/status").await;
            st["sites"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["completions24h"] == 3 && s["backlog"]["ops"] == 0)
        },
    )
    .await;
    let page = format!("http://{api}/_/backbeat/ui/");

    // Without the token the page loads and asks for it.
    let dom = dump_dom(&bin, &page).await;
    assert!(dom.contains("The API needs a token"), "{dom}");
    assert!(!dom.contains("data-site=\"site-a\""), "{dom}");

    // With it, every site shows with its state and numbers, and the source.
    let dom = dump_dom(&bin, &format!("{page}#token={TOKEN}")).await;
    for site in ["site-a", "site-b"] {
        assert!(dom.contains(&format!("<tr data-site=\"{site}\">")), "{dom}");
    }
    assert_eq!(
        dom.matches("<span class=\"state state-ok\">ok</span>")
            .count(),
        2,
        "{dom}"
    );
    assert!(dom.contains("<td>inbox</td>"), "{dom}");
    assert!(!dom.contains("The API needs a token"), "{dom}");
    assert_eq!(
        get(api, "/_/crr/status").await,
        json!({"site-a": "enabled", "site-b": "enabled"})
    );

    // Pausing from the page pauses the site.
    let dom = dump_dom(&bin, &format!("{page}#token={TOKEN}&pause=site-b")).await;
    assert!(
        dom.contains("<div id=\"action-result\" hidden=\"\">paused site-b</div>"),
        "{dom}"
    );
    assert_eq!(
        get(api, "/_/crr/status").await,
        json!({"site-a": "enabled", "site-b": "disabled"})
    );
    let st = get(api, "/_/status").await;
    assert_eq!(st["sites"][1]["state"], "paused", "{st}");
    assert!(
        dom.contains("<span class=\"state state-paused\">paused</span>"),
        "the page shows it once re-read: {dom}"
    );

    // A picture of the page.
    let png = dir.path().join("page.png");
    chromium(
        &bin,
        &format!("{page}#token={TOKEN}"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,900".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    )
    .await;
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(engine.stop().success());
}
