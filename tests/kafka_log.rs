//! `KafkaLog` against a real Kafka-protocol broker (Tansu, started on a free loopback port):
//! the log contract (`tests/conformance/log.rs`, unchanged) and Kafka-specific checks.
//! Runs with `cargo test --features kafka`.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod conformance;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backbeat::config::KafkaConfig;
use backbeat::log::{partition_for, Consumer, Delivery, KafkaLog, Log, Position, Record};
use common::peers::{start_tansu, Peer};

/// One broker per test binary (Tansu keeps topics in memory; each test uses its own topics).
fn broker() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(start_tansu)
}

/// The short consumer-group timeouts Tansu needs (PEERS.md).
pub fn tansu_config(addr: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: addr.to_string(),
        topic_prefix: prefix.into(),
        replication_factor: 1,
        session_timeout_ms: 6_000,
        heartbeat_interval_ms: 1_000,
        max_poll_interval_ms: 7_000,
        request_timeout_ms: 5_000,
    }
}

fn open() -> Arc<dyn Log> {
    let peer = broker();
    Arc::new(
        KafkaLog::open(&tansu_config(&peer.addr.to_string(), "test-")).expect("open kafka log"),
    )
}

fn rec(key: &str, value: String) -> Record {
    Record {
        key: key.as_bytes().to_vec(),
        value: value.into_bytes(),
        timestamp_ms: 1_700_000_000_000,
    }
}

async fn poll_n(c: &mut Box<dyn Consumer>, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        out.extend(
            c.poll(n - out.len(), Duration::from_millis(500))
                .await
                .expect("poll"),
        );
    }
    out
}

