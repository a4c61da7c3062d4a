//! Retrying failed versions (`POST crr/failed`): one requeue per version, what is skipped,
//! forced retries, interrupted retries, many sites, and a bad query before the body.

use backbeat::log::TOPIC_REPLICATION;
use backbeat::model::{ReplicationStatus, VersionRef};
use backbeat::store::StoreOp;
use serde_json::{json, Value};

use crate::common::api::{TestApi, T0};
use crate::{completed, failed_at, failed_info, log_end, queued, queued_sized, seed_failed};

async fn site_status(api: &TestApi, v: &VersionRef, site: &str) -> ReplicationStatus {
    api.store
        .key_state(&v.bucket, &v.key)
        .await
        .unwrap()
        .unwrap()
        .site(site)
        .unwrap()
        .status
}

#[tokio::test]
async fn retry_requeues_a_failed_version_once() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let v = VersionRef::new("bkt", "my key", "v1");
    seed_failed(
        &api,
        &[("site1".into(), v.clone(), T0 - 1000)],
        &["site1", "site2"],
    )
    .await;
    let body = br#"[{"Bucket":"bkt","Key":"my key","VersionId":"v1","StorageClass":"site1"},
                    {"Bucket":"bkt","Key":"my key","VersionId":"v1","StorageClass":"site1"}]"#;
    let r = api.call("POST", "crr/failed", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!([{"Bucket": "bkt", "Key": "my key", "VersionId": "v1", "StorageClass": "site1",
                "Size": 7, "LastModified": "2018-03-30T22:22:34.384Z", "ReplicationStatus": "PENDING"}])
    );
    assert_eq!(
        site_status(&api, &v, "site1").await,
        ReplicationStatus::Pending
    );
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 7));
    assert_eq!(api.store.failed_count("site1").await.unwrap(), 0);
    assert_eq!(log_end(&api).await, 1);
    // The retry entry is the original's retry entry for the site.
    let engine = api.engine.as_ref().unwrap();
    let mut consumer = engine
        .log
        .consumer(TOPIC_REPLICATION, "test-reader")
        .await
        .unwrap();
    let got = consumer
        .poll(10, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let entry = backbeat::entry::Entry::decode(&got[0].record.value).unwrap();
    assert_eq!(entry.site.as_deref(), Some("site1"));
    assert_eq!(entry.version, v);
    assert_eq!(entry.sites, vec!["site1".to_string()]);
    // Not in the failed set any more: nothing to do.
    let again = api.call("POST", "crr/failed", Some(body)).await;
    assert_eq!(again.json(), json!([]));
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 7));
    assert_eq!(log_end(&api).await, 1);
    api.stop().await;
}

#[tokio::test]
async fn retry_skips_unknown_locked_and_completed_versions() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let unknown = br#"[{"Bucket":"b","Key":"nope","VersionId":"1","StorageClass":"site1"}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(unknown)).await.json(),
        json!([])
    );
    let forced = br#"[{"Bucket":"b","Key":"nope","VersionId":"1","StorageClass":"site1","ForceRetry":true}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(forced)).await.json(),
        json!([])
    );

    // A locked version is skipped until its lock expires.
    let v = VersionRef::new("b", "locked", "1");
    seed_failed(
        &api,
        &[("site1".into(), v.clone(), T0 - 1)],
        &["site1", "site2"],
    )
    .await;
    let mut name = String::from("crr-retry\u{0}site1\u{0}");
    for b in v.encode() {
        name.push_str(&format!("{b:02x}"));
    }
    assert!(api.store.try_lock(&name, 1_000).await.unwrap());
    let body = br#"[{"Bucket":"b","Key":"locked","VersionId":"1","StorageClass":"site1"}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(body)).await.json(),
        json!([])
    );
    api.clock.advance(1_001);
    let r = api.call("POST", "crr/failed", Some(body)).await.json();
    assert_eq!(r[0]["ReplicationStatus"], "PENDING");

    // ForceRetry of a COMPLETED site is refused (COMPLETED is final; counters stay exact).
    let done = VersionRef::new("b", "done", "1");
    let ops = vec![
        queued_sized(&done, &["site1", "site2"], 3),
        completed(&done, "site1"),
        failed_at(&done, "site2", T0),
    ];
    api.store.apply(ops).await.unwrap();
    let body = br#"[{"Bucket":"b","Key":"done","VersionId":"1","StorageClass":"site1","ForceRetry":true}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(body)).await.json(),
        json!([])
    );
    api.stop().await;
}

