//! One source object that cannot be read never stops its bucket's scan (issue 14): a proxy in
//! front of moto answers 500 to every request about one key. The other keys are replicated,
//! the scan pass ends, the bad key is FAILED with reason `SourceUnreadable` and counted; each
//! pass asks for it again, and once the source answers it is replicated and leaves the failed
//! set. `backbeat verify` then finds the site equal to the source.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::flaky;
use common::peers::start_moto;
use failures_support::{api_of, failed_list, prom, strip_ansi, wait_for};
use hyper::StatusCode;
use pipeline_support::*;

const BAD: &str = "k03";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_source_object_is_failed_and_retried_while_the_scan_moves_on() {
    let moto_peer = start_moto();
    let moto = common::moto::client(&moto_peer);
    common::moto::create_bucket(&moto, "src-unread", true)
        .await
        .unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("k{i:02}")).collect();
    for k in &keys {
        common::moto::put(
            &moto,
            "src-unread",
            k,
            format!("body of {k}").as_bytes(),
            &[],
        )
        .await
        .unwrap();
    }
    let broken = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    let (b, a) = (broken.clone(), asked.clone());
    let proxy = flaky::start_with(
        moto_peer.addr,
        Arc::new(move |_, parts| {
            (parts.uri.path() == format!("/src-unread/{BAD}") && b.load(Ordering::SeqCst)).then(
                || {
                    a.fetch_add(1, Ordering::SeqCst);
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>".to_string(),
                    )
                },
            )
        }),
    )
    .await;

    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    let cfg = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"
partitions = 2

[source]
type = "s3"
endpoint = "{endpoint}"
access_key = "AKIDTEST"
secret_key = "secret"
buckets = ["src-unread"]
scan_interval_s = 1

{site_block}
[replication.retry]
max_retries = 2
timeout_s = 20
backoff_min_ms = 50
backoff_max_ms = 100

{rule}
"#,
        data = tmp.path().join("data").display(),
        endpoint = proxy.url(),
        site_block = file_site("local", &site),
        rule = rule("src-unread", "", &["local"], true),
    );
    let cfg = write_config(tmp.path(), &cfg);
    let engine = EngineProc::start(&cfg, tmp.path());
    let api = api_of(&engine);
    let replica = |k: &str| std::fs::read(site.join("src-unread").join(k)).ok();

    // The other keys arrive; the bad one is FAILED with its reason, and counted.
    wait_for(
        "every readable key replicated, the bad one FAILED",
        Duration::from_secs(60),
        || async {
            let failed = failed_list(api, "local").await;
            keys.iter()
                .filter(|k| *k != BAD)
                .all(|k| replica(k).as_deref() == Some(format!("body of {k}").as_bytes()))
                && failed
                    .iter()
                    .any(|v| v["Key"] == BAD && v["Reason"] == "SourceUnreadable")
        },
    )
    .await;
    assert!(replica(BAD).is_none());
    let counted = prom(api, "backbeat_replication_failures_total", "local").await;
    assert!(counted >= 1, "failures counted: {counted}");
    // The scan passes end (they did not stop at the bad key) and ask for it again.
    let before = asked.load(Ordering::SeqCst);
    engine.wait_log("Scan pass done.", Duration::from_secs(20));
    wait_for(
        "the bad key asked again",
        Duration::from_secs(20),
        || async { asked.load(Ordering::SeqCst) > before },
    )
    .await;

    // The source answers again: the key is replicated and leaves the failed set.
    broken.store(false, Ordering::SeqCst);
    wait_for(
        "the bad key replicated once readable",
        Duration::from_secs(60),
        || async {
            replica(BAD).as_deref() == Some(format!("body of {BAD}").as_bytes())
                && failed_list(api, "local").await.is_empty()
        },
    )
    .await;
    let log = strip_ansi(&engine.log());
    assert!(log.contains("SourceUnreadable"), "{log}");
    assert!(engine.stop().success());

    assert_verified(&cfg);
}
