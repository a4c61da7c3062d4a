//! `backbeat verify` (DESIGN section 7): each site compared with its source, key by key.
//!
//! For every source bucket (or those named), the bucket's rules (its own replication
//! configuration, else `[[replication.rules]]`) name the sites to compare. The source's
//! listing of current versions and each site's listing of the bucket's namespace (DESIGN 3,
//! "Where a replica lives") are read in key byte order, streamed, and merged: memory holds a
//! page of each side, never a bucket. What a site must hold for a key is the source's current
//! version when a rule sends the key there and it is not itself a replica; nothing when the
//! key is deleted (a delete marker) or absent.
//!
//! Differences, one line each (`<kind> <site> <bucket>/<key> <detail>`):
//! - `missing`: the site lacks a version it must hold (or holds something that is not a
//!   replica there);
//! - `extra`: the site holds a replica (`scal-version-id` set) of a key deleted or absent at
//!   the source — never at a transient source, where absence is not deletion, nor for a
//!   deleted key whose rule does not replicate delete markers;
//! - `stale`: the site holds a replica of another version;
//! - `corrupt`: the replica of the right version has another size or `scal-md5` than the
//!   source's (`--deep`: its bytes hash differently).
//!
//! The comparison reads only what a difference needs: a replica whose `scal-version-id` is
//! the source's current one is compared by size and MD5 without asking the source again; the
//! source's full metadata (tags for a tag-filtered rule, whether the version is a replica) is
//! read only for a key a site lacks or holds in another version. Reading a replica's `scal-*`
//! metadata costs a HEAD per replica on S3 sites (Azure and file listings carry it).
//!
//! `--repair` asks the running engine to queue missing, stale and corrupt versions again
//! (`POST crr/requeue`, 1,000 a request) and deletes an `extra` replica itself, only while the
//! site still holds the same replica and the source still lacks the key.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Value};

use crate::client::ApiClient;
use crate::config::Config;
use crate::error::Disposition;
use crate::model::ObjectInfo;
use crate::site::{build_site, site_key, ReplicaInfo, Site};
use crate::source::{bucket_rules, build_source, rule_for, Rule, Source};

/// Replica metadata reads (HEADs) in flight per site.
const READ_AHEAD: usize = 16;
/// Entries of a site listing page.
const PAGE: usize = 1000;
/// Versions per `POST crr/requeue` (the API takes at most 1,000).
const REQUEUE_BATCH: usize = crate::api::failed::MAX_RETRY_ITEMS;
/// Bytes of JSON per `POST crr/requeue`, under the API's 1 MiB body limit (1,000 versions with
/// long keys would not fit).
const REQUEUE_BYTES: usize = crate::api::MAX_LARGE_BODY * 3 / 4;
/// Attempts of a listing page that fails transiently.
const READ_ATTEMPTS: u32 = 4;

/// What to compare and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these sites (all the rules' sites when empty).
    pub sites: Vec<String>,
    /// Only these source buckets (all when empty).
    pub buckets: Vec<String>,
    /// Only keys starting with this.
    pub prefix: String,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Queue what differs again (and delete extra replicas).
    pub repair: bool,
    /// Also read and hash both sides of every replica of the right version.
    pub deep: bool,
}

/// A kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The site lacks a version it must hold.
    Missing,
    /// The site holds a replica of a key deleted or absent at the source.
    Extra,
    /// The site holds a replica of another version.
    Stale,
    /// The replica of the right version differs in size or bytes.
    Corrupt,
}

impl Kind {
    /// The word of a report line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Stale => "stale",
            Kind::Corrupt => "corrupt",
        }
    }
}

/// One difference between a site and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// What differs.
    pub kind: Kind,
    /// The site.
    pub site: String,
    /// The source bucket.
    pub bucket: String,
    /// The source key.
    pub key: String,
    /// Human-readable detail.
    pub detail: String,
    /// The source's current version (what a repair queues), when it has one.
    pub source_version: Option<String>,
    /// The replica's `scal-version-id`, when the site holds a replica.
    pub replica_version: Option<String>,
}

