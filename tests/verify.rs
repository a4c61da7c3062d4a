//! `backbeat verify` (DESIGN section 7) against the real binary: a directory source replicated
//! to two file sites, then every kind of difference made by hand while the engine is stopped
//! (a replica removed, one truncated, one with the same size and other bytes, a source file
//! rewritten, one deleted, a foreign file at a site), each reported once with the right kind;
//! `--deep`, `--json`, `--site`, `--prefix`; `--repair` through the running engine's API until
//! verify reports nothing; and the exit codes of usage errors and unreadable sides.

#![allow(clippy::unwrap_used)]

mod common;
mod pipeline_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::peers::free_port;
use pipeline_support::*;

fn key(i: usize) -> String {
    format!("k{i:02}")
}

fn body(i: usize) -> Vec<u8> {
    bytes_for(i as u64 + 7, 1000 + 13 * i)
}

/// Runs `backbeat verify --config <cfg> <args>`.
fn verify(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["verify", "--config"])
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The difference lines of a text report (without the summary).
fn differences(o: &Output) -> BTreeSet<String> {
    stdout(o)
        .lines()
        .filter(|l| !l.starts_with("verify:"))
        .map(|l| {
            // `<kind> <site> <bucket>/<key> <detail>`: the first three words.
            l.splitn(4, ' ').take(3).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

struct Setup {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    a: PathBuf,
    b: PathBuf,
    logs: PathBuf,
    cfg: PathBuf,
}

fn setup(n: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (src, a, b, logs) = (
        root.join("photos"),
        root.join("site-a"),
        root.join("site-b"),
        root.join("logs"),
    );
    for d in [&src, &a, &b, &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    for i in 0..n {
        put_file(&src, &key(i), &body(i));
    }
    let sites = format!("{}{}", file_site("A", &a), file_site("B", &b));
    let cfg = config(
        &root.join("data"),
        &src,
        &sites,
        &rule("photos", "", &["A", "B"], true),
        "",
    )
    .replace("port = 0", &format!("port = {}", free_port()));
    let cfg = write_config(&root, &cfg);
    Setup {
        _tmp: tmp,
        src,
        a,
        b,
        logs,
        cfg,
    }
}

/// The replica of key `i` at site directory `dir`.
fn replica(dir: &Path, i: usize) -> PathBuf {
    dir.join("photos").join(key(i))
}

fn replicated(s: &Setup, n: usize) -> bool {
    (0..n).all(|i| {
        [&s.a, &s.b]
            .iter()
            .all(|d| std::fs::read(replica(d, i)).ok() == Some(body(i)))
    })
}

#[test]
fn every_kind_of_difference_is_reported_once_and_repaired() {
    const N: usize = 12;
    let s = setup(N);
    let e = EngineProc::start(&s.cfg, &s.logs);
    wait_until("replicated", Duration::from_secs(60), || replicated(&s, N));
    // Let the last statuses land before the engine stops.
    std::thread::sleep(Duration::from_millis(500));
    assert!(e.stop().success());

    let equal = verify(&s.cfg, &[]);
    assert_eq!(equal.status.code(), Some(0), "{}", stdout(&equal));
    assert!(
        stdout(&equal).contains(&format!("verify: {N} keys, {} replicas", 2 * N)),
        "{}",
        stdout(&equal)
    );

    // Every kind of difference, by hand.
    std::fs::remove_file(replica(&s.a, 0)).unwrap(); // missing at A
    std::fs::write(replica(&s.a, 1), b"short").unwrap(); // corrupt at A (size)
    let mut same_size = body(2);
    same_size[10] ^= 0xff;
    std::fs::write(replica(&s.b, 2), &same_size).unwrap(); // corrupt at B, --deep only
    std::thread::sleep(Duration::from_millis(20));
    put_file(&s.src, &key(3), b"a newer version of k03"); // stale at A and B
    std::fs::remove_file(s.src.join(key(4))).unwrap(); // extra at A and B
    put_file(&s.a.join("photos"), "zz-not-a-replica", b"x"); // not ours: not reported

    let found = verify(&s.cfg, &[]);
    assert_eq!(found.status.code(), Some(1), "{}", stdout(&found));
    assert_eq!(
        differences(&found),
        set(&[
            "missing A photos/k00",
            "corrupt A photos/k01",
            "stale A photos/k03",
            "stale B photos/k03",
            "extra A photos/k04",
            "extra B photos/k04",
        ]),
        "{}",
        stdout(&found)
    );
    assert!(
        stdout(&found).contains("1 missing, 2 extra, 2 stale, 1 corrupt"),
        "{}",
        stdout(&found)
    );
    let deep = verify(&s.cfg, &["--deep"]);
    assert!(
        differences(&deep).contains("corrupt B photos/k02"),
        "{}",
        stdout(&deep)
    );
    // Narrowed to one site and a prefix.
    let narrow = verify(&s.cfg, &["--site", "B", "--prefix", "k0", "--deep"]);
    assert_eq!(
        differences(&narrow),
        set(&[
            "corrupt B photos/k02",
            "stale B photos/k03",
            "extra B photos/k04"
        ]),
        "{}",
        stdout(&narrow)
    );
    let only_k1 = verify(&s.cfg, &["--prefix", "k01"]);
    assert_eq!(differences(&only_k1), set(&["corrupt A photos/k01"]));
    // JSON lines: each difference, then the summary.
    let json = verify(&s.cfg, &["--json", "--site", "A"]);
    let lines: Vec<serde_json::Value> = stdout(&json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, diffs) = lines.split_last().unwrap();
    assert_eq!(summary["summary"]["missing"], 1, "{summary}");
    assert_eq!(summary["summary"]["keys"], N - 1);
    let missing = diffs.iter().find(|d| d["kind"] == "missing").unwrap();
    assert_eq!(missing["bucket"], "photos");
    assert_eq!(missing["key"], "k00");
    assert!(missing["sourceVersionId"].is_string());
    let extra = diffs.iter().find(|d| d["kind"] == "extra").unwrap();
    assert!(extra["replicaVersionId"].is_string());
    assert!(extra["sourceVersionId"].is_null());

    // Repair through the running engine until nothing differs.
    let e = EngineProc::start(&s.cfg, &s.logs);
    let repaired = verify(&s.cfg, &["--repair", "--deep"]);
    assert!(
        matches!(repaired.status.code(), Some(0 | 1)),
        "{}\n{}",
        stdout(&repaired),
        String::from_utf8_lossy(&repaired.stderr)
    );
    let start = Instant::now();
    loop {
        let o = verify(&s.cfg, &["--deep"]);
        if o.status.code() == Some(0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still different after the repair:\n{}",
            stdout(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(std::fs::read(replica(&s.a, 0)).unwrap(), body(0));
    assert_eq!(std::fs::read(replica(&s.b, 2)).unwrap(), body(2));
    assert!(!replica(&s.a, 4).exists());
    // The foreign file is left alone.
    assert!(s.a.join("photos").join("zz-not-a-replica").exists());
    assert!(e.stop().success());
}

#[test]
fn usage_errors_exit_2_and_unreadable_sides_exit_3() {
    let s = setup(2);
    for args in [vec!["--site", "nowhere"], vec!["--bucket", "not-a-source"]] {
        let o = verify(&s.cfg, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stdout(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(args[1]), "{err}");
    }
    let o = verify(&s.cfg.with_extension("missing"), &[]);
    assert_eq!(o.status.code(), Some(2));

    // A site nobody answers for: the comparison is incomplete.
    let dead = format!(
        "[[sites]]\nname = \"dead\"\ntype = \"aws_s3\"\nendpoint = \"http://127.0.0.1:{}\"\n\
         bucket = \"replica\"\naccess_key = \"a\"\nsecret_key = \"b\"\npath_style = true\n",
        free_port()
    );
    let text = std::fs::read_to_string(&s.cfg)
        .unwrap()
        .replace("sites = [\"A\", \"B\"]", "sites = [\"A\", \"B\", \"dead\"]")
        .replace("[replication]", &format!("{dead}\n[replication]"));
    let cfg = s.cfg.with_file_name("dead.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = verify(&cfg, &["--site", "dead"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot list site dead"), "{err}");
    assert!(stdout(&o).contains("INCOMPLETE"), "{}", stdout(&o));

    // --repair without a running engine: its API cannot be reached.
    std::fs::remove_file(s.src.join(key(0))).unwrap();
    let e = EngineProc::start(&s.cfg, &s.logs);
    wait_until("replicated", Duration::from_secs(60), || {
        std::fs::read(replica(&s.b, 1)).ok() == Some(body(1))
    });
    assert!(e.stop().success());
    put_file(&s.src, &key(5), b"new");
    let o = verify(&s.cfg, &["--repair"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach the engine's API"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
