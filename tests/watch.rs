//! Live replication from a watched directory (issue 13, DESIGN sections 4 and 5) against the
//! real binary, real inotify, a file site and an S3 site (s3s-fs): a file written slowly is
//! copied once, complete; a directory of 500 files moved in arrives whole; a deleted file is
//! removed at each site and its object view shows the delete marker COMPLETED; a file
//! rewritten while it was copied ends in its newest version without a rescan; and the rescan
//! still catches what a watch with a full channel missed. Rescans are 5 minutes apart (the
//! default with a watch): whatever arrives here within the bounds below came from the watch.

#![allow(clippy::unwrap_used)]

mod common;
mod failures_support;
mod pipeline_support;

use std::io::Write;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use backbeat::source::file::version_id_of;
use common::peers::{start_s3s_fs, Peer};
use failures_support::{api_of, get_json, metric};
use pipeline_support::*;

const AK: &str = "AKIDWATCH";
const SK: &str = "watch-secret";

/// s3s-fs keeps each object as a plain file `<dir>/<bucket>/<key>`.
static S3S: LazyLock<(Peer, tempfile::TempDir)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let peer = start_s3s_fs(dir.path(), AK, SK);
    (peer, dir)
});

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    inbox: PathBuf,
    site: PathBuf,
    /// The s3s-fs bucket directory of this setup.
    s3: PathBuf,
    engine: EngineProc,
}

impl Setup {
    fn start(name: &str, env_capacity: Option<usize>, scan_interval_s: Option<u64>) -> Setup {
        Setup::start_with(name, env_capacity, scan_interval_s, &[])
    }

    /// [`Setup::start`] with `files` written into the inbox just before the engine starts.
    fn start_with(
        name: &str,
        env_capacity: Option<usize>,
        scan_interval_s: Option<u64>,
        files: &[(String, Vec<u8>)],
    ) -> Setup {
        let (peer, s3dir) = &*S3S;
        let bucket = format!("watch-{name}");
        let s3 = s3dir.path().join(&bucket);
        std::fs::create_dir_all(&s3).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let inbox = root.join("inbox");
        let site = root.join("site");
        let logs = root.join("logs");
        for d in [&inbox, &site, &logs] {
            std::fs::create_dir_all(d).unwrap();
        }
        let scan = scan_interval_s
            .map(|s| format!("scan_interval_s = {s}\n"))
            .unwrap_or_default();
        let cfg = format!(
            r#"
[server]
host = "127.0.0.1"
port = 0

[storage]
path = "{data}"

[source]
type = "file"
path = "{inbox}"
{scan}
[[sites]]
name = "local"
type = "file"
path = "{site}"

[[sites]]
name = "s3"
type = "aws_s3"
endpoint = "{endpoint}"
bucket = "{bucket}"
access_key = "{AK}"
secret_key = "{SK}"
path_style = true

[replication.retry]
max_retries = 3
timeout_s = 30
backoff_min_ms = 50
backoff_max_ms = 200

[[replication.rules]]
bucket = "inbox"
sites = ["local", "s3"]
"#,
            data = root.join("data").display(),
            inbox = inbox.display(),
            site = site.display(),
            endpoint = peer.url(),
        );
        let cfg = write_config(&root, &cfg);
        for (key, body) in files {
            put_file(&inbox, key, body);
        }
        let capacity = env_capacity.map(|c| c.to_string());
        let env: Vec<(&str, &str)> = capacity
            .as_deref()
            .map(|c| vec![("BACKBEAT_WATCH_CAPACITY", c)])
            .unwrap_or_default();
        let engine = EngineProc::start_with_env(&cfg, &logs, "info", &env);
        Setup {
            _tmp: tmp,
            root,
            inbox,
            site,
            s3,
            engine,
        }
    }

    fn at_file(&self, key: &str) -> PathBuf {
        self.site.join("inbox").join(key)
    }

    fn at_s3(&self, key: &str) -> PathBuf {
        self.s3.join("inbox").join(key)
    }