#[tokio::test]
async fn force_retry_requeues_expired_failures_and_stuck_pending_versions() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    // FAILED but gone from the 24 h failed set: only ForceRetry re-queues it.
    let v = VersionRef::new("b", "old", "1");
    // Failed 30 hours ago: out of the failed set's 24 h window.
    let ops = vec![
        queued_sized(&v, &["site1", "site2"], 11),
        failed_at(&v, "site1", T0 - 30 * 3_600_000),
    ];
    api.store.apply(ops).await.unwrap();
    let plain = br#"[{"Bucket":"b","Key":"old","VersionId":"1","StorageClass":"site1"}]"#;
    assert_eq!(
        api.call("POST", "crr/failed", Some(plain)).await.json(),
        json!([])
    );
    let forced =
        br#"[{"Bucket":"b","Key":"old","VersionId":"1","StorageClass":"site1","ForceRetry":true}]"#;
    let r = api.call("POST", "crr/failed", Some(forced)).await.json();
    assert_eq!(r[0]["ReplicationStatus"], "PENDING");
    assert_eq!(
        site_status(&api, &v, "site1").await,
        ReplicationStatus::Pending
    );
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 11));
    // Now PENDING: a forced retry re-queues without counting it twice.
    let r = api.call("POST", "crr/failed", Some(forced)).await.json();
    assert_eq!(r[0]["ReplicationStatus"], "PENDING");
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 11));
    assert_eq!(log_end(&api).await, 2);
    api.stop().await;
}

#[tokio::test]
async fn an_interrupted_retry_is_requeued_by_the_next_one() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    // The state a crash between the retry's first step and its append leaves: PENDING,
    // counted, still in the failed set, nothing queued.
    let v = VersionRef::new("b", "interrupted", "1");
    let stale = VersionRef::new("b", "stale", "1");
    let listed = |v: &VersionRef, at: u64| StoreOp::AddFailed {
        site: "site1".into(),
        version: v.clone(),
        info: failed_info(at),
        score_ms: at,
    };
    let ops = vec![
        queued_sized(&v, &["site1", "site2"], 9),
        listed(&v, T0 - 1),
        queued_sized(&stale, &["site1", "site2"], 9),
        completed(&stale, "site1"),
        listed(&stale, T0 - 2),
    ];
    api.store.apply(ops).await.unwrap();
    let body = br#"[{"Bucket":"b","Key":"interrupted","VersionId":"1","StorageClass":"site1"},
                    {"Bucket":"b","Key":"stale","VersionId":"1","StorageClass":"site1"}]"#;
    let r = api.call("POST", "crr/failed", Some(body)).await.json();
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["Key"], "interrupted");
    assert_eq!(log_end(&api).await, 1);
    assert_eq!(api.store.pending("site1").await.unwrap(), (1, 9));
    // Both entries left the failed set: one re-queued, the stale COMPLETED one dropped.
    assert_eq!(api.store.failed_count("site1").await.unwrap(), 0);
    assert_eq!(
        site_status(&api, &stale, "site1").await,
        ReplicationStatus::Completed
    );
    api.stop().await;
}

#[tokio::test]
async fn retry_of_50_sites_answers_50() {
    let sites: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let api = TestApi::start(&names, T0).await;
    let v = VersionRef::new("b", "k", "v");
    let mut ops = vec![queued(&v, &names)];
    for s in &sites {
        ops.push(failed_at(&v, s, T0));
    }
    api.store.apply(ops).await.unwrap();
    let body: Vec<Value> = sites
        .iter()
        .map(|s| json!({"Bucket": "b", "Key": "k", "VersionId": "v", "StorageClass": s}))
        .collect();
    let body = serde_json::to_vec(&body).unwrap();
    let r = api.call("POST", "crr/failed", Some(&body)).await.json();
    let got: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["StorageClass"].as_str().unwrap())
        .collect();
    assert_eq!(got, names);
    let info = api.store.key_state("b", "k").await.unwrap().unwrap();
    assert_eq!(info.status(), Some(ReplicationStatus::Pending));
    api.stop().await;
}

