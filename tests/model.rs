//! A randomized model test against real peers (issue 11): a versioned moto source with two
//! buckets sharing key names, replicated to an S3 site (moto), an Azure site (Azurite) and a
//! file site, while a seeded sequence of operations runs: puts with every standard header and
//! user metadata (some large enough to be copied in parts), overwrites, deletes (delete
//! markers), undeletes (a delete marker removed), newest versions deleted for good, `kill -9`
//! of the engine, the Azure site frozen (SIGSTOP) for longer than its retries (so copies are
//! replayed and end FAILED), and at the end an operator's retry of whatever FAILED. Then
//! `backbeat verify` must report no difference, and the test's own read-back of every site
//! must agree with the model of what each key's current version is.
//!
//! Seeds: two fixed ones run by default (about a minute each); `BACKBEAT_MODEL_SEEDS=1,2,3`
//! runs those instead, `BACKBEAT_MODEL_SEEDS=random:20` twenty random ones. A failure names its
//! seed.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use backbeat::s3::{S3Client, S3Request};
use backbeat::site::file::{FileSite, Sidecar};
use common::peers::{start_azurite, start_moto, Peer, AZURITE_ACCOUNT, AZURITE_KEY};
use failures_support::{api_of, failed_list, metric, post, prom};
use hyper::Method;
use pipeline_support::*;
use serde_json::{json, Value};

static MOTO: LazyLock<Peer> = LazyLock::new(start_moto);
static AZURITE: LazyLock<Peer> = LazyLock::new(start_azurite);

const KEYS: [&str; 5] = ["a.txt", "dir/b", "ünï cødé", "x/y/z.bin", "same"];
const SITES: [&str; 3] = ["s3", "azure", "file"];
/// Operations of one run.
const OPS: usize = 60;

/// A small deterministic generator (xorshift), so a seed replays the same operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// One version of a key in the model.
#[derive(Clone)]
enum Ver {
    Put {
        vid: String,
        body: Vec<u8>,
        content_type: String,
        cache_control: String,
        color: String,
    },
    DeleteMarker {
        vid: String,
    },
}

impl std::fmt::Debug for Ver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ver::Put {
                vid,
                body,
                content_type,
                ..
            } => write!(
                f,
                "put {vid} ({} bytes, md5 {}, {content_type})",
                body.len(),
                backbeat::checksum::hex(&backbeat::checksum::md5(body))
            ),
            Ver::DeleteMarker { vid } => write!(f, "delete marker {vid}"),
        }
    }
}

/// What the source holds: every version of each `(bucket, key)`, oldest first.
#[derive(Default)]
struct Model {
    keys: BTreeMap<(String, String), Vec<Ver>>,
}

impl Model {
    /// The current version's content, `None` when deleted or absent.
    fn current(&self, bucket: &str, key: &str) -> Option<&Ver> {
        self.keys
            .get(&(bucket.to_string(), key.to_string()))
            .and_then(|v| v.last())
            .filter(|v| matches!(v, Ver::Put { .. }))
    }
}

fn s3_client() -> S3Client {
    common::moto::client(&MOTO)
}

/// The engine's configuration; the Azure site is reached through `azure` (a proxy in front of
/// Azurite).
fn engine_config(
    data: &Path,
    buckets: &[String],
    replica: &str,
    file_dir: &Path,
    azure: &str,
) -> String {
    let list: Vec<String> = buckets.iter().map(|b| format!("\"{b}\"")).collect();
    let rules: String = buckets.iter().map(|b| rule(b, "", &SITES, true)).collect();
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"
partitions = 4

[source]
type = "s3"
endpoint = "{moto}"
access_key = "AKIDTEST"
secret_key = "secret"
buckets = [{buckets}]
scan_interval_s = 1

[[sites]]
name = "s3"
type = "aws_s3"
endpoint = "{moto}"
bucket = "{replica}"
access_key = "AKIDTEST"
secret_key = "secret"
path_style = true

[[sites]]
name = "azure"
type = "azure"
endpoint = "{azurite}/{account}"
account = "{account}"
key = "{key}"
container = "{replica}"

[[sites]]
name = "file"
type = "file"
path = "{file}"

[replication]
concurrency = 8
mpu_threshold_mb = 5

[replication.retry]
max_retries = 2
timeout_s = 2
backoff_min_ms = 50
backoff_max_ms = 300
replay = 1

{rules}
"#,
        data = data.display(),
        moto = MOTO.url(),
        buckets = list.join(", "),
        azurite = azure,
        account = AZURITE_ACCOUNT,
        key = AZURITE_KEY,
        file = file_dir.display(),
    )
}