    /// Whether both sites hold exactly `body` for `key`.
    fn both_hold(&self, key: &str, body: &[u8]) -> bool {
        std::fs::read(self.at_file(key)).ok().as_deref() == Some(body)
            && std::fs::read(self.at_s3(key)).ok().as_deref() == Some(body)
    }
}

#[test]
fn a_file_written_slowly_is_copied_once_and_complete() {
    let s = Setup::start("slow", None, None);
    let chunk = bytes_for(5, 256 * 1024);
    let mut f = std::fs::File::create(s.inbox.join("slow.bin")).unwrap();
    // Written over about 2.5 s: no site may see it before it is closed.
    for _ in 0..5 {
        f.write_all(&chunk).unwrap();
        f.flush().unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            assert!(
                !s.at_file("slow.bin").exists() && !s.at_s3("slow.bin").exists(),
                "a replica appeared while the file was being written"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(f);
    let whole = chunk.repeat(5);
    wait_until(
        "the complete file at both sites",
        Duration::from_secs(20),
        || s.both_hold("slow.bin", &whole),
    );
    let api = api_of(&s.engine);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        failures_support::wait_for("its status", Duration::from_secs(10), || async {
            metric(api, "local", "completions").await == 1
                && metric(api, "s3", "completions").await == 1
        })
        .await;
    });
    // Copied once: one version queued per site.
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(async {
        assert_eq!(metric(api, "local", "completions").await, 1);
        assert_eq!(metric(api, "s3", "completions").await, 1);
    });
    assert!(s.engine.stop().success());
}

#[test]
fn a_directory_of_500_files_moved_in_arrives_whole_and_deletes_follow() {
    let s = Setup::start("moved", None, None);
    // Written outside the inbox, then moved in as one directory.
    let staging = s.root.join("staging/batch");
    std::fs::create_dir_all(staging.join("sub")).unwrap();
    let body = |i: usize| bytes_for(i as u64 + 100, 200 + i);
    for i in 0..500usize {
        let rel = if i.is_multiple_of(5) {
            format!("sub/f{i:03}")
        } else {
            format!("f{i:03}")
        };
        std::fs::write(staging.join(rel), body(i)).unwrap();
    }
    let t0 = Instant::now();
    std::fs::rename(&staging, s.inbox.join("batch")).unwrap();
    let key = |i: usize| {
        if i.is_multiple_of(5) {
            format!("batch/sub/f{i:03}")
        } else {
            format!("batch/f{i:03}")
        }
    };
    wait_until(
        "the 500 files at both sites",
        Duration::from_secs(60),
        || (0..500).all(|i| s.both_hold(&key(i), &body(i))),
    );
    eprintln!("500 files moved in: at both sites after {:?}", t0.elapsed());

    // A delete reaches both sites, and the view of the key shows its delete marker done.
    let gone = key(7);
    let vid = version_id_of(&std::fs::metadata(s.inbox.join(&gone)).unwrap());
    std::fs::remove_file(s.inbox.join(&gone)).unwrap();
    let t0 = Instant::now();
    wait_until("the delete at both sites", Duration::from_secs(20), || {
        !s.at_file(&gone).exists() && !s.at_s3(&gone).exists()
    });
    eprintln!("a delete: gone at both sites after {:?}", t0.elapsed());
    let api = api_of(&s.engine);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The operator sees the source watched.
        let status = get_json(api, "/_/status").await;
        assert_eq!(status["sources"][0]["watching"], true, "{status}");
        // The lag of what completed, as a metric of the original's shape (issue 13).
        let lag = get_json(api, "/_/metrics/crr/local/lag").await;
        let p99 = lag["lag"]["results"]["p99"].as_f64().unwrap_or(-1.0);
        assert!((0.0..60.0).contains(&p99), "{lag}");
        let all = get_json(api, "/_/metrics/crr/all").await;
        assert!(all["lag"]["results"]["p50"].is_number(), "{all}");
        failures_support::wait_for(
            "the delete marker COMPLETED",
            Duration::from_secs(10),
            || {
                let gone = gone.clone();
                async move {
                    let r = common::api::request(
                        api,
                        "GET",
                        &format!("/_/crr/object/inbox/{gone}"),
                        None,
                    )
                    .await;
                    r.status == 200 && r.json()["status"] == "COMPLETED"
                }
            },
        )
        .await;
        let view = get_json(api, &format!("/_/crr/object/inbox/{gone}")).await;
        assert_eq!(view["deleteMarker"], true, "{view}");
        assert_eq!(view["sites"]["local"]["status"], "COMPLETED", "{view}");
        assert_eq!(view["sites"]["s3"]["status"], "COMPLETED", "{view}");
        assert_ne!(view["versionId"], vid.as_str(), "{view}");
    });

    // A directory moved out of the inbox is its files deleted, at once (not at the next
    // rescan, 300 s away with the watch).
    std::fs::rename(s.inbox.join("batch/sub"), s.root.join("moved-out")).unwrap();
    let t0 = Instant::now();
    let sub: Vec<String> = (0..500).filter(|i| i % 5 == 0).map(key).collect();
    wait_until(
        "the files of the moved-out directory gone at both sites",
        Duration::from_secs(30),
        || {
            sub.iter()
                .all(|k| !s.at_file(k).exists() && !s.at_s3(k).exists())
        },
    );
    eprintln!(
        "a directory moved out: its 100 files gone at both sites after {:?}",
        t0.elapsed()
    );
    assert!(s.engine.stop().success());
}