impl Difference {
    /// The text line: `<kind> <site> <bucket>/<key> <detail>`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}/{} {}",
            self.kind.as_str(),
            self.site,
            self.bucket,
            self.key,
            self.detail
        )
    }

    /// The JSON line.
    pub fn json(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "site": self.site,
            "bucket": self.bucket,
            "key": self.key,
            "detail": self.detail,
            "sourceVersionId": self.source_version,
            "replicaVersionId": self.replica_version,
        })
    }
}

/// Counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Source keys with a current version (not deleted) compared.
    pub keys: u64,
    /// Replicas seen at the sites.
    pub replicas: u64,
    /// Differences by kind.
    pub missing: u64,
    /// See [`Kind::Extra`].
    pub extra: u64,
    /// See [`Kind::Stale`].
    pub stale: u64,
    /// See [`Kind::Corrupt`].
    pub corrupt: u64,
    /// Versions sent to the engine to be queued again (`--repair`).
    pub requeued: u64,
    /// Extra replicas deleted (`--repair`).
    pub deleted: u64,
    /// Reads that failed (a listing, a version): the comparison is incomplete.
    pub unreadable: u64,
}

impl Summary {
    /// Differences found.
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.stale + self.corrupt
    }

    fn count(&mut self, kind: Kind) {
        match kind {
            Kind::Missing => self.missing += 1,
            Kind::Extra => self.extra += 1,
            Kind::Stale => self.stale += 1,
            Kind::Corrupt => self.corrupt += 1,
        }
    }

    /// The exit code: 0 equal, 1 differences, 3 a side could not be read (or a repair could
    /// not be sent).
    pub fn exit_code(&self) -> u8 {
        if self.unreadable > 0 {
            3
        } else if self.differences() > 0 {
            1
        } else {
            0
        }
    }
}

/// Why `verify` could not start (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// One site of a bucket's comparison.
struct SiteSide {
    name: String,
    site: Arc<dyn Site>,
    /// The site keys of the bucket start with this (`<bucket>/`, or nothing at a
    /// `bucket_match` site).
    namespace: String,
    items: BoxStream<'static, Result<SiteItem, String>>,
    head: Option<SiteItem>,
    done: bool,
    /// Its listing failed: keys after that point are not compared there.
    failed: bool,
}

/// What one site holds for the key being compared.
struct AtSite {
    name: String,
    site: Arc<dyn Site>,
    namespace: String,
    replica: Option<ReplicaInfo>,
}

/// A replica listed at a site, under its source key.
#[derive(Debug, Clone)]
struct SiteItem {
    key: String,
    replica: ReplicaInfo,
}

/// A comparison run.
pub struct Verifier<'a> {
    config: &'a Config,
    opts: &'a Options,
    source: Arc<dyn Source>,
    sites: BTreeMap<String, (Arc<dyn Site>, bool)>,
    out: &'a mut (dyn Write + Send),
    err: &'a mut (dyn Write + Send),
    summary: Summary,
    requeue: Vec<Value>,
    /// Bytes of JSON `requeue` holds.
    requeue_bytes: usize,
    client: Option<ApiClient>,
}

