//! Helpers of the pipeline tests on the Kafka log: engine configurations pointed at a broker,
//! and the engine's REST API (completion counts, the replication view of one version).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbeat::source::file::version_id_of;
use serde_json::Value;

use crate::common::api::request;

/// The consumers' `max.poll.interval.ms` in [`engine_config`].
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(7000);

/// Turns a `pipeline_support::config` text (sled log and store, `port = 0`) into one on
/// `port`, with the log on Kafka at `brokers` when given, and `stages` when given.
/// Consumer-group timeouts are the short ones Tansu needs (PEERS.md).
pub fn engine_config(
    base: &str,
    port: u16,
    brokers: Option<&str>,
    topic_prefix: &str,
    stages: Option<&[&str]>,
) -> String {
    let mut c = base.replacen("port = 0", &format!("port = {port}"), 1);
    if let Some(brokers) = brokers {
        c = c.replacen("[storage]\n", "[storage]\nlog = \"kafka\"\n", 1);
        c.push_str(&format!(
            "\n[storage.kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"{topic_prefix}\"\n\
             replication_factor = 1\nsession_timeout_ms = 6000\nheartbeat_interval_ms = 1000\n\
             max_poll_interval_ms = {}\n",
            MAX_POLL_INTERVAL.as_millis()
        ));
    }
    if let Some(stages) = stages {
        let list: Vec<String> = stages.iter().map(|s| format!("\"{s}\"")).collect();
        c.push_str(&format!("\n[engine]\nstages = [{}]\n", list.join(", ")));
    }
    c
}

/// An engine process with the file source `<tmp>/photos` (written through `<tmp>/staging`)
/// replicating every key to the file sites `<tmp>/<site>`.
pub struct FileEngine {
    pub src: PathBuf,
    pub staging: PathBuf,
    /// The engine's data directory (log and store).
    pub data: PathBuf,
    /// Each site's directory, in the order of the names given.
    pub paths: Vec<PathBuf>,
    pub engine: crate::pipeline_support::EngineProc,
    pub api: SocketAddr,
}

/// Starts a [`FileEngine`] in `tmp` for `sites`, its log on Kafka at `brokers` (topics
/// prefixed `topic_prefix`) when given, else on sled.
pub fn start_file_engine(
    tmp: &Path,
    sites: &[&str],
    brokers: Option<&str>,
    topic_prefix: &str,
) -> FileEngine {
    use crate::pipeline_support::{config, file_site, rule, write_config, EngineProc};
    let (src, staging, data) = (tmp.join("photos"), tmp.join("staging"), tmp.join("data"));
    for d in [&src, &staging] {
        std::fs::create_dir_all(d).expect("source directories");
    }
    let paths: Vec<PathBuf> = sites.iter().map(|n| tmp.join(n)).collect();
    let blocks: String = sites
        .iter()
        .zip(&paths)
        .map(|(n, p)| file_site(n, p))
        .collect();
    let port = crate::common::peers::free_port();
    let base = config(&data, &src, &blocks, &rule("photos", "", sites, true), "");
    let cfg = engine_config(&base, port, brokers, topic_prefix, None);
    let engine = EngineProc::start(&write_config(tmp, &cfg), tmp);
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    FileEngine {
        src,
        staging,
        data,
        paths,
        engine,
        api,
    }
}

