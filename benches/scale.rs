//! The cost model at scale (issue 12, DESIGN section 10), through the release binary: a
//! directory of small files queued while the site is paused, then drained, then left idle;
//! then `backbeat verify` over the result.
//!
//! Printed: the time and rate of each phase, RSS (sampled every second: peak and at the end of
//! each phase), the data directory at peak backlog per version, idle CPU (% of one core over
//! the idle window, inbox full, a retention pass included), and verify's time and peak RSS.
//!
//! `cargo bench --bench scale`. `BENCH_SCALE_N` files (default 1,000,000, 100 bytes each, in
//! 1,000 directories), `BENCH_SCALE_IDLE_S` idle seconds (default 300), `BENCH_SCALE_DIR` a
//! directory for the run (default the system's temporary directory; it needs about 13 KB a
//! file: the inbox, the replicas and their sidecars take a 4 KiB block each).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 request; the status and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A site's metric of `metrics/crr/<site>` (`pending`, `completions`: their `count`/`results`).
fn metric(addr: SocketAddr, site: &str, kind: &str) -> Option<i64> {
    let (status, body) = http(
        addr,
        "GET",
        &format!("/_/backbeat/api/metrics/crr/{site}/{kind}"),
    )?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = &v[kind]["results"];
    r["count"].as_i64().or_else(|| r.as_i64())
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Samples a process's RSS (kB) every second while it runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<Mutex<u64>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(
        pid: u32,
        data: &Path,
        peak_data: Arc<Mutex<u64>>,
        backlog: Arc<Mutex<i64>>,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(Mutex::new(0));
        let (s, p, data) = (stop.clone(), peak_kb.clone(), data.to_path_buf());
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let rss = proc_status(pid, "VmRSS:");
                let mut pk = p.lock().unwrap();
                *pk = (*pk).max(rss);
                drop(pk);
                // The data directory where the backlog is deepest (every 5 s: it walks it).
                if n.is_multiple_of(5) && *backlog.lock().unwrap() > 0 {
                    let b = dir_bytes(&data);
                    let mut d = peak_data.lock().unwrap();
                    *d = (*d).max(b);
                }
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Sampler {
            stop,
            peak_kb,
            handle: Some(handle),
        }
    }

    fn peak(&self) -> u64 {
        *self.peak_kb.lock().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what} not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    t.elapsed()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n = env_u64("BENCH_SCALE_N", 1_000_000);
    let idle_s = env_u64("BENCH_SCALE_IDLE_S", 300);
    let base = std::env::var("BENCH_SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let (inbox, site, data) = (
        tmp.path().join("inbox"),
        tmp.path().join("site"),
        tmp.path().join("data"),
    );
    std::fs::create_dir_all(&site).unwrap();
    let dirs = 1000.min(n.max(1));
    let t = Instant::now();
    for d in 0..dirs {
        std::fs::create_dir_all(inbox.join(format!("d{d:03}"))).unwrap();
    }
    let body = [b'x'; 100];
    for i in 0..n {
        std::fs::write(inbox.join(format!("d{:03}/f{i:07}", i % dirs)), body).unwrap();
    }
    println!(
        "scale: {n} files of 100 B written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = tmp.path().join("backbeat.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
host = "127.0.0.1"
port = {port}

[storage]
path = "{data}"

[source]
type = "file"
path = "{inbox}"

[[sites]]
name = "local"
type = "file"
path = "{site}"

[[replication.rules]]
bucket = "inbox"
sites = ["local"]
"#,
            data = data.display(),
            inbox = inbox.display(),
            site = site.display(),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_backbeat");
    let start_engine = || {
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Engine(child);
        wait_for("the API", Duration::from_secs(60), || {
            http(addr, "GET", "/_/backbeat/api/healthcheck").is_some()
        });
        e
    };

    // Queue with the site paused: the pause is stored before the first scan can queue much
    // (a few copies may start first; the backlog is measured, not assumed).
    let engine = start_engine();
    let pid = engine.0.id();
    http(addr, "POST", "/_/backbeat/api/crr/pause/local").unwrap();
    let peak_data = Arc::new(Mutex::new(0u64));
    let backlog = Arc::new(Mutex::new(0i64));
    let sampler = Sampler::start(pid, &data, peak_data.clone(), backlog.clone());
    let t = Instant::now();
    let mut queued_at_pause = 0;
    let queue = wait_for("everything queued", Duration::from_secs(7200), || {
        let pending = metric(addr, "local", "pending").unwrap_or(0);
        let done = metric(addr, "local", "completions").unwrap_or(0);
        *backlog.lock().unwrap() = pending;
        queued_at_pause = pending;
        pending + done >= n as i64
    });
    // One more sample of the directory at the full backlog.
    // (Measured before the lock is taken: a second lock in one statement would deadlock.)
    let at_full = dir_bytes(&data);
    {
        let mut d = peak_data.lock().unwrap();
        *d = (*d).max(at_full);
    }
    let rss_queued = proc_status(pid, "VmRSS:");
    let peak_queue = sampler.peak();
    println!(
        "scale: queued {queued_at_pause} in {:.1} s ({:.0} versions/s); RSS now {:.0} MB, peak {:.0} MB",
        queue.as_secs_f64(),
        n as f64 / queue.as_secs_f64().max(0.001),
        mb(rss_queued),
        mb(peak_queue)
    );
    let peak_dir = *peak_data.lock().unwrap();
    println!(
        "scale: data directory at peak backlog {:.0} MB: {:.0} bytes per version",
        peak_dir as f64 / 1e6,
        peak_dir as f64 / queued_at_pause.max(1) as f64
    );

    // Drain.
    let t2 = Instant::now();
    http(addr, "POST", "/_/backbeat/api/crr/resume/local").unwrap();
    let drain = wait_for("drained", Duration::from_secs(7200), || {
        let pending = metric(addr, "local", "pending").unwrap_or(1);
        *backlog.lock().unwrap() = pending;
        pending == 0 && metric(addr, "local", "completions").unwrap_or(0) >= n as i64
    });
    let rss_drained = proc_status(pid, "VmRSS:");
    println!(
        "scale: drained in {:.1} s ({:.0} versions/s); RSS now {:.0} MB, peak so far {:.0} MB",
        drain.as_secs_f64(),
        queued_at_pause as f64 / drain.as_secs_f64().max(0.001),
        mb(rss_drained),
        mb(sampler.peak())
    );
    let _ = t2;

    // Idle, the inbox full: CPU over the window (a retention pass runs every minute).
    let c0 = cpu_ticks(pid);
    let t3 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let ticks = cpu_ticks(pid) - c0;
    let hz = 100.0; // USER_HZ on Linux
    let idle_cpu = ticks as f64 / hz / t3.elapsed().as_secs_f64() * 100.0;
    let rss_idle = proc_status(pid, "VmRSS:");
    println!(
        "scale: idle {idle_s} s with {n} files in the inbox: {idle_cpu:.2} % of a core; RSS {:.0} MB; peak over the run {:.0} MB; data directory {:.0} MB",
        mb(rss_idle),
        mb(sampler.peak()),
        dir_bytes(&data) as f64 / 1e6
    );
    drop(sampler);
    let _ = t;
    drop(engine);

    // verify over the result.
    let t4 = Instant::now();
    let mut child = Command::new(bin)
        .args(["verify", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let vpid = child.id();
    let mut peak_verify = 0;
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    loop {
        peak_verify = peak_verify.max(proc_status(vpid, "VmHWM:"));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out.push_str(&reader.join().unwrap());
    let status = child.wait().unwrap();
    println!(
        "scale: verify of {n} keys: {:.1} s, peak RSS {:.0} MB, exit {:?}: {}",
        t4.elapsed().as_secs_f64(),
        mb(peak_verify),
        status.code(),
        out.lines().last().unwrap_or("")
    );
}