impl<'a> Verifier<'a> {
    /// Checks the options against `config` and builds the source and sites.
    ///
    /// # Errors
    /// [`UsageError`] naming what cannot be compared: no source, an unknown bucket or site.
    pub fn new(
        config: &'a Config,
        opts: &'a Options,
        out: &'a mut (dyn Write + Send),
        err: &'a mut (dyn Write + Send),
    ) -> Result<Verifier<'a>, UsageError> {
        let source_cfg = config
            .source
            .as_ref()
            .ok_or_else(|| UsageError("the configuration has no [source] to compare".into()))?;
        let source = build_source(source_cfg).map_err(|e| UsageError(e.to_string()))?;
        let buckets = source.buckets();
        if let Some(b) = opts.buckets.iter().find(|b| !buckets.contains(b)) {
            return Err(UsageError(format!(
                "bucket {b:?} is not a source bucket of this configuration ({})",
                buckets.join(", ")
            )));
        }
        if let Some(s) = opts
            .sites
            .iter()
            .find(|s| !config.sites.iter().any(|c| &c.name == *s))
        {
            return Err(UsageError(format!("site {s:?} is not configured")));
        }
        let mut sites = BTreeMap::new();
        for c in &config.sites {
            if opts.sites.is_empty() || opts.sites.contains(&c.name) {
                let site = build_site(c).map_err(|e| UsageError(e.to_string()))?;
                sites.insert(c.name.clone(), (site, c.bucket_match));
            }
        }
        let client = opts.repair.then(|| ApiClient::new(config));
        Ok(Verifier {
            config,
            opts,
            source,
            sites,
            out,
            err,
            summary: Summary::default(),
            requeue: Vec::new(),
            requeue_bytes: 0,
            client,
        })
    }

    /// Compares every bucket; prints each difference as found, then the summary.
    pub async fn run(mut self) -> Summary {
        let buckets = if self.opts.buckets.is_empty() {
            self.source.buckets()
        } else {
            self.opts.buckets.clone()
        };
        for bucket in buckets {
            self.bucket(&bucket).await;
        }
        self.flush_requeue().await;
        let s = self.summary.clone();
        if self.opts.json {
            let line = json!({"summary": {
                "keys": s.keys, "replicas": s.replicas, "missing": s.missing,
                "extra": s.extra, "stale": s.stale, "corrupt": s.corrupt,
                "requeued": s.requeued, "deleted": s.deleted, "unreadable": s.unreadable,
            }});
            let _ = writeln!(self.out, "{line}");
        } else {
            let mut line = format!(
                "verify: {} keys, {} replicas compared: {} missing, {} extra, {} stale, {} corrupt",
                s.keys, s.replicas, s.missing, s.extra, s.stale, s.corrupt
            );
            if self.opts.repair {
                line.push_str(&format!(
                    "; {} queued again, {} extra replicas deleted",
                    s.requeued, s.deleted
                ));
            }
            if s.unreadable > 0 {
                line.push_str(&format!(
                    "; INCOMPLETE: {} reads failed (see above)",
                    s.unreadable
                ));
            }
            let _ = writeln!(self.out, "{line}");
        }
        let _ = self.out.flush();
        s
    }

    fn error(&mut self, message: String) {
        self.summary.unreadable += 1;
        let _ = writeln!(self.err, "backbeat verify: {message}");
    }

    async fn bucket(&mut self, bucket: &str) {
        let rules = match with_retries(|| {
            bucket_rules(self.source.as_ref(), &self.config.replication.rules, bucket)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.error(format!(
                    "cannot read the replication rules of bucket {bucket}: {e}"
                ));
                return;
            }
        };
        // The sites some enabled rule of the bucket sends keys under the prefix to.
        let mut sides = Vec::new();
        for (name, (site, bucket_match)) in &self.sites {
            let used = rules.iter().any(|r| {
                r.enabled
                    && r.sites.contains(name)
                    && (r.prefix.starts_with(&self.opts.prefix)
                        || self.opts.prefix.starts_with(&r.prefix))
            });
            if !used {
                continue;
            }
            let namespace = site_key(bucket, "", *bucket_match);
            sides.push(SiteSide {
                name: name.clone(),
                site: site.clone(),
                items: site_items(
                    site.clone(),
                    namespace.clone(),
                    format!("{namespace}{}", self.opts.prefix),
                ),
                namespace,
                head: None,
                done: false,
                failed: false,
            });
        }
        if sides.is_empty() {
            return;
        }
        let mut source = source_items(
            self.source.clone(),
            bucket.to_string(),
            self.opts.prefix.clone(),
        );
        let mut src_head: Option<ObjectInfo> = None;
        let mut src_done = false;
        loop {
            if src_head.is_none() && !src_done {
                match source.next().await {
                    Some(Ok(item)) => src_head = Some(item),
                    Some(Err(e)) => {
                        self.error(format!("cannot list bucket {bucket} at the source: {e}"));
                        return;
                    }
                    None => src_done = true,
                }
            }
            for side in sides.iter_mut() {
                if side.head.is_none() && !side.done {
                    match side.items.next().await {
                        Some(Ok(item)) => side.head = Some(item),
                        Some(Err(e)) => {
                            side.done = true;
                            side.failed = true;
                            self.summary.unreadable += 1;
                            let _ = writeln!(
                                self.err,
                                "backbeat verify: cannot list site {} under {:?}: {e}; \
                                 its comparison with bucket {bucket} stops here",
                                side.name, side.namespace
                            );
                        }
                        None => side.done = true,
                    }
                }
            }
            let mut key: Option<String> = src_head.as_ref().map(|s| s.version.key.clone());
            for side in &sides {
                if let Some(h) = &side.head {
                    if key.as_ref().is_none_or(|k| h.key.as_bytes() < k.as_bytes()) {
                        key = Some(h.key.clone());
                    }
                }
            }
            let Some(key) = key else { break };
            let src = if src_head.as_ref().is_some_and(|s| s.version.key == key) {
                src_head.take()
            } else {
                None
            };
            let mut at_sites = Vec::with_capacity(sides.len());
            for side in sides.iter_mut() {
                let replica = if side.head.as_ref().is_some_and(|h| h.key == key) {
                    side.head.take().map(|h| h.replica)
                } else {
                    None
                };
                // A site whose listing failed is not compared past that point.
                if side.failed {
                    continue;
                }
                at_sites.push(AtSite {
                    name: side.name.clone(),
                    site: side.site.clone(),
                    namespace: side.namespace.clone(),
                    replica,
                });
            }
            self.compare_key(bucket, &key, src, at_sites, &rules).await;
        }
    }

    /// Compares one source key with what each site holds for it.
    async fn compare_key(
        &mut self,
        bucket: &str,
        key: &str,
        listed: Option<ObjectInfo>,
        at_sites: Vec<AtSite>,
        rules: &[Rule],
    ) {
        let live = listed.as_ref().is_some_and(|s| !s.is_delete_marker);
        if live {
            self.summary.keys += 1;
        }
        // The source's full answer, read once when a difference needs it.
        let mut full: Option<Option<ObjectInfo>> = if self.source.listing_is_full_metadata() {
            Some(listed.clone())
        } else {
            None
        };
        for AtSite {
            name: site_name,
            site,
            namespace,
            replica,
        } in at_sites
        {
            let ours = replica
                .as_ref()
                .filter(|r| r.is_replica() && !r.delete_marker)
                .filter(|r| r.source_bucket.as_deref().is_none_or(|b| b == bucket));
            if ours.is_some() {
                self.summary.replicas += 1;
            }
            // The right version there: compared by size and MD5 without asking the source.
            if let (Some(src), Some(r)) = (listed.as_ref().filter(|_| live), ours) {
                if r.source_version_id.as_deref() == Some(src.version.version_id.as_str()) {
                    self.check_content(bucket, key, src, &site_name, &site, &namespace, r)
                        .await;
                    continue;
                }
            }
            if full.is_none() {
                match with_retries(|| self.source.current(bucket, key)).await {
                    Ok(c) => full = Some(c),
                    Err(e) => {
                        self.error(format!("cannot read {bucket}/{key} at the source: {e}"));
                        return;
                    }
                }
            }
            let current = full
                .as_ref()
                .and_then(|c| c.as_ref())
                .filter(|c| !c.is_delete_marker);
            match current {
                Some(cur) => {
                    if cur.replica {
                        continue;
                    }
                    let sends = rule_for(rules, key, &cur.tags)
                        .is_some_and(|r| r.sites.contains(&site_name));
                    let Some(r) = ours else {
                        if sends {
                            let detail = match &replica {
                                Some(r) if r.delete_marker => {
                                    "the site's newest version is a delete marker"
                                }
                                Some(_) => {
                                    "the site holds an object that is not a replica of this key"
                                }
                                None => "no replica at the site",
                            };
                            self.report(Difference {
                                kind: Kind::Missing,
                                site: site_name.clone(),
                                bucket: bucket.to_string(),
                                key: key.to_string(),
                                detail: format!(
                                    "{detail} (source version {})",
                                    cur.version.version_id
                                ),
                                source_version: Some(cur.version.version_id.clone()),
                                replica_version: None,
                            })
                            .await;
                        }
                        continue;
                    };
                    if r.source_version_id.as_deref() == Some(cur.version.version_id.as_str()) {
                        // Changed at the source while listed: the replica is the current one.
                        self.check_content(bucket, key, cur, &site_name, &site, &namespace, r)
                            .await;
                    } else if sends {
                        self.report(Difference {
                            kind: Kind::Stale,
                            site: site_name.clone(),
                            bucket: bucket.to_string(),
                            key: key.to_string(),
                            detail: format!(
                                "replica of version {}, source version {}",
                                r.source_version_id.as_deref().unwrap_or(""),
                                cur.version.version_id
                            ),
                            source_version: Some(cur.version.version_id.clone()),
                            replica_version: r.source_version_id.clone(),
                        })
                        .await;
                    }
                }
                None => {
                    let Some(r) = ours else { continue };
                    if self.config.source.as_ref().is_some_and(|s| s.transient) {
                        continue;
                    }
                    let deleted = full.as_ref().and_then(|c| c.as_ref()).is_some();
                    if deleted {
                        // Deletes are not sent where the key's rule keeps them.
                        let none = BTreeMap::new();
                        if rule_for(rules, key, &none).is_some_and(|g| !g.delete_markers) {
                            continue;
                        }
                    }
                    let detail = if deleted {
                        "the key is deleted at the source"
                    } else {
                        "the key is absent at the source"
                    };
                    self.report(Difference {
                        kind: Kind::Extra,
                        site: site_name.clone(),
                        bucket: bucket.to_string(),
                        key: key.to_string(),
                        detail: format!(
                            "{detail}; the site holds a replica of version {}",
                            r.source_version_id.as_deref().unwrap_or("")
                        ),
                        source_version: None,
                        replica_version: r.source_version_id.clone(),
                    })
                    .await;
                    if self.opts.repair {
                        self.delete_extra(bucket, key, &site, &namespace, r).await;
                    }
                }
            }
        }
    }

    /// Compares a replica of the source's current version by size and MD5 (and bytes with
    /// `--deep`).
    #[allow(clippy::too_many_arguments)]
    async fn check_content(
        &mut self,
        bucket: &str,
        key: &str,
        src: &ObjectInfo,
        site_name: &str,
        site: &Arc<dyn Site>,
        namespace: &str,
        r: &ReplicaInfo,
    ) {
        let mut problem = content_difference(src, r);
        if problem.is_none() && self.opts.deep {
            problem = match self.deep_compare(bucket, key, src, site, namespace).await {
                Ok(p) => p,
                Err(e) => {
                    self.error(e);
                    return;
                }
            };
        }
        if let Some(detail) = problem {
            self.report(Difference {
                kind: Kind::Corrupt,
                site: site_name.to_string(),
                bucket: bucket.to_string(),
                key: key.to_string(),
                detail,
                source_version: Some(src.version.version_id.clone()),
                replica_version: r.source_version_id.clone(),
            })
            .await;
        }
    }

    /// Reads and hashes both sides; a description when they differ.
    async fn deep_compare(
        &self,
        bucket: &str,
        key: &str,
        src: &ObjectInfo,
        site: &Arc<dyn Site>,
        namespace: &str,
    ) -> Result<Option<String>, String> {
        let opened = self
            .source
            .open_current(bucket, key, false)
            .await
            .map_err(|e| format!("cannot read {bucket}/{key} at the source: {e}"))?;
        let Some((cur, Some(body))) = opened else {
            return Ok(None);
        };
        if cur.version.version_id != src.version.version_id {
            // Changed while compared: the next run sees the new version.
            return Ok(None);
        }
        let at_source = crate::checksum::digest_stream(body)
            .await
            .map_err(|e| format!("cannot read {bucket}/{key} at the source: {e}"))?;
        let site_key = format!("{namespace}{key}");
        let Some(body) = site
            .read(&site_key)
            .await
            .map_err(|e| format!("cannot read {site_key} at site {}: {e}", site.name()))?
        else {
            return Ok(Some("the replica went away while compared".into()));
        };
        let at_site = crate::checksum::digest_stream(body)
            .await
            .map_err(|e| format!("cannot read {site_key} at site {}: {e}", site.name()))?;
        Ok((at_source != at_site).then(|| {
            format!(
                "bytes differ: md5 {} ({} bytes) at the source, {} ({} bytes) at the site",
                at_source.hex(),
                at_source.len,
                at_site.hex(),
                at_site.len
            )
        }))
    }

    async fn report(&mut self, d: Difference) {
        self.summary.count(d.kind);
        let line = if self.opts.json {
            d.json().to_string()
        } else {
            d.line()
        };
        let _ = writeln!(self.out, "{line}");
        if self.opts.repair && d.kind != Kind::Extra {
            if let Some(v) = &d.source_version {
                let item = json!({
                    "Bucket": d.bucket, "Key": d.key, "VersionId": v, "StorageClass": d.site,
                });
                // Sent first if it would take the batch over the body limit.
                let len = item.to_string().len() + 1;
                if self.requeue_bytes + len > REQUEUE_BYTES {
                    self.flush_requeue().await;
                }
                self.requeue_bytes += len;
                self.requeue.push(item);
                if self.requeue.len() >= REQUEUE_BATCH {
                    self.flush_requeue().await;
                }
            }
        }
    }

    async fn flush_requeue(&mut self) {
        if self.requeue.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.requeue);
        self.requeue_bytes = 0;
        let n = batch.len() as u64;
        let Some(client) = &self.client else { return };
        match client.post_json("crr/requeue", &Value::Array(batch)).await {
            Ok(_) => self.summary.requeued += n,
            Err(e) => self.error(format!(
                "could not send {n} versions to be queued again: {e}"
            )),
        }
    }

    /// Deletes an extra replica while the site still holds the same one and the source still
    /// lacks the key.
    async fn delete_extra(
        &mut self,
        bucket: &str,
        key: &str,
        site: &Arc<dyn Site>,
        namespace: &str,
        seen: &ReplicaInfo,
    ) {
        let site_key = format!("{namespace}{key}");
        let still = match site.replica(&site_key).await {
            Ok(r) => r,
            Err(e) => {
                self.error(format!(
                    "cannot read {site_key} at site {}: {e}",
                    site.name()
                ));
                return;
            }
        };
        if still.as_ref().map(|r| &r.source_version_id) != Some(&seen.source_version_id) {
            return;
        }
        match self.source.current(bucket, key).await {
            Ok(Some(c)) if !c.is_delete_marker => return,
            Ok(_) => {}
            Err(e) => {
                self.error(format!("cannot read {bucket}/{key} at the source: {e}"));
                return;
            }
        }
        match site.delete(&site_key).await {
            Ok(_) => self.summary.deleted += 1,
            Err(e) => self.error(format!(
                "cannot delete the extra replica {site_key} at site {}: {e}",
                site.name()
            )),
        }
    }
}

