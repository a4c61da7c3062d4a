//! Configuration: the example parses; every kind of invalid value gives an error naming its
//! field (sites and rules by name), all at once; what `serve` would fail on is caught by the
//! check; secrets from the environment; the CLI exits 2 on an invalid file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/tls.rs"]
mod tls;

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

/// The fields a table accepts, as its "unknown field" problem lists them (the reader's own
/// list, so a field added to a reader is seen here without editing this test).
fn accepted_fields(table: &str) -> Vec<String> {
    let toml = format!("{table}\nzzz_not_a_field = 1\n");
    let p = problems(&toml);
    let m = p
        .iter()
        .find(|m| m.contains("zzz_not_a_field"))
        .unwrap_or_else(|| panic!("no unknown-field problem for {table:?}: {p:?}"));
    let (_, list) = m
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of expected fields in {m:?}"));
    list.split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter(|w| !w.is_empty() && !["one", "of", "or"].contains(w))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_example_documents_every_field_each_reader_accepts() {
    set_example_env();
    let example = example();
    let dir = env!("CARGO_MANIFEST_DIR");
    let tables = [
        "[server]".to_string(),
        "[storage]".into(),
        "[storage.kafka]".into(),
        "[storage.mongodb]".into(),
        format!("[source]\ntype = \"file\"\npath = \"{dir}/src\""),
        "[source]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbuckets = [\"photos\"]\n\
         access_key = \"a\"\nsecret_key = \"b\""
            .into(),
        "[[sites]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"".into(),
        "[[sites]]\nname = \"a\"\ntype = \"aws_s3\"".into(),
        "[[sites]]\nname = \"a\"\ntype = \"azure\"".into(),
        "[replication]".into(),
        "[replication.retry]".into(),
        "[[replication.rules]]\nbucket = \"photos\"\nsites = [\"a\"]".into(),
        "[shutdown]".into(),
        "[engine]".into(),
        "[gc]".into(),
    ];
    let mut undocumented = Vec::new();
    for table in &tables {
        for field in accepted_fields(table) {
            // A field is documented by a line setting it (commented out or not), a secret also
            // by its `_env` twin, a table by its header.
            let documented = example.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{field} ="))
                    || l.starts_with(&format!("{field}_env ="))
                    || l.contains(&format!(".{field}]"))
            });
            if !documented {
                undocumented.push(format!("{} {field}", table.lines().next().unwrap_or("")));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "packaging/backbeat.example.toml says it lists every field; it lacks {undocumented:?}"
    );
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
        "site \"a\".container: unknown field",
        "site \"b\".endpoint: missing",
        "site \"b\".account: missing",
        "site \"b\".container: missing",
        "site \"b\".key: missing",
    ] {
        assert!(
            p.iter().any(|m| m.starts_with(field)),
            "missing {field} in {p:?}"
        );
    }
    // A rule naming an entry that has problems of its own is not also an unknown site.
    let p = problems(
        "[[sites]]\nname = \"b\"\ntype = \"azure\"\n[[replication.rules]]\nbucket = \"photos\"\nsites = [\"b\"]\n",
    );
    assert!(!p.iter().any(|m| m.starts_with("rule")), "{p:?}");
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
        ("[source]\ntype = \"s3\"\nbuckets = [\"bkt\"]\naccess_key = \"a\"\nsecret_key = \"s\"\n", "source.endpoint"),
        ("[source]\ntype = \"s3\"\nendpoint = \"ftp://x\"\nbuckets = [\"bkt\"]\naccess_key = \"a\"\nsecret_key = \"s\"\n", "source.endpoint"),
        ("[source]\ntype = \"s3\"\nendpoint = \"http://x\"\nbuckets = []\naccess_key = \"a\"\nsecret_key = \"s\"\n", "source.buckets"),
        ("[source]\ntype = \"s3\"\nendpoint = \"http://x\"\nbuckets = [\"bkt\"]\nsecret_key = \"s\"\n", "source.access_key"),
        ("[source]\ntype = \"ftp\"\n", "source"),
        ("[source]\ntype = \"file\"\n", "source.path"),
        ("[[sites]]\nname = \"all\"\ntype = \"file\"\npath = \"/x\"\n", "sites[0].name"),
        ("[[sites]]\nname = \"a b\"\ntype = \"file\"\npath = \"/x\"\n", "sites[0].name"),
        ("[[sites]]\nname = \"a\"\ntype = \"file\"\n", "site \"a\".path"),
        ("[[sites]]\nname = \"a\"\ntype = \"gcs\"\n", "site \"a\".type"),
        ("[[sites]]\nname = \"a\"\ntype = \"aws_s3\"\nendpoint = \"http://x\"\naccess_key = \"a\"\nsecret_key = \"s\"\n", "site \"a\".bucket"),
        ("[[sites]]\nname = \"a\"\ntype = \"azure\"\nendpoint = \"http://x\"\ncontainer = \"c\"\nkey = \"not base64!\"\naccount = \"x\"\n", "site \"a\".key"),
        ("[[sites]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\n[[sites]]\nname = \"a\"\ntype = \"file\"\npath = \"/y\"\n", "sites[1].name"),
        ("[replication]\nconcurrency = 0\n", "replication.concurrency"),
        ("[replication]\nmpu_threshold_mb = 1\n", "replication.mpu_threshold_mb"),
        ("[replication]\nlag_target_s = 0\n", "replication.lag_target_s"),
        ("[replication]\nstall_after_s = 0\n", "replication.stall_after_s"),
        ("[replication]\nstall_after_s = 604801\n", "replication.stall_after_s"),
        ("[replication.retry]\nbackoff_min_ms = 10\nbackoff_max_ms = 5\n", "replication.retry.backoff_max_ms"),
        ("[replication.retry]\njitter = 2.0\n", "replication.retry.jitter"),
        ("[replication.retry]\nfactor = 0.5\n", "replication.retry.factor"),
        ("[[replication.rules]]\nbucket = \"photos\"\nsites = [\"nowhere\"]\n", "rule \"photos\".sites"),
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

#[test]
fn sites_and_rules_are_named_by_name_not_position() {
    let p = problems(
        "[[sites]]\nname = \"local-1\"\ntype = \"file\"\npath = \"/x\"\n\
         [[sites]]\nname = \"local-2\"\ntype = \"file\"\npath = \"/y\"\n\
         [[sites]]\nname = \"azure-1\"\ntype = \"azure\"\nendpoint = \"http://h/acct\"\n\
         account = \"acct\"\nkey = \"a2V5\"\n\
         [[replication.rules]]\nbucket = \"photos\"\nprefix = \"docs/\"\nsites = [\"local-1\", \"nowhere\"]\n\
         [[replication.rules]]\nbucket = \"photos\"\nsites = []\n",
    );
    assert!(
        p.iter().any(|m| m == "site \"azure-1\".container: missing"),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m == "rule \"photos/docs/\".sites: unknown site \"nowhere\""),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("rule \"photos\".sites: at least one site")),
        "{p:?}"
    );
    assert!(
        !p.iter()
            .any(|m| m.contains("sites[") || m.contains("rules[")),
        "no positions when names are known: {p:?}"
    );
    // A site sending two buckets' keys to one namespace is named too.
    let p = problems(
        "[[sites]]\nname = \"flat\"\ntype = \"file\"\npath = \"/x\"\nbucket_match = true\n\
         [[replication.rules]]\nbucket = \"photos\"\nsites = [\"flat\"]\n\
         [[replication.rules]]\nbucket = \"videos\"\nsites = [\"flat\"]\n",
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("site \"flat\".bucket_match")),
        "{p:?}"
    );
}

