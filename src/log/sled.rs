//! [`SledLog`]: the embedded log on sled.
//!
//! Layout (all in the engine's shared `sled::Db`):
//!
//! ```text
//! tree "log.meta"
//!   "format"                         -> u32 BE   format version (FORMAT_VERSION)
//!   "topic:" name                    -> u32 BE   partition count
//!   "start:" name 0x00 partition u32 BE -> u64 BE log start offset (first retained offset)
//! tree "log.offsets"
//!   topic 0x00 group 0x00 partition u32 BE -> u64 BE committed offset (next to read)
//! tree "log.p:" topic ":" partition (one per partition)
//!   offset u64 BE                    -> codec-encoded record (version, crc32, bincode body),
//!                                       or a block of the consecutive records of one append
//!                                       from that offset on (codec::encode_block)
//! ```
//!
//! Blocks keep sled's per-key cost (its page table, cache bookkeeping and, at retention, one
//! deletion) proportional to appends rather than records: a queued backlog of a million
//! versions is a few thousand keys (issue 12). Retention deletes a block once all its records
//! are below the new start; the records of a block straddling it stay unreachable until then.
//!
//! Offsets are assigned under a per-partition mutex, in insertion order. A record becomes
//! visible to consumers only once the flush covering it has completed (except in `interval`
//! mode, where nothing waits for the flush). Retention first persists the new log start offset,
//! then deletes the records below it, so a crash in between only leaves unreachable records
//! that the next retention pass deletes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::{
    check_topic, codec, partition_for, validate_name, Consumer, Delivery, Log, LogError,
    PartitionLag, Position, Record, TopicInfo,
};
use crate::durability::SledDb;

/// On-disk format version of the log. Version 1 stored one record per key; version 2 adds
/// blocks (a version 1 log is read as is and upgraded in place; a version 1 binary refuses a
/// version 2 log rather than misread its blocks).
pub const FORMAT_VERSION: u32 = 2;

/// The earlier format this version still reads.
const FORMAT_VERSION_READ: u32 = 1;

/// Appends of at most this many records are inserted on the calling task.
const INLINE_APPEND: usize = 16;

/// Keys deleted per sled batch during retention.
const RETAIN_CHUNK: usize = 10_000;

/// At most this many records in one block.
const BLOCK_RECORDS: usize = 512;

/// A block is closed once its records reach this many bytes (a larger record is a block of
/// its own).
const BLOCK_BYTES: usize = 64 << 10;

/// Positions of inserted records, and the end offset reached on each partition touched.
type Inserted = (Vec<Position>, Vec<(u32, u64)>);

struct PartitionState {
    tree: sled::Tree,
    /// Next offset to assign.
    next: Mutex<u64>,
    /// Offsets below this are durable and may be read.
    visible: AtomicU64,
    /// First retained offset.
    start: AtomicU64,
}

struct TopicState {
    name: String,
    partitions: Vec<PartitionState>,
    /// Bumped whenever records become visible; consumers wait on it.
    changed: watch::Sender<u64>,
}

struct Inner {
    db: SledDb,
    meta: sled::Tree,
    offsets: sled::Tree,
    topics: RwLock<HashMap<String, Arc<TopicState>>>,
    open_groups: Mutex<HashSet<(String, String)>>,
    appended: AtomicU64,
    /// The committed offsets as `offsets` holds them, by topic then group: read from the tree
    /// once, then kept in step with every write to it (this process is its only writer, and a
    /// write updates this after its batch is applied), so the lag the API and the metrics
    /// report reads no tree. One entry per consumer group: bounded by the groups the tree has.
    committed: Mutex<HashMap<String, GroupOffsets>>,
}

/// Committed offsets by group, one slot per partition (`None`: the group never committed).
type GroupOffsets = HashMap<String, Vec<Option<u64>>>;

/// The embedded log. Cheap to clone.
#[derive(Clone)]
pub struct SledLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog")
            .field("db", &self.inner.db)
            .finish()
    }
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