/// What differs between a replica of the right version and the source's version: size, then
/// MD5 where both sides know one (the site's own hash of the bytes it holds first, then the
/// `scal-md5` the writer recorded).
pub fn content_difference(src: &ObjectInfo, r: &ReplicaInfo) -> Option<String> {
    if r.size != src.size {
        return Some(format!(
            "size {} at the source, {} at the site",
            src.size, r.size
        ));
    }
    let source_md5 = src
        .content_md5
        .clone()
        .or_else(|| crate::checksum::md5_of_hex(&src.etag).map(|m| crate::checksum::hex(&m)));
    if let (Some(site), Some(source)) = (r.content_md5.as_deref(), source_md5.as_deref()) {
        if !site.eq_ignore_ascii_case(source) {
            return Some(format!(
                "md5 {source} at the source, {} of the bytes the site holds",
                site.to_ascii_lowercase()
            ));
        }
    }
    let site_md5 = r.md5.as_deref()?.trim().to_ascii_lowercase();
    if site_md5 == src.etag.trim().trim_matches('"').to_ascii_lowercase() {
        return None;
    }
    let source_md5 = source_md5?;
    (crate::checksum::md5_of_hex(&site_md5).is_some() && site_md5 != source_md5)
        .then(|| format!("md5 {source_md5} at the source, scal-md5 {site_md5} at the site"))
}

