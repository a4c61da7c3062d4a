//! Replication state transitions: the one pure function, [`apply`], that turns a change to a
//! source key (a version queued, a site's outcome, an operator's retry or requeue, a site
//! removed) into the key's new record and the effects that go with it (pending counters,
//! metrics, failed-set entries). The state stores run it inside their own transaction, so each
//! change is one atomic, replay-safe update, however the stages and the API interleave, and
//! the counters stay exact under at-least-once delivery. Nothing here does I/O.
//!
//! The record is per key ([`KeyState`]): the key's current version as last queued, with each
//! site's status for it. Newest wins (DESIGN section 3): a newer version replaces the record,
//! and an outcome about any other version changes nothing.
//!
//! ```text
//! change                          applies when                      effects
//! Queued v (populator)            v is new for the key              sites of the rule PENDING
//!                                                                   (a site already PENDING stays
//!                                                                   counted once), queued metrics,
//!                                                                   the old version's failed
//!                                                                   entries and sites left out go
//!                                 v is the key's version            sites missing from it added
//!                                                                   PENDING (backfill)
//! Requeued v, sites (operator)    v is the key's version, or new    those sites PENDING whatever
//!                                                                   they were
//! Outcome COMPLETED (status)      v current, site PENDING           COMPLETED, pending -1, done metrics
//! Outcome FAILED (status)         v current, site PENDING           FAILED, pending -1, fail metrics,
//!                                                                   failed set +
//! Outcome dropped (status)        v current, site PENDING           site removed, pending -1
//! Retry step 1 (API)              v current, site FAILED            PENDING, pending +1 (still listed)
//! Retry undone (API)              v current, site PENDING           FAILED, pending -1
//! Retry step 2 (API)              site not FAILED for v             failed set -
//! Site removed (GC)               the key has the site              site removed, pending -1 if
//!                                                                   PENDING, failed set - if FAILED
//! ```
//!
//! Invariant (tested below for any sequence of changes, each possibly replayed): a site's
//! pending counters equal the number and bytes of keys whose current version is PENDING at
//! it, and every FAILED (key, site) is in the failed set.

use serde::{Deserialize, Serialize};

use crate::error::FailureReason;
use crate::model::{KeyState, ReplicationStatus, SiteState, VersionRef};

/// Why a site will never get a version (a status entry's `skipped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropReason {
    /// The source's current version of the key is another one (DESIGN 3, newest wins).
    #[serde(alias = "gone", alias = "changed")]
    Superseded,
    /// The version is itself a replica (DESIGN 3: replicas are never replicated).
    Replica,
}

impl DropReason {
    /// The wire and metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Superseded => "superseded",
            DropReason::Replica => "replica",
        }
    }
}

/// What the failed set keeps about a failed (key, site) besides its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedInfo {
    /// Size of the version.
    pub size: u64,
    /// When the version was written at the source (ms).
    pub written_ms: u64,
    /// The failure's typed reason.
    pub reason: FailureReason,
    /// Attempts made, replays included.
    pub attempts: u32,
    /// The last error, one line, no secrets.
    pub last_error: String,
    /// When the last attempt ended (ms).
    pub last_attempt_ms: u64,
}

/// A site's outcome for a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteOutcome {
    /// The replica is written (or was already there); its version id at the site if any.
    Completed {
        /// The replica's version id at the site.
        data_store_version_id: Option<String>,
    },
    /// Retries and replays spent, or a permanent error.
    Failed(FailedInfo),
    /// The site will never get this version.
    Dropped(DropReason),
}

/// A version as the populator queues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedVersion {
    /// Version id.
    pub version_id: String,
    /// Source ETag (without quotes).
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// Source write time (ms).
    pub written_ms: u64,
    /// A delete marker, or the key deleted.
    pub deleted: bool,
    /// First seen long after it was written.
    pub backfill: bool,
}

