//! The request pipeline (reference 1.2 to 1.5): every route's status, the healthcheck's shape,
//! the allow-list and bearer token, body validation, and the OpenAPI document against the
//! route table.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use backbeat::api::routes::ROUTES;
use backbeat::log::TOPIC_REPLICATION;
use serde_json::{json, Value};

use crate::common::api::{request, request_from, TestApi, T0};
use crate::log_end;

/// Every route with misspelt segments, wrong methods, missing versionId, unknown sites and
/// trailing segments gets the reference's status.
#[tokio::test]
async fn route_matrix() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/_/healthcheck", 200),
        ("GET", "/_/backbeat/api/healthcheck", 200),
        ("POST", "/_/healthcheck", 405),
        ("DELETE", "/_/healthcheck", 405),
        ("PUT", "/_/healthcheck", 405),
        ("PATCH", "/_/metrics/crr/all", 405),
        ("GET", "/_/healthcheck/", 404),
        ("GET", "/_/healthchek", 404),
        ("GET", "/healthcheck", 404),
        ("GET", "/_/backbeat/healthcheck", 404),
        ("GET", "/_/monitoring/metrics", 200),
        ("POST", "/_/monitoring/metrics", 405),
        ("GET", "/_/monitoring/metric", 404),
        ("GET", "/_/metrics/crr/all", 200),
        ("GET", "/_/metrics/crr/site1/all", 200),
        ("GET", "/_/metrics/crr/site3", 404),
        ("GET", "/_/metrics/crr/site3/backlog", 404),
        ("GET", "/_/metrics/crr/Site1/backlog", 404),
        ("GET", "/_/metrics/cr/all/backlog", 404),
        ("GET", "/_/metrics/crr/all/backlogg", 404),
        ("GET", "/_/metrics/crr/all/backlog/extra", 404),
        ("GET", "/_/metrics/crr//backlog", 404),
        ("POST", "/_/metrics/crr/all", 404),
        ("GET", "/_/metrics/lifecycle/all", 404),
        ("GET", "/_/metrics/crr/site1/progress/b/k?versionId=v", 200),
        ("GET", "/_/metrics/crr/site1/progress/b/k", 404),
        ("GET", "/_/metrics/crr/site1/progress/b/k?versionId=", 404),
        ("GET", "/_/metrics/crr/site1/progress/b?versionId=v", 404),
        ("GET", "/_/metrics/crr/all/progress/b/k?versionId=v", 404),
        ("GET", "/_/metrics/crr/site3/progress/b/k?versionId=v", 404),
        (
            "GET",
            "/_/metrics/crr/site1/throughput/b/k/deeper?versionId=v",
            200,
        ),
        ("GET", "/_/metrics/crr/site1/progres/b/k?versionId=v", 404),
        ("GET", "/_/crr/failed", 200),
        ("GET", "/_/crr/failed?sitename=site1", 200),
        ("GET", "/_/crr/failed?sitename=", 400),
        ("GET", "/_/crr/failed?sitename=site1&marker=", 400),
        ("GET", "/_/crr/failed?sitename=site1&marker=abc", 400),
        ("GET", "/_/crr/failed?sitename=site1&marker=12abc", 200),
        ("GET", "/_/crr/failed/mybucket", 200),
        ("GET", "/_/crr/failed/b/k", 200),
        ("GET", "/_/crr/failed/b/k?versionId=", 200),
        ("GET", "/_/crr/failed/b/k?versionId=v", 200),
        ("GET", "/_/crr/faild", 404),
        ("DELETE", "/_/crr/failed", 404),
        ("POST", "/_/crr/failed/b", 404),
        ("GET", "/_/crr/status", 200),
        ("GET", "/_/crr/status/site1", 200),
        ("GET", "/_/crr/status/all", 200),
        ("GET", "/_/crr/status/site3", 404),
        ("GET", "/_/crr/status/site1/extra", 404),
        ("POST", "/_/crr/status", 404),
        ("GET", "/_/crr/pause", 404),
        ("POST", "/_/crr/pause/site3", 404),
        ("POST", "/_/crr/pause/site1/schedule", 404),
        ("POST", "/_/crr/resume/site1/schedul", 404),
        ("POST", "/_/crr/resume/site3/schedule", 404),
        ("GET", "/_/crr/resume", 200),
        ("GET", "/_/crr/resume/site1/schedule", 200),
        ("GET", "/_/crr/resume/site1/schedule/x", 404),
        ("DELETE", "/_/crr/resume/site3", 404),
        ("POST", "/_/ingestion/pause", 404),
        ("GET", "/_/ingestion/status", 404),
        ("POST", "/_/lifecycle/pause/all", 404),
        ("GET", "/_/lifecycle/resume", 404),
        ("GET", "/_/crr/object/b/k", 404),
        ("GET", "/_/crr/object/b/k?versionId=", 404),
        ("HEAD", "/_/crr/object/b/k", 404),
        ("GET", "/_/crr/object/b?versionId=v", 404),
        ("GET", "/_/crr/object/b/k?versionId=unknown", 404),
        ("POST", "/_/crr/object/b/k?versionId=v", 404),
        ("GET", "/_/notifications/s3", 404),
        ("GET", "/_/notifications/s", 404),
        ("GET", "/_/openapi.json", 200),
        ("HEAD", "/_/healthcheck", 405),
        // HEAD is refused at the method step (reference 1.2 step 2) except on our object view.
        ("HEAD", "/_/metrics/crr/all", 405),
        ("HEAD", "/_/crr/status", 405),
        ("HEAD", "/_/nowhere", 405),
        ("HEAD", "/elsewhere", 405),
        ("OPTIONS", "/_/crr/object/b/k?versionId=v", 405),
        ("OPTIONS", "*", 405),
        ("DELETE", "/_/crr/resume", 200),
        ("DELETE", "/_/crr/resume/all/schedule", 200),
        ("POST", "/_/crr/resume/all/schedule", 200),
        ("GET", "/_/crr/resume/all", 200),
        ("POST", "/_/backbeat/api/crr/pause/all", 200),
        ("POST", "/_/crr/resume", 200),
        ("GET", "/_/backbeat/api", 404),
        ("GET", "/_/", 404),
        ("GET", "/", 404),
        ("GET", "/_/configuration/workflows", 404),
        ("GET", "/_/metrics/crr/%ZZ", 404),
        // A trailing `/` is an absent segment (reference 1.3: `parts[n] || default`), but not
        // on the fixed routes, which the original compares as whole strings.
        ("GET", "/_/metrics/crr/all/", 200),
        ("GET", "/_/metrics/crr/site1/backlog/", 200),
        ("GET", "/_/backbeat/api/metrics/ingestion/all/", 200),
        ("GET", "/_/crr/status/", 200),
        ("GET", "/_/crr/status/site1/", 200),
        ("GET", "/_/crr/failed/", 200),
        ("GET", "/_/crr/failed/mybucket/", 200),
        ("GET", "/_/crr/resume/all/schedule/", 200),
        ("GET", "/_/crr/status/site3/", 404),
        ("GET", "/_/metrics/crr/all//", 404),
        ("GET", "/_/monitoring/metrics/", 404),
        ("GET", "/_/openapi.json/", 404),
        // Ours: the operator's view and the status page.
        ("GET", "/_/status", 200),
        ("GET", "/_/backbeat/api/status", 200),
        ("GET", "/_/status/", 200),
        ("POST", "/_/status", 404),
        ("GET", "/_/status/site1", 404),
        ("GET", "/_/status/history", 200),
        ("GET", "/_/status/history?hours=24", 200),
        ("GET", "/_/status/history?hours=0", 400),
        ("GET", "/_/status/history?hours=25", 400),
        ("GET", "/_/status/histories", 404),
        ("GET", "/_/backbeat/ui/", 200),
        ("HEAD", "/_/backbeat/ui/", 200),
        ("GET", "/_/backbeat/ui/app.js", 200),
        ("GET", "/_/backbeat/ui/nothing.js", 404),
        ("DELETE", "/_/backbeat/ui/", 405),
        ("GET", "/_/backbeat/api/backbeat/ui/", 404),
    ];
    let h = request(api.addr, "POST", "/_/healthcheck", None).await;
    assert_eq!(h.header("allow"), Some("GET"));
    let t = request(api.addr, "TRACE", "/_/crr/object/b/k", None).await;
    assert_eq!(t.header("allow"), Some("GET, HEAD"));
    for (method, path, status) in cases {
        let r = request(api.addr, method, path, None).await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        if *method != "HEAD" {
            assert!(r.header("content-type").is_some(), "{method} {path}");
        }
        if r.status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}");
        }
        if r.status >= 400 && *method != "HEAD" {
            let body = r.json();
            assert_eq!(body["code"], json!(status), "{method} {path}");
            assert!(body["description"].is_string());
            let name = match status {
                400 => vec!["InvalidQueryParameter", "MalformedPOSTRequest"],
                404 => vec!["RouteNotFound", "NoSuchKey"],
                405 => vec!["MethodNotAllowed"],
                _ => vec![],
            };
            assert!(
                name.iter().any(|n| body[*n] == json!(true)),
                "{method} {path}: {body}"
            );
        }
    }
    api.stop().await;
}

