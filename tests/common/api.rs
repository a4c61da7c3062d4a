//! A real engine on a free loopback port with a manual clock, and a minimal HTTP/1.1 client
//! (raw `TcpStream`, `Connection: close`) for the API tests.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use backbeat::app::Engine;
use backbeat::clock::ManualClock;
use backbeat::config::Config;
use backbeat::intake::{DiscoveredVersion, Intake, IntakeError};
use backbeat::model::VersionRef;
use backbeat::store::StateStore;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// 2018-03-30T22:00:00Z, the start of an hour (and of a 5-minute bucket).
pub const T0: u64 = 1_522_447_200_000;

/// An intake that remembers what it was given.
#[derive(Debug, Default)]
pub struct RecordingIntake {
    /// Everything handed over, in order.
    pub got: Mutex<Vec<DiscoveredVersion>>,
    /// Every requeue asked, in order.
    pub requeued: Mutex<Vec<(VersionRef, Vec<String>)>>,
}

#[async_trait]
impl Intake for RecordingIntake {
    fn serves(&self, bucket: &str) -> bool {
        bucket != "not-mine"
    }

    async fn discovered(&self, versions: Vec<DiscoveredVersion>) -> Result<usize, IntakeError> {
        let n = versions.len();
        self.got.lock().extend(versions);
        Ok(n)
    }

    async fn requeue(&self, items: Vec<(VersionRef, Vec<String>)>) -> Result<usize, IntakeError> {
        let n = items.len();
        self.requeued.lock().extend(items);
        Ok(n)
    }
}

/// A running engine for API tests.
pub struct TestApi {
    /// The engine (taken by `stop`).
    pub engine: Option<Engine>,
    /// API address.
    pub addr: SocketAddr,
    /// Its store.
    pub store: Arc<dyn StateStore>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// The intake given to the engine.
    pub intake: Arc<RecordingIntake>,
    /// Data directory (kept for restarts).
    pub dir: Arc<tempfile::TempDir>,
    /// The configuration text.
    pub toml: String,
}

/// Configuration text with `sites` (file sites) and extra `[server]` lines.
pub fn config_text(dir: &std::path::Path, sites: &[&str], server_extra: &str) -> String {
    let mut t = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\n{server_extra}\n[storage]\npath = {:?}\nretention_interval_s = 3600\n",
        dir.join("data").display().to_string()
    );
    for s in sites {
        t.push_str(&format!(
            "[[sites]]\nname = \"{s}\"\ntype = \"file\"\npath = {:?}\n",
            dir.join(format!("replica-{s}")).display().to_string()
        ));
    }
    t
}

impl TestApi {
    /// Starts an engine with file sites `sites`, the clock at `now_ms`.
    pub async fn start(sites: &[&str], now_ms: u64) -> TestApi {
        TestApi::start_with(sites, now_ms, "").await
    }

    /// As `start`, with extra `[server]` configuration lines.
    pub async fn start_with(sites: &[&str], now_ms: u64, server_extra: &str) -> TestApi {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let toml = config_text(dir.path(), sites, server_extra);
        TestApi::start_in(dir, toml, ManualClock::new(now_ms)).await
    }

    async fn start_in(
        dir: Arc<tempfile::TempDir>,
        toml: String,
        clock: Arc<ManualClock>,
    ) -> TestApi {
        TestApi::start_in_with(dir, toml, clock, true).await
    }

    /// An engine without an intake (no source configured).
    pub async fn start_without_intake(sites: &[&str], now_ms: u64) -> TestApi {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let toml = config_text(dir.path(), sites, "");
        TestApi::start_in_with(dir, toml, ManualClock::new(now_ms), false).await
    }

    async fn start_in_with(
        dir: Arc<tempfile::TempDir>,
        toml: String,
        clock: Arc<ManualClock>,
        with_intake: bool,
    ) -> TestApi {
        let config = Config::parse(&toml).expect("valid test config");
        let intake = Arc::new(RecordingIntake::default());
        let given: Option<Arc<dyn Intake>> = if with_intake {
            Some(intake.clone())
        } else {
            None
        };
        let engine = Engine::start_with_intake(config, clock.clone(), given)
            .await
            .expect("engine starts");
        TestApi {
            addr: engine.api_addr,
            store: engine.store.clone(),
            engine: Some(engine),
            clock,
            intake,
            dir,
            toml,
        }
    }

    /// Stops the engine and starts a new one on the same data and clock.
    pub async fn restart(mut self) -> TestApi {
        if let Some(e) = self.engine.take() {
            e.stop().await;
        }
        let (dir, toml, clock) = (self.dir.clone(), self.toml.clone(), self.clock.clone());
        drop(self);
        TestApi::start_in(dir, toml, clock).await
    }

    /// Stops the engine.
    pub async fn stop(mut self) {
        if let Some(e) = self.engine.take() {
            e.stop().await;
        }
    }

    /// A request under `/_/backbeat/api/`.
    pub async fn call(&self, method: &str, route: &str, body: Option<&[u8]>) -> Resp {
        request(self.addr, method, &format!("/_/backbeat/api/{route}"), body).await
    }

    /// `GET` under `/_/backbeat/api/`, expecting 200 and JSON.
    pub async fn get_json(&self, route: &str) -> serde_json::Value {
        let r = self.call("GET", route, None).await;
        assert_eq!(r.status, 200, "GET {route}: {}", r.text());
        r.json()
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One request from the default local address.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
    request_with(addr, method, path, &[], body).await
}

/// One request with extra headers (`Authorization`, ...).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    exchange(stream, addr, method, path, headers, body).await
}

/// One request from the local address `from` (e.g. 127.0.0.2).
pub async fn request_from(from: IpAddr, addr: SocketAddr, method: &str, path: &str) -> Resp {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    let stream = socket.connect(addr).await.expect("connect");
    exchange(stream, addr, method, path, &[], None).await
}

async fn exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    stream.write_all(&bytes).await.expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body,
    }
}
