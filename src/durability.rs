//! The embedded sled database and its flush policy (group commit).
//!
//! One `sled::Db` holds both the log (`log.*` trees) and the state store (`state` tree), so a
//! single fsync makes an offset commit and a state update durable together.
//!
//! Durability modes ([`Durability`]):
//!
//! | mode       | an acknowledged write survives              | flushes                         |
//! |------------|---------------------------------------------|---------------------------------|
//! | `every`    | `kill -9` and power loss                     | one per write call              |
//! | `group`    | `kill -9` and power loss                     | one per batch of waiting writes |
//! | `interval` | `kill -9`; power loss may drop the last `flush_interval_ms` of writes | one per interval |
//!
//! sled keeps written data in its own page cache and log buffers until `flush`; a process killed
//! with `kill -9` before a flush loses those writes, so in `interval` mode the loss window covers
//! both `kill -9` and power loss: anything written in the last `flush_interval_ms` (default
//! 100 ms) may be lost. `every` and `group` return only after `fsync`.
//!
//! sled's own flush is not enough for power loss: sled 0.34 writes its log with
//! `sync_file_range`, which neither commits the file's metadata (the log file grows as it is
//! written) nor flushes the disk's write cache, and writes its blobs (items over a quarter of a
//! segment) with no sync at all (sled issue 1452). So every flush here is followed by
//! [`DiskSync`]: an `fsync` of each blob file not synced yet, then an `fdatasync` of the
//! database file. In `interval` mode sled's own background flusher runs every
//! `flush_interval_ms`; it ends each round with an `fsync` of the database file (and is also
//! what cleans sled's segments).
//!
//! Group commit: writers insert into sled, then take a ticket (a sequence number) and wait until
//! the flusher thread has completed a flush that started after their ticket. While one flush
//! runs (~4 ms here), every writer that arrives queues behind the next one, so concurrent writers
//! share flushes.

use std::any::Any;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The page cache of a database opened without `[storage] cache_mb`, in MiB: sized for a
/// small machine (sled holds a few times its cache with many keys; DESIGN section 10).
pub const DEFAULT_CACHE_MB: u64 = 16;
/// How writes are made durable before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// One flush per write call.
    Every,
    /// Concurrent writers share one flush (the default).
    #[default]
    Group,
    /// A background flush every `flush_interval_ms`; writes are acknowledged before they are
    /// durable.
    Interval,
}

impl Durability {
    /// The configuration name of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Every => "every",
            Durability::Group => "group",
            Durability::Interval => "interval",
        }
    }
}

/// Errors of the embedded database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// sled failed to open, read or write.
    #[error("embedded database failure")]
    Sled(#[from] sled::Error),
    /// An earlier flush failed; nothing written since can be acknowledged. Restart the process.
    #[error("embedded database is poisoned by an earlier flush failure: {0}")]
    Poisoned(String),
    /// The flusher stopped (the database is closing).
    #[error("embedded database is closed")]
    Closed,
}

/// Counters of flush activity, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    /// Number of fsyncs performed through this handle.
    pub flushes: u64,
    /// Number of durable-write requests acknowledged.
    pub syncs: u64,
}

struct Signal {
    wake: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Signal {
    fn notify(&self) {
        let mut w = self.wake.lock();
        *w = true;
        self.cv.notify_one();
    }
}

struct Shared {
    db: sled::Db,
    disk: DiskSync,
    mode: Durability,
    /// Tickets handed out; a ticket is taken after the caller's writes are in sled.
    written: AtomicU64,
    /// Highest ticket known durable. Shared with the flusher thread, which releases its
    /// database handle before announcing a flush, so a writer that drops the last handle
    /// right after its acknowledgement closes the database at once.
    durable: Arc<watch::Sender<u64>>,
    poisoned: Mutex<Option<String>>,
    poisoned_flag: AtomicBool,
    signal: Arc<Signal>,
    flushes: AtomicU64,
    syncs: AtomicU64,
    /// What a store keeps in memory beside the database, shared by every handle of it
    /// ([`SledDb::extension`]).
    extension: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.signal.stop.store(true, Ordering::SeqCst);
        self.signal.notify();
    }
}

