//! What an acknowledgement needs to survive power loss, checked on the real process: a power cut
//! cannot be staged here, so strace watches the crash test's child (`backbeat log-torture`, one
//! appender that prints each acknowledged append and commit) and every acknowledgement must
//! come after an `fdatasync` or `fsync` of the database file that started once the last write
//! to that file had finished. sled's own flush only calls `sync_file_range` (no metadata, no
//! disk cache flush), which this rejects; `src/durability.rs` adds the sync.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Records the child appends before it stops.
const RECORDS: u64 = 600;

/// What one syscall line of `strace -f -y` is about.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Call {
    /// A write to the database file.
    DbWrite,
    /// An `fdatasync` or `fsync` of the database file.
    DbSync,
    /// An acknowledgement printed on standard output.
    Ack,
    Other,
}

fn classify(name: &str, args: &str, db: &str, out: &str) -> Call {
    // The descriptor, as `-y` shows it: `3</path/of/file>`.
    let fd = args.split_once('>').map_or("", |(fd, _)| fd);
    let on = |path: &str| fd.ends_with(&format!("<{path}"));
    match name {
        "pwrite64" | "pwritev" | "pwritev2" | "write" | "writev" if on(db) => Call::DbWrite,
        "fdatasync" | "fsync" if on(db) => Call::DbSync,
        "write" if on(out) => Call::Ack,
        _ => Call::Other,
    }
}

/// Checks the trace: returns the number of acknowledgements seen, or the first one given
/// before the database file was synced after its last write.
fn check_trace(trace: &str, db: &str, out: &str) -> Result<usize, String> {
    // Writes to the database file finished so far, and how many of them are durable: those
    // finished before a sync started, once that sync has finished.
    let (mut written, mut durable) = (0u64, 0u64);
    // Per thread: the call left unfinished, with `written` as it was when the call started.
    let mut pending: HashMap<&str, (Call, u64)> = HashMap::new();
    let mut acks = 0;
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (call, started_with, starts, finishes) = if rest.starts_with("<... ") {
            match pending.remove(pid) {
                Some((call, at)) => (call, at, false, true),
                None => continue,
            }
        } else if let Some((name, args)) = rest.split_once('(') {
            let call = classify(name, args, db, out);
            let finishes = !rest.ends_with("<unfinished ...>");
            if !finishes {
                pending.insert(pid, (call, written));
            }
            (call, written, true, finishes)
        } else {
            continue;
        };
        match call {
            Call::Ack if starts => {
                if durable < written {
                    return Err(format!(
                        "acknowledgement printed with {} write(s) to the database file not \
                         yet synced: {line}",
                        written - durable
                    ));
                }
                acks += 1;
            }
            Call::DbWrite if finishes => written += 1,
            Call::DbSync if finishes && line.trim_end().ends_with("= 0") => {
                durable = durable.max(started_with);
            }
            _ => {}
        }
    }
    Ok(acks)
}

fn run_traced(durability: &str) {
    let strace = common::peers::strace_bin();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("acks.txt");
    let trace = tmp.path().join("trace.txt");
    let mut child = Command::new(strace)
        .args(["-f", "-qq", "-y", "-s", "0", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=pwrite64,pwritev,pwritev2,write,writev,fdatasync,fsync",
        ])
        .arg(env!("CARGO_BIN_EXE_backbeat"))
        .args(["log-torture", "--path"])
        .arg(&data)
        .args([
            "--durability",
            durability,
            "--records",
            &RECORDS.to_string(),
        ])
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start strace");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the traced child did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "traced child failed: {status}");
    let printed = std::fs::read_to_string(&out).unwrap();
    let appended = printed.lines().filter(|l| l.starts_with("A ")).count() as u64;
    assert!(appended >= RECORDS, "only {appended} appends acknowledged");
    let db = canonical(&data.join("db"));
    let text = std::fs::read_to_string(&trace).unwrap();
    match check_trace(&text, &db, &canonical(&out)) {
        Ok(acks) => assert!(
            acks >= 20,
            "only {acks} acknowledgements found in the trace (is `-y` showing paths?)"
        ),
        Err(e) => panic!("{durability}: {e}"),
    }
}

fn canonical(p: &Path) -> String {
    p.canonicalize().unwrap().display().to_string()
}

#[test]
fn group_commit_acknowledges_only_after_the_database_file_is_synced() {
    run_traced("group");
}

#[test]
fn every_mode_acknowledges_only_after_the_database_file_is_synced() {
    run_traced("every");
}

#[test]
fn the_trace_check_rejects_an_acknowledgement_before_the_sync() {
    let db = "/d/db";
    let out = "/d/acks.txt";
    let synced = "\
1 pwrite64(3</d/db>, \"\"..., 100, 0) = 100
2 fdatasync(3</d/db> <unfinished ...>
1 write(1</d/acks.txt>, \"\"..., 9) = 9
2 <... fdatasync resumed>) = 0
1 write(1</d/acks.txt>, \"\"..., 9) = 9
";
    // The first acknowledgement comes before the sync finished.
    assert!(check_trace(synced, db, out).is_err());
    let ok = "\
1 pwrite64(3</d/db>, \"\"..., 100, 0) = 100
2 fdatasync(3</d/db>) = 0
1 write(1</d/acks.txt>, \"\"..., 9) = 9
";
    assert_eq!(check_trace(ok, db, out), Ok(1));
    // A sync that started before the last write does not cover it.
    let early = "\
2 fdatasync(3</d/db> <unfinished ...>
1 pwrite64(3</d/db>, \"\"..., 100, 0) = 100
2 <... fdatasync resumed>) = 0
1 write(1</d/acks.txt>, \"\"..., 9) = 9
";
    assert!(check_trace(early, db, out).is_err());
    // sync_file_range is not a sync.
    let sfr = "\
1 pwrite64(3</d/db>, \"\"..., 100, 0) = 100
1 sync_file_range(3</d/db>, 0, 100, SYNC_FILE_RANGE_WAIT_BEFORE) = 0
1 write(1</d/acks.txt>, \"\"..., 9) = 9
";
    assert!(check_trace(sfr, db, out).is_err());
}
