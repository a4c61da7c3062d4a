//! [`MongoStore`]: the state store on MongoDB (Cargo feature `mongodb`), through the official
//! driver (3.x). It mirrors [`SledStore`](super::SledStore)'s semantics exactly; what the
//! original keeps in Redis (failed set, metrics) and ZooKeeper (pause state) lives here.
//!
//! Durability: every write uses write concern `majority` with journaling (`w: "majority",
//! j: true`) and reads use read concern `majority`, so an acknowledged update survives the
//! loss of a minority of the replica set. [`StateStore::apply`] runs as one multi-document
//! transaction (needs a replica set or a sharded cluster, as Zenko's MongoDB is): the guards
//! are evaluated inside it, and the whole transaction is retried on
//! `TransientTransactionError` (write conflicts with a concurrent engine, elections), its
//! commit on `UnknownTransactionCommitResult`. Locks are single-document atomic upserts.
//!
//! Collections (in the configured database; `vref` is [`VersionRef::encode`] as BSON binary):
//!
//! ```text
//! meta             {_id: "format", version: 1}
//! replication      {_id: vref, bucket, key, versionId, info: <ReplicationInfo as a document>}
//! failed           {_id: site 0x00 vref (binary), site, bucket, key, versionId,
//!                   score: i64 ms, expireAt: date}
//!                  unique index {site: 1, score: -1}  (listing, counting, unique scores)
//!                  TTL index {expireAt: 1}            (24 h after the score's hour began)
//! metrics          {_id: site 0x00 metric u8 bucket u64 BE (binary), n: i64, expireAt: date}
//! object_metrics   {_id: bucket u64 BE metric u8 site 0x00 vref (binary), n: i64, expireAt: date}
//!                  TTL index {expireAt: 1} on both   (24 h after the 5-minute bucket ends)
//! pending          {_id: site, ops: i64, bytes: i64}  (never expires)
//! pause            {_id: service 0x00 site (binary), service, site, paused, scheduledResume}
//! cursors          {_id: name, value: binary}
//! locks            {_id: name, expiresMs: i64, expireAt: date}   TTL index {expireAt: 1}
//! ```
//!
//! Every query goes by `_id` (metrics buckets are read as one `$in` of the 288 bucket ids) or by
//! the failed set's `{site, score}` index. Windows are computed from the store's clock (so tests
//! can move it); the TTL indexes only reclaim space, [`StateStore::expire`] deletes the same
//! documents explicitly.
//!
//! Scores: `AddFailed` bumps a taken score by 1 ms inside the transaction, and the unique index
//! on `{site, score}` turns a concurrent duplicate into a write conflict that retries, so marker
//! paging never returns an entry twice.
//!
//! The connection string may hold a password: it is never logged; errors name the hosts only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, DateTime, Document};
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{
    Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, ReadConcern, TransactionOptions,
    WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};

use super::{
    check_name, check_op_names, failed_bucket, failed_page_upper, failed_window_start,
    metrics_bucket, FailedEntry, FailedPage, Guard, Metric, ObjectMetric, PauseState, StateStore,
    StoreError, StoreOp, FAILED_BUCKETS, FAILED_BUCKET_MS, METRICS_BUCKETS, METRICS_BUCKET_MS,
};
use crate::clock::SharedClock;
use crate::config::MongoConfig;
use crate::model::{ReplicationInfo, VersionRef};

/// Format version of the documents.
pub const FORMAT_VERSION: i32 = 1;

/// How long `apply` keeps retrying a transaction that fails transiently.
const TXN_RETRY_FOR: Duration = Duration::from_secs(60);

/// The MongoDB state store. Cheap to clone.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    client: Client,
    clock: SharedClock,
    hosts: String,
    healthy: std::sync::Arc<AtomicBool>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("hosts", &self.hosts)
            .field("database", &self.db.name())
            .finish()
    }
}

/// The connection string with any password replaced by `***` (for logs and errors).
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "<unparsable uri>".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let tail = tail.split('?').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{hosts}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

fn storage(e: MongoError) -> StoreError {
    StoreError::Storage(Box::new(e))
}