/// What makes a flushed database durable on power loss (see the module doc).
struct DiskSync {
    /// The database file (sled's log and pages), open for its syncs.
    db_file: std::fs::File,
    /// sled's directory of blob files.
    blobs: PathBuf,
    /// The blob files already synced; forgotten once sled removes them.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DiskSync {
    /// Opens the database file of the database in `dir` and makes its creation durable.
    fn open(dir: &Path) -> std::io::Result<DiskSync> {
        let db_file = std::fs::File::open(dir.join("db"))?;
        db_file.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(DiskSync {
            db_file,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// Makes everything sled has written durable: its new blobs, then the database file (sled
    /// writes a blob before the log entry that points at it; syncing the blobs first keeps
    /// that order as far as sled's own unsynced writes allow).
    fn sync(&self) -> std::io::Result<()> {
        self.sync_blobs()?;
        self.db_file.sync_data()
    }

    fn sync_blobs(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blobs.lock();
        let mut present = HashSet::with_capacity(synced.len());
        let mut added = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Collected by sled meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                added = true;
            }
            present.insert(name);
        }
        if added {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

impl Shared {
    /// One flush of sled, made durable ([`DiskSync`]); counted.
    fn flush_durably(&self) -> Result<(), String> {
        let res = self
            .db
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|_| self.disk.sync().map_err(|e| format!("cannot sync: {e}")));
        self.flushes.fetch_add(1, Ordering::Relaxed);
        res
    }

    fn poison(&self, msg: String) -> DbError {
        tracing::error!(error = %msg, "Flush failed; refusing further writes.");
        *self.poisoned.lock() = Some(msg.clone());
        self.poisoned_flag.store(true, Ordering::Release);
        // Wake waiters so they observe the poison.
        self.durable.send_modify(|_| {});
        DbError::Poisoned(msg)
    }
}

/// The opened embedded database with its flush policy. Cheap to clone; the database closes
/// (and releases its file lock) when the last clone is dropped.
#[derive(Clone)]
pub struct SledDb {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SledDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledDb")
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl SledDb {
    /// Opens (or creates) the database in `dir`.
    ///
    /// # Errors
    /// `DbError::Sled` when sled cannot open the directory (locked by another process, no
    /// permission, corrupt files).
    pub fn open(dir: &Path, mode: Durability, flush_interval: Duration) -> Result<SledDb, DbError> {
        SledDb::open_with_cache(dir, mode, flush_interval, DEFAULT_CACHE_MB << 20)
    }

    /// As [`SledDb::open`], with a page cache of `cache_bytes` (`[storage] cache_mb`).
    ///
    /// # Errors
    /// As [`SledDb::open`].
    pub fn open_with_cache(
        dir: &Path,
        mode: Durability,
        flush_interval: Duration,
        cache_bytes: u64,
    ) -> Result<SledDb, DbError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput);
        // sled's own background flusher runs only in interval mode; in the other modes we flush
        // ourselves and an extra fsync every 500 ms would only compete with ours.
        let config = match mode {
            Durability::Interval => {
                config.flush_every_ms(Some(flush_interval.as_millis().max(1) as u64))
            }
            _ => config.flush_every_ms(None),
        };
        let db = config.open()?;
        let disk = DiskSync::open(dir).map_err(|e| DbError::Sled(sled::Error::Io(e)))?;
        let durable = Arc::new(watch::channel(0u64).0);
        let signal = Arc::new(Signal {
            wake: Mutex::new(false),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let shared = Arc::new(Shared {
            db,
            disk,
            mode,
            written: AtomicU64::new(0),
            durable,
            poisoned: Mutex::new(None),
            poisoned_flag: AtomicBool::new(false),
            signal: signal.clone(),
            flushes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            extension: OnceLock::new(),
        });
        if mode == Durability::Group {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("backbeat-flusher".into())
                .spawn(move || flusher_loop(weak, signal))
                .map_err(|e| DbError::Sled(sled::Error::Io(e)))?;
        }
        Ok(SledDb { shared })
    }

    /// The underlying sled database.
    pub fn db(&self) -> &sled::Db {
        &self.shared.db
    }

    /// The durability mode.
    pub fn mode(&self) -> Durability {
        self.shared.mode
    }

    /// Whether writes become visible to consumers only once durable.
    pub fn acknowledges_after_flush(&self) -> bool {
        self.shared.mode != Durability::Interval
    }

    /// Flush counters.
    pub fn stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.shared.flushes.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
        }
    }

    /// Fails if an earlier flush failed.
    ///
    /// # Errors
    /// `DbError::Poisoned` after a failed flush.
    pub fn check(&self) -> Result<(), DbError> {
        if self.shared.poisoned_flag.load(Ordering::Acquire) {
            let msg = self.shared.poisoned.lock().clone().unwrap_or_default();
            return Err(DbError::Poisoned(msg));
        }
        Ok(())
    }

    /// Makes every write already applied to sled durable, according to the mode. Call after
    /// the writes and before acknowledging them.
    ///
    /// # Errors
    /// `DbError::Poisoned` if this or an earlier flush failed.
    pub async fn sync(&self) -> Result<(), DbError> {
        self.check()?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        match self.shared.mode {
            Durability::Interval => Ok(()),
            Durability::Every => {
                let shared = self.shared.clone();
                let res = tokio::task::spawn_blocking(move || {
                    shared.flush_durably().map_err(|e| shared.poison(e))
                })
                .await;
                match res {
                    Ok(r) => r,
                    Err(e) => Err(self.shared.poison(e.to_string())),
                }
            }
            Durability::Group => {
                let ticket = self.shared.written.fetch_add(1, Ordering::AcqRel) + 1;
                let mut rx = self.shared.durable.subscribe();
                self.shared.signal.notify();
                loop {
                    if *rx.borrow_and_update() >= ticket {
                        return Ok(());
                    }
                    self.check()?;
                    if rx.changed().await.is_err() {
                        return Err(DbError::Closed);
                    }
                }
            }
        }
    }

    /// Like [`SledDb::sync`], for synchronous callers (the crash-test child, benches): one flush
    /// per call except in interval mode.
    ///
    /// # Errors
    /// As [`SledDb::sync`].
    pub fn sync_blocking(&self) -> Result<(), DbError> {
        self.check()?;
        match self.shared.mode {
            Durability::Interval => Ok(()),
            _ => self
                .shared
                .flush_durably()
                .map_err(|e| self.shared.poison(e)),
        }
    }

    /// Flushes everything now, durably, whatever the mode (used at shutdown).
    ///
    /// # Errors
    /// `DbError::Poisoned` when the flush fails (the database then refuses every later write),
    /// `DbError::Closed` if the flush task could not run.
    pub async fn flush_now(&self) -> Result<(), DbError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.flush_durably())
            .await
            .map_err(|_| DbError::Closed)?
            .map_err(|e| self.shared.poison(e))
    }