/// A change to one key's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyChange {
    /// The populator queued the key's current version for `sites` (the rule's).
    Queued {
        /// The version.
        version: QueuedVersion,
        /// The rule's sites.
        sites: Vec<String>,
    },
    /// An operator re-queued `version` for `sites`, whatever their status (`POST crr/requeue`).
    Requeued {
        /// The version.
        version: QueuedVersion,
        /// The sites to copy it to again.
        sites: Vec<String>,
    },
    /// A replication processor's outcome, through the status processor.
    Outcome {
        /// The version it is about.
        version_id: String,
        /// The site.
        site: String,
        /// What happened.
        outcome: SiteOutcome,
    },
    /// Step 1 of an operator's retry: a FAILED site back to PENDING, still listed as failed
    /// until its entry is queued.
    Retry {
        /// The version.
        version_id: String,
        /// The site.
        site: String,
    },
    /// The retry entry could not be queued: back to FAILED.
    RetryUndone {
        /// The version.
        version_id: String,
        /// The site.
        site: String,
    },
    /// Step 2 of a retry, once its entry is queued (or a stale failed entry): out of the
    /// failed set unless the site is FAILED for that version again.
    Unlisted {
        /// The version.
        version_id: String,
        /// The site.
        site: String,
    },
    /// A site no longer in the configuration.
    SiteRemoved {
        /// The site.
        site: String,
    },
    /// The version left a transient source once replicated everywhere (DESIGN section 9):
    /// its record goes, if it still is that version, COMPLETED at every site.
    Collected {
        /// The version collected.
        version_id: String,
    },
}

/// What a change does besides the record itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effects {
    /// Whether anything changed (a replayed change changes nothing).
    pub changed: bool,
    /// Pending counter deltas `(site, ops, bytes)`.
    pub pending: Vec<(String, i64, i64)>,
    /// Window metrics to add `(site, metric, value)`.
    pub metrics: Vec<(String, crate::model::Metric, u64)>,
    /// Failed-set entries to add (site, version, info); the time is the change's.
    pub failed_add: Vec<(String, VersionRef, FailedInfo)>,
    /// Failed-set entries to remove (site, version).
    pub failed_remove: Vec<(String, VersionRef)>,
}

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

impl Effects {
    fn pending(&mut self, site: &str, ops: i64, bytes: i64) {
        if ops != 0 || bytes != 0 {
            self.pending.push((site.to_string(), ops, bytes));
        }
    }

    fn queued(&mut self, site: &str, size: u64) {
        use crate::model::Metric;
        self.metrics.push((site.to_string(), Metric::Ops, 1));
        self.metrics.push((site.to_string(), Metric::Bytes, size));
    }
}

fn pending_site(site: &str) -> SiteState {
    SiteState {
        site: site.to_string(),
        status: ReplicationStatus::Pending,
        data_store_version_id: String::new(),
    }
}

fn record_of(v: &QueuedVersion, now: u64) -> KeyState {
    KeyState {
        version_id: v.version_id.clone(),
        etag: v.etag.clone(),
        size: v.size,
        written_ms: v.written_ms,
        queued_ms: now,
        deleted: v.deleted,
        backfill: v.backfill,
        sites: Vec::new(),
    }
}

