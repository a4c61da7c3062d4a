//! End-to-end throughput of the real binary (release build), each figure printed beside an
//! anchor measured in the same run (issue 17):
//!
//! 1. file -> file drain: 10,000 objects of 4 KiB already in a directory source, 10 copies in
//!    flight, from engine start until every replica is COMPLETED (the engine's own completion
//!    count, so only replicas made durable count). Anchor: `cp -r` of the same directory
//!    followed by `sync -f` on the destination (the same bytes made durable with no bookkeeping).
//!    Second anchor, the bound under it: the file system work of the file site's replica format
//!    alone, with no engine ([`format_floor`]: two files per replica, each written beside its
//!    target and renamed, `syncfs` per group, 10 threads), and beside it the same for a replica
//!    that would be one file with its metadata in an extended attribute (not built; the
//!    figure a change of DESIGN section 3 would buy).
//! 2. dir -> aws_s3 on s3s-fs, 4,000 objects of 4 KiB, 10 in flight, (a) from the initial scan
//!    of a full directory, and (b) from files landing in the watched inbox of an engine already
//!    running (timed from the first file written to the last COMPLETED). Anchor: `rclone copy`
//!    of the same directory to a fresh s3s-fs with `--transfers 10 --checkers 10`.
//!
//! Each comparison runs `BACKBEAT_BENCH_ROUNDS` (default 3) interleaved rounds of both sides,
//! so both meet the same machine load, and compares the medians.
//!
//! `BACKBEAT_BENCH_ENGINE` names another engine binary to measure instead of this build's;
//! `BACKBEAT_BENCH_BASELINE` names a second one (e.g. a build of the code before a change)
//! that every part runs in every round too, interleaved (first in odd rounds, second in even
//! ones), and compares: before and after meet the same machine and disk state. Each engine's
//! CPU time (user and system, from `/proc`) is printed beside its rate, and compared per 1,000
//! objects: on a shared machine the rates swing more than the CPU an engine spends on the same
//! work.
//!
//! Before each timed run, `sync` writes back what the earlier runs left dirty (untimed).
//!
//! Nothing written on the disk is deleted before the last round. On ext4 the inode allocator
//! steps over inodes freed in the last minutes while their inode table blocks are dirty (its
//! `recently_deleted` check): right after a tree of tens of thousands of files is deleted,
//! creating files in the same block groups cost several times more (kernel profile:
//! `find_inode_bit` -> `recently_deleted` -> `find_get_block_common`, 40 % of the engine's
//! CPU), and the rounds after a deletion measured that, for both sides. For the same reason,
//! leave a few minutes between a large deletion (e.g. the end of `benches/scale.rs`) and
//! this bench.
//!
//! `cargo bench --bench e2e`. Part 2 needs s3s-fs 0.14.1 and rclone: `BACKBEAT_BENCH_S3S`
//! names the s3s-fs binary (`cargo install s3s-fs@0.14.1 --locked --features binary --root
//! /work/.peers-bench` puts it in `/work/.peers-bench/bin/s3s-fs`, which is also looked for),
//! and `rclone` comes from Debian (`apt-get install rclone`); without them part 2 says what is
//! missing and is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/engine.rs"]
mod engine;
use engine::{free_port, get, start_s3s, Proc};

const N_FILE: usize = 10_000;
const N_S3: usize = 4_000;
const SIZE: usize = 4096;
const CONCURRENCY: usize = 10;
const SITE: &str = "bench";
/// Where `cargo install --root /work/.peers-bench` puts s3s-fs.
const DEFAULT_S3S: &str = "/work/.peers-bench/bin/s3s-fs";

fn body_of(i: usize) -> Vec<u8> {
    let mut body = vec![b'x'; SIZE];
    body[..8].copy_from_slice(&(i as u64).to_be_bytes());
    body
}

fn rel_path(i: usize) -> String {
    format!("d{:02}/obj-{i:05}", i % 50)
}