#[test]
fn a_file_rewritten_while_copied_ends_in_its_newest_version() {
    let s = Setup::start("rewrite", None, None);
    let first = bytes_for(1, 3 << 20);
    let second = bytes_for(2, 3 << 20);
    std::fs::write(s.inbox.join("doc.bin"), &first).unwrap();
    // Rewritten while (or right after) the first version is copied: the watch queues the
    // second, and no site keeps the first.
    std::thread::sleep(Duration::from_millis(30));
    std::fs::write(s.inbox.join("doc.bin"), &second).unwrap();
    wait_until(
        "the newest version at both sites",
        Duration::from_secs(20),
        || s.both_hold("doc.bin", &second),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.both_hold("doc.bin", &second));
    assert!(s.engine.stop().success());
}

#[test]
fn a_rescan_catches_what_a_watch_with_a_full_channel_missed() {
    // A channel of one event: most are dropped, and a rescan is owed; the rescan (every 2 s
    // here) must find every file.
    let s = Setup::start("full", Some(1), Some(2));
    let body = |i: usize| bytes_for(i as u64 + 900, 100 + i);
    for i in 0..200 {
        std::fs::write(s.inbox.join(format!("g{i:03}")), body(i)).unwrap();
    }
    wait_until(
        "the 200 files at both sites",
        Duration::from_secs(60),
        || (0..200).all(|i| s.both_hold(&format!("g{i:03}"), &body(i))),
    );
    assert!(s.engine.stop().success());
}

#[test]
fn files_written_just_before_the_start_arrive_once_settled_not_at_the_next_rescan() {
    // Written right before the engine starts: the first pass finds them too fresh (settle_ms,
    // 2 s by default) and the watch was not there yet. They are looked at again once settled,
    // not at the next rescan (300 s with the watch).
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("early/f{i:02}"), bytes_for(i, 700)))
        .collect();
    let s = Setup::start_with("early", None, None, &files);
    let t0 = Instant::now();
    wait_until(
        "the early files at both sites",
        Duration::from_secs(30),
        || {
            files.iter().all(|(k, body)| {
                std::fs::read(s.at_file(k)).ok().as_deref() == Some(body.as_slice())
                    && std::fs::read(s.at_s3(k)).ok().as_deref() == Some(body.as_slice())
            })
        },
    );
    eprintln!(
        "files written before the start: at both sites after {:?}",
        t0.elapsed()
    );
    assert!(s.engine.stop().success());
}

