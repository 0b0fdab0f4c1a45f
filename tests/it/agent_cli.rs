//! `asg-batch agent` as a user starts it: flags, the compute environment read from the
//! API server, a bound job run to its end, a clean exit on SIGTERM, plain errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use asg_batch::api::batch_job::BatchJob;
use asg_batch::api::compute_environment::ComputeEnvironment;
use kube::api::{Api, PostParams};
use support::agent::*;

fn local_ce(name: &str) -> ComputeEnvironment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "ComputeEnvironment",
        "metadata": {"name": name},
        "spec": {
            "local": {"executor": "process"},
            "minInstances": 0,
            "maxInstances": 2,
            "instanceShape": {"cpu": "3", "memory": "6Gi"}
        }
    }))
    .expect("compute environment")
}

fn agent_command(s: &support::agent::ServerUnderTest, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"));
    cmd.arg("agent")
        .args(args)
        .env("KUBECONFIG", s.kubeconfig())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn the_agent_command_registers_runs_a_bound_job_and_stops_on_sigterm() {
    let s = server_with_crds().await;
    let client = s.client();
    Api::<ComputeEnvironment>::all(client.clone())
        .create(&PostParams::default(), &local_ce("cli"))
        .await
        .expect("create ce");
    let data = tempfile::tempdir().expect("data dir");
    let metrics_addr = format!("127.0.0.1:{}", support::free_port());
    let mut child = agent_command(
        &s,
        &[
            "--compute-environment",
            "cli",
            "--instance-id",
            "Local-CLI-1",
            "--heartbeat-interval",
            "1",
            "--data-dir",
            &data.path().display().to_string(),
            "--metrics-bind-address",
            &metrics_addr,
        ],
    )
    .spawn()
    .expect("start agent");

    // Registered under the lower-cased instance id, with the environment's shape and the
    // executor its spec names.
    let node = eventually(
        "the BatchNode",
        || {
            let c = client.clone();
            async move { get_node(&c, "local-cli-1").await }
        },
        std::option::Option::is_some,
    )
    .await
    .expect("node");
    assert_eq!(node.spec.instance_id, "Local-CLI-1");
    assert_eq!(node.spec.capacity.cpu.millicores().expect("cpu"), 3000);
    assert_eq!(node.spec.capacity.memory.bytes().expect("memory"), 6 << 30);
    assert_eq!(
        serde_json::to_value(node.spec.executor).expect("json"),
        "process"
    );

    // The test plays the controller: bind a job; the agent runs it and reports.
    create_job(
        &client,
        "default",
        &process_job("cli-job", "echo from-cli; exit 7"),
    )
    .await;
    bind(&client, "default", "cli-job", "local-cli-1", 1).await;
    let job: BatchJob = eventually(
        "the attempt's report",
        || {
            let c = client.clone();
            async move { get_job(&c, "default", "cli-job").await }
        },
        |j| attempt(j, 1).is_some_and(|a| a.stopped_at.is_some()),
    )
    .await;
    let a = attempt(&job, 1).expect("attempt 1");
    assert_eq!(a.exit_code, Some(7));
    assert!(a.log_tail.unwrap_or_default().contains("from-cli"));

    // Its metrics: heartbeats landing, accepting work, ready.
    let metrics = eventually(
        "agent metrics with a heartbeat",
        || {
            let addr = metrics_addr.clone();
            async move { http_get(&addr, "/metrics").await }
        },
        |m| {
            m.lines().any(|l| {
                l.strip_prefix("asg_batch_agent_last_heartbeat_timestamp_seconds ")
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .is_some_and(|t| t > 0)
            })
        },
    )
    .await;
    assert!(
        metrics.contains("asg_batch_agent_accepting_attempts 1"),
        "{metrics}"
    );
    assert!(
        http_get(&metrics_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("agent exits after SIGTERM")
        .expect("wait");
    assert!(out.success(), "clean exit: {out:?}");
}

#[tokio::test]
async fn the_agent_command_fails_plainly() {
    let s = server_with_crds().await;
    // A compute environment that does not exist.
    let out = agent_command(
        &s,
        &["--compute-environment", "nope", "--instance-id", "i-1"],
    )
    .output()
    .await
    .expect("run agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("asg-batch agent: compute environment nope: not found"),
        "{err}"
    );

    // A capacity flag that does not parse is refused before anything starts.
    let out = agent_command(
        &s,
        &[
            "--compute-environment",
            "x",
            "--instance-id",
            "i-1",
            "--capacity",
            "cpu=4",
        ],
    )
    .output()
    .await
    .expect("run agent");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both cpu and memory are needed"), "{err}");

    // Authentication flags: an EKS cluster needs the server's URL; a missing CA file or a
    // bad URL is named.
    for (args, says) in [
        (
            &["--eks-cluster-name", "prod"][..],
            "--kube-server <KUBE_SERVER>",
        ),
        (
            &[
                "--eks-cluster-name",
                "prod",
                "--kube-server",
                "https://x",
                "--kube-ca-file",
                "/nonexistent/ca.crt",
            ][..],
            "--kube-ca-file /nonexistent/ca.crt: no such file",
        ),
        (
            &["--kube-token-file", "/t", "--kube-server", "http://"][..],
            "--kube-server \"http://\"",
        ),
    ] {
        let out = agent_command(&s, &[&["--compute-environment", "x"][..], args].concat())
            .output()
            .await
            .expect("run agent");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A plain HTTP GET on loopback; the whole answer, or "" when it cannot connect.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    if s.write_all(req.as_bytes()).await.is_ok() {
        let _ = s.read_to_string(&mut out).await;
    }
    out
}