#[test]
fn bucket_names_follow_s3_naming_rules() {
    let s3_source = |buckets: &str| {
        format!(
            "[source]\ntype = \"s3\"\nendpoint = \"http://h\"\naccess_key = \"a\"\nsecret_key = \"s\"\nbuckets = [{buckets}]\n"
        )
    };
    let s3_site = |bucket: &str| {
        format!(
            "[[sites]]\nname = \"aws-1\"\ntype = \"aws_s3\"\nendpoint = \"http://h\"\naccess_key = \"a\"\nsecret_key = \"s\"\nbucket = \"{bucket}\"\n"
        )
    };
    for bad in [
        "rt",
        "UPPER",
        "a_b",
        "x..y",
        "-abc",
        "abc-",
        "10.0.0.1",
        "evil.com/x",
        "h:80",
    ] {
        let p = problems(&s3_source(&format!("\"{bad}\"")));
        assert!(
            p.iter().any(|m| m.starts_with("source.buckets")
                && m.contains(&format!("{bad:?} is not a valid S3 bucket name"))),
            "source bucket {bad:?}: {p:?}"
        );
        let p = problems(&s3_site(bad));
        assert!(
            p.iter().any(|m| m.starts_with("site \"aws-1\".bucket")
                && m.contains("not a valid S3 bucket name")),
            "site bucket {bad:?}: {p:?}"
        );
        let p = problems(&format!(
            "{}[[sites]]\nname = \"l\"\ntype = \"file\"\npath = \"/x\"\n[[replication.rules]]\nbucket = \"{bad}\"\nsites = [\"l\"]\n",
            s3_source("\"photos\"")
        ));
        assert!(
            p.iter()
                .any(|m| m.starts_with(&format!("rule {bad:?}.bucket"))
                    && m.contains("not a valid S3 bucket name")),
            "rule bucket {bad:?}: {p:?}"
        );
    }
    for good in ["abc", "my-bucket.v2", "0-photos"] {
        assert_eq!(
            problems(&s3_source(&format!("\"{good}\""))),
            Vec::<String>::new()
        );
        assert_eq!(problems(&s3_site(good)), Vec::<String>::new());
    }
    // A directory source's bucket is its directory's name, whatever S3 would think of it.
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("My_Inbox");
    std::fs::create_dir(&inbox).unwrap();
    let p = problems(&format!(
        "[source]\ntype = \"file\"\npath = {:?}\n[[sites]]\nname = \"l\"\ntype = \"file\"\npath = \"/x\"\n\
         [[replication.rules]]\nbucket = \"My_Inbox\"\nsites = [\"l\"]\n",
        inbox.display().to_string()
    ));
    assert_eq!(p, Vec::<String>::new());
}

