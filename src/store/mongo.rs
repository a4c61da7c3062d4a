//! [`MongoStore`]: the state store on MongoDB (Cargo feature `mongodb`), through the official
//! driver (3.x). It mirrors [`SledStore`](super::SledStore)'s semantics op for op; what the
//! original keeps in Redis (failed set, metrics) and ZooKeeper (pause state) lives here.
//!
//! Durability: every write uses write concern `majority` with journaling (`w: "majority",
//! j: true`) and reads use read concern `majority`, so an acknowledged update survives the
//! loss of a minority of the replica set. [`StateStore::apply`] runs as one multi-document
//! transaction (needs a replica set or a sharded cluster, as Zenko's MongoDB is): each key
//! change reads the key's document, runs [`transitions::apply`] and writes the record and its
//! effects inside it. The whole transaction is retried on `TransientTransactionError` (write
//! conflicts with a concurrent engine, elections) and on a duplicate key (two engines inserting
//! the same document: the retry reads the winner's), its commit on
//! `UnknownTransactionCommitResult`. Locks are single-document atomic upserts.
//!
//! Collections (in the configured database; `vref` is [`VersionRef::encode`]; records and
//! failure details are the serde forms of [`KeyState`] and [`FailedInfo`] as documents):
//!
//! ```text
//! meta             {_id: "format", version: 2}
//! keys             {_id: ObjectId, bucket, key, state: <KeyState>, expiresMs?: i64}
//!                  unique index {bucket: 1, key: 1}   (one record per source key, listings)
//!                  sparse index {expiresMs: 1}        (a replicated deletion's record, dropped
//!                                                      by the expiry sweep once expired)
//! failed           {_id: site 0x00 vref (binary), site, bucket, key, versionId,
//!                   score: i64 ms, info: <FailedInfo>}
//!                  unique index {site: 1, score: -1}  (listing, counting, unique scores)
//!                  index {score: 1}                   (expiry)
//! metrics          {_id: site 0x00 metric u8 bucket u64 BE (binary), n: i64, at: i64 bucket}
//! object_metrics   {_id: bucket u64 BE metric u8 site 0x00 vref (binary), n: i64, at: i64}
//!                  index {at: 1} on both              (expiry)
//! pending          {_id: site, ops: i64, bytes: i64}  (never expires)
//! dirs             {_id: ObjectId, bucket, dir, summary: i64 (the u64's bits)}
//!                  unique index {bucket: 1, dir: 1}
//! namespaces       {_id: site, bucket}                (owner of a bucket_match site)
//! pause            {_id: service 0x00 site (binary), service, site, paused, scheduledResume}
//! cursors          {_id: name, value: binary}
//! locks            {_id: name, expiresMs: i64}
//! ```
//!
//! Key order: `key_states` and `key_children` list keys in byte order, as sled does. Keys are
//! BSON strings, which MongoDB compares by their UTF-8 bytes (the collections use the simple
//! collation), not binary `_id`s: MongoDB orders BinData by length first. A prefix is the range
//! `[prefix, prefix_end(prefix))` of the `{bucket, key}` index.
//!
//! No TTL index: every window (failed set, metrics, locks, deleted keys) follows the store's
//! clock, which tests move and the server's TTL monitor does not know; the engine's periodic
//! [`StateStore::expire`] sweep deletes expired documents, as with sled.
//!
//! Scores: a failed entry takes the first free score at or after its time inside the
//! transaction, and the unique index on `{site, score}` turns a concurrent duplicate into a
//! write conflict that retries, so marker paging never returns an entry twice.
//!
//! The connection string may hold a password: it is never logged; errors name the hosts only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Document};
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{
    Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, ReadConcern, TransactionOptions,
    WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};

use super::DELETED_KEY_TTL_MS;
use super::{
    check_name, check_op_names, failed_page_upper, failed_window_start, metrics_bucket,
    FailedEntry, FailedPage, Metric, ObjectMetric, PauseState, StateStore, StoreError, StoreOp,
    UploadIntent, METRICS_BUCKETS, METRICS_BUCKET_MS,
};
use crate::clock::SharedClock;
use crate::config::MongoConfig;
use crate::model::{KeyState, ReplicationStatus, VersionRef};
use crate::transitions::{self, FailedInfo, KeyChange};

/// Format version of the documents. Version 1 kept one document per version (`replication`).
pub const FORMAT_VERSION: i32 = 2;

/// Records read by `key_children`'s first query, and after each subdirectory skipped.
const FIRST_WINDOW: usize = 16;

/// How long `apply` keeps retrying a transaction that fails transiently.
const TXN_RETRY_FOR: Duration = Duration::from_secs(60);

/// Every collection the transactions write: created at open, because MongoDB before 4.4
/// cannot create a collection inside a transaction.
const COLLECTIONS: [&str; 9] = [
    "keys",
    "failed",
    "metrics",
    "object_metrics",
    "pending",
    "dirs",
    "namespaces",
    "cursors",
    "uploads",
];

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