/// The original's healthcheck shape (reference 1.5): `topics` holds the CRR topic only, keyed
/// by its name; `internalConnections` in the original's key order. Our own details follow.
#[tokio::test]
async fn healthcheck_has_the_original_shape_with_the_crr_topic_only() {
    let api = TestApi::start(&["site1", "site2"], T0).await;
    for prefix in ["/_/", "/_/backbeat/api/"] {
        let r = request(api.addr, "GET", &format!("{prefix}healthcheck"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let v = r.json();
        let topics: Vec<&String> = v["topics"].as_object().unwrap().keys().collect();
        assert_eq!(topics, [TOPIC_REPLICATION], "{v}");
        let t = &v["topics"][TOPIC_REPLICATION];
        assert_eq!(t["name"], TOPIC_REPLICATION);
        let parts = t["partitions"].as_array().unwrap();
        assert!(!parts.is_empty());
        for (i, p) in parts.iter().enumerate() {
            let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["id", "leader", "replicas", "isrs"]);
            assert_eq!(p["id"], i as u64);
            assert!(!p["isrs"].as_array().unwrap().is_empty());
        }
        let ic = v["internalConnections"].as_object().unwrap();
        let keys: Vec<&String> = ic.keys().collect();
        assert_eq!(keys, ["isrHealth", "zookeeper", "kafkaProducer"]);
        assert_eq!(ic["isrHealth"], "ok");
        assert_eq!(
            ic["zookeeper"],
            json!({"status": "ok", "details": {"name": "SYNC_CONNECTED", "code": 3}})
        );
        assert_eq!(ic["kafkaProducer"], json!({"status": "ok"}));
        // Every topic of the log is still reported, under our own `log` key.
        let logged: Vec<&str> = v["log"]["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(logged.contains(&TOPIC_REPLICATION), "{v}");
        assert!(logged.contains(&"backbeat-replication-status"), "{v}");
    }
    api.stop().await;
}

#[tokio::test]
async fn client_outside_the_allow_list_is_denied() {
    let api = TestApi::start_with(&["site1"], T0, "allow_from = [\"127.0.0.1/32\"]").await;
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let r = request_from(other, api.addr, "GET", "/_/healthcheck").await;
    assert_eq!(r.status, 403);
    let body = r.json();
    assert_eq!(body["AccessDenied"], true);
    assert_eq!(body["code"], 403);
    assert_eq!(body["description"], "invalid origin ip request");
    // Before the method and route checks.
    let r = request_from(other, api.addr, "PUT", "/_/nowhere").await;
    assert_eq!(r.status, 403);
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        request_from(local, api.addr, "GET", "/_/healthcheck")
            .await
            .status,
        200
    );
    api.stop().await;
}

#[tokio::test]
async fn bearer_token_is_checked_after_the_allow_list() {
    let api = TestApi::start_with(&["site1"], T0, "token = \"s3cret\"").await;
    assert_eq!(api.call("GET", "healthcheck", None).await.status, 401);
    api.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400_and_never_queue_anything() {
    let api = TestApi::start(&["site1"], T0).await;
    let junk = vec![b'x'; 1024 * 1024];
    let bodies: Vec<&[u8]> = vec![
        b"",
        b"not json",
        b"\"a\"",
        b"{}",
        b"[]",
        b"[\"a\"]",
        b"[1]",
        b"[{\"Key\":\"k\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"k\"}]",
        b"[{\"Bucket\":\"\",\"Key\":\"k\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"\",\"StorageClass\":\"site1\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"k\",\"StorageClass\":\"\"}]",
        b"[{\"Bucket\":\"b\",\"Key\":\"k\",\"StorageClass\":1}]",
        b"\xff\xfe\x00",
        &junk,
    ];
    for body in &bodies {
        let r = api.call("POST", "crr/failed", Some(body)).await;
        assert_eq!(
            r.status,
            400,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        let e = r.json();
        assert_eq!(e["MalformedPOSTRequest"], true);
        assert!(e["description"]
            .as_str()
            .unwrap()
            .starts_with("The body of your POST request is not well-formed"));
    }
    for body in [
        &b"x"[..],
        b"[]",
        b"{\"hours\":-1}",
        b"{\"hours\":\"2\"}",
        b"\xff",
    ] {
        let r = api
            .call("POST", "crr/resume/site1/schedule", Some(body))
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["MalformedPOSTRequest"], true);
    }
    // A body far over what the route takes is refused as too large (tests/api/limits.rs).
    let r = api
        .call("POST", "crr/resume/site1/schedule", Some(&junk))
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["EntityTooLarge"], true);
    for body in [
        &b"x"[..],
        b"[]",
        b"{}",
        b"{\"Records\":[{}]}",
        b"\xff",
        &junk,
    ] {
        let r = api.call("POST", "notifications/s3", Some(body)).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["MalformedPOSTRequest"], true);
    }
    assert!(api.intake.got.lock().is_empty());
    assert_eq!(log_end(&api).await, 0);
    // Still serving.
    assert_eq!(api.call("GET", "healthcheck", None).await.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_exactly_the_router_table() {
    let doc: Value = serde_json::from_str(backbeat::api::routes::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        routed.len(),
        ROUTES.len(),
        "duplicate rows in the route table"
    );
    assert_eq!(documented, routed);
    // And the server serves the document.
    let api = TestApi::start(&["site1"], T0).await;
    assert_eq!(api.get_json("openapi.json").await, doc);
    api.stop().await;
}