/// Applies `change` to the record `old` of key `bucket/key` at time `now`; returns the new
/// record (`None`: no record) and the effects. When nothing applies, the record comes back
/// unchanged with `changed = false`.
pub fn apply(
    bucket: &str,
    key: &str,
    old: Option<KeyState>,
    change: &KeyChange,
    now: u64,
) -> (Option<KeyState>, Effects) {
    let mut fx = Effects::default();
    let vref = |vid: &str| VersionRef::new(bucket, key, vid);
    let new = match change {
        KeyChange::Queued { version, sites } | KeyChange::Requeued { version, sites } => {
            let force = matches!(change, KeyChange::Requeued { .. });
            queue(old, version, sites, force, now, &vref, &mut fx)
        }
        KeyChange::Outcome {
            version_id,
            site,
            outcome,
        } => {
            let Some(mut k) = old else {
                return (None, fx);
            };
            let size = size_i64(k.size);
            let current = k.version_id == *version_id;
            let Some(i) = k
                .sites
                .iter()
                .position(|s| current && s.site == *site && s.status == ReplicationStatus::Pending)
            else {
                return (Some(k), fx);
            };
            fx.changed = true;
            fx.pending(site, -1, -size);
            use crate::model::Metric;
            match outcome {
                SiteOutcome::Completed {
                    data_store_version_id,
                } => {
                    if let Some(s) = k.sites.get_mut(i) {
                        s.status = ReplicationStatus::Completed;
                        s.data_store_version_id = data_store_version_id.clone().unwrap_or_default();
                    }
                    fx.metrics.push((site.clone(), Metric::OpsDone, 1));
                    fx.metrics.push((site.clone(), Metric::BytesDone, k.size));
                }
                SiteOutcome::Failed(info) => {
                    if let Some(s) = k.sites.get_mut(i) {
                        s.status = ReplicationStatus::Failed;
                    }
                    fx.metrics.push((site.clone(), Metric::OpsFail, 1));
                    fx.metrics.push((site.clone(), Metric::BytesFail, k.size));
                    fx.failed_add
                        .push((site.clone(), vref(version_id), info.clone()));
                }
                SiteOutcome::Dropped(_) => {
                    k.sites.remove(i);
                }
            }
            Some(k)
        }
        KeyChange::Retry { version_id, site } | KeyChange::RetryUndone { version_id, site } => {
            let Some(mut k) = old else {
                return (None, fx);
            };
            let (from, to, sign) = if matches!(change, KeyChange::Retry { .. }) {
                (ReplicationStatus::Failed, ReplicationStatus::Pending, 1)
            } else {
                (ReplicationStatus::Pending, ReplicationStatus::Failed, -1)
            };
            let size = size_i64(k.size);
            if k.version_id == *version_id {
                if let Some(s) = k
                    .sites
                    .iter_mut()
                    .find(|s| s.site == *site && s.status == from)
                {
                    s.status = to;
                    fx.changed = true;
                    fx.pending(site, sign, sign * size);
                }
            }
            Some(k)
        }
        KeyChange::Unlisted { version_id, site } => {
            let failed_now = old.as_ref().is_some_and(|k| {
                k.version_id == *version_id
                    && k.site(site).map(|s| s.status) == Some(ReplicationStatus::Failed)
            });
            if !failed_now {
                // Whether it was listed is the store's to know: removing is idempotent.
                fx.changed = true;
                fx.failed_remove.push((site.clone(), vref(version_id)));
            }
            old
        }
        KeyChange::Collected { version_id } => {
            let settled = old.as_ref().is_some_and(|k| {
                k.version_id == *version_id
                    && !k.deleted
                    && k.sites
                        .iter()
                        .all(|s| s.status == ReplicationStatus::Completed)
            });
            if !settled {
                return (old, fx);
            }
            fx.changed = true;
            None
        }
        KeyChange::SiteRemoved { site } => {
            let Some(mut k) = old else {
                return (None, fx);
            };
            if let Some(i) = k.sites.iter().position(|s| s.site == *site) {
                let s = k.sites.remove(i);
                fx.changed = true;
                match s.status {
                    ReplicationStatus::Pending => fx.pending(site, -1, -size_i64(k.size)),
                    ReplicationStatus::Failed => {
                        fx.failed_remove.push((site.clone(), vref(&k.version_id)))
                    }
                    _ => {}
                }
            }
            Some(k)
        }
    };
    (new, fx)
}

