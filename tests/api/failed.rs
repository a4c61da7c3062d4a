//! Failed CRR listings (reference 1.7): paging with markers, the original's order, versions
//! without info, and the failed entries of one version.

use std::collections::HashSet;

use backbeat::model::VersionRef;
use serde_json::{json, Value};

use crate::common::api::{request, TestApi, T0};
use crate::seed_failed;

/// Follows `NextMarker` to the end; checks page size, duplicates and the last page's shape.
async fn list_all(api: &TestApi, site: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut marker: Option<u64> = None;
    loop {
        let route = match marker {
            Some(m) => format!("crr/failed?sitename={site}&marker={m}"),
            None => format!("crr/failed?sitename={site}"),
        };
        let page = api.get_json(&route).await;
        let versions = page["Versions"].as_array().unwrap();
        assert!(versions.len() <= 100);
        for v in versions {
            assert_eq!(v["StorageClass"], site);
            assert_eq!(v["Size"], 7);
            assert_eq!(v["LastModified"], "2018-03-30T22:22:34.384Z");
            seen.push(format!("{}/{}/{}", v["Bucket"], v["Key"], v["VersionId"]));
        }
        if page["IsTruncated"] == json!(true) {
            let next = page["NextMarker"].as_u64().expect("numeric NextMarker");
            assert!(marker.is_none_or(|m| next < m));
            marker = Some(next);
        } else {
            assert!(page.get("NextMarker").is_none(), "{page}");
            break;
        }
    }
    seen
}

#[tokio::test]
async fn failed_listing_pages_10000_entries_in_one_hour() {
    let now = T0 + 30 * 60_000;
    let api = TestApi::start(&["site1", "site2"], now).await;
    let entries: Vec<(String, VersionRef, u64)> = (0..10_000u64)
        .map(|i| {
            (
                "site1".to_string(),
                VersionRef::new("b", format!("key:{i}/x"), format!("v{i}")),
                T0 + i * 100,
            )
        })
        .collect();
    seed_failed(&api, &entries, &["site1", "site2"]).await;
    let seen = list_all(&api, "site1").await;
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 10_000);
    assert!(list_all(&api, "site2").await.is_empty());
    // An unknown marker is an empty, untruncated page.
    let p = api
        .get_json("crr/failed?sitename=site1&marker=9999999999")
        .await;
    assert_eq!(p, json!({"IsTruncated": false, "Versions": []}));
    api.stop().await;
}

#[tokio::test]
async fn failed_listing_pages_24_hours_of_750() {
    let now = T0 + 10 * 60_000;
    let api = TestApi::start(&["site1"], now).await;
    let mut entries = Vec::new();
    for h in 0..24u64 {
        for i in 0..750u64 {
            // Same score within an hour on purpose: the store makes scores unique.
            let score = T0 - h * 3_600_000 + (i / 3);
            entries.push((
                "site1".to_string(),
                VersionRef::new("b", format!("h{h}-{i}"), "null"),
                score,
            ));
        }
    }
    seed_failed(&api, &entries, &["site1"]).await;
    let seen = list_all(&api, "site1").await;
    assert_eq!(seen.len(), 24 * 750);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 24 * 750);
    let failures = api.get_json("metrics/crr/site1/failures").await;
    assert_eq!(failures["failures"]["results"]["count"], 24 * 750);
    api.stop().await;
}