/// A driver error as a store error: [`StoreError::Unavailable`] when the server is out of
/// reach for now (retried by [`super::RetryingStore`]), [`StoreError::Storage`] otherwise.
fn storage(e: MongoError) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::Storage(Box::new(e))
    }
}

/// Server codes of a node that is out of reach, shutting down, stepping down or not (yet) a
/// primary: the replica set answers again once it has one (the driver's retryable-read set:
/// InterruptedAtShutdown, InterruptedDueToReplStateChange, NotWritablePrimary,
/// NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary, PrimarySteppedDown, ShutdownInProgress,
/// HostNotFound, HostUnreachable, NetworkTimeout, SocketException, ReadConcernMajorityNotAvailableYet,
/// ExceededTimeLimit; with LegacyNotPrimary and MaxTimeMSExpired).
const TRANSIENT_CODES: [i32; 15] = [
    11600, 11602, 10107, 13435, 13436, 189, 91, 7, 6, 89, 9001, 134, 262, 10058, 50,
];

/// Whether a driver error means "the server cannot be reached for now" rather than "the
/// request or the data is wrong": network errors, server selection timeouts, a cleared
/// connection pool, a node without a primary, and anything the driver labels retryable or
/// transient (a commit whose result stayed unknown is re-done whole: see
/// [`super::retrying`] for why that is safe).
fn is_transient(e: &MongoError) -> bool {
    if matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    ) {
        return true;
    }
    if [
        mongodb::error::RETRYABLE_WRITE_ERROR,
        TRANSIENT_TRANSACTION_ERROR,
        UNKNOWN_TRANSACTION_COMMIT_RESULT,
    ]
    .iter()
    .any(|l| e.contains_label(l))
    {
        return true;
    }
    let code = match e.kind.as_ref() {
        ErrorKind::Command(ce) => Some(ce.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(wc)) => Some(wc.code),
        ErrorKind::InsertMany(im) => im.write_concern_error.as_ref().map(|wc| wc.code),
        _ => None,
    };
    code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
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

/// A directory summary is a hash: all 64 bits matter, so it is stored as the i64 with the same
/// bits (BSON has no unsigned integer).
fn summary_bits(v: u64) -> i64 {
    i64::from_be_bytes(v.to_be_bytes())
}

fn summary_of(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes())
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

/// The end of the range of strings starting with `prefix`: `prefix` with its last character
/// replaced by the next one (carrying over U+10FFFF), so that the strings in
/// `[prefix, end)` are exactly those starting with `prefix` (UTF-8 byte order is code point
/// order, and no character lies between one and the next). `None` when there is no bound
/// (an empty prefix, or only U+10FFFF).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match u32::from(last) + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A range condition on a string field: the strings starting with `prefix`, after `after` when
/// it is not before `prefix` (as sled's listings).
fn string_range(prefix: &str, after: Option<&str>) -> Document {
    let mut range = Document::new();
    match after {
        Some(a) if a >= prefix => range.insert("$gt", a),
        _ => range.insert("$gte", prefix),
    };
    if let Some(end) = prefix_end(prefix) {
        range.insert("$lt", end);
    }
    range
}

