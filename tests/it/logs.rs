//! Full logs (issue 14 item 7): the agent keeps each attempt's whole output under its
//! data directory and serves it; `asg-batch logs` (the real binary) prints it. Judged by
//! what the job really printed: every numbered line, once, in order.
//!
//! The plain-HTTP loopback endpoint (as `asg-batch dev` runs it) against the suite's
//! server (embedded, or kube-apiserver under `ASG_BATCH_TEST_SERVER=kube-apiserver`); the
//! TLS endpoint with TokenReview/SubjectAccessReview against the real kube-apiserver with
//! the chart's RBAC (its node ClusterRole for the agent, its log-reader roles for users).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asg_batch::agent::AgentConfig;
use asg_batch::agent::config::{LogConfig, ShutdownMode};
use asg_batch::agent::executor::Executor;
use asg_batch::agent::executor::process::ProcessExecutor;
use asg_batch::api::BatchNode;
use kube::api::{Api, DeleteParams};
use support::agent::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A config for node `node` keeping its data (attempts' state and logs) in `data`,
/// serving logs on a loopback port over plain HTTP, as `asg-batch dev` does.
fn log_config(node: &str, data: &Path) -> AgentConfig {
    config(node, "ce-logs")
        .with_data_dir(data)
        .with_logs(LogConfig {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            secure: false,
            ..LogConfig::default()
        })
}

/// The process executor of `config`: state under `<data>/attempts`, logs in its store.
fn process_executor_of(config: &AgentConfig) -> Arc<dyn Executor> {
    Arc::new(
        ProcessExecutor::new(config.attempts_dir(), crate::support::agent::small_shim())
            .with_logs(config.log_store()),
    )
}

/// `asg-batch logs ARGS` with `kubeconfig`.
fn logs_command(kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"));
    cmd.arg("logs")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `asg-batch logs ARGS` to its end.
fn logs(kubeconfig: &Path, args: &[&str]) -> impl std::future::Future<Output = Output> + use<> {
    let mut cmd = logs_command(kubeconfig, args);
    async move {
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("asg-batch logs ends")
            .expect("run asg-batch logs")
    }
}

/// The next line of a follower's output (`None` at its end).
async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .expect("read")
}

/// Its stdout, when it succeeded.
fn stdout_ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "asg-batch logs failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}

fn numbered(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("line {i}")).collect()
}

/// A shell loop printing `line FROM` .. `line TO`, even ones on stderr when `stderr`.
fn print_lines(from: u32, to: u32, stderr: bool) -> String {
    let redirect = if stderr {
        r#"if [ $((i % 2)) -eq 0 ]; then echo "line $i" >&2; else echo "line $i"; fi"#
    } else {
        r#"echo "line $i""#
    };
    format!("i={from}; while [ $i -le {to} ]; do {redirect}; i=$((i+1)); done")
}

async fn wait_ended(
    client: &kube::Client,
    ns: &str,
    name: &str,
    n: u32,
) -> asg_batch::api::BatchJob {
    eventually(
        &format!("attempt {n} of {name} to end"),
        || get_job(client, ns, name),
        |j| attempt(j, n).is_some_and(|a| a.stopped_at.is_some()),
    )
    .await
}

fn tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 100_000)
            .unwrap_or(0)
    )
}

#[tokio::test]
async fn logs_print_a_process_jobs_whole_output_in_order() {
    let s = server_with_crds().await;
    let client = s.client();
    let data = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-all-{}", tag());
    let config = log_config(&node, data.path());
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );

    // 5,000 numbered lines, the even ones on stderr: far more than the status's tail.
    let name = format!("many-lines-{}", tag());
    create_job(
        &client,
        "default",
        &process_job(&name, &print_lines(1, 5000, true)),
    )
    .await;
    bind(&client, "default", &name, &node, 1).await;
    let job = wait_ended(&client, "default", &name, 1).await;
    let tail = attempt(&job, 1)
        .and_then(|a| a.log_tail)
        .unwrap_or_default();
    assert!(
        tail.lines().count() < 100 && tail.ends_with("line 5000"),
        "the status keeps only the tail: {tail}"
    );

    let out = stdout_ok(&logs(&s.kubeconfig(), &["-n", "default", &name]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, numbered(1..=5000), "every line, once, in order");
    // The latest attempt is the default; --attempt 1 is the same one here.
    let first =
        stdout_ok(&logs(&s.kubeconfig(), &["-n", "default", &name, "--attempt", "1"]).await);
    assert_eq!(first, out);

    // Clear errors.
    let o = logs(&s.kubeconfig(), &["-n", "default", "no-such-job"]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("batchjob default/no-such-job not found"),
        "{err}"
    );
    let o = logs(&s.kubeconfig(), &["-n", "default", &name, "--attempt", "2"]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("attempt 2 of batchjob default/") && err.contains("has not started"),
        "{err}"
    );
    agent.stop().await.expect("agent stops");
}

