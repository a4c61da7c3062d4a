//! Our own routes: the replication view of one version (JSON and headers) and S3 event
//! notifications handed to the intake.

use backbeat::model::VersionRef;
use backbeat::store::StoreOp;
use backbeat::transitions::{KeyChange, SiteOutcome};
use serde_json::json;

use crate::common::api::{TestApi, T0};

#[tokio::test]
async fn object_view_as_json_and_headers() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let v = VersionRef::new("bkt", "dir/é k", "v1");
    let done = StoreOp::key(
        &v,
        KeyChange::Outcome {
            version_id: "v1".into(),
            site: "site1".into(),
            outcome: SiteOutcome::Completed {
                data_store_version_id: Some("remote-1".into()),
            },
        },
    );
    let changed = api
        .store
        .apply(vec![crate::queued(&v, &["site1", "site2"]), done])
        .await
        .unwrap();
    assert_eq!(changed, [true, true]);
    let path = "crr/object/bkt/dir/%C3%A9%20k?versionId=v1";
    let r = api.call("GET", path, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"bucket": "bkt", "key": "dir/é k", "versionId": "v1", "deleteMarker": false,
               "status": "PROCESSING",
               "sites": {"site1": {"status": "COMPLETED", "versionId": "remote-1"},
                         "site2": {"status": "PENDING"}}})
    );
    // Without a version id: the key's current version.
    let current = api.call("GET", "crr/object/bkt/dir/%C3%A9%20k", None).await;
    assert_eq!(current.status, 200);
    assert_eq!(current.json(), r.json());
    let h = api.call("HEAD", path, None).await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("x-amz-replication-status"), Some("PROCESSING"));
    assert_eq!(
        h.header("x-amz-meta-site1-replication-status"),
        Some("COMPLETED")
    );
    assert_eq!(h.header("x-amz-meta-site1-version-id"), Some("remote-1"));
    assert_eq!(
        h.header("x-amz-meta-site2-replication-status"),
        Some("PENDING")
    );
    assert_eq!(h.header("x-amz-meta-site2-version-id"), None);
    let missing = api
        .call("GET", "crr/object/bkt/dir/x?versionId=v1", None)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["NoSuchKey"], true);
    assert_eq!(
        api.call("HEAD", "crr/object/bkt/dir/x?versionId=v1", None)
            .await
            .status,
        404
    );
    api.stop().await;
}

#[tokio::test]
async fn s3_notifications_reach_the_intake() {
    let api = TestApi::start(&["site1"], T0).await;
    let body = br#"{"Records":[
        {"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"photos"},
         "object":{"key":"my+dir/a%2Bb.jpg","versionId":"v1","size":42,"eTag":"abc"}}},
        {"eventName":"ObjectCreated:Copy","s3":{"bucket":{"name":"photos"},"object":{"key":"plain"}}}]}"#;
    let r = api.call("POST", "notifications/s3", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"received": 2, "queued": 2}));
    {
        let got = api.intake.got.lock();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key, "my dir/a+b.jpg");
        assert_eq!(got[0].version_id.as_deref(), Some("v1"));
        assert_eq!(got[0].size, Some(42));
        assert_eq!(got[1].version_id, None);
    }
    let test_event = br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"photos"}"#;
    let r = api.call("POST", "notifications/s3", Some(test_event)).await;
    assert_eq!(r.status, 200);
    assert_eq!(api.intake.got.lock().len(), 2);
    // A bucket the engine does not replicate is refused by name, and nothing is queued.
    let other = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"not-mine"},"object":{"key":"k"}}}]}"#;
    let r = api.call("POST", "notifications/s3", Some(other)).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not-mine"), "{}", r.text());
    assert_eq!(api.intake.got.lock().len(), 2);
    api.stop().await;
}

#[tokio::test]
async fn s3_notifications_without_a_source_are_503() {
    let api = TestApi::start_without_intake(&["site1"], T0).await;
    let body = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"bkt"},"object":{"key":"k"}}}]}"#;
    let r = api.call("POST", "notifications/s3", Some(body)).await;
    assert_eq!(r.status, 503);
    let e = r.json();
    assert_eq!(e["ServiceUnavailable"], true);
    assert_eq!(e["description"], "no source configured");
    // Body validation still comes first.
    assert_eq!(
        api.call("POST", "notifications/s3", Some(b"x"))
            .await
            .status,
        400
    );
    api.stop().await;
}