/// Retries `f` while it fails transiently, a few times with a growing pause.
async fn with_retries<T, E, F, Fut>(mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Retryable,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.retryable() && attempt + 1 < READ_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            r => return r,
        }
    }
}

/// Errors that may go away when asked again.
trait Retryable {
    fn retryable(&self) -> bool;
}

impl Retryable for crate::source::SourceError {
    fn retryable(&self) -> bool {
        matches!(self.disposition(), Disposition::Retry { .. })
    }
}

impl Retryable for crate::site::SiteError {
    fn retryable(&self) -> bool {
        matches!(self.disposition(), Disposition::Retry { .. })
    }
}

/// The source's current versions of `bucket` under `prefix`, in key byte order: a directory
/// walked once in a thread of its own, else the source's listing pages.
fn source_items(
    source: Arc<dyn Source>,
    bucket: String,
    prefix: String,
) -> BoxStream<'static, Result<ObjectInfo, String>> {
    if let Some(file) = source.as_file() {
        let file = file.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(PAGE);
        tokio::task::spawn_blocking(move || {
            let r = file.walk_sorted(&prefix, None, &mut |info| {
                tx.blocking_send(Ok(info)).is_ok()
            });
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(e.to_string()));
            }
        });
        return receiver_stream(rx);
    }
    // Pages from the start of the bucket; keys before the prefix are skipped, the first
    // after it ends the listing.
    let pages = stream::unfold(Some(None::<String>), move |cursor| {
        let source = source.clone();
        let bucket = bucket.clone();
        async move {
            let cursor = cursor?;
            match with_retries(|| source.list_current(&bucket, cursor.as_deref())).await {
                Ok(page) => {
                    let next = page.next.map(Some);
                    Some((Ok(page.items), next))
                }
                Err(e) => Some((Err(e.to_string()), None)),
            }
        }
    });
    let prefix_end = prefix.clone();
    pages
        .flat_map(|page| match page {
            Ok(items) => stream::iter(items.into_iter().map(Ok)).left_stream(),
            Err(e) => stream::iter(vec![Err(e)]).right_stream(),
        })
        .filter(move |item| {
            let keep = match item {
                Ok(i) => {
                    i.version.key.starts_with(&prefix) || i.version.key.as_str() > prefix.as_str()
                }
                Err(_) => true,
            };
            std::future::ready(keep)
        })
        .take_while(move |item| {
            let more = match item {
                Ok(i) => i.version.key.starts_with(&prefix_end),
                Err(_) => true,
            };
            std::future::ready(more)
        })
        .boxed()
}