#[tokio::test]
async fn follow_streams_lines_as_they_come_and_ends_with_the_attempt() {
    let s = server_with_crds().await;
    let client = s.client();
    let data = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-f-{}", tag());
    let config = log_config(&node, data.path());
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );

    let go = data.path().join("go");
    let name = format!("follow-{}", tag());
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.1; done; echo second",
        go.display()
    );
    create_job(&client, "default", &process_job(&name, &script)).await;
    // Started before the job has an attempt: -f waits for it to start.
    let mut follower = logs_command(&s.kubeconfig(), &["-f", "-n", "default", &name])
        .spawn()
        .expect("spawn asg-batch logs -f");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    bind(&client, "default", &name, &node, 1).await;

    assert_eq!(
        next_line(&mut lines, "the first line").await.as_deref(),
        Some("first")
    );
    // The job is waiting for the go file: it is still running, and so is the follower.
    assert!(
        attempt(&get_job(&client, "default", &name).await, 1)
            .is_some_and(|a| a.stopped_at.is_none())
    );
    assert!(
        follower.try_wait().expect("try_wait").is_none(),
        "-f still follows"
    );
    std::fs::write(&go, b"").expect("go");
    assert_eq!(
        next_line(&mut lines, "the second line").await.as_deref(),
        Some("second")
    );
    assert_eq!(next_line(&mut lines, "the end of the stream").await, None);
    let status = tokio::time::timeout(Duration::from_secs(30), follower.wait())
        .await
        .expect("-f exits when the attempt ends")
        .expect("wait");
    assert!(status.success(), "{status}");
    agent.stop().await.expect("agent stops");
}

#[tokio::test]
async fn each_attempt_has_its_own_log_and_a_gone_node_is_said_so() {
    let s = server_with_crds().await;
    let client = s.client();
    let data = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-retry-{}", tag());
    let config = log_config(&node, data.path());
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );

    let name = format!("retried-{}", tag());
    let script =
        r#"echo "attempt $AWS_BATCH_JOB_ATTEMPT says hello"; [ "$AWS_BATCH_JOB_ATTEMPT" = 2 ]"#;
    create_job(&client, "default", &process_job(&name, script)).await;
    bind(&client, "default", &name, &node, 1).await;
    let job = wait_ended(&client, "default", &name, 1).await;
    assert_eq!(attempt(&job, 1).and_then(|a| a.exit_code), Some(1));
    // The controller's retry: attempt 2 on the same node.
    bind(&client, "default", &name, &node, 2).await;
    wait_ended(&client, "default", &name, 2).await;

    let kc = s.kubeconfig();
    assert_eq!(
        stdout_ok(&logs(&kc, &["-n", "default", &name, "--attempt", "1"]).await),
        "attempt 1 says hello\n"
    );
    assert_eq!(
        stdout_ok(&logs(&kc, &["-n", "default", &name]).await),
        "attempt 2 says hello\n",
        "the latest attempt by default"
    );

    // The instance goes, and its BatchNode with it: its logs are gone, the tail is not.
    agent.stop().await.expect("agent stops");
    Api::<BatchNode>::all(client.clone())
        .delete(&node, &DeleteParams::default())
        .await
        .expect("delete node");
    let o = logs(&kc, &["-n", "default", &name, "--attempt", "1"]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("the node {node} that ran attempt 1 of batchjob default/{name} is gone; its logs went with it; the status keeps the tail:"))
            && err.contains("attempt 1 says hello"),
        "{err}"
    );
}