/// [`KeyChange::Queued`] (`force = false`) and [`KeyChange::Requeued`] (`force = true`).
fn queue(
    old: Option<KeyState>,
    v: &QueuedVersion,
    sites: &[String],
    force: bool,
    now: u64,
    vref: &dyn Fn(&str) -> VersionRef,
    fx: &mut Effects,
) -> Option<KeyState> {
    let size = size_i64(v.size);
    match old {
        Some(mut k) if k.is_version(&v.version_id, &v.etag) => {
            // The same version: add the sites it lacks (a site added to the rule), and with
            // `force` set the given ones PENDING again.
            for site in sites {
                match k.sites.iter_mut().find(|s| s.site == *site) {
                    None => {
                        k.sites.push(pending_site(site));
                        fx.pending(site, 1, size);
                        fx.queued(site, v.size);
                    }
                    Some(s) if force && s.status != ReplicationStatus::Pending => {
                        if s.status == ReplicationStatus::Failed {
                            fx.failed_remove.push((site.clone(), vref(&k.version_id)));
                        }
                        s.status = ReplicationStatus::Pending;
                        s.data_store_version_id.clear();
                        fx.pending(site, 1, size);
                        fx.queued(site, v.size);
                    }
                    Some(_) => {}
                }
            }
            fx.changed = !fx.pending.is_empty() || !fx.failed_remove.is_empty();
            Some(k)
        }
        None if v.deleted => {
            // A deletion of a key never replicated: nothing to delete anywhere.
            None
        }
        old => {
            // A new current version: it takes the record over. A site still PENDING with the
            // old one stays counted once (the bytes follow the new size).
            let mut k = record_of(v, now);
            for site in sites {
                let was = old.as_ref().and_then(|o| o.site(site));
                match was.map(|s| s.status) {
                    Some(ReplicationStatus::Pending) => {
                        let old_size = old.as_ref().map_or(0, |o| size_i64(o.size));
                        fx.pending(site, 0, size - old_size);
                    }
                    status => {
                        if status == Some(ReplicationStatus::Failed) {
                            if let Some(o) = &old {
                                fx.failed_remove.push((site.clone(), vref(&o.version_id)));
                            }
                        }
                        fx.pending(site, 1, size);
                    }
                }
                fx.queued(site, v.size);
                k.sites.push(pending_site(site));
            }
            if let Some(o) = &old {
                for s in o.sites.iter().filter(|s| !sites.contains(&s.site)) {
                    match s.status {
                        ReplicationStatus::Pending => {
                            fx.pending(&s.site, -1, -size_i64(o.size));
                        }
                        ReplicationStatus::Failed => {
                            fx.failed_remove.push((s.site.clone(), vref(&o.version_id)));
                        }
                        _ => {}
                    }
                }
            }
            fx.changed = true;
            Some(k)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const SITES: [&str; 3] = ["a", "b", "c"];

    #[derive(Debug, Clone)]
    enum Ev {
        Queued {
            key: usize,
            ver: usize,
            sites: u8,
        },
        Requeued {
            key: usize,
            ver: usize,
            sites: u8,
        },
        Outcome {
            key: usize,
            ver: usize,
            site: usize,
            kind: u8,
        },
        /// Step 1 then, when it applied, either the undo or step 2.
        Retry {
            key: usize,
            ver: usize,
            site: usize,
            queued: bool,
        },
        SiteRemoved {
            site: usize,
        },
        /// Transient collection of a version (changes only a settled record of it).
        Collected {
            key: usize,
            ver: usize,
        },
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0..2usize, 0..3usize, 0..8u8).prop_map(|(key, ver, sites)| Ev::Queued {
                key,
                ver,
                sites
            }),
            (0..2usize, 0..3usize, 0..8u8).prop_map(|(key, ver, sites)| Ev::Requeued {
                key,
                ver,
                sites
            }),
            (0..2usize, 0..3usize, 0..3usize, 0..4u8).prop_map(|(key, ver, site, kind)| {
                Ev::Outcome {
                    key,
                    ver,
                    site,
                    kind,
                }
            }),
            (0..2usize, 0..3usize, 0..3usize, any::<bool>()).prop_map(
                |(key, ver, site, queued)| Ev::Retry {
                    key,
                    ver,
                    site,
                    queued
                }
            ),
            (0..3usize).prop_map(|site| Ev::SiteRemoved { site }),
            (0..2usize, 0..3usize).prop_map(|(key, ver)| Ev::Collected { key, ver }),
        ]
    }

    fn version(ver: usize) -> QueuedVersion {
        QueuedVersion {
            version_id: format!("v{ver}"),
            etag: format!("e{ver}"),
            size: 10 + ver as u64 * 7,
            written_ms: 1,
            deleted: ver == 2,
            backfill: false,
        }
    }

    fn sites_of(mask: u8) -> Vec<String> {
        SITES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| s.to_string())
            .collect()
    }

    fn failed_info() -> FailedInfo {
        FailedInfo {
            size: 1,
            written_ms: 1,
            reason: FailureReason::Unreachable,
            attempts: 1,
            last_error: "x".into(),
            last_attempt_ms: 1,
        }
    }

    /// A toy store: records, counters, failed set.
    #[derive(Default, Debug)]
    struct Model {
        keys: BTreeMap<String, KeyState>,
        pending: BTreeMap<String, (i64, i64)>,
        failed: BTreeSet<(String, VersionRef)>,
    }

    impl Model {
        fn change(&mut self, key: usize, change: &KeyChange) -> bool {
            let k = format!("k{key}");
            let old = self.keys.get(&k).cloned();
            let (new, fx) = apply("b", &k, old, change, 5);
            match new {
                Some(n) => self.keys.insert(k, n),
                None => self.keys.remove(&k),
            };
            for (site, ops, bytes) in fx.pending {
                let p = self.pending.entry(site).or_default();
                p.0 += ops;
                p.1 += bytes;
            }
            for (site, v) in fx.failed_remove {
                self.failed.remove(&(site, v));
            }
            for (site, v, _) in fx.failed_add {
                self.failed.insert((site, v));
            }
            fx.changed
        }

        fn event(&mut self, e: &Ev, replayed: bool) {
            let twice = |m: &mut Model, key, c: &KeyChange| {
                let applied = m.change(key, c);
                if replayed {
                    assert!(
                        !m.change(key, c) || !applied || matches!(c, KeyChange::Unlisted { .. }),
                        "a replayed change must change nothing: {c:?}"
                    );
                }
                applied
            };
            match *e {
                Ev::Queued { key, ver, sites } => {
                    twice(
                        self,
                        key,
                        &KeyChange::Queued {
                            version: version(ver),
                            sites: sites_of(sites),
                        },
                    );
                }
                Ev::Requeued { key, ver, sites } => {
                    // A requeue is not idempotent by design (it copies again): never replayed.
                    self.change(
                        key,
                        &KeyChange::Requeued {
                            version: version(ver),
                            sites: sites_of(sites),
                        },
                    );
                }
                Ev::Outcome {
                    key,
                    ver,
                    site,
                    kind,
                } => {
                    let outcome = match kind {
                        0 => SiteOutcome::Completed {
                            data_store_version_id: Some("r".into()),
                        },
                        1 => SiteOutcome::Failed(failed_info()),
                        2 => SiteOutcome::Dropped(DropReason::Superseded),
                        _ => SiteOutcome::Dropped(DropReason::Replica),
                    };
                    twice(
                        self,
                        key,
                        &KeyChange::Outcome {
                            version_id: version(ver).version_id,
                            site: SITES[site].into(),
                            outcome,
                        },
                    );
                }
                Ev::Retry {
                    key,
                    ver,
                    site,
                    queued,
                } => {
                    let version_id = version(ver).version_id;
                    let site = SITES[site].to_string();
                    let c = KeyChange::Retry {
                        version_id: version_id.clone(),
                        site: site.clone(),
                    };
                    if twice(self, key, &c) {
                        let next = if queued {
                            KeyChange::Unlisted { version_id, site }
                        } else {
                            KeyChange::RetryUndone { version_id, site }
                        };
                        twice(self, key, &next);
                    }
                }
                Ev::Collected { key, ver } => {
                    let k = format!("k{key}");
                    let before = self.keys.get(&k).cloned();
                    let applied = twice(
                        self,
                        key,
                        &KeyChange::Collected {
                            version_id: version(ver).version_id,
                        },
                    );
                    // Only a record of that version, settled at every site, goes.
                    let settled = before.is_some_and(|b| {
                        b.version_id == version(ver).version_id
                            && !b.deleted
                            && b.sites
                                .iter()
                                .all(|s| s.status == ReplicationStatus::Completed)
                    });
                    assert_eq!(applied, settled);
                }
                Ev::SiteRemoved { site } => {
                    for key in 0..2 {
                        twice(
                            self,
                            key,
                            &KeyChange::SiteRemoved {
                                site: SITES[site].into(),
                            },
                        );
                    }
                }
            }
        }

        fn check(&self) {
            for site in SITES {
                let (mut ops, mut bytes) = (0, 0);
                for (key, k) in &self.keys {
                    match k.site(site).map(|s| s.status) {
                        Some(ReplicationStatus::Pending) => {
                            ops += 1;
                            bytes += k.size as i64;
                        }
                        Some(ReplicationStatus::Failed) => {
                            let v = VersionRef::new("b", key.clone(), k.version_id.clone());
                            assert!(
                                self.failed.contains(&(site.to_string(), v)),
                                "{site} {key} FAILED but not listed: {self:?}"
                            );
                        }
                        _ => {}
                    }
                }
                let got = self.pending.get(site).copied().unwrap_or_default();
                assert_eq!(got, (ops, bytes), "site {site}: {self:?}");
            }
            // Nothing listed but a FAILED current version.
            for (site, v) in &self.failed {
                let k = self.keys.get(&v.key);
                let failed = k.is_some_and(|k| {
                    k.version_id == v.version_id
                        && k.site(site).map(|s| s.status) == Some(ReplicationStatus::Failed)
                });
                let retrying = k.is_some_and(|k| {
                    k.version_id == v.version_id
                        && k.site(site).map(|s| s.status) == Some(ReplicationStatus::Pending)
                });
                assert!(
                    failed || retrying,
                    "stale failed entry {site} {v}: {self:?}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn counters_balance_for_any_sequence_of_changes(
            events in proptest::collection::vec((ev(), any::<bool>()), 1..60)
        ) {
            let mut m = Model::default();
            for (e, replayed) in &events {
                m.event(e, *replayed);
                m.check();
            }
        }
    }

    #[test]
    fn a_newer_version_takes_over_and_an_older_outcome_changes_nothing() {
        let mut m = Model::default();
        let sites = sites_of(0b011);
        m.change(
            0,
            &KeyChange::Queued {
                version: version(0),
                sites: sites.clone(),
            },
        );
        m.change(
            0,
            &KeyChange::Queued {
                version: version(1),
                sites: sites.clone(),
            },
        );
        assert_eq!(m.pending.get("a"), Some(&(1, 17)));
        let late = KeyChange::Outcome {
            version_id: "v0".into(),
            site: "a".into(),
            outcome: SiteOutcome::Completed {
                data_store_version_id: None,
            },
        };
        assert!(!m.change(0, &late));
        assert_eq!(m.pending.get("a"), Some(&(1, 17)));
        let done = KeyChange::Outcome {
            version_id: "v1".into(),
            site: "a".into(),
            outcome: SiteOutcome::Completed {
                data_store_version_id: Some("r1".into()),
            },
        };
        assert!(m.change(0, &done));
        assert!(!m.change(0, &done));
        assert_eq!(m.pending.get("a"), Some(&(0, 0)));
        m.check();
    }

    #[test]
    fn a_site_added_to_the_rule_is_backfilled_once() {
        let mut m = Model::default();
        m.change(
            0,
            &KeyChange::Queued {
                version: version(0),
                sites: sites_of(0b001),
            },
        );
        let wider = KeyChange::Queued {
            version: version(0),
            sites: sites_of(0b011),
        };
        assert!(m.change(0, &wider));
        assert!(!m.change(0, &wider));
        assert_eq!(m.pending.get("b"), Some(&(1, 10)));
        m.check();
    }

    #[test]
    fn a_deletion_of_a_key_never_queued_records_nothing() {
        let mut m = Model::default();
        assert!(!m.change(
            0,
            &KeyChange::Queued {
                version: version(2),
                sites: sites_of(1)
            }
        ));
        assert!(m.keys.is_empty());
    }
}
