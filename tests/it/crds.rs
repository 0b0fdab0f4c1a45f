//! `crds/` must equal what the Rust types generate, and `asg-batch crds` must print it.
//! Regenerate with `make crds`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::api::crds;
use std::process::Command;

/// `dir` (relative to the repository) holds exactly the generated CRDs; with
/// `ASG_BATCH_BLESS_CRDS` set it is rewritten first.
fn check_crd_dir(dir: &str) {
    let dir = support::repo_root().join(dir);
    let bless = std::env::var_os("ASG_BATCH_BLESS_CRDS").is_some();
    let mut expected_files = Vec::new();
    for crd in crds::all() {
        let name = crds::file_name(&crd);
        let generated = crds::to_yaml(&crd).expect("serialise CRD");
        let path = dir.join(&name);
        if bless {
            std::fs::create_dir_all(&dir).expect("create the CRD directory");
            std::fs::write(&path, &generated).expect("write CRD");
        }
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make crds`)", path.display()));
        assert!(
            on_disk == generated,
            "{} is stale: run `make crds` and commit the result",
            path.display()
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the CRD directory")
        .filter_map(std::result::Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present,
        expected_files,
        "{} holds files the code does not generate",
        dir.display()
    );
}

#[test]
fn checked_in_crds_match_the_code() {
    check_crd_dir("crds");
}

#[test]
fn the_helm_chart_carries_the_same_crds() {
    check_crd_dir("charts/asg-batch/crds");
}

#[test]
fn every_kind_has_the_documented_shape() {
    let all = crds::all();
    let by_kind = |k: &str| all.iter().find(|c| c.spec.names.kind == k).expect(k);
    for (kind, scope, short) in [
        ("ComputeEnvironment", "Cluster", "ce"),
        ("JobQueue", "Cluster", "jq"),
        ("JobDefinition", "Namespaced", "jd"),
        ("BatchJob", "Namespaced", "bj"),
        ("BatchNode", "Cluster", "bn"),
    ] {
        let crd = by_kind(kind);
        assert_eq!(crd.spec.group, "asgbatch.io");
        assert_eq!(crd.spec.scope, scope, "{kind} scope");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..]),
            "{kind}"
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["asgbatch".to_string()][..]),
            "{kind}"
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has /status"
        );
    }
    let columns = |kind: &str| -> Vec<String> {
        by_kind(kind).spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(
        columns("BatchJob"),
        [
            "Queue",
            "Phase",
            "Node",
            "Attempts",
            "Position",
            "Est-Start",
            "Age"
        ]
    );
    assert_eq!(
        columns("ComputeEnvironment"),
        ["Desired", "InService", "Busy", "Min", "Max", "Age"]
    );
    assert_eq!(
        columns("BatchNode"),
        [
            "ComputeEnvironment",
            "Phase",
            "CPU-Used",
            "CPU",
            "Jobs",
            "Age"
        ]
    );
    assert_eq!(
        columns("JobQueue"),
        ["Priority", "State", "Runnable", "Running", "Age"]
    );
}

#[test]
fn crds_command_prints_every_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .arg("crds")
        .output()
        .expect("run asg-batch crds");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text, crds::all_yaml().expect("yaml"));
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    assert_eq!(docs.len(), 5);
    for doc in docs {
        assert_eq!(doc["kind"].as_str(), Some("CustomResourceDefinition"));
    }
}