fn start_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = b"start:".to_vec();
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn offset_key(topic: &str, group: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + group.len() + 6);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn partition_tree_name(topic: &str, partition: u32) -> String {
    format!("log.p:{topic}:{partition}")
}

impl SledLog {
    /// Opens the log stored in `db`, checking its format version.
    ///
    /// # Errors
    /// `LogError::UnsupportedFormat` for a store written by an incompatible version, or
    /// `LogError::Storage` when sled fails.
    pub fn open(db: SledDb) -> Result<SledLog, LogError> {
        let meta = db.db().open_tree("log.meta")?;
        let offsets = db.db().open_tree("log.offsets")?;
        match meta.get("format")? {
            Some(v) => {
                let found = be_u32(&v).unwrap_or(u32::MAX);
                if found == FORMAT_VERSION_READ {
                    meta.insert("format", &FORMAT_VERSION.to_be_bytes())?;
                } else if found != FORMAT_VERSION {
                    return Err(LogError::UnsupportedFormat {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None => {
                meta.insert("format", &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        let inner = Inner {
            db,
            meta,
            offsets,
            topics: RwLock::new(HashMap::new()),
            open_groups: Mutex::new(HashSet::new()),
            appended: AtomicU64::new(0),
            committed: Mutex::new(HashMap::new()),
        };
        let mut topics = HashMap::new();
        for item in inner.meta.scan_prefix("topic:") {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k["topic:".len()..]).into_owned();
            let partitions = be_u32(&v).ok_or_else(|| LogError::Corrupt {
                topic: name.clone(),
                partition: 0,
                offset: 0,
                reason: "bad partition count in log metadata".into(),
            })?;
            let state = inner.load_topic(&name, partitions)?;
            topics.insert(name, Arc::new(state));
        }
        *inner.topics.write() = topics;
        Ok(SledLog {
            inner: Arc::new(inner),
        })
    }

    /// The embedded database this log lives in.
    pub fn db(&self) -> &SledDb {
        &self.inner.db
    }

    /// Records appended through this handle since it was opened.
    pub fn appended_records(&self) -> u64 {
        self.inner.appended.load(Ordering::Relaxed)
    }

    fn topic(&self, topic: &str) -> Result<Arc<TopicState>, LogError> {
        self.inner
            .topics
            .read()
            .get(topic)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))
    }

    /// Appends synchronously (for the crash-test child and benches): the same work as
    /// [`Log::append`], with one flush per call except in `interval` mode.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_blocking(
        &self,
        topic: &str,
        records: Vec<Record>,
    ) -> Result<Vec<Position>, LogError> {
        let t = self.topic(topic)?;
        self.inner.db.check()?;
        let (positions, ends) = self.inner.insert(&t, records)?;
        self.inner.db.sync_blocking()?;
        self.inner.publish(&t, &ends);
        Ok(positions)
    }
}

impl Inner {
    fn load_topic(&self, name: &str, partitions: u32) -> Result<TopicState, LogError> {
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let tree = self.db.db().open_tree(partition_tree_name(name, p))?;
            let start = match self.meta.get(start_key(name, p))? {
                Some(v) => be_u64(&v).unwrap_or(0),
                None => 0,
            };
            let last = match tree.last()? {
                Some((k, v)) => be_u64(&k).map(|o| o + codec::stored_count(&v)).unwrap_or(0),
                None => 0,
            };
            let next = last.max(start);
            parts.push(PartitionState {
                tree,
                next: Mutex::new(next),
                visible: AtomicU64::new(next),
                start: AtomicU64::new(start),
            });
        }
        let (changed, _) = watch::channel(0);
        Ok(TopicState {
            name: name.to_string(),
            partitions: parts,
            changed,
        })
    }

    /// Inserts the records; returns their positions and the end offset reached per partition.
    fn insert(&self, t: &TopicState, records: Vec<Record>) -> Result<Inserted, LogError> {
        let n = t.partitions.len() as u32;
        let mut by_partition: BTreeMap<u32, Vec<(usize, Vec<u8>)>> = BTreeMap::new();
        let count = records.len();
        for (i, r) in records.iter().enumerate() {
            let p = partition_for(&r.key, n);
            by_partition
                .entry(p)
                .or_default()
                .push((i, codec::encode(r)));
        }
        let mut positions = vec![
            Position {
                partition: 0,
                offset: 0
            };
            count
        ];
        let mut ends = Vec::with_capacity(by_partition.len());
        for (p, items) in by_partition {
            let part = t
                .partitions
                .get(p as usize)
                .ok_or_else(|| LogError::UnknownPartition {
                    topic: t.name.clone(),
                    partition: p,
                })?;
            let mut next = part.next.lock();
            // Plain inserts rather than a sled batch: a batch takes sled's global write lock,
            // which serializes every producer; atomicity across the records of one append is
            // not needed (an append is acknowledged only once all of it is durable, and records
            // become visible to consumers only then).
            let mut offset = *next;
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let first = offset;
                let mut block = Vec::new();
                let mut bytes = 0usize;
                while let Some((i, enc)) = items.next_if(|_| {
                    block.len() < BLOCK_RECORDS && (block.is_empty() || bytes < BLOCK_BYTES)
                }) {
                    bytes += enc.len();
                    block.push(enc);
                    if let Some(slot) = positions.get_mut(i) {
                        *slot = Position {
                            partition: p,
                            offset,
                        };
                    }
                    offset += 1;
                }
                if let Err(e) = part
                    .tree
                    .insert(first.to_be_bytes(), codec::encode_block(&block))
                {
                    *next = first;
                    return Err(self.db.poison_on(&e).into());
                }
            }
            *next = offset;
            ends.push((p, offset));
        }
        self.appended.fetch_add(count as u64, Ordering::Relaxed);
        Ok((positions, ends))
    }

    /// Makes records up to `ends` visible and wakes consumers.
    fn publish(&self, t: &TopicState, ends: &[(u32, u64)]) {
        for &(p, end) in ends {
            if let Some(part) = t.partitions.get(p as usize) {
                part.visible.fetch_max(end, Ordering::AcqRel);
            }
        }
        t.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn committed_offsets(
        &self,
        topic: &str,
        group: &str,
        partitions: u32,
    ) -> Result<Vec<Option<u64>>, LogError> {
        // Held across the tree read, so a write that lands meanwhile updates what is cached.
        let mut cache = self.committed.lock();
        if let Some(known) = cache.get(topic).and_then(|groups| groups.get(group)) {
            if known.len() == partitions as usize {
                return Ok(known.clone());
            }
        }
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            out.push(
                self.offsets
                    .get(offset_key(topic, group, p))?
                    .and_then(|v| be_u64(&v)),
            );
        }
        cache
            .entry(topic.to_string())
            .or_default()
            .insert(group.to_string(), out.clone());
        Ok(out)
    }

    /// Records offsets just written to `offsets` for `group`, in the cache of committed
    /// offsets (a group not read yet is left to be read from the tree).
    fn committed_written(&self, topic: &str, group: &str, written: &[(usize, u64)]) {
        let mut cache = self.committed.lock();
        if let Some(known) = cache
            .get_mut(topic)
            .and_then(|groups| groups.get_mut(group))
        {
            for &(p, offset) in written {
                if let Some(slot) = known.get_mut(p) {
                    *slot = Some(offset);
                }
            }
        }
    }
}

#[async_trait]
impl Log for SledLog {
    fn entry_format(&self) -> super::EntryFormat {
        super::EntryFormat::Binary
    }

