//! Helpers for tests that need a real separate process (the log crash test) and, with the
//! `test-util` feature, faults injected into a running engine (the outage tests).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::durability::{Durability, SledDb};
use crate::log::{Log, Record, SledLog};

/// Topic used by the crash test.
pub const TORTURE_TOPIC: &str = "torture";
/// Group used by the crash test.
pub const TORTURE_GROUP: &str = "torture-group";
/// Partitions of the crash-test topic.
pub const TORTURE_PARTITIONS: u32 = 4;

/// The value written for record number `n`.
pub fn torture_value(n: u64) -> Vec<u8> {
    format!("record-{n:012}-{}", "x".repeat((n % 97) as usize)).into_bytes()
}

/// Appends batches and commits consumed offsets, printing to stdout, after each
/// acknowledgement: `A <partition> <offset> <n>` per appended record and `C <partition>
/// <offset>` per committed offset. Forever, or until `limit` records were acknowledged.
///
/// # Errors
/// A description of the failure.
pub async fn log_torture(
    path: &Path,
    first: u64,
    durability: &str,
    limit: Option<u64>,
) -> Result<(), String> {
    let mode = match durability {
        "every" => Durability::Every,
        "interval" => Durability::Interval,
        _ => Durability::Group,
    };
    // The parent may still be closing its own handle on the directory: retry for a while.
    let mut attempt = 0;
    let db = loop {
        match SledDb::open(path, mode, Duration::from_millis(50)) {
            Ok(db) => break db,
            Err(e) if attempt >= 250 => return Err(crate::error::chain(&e)),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let log = SledLog::open(db).map_err(|e| crate::error::chain(&e))?;
    log.create_topic(TORTURE_TOPIC, TORTURE_PARTITIONS)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let mut consumer = log
        .consumer(TORTURE_TOPIC, TORTURE_GROUP)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let mut n = first;
    let mut i: u64 = 0;
    let stdout = std::io::stdout();
    while limit.is_none_or(|l| n - first < l) {
        i += 1;
        let size = 1 + (i * 7 % 23) as usize;
        let records: Vec<Record> = (0..size as u64)
            .map(|j| Record {
                key: format!("key-{}", (n + j) % 13).into_bytes(),
                value: torture_value(n + j),
                timestamp_ms: 0,
            })
            .collect();
        let positions = log
            .append(TORTURE_TOPIC, records)
            .await
            .map_err(|e| crate::error::chain(&e))?;
        {
            let mut out = stdout.lock();
            for (j, p) in positions.iter().enumerate() {
                let _ = writeln!(out, "A {} {} {}", p.partition, p.offset, n + j as u64);
            }
            let _ = out.flush();
        }
        n += size as u64;
        if i.is_multiple_of(3) {
            let got = consumer
                .poll(64, Duration::from_millis(0))
                .await
                .map_err(|e| crate::error::chain(&e))?;
            let mut last: std::collections::BTreeMap<u32, u64> = Default::default();
            for d in &got {
                last.insert(d.position.partition, d.position.offset + 1);
            }
            let commits: Vec<crate::log::Position> = last
                .into_iter()
                .map(|(partition, offset)| crate::log::Position { partition, offset })
                .collect();
            consumer
                .commit(&commits)
                .await
                .map_err(|e| crate::error::chain(&e))?;
            let mut out = stdout.lock();
            for c in &commits {
                let _ = writeln!(out, "C {} {}", c.partition, c.offset);
            }
            let _ = out.flush();
        }
    }
    Ok(())
}

/// The environment variable naming the fault switch of [`FaultyStore`]: while the file it
/// names exists, every call of the state store fails as unreachable.
pub const STORE_FAULTS_ENV: &str = "BACKBEAT_TEST_STORE_FAULTS";

/// A state store outage injected from outside the process, for the outage tests (issue 14):
/// there is no MongoDB server on the development machines to stop, so the embedded store is
/// wrapped and made to fail with [`StoreError::Unavailable`] (what the MongoDB store returns
/// for a network error or a missing primary) while a switch file exists. Only in builds with
/// the `test-util` feature, and only when [`STORE_FAULTS_ENV`] is set.
#[cfg(feature = "test-util")]
pub struct FaultyStore {
    inner: std::sync::Arc<dyn crate::store::StateStore>,
    switch: std::path::PathBuf,
}

#[cfg(feature = "test-util")]
impl FaultyStore {
    /// `inner` wrapped when [`STORE_FAULTS_ENV`] is set, else `inner` itself.
    pub fn wrap_from_env(
        inner: std::sync::Arc<dyn crate::store::StateStore>,
    ) -> std::sync::Arc<dyn crate::store::StateStore> {
        match std::env::var_os(STORE_FAULTS_ENV) {
            Some(path) => {
                tracing::warn!(switch = ?path, "State store fault injection is on (tests only).");
                std::sync::Arc::new(FaultyStore {
                    inner,
                    switch: path.into(),
                })
            }
            None => inner,
        }
    }

    fn gate(&self) -> Result<(), crate::store::StoreError> {
        if self.switch.exists() {
            return Err(crate::store::StoreError::Unavailable(
                "injected state store outage".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(feature = "test-util")]
mod faulty {
    use async_trait::async_trait;

    use super::FaultyStore;
    use crate::model::{KeyState, VersionRef};
    use crate::store::{
        FailedEntry, FailedPage, Metric, ObjectMetric, PauseState, SiteTotals, StateStore,
        StoreError, StoreOp, UploadIntent,
    };

    #[async_trait]
    impl StateStore for FaultyStore {
        fn kind(&self) -> &'static str {
            self.inner.kind()
        }
        fn now_ms(&self) -> u64 {
            self.inner.now_ms()
        }
        fn may_be_unavailable(&self) -> bool {
            true
        }
        async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
            self.gate()?;
            self.inner.apply(ops).await
        }
        async fn key_state(&self, b: &str, k: &str) -> Result<Option<KeyState>, StoreError> {
            self.gate()?;
            self.inner.key_state(b, k).await
        }
        async fn key_states(
            &self,
            b: &str,
            p: &str,
            a: Option<&str>,
            l: usize,
        ) -> Result<Vec<(String, KeyState)>, StoreError> {
            self.gate()?;
            self.inner.key_states(b, p, a, l).await
        }
        async fn key_children(
            &self,
            b: &str,
            d: &str,
            a: Option<&str>,
            l: usize,
        ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError> {
            self.gate()?;
            self.inner.key_children(b, d, a, l).await
        }
        async fn dir_summary(&self, b: &str, d: &str) -> Result<Option<u64>, StoreError> {
            self.gate()?;
            self.inner.dir_summary(b, d).await
        }
        async fn claim_namespace(&self, s: &str, b: &str) -> Result<String, StoreError> {
            self.gate()?;
            self.inner.claim_namespace(s, b).await
        }
        async fn failed_page(
            &self,
            s: &str,
            m: Option<u64>,
            l: usize,
        ) -> Result<FailedPage, StoreError> {
            self.gate()?;
            self.inner.failed_page(s, m, l).await
        }
        async fn failed_entry(
            &self,
            s: &str,
            v: &VersionRef,
        ) -> Result<Option<FailedEntry>, StoreError> {
            self.gate()?;
            self.inner.failed_entry(s, v).await
        }
        async fn failed_count(&self, s: &str) -> Result<u64, StoreError> {
            self.gate()?;
            self.inner.failed_count(s).await
        }
        async fn metric_buckets(&self, s: &str, m: Metric) -> Result<Vec<u64>, StoreError> {
            self.gate()?;
            self.inner.metric_buckets(s, m).await
        }
        async fn object_metric_buckets(
            &self,
            s: &str,
            v: &VersionRef,
            m: ObjectMetric,
        ) -> Result<Vec<u64>, StoreError> {
            self.gate()?;
            self.inner.object_metric_buckets(s, v, m).await
        }
        async fn pending(&self, s: &str) -> Result<(i64, i64), StoreError> {
            self.gate()?;
            self.inner.pending(s).await
        }
        async fn site_totals(&self, s: &str) -> Result<SiteTotals, StoreError> {
            self.gate()?;
            self.inner.site_totals(s).await
        }
        async fn pause_state(&self, sv: &str, s: &str) -> Result<Option<PauseState>, StoreError> {
            self.gate()?;
            self.inner.pause_state(sv, s).await
        }
        async fn set_pause_state(
            &self,
            sv: &str,
            s: &str,
            st: PauseState,
        ) -> Result<(), StoreError> {
            self.gate()?;
            self.inner.set_pause_state(sv, s, st).await
        }
        async fn cursor(&self, n: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.gate()?;
            self.inner.cursor(n).await
        }
        async fn uploads(&self, s: &str) -> Result<Vec<(String, UploadIntent)>, StoreError> {
            self.gate()?;
            self.inner.uploads(s).await
        }
        async fn try_lock(&self, n: &str, t: u64) -> Result<bool, StoreError> {
            self.gate()?;
            self.inner.try_lock(n, t).await
        }
        async fn unlock(&self, n: &str) -> Result<(), StoreError> {
            self.gate()?;
            self.inner.unlock(n).await
        }
        async fn expire(&self) -> Result<u64, StoreError> {
            self.gate()?;
            self.inner.expire().await
        }
        fn check(&self) -> Result<(), StoreError> {
            self.inner.check()
        }
    }
}
