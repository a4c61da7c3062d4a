//! Helpers of the pipeline tests: run the real binary on a temporary configuration, wait on
//! its log, stop it (SIGTERM) or kill it (SIGKILL), then read its state store.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbeat::clock::SystemClock;
use backbeat::durability::{Durability, SledDb};
use backbeat::store::SledStore;

/// Runs `backbeat verify` on `cfg` and asserts it exits 0: every site holds exactly the
/// source's current versions (DESIGN section 7). Its output is the failure message.
pub fn assert_verified(cfg: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["verify", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running engine process.
pub struct EngineProc {
    pub child: Child,
    pub log_path: PathBuf,
}

/// Writes `config` to `dir/backbeat.toml` and returns the path.
pub fn write_config(dir: &Path, config: &str) -> PathBuf {
    let p = dir.join("backbeat.toml");
    std::fs::write(&p, config).unwrap();
    p
}

/// The retry block of [`config`]: quick retries, so failing tests end fast.
pub const TEST_RETRY: &str =
    "max_retries = 3\ntimeout_s = 30\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n";

/// A configuration: file source at `src`, the given sites block, a rules block, `extra` lines
/// in `[replication]`, and [`TEST_RETRY`].
pub fn config(data: &Path, src: &Path, sites: &str, rules: &str, extra: &str) -> String {
    config_with_retry(data, src, sites, rules, extra, TEST_RETRY)
}

/// [`config`] with the body of `[replication.retry]` given.
pub fn config_with_retry(
    data: &Path,
    src: &Path,
    sites: &str,
    rules: &str,
    extra: &str,
    retry: &str,
) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"
partitions = 4

[source]
type = "file"
path = "{src}"
scan_interval_s = 1

{sites}

[replication]
concurrency = 10
mpu_threshold_mb = 20
{extra}

[replication.retry]
{retry}

{rules}
"#,
        data = data.display(),
        src = src.display(),
    )
}

/// A `[[sites]]` block of a file site.
pub fn file_site(name: &str, path: &Path) -> String {
    format!(
        "[[sites]]\nname = \"{name}\"\ntype = \"file\"\npath = \"{}\"\n",
        path.display()
    )
}

/// A `[[replication.rules]]` block.
pub fn rule(bucket: &str, prefix: &str, sites: &[&str], enabled: bool) -> String {
    let sites: Vec<String> = sites.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[replication.rules]]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nsites = [{}]\nenabled = {enabled}\n",
        sites.join(", ")
    )
}

impl EngineProc {
    /// Starts `backbeat serve --config <config>`, logging to `<log_dir>/engine-<n>.log`, and
    /// waits for its start line.
    pub fn start(config: &Path, log_dir: &Path) -> EngineProc {
        EngineProc::start_with_log(config, log_dir, "info")
    }

    /// As [`EngineProc::start`], with `RUST_LOG` = `filter`.
    pub fn start_with_log(config: &Path, log_dir: &Path, filter: &str) -> EngineProc {
        EngineProc::start_with_env(config, log_dir, filter, &[])
    }

    /// As [`EngineProc::start_with_log`], with more environment variables.
    pub fn start_with_env(
        config: &Path,
        log_dir: &Path,
        filter: &str,
        env: &[(&str, &str)],
    ) -> EngineProc {
        let n = std::fs::read_dir(log_dir).map(|d| d.count()).unwrap_or(0);
        let log_path = log_dir.join(format!("engine-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_backbeat"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let e = EngineProc { child, log_path };
        e.wait_log("Backbeat started.", Duration::from_secs(30));
        e
    }

    /// The engine's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (panics after `limit`).
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the log within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of occurrences of `needle` in the log.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// The process's peak resident set (VmHWM), in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM and waits (at most 60 s) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("engine did not stop within 60 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Occurrences of `needle` in every engine log (`engine-<n>.log`) of `log_dir`: what all the
/// runs of an engine, killed or stopped, logged.
pub fn engine_log_count(log_dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(log_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("engine-"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

/// Opens the (stopped) engine's state store.
pub fn open_store(data: &Path) -> SledStore {
    let db = SledDb::open(data, Durability::Group, Duration::from_millis(50)).unwrap();
    SledStore::open(db, Arc::new(SystemClock)).unwrap()
}

/// Polls `cond` every 50 ms until true; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes_for(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Keys with spaces, unicode, `:`, `%`, `+`, `?`, `#` and nested `/`.
pub fn tricky_key(i: usize) -> String {
    let names = [
        "plain",
        "with space",
        "ünïcødé-日本",
        "co:lon",
        "per%cent",
        "pl+us",
        "quest?ion",
        "ha#sh",
        "deep/er/nest ed",
        "mix: %+?#",
    ];
    format!("d{}/{}-{i}", i % 7, names[i % names.len()])
}

/// Creates `path` with `data` (parents too).
pub fn put_file(root: &Path, key: &str, data: &[u8]) {
    let p = root.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// The sum of `site`'s `m` counter over the 24 h window.
pub async fn metric_total(
    store: &dyn backbeat::store::StateStore,
    site: &str,
    m: backbeat::store::Metric,
) -> u64 {
    store.metric_buckets(site, m).await.unwrap().iter().sum()
}