fn bin(bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn date(ms: u64) -> DateTime {
    DateTime::from_millis(i64_of(ms))
}

fn site_prefixed(site: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(site.len() + 1 + rest.len());
    k.extend_from_slice(site.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn failed_id(site: &str, v: &VersionRef) -> Bson {
    bin(site_prefixed(site, &v.encode()))
}

fn metric_id(site: &str, metric: Metric, bucket: u64) -> Bson {
    let mut rest = vec![metric_code(metric)];
    rest.extend_from_slice(&bucket.to_be_bytes());
    bin(site_prefixed(site, &rest))
}

fn object_metric_id(bucket: u64, metric: ObjectMetric, site: &str, v: &VersionRef) -> Bson {
    let mut k = bucket.to_be_bytes().to_vec();
    k.push(object_metric_code(metric));
    k.extend_from_slice(&site_prefixed(site, &v.encode()));
    bin(k)
}

fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::Ops => 1,
        Metric::Bytes => 2,
        Metric::OpsDone => 3,
        Metric::BytesDone => 4,
        Metric::OpsFail => 5,
        Metric::BytesFail => 6,
    }
}

fn object_metric_code(m: ObjectMetric) -> u8 {
    match m {
        ObjectMetric::Bytes => 1,
        ObjectMetric::BytesDone => 2,
    }
}

fn pause_id(service: &str, site: &str) -> Bson {
    bin(site_prefixed(service, site.as_bytes()))
}

/// When a metrics bucket leaves the 24 h window.
fn metric_expiry(bucket: u64) -> DateTime {
    date(bucket + METRICS_BUCKETS as u64 * METRICS_BUCKET_MS)
}

/// When a failed entry with `score` leaves the window: 24 h after its hour began.
fn failed_expiry(score: u64) -> DateTime {
    date(failed_bucket(score) + FAILED_BUCKETS * FAILED_BUCKET_MS)
}

fn info_doc(info: &ReplicationInfo) -> Result<Document, StoreError> {
    mongodb::bson::to_document(info)
        .map_err(|e| StoreError::Invalid(format!("replication info: {e}")))
}

fn info_of(d: &Document) -> Result<ReplicationInfo, StoreError> {
    let info = d
        .get_document("info")
        .map_err(|_| StoreError::Corrupt("replication info: no info document".into()))?;
    mongodb::bson::from_document(info.clone())
        .map_err(|e| StoreError::Corrupt(format!("replication info: {e}")))
}

fn version_of(d: &Document) -> Option<VersionRef> {
    Some(VersionRef::new(
        d.get_str("bucket").ok()?,
        d.get_str("key").ok()?,
        d.get_str("versionId").ok()?,
    ))
}

fn int_of(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

fn is_duplicate_key(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) => we.code == 11000,
        ErrorKind::Command(ce) => ce.code == 11000,
        _ => false,
    }
}

/// Outcome of one transaction attempt.
enum Attempt {
    Done(bool),
    Retry(MongoError),
}

impl MongoStore {
    /// Connects to `config.uri`, checks the format version and creates the indexes.
    ///
    /// # Errors
    /// `StoreError::Invalid` for a connection string the driver refuses, `StoreError::Storage`
    /// when the server cannot be reached, `StoreError::UnsupportedFormat` for documents written
    /// by an incompatible version.
    pub async fn open(config: &MongoConfig, clock: SharedClock) -> Result<MongoStore, StoreError> {
        let hosts = redact_uri(&config.uri.0);
        let mut options = ClientOptions::parse(&config.uri.0)
            .await
            .map_err(|e| StoreError::Invalid(format!("storage.mongodb.uri {hosts}: {}", e.kind)))?;
        options
            .app_name
            .get_or_insert_with(|| "backbeat".to_string());
        options.write_concern = Some(durable_write_concern());
        options.read_concern = Some(ReadConcern::majority());
        let client = Client::with_options(options).map_err(storage)?;
        let db = client.database_with_options(
            &config.database,
            DatabaseOptions::builder()
                .write_concern(durable_write_concern())
                .read_concern(ReadConcern::majority())
                .build(),
        );
        db.run_command(doc! {"ping": 1}).await.map_err(storage)?;
        let store = MongoStore {
            db,
            client,
            clock,
            hosts,
            healthy: std::sync::Arc::new(AtomicBool::new(true)),
        };
        store.check_format().await?;
        store.create_indexes().await?;
        tracing::info!(mongodb = %store.hosts, database = store.db.name(), "MongoDB state store open.");
        Ok(store)
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection::<Document>(name)
    }