fn make_source(dir: &Path, n: usize) {
    for i in 0..n {
        let p = dir.join(rel_path(i));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body_of(i)).unwrap();
    }
}

fn config(data: &Path, src: &Path, api_port: u16, site: &str) -> String {
    format!(
        r#"
[server]
host = "127.0.0.1"
port = {api_port}
[storage]
path = "{}"
[source]
type = "file"
path = "{}"
scan_interval_s = 0
watch = true
settle_ms = 0
{site}
[replication]
concurrency = {CONCURRENCY}
[[replication.rules]]
bucket = "photos"
sites = ["{SITE}"]
"#,
        data.display(),
        src.display()
    )
}

/// Versions COMPLETED at the bench site, as the engine counts them (24 h window).
fn completed(port: u16) -> u64 {
    get(port, &format!("metrics/crr/{SITE}/completions"))
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["completions"]["results"]["count"].as_u64())
        .unwrap_or(0)
}

/// A running engine with its API port.
struct Engine {
    _proc: Proc,
    port: u16,
}

/// The engine binary to measure: `BACKBEAT_BENCH_ENGINE`, else this build's.
fn engine_bin() -> PathBuf {
    std::env::var_os("BACKBEAT_BENCH_ENGINE").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_backbeat")),
        PathBuf::from,
    )
}

fn start_engine_bin(bin: &Path, tmp: &Path, name: &str, src: &Path, site: &str) -> Engine {
    let port = free_port();
    let cfg = config(&tmp.join(format!("data-{name}")), src, port, site);
    let cfg_path = tmp.join(format!("{name}.toml"));
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Engine {
        _proc: Proc(child),
        port,
    }
}