/// The original's page order (reference 1.7 steps 3-4): hourly sets newest first, each set's
/// members oldest first; a page holds the 100 newest entries at or below the marker, and
/// `NextMarker` is the score of the entry just below the page, which starts the next page.
#[tokio::test]
async fn failed_listing_orders_hours_newest_first_and_members_oldest_first() {
    let now = T0 + 30 * 60_000;
    let api = TestApi::start(&["site1"], now).await;
    let hour = 3_600_000;
    let mut entries = Vec::new();
    // 102 failures in the current hour, 2 in the hour before.
    for i in 1..=102u64 {
        entries.push((
            "site1".to_string(),
            VersionRef::new("b", format!("now-{i}"), "v"),
            T0 + i,
        ));
    }
    for i in 1..=2u64 {
        let v = VersionRef::new("b", format!("before-{i}"), "v");
        entries.push(("site1".to_string(), v, T0 - hour + i));
    }
    seed_failed(&api, &entries, &["site1"]).await;
    let keys = |page: &Value| -> Vec<String> {
        page["Versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Key"].as_str().unwrap().to_string())
            .collect()
    };
    let first = api.get_json("crr/failed?sitename=site1").await;
    assert_eq!(first["IsTruncated"], true);
    assert_eq!(first["NextMarker"], T0 + 2);
    let want: Vec<String> = (3..=102).map(|i| format!("now-{i}")).collect();
    assert_eq!(keys(&first), want);
    let second = api
        .get_json(&format!("crr/failed?sitename=site1&marker={}", T0 + 2))
        .await;
    assert_eq!(second["IsTruncated"], false);
    assert!(second.get("NextMarker").is_none());
    assert_eq!(keys(&second), ["now-1", "now-2", "before-1", "before-2"]);
    api.stop().await;
}

#[tokio::test]
async fn failed_entries_carry_their_reason_and_every_site_is_listed_without_sitename() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let v1 = VersionRef::new("b", "k1", "1");
    let v2 = VersionRef::new("b", "k2", "2");
    seed_failed(
        &api,
        &[
            ("site1".into(), v1.clone(), T0 - 5),
            ("site2".into(), v2.clone(), T0 - 1),
        ],
        &["site1", "site2"],
    )
    .await;
    let page = api.get_json("crr/failed?sitename=site1").await;
    assert_eq!(
        page,
        json!({"IsTruncated": false, "Versions": [{"Bucket": "b", "Key": "k1", "VersionId": "1",
            "StorageClass": "site1", "Size": 7, "LastModified": "2018-03-30T22:22:34.384Z",
            "Reason": "Unreachable", "Attempts": 3, "LastError": "site site1 refused the connection",
            "LastAttempt": "2018-03-30T21:59:59.995Z"}]})
    );
    // Without a site: every site's failures, paged newest first; within a page in the
    // original's order (hourly sets newest first, each set oldest first).
    let all = api.get_json("crr/failed").await;
    let listed: Vec<(&str, &str)> = all["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["StorageClass"].as_str().unwrap(),
                v["Key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("site1", "k1"), ("site2", "k2")]);
    api.stop().await;
}

#[tokio::test]
async fn failed_of_one_version_spans_sites() {
    let api = TestApi::start(&["site1", "site2", "site3"], T0).await;
    let v = VersionRef::new("bkt", "a/b:c", "v9");
    seed_failed(
        &api,
        &[
            ("site1".into(), v.clone(), T0 - 10),
            ("site3".into(), v.clone(), T0 - 20),
        ],
        &["site1", "site2", "site3"],
    )
    .await;
    let r = api.get_json("crr/failed/bkt/a/b:c?versionId=v9").await;
    assert_eq!(r["IsTruncated"], false);
    let sites: Vec<&str> = r["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["StorageClass"].as_str().unwrap())
        .collect();
    assert_eq!(sites, vec!["site1", "site3"]);
    assert_eq!(r["Versions"][0]["Key"], "a/b:c");
    // The key may come percent-encoded, `/` and `:` included, on either prefix.
    assert_eq!(
        api.get_json("crr/failed/bkt/a%2Fb%3Ac?versionId=v9").await,
        r
    );
    let native = request(
        api.addr,
        "GET",
        "/_/crr/failed/bkt/a/b%3Ac?versionId=v9",
        None,
    )
    .await;
    assert_eq!(native.json(), r);
    let none = api.get_json("crr/failed/bkt/a/b:c?versionId=other").await;
    assert_eq!(none, json!({"IsTruncated": false, "Versions": []}));
    api.stop().await;
}
