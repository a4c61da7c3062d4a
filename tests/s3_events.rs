//! S3 event notifications are the live path of an S3 source (issue 13): with rescans an hour
//! apart, an object put at moto and announced the way AWS or MinIO would (`POST
//! notifications/s3` right after the PUT) reaches the site well before any rescan; the time
//! from the event to the replica is printed (its distribution belongs in a bench).

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::time::{Duration, Instant};

use common::peers::start_moto;
use failures_support::api_of;
use pipeline_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_object_arrives_without_waiting_for_a_rescan() {
    let moto_peer = start_moto();
    let moto = common::moto::client(&moto_peer);
    common::moto::create_bucket(&moto, "src-events", true)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    let cfg = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"

[source]
type = "s3"
endpoint = "{endpoint}"
access_key = "AKIDTEST"
secret_key = "secret"
buckets = ["src-events"]
scan_interval_s = 3600

{site_block}
{rule}
"#,
        data = tmp.path().join("data").display(),
        endpoint = moto_peer.url(),
        site_block = file_site("local", &site),
        rule = rule("src-events", "", &["local"], true),
    );
    let engine = EngineProc::start(&write_config(tmp.path(), &cfg), tmp.path());
    let api = api_of(&engine);
    // The first pass (of an empty bucket) is over before the object exists.
    engine.wait_log("Scan pass done.", Duration::from_secs(30));
    let mut lags = Vec::new();
    for i in 0..5 {
        let key = format!("live/k{i}");
        let body = format!("event body {i}");
        let vid = common::moto::put(&moto, "src-events", &key, body.as_bytes(), &[])
            .await
            .unwrap();
        let event = format!(
            r#"{{"Records":[{{"eventName":"ObjectCreated:Put","eventTime":"2026-01-01T00:00:00.000Z","s3":{{"bucket":{{"name":"src-events"}},"object":{{"key":"{key}","versionId":"{vid}","size":{}}}}}}}]}}"#,
            body.len()
        );
        let t0 = Instant::now();
        let r =
            common::api::request(api, "POST", "/_/notifications/s3", Some(event.as_bytes())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let replica = site.join("src-events").join(&key);
        wait_until(
            "the announced object at the site",
            Duration::from_secs(30),
            || std::fs::read(&replica).ok().as_deref() == Some(body.as_bytes()),
        );
        lags.push(t0.elapsed());
    }
    eprintln!("event -> replica: {lags:?}");
    assert!(engine.stop().success());
}