/// Writes `data` under the source directory `src` as `key`, through a rename from `staging` (a
/// directory outside the source on the same file system), so a scan never lists a half-written
/// file as a version of its own; returns the new version id.
pub fn put_atomic(staging: &Path, src: &Path, key: &str, data: &[u8]) -> String {
    let tmp = staging.join("next");
    std::fs::write(&tmp, data).unwrap();
    let dst = src.join(key);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::rename(&tmp, &dst).unwrap();
    version_id_of(&std::fs::metadata(&dst).unwrap())
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986), `/` included.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /_/backbeat/api/<route>`: the JSON body of a 200, else `None`.
pub async fn get_json(api: SocketAddr, route: &str) -> Option<Value> {
    let r = request(api, "GET", &format!("/_/backbeat/api/{route}"), None).await;
    (r.status == 200).then(|| r.json())
}

/// Versions COMPLETED at `site` (the `completions` count: once per version and site).
pub async fn completions(api: SocketAddr, site: &str) -> u64 {
    get_json(api, &format!("metrics/crr/{site}/completions"))
        .await
        .and_then(|v| v["completions"]["results"]["count"].as_u64())
        .unwrap_or(0)
}

/// Waits until `completions` reaches `n` at every site; after `limit`, an error naming the
/// counts reached.
pub async fn wait_completions(
    api: SocketAddr,
    sites: &[&str],
    n: u64,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut counts = Vec::new();
        for s in sites {
            counts.push(completions(api, s).await);
        }
        if counts.iter().all(|c| *c >= n) {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "completions {counts:?} at {sites:?} did not reach {n} within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` lines of a log, for failure messages.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The replication view of one version (`GET crr/object/<bucket>/<key>?versionId=`).
pub async fn object_view(api: SocketAddr, bucket: &str, key: &str, version: &str) -> Option<Value> {
    get_json(
        api,
        &format!(
            "crr/object/{}/{}?versionId={}",
            encode(bucket),
            encode(key),
            encode(version)
        ),
    )
    .await
}

/// Asserts, through the API, that the newest of the `(key, version id)` of each key (the last
/// listed) is COMPLETED, globally and at each of `sites`. Older versions are not tracked: the
/// state is per key (DESIGN 3, newest wins).
pub async fn assert_completed(
    api: SocketAddr,
    bucket: &str,
    versions: &[(String, String)],
    sites: &[&str],
) {
    let newest: std::collections::BTreeMap<&String, &String> =
        versions.iter().map(|(k, v)| (k, v)).collect();
    for (key, vid) in newest {
        let view = object_view(api, bucket, key, vid)
            .await
            .unwrap_or_else(|| panic!("no replication info for {key} {vid}"));
        assert_eq!(view["status"], "COMPLETED", "{key} {vid}: {view}");
        for s in sites {
            assert_eq!(
                view["sites"][s]["status"], "COMPLETED",
                "{key} {vid} at {s}: {view}"
            );
        }
    }
}

/// Asserts that every file site (`names[i]` in `dirs[i]`) holds the newest bytes of every key
/// of `bucket`, under the bucket (DESIGN 3, "Where a replica lives").
pub fn assert_newest_bytes(
    bucket: &str,
    names: &[&str],
    dirs: &[std::path::PathBuf],
    newest: &std::collections::BTreeMap<String, Vec<u8>>,
) {
    for (name, dir) in names.iter().zip(dirs) {
        let site = backbeat::site::file::FileSite::new(*name, dir).unwrap();
        for (key, body) in newest {
            let got = std::fs::read(site.path_of(&format!("{bucket}/{key}"))).unwrap();
            assert!(got == *body, "{key} at {name}: not the newest bytes");
        }
    }
}

/// Asserts, in the store of a stopped engine at `data`, that each of `n` versions was counted
/// exactly once per site (queued and done), with nothing pending or failed, however often its
/// entries were delivered.
pub async fn assert_counted_once(data: &Path, sites: &[&str], n: u64) {
    use backbeat::store::{Metric, StateStore};
    let store = crate::pipeline_support::open_store(data);
    for site in sites {
        let total = |m| crate::pipeline_support::metric_total(&store, site, m);
        assert_eq!(store.pending(site).await.unwrap(), (0, 0), "pending {site}");
        assert_eq!(total(Metric::Ops).await, n, "ops {site}");
        assert_eq!(total(Metric::OpsDone).await, n, "opsdone {site}");
        assert_eq!(total(Metric::OpsFail).await, 0, "opsfail {site}");
    }
}