#[test]
fn check_config_catches_what_serve_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let site = "[[sites]]\nname = \"l\"\ntype = \"file\"\npath = \"/x\"\n";
    // A directory source whose directory does not exist.
    let missing = dir.path().join("no-such-inbox");
    let p = problems(&format!(
        "[source]\ntype = \"file\"\npath = {:?}\n",
        missing.display().to_string()
    ));
    assert!(
        p.iter()
            .any(|m| m.starts_with("source.path") && m.contains("not an existing directory")),
        "{p:?}"
    );
    // A rule whose bucket no source provides: an S3 source's buckets...
    let p = problems(&format!(
        "[source]\ntype = \"s3\"\nendpoint = \"http://h\"\naccess_key = \"a\"\nsecret_key = \"s\"\nbuckets = [\"photos\"]\n\
         {site}[[replication.rules]]\nbucket = \"videos\"\nsites = [\"l\"]\n"
    ));
    assert!(
        p.iter().any(|m| m
            == "rule \"videos\".bucket: the source provides no bucket \"videos\" (it provides photos)"),
        "{p:?}"
    );
    // ... and a directory source's one bucket, its directory's name.
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let file_source = format!(
        "[source]\ntype = \"file\"\npath = {:?}\n",
        inbox.display().to_string()
    );
    let p = problems(&format!(
        "{file_source}{site}[[replication.rules]]\nbucket = \"photos\"\nsites = [\"l\"]\n"
    ));
    assert!(
        p.iter().any(|m| m.starts_with("rule \"photos\".bucket")
            && m.contains("provides no bucket \"photos\" (it provides inbox)")),
        "{p:?}"
    );
    assert_eq!(
        problems(&format!(
            "{file_source}{site}[[replication.rules]]\nbucket = \"inbox\"\nsites = [\"l\"]\n"
        )),
        Vec::<String>::new()
    );
    // A source that is never listed and not watched would never find anything.
    let p = problems(&format!(
        "[source]\ntype = \"file\"\npath = {:?}\nwatch = false\nscan_interval_s = 0\n",
        inbox.display().to_string()
    ));
    assert!(
        p.iter().any(|m| m.starts_with("source.scan_interval_s")),
        "{p:?}"
    );
    let p = problems(
        "[source]\ntype = \"s3\"\nendpoint = \"http://h\"\naccess_key = \"a\"\nsecret_key = \"s\"\nbuckets = [\"photos\"]\nscan_interval_s = 0\n",
    );
    assert!(
        p.iter().any(|m| m.starts_with("source.scan_interval_s")),
        "{p:?}"
    );
    // A watched directory may do without rescans.
    assert_eq!(
        problems(&format!("{file_source}scan_interval_s = 0\n")),
        Vec::<String>::new()
    );
}

