//! Configuration: the example parses; every kind of invalid value gives an error naming its
//! field, all at once; the CLI exits 2 on an invalid file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use backbeat::config::{Config, ConfigError, SiteBackend, SiteKind, SourceBackend, Stage};

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/backbeat.example.toml"
    ))
    .unwrap()
}

fn set_example_env() {
    for var in [
        "BACKBEAT_SOURCE_ACCESS_KEY",
        "BACKBEAT_SOURCE_SECRET_KEY",
        "BACKBEAT_AWS1_ACCESS_KEY",
        "BACKBEAT_AWS1_SECRET_KEY",
    ] {
        std::env::set_var(var, "test-value");
    }
    std::env::set_var(
        "BACKBEAT_AZURE1_KEY",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    );
}

fn problems(toml: &str) -> Vec<String> {
    match Config::parse(toml) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn the_example_parses_with_every_section() {
    set_example_env();
    let cfg = Config::parse(&example()).expect("example is valid");
    assert_eq!(cfg.sites.len(), 3);
    assert_eq!(cfg.replication.rules.len(), 1);
    assert_eq!(cfg.server.port, 8900);
    assert!(cfg.source.is_some());
    assert!(Stage::ALL.into_iter().all(|s| cfg.engine.runs(s)));
}

#[test]
fn sections_are_typed_by_kind_with_secrets_resolved() {
    set_example_env();
    let cfg = Config::parse(&example()).unwrap();
    let Some(SourceBackend::S3(src)) = cfg.source.as_ref().map(|s| &s.backend) else {
        panic!("the example's source is s3");
    };
    assert_eq!(src.buckets, ["photos"]);
    assert_eq!(src.client.access_key.0, "test-value");
    let kinds: Vec<SiteKind> = cfg.sites.iter().map(|s| s.kind()).collect();
    assert_eq!(kinds, [SiteKind::AwsS3, SiteKind::Azure, SiteKind::File]);
    let SiteBackend::AwsS3(aws) = &cfg.sites[0].backend else {
        panic!("sites[0] is aws_s3");
    };
    assert_eq!(
        (aws.bucket.as_str(), aws.client.path_style),
        ("replica", true)
    );
}

#[test]
fn a_mongodb_source_is_refused_as_not_built_yet() {
    let p = problems("[source]\ntype = \"mongodb\"\n");
    assert!(
        p.len() == 1 && p[0].starts_with("source.type") && p[0].contains("not built yet"),
        "{p:?}"
    );
}

#[test]
fn a_field_of_another_kind_is_unknown_and_every_missing_field_is_named() {
    let p = problems(
        "[[sites]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\ncontainer = \"c\"\n\
         [[sites]]\nname = \"b\"\ntype = \"azure\"\n",
    );
    for field in [
        "sites[0].container: unknown field",
        "sites[1].endpoint: missing",
        "sites[1].account: missing",
        "sites[1].container: missing",
        "sites[1].key: missing",
    ] {
        assert!(
            p.iter().any(|m| m.starts_with(field)),
            "missing {field} in {p:?}"
        );
    }
    // A rule naming an entry that has problems of its own is not also an unknown site.
    let p = problems(
        "[[sites]]\nname = \"b\"\ntype = \"azure\"\n[[replication.rules]]\nbucket = \"x\"\nsites = [\"b\"]\n",
    );
    assert!(!p.iter().any(|m| m.starts_with("replication")), "{p:?}");
}

#[test]
fn engine_stages_default_to_all_and_a_kafka_engine_may_run_only_replication() {
    let cfg = Config::parse("").unwrap();
    assert_eq!(cfg.engine.stages, ["populator", "replication", "status"]);
    let toml = "[storage]\nlog = \"kafka\"\n[storage.kafka]\nbrokers = \"127.0.0.1:9092\"\n\
                [engine]\nstages = [\"replication\"]\n";
    if cfg!(feature = "kafka") {
        let cfg = Config::parse(toml).unwrap();
        assert!(cfg.engine.runs(Stage::Replication));
        assert!(!cfg.engine.runs(Stage::Populator) && !cfg.engine.runs(Stage::Status));
    } else {
        // Only the missing feature is reported: the stages themselves are fine.
        assert_eq!(problems(toml).len(), 1, "{:?}", problems(toml));
        assert!(problems(toml)[0].starts_with("storage.log"));
    }
}

#[test]
fn each_invalid_value_names_its_field() {
    set_example_env();
    let cases: &[(&str, &str)] = &[
        ("[server]\nport = 99999\n", "server"),
        ("[server]\nport = \"x\"\n", "server"),
        ("[server]\nallow_from = [\"300.1.1.1/8\"]\n", "server.allow_from[0]"),
        ("[server]\nhost = \"bad host!\"\n", "server.host"),
        ("[server]\ntoken_env = \"NOT_SET_ANYWHERE_XYZ\"\n", "server.token_env"),
        ("[server]\nbogus = 1\n", "server"),
        ("[storage]\ndurability = \"sometimes\"\n", "storage"),
        ("[storage]\npartitions = 0\n", "storage.partitions"),
        ("[storage]\nflush_interval_ms = 0\n", "storage.flush_interval_ms"),
        // Without the feature the engine is named; with it, its missing section.
        (
            "[storage]\nlog = \"kafka\"\n",
            if cfg!(feature = "kafka") { "storage.kafka" } else { "storage.log" },
        ),
        (
            "[storage]\nstore = \"mongodb\"\n",
            if cfg!(feature = "mongodb") { "storage.mongodb" } else { "storage.store" },
        ),
        ("[source]\ntype = \"s3\"\nbuckets = [\"b\"]\naccess_key = \"a\"\nsecret_key = \"s\"\n", "source.endpoint"),
        ("[source]\ntype = \"s3\"\nendpoint = \"ftp://x\"\nbuckets = [\"b\"]\naccess_key = \"a\"\nsecret_key = \"s\"\n", "source.endpoint"),
        ("[source]\ntype = \"s3\"\nendpoint = \"http://x\"\nbuckets = []\naccess_key = \"a\"\nsecret_key = \"s\"\n", "source.buckets"),
        ("[source]\ntype = \"s3\"\nendpoint = \"http://x\"\nbuckets = [\"b\"]\nsecret_key = \"s\"\n", "source.access_key"),
        ("[source]\ntype = \"ftp\"\n", "source"),
        ("[source]\ntype = \"file\"\n", "source.path"),
        ("[[sites]]\nname = \"all\"\ntype = \"file\"\npath = \"/x\"\n", "sites[0].name"),
        ("[[sites]]\nname = \"a b\"\ntype = \"file\"\npath = \"/x\"\n", "sites[0].name"),
        ("[[sites]]\nname = \"a\"\ntype = \"file\"\n", "sites[0].path"),
        ("[[sites]]\nname = \"a\"\ntype = \"gcs\"\n", "sites[0]"),
        ("[[sites]]\nname = \"a\"\ntype = \"aws_s3\"\nendpoint = \"http://x\"\naccess_key = \"a\"\nsecret_key = \"s\"\n", "sites[0].bucket"),
        ("[[sites]]\nname = \"a\"\ntype = \"azure\"\nendpoint = \"http://x\"\ncontainer = \"c\"\nkey = \"not base64!\"\naccount = \"x\"\n", "sites[0].key"),
        ("[[sites]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\n[[sites]]\nname = \"a\"\ntype = \"file\"\npath = \"/y\"\n", "sites[1].name"),
        ("[replication]\nconcurrency = 0\n", "replication.concurrency"),
        ("[replication]\nmpu_threshold_mb = 1\n", "replication.mpu_threshold_mb"),
        ("[replication.retry]\nbackoff_min_ms = 10\nbackoff_max_ms = 5\n", "replication.retry.backoff_max_ms"),
        ("[replication.retry]\njitter = 2.0\n", "replication.retry.jitter"),
        ("[replication.retry]\nfactor = 0.5\n", "replication.retry.factor"),
        ("[[replication.rules]]\nbucket = \"b\"\nsites = [\"nowhere\"]\n", "replication.rules[0].sites[0]"),
        ("[[replication.rules]]\nbucket = \"\"\nsites = []\n", "replication.rules[0].bucket"),
        ("[shutdown]\ngrace_period_s = 100000\n", "shutdown.grace_period_s"),
        ("[engine]\nstages = []\n", "engine.stages"),
        ("[engine]\nstages = [\"status\", \"copier\"]\n", "engine.stages[1]"),
        ("[engine]\nstages = [\"status\", \"populator\", \"status\"]\n", "engine.stages[2]"),
        ("[engine]\nstages = \"status\"\n", "engine"),
        ("[engine]\nthreads = 2\n", "engine"),
        // A sled log cannot be shared: its one process runs every stage.
        ("[engine]\nstages = [\"replication\"]\n", "engine.stages"),
        // A sled store: the status processor completes what this process's populator recorded.
        (
            "[storage]\nlog = \"kafka\"\n[storage.kafka]\nbrokers = \"127.0.0.1:9092\"\n[engine]\nstages = [\"populator\", \"replication\"]\n",
            "engine.stages",
        ),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("this is not toml", "syntax"),
    ];
    for (toml, field) in cases {
        let p = problems(toml);
        assert!(!p.is_empty(), "{toml:?} should be invalid");
        assert!(
            p.iter().any(|m| m.starts_with(field)),
            "{toml:?}: expected a problem naming {field}, got {p:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        "[storage]\npartitions = 0\n[replication]\nconcurrency = 0\n[[sites]]\nname = \"all\"\ntype = \"file\"\n[shutdown]\ngrace_period_s = 99999\n",
    );
    for field in [
        "storage.partitions",
        "replication.concurrency",
        "sites[0].name",
        "sites[0].path",
        "shutdown.grace_period_s",
    ] {
        assert!(
            p.iter().any(|m| m.starts_with(field)),
            "missing {field} in {p:?}"
        );
    }
}

#[test]
fn check_config_exits_2_on_an_invalid_file_and_0_on_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[storage]\npartitions = 0\n[replication]\nconcurrency = 0\n[engine]\nstages = [\"copier\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage.partitions")
            && err.contains("replication.concurrency")
            && err.contains("engine.stages[0]"),
        "{err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nport = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // serve refuses an invalid file with the same exit code.
    let out = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("backbeat "));
}
