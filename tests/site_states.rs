//! Site states against the real binary (issue 16, DESIGN section 5): with one site frozen
//! (s3s-fs stopped with SIGSTOP, so no copy to it ends), `GET status` shows that site
//! `stalled` (work waiting, nothing completed for `stall_after_s`) or `failing`, while the
//! healthy file site stays `ok` and the healthcheck answers 200 (the engine itself is
//! healthy); once thawed, the frozen site is `ok` again.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::time::Duration;

use common::peers::{start_s3s_fs, Frozen};
use failures_support::{api_of, get_json, wait_for};
use pipeline_support::*;
use serde_json::Value;

const AK: &str = "AKIDSTATES";
const SK: &str = "states-secret";

fn site<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_site_turns_failing_or_stalled_while_the_healthy_one_stays_ok() {
    let s3dir = tempfile::tempdir().unwrap();
    let peer = start_s3s_fs(s3dir.path(), AK, SK);
    std::fs::create_dir_all(s3dir.path().join("states")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src, local, logs) = (
        tmp.path().join("inbox"),
        tmp.path().join("local"),
        tmp.path().join("logs"),
    );
    for d in [&src, &local, &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let sites = format!(
        "{}[[sites]]\nname = \"s3\"\ntype = \"aws_s3\"\nendpoint = \"{}\"\nbucket = \"states\"\naccess_key = \"{AK}\"\nsecret_key = \"{SK}\"\npath_style = true\n",
        file_site("local", &local),
        peer.url()
    );
    let cfg = config_with_retry(
        &tmp.path().join("data"),
        &src,
        &sites,
        &rule("inbox", "", &["local", "s3"], true),
        "stall_after_s = 5\nlag_target_s = 5",
        "max_retries = 2\ntimeout_s = 2\nbackoff_min_ms = 50\nbackoff_max_ms = 100\n",
    );
    let cfg = write_config(tmp.path(), &cfg);
    let engine = EngineProc::start(&cfg, &logs);
    let api = api_of(&engine);

    let frozen = Frozen::freeze(peer.pid());
    for i in 0..3 {
        put_file(&src, &format!("f{i}"), &bytes_for(i, 2000));
    }
    wait_for(
        "the frozen site failing or stalled",
        Duration::from_secs(60),
        || async {
            let st = get_json(api, "/_/status").await;
            let s3 = site(&st, "s3");
            matches!(s3["state"].as_str(), Some("failing" | "stalled"))
                && site(&st, "local")["state"] == "ok"
        },
    )
    .await;
    let health = common::api::request(api, "GET", "/_/healthcheck", None).await;
    assert_eq!(health.status, 200);

    drop(frozen);
    wait_for(
        "the thawed site ok again",
        Duration::from_secs(120),
        || async {
            let st = get_json(api, "/_/status").await;
            site(&st, "s3")["state"] == "ok"
        },
    )
    .await;
    assert!(engine.stop().success());
}