/// The `dirs_read` of each "Scan pass done." line so far (directories read whole).
fn dirs_read_per_pass(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("Scan pass done."))
        .filter_map(|l| {
            let at = l.find("dirs_read")? + "dirs_read".len();
            let digits: String = l[at..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Waits for `n` more passes that read no directory whole, after the `seen` passes so far.
fn wait_for_quiet_passes(s: &Setup, n: usize, limit: Duration) {
    let seen = dirs_read_per_pass(&s.engine.log()).len();
    wait_until("passes that read nothing whole", limit, || {
        let passes = dirs_read_per_pass(&s.engine.log());
        passes.len() >= seen + n && passes[seen..].iter().rev().take(n).all(|&r| r == 0)
    });
}

/// Writes `keys` (`body(i)` each), waits until both sites hold them, then for two passes
/// that read no directory whole (the directories settled and trusted).
fn settle_replicated(s: &Setup, keys: &[String], body: impl Fn(usize) -> Vec<u8>) {
    for (i, k) in keys.iter().enumerate() {
        put_file(&s.inbox, k, &body(i));
    }
    wait_until("the files at both sites", Duration::from_secs(60), || {
        keys.iter()
            .enumerate()
            .all(|(i, k)| s.both_hold(k, &body(i)))
    });
    wait_for_quiet_passes(s, 2, Duration::from_secs(60));
}

/// Rewrites each of `keys` in place (same inode, same directory entry: the directory's own
/// timestamps do not change), with `body(i)`.
fn rewrite_in_place(s: &Setup, keys: &[String], body: impl Fn(usize) -> Vec<u8>) {
    for (i, k) in keys.iter().enumerate() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(s.inbox.join(k))
            .unwrap();
        f.write_all(&body(i)).unwrap();
    }
}

#[test]
fn an_unchanged_watched_tree_is_not_read_again_and_in_place_writes_still_arrive() {
    // Passes every 2 s: once the directories have settled, a pass trusts the watch and reads
    // no directory whole; a file written in place (its directory unchanged) arrives through
    // the watch, and a file added is found by both.
    let s = Setup::start("stamps", None, Some(2));
    let keys: Vec<String> = (0..30).map(|i| format!("d{}/f{i:02}", i % 3)).collect();
    settle_replicated(&s, &keys, |i| bytes_for(i as u64 + 3000, 300 + i));
    let newer = |i: usize| bytes_for(i as u64 + 4000, 500 + i);
    rewrite_in_place(&s, &keys[..5], newer);
    wait_until(
        "the rewritten files at both sites",
        Duration::from_secs(30),
        || (0..5).all(|i| s.both_hold(&keys[i], &newer(i))),
    );
    assert!(s.engine.stop().success());
    assert_verified(&s.root.join("backbeat.toml"));
}

#[test]
fn in_place_writes_a_full_watch_channel_dropped_are_found_by_the_next_pass() {
    // A channel of one event: writes in place are mostly dropped. The directories were
    // trusted unchanged (their own timestamps do not change), but a dropped event ends that
    // trust: the next pass reads them whole and finds every rewritten file.
    let s = Setup::start("stamps-lost", Some(1), Some(2));
    let keys: Vec<String> = (0..60).map(|i| format!("e{}/f{i:02}", i % 2)).collect();
    settle_replicated(&s, &keys, |i| bytes_for(i as u64 + 5000, 200 + i));
    let newer = |i: usize| bytes_for(i as u64 + 6000, 400 + i);
    rewrite_in_place(&s, &keys, newer);
    wait_until(
        "every rewritten file at both sites",
        Duration::from_secs(60),
        || {
            keys.iter()
                .enumerate()
                .all(|(i, k)| s.both_hold(k, &newer(i)))
        },
    );
    assert!(s.engine.stop().success());
    assert_verified(&s.root.join("backbeat.toml"));
}