/// A site's replicas under `list_prefix` (which starts with `namespace`), in key byte order,
/// under their source keys, each with its REPLICA metadata (read with a HEAD where the
/// listing lacks it, [`READ_AHEAD`] at a time).
fn site_items(
    site: Arc<dyn Site>,
    namespace: String,
    list_prefix: String,
) -> BoxStream<'static, Result<SiteItem, String>> {
    let listed: BoxStream<'static, Result<(String, Option<ReplicaInfo>), String>> =
        if let Some(file) = site.as_file() {
            let root = file.root().to_path_buf();
            let (tx, rx) = tokio::sync::mpsc::channel(PAGE);
            tokio::task::spawn_blocking(move || {
                let r = crate::site::file::walk_replicas(&root, &list_prefix, None, &mut |k, _| {
                    tx.blocking_send(Ok((k.to_string(), None))).is_ok()
                });
                if let Err(e) = r {
                    let _ = tx.blocking_send(Err(e.to_string()));
                }
            });
            receiver_stream(rx)
        } else {
            let site = site.clone();
            stream::unfold(Some(None::<String>), move |cursor| {
                let site = site.clone();
                let prefix = list_prefix.clone();
                async move {
                    let cursor = cursor?;
                    match with_retries(|| site.list(&prefix, cursor.as_deref(), PAGE)).await {
                        Ok(page) => {
                            let next = page.next.map(Some);
                            let items: Vec<(String, Option<ReplicaInfo>)> =
                                page.items.into_iter().map(|(k, _, r)| (k, r)).collect();
                            Some((Ok(items), next))
                        }
                        Err(e) => Some((Err(e.to_string()), None)),
                    }
                }
            })
            .flat_map(|page| match page {
                Ok(items) => stream::iter(items.into_iter().map(Ok)).left_stream(),
                Err(e) => stream::iter(vec![Err(e)]).right_stream(),
            })
            .boxed()
        };
    listed
        .map(move |item| {
            let site = site.clone();
            let namespace = namespace.clone();
            async move {
                let (site_key, replica) = item?;
                let Some(key) = site_key.strip_prefix(&namespace).map(str::to_string) else {
                    return Ok(None);
                };
                let replica = match replica {
                    Some(r) => Some(r),
                    None => with_retries(|| site.replica(&site_key))
                        .await
                        .map_err(|e| e.to_string())?,
                };
                Ok(replica.map(|replica| SiteItem { key, replica }))
            }
        })
        .buffered(READ_AHEAD)
        .filter_map(|r: Result<Option<SiteItem>, String>| std::future::ready(r.transpose()))
        .boxed()
}

