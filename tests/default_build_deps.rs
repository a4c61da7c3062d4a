//! The default build stays embedded: neither Kafka's nor MongoDB's client is compiled in unless
//! the `kafka` / `mongodb` features ask for them (DESIGN section 1).

use std::process::Command;

fn normal_deps(features: &[&str]) -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "tree", "-e", "normal", "--prefix", "none", "--format", "{p}", "--quiet",
    ]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

fn has(deps: &[String], name: &str) -> bool {
    deps.iter().any(|d| d == name)
}

#[test]
fn default_build_has_neither_rdkafka_nor_mongodb() -> anyhow::Result<()> {
    let default = normal_deps(&[])?;
    assert!(
        has(&default, "sled"),
        "cargo tree lists the normal dependencies: {default:?}"
    );
    for name in ["rdkafka", "rdkafka-sys", "mongodb", "bson"] {
        assert!(!has(&default, name), "{name} is in the default build");
    }
    let kafka = normal_deps(&["kafka"])?;
    assert!(has(&kafka, "rdkafka") && !has(&kafka, "mongodb"));
    let mongo = normal_deps(&["mongodb"])?;
    assert!(has(&mongo, "mongodb") && !has(&mongo, "rdkafka"));
    Ok(())
}