/// The original parses `marker` and `sitename` on every `crr/failed` route, the retry POST
/// included (reference 1.2 step 5): a bad one is a 400 InvalidQueryParameter before the body
/// is looked at, and nothing is queued.
#[tokio::test]
async fn retry_with_a_bad_query_is_400_before_its_body() {
    let api = TestApi::start(&["site1"], T0).await;
    let v = VersionRef::new("bkt", "k", "v1");
    seed_failed(&api, &[("site1".into(), v, T0 - 1)], &["site1"]).await;
    let good = br#"[{"Bucket":"bkt","Key":"k","VersionId":"v1","StorageClass":"site1"}]"#;
    let before = log_end(&api).await;
    for (query, description) in [
        ("marker=abc", "marker must be a number"),
        ("marker=", "marker must be a number"),
        ("sitename=", "must be a non-empty string"),
    ] {
        for body in [&good[..], b"not json"] {
            let r = api
                .call("POST", &format!("crr/failed?{query}"), Some(body))
                .await;
            assert_eq!(r.status, 400, "{query}");
            let e = r.json();
            assert_eq!(e["InvalidQueryParameter"], true, "{query}: {e}");
            assert_eq!(e["description"], description);
        }
    }
    assert_eq!(log_end(&api).await, before, "nothing queued");
    // A valid query does not stand in the way.
    let r = api
        .call("POST", "crr/failed?marker=5&sitename=site1", Some(good))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    api.stop().await;
}

#[tokio::test]
async fn requeue_hands_versions_to_the_intake_grouped_by_version_whatever_their_status() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let v = VersionRef::new("bkt", "k", "v1");
    api.store
        .apply(vec![
            queued(&v, &["site1", "site2"]),
            completed(&v, "site1"),
        ])
        .await
        .unwrap();
    let body = json!([
        {"Bucket": "bkt", "Key": "k", "VersionId": "v1", "StorageClass": "site1"},
        {"Bucket": "bkt", "Key": "k", "VersionId": "v1", "StorageClass": "site2"},
        {"Bucket": "bkt", "Key": "k", "VersionId": "v1", "StorageClass": "site2"},
        {"Bucket": "bkt", "Key": "other", "StorageClass": "site2"}
    ]);
    let r = api
        .call("POST", "crr/requeue", Some(body.to_string().as_bytes()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Duplicates dropped; one request a version.
    assert_eq!(r.json(), json!({"requested": 3, "queued": 2}));
    let got = api.intake.requeued.lock().clone();
    assert_eq!(
        got,
        vec![
            (v.clone(), vec!["site1".to_string(), "site2".to_string()]),
            (
                VersionRef::new("bkt", "other", "null"),
                vec!["site2".to_string()]
            ),
        ]
    );
    // Unknown sites and buckets the engine does not replicate are refused by name.
    for (body, named) in [
        (
            json!([{"Bucket": "bkt", "Key": "k", "StorageClass": "nowhere"}]),
            "nowhere",
        ),
        (
            json!([{"Bucket": "not-mine", "Key": "k", "StorageClass": "site1"}]),
            "not-mine",
        ),
    ] {
        let r = api
            .call("POST", "crr/requeue", Some(body.to_string().as_bytes()))
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["MalformedPOSTRequest"], true);
        assert!(r.text().contains(named), "{}", r.text());
    }
    assert_eq!(
        api.call("POST", "crr/requeue", Some(b"[]")).await.status,
        400
    );
    assert_eq!(api.intake.requeued.lock().len(), 2);
    api.stop().await;

    let api = TestApi::start_without_intake(&["site1"], T0).await;
    let body = json!([{"Bucket": "bkt", "Key": "k", "StorageClass": "site1"}]);
    let r = api
        .call("POST", "crr/requeue", Some(body.to_string().as_bytes()))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    api.stop().await;
}