    /// Records a failed write: the database refuses every later write, so nothing is
    /// acknowledged that might not be on disk. Returns the error to hand up.
    pub fn poison_on(&self, err: &sled::Error) -> DbError {
        self.shared.poison(format!("write failed: {err}"))
    }

    /// The in-memory companion of this database (one per database, shared by every handle,
    /// as the state store's aggregates): the one already made, else the one `init` makes;
    /// `None` when a companion of another type was kept.
    ///
    /// # Errors
    /// `init`'s error.
    pub(crate) fn extension<T: Any + Send + Sync, E>(
        &self,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<Option<Arc<T>>, E> {
        let slot = &self.shared.extension;
        if slot.get().is_none() {
            let made: Arc<dyn Any + Send + Sync> = Arc::new(init()?);
            // Another handle may have won the race: its value is the one kept.
            let _ = slot.set(made);
        }
        Ok(slot.get().cloned().and_then(|v| v.downcast::<T>().ok()))
    }

    /// Size on disk of the database, in bytes.
    ///
    /// # Errors
    /// `DbError::Sled` when sled cannot report it.
    pub fn size_on_disk(&self) -> Result<u64, DbError> {
        Ok(self.shared.db.size_on_disk()?)
    }
}

/// Longest a flush waits for more writers to join it.
const MAX_LINGER: Duration = Duration::from_millis(2);
/// Shortest linger, so writers released by the previous flush have time to come back (their
/// tasks must be scheduled again, on a loaded machine that takes a few hundred microseconds).
const MIN_LINGER: Duration = Duration::from_micros(500);

/// The group-commit flusher. Holds the database only while flushing, so dropping the last
/// handle closes the database at once.
///
/// Batching: a flush does not start with the first waiting writer alone. It waits until as many
/// writers are waiting as recent flushes served (the writers a flush releases come back with
/// their next write; the expectation is the largest recent batch, decaying by 1/8 per flush so
/// it follows a shrinking load), or until a linger as long as the previous flush (between
/// 100 us and 2 ms) has passed, whichever comes first. With N producers writing in a loop, each
/// flush then serves all N of them; a lone writer waits at most one flush time more.
fn flusher_loop(weak: std::sync::Weak<Shared>, signal: Arc<Signal>) {
    // Expected writers per flush, times 8 (fixed point, for the 1/8 decay).
    let mut expected_x8: u64 = 8;
    let mut last_flush = MIN_LINGER;
    loop {
        {
            let mut w = signal.wake.lock();
            while !*w && !signal.stop.load(Ordering::SeqCst) {
                signal.cv.wait_for(&mut w, Duration::from_millis(500));
            }
            *w = false;
        }
        let Some(shared) = weak.upgrade() else { return };
        let durable = *shared.durable.borrow();
        if shared.written.load(Ordering::Acquire) <= durable {
            if signal.stop.load(Ordering::SeqCst) {
                return;
            }
            continue;
        }
        // Linger for the writers the previous flush released.
        let linger = last_flush.clamp(MIN_LINGER, MAX_LINGER);
        let deadline = std::time::Instant::now() + linger;
        loop {
            let waiting = shared.written.load(Ordering::Acquire) - durable;
            if waiting * 8 >= expected_x8 || signal.stop.load(Ordering::SeqCst) {
                break;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            let mut w = signal.wake.lock();
            if !*w {
                signal.cv.wait_for(&mut w, deadline - now);
            }
            *w = false;
        }
        let target = shared.written.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let res = shared.flush_durably();
        last_flush = started.elapsed();
        match res {
            Ok(_) => {
                let batch = (target - durable).max(1);
                expected_x8 = (batch * 8).max(expected_x8 - expected_x8 / 8).max(8);
                let announce = shared.durable.clone();
                drop(shared);
                announce.send_replace(target);
            }
            Err(e) => {
                shared.poison(e);
                return;
            }
        }
    }
}
