//! The `Log` contract. Each check takes an opener: a function that opens the implementation
//! under test (again, after the previous handle was dropped, to test durability across a
//! restart), and a topic name unique to the check (brokers are shared between checks).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backbeat::log::{partition_for, Consumer, Delivery, Log, Position, Record};

/// Opens the log under test.
pub type Opener = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Log>> + Send>> + Send + Sync>;

fn rec(key: &str, value: String) -> Record {
    Record {
        key: key.as_bytes().to_vec(),
        value: value.into_bytes(),
        timestamp_ms: 1,
    }
}

/// Polls until `n` records arrived or `timeout` passed.
pub async fn poll_n(c: &mut Box<dyn Consumer>, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        let got = c
            .poll(n - out.len(), Duration::from_millis(200))
            .await
            .expect("poll");
        out.extend(got);
    }
    out
}

/// Highest next-offset per partition among deliveries.
pub fn commit_positions(ds: &[Delivery]) -> Vec<Position> {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for d in ds {
        let e = last.entry(d.position.partition).or_insert(0);
        *e = (*e).max(d.position.offset + 1);
    }
    last.into_iter()
        .map(|(partition, offset)| Position { partition, offset })
        .collect()
}

/// Appends return one position per record, in input order, on the partition Kafka's default
/// partitioner picks; a consumer sees every record once, in order per partition.
pub async fn append_and_consume(open: &Opener, topic: &str, wait: Duration) {
    let log = open().await;
    let parts = log.create_topic(topic, 4).await.expect("create topic");
    assert_eq!(parts, 4);
    assert_eq!(
        log.create_topic(topic, 9).await.expect("recreate"),
        4,
        "existing topic keeps its partitions"
    );
    let records: Vec<Record> = (0..100)
        .map(|i| rec(&format!("key-{}", i % 10), format!("v{i}")))
        .collect();
    let positions = log.append(topic, records.clone()).await.expect("append");
    assert_eq!(positions.len(), 100);
    let mut per_part: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (r, p) in records.iter().zip(&positions) {
        assert_eq!(
            p.partition,
            partition_for(&r.key, 4),
            "partition of {:?}",
            String::from_utf8_lossy(&r.key)
        );
        per_part.entry(p.partition).or_default().push(p.offset);
    }
    for offs in per_part.values() {
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "offsets increase within a partition: {offs:?}"
        );
    }
    let mut c = log.consumer(topic, "g1").await.expect("consumer");
    let got = poll_n(&mut c, 100, wait).await;
    assert_eq!(got.len(), 100, "every record delivered");
    let mut seen = HashSet::new();
    for d in &got {
        assert!(seen.insert(d.position), "delivered once: {:?}", d.position);
        let i = positions
            .iter()
            .position(|p| *p == d.position)
            .expect("known position");
        assert_eq!(d.record.value, records[i].value);
        assert_eq!(d.record.key, records[i].key);
    }
    // Order per key is the append order.
    let mut by_key: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for d in &got {
        by_key
            .entry(d.record.key.clone())
            .or_default()
            .push(String::from_utf8_lossy(&d.record.value).into_owned());
    }
    for (k, vals) in by_key {
        let nums: Vec<u32> = vals.iter().map(|v| v[1..].parse().unwrap()).collect();
        assert!(
            nums.windows(2).all(|w| w[0] < w[1]),
            "key {:?} in order: {nums:?}",
            String::from_utf8_lossy(&k)
        );
    }
    assert!(c
        .poll(10, Duration::from_millis(100))
        .await
        .expect("poll")
        .is_empty());
}