#[tokio::test]
async fn an_agent_restart_mid_job_keeps_the_whole_output() {
    let s = server_with_crds().await;
    let client = s.client();
    let data = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-restart-{}", tag());
    // A restart leaves the attempt running for the next agent process.
    let config = log_config(&node, data.path()).with_shutdown_mode(ShutdownMode::Leave);
    let first = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );

    let go = data.path().join("go");
    let name = format!("restarted-{}", tag());
    let script = format!(
        "{}; while [ ! -e {} ]; do sleep 0.1; done; {}",
        print_lines(1, 100, false),
        go.display(),
        print_lines(101, 200, false)
    );
    create_job(&client, "default", &process_job(&name, &script)).await;
    bind(&client, "default", &name, &node, 1).await;
    let kc = s.kubeconfig();
    let half = eventually(
        "the first 100 lines in the log",
        || logs(&kc, &["-n", "default", &name]),
        |o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("line 100\n"),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&half.stdout)
            .lines()
            .collect::<Vec<_>>(),
        numbered(1..=100)
    );
    first
        .stop()
        .await
        .expect("first agent stops, leaving the attempt running");

    let second = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );
    std::fs::write(&go, b"").expect("go");
    wait_ended(&client, "default", &name, 1).await;
    let out = stdout_ok(&logs(&kc, &["-n", "default", &name]).await);
    assert_eq!(out.lines().collect::<Vec<_>>(), numbered(1..=200));
    second.stop().await.expect("agent stops");
}

#[tokio::test]
async fn a_log_over_its_cap_keeps_its_beginning_and_says_so() {
    let s = server_with_crds().await;
    let client = s.client();
    let data = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-cap-{}", tag());
    let mut config = log_config(&node, data.path());
    config.logs.max_bytes = 1000;
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );
    let name = format!("chatty-{}", tag());
    create_job(
        &client,
        "default",
        &process_job(&name, &print_lines(1, 2000, false)),
    )
    .await;
    bind(&client, "default", &name, &node, 1).await;
    let job = wait_ended(&client, "default", &name, 1).await;
    let out = stdout_ok(&logs(&s.kubeconfig(), &["-n", "default", &name]).await);
    let all = numbered(1..=2000).join("\n") + "\n";
    let (kept, note) = out.split_at(1000);
    assert_eq!(kept, &all[..1000], "the first 1000 bytes as printed");
    assert!(
        note.contains("output truncated") && note.contains("first 1000 bytes"),
        "{note}"
    );
    // The status's tail is still the real end of the output.
    let tail = attempt(&job, 1)
        .and_then(|a| a.log_tail)
        .unwrap_or_default();
    assert!(tail.ends_with("line 2000"), "{tail}");
    agent.stop().await.expect("agent stops");
}