/// `key_children`'s walk of directory `dir` through `find`, a reader of up to `want` records
/// whose key is in a range (a [`string_range`] condition), in key order.
async fn walk_children<F, Fut>(
    dir: &str,
    after: Option<&str>,
    limit: usize,
    mut find: F,
) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError>
where
    F: FnMut(Document, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<(String, KeyState)>, StoreError>>,
{
    let mut out: Vec<(String, KeyState)> = Vec::new();
    let mut subdirs = Vec::new();
    let mut range = string_range(dir, after);
    // As sled: read in key order; a key further down names its subdirectory, and the
    // listing seeks past that subtree (`/` + 1 is `0`) instead of reading it. Pages start
    // small and grow while they hold only direct children, so a subtree costs a few
    // records read, not a page of them.
    let mut window = FIRST_WINDOW;
    while out.len() < limit {
        let want = window.min(limit - out.len());
        let page = find(range.clone(), want).await?;
        let fetched = page.len();
        let mut seek = None;
        for (key, state) in page {
            let Some(rest) = key.strip_prefix(dir) else {
                return Ok((out, subdirs));
            };
            if let Some(slash) = rest.find('/') {
                let end = dir.len() + slash;
                subdirs.push(key.get(..=end).unwrap_or_default().to_string());
                seek = Some(format!("{}0", key.get(..end).unwrap_or_default()));
                break;
            }
            out.push((key, state));
        }
        range.remove("$gt");
        range.remove("$gte");
        match (seek, out.last()) {
            (Some(from), _) => {
                range.insert("$gte", from);
                window = FIRST_WINDOW;
            }
            (None, Some((last, _))) if fetched == want => {
                range.insert("$gt", last.clone());
                window = window.saturating_mul(4);
            }
            // The listing ended.
            _ => break,
        }
    }
    Ok((out, subdirs))
}

fn key_filter(bucket: &str, key: &str) -> Document {
    doc! {"bucket": bucket, "key": key}
}

fn state_doc(state: &KeyState) -> Result<Document, StoreError> {
    mongodb::bson::to_document(state).map_err(|e| StoreError::Invalid(format!("key record: {e}")))
}

fn state_of(d: &Document) -> Result<KeyState, StoreError> {
    let state = d
        .get_document("state")
        .map_err(|_| StoreError::Corrupt("key record: no state document".into()))?;
    mongodb::bson::from_document(state.clone())
        .map_err(|e| StoreError::Corrupt(format!("key record: {e}")))
}

/// The key and record of a `keys` document.
fn key_record(d: &Document) -> Result<(String, KeyState), StoreError> {
    let key = d
        .get_str("key")
        .map_err(|_| StoreError::Corrupt("key record: no key".into()))?;
    Ok((key.to_string(), state_of(d)?))
}

fn failed_info_doc(info: &FailedInfo) -> Result<Document, StoreError> {
    mongodb::bson::to_document(info).map_err(|e| StoreError::Invalid(format!("failed entry: {e}")))
}

/// A `failed` document as an entry of `site`.
fn failed_entry_of(site: &str, d: &Document) -> Result<FailedEntry, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("failed entry of site {site}"));
    let version = VersionRef::new(
        d.get_str("bucket").map_err(|_| corrupt())?,
        d.get_str("key").map_err(|_| corrupt())?,
        d.get_str("versionId").map_err(|_| corrupt())?,
    );
    let info = d.get_document("info").map_err(|_| corrupt())?;
    let info: FailedInfo = mongodb::bson::from_document(info.clone())
        .map_err(|e| StoreError::Corrupt(format!("failed entry of site {site}: {e}")))?;
    Ok(FailedEntry {
        site: site.to_string(),
        version,
        score_ms: u64_of(int_of(d, "score")),
        info,
    })
}

/// A deletion replicated everywhere: its record is kept [`DELETED_KEY_TTL_MS`], then swept.
fn settled(state: &KeyState) -> bool {
    state.deleted
        && state
            .sites
            .iter()
            .all(|s| s.status == ReplicationStatus::Completed)
}

fn int_of(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) => Some(we.code),
        ErrorKind::Command(ce) => Some(ce.code),
        _ => None,
    }
}

fn is_duplicate_key(e: &MongoError) -> bool {
    error_code(e) == Some(11000)
}

fn durable_write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// Outcome of one transaction attempt.
enum Attempt {
    /// Committed: whether each op changed anything.
    Done(Vec<bool>),
    /// Failed transiently: run it again.
    Retry(MongoError),
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

impl MongoStore {
    /// Connects to `config.uri`, checks the format version and creates the collections and
    /// indexes.
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
        store.create_collections().await?;
        store.create_indexes().await?;
        tracing::info!(mongodb = %store.hosts, database = store.db.name(), "MongoDB state store open.");
        Ok(store)
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection::<Document>(name)
    }