/// A group resumes after its committed offsets across a reopen; uncommitted records come back.
pub async fn resume_from_committed(open: &Opener, topic: &str, wait: Duration) {
    let log = open().await;
    log.create_topic(topic, 2).await.expect("create");
    let records: Vec<Record> = (0..40)
        .map(|i| rec(&format!("k{i}"), format!("v{i}")))
        .collect();
    log.append(topic, records).await.expect("append");
    let mut c = log.consumer(topic, "g-resume").await.expect("consumer");
    let got = poll_n(&mut c, 40, wait).await;
    assert_eq!(got.len(), 40);
    // Commit only the first half of each partition.
    let mut by_part: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for d in &got {
        by_part
            .entry(d.position.partition)
            .or_default()
            .push(d.position.offset);
    }
    let mut committed = Vec::new();
    let mut expected_rest = 0usize;
    for (p, mut offs) in by_part {
        offs.sort_unstable();
        let half = offs.len() / 2;
        expected_rest += offs.len() - half;
        if half > 0 {
            committed.push(Position {
                partition: p,
                offset: offs[half - 1] + 1,
            });
        }
    }
    c.commit(&committed).await.expect("commit");
    // Committing an older offset never moves the group backwards.
    let older: Vec<Position> = committed
        .iter()
        .map(|p| Position {
            partition: p.partition,
            offset: 0,
        })
        .collect();
    c.commit(&older).await.expect("commit older");
    drop(c);
    drop(log);
    let log = open().await;
    let mut c = log
        .consumer(topic, "g-resume")
        .await
        .expect("consumer after reopen");
    let rest = poll_n(&mut c, expected_rest, wait).await;
    assert_eq!(
        rest.len(),
        expected_rest,
        "uncommitted records are delivered again"
    );
    for d in &rest {
        let floor = committed
            .iter()
            .find(|p| p.partition == d.position.partition)
            .map(|p| p.offset)
            .unwrap_or(0);
        assert!(
            d.position.offset >= floor,
            "nothing below the committed offset comes back"
        );
    }
    assert!(c
        .poll(10, Duration::from_millis(200))
        .await
        .expect("poll")
        .is_empty());
}

/// A new group starts at the earliest record; groups are independent; lag is end - committed.
pub async fn groups_and_lag(open: &Opener, topic: &str, wait: Duration) {
    let log = open().await;
    log.create_topic(topic, 3).await.expect("create");
    log.append(
        topic,
        (0..30)
            .map(|i| rec(&format!("k{i}"), format!("v{i}")))
            .collect(),
    )
    .await
    .expect("append");
    let mut a = log.consumer(topic, "ga").await.expect("a");
    let got = poll_n(&mut a, 30, wait).await;
    assert_eq!(got.len(), 30);
    a.commit(&commit_positions(&got)).await.expect("commit");
    let lag_a: u64 = log
        .lag(topic, "ga")
        .await
        .expect("lag")
        .iter()
        .map(|l| l.lag)
        .sum();
    assert_eq!(lag_a, 0);
    // A second group added later still starts at the earliest record.
    log.append(
        topic,
        (30..40)
            .map(|i| rec(&format!("k{i}"), format!("v{i}")))
            .collect(),
    )
    .await
    .expect("append");
    let mut b = log.consumer(topic, "gb").await.expect("b");
    let got_b = poll_n(&mut b, 40, wait).await;
    assert_eq!(
        got_b.len(),
        40,
        "a new group reads from the earliest record"
    );
    let lag_a: u64 = log
        .lag(topic, "ga")
        .await
        .expect("lag")
        .iter()
        .map(|l| l.lag)
        .sum();
    assert_eq!(lag_a, 10, "lag = appended - committed");
    let lags = log.lag(topic, "ga").await.expect("lag");
    assert_eq!(lags.len(), 3);
    for l in lags {
        assert_eq!(l.lag, l.end - l.committed);
    }
}

/// A poll with a wait returns as soon as a record is appended.
pub async fn poll_wakes_on_append(open: &Opener, topic: &str, wait: Duration) {
    let log = open().await;
    log.create_topic(topic, 1).await.expect("create");
    let mut c = log.consumer(topic, "g-wake").await.expect("consumer");
    // Let the consumer settle (brokers assign partitions on the first poll).
    let _ = c.poll(1, Duration::from_millis(100)).await.expect("poll");
    let l2 = log.clone();
    let t = topic.to_string();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        l2.append(&t, vec![rec("k", "late".into())])
            .await
            .expect("append")
    });
    let got = poll_n(&mut c, 1, wait).await;
    writer.await.expect("writer");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.value, b"late");
}

/// Unknown topics are errors, not panics.
pub async fn unknown_topic_is_an_error(open: &Opener, topic: &str) {
    let log = open().await;
    assert!(log.append(topic, vec![rec("k", "v".into())]).await.is_err());
    assert!(log.consumer(topic, "g").await.is_err());
}