mod containers {
    use super::*;
    use asg_batch::agent::executor::docker::DockerExecutor;
    use asg_batch::api::common::{ContainerSpec, HostVolume, JobTemplate, MountPoint, Volume};
    use std::os::unix::fs::PermissionsExt;
    use support::podman::{PodmanService, TEST_IMAGE, podman_available};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_container_jobs_whole_output_survives_an_agent_restart_and_the_container() {
        assert!(podman_available(), "podman is required (make test-deps)");
        let podman = PodmanService::start();
        let docker = podman.docker().await;
        let s = server_with_crds().await;
        let client = s.client();
        let data = tempfile::tempdir().expect("data dir");
        let node = format!("i-0logs{}", std::process::id());
        let config = log_config(&node, data.path())
            .with_executor(asg_batch::api::compute_environment::Executor::Docker)
            .with_shutdown_mode(ShutdownMode::Leave);
        let executor = || async {
            Arc::new(
                DockerExecutor::connect(&podman.socket.display().to_string())
                    .await
                    .expect("connect")
                    .with_network_mode("none")
                    .with_logs(config.log_store()),
            ) as Arc<dyn Executor>
        };
        let first = TestAgent::start(client.clone(), config.clone(), executor().await, None);

        let go = tempfile::tempdir().expect("go dir");
        std::fs::set_permissions(go.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let name = format!("ctr-logs-{}", tag());
        let script = format!(
            "{}; while [ ! -e /go/go ]; do sleep 0.1; done; {}",
            print_lines(1, 1500, false),
            print_lines(1501, 3000, false)
        );
        let mut job = process_job(&name, "unused");
        job.spec.template = JobTemplate {
            container: Some(Box::new(ContainerSpec {
                image: TEST_IMAGE.into(),
                command: vec!["sh".into(), "-c".into()],
                args: vec![script],
                env: vec![],
                working_dir: None,
                settings: asg_batch::api::common::ContainerSettings {
                    volumes: vec![Volume {
                        name: "go".into(),
                        host: HostVolume {
                            source_path: go.path().display().to_string(),
                        },
                    }],
                    mount_points: vec![MountPoint {
                        source_volume: "go".into(),
                        container_path: "/go".into(),
                        read_only: true,
                    }],
                    ..Default::default()
                },
            })),
            ..Default::default()
        };
        let uid = create_job(&client, "default", &job)
            .await
            .metadata
            .uid
            .expect("uid");
        bind(&client, "default", &name, &node, 1).await;
        let kc = s.kubeconfig();
        eventually(
            "the first 1500 lines in the log",
            || logs(&kc, &["-n", "default", &name]),
            |o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("line 1500\n"),
        )
        .await;
        // The agent crashes mid-job; the next one takes the container over.
        first.crash().await;
        let second = TestAgent::start(client.clone(), config.clone(), executor().await, None);
        std::fs::write(go.path().join("go"), b"").expect("go");
        let ended = wait_ended(&client, "default", &name, 1).await;
        // Taken over and seen to its end, not reported lost (the new agent once took a
        // container Podman showed in its transient `stopped` state for one that was gone).
        assert_eq!(
            attempt(&ended, 1).and_then(|a| a.exit_code),
            Some(0),
            "the container's own exit code: {:?}",
            attempt(&ended, 1)
        );
        // The ending was reported: the container is removed, the log stays.
        let container = format!("asgb-{name}-{uid}-a1");
        let _ = eventually(
            "the container to be removed",
            || docker.inspect_container(&container, None),
            std::result::Result::is_err,
        )
        .await;
        let out = stdout_ok(&logs(&kc, &["-n", "default", &name]).await);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            numbered(1..=3000),
            "every line once, in order, across the restart"
        );
        second.stop().await.expect("agent stops");
    }
}

/// The TLS endpoint on the real kube-apiserver: the agent runs as its node identity with
/// the chart's node ClusterRole; users get the chart's log-reader roles (or not).
mod authorized {
    use super::*;
    use crate::support::kube::RealKube;
    use crate::support::manifests::read_documents;

