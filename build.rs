//! Build script: only tells tests whether a MongoDB server was given for the `MongoStore`
//! conformance suite, so those tests are reported as ignored (never as passed) without one.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mongodb_test_uri)");
    println!("cargo::rerun-if-env-changed=BACKBEAT_TEST_MONGODB_URI");
    if std::env::var_os("BACKBEAT_TEST_MONGODB_URI").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=mongodb_test_uri");
    }
}
