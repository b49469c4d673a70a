//! What a user of the `auth` feature compiles: no SQLite (that lives in faultline-sqlite).
#![allow(clippy::expect_used)] // a cargo that cannot run is the test failing

use std::process::Command;

/// Runs `cargo tree` on this crate's normal dependencies with `features` (after
/// `--features`, or `--all-features`).
fn tree(features: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "-p", "faultline-axum"])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo tree prints UTF-8")
}

#[test]
fn the_auth_feature_pulls_in_no_sqlite() {
    let tree = tree(&["--no-default-features", "--features", "auth"]);
    assert!(tree.starts_with("faultline-axum v"), "{tree}");
    assert!(
        tree.contains("sha2 v"),
        "auth's own dependencies are listed: {tree}"
    );
    assert!(!tree.contains("rusqlite"), "{tree}");
    assert!(!tree.contains("libsqlite3-sys"), "{tree}");
}

#[test]
fn no_feature_pulls_in_sqlite() {
    let tree = tree(&["--all-features"]);
    assert!(tree.contains("garde v"), "every feature is on: {tree}");
    assert!(!tree.contains("rusqlite"), "{tree}");
}
