//! An unusable state store: every route that needs it answers 500 InternalError (never a
//! 200 with an error inside, never a panic), after the 404/400 checks that come first.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backbeat::api::{self, AppState};
use backbeat::config::Config;
use backbeat::control::Control;
use backbeat::durability::{Durability, SledDb};
use backbeat::log::{Log, SledLog};
use backbeat::model::{KeyState, VersionRef};
use backbeat::store::{
    FailedEntry, FailedPage, Metric, ObjectMetric, PauseState, StateStore, StoreError, StoreOp,
};
use common::api::request;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct BrokenStore;

fn broken<T>() -> Result<T, StoreError> {
    Err(StoreError::Storage(Box::new(std::io::Error::other(
        "disk gone",
    ))))
}

#[async_trait]
impl StateStore for BrokenStore {
    fn kind(&self) -> &'static str {
        "broken"
    }
    fn now_ms(&self) -> u64 {
        common::api::T0
    }
    async fn apply(&self, _: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
        broken()
    }
    async fn key_state(&self, _: &str, _: &str) -> Result<Option<KeyState>, StoreError> {
        broken()
    }
    async fn key_states(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<(String, KeyState)>, StoreError> {
        broken()
    }
    async fn key_children(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError> {
        broken()
    }
    async fn dir_summary(&self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
        broken()
    }
    async fn claim_namespace(&self, _: &str, _: &str) -> Result<String, StoreError> {
        broken()
    }
    async fn failed_page(
        &self,
        _: &str,
        _: Option<u64>,
        _: usize,
    ) -> Result<FailedPage, StoreError> {
        broken()
    }
    async fn failed_entry(
        &self,
        _: &str,
        _: &VersionRef,
    ) -> Result<Option<FailedEntry>, StoreError> {
        broken()
    }
    async fn failed_count(&self, _: &str) -> Result<u64, StoreError> {
        broken()
    }
    async fn metric_buckets(&self, _: &str, _: Metric) -> Result<Vec<u64>, StoreError> {
        broken()
    }
    async fn object_metric_buckets(
        &self,
        _: &str,
        _: &VersionRef,
        _: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError> {
        broken()
    }
    async fn pending(&self, _: &str) -> Result<(i64, i64), StoreError> {
        broken()
    }
    async fn pause_state(&self, _: &str, _: &str) -> Result<Option<PauseState>, StoreError> {
        broken()
    }
    async fn set_pause_state(&self, _: &str, _: &str, _: PauseState) -> Result<(), StoreError> {
        broken()
    }
    async fn cursor(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        broken()
    }
    async fn uploads(
        &self,
        _: &str,
    ) -> Result<Vec<(String, backbeat::store::UploadIntent)>, StoreError> {
        broken()
    }
    async fn try_lock(&self, _: &str, _: u64) -> Result<bool, StoreError> {
        broken()
    }
    async fn unlock(&self, _: &str) -> Result<(), StoreError> {
        broken()
    }
    async fn expire(&self) -> Result<u64, StoreError> {
        broken()
    }
    fn check(&self) -> Result<(), StoreError> {
        broken()
    }
}

#[tokio::test]
async fn every_store_route_is_a_500_when_the_store_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::api::config_text(dir.path(), &["site1", "site2"], "");
    let config = Arc::new(Config::parse(&toml).unwrap());
    let db = SledDb::open(
        &dir.path().join("log"),
        Durability::Group,
        Duration::from_millis(50),
    )
    .unwrap();
    let log: Arc<dyn Log> = Arc::new(SledLog::open(db).unwrap());
    log.create_topic(backbeat::log::TOPIC_REPLICATION, 2)
        .await
        .unwrap();
    let store: Arc<dyn StateStore> = Arc::new(BrokenStore);
    let state = AppState::new(config, log, store, Arc::new(Control::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, Arc::new(state), token.clone()));

    let retry = br#"[{"Bucket":"b","Key":"k","VersionId":"v","StorageClass":"site1"}]"#;
    let cases: &[(&str, &str, Option<&[u8]>, u16)] = &[
        ("GET", "/_/healthcheck", None, 500),
        ("GET", "/_/metrics/crr/all", None, 500),
        ("GET", "/_/metrics/crr/site1/backlog", None, 500),
        (
            "GET",
            "/_/metrics/crr/site1/progress/b/k?versionId=v",
            None,
            500,
        ),
        ("GET", "/_/crr/failed?sitename=site1", None, 500),
        ("GET", "/_/crr/failed/b/k?versionId=v", None, 500),
        ("POST", "/_/crr/failed", Some(retry), 500),
        ("POST", "/_/crr/failed", Some(b"[]"), 400),
        ("POST", "/_/crr/pause", None, 500),
        ("POST", "/_/crr/resume/site1", None, 500),
        (
            "POST",
            "/_/crr/resume/site1/schedule",
            Some(b"{\"hours\":2}"),
            500,
        ),
        (
            "POST",
            "/_/crr/resume/site1/schedule",
            Some(b"{\"hours\":-2}"),
            400,
        ),
        ("DELETE", "/_/crr/resume/site1", None, 500),
        ("GET", "/_/crr/resume", None, 500),
        ("GET", "/_/crr/status/site2", None, 500),
        ("GET", "/_/crr/object/b/k?versionId=v", None, 500),
        ("GET", "/_/monitoring/metrics", None, 500),
        ("GET", "/_/metrics/crr/site9", None, 404),
        ("GET", "/_/crr/failed?marker=x", None, 400),
        ("GET", "/_/openapi.json", None, 200),
        ("GET", "/_/status", None, 500),
        ("GET", "/_/status/history", None, 500),
        ("GET", "/_/status/history?hours=99", None, 400),
        // The page's files need no store; the data it asks for does (above).
        ("GET", "/_/backbeat/ui/", None, 200),
    ];
    for (method, path, body, status) in cases {
        let r = request(addr, method, path, *body).await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        if *status == 500 {
            let e = r.json();
            assert_eq!(e["InternalError"], true, "{method} {path}: {e}");
            assert_eq!(e["code"], 500);
        }
    }
    token.cancel();
    server.await.unwrap();
}