    /// The chart's ClusterRoles and ClusterRoleBindings (from `manifests/install.yaml`).
    async fn apply_chart_roles(real: &RealKube) {
        let docs = read_documents(&support::repo_root().join("manifests/install.yaml"));
        let mut yaml = String::new();
        for d in docs.iter().filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding")
            )
        }) {
            yaml.push_str("---\n");
            yaml.push_str(&serde_yaml::to_string(d).unwrap());
        }
        let o = real
            .kubectl_stdin(
                &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                Some(&yaml),
            )
            .await;
        assert!(
            o.status.success(),
            "apply the chart's roles: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    async fn kubectl_ok(real: &RealKube, args: &[&str]) {
        let o = real.kubectl(args).await;
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[tokio::test]
    async fn only_callers_allowed_batchjobs_log_read_a_log() {
        let real = RealKube::shared();
        real.install_crds().await;
        apply_chart_roles(real).await;
        let ns = real.namespace("logs").await;
        let admin = real.client();
        let data = tempfile::tempdir().expect("data dir");
        let node = format!("i-0logsauth{}", std::process::id());
        // The agent as its node: user asg-batch:node:<node> in asg-batch:nodes.
        let node_client = crate::support::kube::client_from_kubeconfig(&real.kubeconfig_for_user(
            &format!("logs-node-{}", tag()),
            &format!("asg-batch:node:{node}"),
            &["asg-batch:nodes"],
        ));
        let config = config(&node, "ce-logs")
            .with_data_dir(data.path())
            .with_logs(LogConfig {
                listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                secure: true,
                ..LogConfig::default()
            });
        let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let mut config = config;
        config.metrics_bind_address = Some(metrics_addr);
        let agent = TestAgent::start(
            node_client,
            config.clone(),
            process_executor_of(&config),
            None,
        );
        let name = "secret-output";
        create_job(&admin, &ns, &process_job(name, "echo only for readers")).await;
        eventually(
            "the node to be registered",
            || get_node(&admin, &node),
            |n| {
                n.as_ref()
                    .and_then(|n| n.status.as_ref())
                    .is_some_and(|s| s.log_endpoint.is_some())
            },
        )
        .await;
        bind(&admin, &ns, name, &node, 1).await;
        wait_ended(&admin, &ns, name, 1).await;
        let endpoint = get_node(&admin, &node)
            .await
            .and_then(|n| n.status)
            .and_then(|s| s.log_endpoint)
            .expect("log endpoint");
        assert!(
            endpoint.url.starts_with("https://127.0.0.1:"),
            "{endpoint:?}"
        );
        assert!(
            endpoint
                .certificate
                .as_deref()
                .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
        );

        // reader: the chart's log-reader role in the namespace and node-reader for the cluster.
        // viewer: may read the job and the node, not its log.
        kubectl_ok(
            real,
            &[
                "-n",
                &ns,
                "create",
                "rolebinding",
                "reader-logs",
                "--clusterrole",
                "asg-batch-log-reader",
                &format!("--serviceaccount={ns}:reader"),
            ],
        )
        .await;
        for sa in ["reader", "viewer"] {
            kubectl_ok(
                real,
                &[
                    "create",
                    "clusterrolebinding",
                    &format!("{ns}-{sa}-nodes"),
                    "--clusterrole",
                    "asg-batch-node-reader",
                    &format!("--serviceaccount={ns}:{sa}"),
                ],
            )
            .await;
        }
        kubectl_ok(
            real,
            &[
                "-n",
                &ns,
                "create",
                "role",
                "job-viewer",
                "--verb=get",
                "--resource=batchjobs.asgbatch.io",
            ],
        )
        .await;
        kubectl_ok(
            real,
            &[
                "-n",
                &ns,
                "create",
                "rolebinding",
                "viewer-jobs",
                "--role",
                "job-viewer",
                &format!("--serviceaccount={ns}:viewer"),
            ],
        )
        .await;
        let reader_token = real.mint_token(&ns, "reader").await;
        let reader = real.kubeconfig_for_token(&format!("{ns}-reader"), &reader_token);
        // The same user through an exec credential plugin (as `aws eks get-token`).
        let credential = data.path().join("credential.json");
        std::fs::write(
            &credential,
            serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": reader_token},
            })
            .to_string(),
        )
        .unwrap();
        let reader_exec = data.path().join("reader-exec.kubeconfig");
        std::fs::write(
            &reader_exec,
            std::fs::read_to_string(&reader).unwrap().replace(
                &format!("    token: {reader_token}"),
                &format!(
                    "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: cat\n      args: [\"{}\"]\n      interactiveMode: Never",
                    credential.display()
                ),
            ),
        )
        .unwrap();
        let viewer = real.kubeconfig_for_token(
            &format!("{ns}-viewer"),
            &real.mint_token(&ns, "viewer").await,
        );

        // RBAC takes effect at once on kube-apiserver, but wait for it like a user would.
        let out = eventually(
            "the reader to read the log",
            || logs(&reader, &["-n", &ns, name]),
            |o| o.status.success(),
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "only for readers\n");
        let out = stdout_ok(&logs(&reader_exec, &["-n", &ns, name]).await);
        assert_eq!(out, "only for readers\n", "the token of an exec plugin");

        let o = logs(&viewer, &["-n", &ns, name]).await;
        assert!(!o.status.success(), "the viewer must not read the log");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("403 Forbidden")
                && err.contains(&format!("system:serviceaccount:{ns}:viewer"))
                && err.contains("batchjobs/log"),
            "{err}"
        );
        assert!(
            o.stdout.is_empty(),
            "nothing of the log: {:?}",
            String::from_utf8_lossy(&o.stdout)
        );

        // Straight to the agent: no token, an unknown token (401); the pinned certificate.
        let tls = asg_batch::agent::logtls::client_config(endpoint.certificate.as_deref().unwrap())
            .unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let url = format!("{}/logs/{ns}/{name}/1", endpoint.url);
        let none = http.get(&url).send().await.expect("request");
        assert_eq!(none.status().as_u16(), 401);
        let bogus = http
            .get(&url)
            .bearer_auth("not-a-token")
            .send()
            .await
            .expect("request");
        assert_eq!(bogus.status().as_u16(), 401);
        assert!(!bogus.text().await.unwrap().contains("only for readers"));
        // Another certificate is refused by the client: the endpoint's is pinned.
        let (_, other) = asg_batch::agent::logtls::server_config("127.0.0.1").unwrap();
        let wrong = reqwest::Client::builder()
            .tls_backend_preconfigured(asg_batch::agent::logtls::client_config(&other).unwrap())
            .build()
            .unwrap();
        assert!(
            wrong.get(&url).send().await.is_err(),
            "a certificate that is not the endpoint's"
        );
        // The agent counts what it answered.
        let scraped = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics");
        let count = |code: &str| -> u64 {
            scraped
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "asg_batch_agent_log_requests_total{{code=\"{code}\"}} "
                    ))
                })
                .map_or(0, |v| v.trim().parse().unwrap())
        };
        assert_eq!((count("401"), count("403")), (2, 1), "{scraped}");
        assert!(count("200") >= 2, "{scraped}");
        agent.stop().await.expect("agent stops");
    }
}