fn receiver_stream<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> BoxStream<'static, T> {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            size,
            etag: etag.into(),
            ..ObjectInfo::default()
        }
    }

    fn replica(size: u64, md5: Option<&str>) -> ReplicaInfo {
        ReplicaInfo {
            size,
            md5: md5.map(str::to_string),
            source_version_id: Some("v".into()),
            ..ReplicaInfo::default()
        }
    }

    #[test]
    fn content_is_compared_by_size_then_md5_where_both_are_known() {
        let md5 = "0123456789abcdef0123456789abcdef";
        let other = "ffffffffffffffffffffffffffffffff";
        assert_eq!(
            content_difference(&src(3, md5), &replica(3, Some(md5))),
            None
        );
        assert!(content_difference(&src(3, md5), &replica(4, Some(md5)))
            .unwrap()
            .contains("size 3 at the source, 4 at the site"));
        assert!(content_difference(&src(3, md5), &replica(3, Some(other)))
            .unwrap()
            .contains("md5"));
        // A multipart ETag kept as the replica's scal-md5 matches as it is.
        assert_eq!(
            content_difference(&src(3, "abc-2"), &replica(3, Some("abc-2"))),
            None
        );
        // Not comparable: a file source's ETag is not an MD5 and it was not read.
        assert_eq!(
            content_difference(&src(3, "1-2-3"), &replica(3, Some(other))),
            None
        );
        assert_eq!(content_difference(&src(3, md5), &replica(3, None)), None);
        // A file source that computed the MD5.
        let mut s = src(3, "1-2-3");
        s.content_md5 = Some(md5.into());
        assert!(content_difference(&s, &replica(3, Some(other))).is_some());
        // The site's own hash of what it holds wins over the recorded scal-md5.
        let mut r = replica(3, Some(md5));
        r.content_md5 = Some(other.into());
        assert!(content_difference(&src(3, md5), &r)
            .unwrap()
            .contains("of the bytes the site holds"));
        r.content_md5 = Some(md5.to_ascii_uppercase());
        assert_eq!(content_difference(&src(3, md5), &r), None);
    }

    #[test]
    fn exit_codes_say_equal_different_or_incomplete() {
        let mut s = Summary::default();
        assert_eq!(s.exit_code(), 0);
        s.count(Kind::Stale);
        assert_eq!(s.exit_code(), 1);
        s.unreadable = 1;
        assert_eq!(s.exit_code(), 3);
    }
}
