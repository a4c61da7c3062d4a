//! The API safe to expose (DESIGN 8), over raw sockets: the allow-list on accept, body limits
//! per route (announced, sent, chunked, counted in versions), the body deadline, the bound on
//! bodies held at once, and the bearer token. The slow-header and connection-count bounds are
//! tested against the real binary in tests/serve.rs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use backbeat::api::{MAX_LARGE_BODY, MAX_SMALL_BODY};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::api::{request_with, TestApi, T0};
use crate::log_end;

/// What came back on a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// From the end of our writing to the server's close.
    took: Duration,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads what the server sends until it closes the connection (at most `within`).
async fn read_answer(mut stream: TcpStream, within: Duration) -> Raw {
    let start = Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("no answer and no close within {within:?}"))
        .expect("read");
    let took = start.elapsed();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Raw {
        status,
        head,
        body: raw[split + 4..].to_vec(),
        took,
    }
}

/// Sends `bytes` on a new connection, then reads the answer (the connection stays open for
/// writing: a body the server does not want is simply not sent).
async fn send_raw(addr: SocketAddr, bytes: &[u8], within: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_answer(stream, within).await
}

/// A POST head under `/_/backbeat/api/` announcing `len` bytes of body.
fn post_head(route: &str, len: usize) -> String {
    format!(
        "POST /_/backbeat/api/{route} HTTP/1.1\r\nHost: backbeat\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

/// A retry or requeue body naming `n` versions.
fn versions(n: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"Bucket": "bkt", "Key": format!("k{i}"), "VersionId": "v1", "StorageClass": "site1"}))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

#[tokio::test]
async fn a_client_outside_the_allow_list_is_refused_before_it_sends_a_byte() {
    let api = TestApi::start_with(&["site1"], T0, "allow_from = [\"127.0.0.1/32\"]").await;
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))
        .unwrap();
    let stream = socket.connect(api.addr).await.unwrap();
    // Nothing written: the answer comes on accept, and the socket is closed.
    let r = read_answer(stream, Duration::from_secs(5)).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"code": 403, "description": "invalid origin ip request", "AccessDenied": true})
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // An allowed client is served as before.
    let ok = send_raw(
        api.addr,
        b"GET /_/healthcheck HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ok.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn bodies_over_their_routes_limit_are_413_without_being_read() {
    let api = TestApi::start(&["site1"], T0).await;
    let within = Duration::from_secs(5);
    // Announced too large: answered at once, though not a byte of the body was sent.
    for (route, limit) in [
        ("crr/failed", MAX_LARGE_BODY),
        ("crr/requeue", MAX_LARGE_BODY),
        ("notifications/s3", MAX_LARGE_BODY),
        ("crr/pause/site1", MAX_SMALL_BODY),
        ("crr/resume/site1/schedule", MAX_SMALL_BODY),
    ] {
        let r = send_raw(api.addr, post_head(route, limit + 1).as_bytes(), within).await;
        assert_eq!(r.status, 413, "{route}");
        let e = r.json();
        assert_eq!(e["EntityTooLarge"], true, "{route}: {e}");
        assert_eq!(e["code"], 413);
        assert_eq!(r.header("connection").as_deref(), Some("close"));
    }
    // Sent in full, 1 MiB and a bit of webhook JSON is refused too.
    let mut big = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"photos"},"object":{"key":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_LARGE_BODY));
    big.extend(br#""}}}]}"#);
    let mut req = post_head("notifications/s3", big.len()).into_bytes();
    req.extend(&big);
    assert_eq!(send_raw(api.addr, &req, within).await.status, 413);
    // A chunked body (no length announced) is cut off at the limit.
    let mut req = b"POST /_/backbeat/api/crr/failed HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..24 {
        req.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend(&chunk);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let r = send_raw(api.addr, &req, within).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["EntityTooLarge"], true);
    assert!(api.intake.got.lock().is_empty());
    assert_eq!(log_end(&api).await, 0);
    api.stop().await;
}

#[tokio::test]
async fn retry_and_requeue_take_at_most_1000_versions() {
    let api = TestApi::start(&["site1"], T0).await;
    for route in ["crr/failed", "crr/requeue"] {
        let r = api.call("POST", route, Some(&versions(1001))).await;
        assert_eq!(r.status, 413, "{route}: {}", r.text());
        assert_eq!(r.json()["EntityTooLarge"], true);
        assert!(r.text().contains("1000"), "{}", r.text());
        let r = api.call("POST", route, Some(&versions(1000))).await;
        assert_eq!(r.status, 200, "{route}: {}", r.text());
    }
    // Only the accepted requeue reached the intake.
    assert_eq!(api.intake.requeued.lock().len(), 1000);
    api.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let api = TestApi::start_with(&["site1"], T0, "header_timeout_s = 1").await;
    // Headers, the start of the body, then nothing.
    let mut req = post_head("crr/failed", 100).into_bytes();
    req.extend(b"[{\"Bucket\":");
    let r = send_raw(api.addr, &req, Duration::from_secs(5)).await;
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["RequestTimeout"], true);
    assert!(r.took < Duration::from_secs(3), "{:?}", r.took);
    // A body trickled a byte at a time is cut off at the same deadline, however steady.
    let mut stream = TcpStream::connect(api.addr).await.unwrap();
    stream
        .write_all(post_head("crr/failed", 100).as_bytes())
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut raw))
        .await
        .expect("cut off")
        .ok();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    trickle.abort();
    api.stop().await;
}

#[tokio::test]
async fn bodies_held_at_once_are_bounded() {
    let api = TestApi::start_with(&["site1"], T0, "header_timeout_s = 3").await;
    // 16 requests announcing the largest body and sending none hold the whole budget.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(api.addr).await.unwrap();
        s.write_all(post_head("crr/failed", MAX_LARGE_BODY).as_bytes())
            .await
            .unwrap();
        stalled.push(s);
    }
    // Once they are all read, another body is refused at once, whatever its size.
    let small = versions(1);
    let deadline = Instant::now() + Duration::from_secs(2);
    let refused = loop {
        let r = api.call("POST", "crr/failed", Some(&small)).await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "the budget never ran out");
    };
    let e = refused.json();
    assert_eq!(e["ServiceUnavailable"], true);
    assert!(
        e["description"]
            .as_str()
            .unwrap()
            .contains("request bodies"),
        "{e}"
    );
    // The stalled ones end at their deadline (408), and the budget is back.
    for s in stalled {
        assert_eq!(read_answer(s, Duration::from_secs(6)).await.status, 408);
    }
    assert_eq!(
        api.call("POST", "crr/failed", Some(&small)).await.status,
        200
    );
    api.stop().await;
}

#[tokio::test]
async fn only_the_exact_bearer_token_is_accepted() {
    let api = TestApi::start_with(&["site1"], T0, "token = \"s3cret\"").await;
    let with = |auth: &'static str| {
        let addr = api.addr;
        async move {
            request_with(
                addr,
                "GET",
                "/_/healthcheck",
                &[("Authorization", auth)],
                None,
            )
            .await
            .status
        }
    };
    assert_eq!(with("Bearer s3cret").await, 200);
    for wrong in [
        "Bearer ",
        "Bearer s",
        "Bearer s3cre",
        "Bearer s3cretx",
        "Bearer S3CRET",
        "s3cret",
    ] {
        assert_eq!(with(wrong).await, 401, "{wrong:?}");
    }
    api.stop().await;
}
