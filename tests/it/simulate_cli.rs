//! `asg-batch simulate` as a user runs it: JSON keys, and clear errors for bad files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::process::Command;

fn simulate(args: &[&str]) -> (i32, String, String) {
    let out = match Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .arg("simulate")
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run asg-batch: {e}"),
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const NIGHTLY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/manifests/examples/workloads/nightly.yaml"
);

#[test]
fn json_has_one_object_per_policy_with_the_documented_keys() {
    let (code, stdout, stderr) = simulate(&["--workload", NIGHTLY, "--output", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {stdout}"),
    };
    let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
    let policies: Vec<&str> = items.iter().filter_map(|o| o["policy"].as_str()).collect();
    assert_eq!(
        policies,
        [
            "asg-batch",
            "asg-batch-best-fit",
            "asg-batch-no-wait-bounds",
            "asg-batch-before",
            "seed-one-per-instance",
            "seed-single-host"
        ]
    );
    for o in items {
        let mut keys: Vec<&str> = o
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "eta_jobs",
                "eta_median_abs_error_s",
                "instance_hours",
                "lower_bound_instance_hours",
                "makespan_s",
                "max_wait_s",
                "no_wait_bound_instance_hours",
                "peak_instances",
                "policy",
                "queue_writes",
                "utilisation"
            ]
        );
    }
}

#[test]
fn one_policy_and_the_table() {
    let (code, stdout, stderr) = simulate(&["--workload", NIGHTLY, "--policy", "seed-single-host"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("seed-single-host"), "{stdout}");
    assert!(!stdout.contains("asg-batch "), "{stdout}");
}

#[test]
fn a_bad_workload_names_the_problem() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let text = match std::fs::read_to_string(NIGHTLY) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let bad = dir.path().join("bad.yaml");
    let broken = text.replacen("duration: 25m", "duration: 25 minutes", 1);
    if let Err(e) = std::fs::write(&bad, broken) {
        panic!("{e}");
    }
    let path = bad.to_string_lossy().into_owned();
    let (code, _, stderr) = simulate(&["--workload", &path]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("jobs[0] (extract-orders).duration: \"25 minutes\" is not a duration"),
        "{stderr}"
    );

    let (code, _, stderr) = simulate(&["--workload", "/nonexistent/w.yaml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read workload file /nonexistent/w.yaml"),
        "{stderr}"
    );
}
