//! The binary as an operator runs it: `serve` on the embedded default answers the healthcheck on
//! both prefixes with the original's shape, and SIGTERM drains it to a clean exit (code 0).
//! Exposed to slow or numerous clients, it closes connections that do not finish their headers
//! within `header_timeout_s`, answers 503 beyond `max_connections`, and keeps serving others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

/// Starts `backbeat serve` in `cwd` with `args`; returns the child and the API address read from
/// its start-up log line.
fn start(cwd: &std::path::Path, args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("api=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("start-up log line with api=");
    let addr = addr.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':');
    (child, addr.parse().unwrap())
}

fn sigterm_and_wait(mut child: Child, within: Duration) -> Option<i32> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_answers_the_healthcheck_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[server]\nport = 0\n[storage]\npartitions = 3\n",
    )
    .unwrap();
    let (child, addr) = start(dir.path(), &["serve", "--config", "c.toml"]);
    for path in ["/_/backbeat/api/healthcheck", "/_/healthcheck"] {
        let (code, head, body) = http_get(addr, path);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(head
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let t = &v["topics"]["backbeat-replication"];
        assert_eq!(t["name"], "backbeat-replication");
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p["id"], i as u64);
            assert!(!p["isrs"].as_array().unwrap().is_empty());
        }
        let ic = &v["internalConnections"];
        let keys: Vec<&String> = ic.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["isrHealth", "zookeeper", "kafkaProducer"],
            "the original's key order"
        );
        assert_eq!(ic["isrHealth"], "ok");
        assert_eq!(ic["zookeeper"]["status"], "ok");
        assert_eq!(ic["kafkaProducer"]["status"], "ok");
        assert_eq!(v["log"]["durability"], "group");
    }
    let (code, _, body) = http_get(addr, "/_/backbeat/api/healthcheckx");
    assert_eq!(code, 404);
    assert!(body.contains("\"RouteNotFound\":true"));
    assert_eq!(
        sigterm_and_wait(child, Duration::from_secs(20)),
        Some(0),
        "SIGTERM drains to exit code 0"
    );
    assert!(
        dir.path().join("backbeat-data").is_dir(),
        "state in ./backbeat-data by default"
    );
}

#[test]
fn a_stop_as_soon_as_the_engine_answers_is_a_drain_not_a_kill() {
    // A service manager may stop the engine the moment it reports itself up: the signal must
    // be handled (drain, exit code 0), not kill the process (143) while it finishes starting.
    // Two busy threads keep the cores taken, as on a loaded machine, where the gap between
    // the API answering and the engine listening for signals was wide enough to hit.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.toml"), "[server]\nport = 0\n").unwrap();
        let (child, _) = start(dir.path(), &["serve", "--config", "c.toml"]);
        assert_eq!(
            sigterm_and_wait(child, Duration::from_secs(20)),
            Some(0),
            "SIGTERM right after start-up drains to exit code 0"
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in busy {
        t.join().unwrap();
    }
}

#[test]
fn serve_without_config_uses_the_embedded_default() {
    // The default port may be taken on a shared machine; only run the check if it is free.
    if std::net::TcpListener::bind("127.0.0.1:8900").is_err() {
        eprintln!("skipped: port 8900 is in use");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = start(dir.path(), &["serve"]);
    assert_eq!(addr.port(), 8900);
    let (code, _, _) = http_get(addr, "/_/backbeat/api/healthcheck");
    assert_eq!(code, 200);
    assert_eq!(sigterm_and_wait(child, Duration::from_secs(20)), Some(0));
    assert!(dir.path().join("backbeat-data").is_dir());
}

/// Reads from `s` until the server closes it; `Some(when)` it closed, `None` if still open at
/// `deadline`. Whatever the server wrote before closing is ignored.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return None;
                }
            }
            // Reset by the server: closed too.
            Err(_) => return Some(Instant::now()),
        }
    }
}

#[test]
fn slow_clients_are_cut_off_after_header_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[server]\nport = 0\nheader_timeout_s = 2\n",
    )
    .unwrap();
    let (child, addr) = start(dir.path(), &["serve", "--config", "c.toml"]);
    // 300 connections that never finish their headers (half send nothing at all).
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i % 2 == 0 {
                write!(s, "GET /_/healthcheck HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").unwrap();
            }
            s
        })
        .collect();
    // Meanwhile a normal client is served.
    let (code, _, _) = http_get(addr, "/_/healthcheck");
    assert_eq!(code, 200);
    // Every slow connection is closed by the server within the timeout plus a margin.
    let deadline = opened + Duration::from_secs(2 + 8);
    let mut first: Option<Instant> = None;
    for (i, s) in slow.iter_mut().enumerate() {
        let at = closed_by(s, deadline)
            .unwrap_or_else(|| panic!("slow connection {i} still open after 10 s"));
        first = Some(first.map_or(at, |f| f.min(at)));
    }
    // ... and not before the timeout: it is the header deadline that closed them.
    let first = first.unwrap().duration_since(opened);
    assert!(
        first >= Duration::from_millis(1500),
        "closed after {first:?}"
    );
    // Still serving.
    assert_eq!(http_get(addr, "/_/healthcheck").0, 200);
    assert_eq!(sigterm_and_wait(child, Duration::from_secs(20)), Some(0));
}

#[test]
fn connections_beyond_max_connections_get_a_quick_503() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[server]\nport = 0\nheader_timeout_s = 3\nmax_connections = 20\n",
    )
    .unwrap();
    let (child, addr) = start(dir.path(), &["serve", "--config", "c.toml"]);
    // 20 idle connections take every slot (accepted in the order they connected).
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let asked = Instant::now();
    let (code, head, body) = http_get(addr, "/_/healthcheck");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(code, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ServiceUnavailable"], true);
    assert_eq!(v["code"], 503);
    // Once the idle ones are closed (header timeout), new clients are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if http_get(addr, "/_/healthcheck").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    assert_eq!(sigterm_and_wait(child, Duration::from_secs(20)), Some(0));
}