/// `asg-batch dev` as a user runs it: its in-process agents serve their logs on loopback,
/// and `asg-batch logs -f` against dev's kubeconfig streams a job's whole output.
#[tokio::test]
async fn dev_serves_its_jobs_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("jobs.yaml");
    let env_and_queue = support::dev_demo_environment_and_queue();
    std::fs::write(
        &manifest,
        format!(
            "{env_and_queue}\n---\napiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\n\
             metadata: {{name: counter, namespace: default}}\nspec:\n  queue: dev\n  \
             process: {{command: [sh, -c, '{}']}}\n  \
             resources: {{cpu: 250m, memory: 32Mi}}\n",
            print_lines(1, 3000, true).replace('\'', "''")
        ),
    )
    .expect("write manifest");
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args(["dev", "--listen", "127.0.0.1:0", "-f"])
        .arg(&manifest)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start dev");
    let mut stdout = BufReader::new(dev.stdout.take().expect("stdout")).lines();
    let kubeconfig = loop {
        let line = next_line(&mut stdout, "dev's banner")
            .await
            .expect("dev exited early");
        if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
            break std::path::PathBuf::from(path);
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    // -f from before the job has an attempt (an instance boots first) to its end.
    let out = stdout_ok(&logs(&kubeconfig, &["-f", "counter"]).await);
    assert_eq!(out.lines().collect::<Vec<_>>(), numbered(1..=3000));
    let node: BatchNode = {
        let client = support::kube::client_from_kubeconfig(&kubeconfig);
        let job = get_job(&client, "default", "counter").await;
        let node = attempt(&job, 1).and_then(|a| a.node).expect("node");
        get_node(&client, &node).await.expect("node")
    };
    let endpoint = node
        .status
        .and_then(|s| s.log_endpoint)
        .expect("log endpoint");
    assert!(
        endpoint.url.starts_with("http://127.0.0.1:") && endpoint.certificate.is_none(),
        "dev serves plain HTTP on loopback: {endpoint:?}"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(dev.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let status = tokio::time::timeout(Duration::from_secs(60), dev.wait())
        .await
        .expect("dev stops")
        .expect("wait");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn logs_of_deleted_jobs_and_past_their_retention_are_deleted() {
    let s = server_with_crds().await;
    let client = s.client();
    let sweep = |node: &str, data: &Path, retention: Duration| {
        let mut c = log_config(node, data);
        c.logs.retention = retention;
        c.logs.sweep_every = Duration::from_millis(200);
        c
    };
    let log_of = |data: &Path, job: &asg_batch::api::BatchJob| {
        data.join("logs").join(format!(
            "asgb-{}-{}-a1.log",
            job.metadata.name.as_deref().unwrap(),
            job.metadata.uid.as_deref().unwrap()
        ))
    };
    // Kept a day: only the log of the job that is deleted goes.
    let kept = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-sweep-{}", tag());
    let config = sweep(&node, kept.path(), Duration::from_secs(86_400));
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );
    let (stays, goes) = (format!("stays-{}", tag()), format!("goes-{}", tag()));
    let mut ended = Vec::new();
    for name in [&stays, &goes] {
        create_job(
            &client,
            "default",
            &process_job(name, "echo kept for a while"),
        )
        .await;
        bind(&client, "default", name, &node, 1).await;
        ended.push(wait_ended(&client, "default", name, 1).await);
    }
    for job in &ended {
        assert!(
            log_of(kept.path(), job).exists(),
            "{:?}",
            log_of(kept.path(), job)
        );
    }
    Api::<asg_batch::api::BatchJob>::namespaced(client.clone(), "default")
        .delete(&goes, &DeleteParams::default())
        .await
        .expect("delete job");
    support::wait_until_async(
        "the deleted job's log to be swept",
        Duration::from_secs(60),
        || !log_of(kept.path(), &ended[1]).exists(),
    )
    .await;
    // The same sweep looked at the other one: its job is there and it is young.
    assert!(log_of(kept.path(), &ended[0]).exists());
    agent.stop().await.expect("agent stops");

    // No retention: an ended attempt's log goes at the next sweep, its job still there.
    let brief = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-brief-{}", tag());
    let config = sweep(&node, brief.path(), Duration::ZERO);
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        process_executor_of(&config),
        None,
    );
    let name = format!("brief-{}", tag());
    create_job(&client, "default", &process_job(&name, "echo soon gone")).await;
    bind(&client, "default", &name, &node, 1).await;
    let job = wait_ended(&client, "default", &name, 1).await;
    support::wait_until_async(
        "the log past its retention to be swept",
        Duration::from_secs(60),
        || !log_of(brief.path(), &job).exists(),
    )
    .await;
    agent.stop().await.expect("agent stops");
}

/// `asg-batch agent` as a user starts it, with the log flags.
#[tokio::test]
async fn the_agent_command_serves_logs_and_refuses_unsafe_log_flags() {
    let s = server_with_crds().await;
    let client = s.client();
    let ce: asg_batch::api::ComputeEnvironment = serde_json::from_value(serde_json::json!({
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "ComputeEnvironment",
        "metadata": {"name": "logs-cli"},
        "spec": {
            "local": {"executor": "process"},
            "minInstances": 0,
            "maxInstances": 1,
            "instanceShape": {"cpu": "1", "memory": "1Gi"}
        }
    }))
    .unwrap();
    Api::<asg_batch::api::ComputeEnvironment>::all(client.clone())
        .create(&Default::default(), &ce)
        .await
        .expect("create ce");
    let data = tempfile::tempdir().expect("data dir");
    let node = format!("local-logs-cli-{}", tag());
    let agent = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"));
        cmd.args([
            "agent",
            "--compute-environment",
            "logs-cli",
            "--instance-id",
            &node,
        ])
        .args([
            "--heartbeat-interval",
            "1",
            "--on-shutdown",
            "cancel",
            "--data-dir",
        ])
        .arg(data.path())
        .args(extra)
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        cmd
    };
    for (flags, says) in [
        (
            &["--log-listen", "0.0.0.0:0"][..],
            "pass --log-advertise-address",
        ),
        (
            &["--log-listen", "192.0.2.1:0", "--log-insecure-loopback"][..],
            "--log-listen must be a loopback address",
        ),
    ] {
        let o = tokio::time::timeout(Duration::from_secs(60), agent(flags).output())
            .await
            .expect("the agent refuses in time")
            .expect("run agent");
        assert!(!o.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
    }

    let mut child = agent(&["--log-listen", "127.0.0.1:0", "--log-insecure-loopback"])
        .spawn()
        .expect("start agent");
    let name = format!("from-the-agent-command-{}", tag());
    create_job(
        &client,
        "default",
        &process_job(&name, &print_lines(1, 1000, true)),
    )
    .await;
    bind(&client, "default", &name, &node, 1).await;
    let out = stdout_ok(&logs(&s.kubeconfig(), &["-f", "-n", "default", &name]).await);
    assert_eq!(out.lines().collect::<Vec<_>>(), numbered(1..=1000));
    // The log is where the flags put it.
    let uid = get_job(&client, "default", &name)
        .await
        .metadata
        .uid
        .unwrap();
    assert!(
        data.path()
            .join("logs")
            .join(format!("asgb-{name}-{uid}-a1.log"))
            .exists()
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("agent stops")
        .expect("wait");
    assert!(status.success(), "{status}");
}
