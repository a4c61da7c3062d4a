//! [`RetryingLog`]: a log that may not be connected yet, and that rides out an outage of the
//! brokers (issue 14).
//!
//! At start the engine serves its API before the log is reachable: [`RetryingLog::pending`]
//! is a log with nothing behind it yet, whose calls fail with [`LogError::Unavailable`] (the
//! healthcheck answers 500 with the log unhealthy) until [`RetryingLog::connect`] sets the
//! opened log once its topics exist.
//!
//! Afterwards, a transient error ([`LogError::Unavailable`]: no broker answers, a request
//! timed out, a partition without a leader) of an append, a consumer's poll or commit, or any
//! other call is retried with capped exponential backoff and jitter until it succeeds, so a
//! pipeline stage waits for the brokers instead of ending the process. Other errors (a
//! corrupt record, a full disk, an invalid request) are returned at once and stay fatal.
//!
//! Re-doing a call is safe: reads and commits of given offsets are idempotent, and an append
//! retried after its answer was lost may write some records twice, which the pipeline's
//! at-least-once handling absorbs (a replayed entry changes nothing in the store).
//!
//! As for the store, the pipeline gets the retrying view and the API a fail-fast view
//! ([`RetryingLog::fail_fast`]) sharing one "unavailable" flag, which [`Log::check`]
//! reports; [`crate::metrics`] counts the retries (`backbeat_log_retries_total`) and shows the
//! state (`backbeat_log_unavailable`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{
    Consumer, Delivery, EntryFormat, Log, LogError, PartitionLag, Position, Record, TopicInfo,
};

/// First wait after a transient error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the retrying and fail-fast views share.
struct Shared {
    log: OnceLock<Arc<dyn Log>>,
    down: AtomicBool,
    connected: tokio::sync::Notify,
    kind: &'static str,
    format: EntryFormat,
}

/// A log that retries transient errors (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct RetryingLog {
    shared: Arc<Shared>,
    retry: bool,
    token: CancellationToken,
    backoff: (Duration, Duration),
}

impl std::fmt::Debug for RetryingLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryingLog")
            .field("kind", &self.shared.kind)
            .field("connected", &self.shared.log.get().is_some())
            .field("retry", &self.retry)
            .finish()
    }
}

/// Capped exponential backoff with jitter on the upper half.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    /// Starting at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            delay: min,
            max: max.max(min),
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.delay / 2;
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (half.as_millis() as u64).max(1));
        self.delay = (self.delay * 2).min(self.max);
        half + jitter
    }
}

impl RetryingLog {
    /// A log of `kind` (`sled`, `kafka`) writing entries as `format`, not connected yet.
    /// Retrying calls wait for [`RetryingLog::connect`]; they give up when `token` is
    /// cancelled (then the error is returned, so a stopping stage is not held by an outage).
    pub fn pending(
        kind: &'static str,
        format: EntryFormat,
        token: CancellationToken,
    ) -> RetryingLog {
        RetryingLog {
            shared: Arc::new(Shared {
                log: OnceLock::new(),
                down: AtomicBool::new(false),
                connected: tokio::sync::Notify::new(),
                kind,
                format,
            }),
            retry: true,
            token,
            backoff: (BACKOFF_MIN, BACKOFF_MAX),
        }
    }

    /// The same with other backoff bounds (tests).
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> RetryingLog {
        self.backoff = (min, max.max(min));
        self
    }

    /// Sets the opened log (once; a second call is ignored).
    pub fn connect(&self, log: Arc<dyn Log>) {
        if self.shared.log.set(log).is_ok() {
            self.mark_up();
            self.shared.connected.notify_waiters();
        }
    }

    /// Whether [`RetryingLog::connect`] was called.
    pub fn is_connected(&self) -> bool {
        self.shared.log.get().is_some()
    }

    /// A view that never retries nor waits, sharing the connection and the unavailable flag:
    /// for the API, whose requests should fail fast during an outage.
    pub fn fail_fast(&self) -> RetryingLog {
        RetryingLog {
            retry: false,
            ..self.clone()
        }
    }

