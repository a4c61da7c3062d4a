//! [`RetryingStore`]: a state store wrapper that rides out an outage of the store (issue 14).
//!
//! A transient error ([`StoreError::Unavailable`]: MongoDB unreachable, no primary during an
//! election, a server selection timeout) is retried with capped exponential backoff and jitter
//! until it succeeds, so a pipeline stage waits for the store instead of ending the process.
//! Any other error (a poisoned embedded database, a full disk, a corrupt value) is returned at
//! once and stays fatal for the stage.
//!
//! Re-doing a call is safe: reads have no effect, and [`StateStore::apply`] is one transaction,
//! all or nothing, whose key changes apply only from the state they expect (a change that did
//! commit before its answer was lost changes nothing the second time). The one exception is an
//! object-progress counter ([`super::StoreOp::AddObjectMetric`]) whose commit was lost: it may
//! count twice, which only moves a progress figure.
//!
//! The pipeline gets a retrying view; the API gets a fail-fast view of the same store
//! ([`RetryingStore::fail_fast`]), so a request answers 500 at once during an outage instead
//! of waiting for it. Both share one "unavailable" flag, set by the first transient error and
//! cleared by the next success of either view: [`StateStore::check`] reports it, so the
//! healthcheck and `backbeat_up` say the store is unhealthy while the pipeline waits, and
//! [`crate::metrics`] counts the retries (`backbeat_store_retries_total`) and shows the state
//! (`backbeat_store_unavailable`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{
    FailedEntry, FailedPage, Metric, ObjectMetric, PauseState, SiteTotals, StateStore, StoreError,
    StoreOp, UploadIntent,
};
use crate::model::{KeyState, VersionRef};

/// First wait after a transient error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A state store that retries transient errors (see the module doc).
#[derive(Clone)]
pub struct RetryingStore {
    inner: Arc<dyn StateStore>,
    down: Arc<AtomicBool>,
    retry: bool,
    token: CancellationToken,
    backoff: (Duration, Duration),
}

impl std::fmt::Debug for RetryingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingStore")
            .field("kind", &self.inner.kind())
            .field("retry", &self.retry)
            .finish()
    }
}

impl RetryingStore {
    /// Retries `inner`'s transient errors until they succeed or `token` is cancelled (then the
    /// error is returned, so a stopping stage is not held by an outage).
    pub fn new(inner: Arc<dyn StateStore>, token: CancellationToken) -> RetryingStore {
        RetryingStore {
            inner,
            down: Arc::new(AtomicBool::new(false)),
            retry: true,
            token,
            backoff: (BACKOFF_MIN, BACKOFF_MAX),
        }
    }

    /// The same with other backoff bounds (tests).
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> RetryingStore {
        self.backoff = (min, max.max(min));
        self
    }

    /// A view of the same store that never retries but shares the unavailable flag: for the
    /// API, whose requests should fail fast during an outage.
    pub fn fail_fast(&self) -> RetryingStore {
        RetryingStore {
            retry: false,
            ..self.clone()
        }
    }