#[test]
fn a_syntax_error_keeps_the_parsers_snippet_on_its_lines() {
    let err = Config::parse("[server]\nport = 8900\nhost = = \"x\"\n").unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4, "several lines: {text}");
    assert!(
        lines[1].starts_with("  syntax: TOML parse error at line 3"),
        "{text}"
    );
    // The offending line and the caret under it, each on its own line, indented under the
    // problem.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    ") && l.contains("host = = \"x\"")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    ") && l.contains('^')),
        "{text}"
    );
}

#[test]
fn the_mongodb_uri_may_come_from_the_environment() {
    std::env::set_var(
        "BACKBEAT_TEST_CONFIG_MONGO_URI",
        "mongodb://user:ENVSECRET@127.0.0.1:27017/?replicaSet=rs0",
    );
    let cfg = Config::parse(
        "[storage.mongodb]\nuri_env = \"BACKBEAT_TEST_CONFIG_MONGO_URI\"\ndatabase = \"bb\"\n",
    )
    .unwrap();
    let m = cfg.storage.mongodb.as_ref().unwrap();
    assert!(m.uri.0.contains("ENVSECRET"));
    assert_eq!(m.database, "bb");
    assert!(!format!("{cfg:?}").contains("ENVSECRET"), "redacted");
    for (toml, field) in [
        (
            "[storage.mongodb]\nuri_env = \"BACKBEAT_TEST_UNSET_MONGO_URI\"\n",
            "storage.mongodb.uri_env",
        ),
        (
            "[storage.mongodb]\nuri = \"mongodb://h\"\nuri_env = \"BACKBEAT_TEST_CONFIG_MONGO_URI\"\n",
            "storage.mongodb.uri",
        ),
        ("[storage.mongodb]\ndatabase = \"bb\"\n", "storage.mongodb.uri: missing"),
        ("[storage.mongodb]\nuri = \"http://h\"\n", "storage.mongodb.uri"),
        ("[storage.mongodb]\nuri = \"mongodb://h\"\nhosts = 2\n", "storage.mongodb.hosts: unknown field"),
    ] {
        let p = problems(toml);
        assert!(p.iter().any(|m| m.starts_with(field)), "{toml:?}: {p:?}");
    }
    // The value itself is never repeated in a problem (it may hold a password).
    let p = problems("[storage.mongodb]\nuri = \"http://user:PASSWORD@h\"\n");
    assert!(!p.iter().any(|m| m.contains("PASSWORD")), "{p:?}");
}

