//! The real kubectl and helm binaries are installed and run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::process::Command;

#[test]
fn kubectl_client_version_is_1_35() {
    let out = Command::new(support::tools::kubectl())
        .args(["version", "--client", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["clientVersion"]["minor"], "35");
}

#[test]
fn helm_version_runs() {
    let out = Command::new(support::tools::helm())
        .args(["version", "--short"])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("v4."));
}