    /// Whether the store is known to be unreachable now.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn mark_down(&self, error: &StoreError) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                store = self.inner.kind(),
                error = %crate::error::chain(error),
                "State store unavailable; retrying with backoff (the healthcheck reports it)."
            );
            crate::metrics::set_store_unavailable(true);
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(store = self.inner.kind(), "State store available again.");
            crate::metrics::set_store_unavailable(false);
        }
    }

    /// Runs `call`, again after each transient error while retrying.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let (min, max) = self.backoff;
        let mut delay = min;
        loop {
            match call().await {
                Ok(v) => {
                    self.mark_up();
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    self.mark_down(&e);
                    if !self.retry || self.token.is_cancelled() {
                        return Err(e);
                    }
                    crate::metrics::count_store_retry();
                    tracing::debug!(error = %crate::error::chain(&e), delay_ms = delay.as_millis() as u64,
                        "State store call failed; retrying.");
                    // Full jitter on the upper half: several stages do not retry in step.
                    let half = delay / 2;
                    let jitter = Duration::from_millis(
                        rand::random::<u64>() % (half.as_millis() as u64).max(1),
                    );
                    tokio::select! {
                        // Stopping: one last attempt rather than the error of the previous
                        // one (the store may be back, and an update that goes through now
                        // spares a failed stop).
                        () = self.token.cancelled() => {
                            let last = call().await;
                            if last.is_ok() {
                                self.mark_up();
                            }
                            return last;
                        }
                        () = tokio::time::sleep(half + jitter) => {}
                    }
                    delay = (delay * 2).min(max);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl StateStore for RetryingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    fn may_be_unavailable(&self) -> bool {
        self.inner.may_be_unavailable()
    }

    async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
        if !self.inner.may_be_unavailable() {
            // Nothing to retry: no copy of the update kept (the pipeline's hot path).
            return self.inner.apply(ops).await;
        }
        self.call(|| self.inner.apply(ops.clone())).await
    }

    async fn key_state(&self, bucket: &str, key: &str) -> Result<Option<KeyState>, StoreError> {
        self.call(|| self.inner.key_state(bucket, key)).await
    }

    async fn key_states(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, KeyState)>, StoreError> {
        self.call(|| self.inner.key_states(bucket, prefix, after, limit))
            .await
    }

    async fn key_children(
        &self,
        bucket: &str,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError> {
        self.call(|| self.inner.key_children(bucket, dir, after, limit))
            .await
    }

    async fn dir_summary(&self, bucket: &str, dir: &str) -> Result<Option<u64>, StoreError> {
        self.call(|| self.inner.dir_summary(bucket, dir)).await
    }

    async fn claim_namespace(&self, site: &str, bucket: &str) -> Result<String, StoreError> {
        self.call(|| self.inner.claim_namespace(site, bucket)).await
    }

    async fn failed_page(
        &self,
        site: &str,
        marker: Option<u64>,
        limit: usize,
    ) -> Result<FailedPage, StoreError> {
        self.call(|| self.inner.failed_page(site, marker, limit))
            .await
    }

    async fn failed_entry(
        &self,
        site: &str,
        version: &VersionRef,
    ) -> Result<Option<FailedEntry>, StoreError> {
        self.call(|| self.inner.failed_entry(site, version)).await
    }

    async fn failed_count(&self, site: &str) -> Result<u64, StoreError> {
        self.call(|| self.inner.failed_count(site)).await
    }

    async fn metric_buckets(&self, site: &str, metric: Metric) -> Result<Vec<u64>, StoreError> {
        self.call(|| self.inner.metric_buckets(site, metric)).await
    }

    async fn object_metric_buckets(
        &self,
        site: &str,
        version: &VersionRef,
        metric: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError> {
        self.call(|| self.inner.object_metric_buckets(site, version, metric))
            .await
    }

    async fn pending(&self, site: &str) -> Result<(i64, i64), StoreError> {
        self.call(|| self.inner.pending(site)).await
    }

    async fn site_totals(&self, site: &str) -> Result<SiteTotals, StoreError> {
        self.call(|| self.inner.site_totals(site)).await
    }

    async fn pause_state(
        &self,
        service: &str,
        site: &str,
    ) -> Result<Option<PauseState>, StoreError> {
        self.call(|| self.inner.pause_state(service, site)).await
    }

    async fn set_pause_state(
        &self,
        service: &str,
        site: &str,
        state: PauseState,
    ) -> Result<(), StoreError> {
        self.call(|| self.inner.set_pause_state(service, site, state))
            .await
    }

    async fn cursor(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|| self.inner.cursor(name)).await
    }

    async fn uploads(&self, site: &str) -> Result<Vec<(String, UploadIntent)>, StoreError> {
        self.call(|| self.inner.uploads(site)).await
    }

    async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        self.call(|| self.inner.try_lock(name, ttl_ms)).await
    }

    async fn unlock(&self, name: &str) -> Result<(), StoreError> {
        self.call(|| self.inner.unlock(name)).await
    }

    async fn expire(&self) -> Result<u64, StoreError> {
        self.call(|| self.inner.expire()).await
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.is_down() {
            return Err(StoreError::Unavailable(
                format!("{} state store is unreachable; retrying", self.inner.kind()).into(),
            ));
        }
        self.inner.check()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::clock::ManualClock;
    use crate::durability::{Durability, SledDb};
    use crate::store::SledStore;

    /// Fails `fails` times with `Unavailable` (or `Storage` when `fatal`), then reads through.
    struct Flaky {
        inner: SledStore,
        fails: AtomicU32,
        fatal: bool,
    }

    impl Flaky {
        fn fail(&self) -> Result<(), StoreError> {
            if self.fails.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            self.fails.fetch_sub(1, Ordering::SeqCst);
            let e: Box<dyn std::error::Error + Send + Sync> = "injected".into();
            Err(if self.fatal {
                StoreError::Storage(e)
            } else {
                StoreError::Unavailable(e)
            })
        }
    }

    #[async_trait]
    impl StateStore for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        fn now_ms(&self) -> u64 {
            self.inner.now_ms()
        }
        async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
            self.fail()?;
            self.inner.apply(ops).await
        }
        async fn key_state(&self, b: &str, k: &str) -> Result<Option<KeyState>, StoreError> {
            self.inner.key_state(b, k).await
        }
        async fn key_states(
            &self,
            b: &str,
            p: &str,
            a: Option<&str>,
            l: usize,
        ) -> Result<Vec<(String, KeyState)>, StoreError> {
            self.inner.key_states(b, p, a, l).await
        }
        async fn key_children(
            &self,
            b: &str,
            d: &str,
            a: Option<&str>,
            l: usize,
        ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError> {
            self.inner.key_children(b, d, a, l).await
        }
        async fn dir_summary(&self, b: &str, d: &str) -> Result<Option<u64>, StoreError> {
            self.inner.dir_summary(b, d).await
        }
        async fn claim_namespace(&self, s: &str, b: &str) -> Result<String, StoreError> {
            self.inner.claim_namespace(s, b).await
        }
        async fn failed_page(
            &self,
            s: &str,
            m: Option<u64>,
            l: usize,
        ) -> Result<FailedPage, StoreError> {
            self.inner.failed_page(s, m, l).await
        }
        async fn failed_entry(
            &self,
            s: &str,
            v: &VersionRef,
        ) -> Result<Option<FailedEntry>, StoreError> {
            self.inner.failed_entry(s, v).await
        }
        async fn failed_count(&self, s: &str) -> Result<u64, StoreError> {
            self.inner.failed_count(s).await
        }
        async fn metric_buckets(&self, s: &str, m: Metric) -> Result<Vec<u64>, StoreError> {
            self.inner.metric_buckets(s, m).await
        }
        async fn object_metric_buckets(
            &self,
            s: &str,
            v: &VersionRef,
            m: ObjectMetric,
        ) -> Result<Vec<u64>, StoreError> {
            self.inner.object_metric_buckets(s, v, m).await
        }
        async fn pending(&self, s: &str) -> Result<(i64, i64), StoreError> {
            self.inner.pending(s).await
        }
        async fn pause_state(&self, sv: &str, s: &str) -> Result<Option<PauseState>, StoreError> {
            self.inner.pause_state(sv, s).await
        }
        async fn set_pause_state(
            &self,
            sv: &str,
            s: &str,
            st: PauseState,
        ) -> Result<(), StoreError> {
            self.inner.set_pause_state(sv, s, st).await
        }
        async fn cursor(&self, n: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.fail()?;
            self.inner.cursor(n).await
        }
        async fn uploads(&self, s: &str) -> Result<Vec<(String, UploadIntent)>, StoreError> {
            self.inner.uploads(s).await
        }
        async fn try_lock(&self, n: &str, t: u64) -> Result<bool, StoreError> {
            self.inner.try_lock(n, t).await
        }
        async fn unlock(&self, n: &str) -> Result<(), StoreError> {
            self.inner.unlock(n).await
        }
        async fn expire(&self) -> Result<u64, StoreError> {
            self.inner.expire().await
        }
        fn check(&self) -> Result<(), StoreError> {
            self.inner.check()
        }
    }

    fn flaky(dir: &std::path::Path, fails: u32, fatal: bool) -> Arc<Flaky> {
        let db = SledDb::open(dir, Durability::Group, Duration::from_millis(5)).unwrap();
        let clock = ManualClock::new(1_000_000);
        Arc::new(Flaky {
            inner: SledStore::open(db, clock).unwrap(),
            fails: AtomicU32::new(fails),
            fatal,
        })
    }

    fn cursor_op(v: &[u8]) -> StoreOp {
        StoreOp::PutCursor {
            name: "c".into(),
            value: v.to_vec(),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_the_store_answers() {
        let dir = tempfile::tempdir().unwrap();
        let inner = flaky(dir.path(), 3, false);
        let store = RetryingStore::new(inner.clone(), CancellationToken::new())
            .with_backoff(Duration::from_millis(1), Duration::from_millis(4));
        let before = crate::metrics::outage_counters().store_retries;
        store.apply(vec![cursor_op(b"x")]).await.unwrap();
        assert!(crate::metrics::outage_counters().store_retries >= before + 3);
        assert_eq!(store.cursor("c").await.unwrap(), Some(b"x".to_vec()));
        assert!(store.check().is_ok());
    }

    #[tokio::test]
    async fn the_fail_fast_view_reports_the_outage_until_a_call_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let inner = flaky(dir.path(), 2, false);
        let store = RetryingStore::new(inner.clone(), CancellationToken::new());
        let api = store.fail_fast();
        let e = api.cursor("c").await.unwrap_err();
        assert!(e.is_transient());
        // Both views see the outage.
        assert!(api.check().is_err());
        assert!(store.check().is_err());
        assert!(api.cursor("c").await.is_err());
        // The store answers again: the next success clears it.
        assert_eq!(api.cursor("c").await.unwrap(), None);
        assert!(store.check().is_ok());
    }

    #[tokio::test]
    async fn fatal_errors_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let inner = flaky(dir.path(), 1, true);
        let store = RetryingStore::new(inner.clone(), CancellationToken::new());
        let e = store.apply(vec![cursor_op(b"y")]).await.unwrap_err();
        assert!(matches!(e, StoreError::Storage(_)));
        assert!(store.check().is_ok(), "a fatal error is not an outage");
    }

    #[tokio::test]
    async fn a_cancelled_token_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let inner = flaky(dir.path(), u32::MAX, false);
        let token = CancellationToken::new();
        let store = RetryingStore::new(inner.clone(), token.clone())
            .with_backoff(Duration::from_millis(5), Duration::from_millis(5));
        let call = tokio::spawn({
            let store = store.clone();
            async move { store.apply(vec![cursor_op(b"z")]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!call.is_finished());
        token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap()
            .unwrap();
        assert!(r.unwrap_err().is_transient());
    }
}