fn next_offsets(ds: &[Delivery]) -> Vec<Position> {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for d in ds {
        let e = last.entry(d.position.partition).or_insert(0);
        *e = (*e).max(d.position.offset + 1);
    }
    last.into_iter()
        .map(|(partition, offset)| Position { partition, offset })
        .collect()
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_partition_for_and_every_record_is_consumed_in_order() -> anyhow::Result<()> {
    let log = open();
    let topic = "keys-order";
    assert_eq!(log.create_topic(topic, 4).await?, 4);
    assert_eq!(
        log.create_topic(topic, 9).await?,
        4,
        "an existing topic keeps its partitions"
    );
    assert!(log
        .topics()
        .await?
        .iter()
        .any(|t| t.name == topic && t.partitions == 4));
    let records: Vec<Record> = (0..60)
        .map(|i| rec(&format!("bucket/key-{}", i % 7), format!("v{i}")))
        .collect();
    let positions = log.append(topic, records.clone()).await?;
    assert_eq!(positions.len(), records.len());
    for (r, p) in records.iter().zip(&positions) {
        assert_eq!(p.partition, partition_for(&r.key, 4));
    }
    let mut c = log.consumer(topic, "g-order").await?;
    let got = poll_n(&mut c, 60, WAIT).await;
    assert_eq!(got.len(), 60);
    let mut seen = HashSet::new();
    let mut per_key: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    for d in &got {
        assert!(seen.insert(d.position), "delivered once");
        let i = positions
            .iter()
            .position(|p| *p == d.position)
            .expect("known position");
        assert_eq!(d.record.value, records[i].value);
        assert_eq!(d.record.timestamp_ms, 1_700_000_000_000);
        per_key
            .entry(d.record.key.clone())
            .or_default()
            .push(i as u32);
    }
    for idx in per_key.values() {
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "append order per key: {idx:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_its_commit_and_a_new_group_starts_at_the_earliest(
) -> anyhow::Result<()> {
    let topic = "resume";
    let log = open();
    log.create_topic(topic, 2).await?;
    log.append(
        topic,
        (0..20)
            .map(|i| rec(&format!("k{i}"), format!("v{i}")))
            .collect(),
    )
    .await?;
    let mut c = log.consumer(topic, "g-resume").await?;
    let got = poll_n(&mut c, 20, WAIT).await;
    assert_eq!(got.len(), 20);
    // Commit the first half of each partition.
    let mut by_part: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for d in &got {
        by_part
            .entry(d.position.partition)
            .or_default()
            .push(d.position.offset);
    }
    let mut commits = Vec::new();
    let mut rest = 0;
    for (p, mut offs) in by_part {
        offs.sort_unstable();
        let half = offs.len() / 2;
        rest += offs.len() - half;
        if half > 0 {
            commits.push(Position {
                partition: p,
                offset: offs[half - 1] + 1,
            });
        }
    }
    c.commit(&commits).await?;
    // Never backwards.
    c.commit(
        &commits
            .iter()
            .map(|p| Position {
                partition: p.partition,
                offset: 0,
            })
            .collect::<Vec<_>>(),
    )
    .await?;
    for p in &commits {
        assert_eq!(c.committed()[p.partition as usize], p.offset);
    }
    drop(c);
    drop(log);

    // A new process: the group restarts at its committed offsets.
    let log = open();
    let lag: u64 = log
        .lag(topic, "g-resume")
        .await?
        .iter()
        .map(|l| l.lag)
        .sum();
    assert_eq!(lag, rest as u64, "lag = end - committed");
    let mut c = log.consumer(topic, "g-resume").await?;
    let again = poll_n(&mut c, rest, WAIT).await;
    assert_eq!(again.len(), rest, "uncommitted records come back");
    for d in &again {
        let floor = commits
            .iter()
            .find(|p| p.partition == d.position.partition)
            .map(|p| p.offset)
            .unwrap_or(0);
        assert!(d.position.offset >= floor);
    }
    c.commit(&next_offsets(&again)).await?;
    assert_eq!(
        log.lag(topic, "g-resume")
            .await?
            .iter()
            .map(|l| l.lag)
            .sum::<u64>(),
        0
    );
    assert!(log.groups(topic).await?.contains(&"g-resume".to_string()));
    drop(c);

    // A group that never committed starts at the earliest record, not at the end.
    let mut fresh = log.consumer(topic, "g-fresh").await?;
    assert_eq!(poll_n(&mut fresh, 20, WAIT).await.len(), 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_are_errors() -> anyhow::Result<()> {
    let log = open();
    assert!(log
        .append("never-created", vec![rec("k", "v".into())])
        .await
        .is_err());
    assert!(log.consumer("never-created", "g").await.is_err());
    assert!(log.create_topic("bad name!", 1).await.is_err());
    assert!(log.check().is_ok());
    Ok(())
}

/// The shared log contract, unchanged, on its own topic and group prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_log_conformance() {
    use conformance::log as suite;
    let addr = broker().addr.to_string();
    let open: suite::Opener = Box::new(move || {
        let config = tansu_config(&addr, "conf-");
        Box::pin(async move {
            Arc::new(KafkaLog::open(&config).expect("open kafka log")) as Arc<dyn Log>
        })
    });
    suite::append_and_consume(&open, "t-append", WAIT).await;
    suite::resume_from_committed(&open, "t-resume", WAIT).await;
    suite::groups_and_lag(&open, "t-groups", WAIT).await;
    suite::poll_wakes_on_append(&open, "t-wake", WAIT).await;
    suite::unknown_topic_is_an_error(&open, "t-unknown").await;
}

/// Polls both members for `for_` and returns what each received.
async fn poll_both(
    a: &mut Box<dyn Consumer>,
    b: &mut Box<dyn Consumer>,
    for_: Duration,
) -> (Vec<Delivery>, Vec<Delivery>) {
    let deadline = tokio::time::Instant::now() + for_;
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    while tokio::time::Instant::now() < deadline {
        ga.extend(
            a.poll(100, Duration::from_millis(100))
                .await
                .expect("poll a"),
        );
        gb.extend(
            b.poll(100, Duration::from_millis(100))
                .await
                .expect("poll b"),
        );
    }
    (ga, gb)
}

/// Two engines (two `KafkaLog`s) in one group share the partitions; when one leaves, the other
/// takes its partitions over from their committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_of_a_group_share_partitions_and_take_over_on_leave() -> anyhow::Result<()> {
    let topic = "shared";
    let log_a = open();
    let log_b = open();
    log_a.create_topic(topic, 4).await?;
    let mut a = log_a.consumer(topic, "g-shared").await?;
    let mut b = log_b.consumer(topic, "g-shared").await?;
    // Let the group settle with both members.
    let (none_a, none_b) = poll_both(&mut a, &mut b, Duration::from_secs(15)).await;
    assert!(none_a.is_empty() && none_b.is_empty());
    let records: Vec<Record> = (0..40)
        .map(|i| rec(&format!("obj-{i}"), format!("v{i}")))
        .collect();
    log_a.append(topic, records).await?;
    let (got_a, got_b) = poll_both(&mut a, &mut b, Duration::from_secs(8)).await;
    let parts_a: HashSet<u32> = got_a.iter().map(|d| d.position.partition).collect();
    let parts_b: HashSet<u32> = got_b.iter().map(|d| d.position.partition).collect();
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members work: {parts_a:?} {parts_b:?}"
    );
    assert!(
        parts_a.is_disjoint(&parts_b),
        "a partition has one owner: {parts_a:?} {parts_b:?}"
    );
    let all: HashSet<Position> = got_a.iter().chain(&got_b).map(|d| d.position).collect();
    assert_eq!(all.len(), 40, "every record delivered");
    a.commit(&next_offsets(&got_a)).await?;
    b.commit(&next_offsets(&got_b)).await?;
    // B leaves; A takes its partitions over from B's committed offsets.
    drop(b);
    drop(log_b);
    let more: Vec<Record> = (40..60)
        .map(|i| rec(&format!("obj-{i}"), format!("v{i}")))
        .collect();
    let new_positions: HashSet<Position> = log_a.append(topic, more).await?.into_iter().collect();
    // A rebalance may deliver A's own uncommitted new records twice (at-least-once); what
    // matters is that every new record arrives and no committed one comes back.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got: HashSet<Position> = HashSet::new();
    while !new_positions.is_subset(&got) && tokio::time::Instant::now() < deadline {
        let batch = a.poll(100, Duration::from_millis(200)).await?;
        got.extend(batch.iter().map(|d| d.position));
    }
    // Anything already committed would have shown up by now.
    let late = a.poll(100, Duration::from_secs(2)).await?;
    got.extend(late.iter().map(|d| d.position));
    assert_eq!(
        got, new_positions,
        "only the new records: B's committed ones are not redelivered"
    );
    Ok(())
}

/// A member whose caller takes no records (a paused site's full read-ahead) and only calls
/// `keep_alive`, for longer than `max.poll.interval.ms` while a second member joins and then
/// leaves, stays in the group and loses nothing: its next polls go on after the last record
/// it was given on every partition (those revoked and assigned again meanwhile too), each
/// record once and in order; a seek made then still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_a_member_in_its_group_and_loses_no_record() -> anyhow::Result<()> {
    let topic = "keep-alive";
    let group = "g-keep-alive";
    let log_a = open();
    let log_b = open();
    log_a.create_topic(topic, 4).await?;
    let recs = |r: std::ops::Range<usize>| -> Vec<Record> {
        r.map(|i| rec(&format!("obj-{i}"), format!("v{i}")))
            .collect()
    };
    let mut all: HashSet<Position> = log_a
        .append(topic, recs(0..40))
        .await?
        .into_iter()
        .collect();
    let mut a = log_a.consumer(topic, group).await?;
    let first = poll_n(&mut a, 10, WAIT).await;
    assert_eq!(first.len(), 10);
    a.commit(&next_offsets(&first)).await?;
    all.extend(log_a.append(topic, recs(40..60)).await?);

    // A only keeps alive while B joins: B gets a share of the partitions, not all of them.
    let mut b = log_b.consumer(topic, group).await?;
    let start = tokio::time::Instant::now();
    let mut got_b = Vec::new();
    while start.elapsed() < Duration::from_secs(10) || got_b.is_empty() {
        assert!(start.elapsed() < WAIT, "B never received a record");
        a.keep_alive().await?;
        got_b.extend(b.poll(100, Duration::from_millis(300)).await?);
    }
    let parts_b: HashSet<u32> = got_b.iter().map(|d| d.position.partition).collect();
    assert!(parts_b.len() < 4, "A left the group: B got {parts_b:?}");
    // B leaves without committing; its partitions come back to A while A still only keeps
    // alive.
    drop(b);
    drop(log_b);
    for _ in 0..16 {
        a.keep_alive().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let first_set: HashSet<Position> = first.iter().map(|d| d.position).collect();
    let want: HashSet<Position> = all.difference(&first_set).copied().collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rest: Vec<Delivery> = Vec::new();
    let seen = |rest: &Vec<Delivery>| rest.iter().map(|d| d.position).collect::<HashSet<_>>();
    while !want.is_subset(&seen(&rest)) && tokio::time::Instant::now() < deadline {
        rest.extend(a.poll(100, Duration::from_millis(200)).await?);
    }
    rest.extend(a.poll(100, Duration::from_secs(2)).await?);
    assert_eq!(
        seen(&rest),
        want,
        "every record after the commit, none before"
    );
    assert_eq!(rest.len(), want.len(), "each record once");
    let mut next: BTreeMap<u32, u64> = next_offsets(&first)
        .into_iter()
        .map(|p| (p.partition, p.offset))
        .collect();
    for d in &rest {
        let n = next.entry(d.position.partition).or_insert(0);
        assert_eq!(
            d.position.offset, *n,
            "in order on {}",
            d.position.partition
        );
        *n += 1;
    }

    // A seek made after a keep-alive applies to the next poll.
    a.keep_alive().await?;
    let p = rest[0].position.partition;
    a.seek(Position {
        partition: p,
        offset: 0,
    })?;
    let again = poll_n(&mut a, 1, WAIT).await;
    assert_eq!(
        again.first().map(|d| d.position),
        Some(Position {
            partition: p,
            offset: 0
        })
    );
    Ok(())
}