    async fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.coll("meta");
        match meta
            .find_one(doc! {"_id": "format"})
            .await
            .map_err(storage)?
        {
            Some(d) => {
                let found = int_of(&d, "version");
                if found != i64::from(FORMAT_VERSION) {
                    return Err(StoreError::UnsupportedFormat {
                        found: u32::try_from(found).unwrap_or(u32::MAX),
                        expected: FORMAT_VERSION as u32,
                    });
                }
            }
            None => {
                let r = meta
                    .update_one(
                        doc! {"_id": "format"},
                        doc! {"$setOnInsert": {"version": FORMAT_VERSION}},
                    )
                    .upsert(true)
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_duplicate_key(&e) => {}
                    Err(e) => return Err(storage(e)),
                }
            }
        }
        Ok(())
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let ttl = || {
            IndexModel::builder()
                .keys(doc! {"expireAt": 1})
                .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                .build()
        };
        self.coll("failed")
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"site": 1, "score": -1})
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .map_err(storage)?;
        for name in ["failed", "metrics", "object_metrics", "locks"] {
            self.coll(name).create_index(ttl()).await.map_err(storage)?;
        }
        Ok(())
    }

    fn now_ms_inner(&self) -> u64 {
        self.clock.now_ms()
    }

    fn note<T>(&self, r: Result<T, MongoError>) -> Result<T, StoreError> {
        match r {
            Ok(v) => {
                self.healthy.store(true, Ordering::Release);
                Ok(v)
            }
            Err(e) => {
                if matches!(
                    e.kind.as_ref(),
                    ErrorKind::ServerSelection { .. }
                        | ErrorKind::Io(_)
                        | ErrorKind::ConnectionPoolCleared { .. }
                ) {
                    self.healthy.store(false, Ordering::Release);
                }
                Err(storage(e))
            }
        }
    }

    /// One transaction attempt: guards, then ops, then commit.
    async fn attempt(
        &self,
        session: &mut ClientSession,
        guards: &[Guard],
        ops: &[StoreOp],
    ) -> Result<Attempt, StoreError> {
        let options = TransactionOptions::builder()
            .read_concern(ReadConcern::snapshot())
            .write_concern(durable_write_concern())
            .build();
        if let Err(e) = session.start_transaction().with_options(options).await {
            return Err(storage(e));
        }
        let body = async {
            for g in guards {
                if !self.eval_guard(session, g).await? {
                    return Ok::<bool, TxError>(false);
                }
            }
            for op in ops {
                self.apply_op(session, op).await?;
            }
            Ok(true)
        }
        .await;
        match body {
            Ok(false) => {
                let _ = session.abort_transaction().await;
                Ok(Attempt::Done(false))
            }
            Ok(true) => loop {
                match session.commit_transaction().await {
                    Ok(()) => return Ok(Attempt::Done(true)),
                    Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                        return Ok(Attempt::Retry(e))
                    }
                    Err(e) => return Err(storage(e)),
                }
            },
            Err(TxError::Mongo(e)) => {
                let _ = session.abort_transaction().await;
                if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
                    Ok(Attempt::Retry(e))
                } else {
                    Err(storage(e))
                }
            }
            Err(TxError::Store(e)) => {
                let _ = session.abort_transaction().await;
                Err(e)
            }
        }
    }

    async fn find_in(
        &self,
        session: &mut ClientSession,
        coll: &str,
        id: Bson,
    ) -> Result<Option<Document>, TxError> {
        Ok(self
            .coll(coll)
            .find_one(doc! {"_id": id})
            .session(&mut *session)
            .await?)
    }

    async fn eval_guard(&self, session: &mut ClientSession, g: &Guard) -> Result<bool, TxError> {
        Ok(match g {
            Guard::Absent(v) => self
                .find_in(session, "replication", bin(v.encode()))
                .await?
                .is_none(),
            Guard::Present(v) => self
                .find_in(session, "replication", bin(v.encode()))
                .await?
                .is_some(),
            Guard::SiteStatus {
                version,
                site,
                any_of,
            } => {
                match self
                    .find_in(session, "replication", bin(version.encode()))
                    .await?
                {
                    Some(d) => info_of(&d)?
                        .site(site)
                        .map(|s| any_of.contains(&s.status))
                        .unwrap_or(false),
                    None => false,
                }
            }
        })
    }

    async fn put_info(
        &self,
        session: &mut ClientSession,
        v: &VersionRef,
        info: &ReplicationInfo,
    ) -> Result<(), TxError> {
        let d = doc! {
            "_id": bin(v.encode()),
            "bucket": &v.bucket,
            "key": &v.key,
            "versionId": &v.version_id,
            "info": info_doc(info)?,
        };
        self.coll("replication")
            .replace_one(doc! {"_id": bin(v.encode())}, d)
            .upsert(true)
            .session(&mut *session)
            .await?;
        Ok(())
    }

    async fn remove_failed(
        &self,
        session: &mut ClientSession,
        site: &str,
        v: &VersionRef,
    ) -> Result<(), TxError> {
        self.coll("failed")
            .delete_one(doc! {"_id": failed_id(site, v)})
            .session(&mut *session)
            .await?;
        Ok(())
    }

    /// Applies `change` to `version`'s info, if any, and writes it back when it changed.
    async fn update_info(
        &self,
        session: &mut ClientSession,
        version: &VersionRef,
        change: impl FnOnce(&mut ReplicationInfo) -> bool,
    ) -> Result<(), TxError> {
        if let Some(d) = self
            .find_in(session, "replication", bin(version.encode()))
            .await?
        {
            let mut info = info_of(&d)?;
            if change(&mut info) {
                self.put_info(session, version, &info).await?;
            }
        }
        Ok(())
    }

    async fn apply_op(&self, session: &mut ClientSession, op: &StoreOp) -> Result<(), TxError> {
        match op {
            StoreOp::PutReplication { version, info } => {
                self.put_info(session, version, info).await?
            }
            StoreOp::SetSiteStatus {
                version,
                site,
                status,
                data_store_version_id,
            } => {
                self.update_info(session, version, |info| {
                    info.set_site_status(site, *status, data_store_version_id.as_deref())
                })
                .await?
            }
            StoreOp::RemoveSite { version, site } => {
                self.update_info(session, version, |info| info.remove_site(site))
                    .await?
            }
            StoreOp::AddPending { site, ops, bytes } => {
                if *ops != 0 || *bytes != 0 {
                    self.coll("pending")
                        .update_one(
                            doc! {"_id": site},
                            doc! {"$inc": {"ops": *ops, "bytes": *bytes}},
                        )
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
            }
            StoreOp::AddMetric {
                site,
                metric,
                value,
                at_ms,
            } => {
                if *value > 0 {
                    let bucket = metrics_bucket(*at_ms);
                    self.coll("metrics")
                        .update_one(
                            doc! {"_id": metric_id(site, *metric, bucket)},
                            doc! {"$inc": {"n": i64_of(*value)}, "$set": {"expireAt": metric_expiry(bucket)}},
                        )
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
            }
            StoreOp::AddObjectMetric {
                site,
                version,
                metric,
                value,
                at_ms,
            } => {
                if *value > 0 {
                    let bucket = metrics_bucket(*at_ms);
                    self.coll("object_metrics")
                        .update_one(
                            doc! {"_id": object_metric_id(bucket, *metric, site, version)},
                            doc! {"$inc": {"n": i64_of(*value)}, "$set": {"expireAt": metric_expiry(bucket)}},
                        )
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
            }
            StoreOp::AddFailed {
                site,
                version,
                score_ms,
            } => {
                self.remove_failed(session, site, version).await?;
                // The first free score at or above the requested one (scores are unique per
                // site): walk the taken ones upwards until a gap.
                let mut score = *score_ms;
                let mut cursor = self
                    .coll("failed")
                    .find(doc! {"site": site, "score": {"$gte": i64_of(score)}})
                    .sort(doc! {"score": 1})
                    .projection(doc! {"score": 1})
                    .session(&mut *session)
                    .await?;
                while let Some(d) = cursor.next(&mut *session).await {
                    let taken = u64_of(int_of(&d?, "score"));
                    if taken == score {
                        score += 1;
                    } else if taken > score {
                        break;
                    }
                }
                drop(cursor);
                self.coll("failed")
                    .insert_one(doc! {
                        "_id": failed_id(site, version),
                        "site": site,
                        "bucket": &version.bucket,
                        "key": &version.key,
                        "versionId": &version.version_id,
                        "score": i64_of(score),
                        "expireAt": failed_expiry(score),
                    })
                    .session(&mut *session)
                    .await?;
            }
            StoreOp::RemoveFailed { site, version } => {
                self.remove_failed(session, site, version).await?
            }
            StoreOp::PutCursor { name, value } => {
                self.coll("cursors")
                    .replace_one(
                        doc! {"_id": name},
                        doc! {"_id": name, "value": bin(value.clone())},
                    )
                    .upsert(true)
                    .session(&mut *session)
                    .await?;
            }
        }
        Ok(())
    }

    /// Sums of `n` by `_id` for the given ids of `coll`.
    async fn counters(&self, coll: &str, ids: &[Bson]) -> Result<Vec<u64>, StoreError> {
        let mut cursor = self.note(
            self.coll(coll)
                .find(doc! {"_id": {"$in": ids.to_vec()}})
                .await,
        )?;
        let mut found: Vec<(Bson, u64)> = Vec::new();
        while self.note(cursor.advance().await)? {
            let d = self.note(cursor.deserialize_current())?;
            if let Some(id) = d.get("_id") {
                found.push((id.clone(), u64_of(int_of(&d, "n"))));
            }
        }
        Ok(ids
            .iter()
            .map(|id| {
                found
                    .iter()
                    .find(|(f, _)| f == id)
                    .map(|(_, n)| *n)
                    .unwrap_or(0)
            })
            .collect())
    }

    fn bucket_starts(&self) -> Vec<Option<u64>> {
        let current = metrics_bucket(self.now_ms_inner());
        (0..METRICS_BUCKETS as u64)
            .map(|i| current.checked_sub(i * METRICS_BUCKET_MS))
            .collect()
    }
}

fn durable_write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// An error inside a transaction body: the driver's (maybe transient) or ours.
enum TxError {
    Mongo(MongoError),
    Store(StoreError),
}

impl From<MongoError> for TxError {
    fn from(e: MongoError) -> Self {
        TxError::Mongo(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

#[async_trait]
impl StateStore for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn now_ms(&self) -> u64 {
        self.now_ms_inner()
    }

    async fn apply(&self, guards: Vec<Guard>, ops: Vec<StoreOp>) -> Result<bool, StoreError> {
        check_op_names(&ops)?;
        let started = Instant::now();
        let mut session = self.note(self.client.start_session().await)?;
        loop {
            match self.attempt(&mut session, &guards, &ops).await {
                Ok(Attempt::Done(applied)) => {
                    self.healthy.store(true, Ordering::Release);
                    return Ok(applied);
                }
                Ok(Attempt::Retry(e)) => {
                    if started.elapsed() > TXN_RETRY_FOR {
                        return Err(storage(e));
                    }
                    tracing::debug!(error = %e, "State store transaction conflicted; retrying.");
                    tokio::time::sleep(Duration::from_millis(5 + rand::random::<u64>() % 20)).await;
                }
                Err(e) => {
                    if let StoreError::Storage(inner) = &e {
                        if let Some(me) = inner.downcast_ref::<MongoError>() {
                            if matches!(
                                me.kind.as_ref(),
                                ErrorKind::ServerSelection { .. } | ErrorKind::Io(_)
                            ) {
                                self.healthy.store(false, Ordering::Release);
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn replication(
        &self,
        version: &VersionRef,
    ) -> Result<Option<ReplicationInfo>, StoreError> {
        match self.note(
            self.coll("replication")
                .find_one(doc! {"_id": bin(version.encode())})
                .await,
        )? {
            Some(d) => Ok(Some(info_of(&d)?)),
            None => Ok(None),
        }
    }

    async fn failed_page(
        &self,
        site: &str,
        marker: Option<u64>,
        limit: usize,
    ) -> Result<FailedPage, StoreError> {
        check_name("site", site)?;
        let now = self.now_ms_inner();
        let window_start = failed_window_start(now);
        let Some(upper) = failed_page_upper(marker, now) else {
            return Ok(FailedPage::default());
        };
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut cursor = self.note(
            self.coll("failed")
                .find(doc! {"site": site, "score": {"$gte": i64_of(window_start), "$lte": i64_of(upper)}})
                .sort(doc! {"score": -1})
                .limit(fetch)
                .await,
        )?;
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut next_marker = None;
        while self.note(cursor.advance().await)? {
            let d = self.note(cursor.deserialize_current())?;
            let score = u64_of(int_of(&d, "score"));
            if entries.len() >= limit {
                next_marker = Some(score);
                break;
            }
            let version = version_of(&d)
                .ok_or_else(|| StoreError::Corrupt(format!("failed entry of site {site}")))?;
            entries.push(FailedEntry {
                site: site.to_string(),
                version,
                score_ms: score,
            });
        }
        Ok(FailedPage {
            entries,
            next_marker,
        })
    }

    async fn failed_entry(
        &self,
        site: &str,
        version: &VersionRef,
    ) -> Result<Option<FailedEntry>, StoreError> {
        check_name("site", site)?;
        let window_start = failed_window_start(self.now_ms_inner());
        let d = self.note(
            self.coll("failed")
                .find_one(doc! {"_id": failed_id(site, version)})
                .await,
        )?;
        Ok(d.and_then(|d| {
            let score = u64_of(int_of(&d, "score"));
            (score >= window_start).then(|| FailedEntry {
                site: site.to_string(),
                version: version.clone(),
                score_ms: score,
            })
        }))
    }

    async fn failed_count(&self, site: &str) -> Result<u64, StoreError> {
        check_name("site", site)?;
        let window_start = failed_window_start(self.now_ms_inner());
        self.note(
            self.coll("failed")
                .count_documents(doc! {"site": site, "score": {"$gte": i64_of(window_start)}})
                .await,
        )
    }

    async fn metric_buckets(&self, site: &str, metric: Metric) -> Result<Vec<u64>, StoreError> {
        check_name("site", site)?;
        let starts = self.bucket_starts();
        let ids: Vec<Bson> = starts
            .iter()
            .flatten()
            .map(|b| metric_id(site, metric, *b))
            .collect();
        let mut values = self.counters("metrics", &ids).await?.into_iter();
        Ok(starts
            .iter()
            .map(|s| {
                if s.is_some() {
                    values.next().unwrap_or(0)
                } else {
                    0
                }
            })
            .collect())
    }

    async fn object_metric_buckets(
        &self,
        site: &str,
        version: &VersionRef,
        metric: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError> {
        check_name("site", site)?;
        let starts = self.bucket_starts();
        let ids: Vec<Bson> = starts
            .iter()
            .flatten()
            .map(|b| object_metric_id(*b, metric, site, version))
            .collect();
        let mut values = self.counters("object_metrics", &ids).await?.into_iter();
        Ok(starts
            .iter()
            .map(|s| {
                if s.is_some() {
                    values.next().unwrap_or(0)
                } else {
                    0
                }
            })
            .collect())
    }

    async fn pending(&self, site: &str) -> Result<(i64, i64), StoreError> {
        check_name("site", site)?;
        Ok(
            match self.note(self.coll("pending").find_one(doc! {"_id": site}).await)? {
                Some(d) => (int_of(&d, "ops"), int_of(&d, "bytes")),
                None => (0, 0),
            },
        )
    }

    async fn pause_state(
        &self,
        service: &str,
        site: &str,
    ) -> Result<Option<PauseState>, StoreError> {
        check_name("service", service)?;
        Ok(self
            .note(
                self.coll("pause")
                    .find_one(doc! {"_id": pause_id(service, site)})
                    .await,
            )?
            .map(|d| PauseState {
                paused: d.get_bool("paused").unwrap_or(false),
                scheduled_resume_ms: match d.get("scheduledResume") {
                    Some(Bson::Int64(v)) => Some(u64_of(*v)),
                    Some(Bson::DateTime(t)) => Some(u64_of(t.timestamp_millis())),
                    _ => None,
                },
            }))
    }

    async fn set_pause_state(
        &self,
        service: &str,
        site: &str,
        state: PauseState,
    ) -> Result<(), StoreError> {
        check_name("service", service)?;
        check_name("site", site)?;
        let resume = match state.scheduled_resume_ms {
            Some(ms) => Bson::Int64(i64_of(ms)),
            None => Bson::Null,
        };
        let d = doc! {
            "_id": pause_id(service, site),
            "service": service,
            "site": site,
            "paused": state.paused,
            "scheduledResume": resume,
        };
        self.note(
            self.coll("pause")
                .replace_one(doc! {"_id": pause_id(service, site)}, d)
                .upsert(true)
                .await,
        )?;
        Ok(())
    }

    async fn cursor(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .note(self.coll("cursors").find_one(doc! {"_id": name}).await)?
            .and_then(|d| d.get_binary_generic("value").ok().cloned()))
    }

    async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = self.now_ms_inner();
        let until = now.saturating_add(ttl_ms);
        // Matches a free (expired) lock, or inserts a new one; a live lock makes the upsert
        // collide on `_id`, which means "taken".
        let r = self
            .coll("locks")
            .update_one(
                doc! {"_id": name, "expiresMs": {"$lte": i64_of(now)}},
                doc! {"$set": {"expiresMs": i64_of(until), "expireAt": date(until)}},
            )
            .upsert(true)
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => self.note(Err(e)),
        }
    }

    async fn unlock(&self, name: &str) -> Result<(), StoreError> {
        self.note(self.coll("locks").delete_one(doc! {"_id": name}).await)?;
        Ok(())
    }

    async fn expire(&self) -> Result<u64, StoreError> {
        let now = self.now_ms_inner();
        let window_start = failed_window_start(now);
        let mut removed = 0;
        let r = self.note(
            self.coll("failed")
                .delete_many(doc! {"score": {"$lt": i64_of(window_start)}})
                .await,
        )?;
        removed += r.deleted_count;
        let oldest =
            metrics_bucket(now).saturating_sub((METRICS_BUCKETS as u64 - 1) * METRICS_BUCKET_MS);
        for coll in ["metrics", "object_metrics"] {
            // A bucket expires when it leaves the window: its expireAt is at or before the
            // oldest bucket still kept plus one window.
            let r = self.note(
                self.coll(coll)
                    .delete_many(doc! {"expireAt": {"$lte": metric_expiry(oldest.saturating_sub(METRICS_BUCKET_MS))}})
                    .await,
            )?;
            removed += r.deleted_count;
        }
        let r = self.note(
            self.coll("locks")
                .delete_many(doc! {"expiresMs": {"$lte": i64_of(now)}})
                .await,
        )?;
        removed += r.deleted_count;
        Ok(removed)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::Storage(
                format!("mongodb {} is unreachable", self.hosts).into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_passwords_are_redacted() {
        assert_eq!(
            redact_uri("mongodb://bb:s3cret@h1:27017,h2:27017/db?replicaSet=rs0"),
            "mongodb://bb:***@h1:27017,h2:27017/db"
        );
        assert_eq!(
            redact_uri("mongodb://h1:27017/?replicaSet=rs0"),
            "mongodb://h1:27017/"
        );
        assert_eq!(
            redact_uri("mongodb+srv://u:p@x.example/"),
            "mongodb+srv://u:***@x.example/"
        );
        assert!(!redact_uri("mongodb://a:p%40ss@h/").contains("p%40ss"));
    }

    #[test]
    fn metrics_expire_when_they_leave_the_window() {
        let b = metrics_bucket(1_795_689_630_250);
        assert_eq!(
            metric_expiry(b).timestamp_millis() as u64,
            b + 288 * 300_000
        );
        let s = 1_795_689_630_250;
        assert_eq!(
            failed_expiry(s).timestamp_millis() as u64,
            failed_bucket(s) + 24 * 3_600_000
        );
    }
}