fn wait_healthy(e: &Engine) {
    let start = Instant::now();
    while get(e.port, "healthcheck").map(|(s, _)| s) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "engine did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_completed(e: &Engine, n: usize, since: Instant) {
    while completed(e.port) < n as u64 {
        assert!(
            since.elapsed() < Duration::from_secs(600),
            "bench timed out"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One engine run: objects/s, and the engine's CPU time (user and system) over the same span.
#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    cpu_s: f64,
}

/// CPU time used so far by the engine, in seconds (`/proc/<pid>/stat`, in USER_HZ = 100).
fn cpu_s(e: &Engine) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", e._proc.0.id())).unwrap_or_default();
    // The fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Starts an engine on the full directory `src`: objects/s from its start until `n` versions
/// are COMPLETED.
fn drain(tmp: &Path, name: &str, src: &Path, site: &str, n: usize) -> Run {
    drain_bin(&engine_bin(), tmp, name, src, site, n)
}

fn drain_bin(bin: &Path, tmp: &Path, name: &str, src: &Path, site: &str, n: usize) -> Run {
    settle();
    let start = Instant::now();
    let engine = start_engine_bin(bin, tmp, name, src, site);
    wait_completed(&engine, n, start);
    Run {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu_s: cpu_s(&engine),
    }
}

/// Starts an engine on the empty inbox `src`, then writes `n` files into it: objects/s from the
/// first file written until `n` versions are COMPLETED.
fn landing_bin(bin: &Path, tmp: &Path, name: &str, src: &Path, site: &str, n: usize) -> Run {
    std::fs::create_dir_all(src).unwrap();
    let engine = start_engine_bin(bin, tmp, name, src, site);
    wait_healthy(&engine);
    settle();
    let cpu_before = cpu_s(&engine);
    let start = Instant::now();
    for i in 0..n {
        let p = src.join(rel_path(i));
        if i < 50 {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        }
        std::fs::write(p, body_of(i)).unwrap();
    }
    wait_completed(&engine, n, start);
    Run {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        cpu_s: cpu_s(&engine) - cpu_before,
    }
}

fn file_site(dir: &Path) -> String {
    format!(
        "[[sites]]\nname = \"{SITE}\"\ntype = \"file\"\npath = \"{}\"\n",
        dir.display()
    )
}

/// `cp -r` then `sync -f` of the destination's file system; objects/s.
fn cp_sync(src: &Path, dst: &Path, n: usize) -> f64 {
    settle();
    let start = Instant::now();
    let ok = Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp failed");
    let ok = Command::new("sync")
        .arg("-f")
        .arg(dst)
        .status()
        .unwrap()
        .success();
    assert!(ok, "sync failed");
    n as f64 / start.elapsed().as_secs_f64()
}

/// Objects each thread of [`format_floor`] writes between two `syncfs`: what the engine's
/// group commit gathered per `syncfs` in a profiled 10,000-object drain (722 for 10,001).
const FLOOR_GROUP: usize = 14;

/// A replica's layout on disk, for [`format_floor`].
#[derive(Clone, Copy, PartialEq)]
enum Format {
    /// The file site's: the data file and its sidecar, each written beside its target and
    /// renamed into place.
    TwoFiles,
    /// Not built, measured for the decision it would need (DESIGN section 3 names a sidecar
    /// file): the data file alone, the sidecar's bytes in a user extended attribute set on the
    /// temporary file before its one rename.
    Xattr,
}

/// The file system work of a replica `format` alone, with no engine: for each object, the
/// source file opened, stat'ed and read; the site's checks (`lstat` of the two directories
/// leading to the replica, created when missing, and of the replica's path); the files of
/// the format written as temporary files beside their targets and renamed into place; one
/// `syncfs` per [`FLOOR_GROUP`] objects of a thread and one at its end. [`CONCURRENCY`]
/// threads, as the engine's copies in flight. Objects/s.
///
/// With [`Format::TwoFiles`], about the most any engine can reach on this machine while a
/// replica is two files, each made atomic by a rename, and durable (larger groups moved it by
/// a few percent): the bound under the file -> file figure.
fn format_floor(src: &Path, dst: &Path, n: usize, format: Format) -> f64 {
    use std::io::{Read, Write};
    settle();
    let sidecar = format!("{{\n  \"pad\": \"{}\"\n}}", "x".repeat(330)).into_bytes();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..CONCURRENCY {
            let sidecar = &sidecar;
            s.spawn(move || {
                let mut body = Vec::with_capacity(SIZE);
                for (done, i) in (t..n).step_by(CONCURRENCY).enumerate() {
                    let rel = rel_path(i);
                    let mut f = std::fs::File::open(src.join(&rel)).unwrap();
                    f.metadata().unwrap();
                    body.clear();
                    f.read_to_end(&mut body).unwrap();
                    let target = dst.join("photos").join(&rel);
                    let dir = target.parent().unwrap().to_path_buf();
                    for d in [dst.join("photos"), dir.clone()] {
                        if std::fs::symlink_metadata(&d).is_err() {
                            std::fs::create_dir_all(&d).unwrap();
                        }
                    }
                    let _ = std::fs::symlink_metadata(&target);
                    let meta = PathBuf::from(format!("{}%meta.json", target.display()));
                    let mut files = vec![(target, &body[..])];
                    if format == Format::TwoFiles {
                        files.push((meta, &sidecar[..]));
                    }
                    let mut renames = Vec::with_capacity(2);
                    for (to, bytes) in files {
                        let tmp = PathBuf::from(format!("{}%tmp.{i:016x}", to.display()));
                        let mut o = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&tmp)
                            .unwrap();
                        o.write_all(bytes).unwrap();
                        if format == Format::Xattr {
                            rustix::fs::fsetxattr(
                                &o,
                                "user.backbeat",
                                sidecar,
                                rustix::fs::XattrFlags::empty(),
                            )
                            .unwrap();
                        }
                        renames.push((tmp, to));
                    }
                    for (from, to) in renames {
                        std::fs::rename(from, to).unwrap();
                    }
                    if (done + 1) % FLOOR_GROUP == 0 {
                        rustix::fs::syncfs(std::fs::File::open(&dir).unwrap()).unwrap();
                    }
                }
                rustix::fs::syncfs(std::fs::File::open(dst).unwrap()).unwrap();
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// Writes back what earlier runs left dirty (`sync`), untimed, so that no run starts with the
/// writeback of the thousands of files the run before it wrote still pending.
fn settle() {
    let ok = Command::new("sync").status().is_ok_and(|s| s.success());
    assert!(ok, "sync failed");
}

/// Runs the baseline's part and this build's part of `round` (0-based), the baseline first in
/// every other round, so that neither side always runs first. In runs where the baseline always
/// went first, it spent about a fifth more CPU on the same initial scan than an identical build
/// run after it, in all of 5 rounds: the order itself weighed on the comparison.
fn in_turn(round: usize, base: impl FnOnce(), ours: impl FnOnce()) {
    if round.is_multiple_of(2) {
        base();
        ours();
    } else {
        ours();
        base();
    }
}

fn rounds() -> usize {
    std::env::var("BACKBEAT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rates(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(|r| r.rate).collect()
}

/// The engines' CPU per 1,000 objects, after against before (medians).
fn cpu_side_by_side(what: &str, ours: &[Run], base: &[Run], n: usize) {
    let per_k = |runs: &[Run]| median(runs.iter().map(|r| r.cpu_s * 1000.0 / n as f64).collect());
    let (ours, base) = (per_k(ours), per_k(base));
    println!(
        "{what:<44} engine CPU {ours:>6.3} s per 1,000 objects | baseline engine {base:>6.3} s | ratio {:.2}",
        ours / base
    );
}

fn side_by_side(what: &str, ours: Vec<f64>, anchor_name: &str, anchor: Vec<f64>) {
    let (ours, anchor) = (median(ours), median(anchor));
    println!(
        "{what:<44} median {ours:>8.0} objects/s | {anchor_name:<22} {anchor:>8.0} objects/s | ratio {:.2}",
        ours / anchor
    );
}

fn file_to_file(tmp: &Path) {
    let src = tmp.join("ff").join("photos");
    make_source(&src, N_FILE);
    let (mut ours, mut anchor, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor, mut xattr) = (Vec::new(), Vec::new());
    let baseline = std::env::var_os("BACKBEAT_BENCH_BASELINE").map(PathBuf::from);
    for round in 0..rounds() {
        let run_base = || {
            let Some(bin) = &baseline else {
                return;
            };
            let site = tmp.join(format!("ff-base-site-{round}"));
            let run = drain_bin(
                bin,
                tmp,
                &format!("ff-base-{round}"),
                &src,
                &file_site(&site),
                N_FILE,
            );
            println!(
                "round {}: file -> file, baseline engine {:.0} objects/s (CPU {:.2} s)",
                round + 1,
                run.rate,
                run.cpu_s
            );
            base.push(run);
        };
        let run_ours = || {
            let site = tmp.join(format!("ff-site-{round}"));
            ours.push(drain(
                tmp,
                &format!("ff-{round}"),
                &src,
                &file_site(&site),
                N_FILE,
            ));
        };
        in_turn(round, run_base, run_ours);
        let dst = tmp.join(format!("ff-cp-{round}"));
        anchor.push(cp_sync(&src, &dst, N_FILE));
        let dst = tmp.join(format!("ff-floor-{round}"));
        std::fs::create_dir_all(&dst).unwrap();
        floor.push(format_floor(&src, &dst, N_FILE, Format::TwoFiles));
        let dst = tmp.join(format!("ff-xattr-{round}"));
        std::fs::create_dir_all(&dst).unwrap();
        if user_xattrs(&dst) {
            xattr.push(format_floor(&src, &dst, N_FILE, Format::Xattr));
        }
        println!(
            "round {}: file -> file {:.0} objects/s (CPU {:.2} s), cp + sync {:.0} objects/s, \
             replica format alone {:.0} objects/s (one file + xattr, not built: {})",
            round + 1,
            ours[round].rate,
            ours[round].cpu_s,
            anchor[round],
            floor[round],
            xattr
                .get(round)
                .map_or("no user xattrs here".into(), |r| format!("{r:.0}"))
        );
        // The trees stay until the end of the bench (see the module doc: deleting them here
        // would slow the next round's file creations).
    }
    let what = format!("file -> file, {N_FILE} x {SIZE} B, drain");
    if !base.is_empty() {
        side_by_side(&what, rates(&ours), "baseline engine", rates(&base));
        cpu_side_by_side(&what, &ours, &base, N_FILE);
    }
    side_by_side(&what, rates(&ours), "cp -r + sync -f", anchor);
    side_by_side(&what, rates(&ours), "replica format alone", floor.clone());
    if xattr.len() == floor.len() {
        side_by_side(
            "  (format bound: two files / one + xattr)",
            floor,
            "one file + xattr",
            xattr,
        );
    }
}

/// Whether the file system of `dir` takes user extended attributes (tmpfs before Linux 6.6
/// does not).
fn user_xattrs(dir: &Path) -> bool {
    let probe = dir.join("xattr-probe");
    let f = std::fs::File::create(&probe).unwrap();
    let ok = rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    drop(f);
    std::fs::remove_file(probe).unwrap();
    ok
}

/// Where s3s-fs keeps its buckets: a tmpfs when the machine has one. The S3 server stands for
/// a remote endpoint; on this machine's disk its writeback made its own CPU time swing from
/// 1.4 s to 12 s for the same 4,000 objects, which drowned both sides of the comparison. The
/// engine's log and state store stay on the real disk.
fn s3s_root(tmp: &Path, name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let dir = shm.join(format!("backbeat-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    } else {
        tmp.join(name)
    }
}

/// Removes an s3s-fs root outside the temporary directory.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s3s_to(bin: &Path, tmp: &Path, name: &str) -> (Proc, u16, Cleanup) {
    let root = s3s_root(tmp, name);
    let (p, port) = start_s3s(bin, &root);
    (p, port, Cleanup(root))
}

fn s3_site(port: u16) -> String {
    format!(
        "[[sites]]\nname = \"{SITE}\"\ntype = \"aws_s3\"\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"replica\"\naccess_key = \"AK\"\nsecret_key = \"SK\"\npath_style = true\n"
    )
}

/// One `rclone copy` to a fresh s3s-fs; objects/s.
fn rclone_to_s3s(tmp: &Path, src: &Path, bin: &Path, round: usize) -> f64 {
    let (_s3s, port, _root) = s3s_to(bin, tmp, &format!("s3s-rclone-{round}"));
    settle();
    let start = Instant::now();
    let status = Command::new("rclone")
        .args([
            "copy",
            "--transfers",
            &CONCURRENCY.to_string(),
            "--checkers",
            &CONCURRENCY.to_string(),
        ])
        .arg(src)
        .arg("s3remote:replica")
        // rclone refuses to start while AWS_CA_BUNDLE is set (PEERS.md).
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_S3REMOTE_TYPE", "s3")
        .env("RCLONE_CONFIG_S3REMOTE_PROVIDER", "Other")
        .env(
            "RCLONE_CONFIG_S3REMOTE_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("RCLONE_CONFIG_S3REMOTE_ACCESS_KEY_ID", "AK")
        .env("RCLONE_CONFIG_S3REMOTE_SECRET_ACCESS_KEY", "SK")
        .env("RCLONE_CONFIG_S3REMOTE_FORCE_PATH_STYLE", "true")
        .stderr(Stdio::null())
        .status()
        .expect("rclone");
    assert!(status.success());
    N_S3 as f64 / start.elapsed().as_secs_f64()
}

/// One round of `engine` to a fresh s3s-fs (`s3s`) each time: the initial scan of `src`, then
/// files landing in a watched inbox; the runs are named with `tag`.
fn scan_and_land(
    engine: &Path,
    s3s: &Path,
    tmp: &Path,
    src: &Path,
    tag: &str,
    round: usize,
) -> (Run, Run) {
    let scan = {
        let (_s3s, port, _root) = s3s_to(s3s, tmp, &format!("s3s-{tag}scan-{round}"));
        drain_bin(
            engine,
            tmp,
            &format!("s3-{tag}scan-{round}"),
            src,
            &s3_site(port),
            N_S3,
        )
    };
    let land = {
        let (_s3s, port, _root) = s3s_to(s3s, tmp, &format!("s3s-{tag}land-{round}"));
        let inbox = tmp.join(format!("{tag}inbox-{round}")).join("photos");
        landing_bin(
            engine,
            tmp,
            &format!("s3-{tag}land-{round}"),
            &inbox,
            &s3_site(port),
            N_S3,
        )
    };
    (scan, land)
}

fn file_to_s3(tmp: &Path, bin: &Path) {
    let src = tmp.join("fs").join("photos");
    make_source(&src, N_S3);
    let (mut scan, mut land, mut rclone) = (Vec::new(), Vec::new(), Vec::new());
    let (mut base_scan, mut base_land) = (Vec::new(), Vec::new());
    let baseline = std::env::var_os("BACKBEAT_BENCH_BASELINE").map(PathBuf::from);
    for round in 0..rounds() {
        let run_base = || {
            let Some(engine) = &baseline else {
                return;
            };
            let (s, l) = scan_and_land(engine, bin, tmp, &src, "base-", round);
            base_scan.push(s);
            base_land.push(l);
            println!(
                "round {}: dir -> aws_s3 (s3s-fs), baseline engine: initial scan {:.0} objects/s (CPU {:.2} s), watched inbox {:.0} objects/s (CPU {:.2} s)",
                round + 1,
                s.rate,
                s.cpu_s,
                l.rate,
                l.cpu_s
            );
        };
        let run_ours = || {
            let (s, l) = scan_and_land(&engine_bin(), bin, tmp, &src, "", round);
            scan.push(s);
            land.push(l);
        };
        in_turn(round, run_base, run_ours);
        rclone.push(rclone_to_s3s(tmp, &src, bin, round));
        println!(
            "round {}: dir -> aws_s3 (s3s-fs) initial scan {:.0} objects/s (CPU {:.2} s), watched inbox {:.0} objects/s (CPU {:.2} s), rclone copy {:.0} objects/s",
            round + 1,
            scan[round].rate,
            scan[round].cpu_s,
            land[round].rate,
            land[round].cpu_s,
            rclone[round]
        );
    }
    let scan_what = format!("dir -> s3s-fs, {N_S3} x {SIZE} B, initial scan");
    let land_what = format!("dir -> s3s-fs, {N_S3} x {SIZE} B, watched inbox");
    if !base_scan.is_empty() {
        side_by_side(
            &scan_what,
            rates(&scan),
            "baseline engine",
            rates(&base_scan),
        );
        cpu_side_by_side(&scan_what, &scan, &base_scan, N_S3);
        side_by_side(
            &land_what,
            rates(&land),
            "baseline engine",
            rates(&base_land),
        );
        cpu_side_by_side(&land_what, &land, &base_land, N_S3);
    }
    side_by_side(&scan_what, rates(&scan), "rclone copy", rclone.clone());
    side_by_side(&land_what, rates(&land), "rclone copy", rclone);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only on bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    file_to_file(tmp.path());
    let s3s = std::env::var_os("BACKBEAT_BENCH_S3S")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_S3S));
    let rclone = Command::new("rclone")
        .arg("version")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .is_ok_and(|o| o.status.success());
    match (s3s.is_file(), rclone) {
        (true, true) => file_to_s3(tmp.path(), &s3s),
        (false, _) => println!(
            "dir -> s3s-fs skipped: no s3s-fs at {} (cargo install s3s-fs@0.14.1 --locked --features binary --root /work/.peers-bench, or set BACKBEAT_BENCH_S3S)",
            s3s.display()
        ),
        (true, false) => {
            println!("dir -> s3s-fs skipped: rclone is not installed (apt-get install rclone)")
        }
    }
}
