//! The release binary carries no test or bench seeding command (issue 14): seeding a store for
//! the API load bench is code under `benches/`, not a hidden `backbeat seed-failed`.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn seed_failed_is_not_a_command_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\npath = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backbeat"))
        .args(["seed-failed", "--count", "1", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    // clap's usage error: an unknown subcommand, nothing written.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand"), "{err}");
    assert!(!dir.path().join("data").exists());
}