    /// The embedded log is never out of reach: its errors are all fatal.
    fn may_be_unavailable(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "sled"
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError> {
        check_topic(topic, partitions)?;
        if let Ok(t) = self.topic(topic) {
            return Ok(t.partitions.len() as u32);
        }
        let mut key = b"topic:".to_vec();
        key.extend_from_slice(topic.as_bytes());
        let inner = self.inner.clone();
        let existing = inner.meta.get(&key)?.and_then(|v| be_u32(&v));
        let count = existing.unwrap_or(partitions);
        if existing.is_none() {
            inner.meta.insert(key, &count.to_be_bytes())?;
            inner.db.sync().await?;
        }
        let state = Arc::new(inner.load_topic(topic, count)?);
        let mut topics = inner.topics.write();
        let entry = topics.entry(topic.to_string()).or_insert(state);
        Ok(entry.partitions.len() as u32)
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError> {
        let mut v: Vec<TopicInfo> = self
            .inner
            .topics
            .read()
            .values()
            .map(|t| TopicInfo {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        let t = self.topic(topic)?;
        self.inner.db.check()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // A few records are microseconds of in-memory work for sled: insert them in place. Larger
        // appends go to the blocking pool so they never hold a runtime worker.
        let (positions, ends) = if records.len() <= INLINE_APPEND {
            self.inner.insert(&t, records)?
        } else {
            let inner = self.inner.clone();
            let t2 = t.clone();
            tokio::task::spawn_blocking(move || inner.insert(&t2, records))
                .await
                .map_err(|e| LogError::Storage(Box::new(e)))??
        };
        self.inner.db.sync().await?;
        self.inner.publish(&t, &ends);
        Ok(positions)
    }

    async fn consumer(&self, topic: &str, group: &str) -> Result<Box<dyn Consumer>, LogError> {
        validate_name("group", group)?;
        let t = self.topic(topic)?;
        {
            let mut open = self.inner.open_groups.lock();
            if !open.insert((topic.to_string(), group.to_string())) {
                return Err(LogError::GroupBusy {
                    group: group.to_string(),
                    topic: topic.to_string(),
                });
            }
        }
        let guard = GroupGuard {
            inner: self.inner.clone(),
            key: (topic.to_string(), group.to_string()),
        };
        let n = t.partitions.len() as u32;
        let stored = self.inner.committed_offsets(topic, group, n)?;
        let mut committed = Vec::with_capacity(n as usize);
        let mut batch = sled::Batch::default();
        let mut registered = Vec::new();
        for (p, c) in stored.into_iter().enumerate() {
            let start = t
                .partitions
                .get(p)
                .map(|s| s.start.load(Ordering::Acquire))
                .unwrap_or(0);
            match c {
                Some(off) => committed.push(off.max(start)),
                None => {
                    // Register the group at the earliest record so retention waits for it.
                    batch.insert(offset_key(topic, group, p as u32), &start.to_be_bytes());
                    registered.push((p, start));
                    committed.push(start);
                }
            }
        }
        if !registered.is_empty() {
            self.inner.offsets.apply_batch(batch)?;
            self.inner.committed_written(topic, group, &registered);
            self.inner.db.sync().await?;
        }
        let rx = t.changed.subscribe();
        Ok(Box::new(SledConsumer {
            inner: self.inner.clone(),
            topic: t,
            group: group.to_string(),
            read: committed.clone(),
            committed,
            rr: 0,
            rx,
            _guard: guard,
        }))
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Vec<PartitionLag>, LogError> {
        let t = self.topic(topic)?;
        let n = t.partitions.len() as u32;
        let stored = self.inner.committed_offsets(topic, group, n)?;
        Ok(t.partitions
            .iter()
            .zip(stored)
            .enumerate()
            .map(|(p, (part, c))| {
                let start = part.start.load(Ordering::Acquire);
                let end = part.visible.load(Ordering::Acquire);
                let committed = c.unwrap_or(start).max(start).min(end);
                PartitionLag {
                    partition: p as u32,
                    committed,
                    end,
                    lag: end - committed,
                }
            })
            .collect())
    }

    async fn groups(&self, topic: &str) -> Result<Vec<String>, LogError> {
        let mut prefix = topic.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<String> = Vec::new();
        for item in self.inner.offsets.scan_prefix(&prefix) {
            let (k, _) = item?;
            let rest = &k[prefix.len()..];
            if let Some(end) = rest.iter().position(|&b| b == 0) {
                let g = String::from_utf8_lossy(&rest[..end]).into_owned();
                if out.last() != Some(&g) {
                    out.push(g);
                }
            }
        }
        out.dedup();
        Ok(out)
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<(), LogError> {
        let t = self.topic(topic)?;
        let mut batch = sled::Batch::default();
        for p in 0..t.partitions.len() as u32 {
            batch.remove(offset_key(topic, group, p));
        }
        self.inner.offsets.apply_batch(batch)?;
        if let Some(groups) = self.inner.committed.lock().get_mut(topic) {
            groups.remove(group);
        }
        self.inner.db.sync().await?;
        Ok(())
    }

    async fn retain(&self, topic: &str) -> Result<u64, LogError> {
        let t = self.topic(topic)?;
        let groups = self.groups(topic).await?;
        if groups.is_empty() {
            return Ok(0);
        }
        let n = t.partitions.len() as u32;
        let mut floors: Vec<u64> = vec![u64::MAX; n as usize];
        for g in &groups {
            for (p, c) in self
                .inner
                .committed_offsets(topic, g, n)?
                .into_iter()
                .enumerate()
            {
                if let Some(slot) = floors.get_mut(p) {
                    *slot = (*slot).min(c.unwrap_or(0));
                }
            }
        }
        let inner = self.inner.clone();
        let t2 = t.clone();
        let db = self.inner.db.clone();
        // First persist the new start offsets, durably.
        let mut moves = Vec::new();
        for (p, floor) in floors.into_iter().enumerate() {
            let Some(part) = t.partitions.get(p) else {
                continue;
            };
            let floor = floor.min(part.visible.load(Ordering::Acquire));
            let start = part.start.load(Ordering::Acquire);
            if floor > start {
                inner
                    .meta
                    .insert(start_key(topic, p as u32), &floor.to_be_bytes())?;
                part.start.store(floor, Ordering::Release);
                moves.push((p, start, floor));
            }
        }
        if moves.is_empty() {
            return Ok(0);
        }
        db.sync().await?;
        let deleted = tokio::task::spawn_blocking(move || -> Result<u64, LogError> {
            let mut deleted = 0u64;
            for (p, _start, floor) in moves {
                let Some(part) = t2.partitions.get(p) else {
                    continue;
                };
                // Delete from the first key actually present (an earlier pass may have been
                // cut short), up to the floor.
                // A block goes once all its records are below the floor.
                loop {
                    let mut batch = sled::Batch::default();
                    let mut n = 0usize;
                    let mut records = 0u64;
                    for item in part.tree.range(..floor.to_be_bytes()) {
                        let (k, v) = item?;
                        let count = codec::stored_count(&v);
                        if be_u64(&k).unwrap_or(u64::MAX).saturating_add(count) > floor {
                            // Straddles the floor: it stays, and so does everything after
                            // it, except after a damaged count, which must not hold back the
                            // rest.
                            continue;
                        }
                        batch.remove(k);
                        n += 1;
                        records += count;
                        if n >= RETAIN_CHUNK {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                    part.tree.apply_batch(batch)?;
                    deleted += records;
                }
            }
            Ok(deleted)
        })
        .await
        .map_err(|e| LogError::Storage(Box::new(e)))??;
        self.inner.db.sync().await?;
        Ok(deleted)
    }

    fn check(&self) -> Result<(), LogError> {
        Ok(self.inner.db.check()?)
    }
}

struct GroupGuard {
    inner: Arc<Inner>,
    key: (String, String),
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.inner.open_groups.lock().remove(&self.key);
    }
}

struct SledConsumer {
    inner: Arc<Inner>,
    topic: Arc<TopicState>,
    group: String,
    /// Next offset to read, per partition.
    read: Vec<u64>,
    /// Committed offset (next to read after a restart), per partition.
    committed: Vec<u64>,
    rr: usize,
    rx: watch::Receiver<u64>,
    _guard: GroupGuard,
}

impl SledConsumer {
    fn read_available(&mut self, max: usize) -> Result<Vec<Delivery>, LogError> {
        let n = self.topic.partitions.len();
        let mut out = Vec::new();
        if n == 0 || max == 0 {
            return Ok(out);
        }
        let first = self.rr % n;
        self.rr = self.rr.wrapping_add(1);
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let p = (first + i) % n;
            let (Some(part), Some(pos)) = (self.topic.partitions.get(p), self.read.get_mut(p))
            else {
                continue;
            };
            let start = part.start.load(Ordering::Acquire);
            if *pos < start {
                *pos = start;
            }
            let visible = part.visible.load(Ordering::Acquire);
            if *pos >= visible {
                continue;
            }
            // The block holding `pos` starts at or before it.
            let from = match part.tree.range(..=pos.to_be_bytes()).next_back() {
                Some(item) => be_u64(&item?.0).unwrap_or(*pos),
                None => *pos,
            };
            'blocks: for item in part.tree.range(from.to_be_bytes()..visible.to_be_bytes()) {
                let (k, v) = item?;
                let base = be_u64(&k).unwrap_or(u64::MAX);
                for (i, enc) in codec::stored(&v).enumerate() {
                    if out.len() >= max {
                        break 'blocks;
                    }
                    let offset = base.saturating_add(i as u64);
                    if offset >= visible {
                        break 'blocks;
                    }
                    let decoded = match enc {
                        // Already read (or below the start): not even decoded.
                        Ok(_) if offset < *pos => continue,
                        Ok(enc) => codec::decode(enc),
                        // The block is damaged before `pos`: what follows in it cannot be
                        // located, so `pos` itself is reported.
                        Err(reason) => Err(reason),
                    };
                    // A hole below the visible end can only come from retention racing this
                    // read; skip to the next stored offset.
                    let offset = offset.max(*pos);
                    *pos = offset;
                    match decoded {
                        Ok(record) => {
                            out.push(Delivery {
                                position: Position {
                                    partition: p as u32,
                                    offset,
                                },
                                record,
                            });
                            *pos = offset + 1;
                        }
                        Err(reason) => {
                            if out.is_empty() {
                                return Err(LogError::Corrupt {
                                    topic: self.topic.name.clone(),
                                    partition: p as u32,
                                    offset,
                                    reason,
                                });
                            }
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Consumer for SledConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, LogError> {
        let deadline = Instant::now() + wait;
        loop {
            self.rx.borrow_and_update();
            let out = self.read_available(max)?;
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            if tokio::time::timeout(deadline - now, self.rx.changed())
                .await
                .is_err()
            {
                // Timed out; one last look happens at the top of the loop.
                let out = self.read_available(max)?;
                return Ok(out);
            }
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        let mut updates = Vec::new();
        for pos in positions {
            let p = pos.partition as usize;
            let part = self
                .topic
                .partitions
                .get(p)
                .ok_or_else(|| LogError::UnknownPartition {
                    topic: self.topic.name.clone(),
                    partition: pos.partition,
                })?;
            let end = *part.next.lock();
            if pos.offset > end {
                return Err(LogError::Invalid(format!(
                    "commit of offset {} beyond the end {} of {}/{}",
                    pos.offset, end, self.topic.name, pos.partition
                )));
            }
            let current = self.committed.get(p).copied().unwrap_or(0);
            if pos.offset > current {
                batch.insert(
                    offset_key(&self.topic.name, &self.group, pos.partition),
                    &pos.offset.to_be_bytes(),
                );
                updates.push((p, pos.offset));
            }
        }
        if updates.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.inner.offsets.apply_batch(batch) {
            return Err(self.inner.db.poison_on(&e).into());
        }
        self.inner
            .committed_written(&self.topic.name, &self.group, &updates);
        self.inner.db.sync().await?;
        for (p, off) in updates {
            if let Some(c) = self.committed.get_mut(p) {
                *c = off;
            }
            if let Some(r) = self.read.get_mut(p) {
                if *r < off {
                    *r = off;
                }
            }
        }
        Ok(())
    }

    fn seek(&mut self, position: Position) -> Result<(), LogError> {
        let slot = self
            .read
            .get_mut(position.partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: self.topic.name.clone(),
                partition: position.partition,
            })?;
        *slot = position.offset;
        Ok(())
    }

    fn committed(&self) -> Vec<u64> {
        self.committed.clone()
    }
}