#[test]
fn the_api_limits_have_defaults_and_bounds_and_the_default_allow_list_is_loopback() {
    let cfg = Config::parse("").unwrap();
    assert_eq!(cfg.server.header_timeout_s, 10);
    assert_eq!(cfg.server.max_connections, 1024);
    assert_eq!(cfg.server.host, "127.0.0.1");
    assert_eq!(cfg.server.allow_from, ["127.0.0.1/8", "::1"]);
    let cfg = Config::parse("[server]\nheader_timeout_s = 3\nmax_connections = 50\n").unwrap();
    assert_eq!(
        (cfg.server.header_timeout_s, cfg.server.max_connections),
        (3, 50)
    );
    for (toml, field) in [
        (
            "[server]\nheader_timeout_s = 0\n",
            "server.header_timeout_s",
        ),
        (
            "[server]\nheader_timeout_s = 100000\n",
            "server.header_timeout_s",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nmax_connections = 2000000\n",
            "server.max_connections",
        ),
    ] {
        let p = problems(toml);
        assert!(p.iter().any(|m| m.starts_with(field)), "{toml:?}: {p:?}");
    }
}

#[test]
fn a_ca_file_must_hold_a_usable_certificate_for_an_https_endpoint() {
    let ca = tls::make_ca();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let s3_site = |endpoint: &str, ca_file: &std::path::Path| {
        format!(
            "[[sites]]\nname = \"aws-1\"\ntype = \"aws_s3\"\nendpoint = \"{endpoint}\"\naccess_key = \"a\"\n\
             secret_key = \"s\"\nbucket = \"replica\"\nca_file = {:?}\n",
            ca_file.display().to_string()
        )
    };
    let azure_site = |ca_file: &std::path::Path| {
        format!(
            "[[sites]]\nname = \"azure-1\"\ntype = \"azure\"\nendpoint = \"https://h/acct\"\naccount = \"acct\"\n\
             key = \"a2V5\"\ncontainer = \"replica\"\nca_file = {:?}\n",
            ca_file.display().to_string()
        )
    };
    let s3_source = |ca_file: &std::path::Path| {
        format!(
            "[source]\ntype = \"s3\"\nendpoint = \"https://h\"\naccess_key = \"a\"\nsecret_key = \"s\"\n\
             buckets = [\"photos\"]\nca_file = {:?}\n",
            ca_file.display().to_string()
        )
    };
    // A CA file in PEM: accepted on every S3 and Azure endpoint.
    let cfg = Config::parse(&format!(
        "{}{}{}",
        s3_source(&ca.ca),
        s3_site("https://h", &ca.ca),
        azure_site(&ca.ca)
    ))
    .unwrap();
    let Some(SourceBackend::S3(src)) = cfg.source.as_ref().map(|s| &s.backend) else {
        panic!("s3 source");
    };
    assert_eq!(src.client.ca_file.as_deref(), Some(ca.ca.as_path()));
    let SiteBackend::Azure(az) = &cfg.sites[1].backend else {
        panic!("azure site");
    };
    assert_eq!(az.ca_file.as_deref(), Some(ca.ca.as_path()));
    // Missing, not PEM, or with an http:// endpoint: named.
    let missing = dir.path().join("missing.pem");
    for (toml, field) in [
        (s3_site("https://h", &missing), "site \"aws-1\".ca_file"),
        (s3_site("https://h", &garbage), "site \"aws-1\".ca_file"),
        (s3_site("http://h", &ca.ca), "site \"aws-1\".ca_file"),
        (azure_site(&garbage), "site \"azure-1\".ca_file"),
        (s3_source(&missing), "source.ca_file"),
    ] {
        let p = problems(&toml);
        assert!(p.iter().any(|m| m.starts_with(field)), "{toml}: {p:?}");
    }
    let p = problems(&s3_site("https://h", &garbage));
    assert!(p.iter().any(|m| m.contains("no PEM certificate")), "{p:?}");
    // A file site has no endpoint, so no ca_file.
    let p = problems(&format!(
        "[[sites]]\nname = \"l\"\ntype = \"file\"\npath = \"/x\"\nca_file = {:?}\n",
        ca.ca.display().to_string()
    ));
    assert!(
        p.iter()
            .any(|m| m.starts_with("site \"l\".ca_file: unknown field")),
        "{p:?}"
    );
}