    /// Marks the log unreachable (the first time: a warning and the gauge).
    pub fn mark_down(&self, error: &LogError) {
        if !self.shared.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                log = self.shared.kind,
                error = %crate::error::chain(error),
                "Log unavailable; retrying with backoff (the healthcheck reports it)."
            );
            crate::metrics::set_log_unavailable(true);
        }
    }

    fn mark_up(&self) {
        if self.shared.down.swap(false, Ordering::AcqRel) {
            tracing::info!(log = self.shared.kind, "Log available again.");
            crate::metrics::set_log_unavailable(false);
        }
    }

    fn not_connected(&self) -> LogError {
        LogError::Unavailable(format!("the {} log is not connected yet", self.shared.kind).into())
    }

    /// The connected log, waiting for it while retrying.
    async fn log(&self) -> Result<Arc<dyn Log>, LogError> {
        loop {
            let wait = self.shared.connected.notified();
            if let Some(l) = self.shared.log.get() {
                return Ok(l.clone());
            }
            if !self.retry {
                return Err(self.not_connected());
            }
            tokio::select! {
                () = self.token.cancelled() => return Err(self.not_connected()),
                () = wait => {}
                // In case the notification raced the check above.
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Waits out a transient error: `Ok` to try again, the error when not retrying.
    async fn wait_after(&self, e: LogError, backoff: &mut Backoff) -> Result<(), LogError> {
        self.mark_down(&e);
        if !self.retry || self.token.is_cancelled() {
            return Err(e);
        }
        crate::metrics::count_log_retry();
        let delay = backoff.next_delay();
        tracing::debug!(error = %crate::error::chain(&e), delay_ms = delay.as_millis() as u64,
            "Log call failed; retrying.");
        tokio::select! {
            () = self.token.cancelled() => Err(e),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Runs `call` on the connected log, again after each transient error while retrying.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, LogError>
    where
        F: FnMut(Arc<dyn Log>) -> Fut + Send,
        Fut: Future<Output = Result<T, LogError>> + Send,
        T: Send,
    {
        let log = self.log().await?;
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        loop {
            match call(log.clone()).await {
                Ok(v) => {
                    self.mark_up();
                    return Ok(v);
                }
                Err(e) if e.is_transient() => self.wait_after(e, &mut backoff).await?,
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl Log for RetryingLog {
    fn kind(&self) -> &'static str {
        self.shared.kind
    }

    fn entry_format(&self) -> EntryFormat {
        self.shared
            .log
            .get()
            .map_or(self.shared.format, |l| l.entry_format())
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError> {
        self.call(|l| async move { l.create_topic(topic, partitions).await })
            .await
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError> {
        self.call(|l| async move { l.topics().await }).await
    }

    fn may_be_unavailable(&self) -> bool {
        self.shared.log.get().is_none_or(|l| l.may_be_unavailable())
    }

    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        let log = self.log().await?;
        if !log.may_be_unavailable() {
            // Nothing to retry: no copy of the records kept (the pipeline's hot path).
            return log.append(topic, records).await;
        }
        self.call(|l| {
            let records = records.clone();
            async move { l.append(topic, records).await }
        })
        .await
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, LogError> {
        let inner = self
            .call(|l| async move { l.consumer(topic, group).await })
            .await?;
        if !self.retry {
            return Ok(inner);
        }
        Ok(Box::new(RetryingConsumer {
            inner,
            log: self.clone(),
        }))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Vec<PartitionLag>, LogError> {
        self.call(|l| async move { l.lag(topic, group).await })
            .await
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, LogError> {
        self.call(|l| async move { l.groups(topic).await }).await
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), LogError> {
        self.call(|l| async move { l.delete_group(topic, group).await })
            .await
    }

    async fn retain(&self, topic: &str) -> Result<u64, LogError> {
        self.call(|l| async move { l.retain(topic).await }).await
    }

    fn offset_losses(&self) -> Option<tokio::sync::broadcast::Receiver<super::OffsetLoss>> {
        self.shared.log.get().and_then(|l| l.offset_losses())
    }

    fn check(&self) -> Result<(), LogError> {
        let Some(log) = self.shared.log.get() else {
            return Err(self.not_connected());
        };
        if self.shared.down.load(Ordering::Acquire) {
            return Err(LogError::Unavailable(
                format!("the {} log is unreachable; retrying", self.shared.kind).into(),
            ));
        }
        log.check()
    }
}

/// A consumer whose transient poll, commit and keep-alive errors are retried.
struct RetryingConsumer {
    inner: Box<dyn Consumer>,
    log: RetryingLog,
}

#[async_trait]
impl Consumer for RetryingConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, LogError> {
        let (min, cap) = self.log.backoff;
        let mut backoff = Backoff::new(min, cap);
        loop {
            match self.inner.poll(max, wait).await {
                Ok(v) => {
                    // An empty poll proves nothing: librdkafka reports a lost broker to the
                    // client context and returns no records.
                    if !v.is_empty() {
                        self.log.mark_up();
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() => self.log.wait_after(e, &mut backoff).await?,
                Err(e) => return Err(e),
            }
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        let (min, cap) = self.log.backoff;
        let mut backoff = Backoff::new(min, cap);
        loop {
            match self.inner.commit(positions).await {
                Ok(()) => {
                    self.log.mark_up();
                    return Ok(());
                }
                Err(e) if e.is_transient() => self.log.wait_after(e, &mut backoff).await?,
                Err(e) => return Err(e),
            }
        }
    }

    fn seek(&mut self, position: Position) -> Result<(), LogError> {
        self.inner.seek(position)
    }

    fn committed(&self) -> Vec<u64> {
        self.inner.committed()
    }

    async fn keep_alive(&mut self) -> Result<(), LogError> {
        let (min, cap) = self.log.backoff;
        let mut backoff = Backoff::new(min, cap);
        loop {
            match self.inner.keep_alive().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => self.log.wait_after(e, &mut backoff).await?,
                Err(e) => return Err(e),
            }
        }
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        self.inner.keep_alive_every()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::durability::{Durability, SledDb};
    use crate::log::SledLog;

    fn sled_log(dir: &std::path::Path) -> Arc<dyn Log> {
        let db = SledDb::open(dir, Durability::Group, Duration::from_millis(5)).unwrap();
        Arc::new(SledLog::open(db).unwrap())
    }

    #[tokio::test]
    async fn a_pending_log_is_unhealthy_and_fails_fast_for_the_api() {
        let log = RetryingLog::pending("sled", EntryFormat::Binary, CancellationToken::new());
        let api = log.fail_fast();
        assert!(api.check().unwrap_err().is_transient());
        assert!(api.topics().await.unwrap_err().is_transient());
        assert_eq!(api.entry_format(), EntryFormat::Binary);
    }

    #[tokio::test]
    async fn retrying_calls_wait_for_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let log = RetryingLog::pending("sled", EntryFormat::Binary, CancellationToken::new());
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.create_topic("t", 2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        log.connect(sled_log(dir.path()));
        let n = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(n, 2);
        assert!(log.fail_fast().check().is_ok());
        let mut c = log.consumer("t", "g").await.unwrap();
        log.append("t", vec![Record::new("k", "v")]).await.unwrap();
        let got = c.poll(10, Duration::from_millis(500)).await.unwrap();
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn cancelling_ends_the_wait_for_a_connection() {
        let token = CancellationToken::new();
        let log = RetryingLog::pending("kafka", EntryFormat::Json, token.clone());
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.topics().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(r.unwrap_err().is_transient());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] < Duration::from_millis(100));
        assert!(waits[4] >= Duration::from_millis(200) && waits[4] < Duration::from_millis(400));
    }
}