/// The process ids under `pid` (its children, theirs, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces: read after the last ')'.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok())
        {
            all.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &all {
            if *pp == parent {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// Azurite frozen with SIGSTOP; thawed when dropped (also on a failed assertion).
struct Frozen(Vec<u32>);

impl Frozen {
    fn freeze(peer: &Peer) -> Frozen {
        let pids = descendants(peer.pid());
        signal(&pids, "-STOP");
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

fn signal(pids: &[u32], sig: &str) {
    for p in pids {
        let _ = Command::new("kill").arg(sig).arg(p.to_string()).status();
    }
}

fn header(h: &hyper::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn s3_get(c: &S3Client, bucket: &str, key: &str) -> Option<(hyper::HeaderMap, Vec<u8>)> {
    use http_body_util::BodyExt;
    let resp = c
        .send(S3Request::new(Method::GET, bucket, Some(key)))
        .await
        .ok()?;
    let h = resp.headers().clone();
    Some((
        h,
        resp.into_body().collect().await.ok()?.to_bytes().to_vec(),
    ))
}

/// One seeded run.
struct Run {
    seed: u64,
    rng: Rng,
    model: Model,
    buckets: Vec<String>,
    replica: String,
    tmp: tempfile::TempDir,
    cfg: PathBuf,
    logs: PathBuf,
    engine: Option<EngineProc>,
    /// In front of Azurite (kept running): forwards, or answers 503 to everything while
    /// `azure_down`.
    _azure_proxy: common::flaky::Flaky,
    azure_down: Arc<AtomicBool>,
    frozen: Option<(Frozen, Instant)>,
    kills: usize,
    freezes: usize,
    log: Vec<String>,
}

impl Run {
    async fn new(seed: u64) -> Run {
        let c = s3_client();
        let buckets: Vec<String> = ["a", "b"].iter().map(|b| format!("m{seed}-{b}")).collect();
        let replica = format!("m{seed}-replica");
        for b in &buckets {
            common::moto::create_bucket(&c, b, true).await.unwrap();
        }
        common::moto::create_bucket(&c, &replica, true)
            .await
            .unwrap();
        common::azure::create_container(
            AZURITE_ACCOUNT,
            AZURITE_KEY,
            &format!("{}/{AZURITE_ACCOUNT}", AZURITE.url()),
            &replica,
        )
        .await
        .unwrap();
        let azure_down = Arc::new(AtomicBool::new(false));
        let down = azure_down.clone();
        let upstream: std::net::SocketAddr =
            AZURITE.url().trim_start_matches("http://").parse().unwrap();
        // Its 503s come after 2.5 s, so a deletion's attempts last long enough for the next
        // version of its key to be queued behind it before its replay is (`stale_deletion`).
        let azure_proxy = common::flaky::start_slow(
            upstream,
            Arc::new(move |_, _| {
                down.load(Ordering::SeqCst).then(|| {
                    (
                        hyper::StatusCode::SERVICE_UNAVAILABLE,
                        "<Error><Code>ServerBusy</Code></Error>".to_string(),
                    )
                })
            }),
            Duration::from_millis(2500),
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let file_dir = tmp.path().join("site-file");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(&file_dir).unwrap();
        let cfg = write_config(
            tmp.path(),
            &engine_config(
                &tmp.path().join("data"),
                &buckets,
                &replica,
                &file_dir,
                &azure_proxy.url(),
            ),
        );
        Run {
            seed,
            rng: Rng::new(seed),
            model: Model::default(),
            buckets,
            replica,
            tmp,
            cfg,
            logs,
            engine: None,
            _azure_proxy: azure_proxy,
            azure_down,
            frozen: None,
            kills: 0,
            freezes: 0,
            log: Vec::new(),
        }
    }

    fn start(&mut self) {
        // `BACKBEAT_MODEL_LOG=debug` (a `RUST_LOG` filter) to see what a failing seed did.
        let filter = std::env::var("BACKBEAT_MODEL_LOG").unwrap_or_else(|_| "info".into());
        self.engine = Some(EngineProc::start_with_log(&self.cfg, &self.logs, &filter));
    }

    async fn put(&mut self, bucket: &str, key: &str) {
        let n = self.log.len();
        let len = match self.rng.below(12) {
            0 => 0,
            1 => (5 << 20) + 4096 + self.rng.below(1000) as usize,
            _ => self.rng.below(6000) as usize,
        };
        let body = bytes_for(self.seed * 1000 + n as u64, len);
        let content_type = format!("application/x-model-{}", self.rng.below(5));
        let cache_control = format!("max-age={}", self.rng.below(100));
        let color = format!(" blue {n} ");
        let encoded = format!("=?UTF-8?B?{}?=", base64_of(color.as_bytes()));
        let vid = common::moto::put(
            &s3_client(),
            bucket,
            key,
            &body,
            &[
                ("content-type", content_type.as_str()),
                ("cache-control", cache_control.as_str()),
                ("content-language", "fr"),
                ("x-amz-meta-color", encoded.as_str()),
            ],
        )
        .await
        .unwrap();
        self.log
            .push(format!("put {bucket}/{key} {len} bytes -> {vid}"));
        self.model
            .keys
            .entry((bucket.to_string(), key.to_string()))
            .or_default()
            .push(Ver::Put {
                vid,
                body,
                content_type,
                cache_control,
                color,
            });
    }

    async fn delete(&mut self, bucket: &str, key: &str) {
        let vid = common::moto::delete(&s3_client(), bucket, key)
            .await
            .unwrap();
        self.log.push(format!("delete {bucket}/{key} -> {vid}"));
        if vid == "null" {
            // moto writes no delete marker for a key without versions.
            return;
        }
        self.model
            .keys
            .entry((bucket.to_string(), key.to_string()))
            .or_default()
            .push(Ver::DeleteMarker { vid });
    }

    /// Removes the newest version for good (a delete marker: an undelete).
    async fn remove_newest(&mut self, bucket: &str, key: &str) {
        let k = (bucket.to_string(), key.to_string());
        let Some(top) = self.model.keys.get(&k).and_then(|v| v.last()).cloned() else {
            return;
        };
        let vid = match &top {
            Ver::Put { vid, .. } | Ver::DeleteMarker { vid } => vid.clone(),
        };
        s3_client()
            .send(S3Request::new(Method::DELETE, bucket, Some(key)).query("versionId", vid.clone()))
            .await
            .unwrap();
        self.log
            .push(format!("remove {bucket}/{key} version {vid}"));
        if let Some(v) = self.model.keys.get_mut(&k) {
            v.pop();
        }
    }

    async fn step(&mut self) {
        // A frozen site thaws after 9 s: longer than its retries and replay (2 s timeouts).
        if self
            .frozen
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(9))
        {
            self.frozen = None;
            self.log.push("thaw azure".into());
        }
        let bucket = self.rng.pick(&self.buckets).clone();
        let key = self.rng.pick(&KEYS).to_string();
        match self.rng.below(100) {
            0..=49 => self.put(&bucket, &key).await,
            50..=64 => self.delete(&bucket, &key).await,
            65..=79 => self.remove_newest(&bucket, &key).await,
            80..=84 if self.kills < 2 => {
                self.log.push("kill -9".into());
                if let Some(e) = self.engine.take() {
                    e.kill9();
                }
                self.kills += 1;
                self.start();
            }
            85..=87 if self.freezes < 1 => {
                self.log.push("freeze azure".into());
                self.frozen = Some((Frozen::freeze(&AZURITE), Instant::now()));
                self.freezes += 1;
            }
            _ => {}
        }
        let pause = self.rng.below(250);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    /// A stale deletion replayed after a newer version (newest wins, DESIGN 3), made to happen
    /// rather than left to chance: with the Azure site answering 503 (through the proxy, so
    /// no request reaches Azurite to be carried out later), a key is deleted and then written
    /// again (or undeleted). The runner keeps one key's entries in log order, so the
    /// deletion's attempts fail first and it is queued again whole (a replay) *behind* the
    /// newer version's entry. The site comes back once that replay is queued: the newer
    /// version reaches it, then the replayed deletion comes. Only the processor's
    /// current-version check stops it from deleting the newer replica, which `verify` and the
    /// read-back would catch.
    async fn stale_deletion(&mut self) {
        self.frozen = None;
        let bucket = self.rng.pick(&self.buckets).clone();
        let key = self.rng.pick(&KEYS).to_string();
        let undelete = self.rng.below(2) == 0;
        // A current version every site holds, so the deletion has something to delete.
        self.put(&bucket, &key).await;
        self.wait_settled(Duration::from_secs(60)).await;
        let api = api_of(self.engine.as_ref().unwrap());
        let replays = prom(api, "backbeat_replication_replays_total", "azure").await;
        let failures = prom(api, "backbeat_replication_attempt_failures_total", "azure").await;
        self.log.push(format!(
            "azure down (stale deletion of {bucket}/{key}, then {})",
            if undelete { "undelete" } else { "put" }
        ));
        self.azure_down.store(true, Ordering::SeqCst);
        self.delete(&bucket, &key).await;
        // Once the deletion's first attempt has failed it is in the log (a scan queues only
        // a key's current version, so the next write must come in a later pass) and the next
        // entry of the key is queued behind it.
        self.wait_for("the deletion never reached the site", || async {
            prom(api, "backbeat_replication_attempt_failures_total", "azure").await > failures
        })
        .await;
        if undelete {
            self.remove_newest(&bucket, &key).await;
        } else {
            self.put(&bucket, &key).await;
        }
        self.wait_for("the deletion was never replayed", || async {
            prom(api, "backbeat_replication_replays_total", "azure").await > replays
        })
        .await;
        self.azure_down.store(false, Ordering::SeqCst);
        self.log.push("azure up".into());
    }

    /// Waits (60 s at most) until `done` says so; fails naming `what` and keeping the run.
    async fn wait_for<F, Fut>(&mut self, what: &str, done: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !done().await {
            if start.elapsed() >= Duration::from_secs(60) {
                let kept = self.keep();
                panic!("{what}\n{}\n(kept {})", self.context(), kept.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no site has a version pending (bounded).
    async fn wait_settled(&self, limit: Duration) {
        let api = api_of(self.engine.as_ref().unwrap());
        let start = Instant::now();
        loop {
            let mut pending = 0;
            for site in SITES {
                pending += metric(api, site, "pending").await;
            }
            if pending == 0 || start.elapsed() >= limit {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Keeps the run's directory (data, logs, file site) for a post-mortem; returns it.
    fn keep(&mut self) -> PathBuf {
        let kept = self.tmp.path().to_path_buf();
        std::mem::forget(std::mem::replace(
            &mut self.tmp,
            tempfile::tempdir().unwrap(),
        ));
        kept
    }

    fn context(&self) -> String {
        format!(
            "seed {} (rerun with BACKBEAT_MODEL_SEEDS={}); operations:\n{}\nengine log: {}",
            self.seed,
            self.seed,
            self.log.join("\n"),
            self.logs.display()
        )
    }

    /// Retries what FAILED until nothing is pending or failed and verify reports nothing.
    async fn converge(&mut self) {
        self.frozen = None;
        let start = Instant::now();
        let limit = Duration::from_secs(150);
        loop {
            let api = api_of(self.engine.as_ref().unwrap());
            let mut settled = true;
            for site in SITES {
                let failed = failed_list(api, site).await;
                if !failed.is_empty() {
                    settled = false;
                    let body: Vec<Value> = failed
                        .iter()
                        .map(|v| {
                            json!({"Bucket": v["Bucket"], "Key": v["Key"],
                                "VersionId": v["VersionId"], "StorageClass": site})
                        })
                        .collect();
                    post(api, "/_/crr/failed", &Value::Array(body)).await;
                }
                if metric(api, site, "pending").await != 0 {
                    settled = false;
                }
            }
            if settled {
                let o = Command::new(env!("CARGO_BIN_EXE_backbeat"))
                    .args(["verify", "--config"])
                    .arg(&self.cfg)
                    .output()
                    .unwrap();
                if o.status.code() == Some(0) {
                    return;
                }
                if start.elapsed() >= limit {
                    let kept = self.keep();
                    panic!(
                        "verify still finds differences:\n{}\n{}\n{}\n(kept {})",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr),
                        self.context(),
                        kept.display()
                    );
                }
            }
            if start.elapsed() >= limit {
                let mut state = String::new();
                for site in SITES {
                    let failed = failed_list(api, site).await;
                    state.push_str(&format!(
                        "{site}: pending {}, failed {:?}\n",
                        metric(api, site, "pending").await,
                        failed
                            .iter()
                            .map(|v| format!("{}/{} {}", v["Bucket"], v["Key"], v["Reason"]))
                            .collect::<Vec<_>>()
                    ));
                    for key in KEYS {
                        for b in &self.buckets {
                            let v = request_text(api, &format!("/_/crr/object/{b}/{key}")).await;
                            if !v.is_empty() {
                                state.push_str(&format!("  {b}/{key}: {v}\n"));
                            }
                        }
                    }
                }
                let log = self.engine.as_ref().unwrap().log();
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                let tail = &tail[tail.len().saturating_sub(40)..];
                let kept = self.tmp.path().to_path_buf();
                std::mem::forget(std::mem::replace(
                    &mut self.tmp,
                    tempfile::tempdir().unwrap(),
                ));
                panic!(
                    "not settled within {limit:?}\n{state}\nlast warnings:\n{}\n{}\n(kept {})",
                    tail.join("\n"),
                    self.context(),
                    kept.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The test's own read-back of every site against the model.
    async fn read_back(&self) {
        let c = s3_client();
        let fs = FileSite::new("file", self.tmp.path().join("site-file")).unwrap();
        for bucket in &self.buckets {
            for key in KEYS {
                let at = format!("{bucket}/{key}");
                let want = self.model.current(bucket, key);
                let ctx = || format!("{at}: {want:?}\n{}", self.context());
                // The source agrees with the model.
                let src = s3_get(&c, bucket, key).await;
                assert_eq!(
                    src.as_ref().map(|(_, b)| b.clone()),
                    want.map(|w| match w {
                        Ver::Put { body, .. } => body.clone(),
                        Ver::DeleteMarker { .. } => Vec::new(),
                    }),
                    "the source disagrees with the model at {}",
                    ctx()
                );
                let s3 = s3_get(&c, &self.replica, &at).await;
                let (status, az_headers, az_body) = common::azure::call(
                    AZURITE_ACCOUNT,
                    AZURITE_KEY,
                    Method::GET,
                    &format!(
                        "{}/{AZURITE_ACCOUNT}/{}/{}",
                        AZURITE.url(),
                        self.replica,
                        backbeat::http::encode_key(&at)
                    ),
                    b"",
                )
                .await
                .unwrap();
                let file = std::fs::read(fs.path_of(&at)).ok();
                match want {
                    None => {
                        assert!(s3.is_none(), "S3 site holds {}", ctx());
                        assert_eq!(status, 404, "Azure site holds {}", ctx());
                        assert!(file.is_none(), "file site holds {}", ctx());
                    }
                    Some(Ver::Put {
                        vid,
                        body,
                        content_type,
                        cache_control,
                        color,
                    }) => {
                        let (h, got) = s3.unwrap_or_else(|| panic!("S3 site lacks {}", ctx()));
                        assert!(got == *body, "S3 bytes differ at {}", ctx());
                        assert_eq!(header(&h, "content-type"), *content_type, "{}", ctx());
                        assert_eq!(header(&h, "cache-control"), *cache_control, "{}", ctx());
                        assert_eq!(header(&h, "content-language"), "fr", "{}", ctx());
                        assert_eq!(
                            backbeat::http::rfc2047_decode(&header(&h, "x-amz-meta-color")),
                            *color,
                            "{}",
                            ctx()
                        );
                        assert_eq!(header(&h, "x-amz-meta-scal-version-id"), *vid, "{}", ctx());
                        assert_eq!(status, 200, "Azure site lacks {}", ctx());
                        assert!(
                            az_body.as_ref() == body.as_slice(),
                            "Azure bytes differ at {}",
                            ctx()
                        );
                        assert_eq!(
                            header(&az_headers, "content-type"),
                            *content_type,
                            "{}",
                            ctx()
                        );
                        assert_eq!(
                            header(&az_headers, "cache-control"),
                            *cache_control,
                            "{}",
                            ctx()
                        );
                        let file = file.unwrap_or_else(|| panic!("file site lacks {}", ctx()));
                        assert!(file == *body, "file bytes differ at {}", ctx());
                        let side: Sidecar =
                            serde_json::from_slice(&std::fs::read(fs.sidecar_of(&at)).unwrap())
                                .unwrap();
                        assert_eq!(side.version_id, *vid, "{}", ctx());
                        assert_eq!(side.content_type.as_deref(), Some(content_type.as_str()));
                        assert_eq!(
                            side.user_metadata.get("color").map(String::as_str),
                            Some(color.as_str()),
                            "{}",
                            ctx()
                        );
                    }
                    Some(Ver::DeleteMarker { .. }) => unreachable!(),
                }
            }
        }
    }
}

/// The body of a GET on the engine's API (empty unless 200).
async fn request_text(api: std::net::SocketAddr, path: &str) -> String {
    let r = common::api::request(api, "GET", path, None).await;
    if r.status == 200 {
        r.text()
    } else {
        String::new()
    }
}

fn base64_of(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

async fn run_seed(seed: u64) {
    let mut run = Run::new(seed).await;
    run.start();
    for _ in 0..OPS {
        run.step().await;
    }
    run.stale_deletion().await;
    run.converge().await;
    run.read_back().await;
    let e = run.engine.take().unwrap();
    assert!(e.stop().success(), "{}", run.context());
    eprintln!(
        "seed {seed}: {} operations ({} kill -9, {} freeze) converged",
        run.log.len(),
        run.kills,
        run.freezes
    );
}

fn seeds() -> Vec<u64> {
    match std::env::var("BACKBEAT_MODEL_SEEDS") {
        Ok(s) if s.starts_with("random:") => {
            let n: u64 = s["random:".len()..].parse().unwrap_or(1);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..n).map(|i| (t ^ (i * 0x9E37)) % 1_000_000 + 1).collect()
        }
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![7, 1_618],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_match_the_model_after_random_operations_crashes_and_a_frozen_site() {
    for seed in seeds() {
        eprintln!("model seed {seed}");
        run_seed(seed).await;
    }
}