    /// Refuses a database written in another layout before anything is written to it.
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
                    tracing::error!(
                        mongodb = %self.hosts,
                        database = self.db.name(),
                        found,
                        expected = FORMAT_VERSION,
                        "The MongoDB database holds another layout of the state store (version 1 \
                         kept one document per version, this one keeps one per source key); point \
                         storage.mongodb.database at a new database, or drop this one."
                    );
                    return Err(StoreError::UnsupportedFormat {
                        found: u32::try_from(found).unwrap_or(u32::MAX),
                        expected: FORMAT_VERSION.unsigned_abs(),
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

    async fn create_collections(&self) -> Result<(), StoreError> {
        let existing = self.db.list_collection_names().await.map_err(storage)?;
        for name in COLLECTIONS {
            if existing.iter().any(|e| e == name) {
                continue;
            }
            match self.db.create_collection(name).await {
                Ok(()) => {}
                // Created meanwhile by another engine (NamespaceExists).
                Err(e) if error_code(&e) == Some(48) => {}
                Err(e) => return Err(storage(e)),
            }
        }
        Ok(())
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, options: IndexOptions| {
            IndexModel::builder().keys(keys).options(options).build()
        };
        let unique = || IndexOptions::builder().unique(true).build();
        let plain = IndexOptions::default;
        let indexes = [
            ("keys", index(doc! {"bucket": 1, "key": 1}, unique())),
            (
                "keys",
                index(
                    doc! {"expiresMs": 1},
                    IndexOptions::builder().sparse(true).build(),
                ),
            ),
            ("failed", index(doc! {"site": 1, "score": -1}, unique())),
            ("failed", index(doc! {"score": 1}, plain())),
            ("metrics", index(doc! {"at": 1}, plain())),
            ("object_metrics", index(doc! {"at": 1}, plain())),
            ("dirs", index(doc! {"bucket": 1, "dir": 1}, unique())),
        ];
        for (coll, model) in indexes {
            self.coll(coll).create_index(model).await.map_err(storage)?;
        }
        Ok(())
    }

    fn note<T>(&self, r: Result<T, MongoError>) -> Result<T, StoreError> {
        match r {
            Ok(v) => {
                self.healthy.store(true, Ordering::Release);
                Ok(v)
            }
            Err(e) => {
                self.note_unreachable(&e);
                Err(storage(e))
            }
        }
    }

    fn note_unreachable(&self, e: &MongoError) {
        if matches!(
            e.kind.as_ref(),
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
        ) {
            self.healthy.store(false, Ordering::Release);
        }
    }

    /// One transaction attempt: the ops in order, then the commit (retried while its result
    /// is unknown, until `deadline`).
    async fn attempt(
        &self,
        session: &mut ClientSession,
        ops: &[StoreOp],
        now: u64,
        deadline: Instant,
    ) -> Result<Attempt, StoreError> {
        let options = TransactionOptions::builder()
            .read_concern(ReadConcern::snapshot())
            .write_concern(durable_write_concern())
            .build();
        if let Err(e) = session.start_transaction().with_options(options).await {
            return Err(storage(e));
        }
        let body = async {
            let mut changed = Vec::with_capacity(ops.len());
            for op in ops {
                changed.push(self.apply_op(session, op, now).await?);
            }
            Ok::<Vec<bool>, TxError>(changed)
        }
        .await;
        match body {
            Ok(changed) => loop {
                match session.commit_transaction().await {
                    Ok(()) => return Ok(Attempt::Done(changed)),
                    Err(e)
                        if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                            && Instant::now() < deadline =>
                    {
                        continue
                    }
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                        return Ok(Attempt::Retry(e))
                    }
                    Err(e) => return Err(storage(e)),
                }
            },
            Err(TxError::Mongo(e)) => {
                let _ = session.abort_transaction().await;
                if e.contains_label(TRANSIENT_TRANSACTION_ERROR) || is_duplicate_key(&e) {
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

    async fn apply_op(
        &self,
        session: &mut ClientSession,
        op: &StoreOp,
        now: u64,
    ) -> Result<bool, TxError> {
        match op {
            StoreOp::Key {
                bucket,
                key,
                change,
            } => return self.key_change(session, bucket, key, change, now).await,
            StoreOp::AddMetric {
                site,
                metric,
                value,
                at_ms,
            } => {
                self.add_metric(session, site, *metric, *value, *at_ms)
                    .await?
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
                            doc! {"$inc": {"n": i64_of(*value)}, "$set": {"at": i64_of(bucket)}},
                        )
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
            }
            StoreOp::PutDirSummary {
                bucket,
                dir,
                summary,
            } => {
                self.coll("dirs")
                    .replace_one(
                        doc! {"bucket": bucket, "dir": dir},
                        doc! {"bucket": bucket, "dir": dir, "summary": summary_bits(*summary)},
                    )
                    .upsert(true)
                    .session(&mut *session)
                    .await?;
            }
            StoreOp::DeleteDirSummaries { bucket, prefix } => {
                // Inside the transaction (sled removes the range after its own): the same
                // result, in op order.
                self.coll("dirs")
                    .delete_many(doc! {"bucket": bucket, "dir": string_range(prefix, None)})
                    .session(&mut *session)
                    .await?;
            }
            StoreOp::ClaimNamespace { site, bucket } => {
                let claimed = self
                    .coll("namespaces")
                    .find_one(doc! {"_id": site})
                    .session(&mut *session)
                    .await?;
                if claimed.is_some() {
                    return Ok(false);
                }
                self.coll("namespaces")
                    .insert_one(doc! {"_id": site, "bucket": bucket})
                    .session(&mut *session)
                    .await?;
            }
            StoreOp::AddPending { site, ops, bytes } => {
                self.coll("pending")
                    .update_one(
                        doc! {"_id": site},
                        doc! {"$inc": {"ops": *ops, "bytes": *bytes}},
                    )
                    .upsert(true)
                    .session(&mut *session)
                    .await?;
            }
            StoreOp::AddFailed {
                site,
                version,
                info,
                score_ms,
            } => {
                self.add_failed(session, site, version, info, *score_ms)
                    .await?
            }
            StoreOp::PutUpload { site, id, intent } => {
                let mut d = doc! {
                    "_id": format!("{site}\u{0}{id}"),
                    "site": site,
                    "id": id,
                    "key": &intent.key,
                    "startedMs": i64_of(intent.started_ms),
                    "owner": &intent.owner,
                };
                if let Some(u) = &intent.upload_id {
                    d.insert("uploadId", u);
                }
                self.coll("uploads")
                    .replace_one(doc! {"_id": format!("{site}\u{0}{id}")}, d)
                    .upsert(true)
                    .session(&mut *session)
                    .await?;
            }
            StoreOp::DeleteUpload { site, id } => {
                self.coll("uploads")
                    .delete_one(doc! {"_id": format!("{site}\u{0}{id}")})
                    .session(&mut *session)
                    .await?;
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
        Ok(true)
    }

    /// Applies a key change and its effects (as sled's `tx_key_change`); returns whether it
    /// changed anything.
    async fn key_change(
        &self,
        session: &mut ClientSession,
        bucket: &str,
        key: &str,
        change: &KeyChange,
        now: u64,
    ) -> Result<bool, TxError> {
        let filter = key_filter(bucket, key);
        let old_doc = self
            .coll("keys")
            .find_one(filter.clone())
            .session(&mut *session)
            .await?;
        let old = old_doc.as_ref().map(state_of).transpose()?;
        let (new, fx) = transitions::apply(bucket, key, old.clone(), change, now);
        if !fx.changed {
            return Ok(false);
        }
        // A change that leaves the record as it was (a failed entry unlisted) writes nothing:
        // fewer write conflicts with a concurrent engine.
        if new != old {
            match &new {
                Some(state) => {
                    let mut d = doc! {"bucket": bucket, "key": key, "state": state_doc(state)?};
                    if settled(state) {
                        // Kept from when it first settled: a later change (a site removed)
                        // does not push the drop back.
                        let expires = old_doc
                            .as_ref()
                            .and_then(|o| o.get_i64("expiresMs").ok())
                            .unwrap_or_else(|| i64_of(now.saturating_add(DELETED_KEY_TTL_MS)));
                        d.insert("expiresMs", expires);
                    }
                    self.coll("keys")
                        .replace_one(filter, d)
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
                None => {
                    self.coll("keys")
                        .delete_one(filter)
                        .session(&mut *session)
                        .await?;
                }
            }
        }
        for (site, ops, bytes) in &fx.pending {
            self.coll("pending")
                .update_one(
                    doc! {"_id": site},
                    doc! {"$inc": {"ops": *ops, "bytes": *bytes}},
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        for (site, metric, value) in &fx.metrics {
            self.add_metric(session, site, *metric, *value, now).await?;
        }
        for (site, v) in &fx.failed_remove {
            self.coll("failed")
                .delete_one(doc! {"_id": failed_id(site, v)})
                .session(&mut *session)
                .await?;
        }
        for (site, v, info) in &fx.failed_add {
            // Listed at the time of its last attempt (the change's time if unknown).
            let at = if info.last_attempt_ms > 0 {
                info.last_attempt_ms
            } else {
                now
            };
            self.add_failed(session, site, v, info, at).await?;
        }
        Ok(true)
    }

    async fn add_metric(
        &self,
        session: &mut ClientSession,
        site: &str,
        metric: Metric,
        value: u64,
        at_ms: u64,
    ) -> Result<(), TxError> {
        if value > 0 {
            let bucket = metrics_bucket(at_ms);
            self.coll("metrics")
                .update_one(
                    doc! {"_id": metric_id(site, metric, bucket)},
                    doc! {"$inc": {"n": i64_of(value)}, "$set": {"at": i64_of(bucket)}},
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    /// Puts `(site, v)` in the failed set at `score_ms` (moved there if already present: one
    /// entry per pair). Scores are unique per site: a taken score is bumped by 1 ms, so
    /// markers page without duplicates.
    async fn add_failed(
        &self,
        session: &mut ClientSession,
        site: &str,
        v: &VersionRef,
        info: &FailedInfo,
        score_ms: u64,
    ) -> Result<(), TxError> {
        self.coll("failed")
            .delete_one(doc! {"_id": failed_id(site, v)})
            .session(&mut *session)
            .await?;
        // The first free score at or above the requested one: walk the taken ones upwards
        // until a gap.
        let mut score = score_ms;
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
                "_id": failed_id(site, v),
                "site": site,
                "bucket": &v.bucket,
                "key": &v.key,
                "versionId": &v.version_id,
                "score": i64_of(score),
                "info": failed_info_doc(info)?,
            })
            .session(&mut *session)
            .await?;
        Ok(())
    }

    /// Up to `limit` documents of `filter` in key order.
    async fn find_keys(
        &self,
        filter: Document,
        limit: usize,
    ) -> Result<Vec<(String, KeyState)>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(4096));
        if limit == 0 {
            return Ok(out);
        }
        let mut cursor = self.note(
            self.coll("keys")
                .find(filter)
                .sort(doc! {"key": 1})
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await,
        )?;
        while self.note(cursor.advance().await)? {
            let d = self.note(cursor.deserialize_current())?;
            out.push(key_record(&d)?);
        }
        Ok(out)
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

    /// The 288 buckets newest first, from the counters of the ids `id` gives each bucket.
    async fn buckets_newest_first(
        &self,
        coll: &str,
        id: impl Fn(u64) -> Bson,
    ) -> Result<Vec<u64>, StoreError> {
        let current = metrics_bucket(self.now_ms());
        let starts: Vec<Option<u64>> = (0..METRICS_BUCKETS as u64)
            .map(|i| current.checked_sub(i * METRICS_BUCKET_MS))
            .collect();
        let ids: Vec<Bson> = starts.iter().flatten().map(|b| id(*b)).collect();
        let mut values = self.counters(coll, &ids).await?.into_iter();
        Ok(starts
            .iter()
            .map(|s| match s {
                Some(_) => values.next().unwrap_or(0),
                None => 0,
            })
            .collect())
    }
}

#[async_trait]
impl StateStore for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn apply(&self, ops: Vec<StoreOp>) -> Result<Vec<bool>, StoreError> {
        check_op_names(&ops)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now_ms();
        let deadline = Instant::now() + TXN_RETRY_FOR;
        let mut session = self.note(self.client.start_session().await)?;
        loop {
            match self.attempt(&mut session, &ops, now, deadline).await {
                Ok(Attempt::Done(changed)) => {
                    self.healthy.store(true, Ordering::Release);
                    return Ok(changed);
                }
                Ok(Attempt::Retry(e)) => {
                    if Instant::now() > deadline {
                        return Err(storage(e));
                    }
                    tracing::debug!(error = %e, "State store transaction conflicted; retrying.");
                    tokio::time::sleep(Duration::from_millis(5 + rand::random::<u64>() % 20)).await;
                }
                Err(e) => {
                    if let StoreError::Storage(inner) | StoreError::Unavailable(inner) = &e {
                        if let Some(me) = inner.downcast_ref::<MongoError>() {
                            self.note_unreachable(me);
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn key_state(&self, bucket: &str, key: &str) -> Result<Option<KeyState>, StoreError> {
        check_name("bucket", bucket)?;
        match self.note(self.coll("keys").find_one(key_filter(bucket, key)).await)? {
            Some(d) => Ok(Some(state_of(&d)?)),
            None => Ok(None),
        }
    }

    async fn key_states(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, KeyState)>, StoreError> {
        check_name("bucket", bucket)?;
        self.find_keys(
            doc! {"bucket": bucket, "key": string_range(prefix, after)},
            limit,
        )
        .await
    }

    async fn key_children(
        &self,
        bucket: &str,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, KeyState)>, Vec<String>), StoreError> {
        check_name("bucket", bucket)?;
        walk_children(dir, after, limit, |range, want| {
            self.find_keys(doc! {"bucket": bucket, "key": range}, want)
        })
        .await
    }

    async fn dir_summary(&self, bucket: &str, dir: &str) -> Result<Option<u64>, StoreError> {
        check_name("bucket", bucket)?;
        Ok(self
            .note(
                self.coll("dirs")
                    .find_one(doc! {"bucket": bucket, "dir": dir})
                    .await,
            )?
            .map(|d| summary_of(int_of(&d, "summary"))))
    }

    async fn claim_namespace(&self, site: &str, bucket: &str) -> Result<String, StoreError> {
        let op = StoreOp::ClaimNamespace {
            site: site.to_string(),
            bucket: bucket.to_string(),
        };
        self.apply(vec![op]).await?;
        match self.note(self.coll("namespaces").find_one(doc! {"_id": site}).await)? {
            Some(d) => d
                .get_str("bucket")
                .map(str::to_string)
                .map_err(|_| StoreError::Corrupt(format!("namespace owner of site {site}"))),
            None => Ok(bucket.to_string()),
        }
    }

    async fn failed_page(
        &self,
        site: &str,
        marker: Option<u64>,
        limit: usize,
    ) -> Result<FailedPage, StoreError> {
        check_name("site", site)?;
        let now = self.now_ms();
        let window_start = failed_window_start(now);
        let Some(upper) = failed_page_upper(marker, now) else {
            return Ok(FailedPage::default());
        };
        // One more than the page: its score is the next marker.
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
            if entries.len() >= limit {
                next_marker = Some(u64_of(int_of(&d, "score")));
                break;
            }
            entries.push(failed_entry_of(site, &d)?);
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
        let window_start = failed_window_start(self.now_ms());
        let d = self.note(
            self.coll("failed")
                .find_one(doc! {"_id": failed_id(site, version)})
                .await,
        )?;
        match d {
            Some(d) => {
                let e = failed_entry_of(site, &d)?;
                Ok((e.score_ms >= window_start).then_some(e))
            }
            None => Ok(None),
        }
    }

    async fn failed_count(&self, site: &str) -> Result<u64, StoreError> {
        check_name("site", site)?;
        let window_start = failed_window_start(self.now_ms());
        self.note(
            self.coll("failed")
                .count_documents(doc! {"site": site, "score": {"$gte": i64_of(window_start)}})
                .await,
        )
    }

    async fn metric_buckets(&self, site: &str, metric: Metric) -> Result<Vec<u64>, StoreError> {
        check_name("site", site)?;
        self.buckets_newest_first("metrics", |b| metric_id(site, metric, b))
            .await
    }

    async fn object_metric_buckets(
        &self,
        site: &str,
        version: &VersionRef,
        metric: ObjectMetric,
    ) -> Result<Vec<u64>, StoreError> {
        check_name("site", site)?;
        self.buckets_newest_first("object_metrics", |b| {
            object_metric_id(b, metric, site, version)
        })
        .await
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

    async fn uploads(&self, site: &str) -> Result<Vec<(String, UploadIntent)>, StoreError> {
        let mut cursor = self.note(self.coll("uploads").find(doc! {"site": site}).await)?;
        let mut out = Vec::new();
        while self.note(cursor.advance().await)? {
            let d = self.note(cursor.deserialize_current())?;
            let text = |f: &str| d.get_str(f).map(str::to_string).unwrap_or_default();
            out.push((
                text("id"),
                UploadIntent {
                    key: text("key"),
                    started_ms: u64_of(int_of(&d, "startedMs")),
                    upload_id: d.get_str("uploadId").ok().map(str::to_string),
                    owner: text("owner"),
                },
            ));
        }
        Ok(out)
    }

    async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let until = now.saturating_add(ttl_ms);
        // Matches a free (expired) lock, or inserts a new one; a live lock makes the upsert
        // collide on `_id`, which means "taken".
        let r = self
            .coll("locks")
            .update_one(
                doc! {"_id": name, "expiresMs": {"$lte": i64_of(now)}},
                doc! {"$set": {"expiresMs": i64_of(until)}},
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
        let now = self.now_ms();
        let mut removed = 0;
        let window_start = failed_window_start(now);
        let oldest =
            metrics_bucket(now).saturating_sub((METRICS_BUCKETS as u64 - 1) * METRICS_BUCKET_MS);
        let sweeps = [
            // Failed entries older than the 24 hourly buckets.
            ("failed", doc! {"score": {"$lt": i64_of(window_start)}}),
            // Metrics buckets out of the 24 h window.
            ("metrics", doc! {"at": {"$lt": i64_of(oldest)}}),
            ("object_metrics", doc! {"at": {"$lt": i64_of(oldest)}}),
            // Records of keys deleted at the source, replicated everywhere, kept their TTL
            // (a key written again since then lost its `expiresMs`).
            ("keys", doc! {"expiresMs": {"$lt": i64_of(now)}}),
            // Expired locks.
            ("locks", doc! {"expiresMs": {"$lte": i64_of(now)}}),
        ];
        for (coll, filter) in sweeps {
            removed += self
                .note(self.coll(coll).delete_many(filter).await)?
                .deleted_count;
        }
        Ok(removed)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                format!("mongodb {} is unreachable", self.hosts).into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_servers_are_transient_and_bad_data_is_not() {
        let net = MongoError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(storage(net), StoreError::Unavailable(_)));
        let bad = MongoError::custom("a document the store cannot write");
        assert!(matches!(storage(bad), StoreError::Storage(_)));
    }

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
    fn a_prefix_range_holds_exactly_the_keys_starting_with_it() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_end("é").as_deref(), Some("ê"));
        assert_eq!(prefix_end("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
        assert_eq!(prefix_end("x\u{10FFFF}").as_deref(), Some("y"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let keys = [
            "a",
            "a/",
            "a/b",
            "a/\u{10FFFF}",
            "a0",
            "a.",
            "é",
            "é/x",
            "ê",
            "\u{FF61}",
            "😀",
            "😀/",
            "x\u{D7FF}",
            "x\u{D7FF}z",
            "x\u{E000}",
            "x\u{10FFFF}",
            "x\u{10FFFF}\u{10FFFF}",
            "y",
        ];
        for prefix in ["a", "a/", "é", "😀", "x\u{D7FF}", "x\u{10FFFF}", ""] {
            for k in keys {
                let in_range = k >= prefix && prefix_end(prefix).is_none_or(|end| k < end.as_str());
                assert_eq!(in_range, k.starts_with(prefix), "{k:?} / {prefix:?}");
            }
        }
    }

    /// Up to `want` of `keys` in `range` (a [`string_range`] condition), in key order, as the
    /// `{bucket, key}` index gives them.
    fn fake_find(keys: &[&str], range: &Document, want: usize) -> Vec<(String, KeyState)> {
        let mut sorted = keys.to_vec();
        sorted.sort();
        let bound = |op: &str| range.get_str(op).ok();
        sorted
            .into_iter()
            .filter(|k| {
                bound("$gt").is_none_or(|b| *k > b)
                    && bound("$gte").is_none_or(|b| *k >= b)
                    && bound("$lt").is_none_or(|b| *k < b)
            })
            .take(want)
            .map(|k| (k.to_string(), KeyState::default()))
            .collect()
    }

    /// [`walk_children`] over `keys`; the names listed, and how many records were read.
    async fn children(
        keys: &[&str],
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<String>, Vec<String>, usize) {
        let read = std::cell::Cell::new(0);
        let (out, subdirs) = walk_children(dir, after, limit, |range, want| {
            let page = fake_find(keys, &range, want);
            read.set(read.get() + page.len());
            std::future::ready(Ok(page))
        })
        .await
        .expect("walk");
        (
            out.into_iter().map(|(k, _)| k).collect(),
            subdirs,
            read.get(),
        )
    }

    #[test]
    fn listings_start_at_the_prefix_or_after_a_key_in_it() {
        let r = string_range("a/", Some("A"));
        assert_eq!((r.get_str("$gte"), r.get_str("$lt")), (Ok("a/"), Ok("a0")));
        let r = string_range("a/", Some("a/b"));
        assert_eq!((r.get_str("$gt"), r.get_str("$lt")), (Ok("a/b"), Ok("a0")));
        assert!(r.get("$gte").is_none());
        assert_eq!(string_range("", None), doc! {"$gte": ""});
    }

    #[tokio::test]
    async fn children_are_listed_as_sled_lists_them() {
        let keys = [
            "top",
            "d/a",
            "d/b",
            "d/sub.txt",
            "d/sub/x",
            "d/sub/y/z",
            "d/sub0",
            "d/t",
            "d/u/v",
            "d/é/x",
            "dz",
            "e/f",
        ];
        let names = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
        let list = |dir, after, limit| async move {
            let (out, subdirs, _) = children(&keys, dir, after, limit).await;
            (out, subdirs)
        };
        assert_eq!(
            list("d/", None, 100).await,
            (
                names(&["d/a", "d/b", "d/sub.txt", "d/sub0", "d/t"]),
                names(&["d/sub/", "d/u/", "d/é/"])
            )
        );
        assert_eq!(
            list("", None, 100).await,
            (names(&["dz", "top"]), names(&["d/", "e/"]))
        );
        assert_eq!(
            list("d/sub/", None, 100).await,
            (names(&["d/sub/x"]), names(&["d/sub/y/"]))
        );
        assert_eq!(list("d/", None, 2).await, (names(&["d/a", "d/b"]), vec![]));
        assert_eq!(
            list("d/", Some("d/b"), 2).await,
            (names(&["d/sub.txt", "d/sub0"]), names(&["d/sub/"]))
        );
        assert_eq!(
            list("d/", Some("d/sub0"), 2).await,
            (names(&["d/t"]), names(&["d/u/", "d/é/"]))
        );
        assert_eq!(list("d/", None, 0).await, (vec![], vec![]));
        assert_eq!(list("nothing/", None, 10).await, (vec![], vec![]));
    }

    #[tokio::test]
    async fn a_subtree_is_skipped_not_read() {
        let big: Vec<String> = (0..1000).map(|i| format!("d/big/{i:04}")).collect();
        let flat: Vec<String> = (0..1000).map(|i| format!("d/f{i:04}")).collect();
        let mut keys: Vec<&str> = vec!["d/a", "d/z"];
        keys.extend(big.iter().map(String::as_str));
        keys.extend(flat.iter().map(String::as_str));
        let (out, subdirs, read) = children(&keys, "d/", None, 5000).await;
        assert_eq!(out.len(), 1002);
        assert_eq!(subdirs, vec!["d/big/".to_string()]);
        assert!(read <= 1002 + FIRST_WINDOW, "{read} records read");
        // A page limit is never exceeded, however the windows grow.
        let (out, _, read) = children(&keys, "d/", Some("d/f0000"), 300).await;
        assert_eq!((out.len(), read), (300, 300));
    }

    #[test]
    fn summaries_keep_all_64_bits() {
        for v in [0, 1, u64::MAX, 1 << 63, (1 << 63) - 1] {
            assert_eq!(summary_of(summary_bits(v)), v);
        }
    }

    #[test]
    fn records_and_failures_round_trip_as_documents() {
        let state = KeyState {
            version_id: "v1".into(),
            etag: "e".into(),
            size: 5,
            written_ms: 1_795_689_630_250,
            queued_ms: 1_795_689_630_251,
            deleted: true,
            backfill: false,
            sites: vec![crate::model::SiteState {
                site: "s".into(),
                status: ReplicationStatus::Completed,
                data_store_version_id: "r".into(),
            }],
        };
        let d = doc! {"state": state_doc(&state).expect("encode")};
        assert_eq!(state_of(&d).expect("decode"), state);
        let info = FailedInfo {
            size: 5,
            written_ms: 1,
            reason: crate::error::FailureReason::ChecksumMismatch,
            attempts: 3,
            last_error: "boom".into(),
            last_attempt_ms: 1_795_689_630_250,
        };
        let d = doc! {
            "bucket": "b", "key": "k", "versionId": "v", "score": 7_i64,
            "info": failed_info_doc(&info).expect("encode"),
        };
        let e = failed_entry_of("s", &d).expect("decode");
        assert_eq!((e.info, e.score_ms), (info, 7));
        assert_eq!(e.version, VersionRef::new("b", "k", "v"));
    }
}
