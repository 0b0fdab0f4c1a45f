//! The long-running commands as a user starts them, each as the real binary:
//! `asg-batch dev` (the embedded default) and `asg-batch controller` + `asg-batch agent`
//! against an API server, checked with kubectl too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_asg-batch"));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `asg-batch dev --exit-when-done` on a free port in `dir` with `extra` flags, to
/// its end (180 s at most).
async fn dev_until_done(dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(180),
        binary()
            .args(["dev", "--listen", "127.0.0.1:0", "--exit-when-done"])
            .args(extra)
            .current_dir(dir)
            .output(),
    )
    .await
    .expect("dev finishes")
    .expect("run dev")
}

async fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait")
}

/// Runs kubectl (without blocking the test's runtime, which may host the API server).
async fn try_kubectl(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
) -> Result<String, String> {
    let out = Command::new(support::tools::kubectl())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", dir.join("kube-cache"))
        .env("HOME", dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kubectl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn kubectl(kubeconfig: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> String {
    try_kubectl(kubeconfig, dir, args)
        .await
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// Polls kubectl until it succeeds with output satisfying `ready` (90 s at most).
async fn kubectl_until(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = try_kubectl(kubeconfig, dir, args).await;
        if let Ok(out) = &out
            && ready(out)
        {
            return out.clone();
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never got there: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn dev_runs_the_demo_to_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dev_until_done(dir.path(), &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "export KUBECONFIG={}",
            std::fs::canonicalize(dir.path().join("asg-batch-dev.kubeconfig"))
                .expect("kubeconfig written")
                .display()
        )),
        "{stdout}"
    );
    for expected in [
        "applied 6 objects from the built-in demo",
        "default/hello: Succeeded, exit code 0, output: hello from job",
        // Exit code 3 matched the RETRY rule; the second attempt worked.
        "default/flaky: Succeeded, exit code 0, 2 attempts, output: attempt 2 worked",
        "default/render-2: Succeeded, exit code 0, output: rendering part 2 of 3",
        "default/render: Succeeded",
        "default/publish: Succeeded, exit code 0, output: all parts rendered, publishing",
        "all 7 jobs finished: 7 succeeded, 0 failed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn dev_with_a_failing_job_says_so_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("jobs.yaml");
    // The demo's environment and queue, and one job that fails for good.
    let env_and_queue = support::dev_demo_environment_and_queue();
    std::fs::write(
        &manifest,
        format!(
            "{env_and_queue}\n---\napiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\n\
             metadata: {{name: broken, namespace: default}}\nspec:\n  queue: dev\n  \
             process: {{command: [sh, -c, 'echo no input; exit 9']}}\n  \
             resources: {{cpu: 250m, memory: 32Mi}}\n"
        ),
    )
    .expect("write manifest");
    let out = dev_until_done(dir.path(), &["-f".as_ref(), manifest.as_os_str()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("default/broken: Failed, exit code 9, output: no input"),
        "{stdout}"
    );
    assert!(
        stderr.contains("asg-batch dev: 1 of 1 jobs failed"),
        "{stderr}"
    );

    // A manifest that is not one is refused before anything runs, naming the document.
    std::fs::write(&manifest, "apiVersion: v1\nmetadata: {name: x}\n").expect("write");
    let out = binary()
        .args(["dev", "--listen", "127.0.0.1:0", "-f"])
        .arg(&manifest)
        .current_dir(dir.path())
        .output()
        .await
        .expect("run dev");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jobs.yaml document 1: no kind"), "{stderr}");
}

/// dev applies the jobs while the controller and the agents already run: it still waits
/// for every one of them (`progress::tests` covers a job deleted before the last one is
/// applied), and a job the API server refuses stops it with the document named.
#[tokio::test]
async fn dev_applies_jobs_while_it_runs_and_waits_for_each_of_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("jobs.yaml");
    let env_and_queue = support::dev_demo_environment_and_queue();
    let job = |name: &str, extra: &str| {
        format!(
            "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\n\
             metadata: {{name: {name}, namespace: default}}\nspec:\n  queue: dev\n  \
             process: {{command: [sh, -c, 'echo ran {name}']}}\n  \
             resources: {{cpu: 100m, memory: 16Mi}}\n{extra}"
        )
    };
    let mut docs = vec![env_and_queue.clone()];
    docs.extend((0..40).map(|i| job(&format!("j-{i}"), "")));
    std::fs::write(&manifest, docs.join("\n---\n")).expect("write manifest");
    let out = dev_until_done(dir.path(), &["-f".as_ref(), manifest.as_os_str()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Every job ran, once, and was seen to the end.
    for i in 0..40 {
        let done = format!("default/j-{i}: Succeeded, exit code 0, output: ran j-{i}\n");
        assert_eq!(stdout.matches(&done).count(), 1, "{done:?} in:\n{stdout}");
    }
    assert!(stdout.contains("applied 42 objects from"), "{stdout}");
    assert!(
        stdout.contains("all 40 jobs finished: 40 succeeded, 0 failed"),
        "{stdout}"
    );

    // A job the API server refuses (`lots` is not a quantity) ends the run with an error naming its document; dev exits non-zero.
    let mut docs = vec![env_and_queue];
    docs.extend((0..5).map(|i| job(&format!("j-{i}"), "")));
    docs.push(job("refused", "").replace("cpu: 100m", "cpu: lots"));
    docs.extend((5..10).map(|i| job(&format!("j-{i}"), "")));
    std::fs::write(&manifest, docs.join("\n---\n")).expect("write manifest");
    let out = dev_until_done(dir.path(), &["-f".as_ref(), manifest.as_os_str()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("jobs.yaml document 8: BatchJob refused:"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dev_answers_kubectl_while_it_runs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let mut child = binary()
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .spawn()
        .expect("start dev");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Wait for the banner, then use the kubeconfig it names.
    let kubeconfig = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("banner")
            .expect("read")
            .expect("dev exited early");
        if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
            break std::path::PathBuf::from(path);
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let jobs = kubectl_until(
        &kubeconfig,
        dir.path(),
        &[
            "get",
            "bj",
            "-o",
            "custom-columns=NAME:.metadata.name,PHASE:.status.phase",
        ],
        |out| out.lines().filter(|l| l.contains("Succeeded")).count() >= 7,
    )
    .await;
    assert!(jobs.contains("publish"), "{jobs}");
    // publish started only after every child of render had stopped.
    let times = |job: &'static str, field: &'static str| {
        let (kubeconfig, dir) = (kubeconfig.clone(), dir.path().to_path_buf());
        async move {
            kubectl(
                &kubeconfig,
                &dir,
                &[
                    "get",
                    "bj",
                    job,
                    "-o",
                    &format!("jsonpath={{.status.attempts[0].{field}}}"),
                ],
            )
            .await
        }
    };
    let published = jiff::Timestamp::from_str(&times("publish", "startedAt").await).expect("time");
    for child in ["render-0", "render-1", "render-2"] {
        let stopped = jiff::Timestamp::from_str(&times(child, "stoppedAt").await).expect("time");
        assert!(
            stopped <= published,
            "{child} stopped {stopped}, publish started {published}"
        );
    }
    let nodes = kubectl(&kubeconfig, dir.path(), &["get", "bn", "-o", "name"]).await;
    assert!(
        nodes.contains("batchnode.asgbatch.io/local-dev-"),
        "{nodes}"
    );
    let ce = kubectl(
        &kubeconfig,
        dir.path(),
        &[
            "get",
            "ce",
            "dev",
            "-o",
            "jsonpath={.status.conditions[*].type}",
        ],
    )
    .await;
    assert!(ce.contains("Ready"), "{ce}");
    let status = sigterm_and_wait(&mut child).await;
    assert!(status.success(), "clean exit: {status:?}");
}

/// The attempt directories under `dir` holding a shim record.
fn shim_records(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("shim.json"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn dev_keeps_process_records_and_logs_in_memory_and_leaves_neither() {
    // Issue 13: an attempt's records (shim.json, exit.json) only matter for the boot that
    // wrote them, dev's logs only while dev runs, and on a disk file system their files
    // cost more than the attempt's process; dev keeps both on /dev/shm (tmpfs) when there
    // is one, else in TMPDIR.
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("TMPDIR");
    let manifest = dir.path().join("world.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: asgbatch.io/v1alpha1\nkind: ComputeEnvironment\nmetadata: {name: local}\n\
         spec:\n  local: {executor: process}\n  minInstances: 0\n  maxInstances: 1\n  \
         instanceShape: {cpu: '2', memory: 1Gi}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: JobQueue\nmetadata: {name: q}\n\
         spec: {priority: 1, computeEnvironments: [local]}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata: {name: long, namespace: default}\n\
         spec:\n  queue: q\n  process: {command: [sh, -c, 'echo working; sleep 600']}\n  \
         resources: {cpu: '1', memory: 64Mi}\n",
    )
    .expect("write");
    let mut child = binary()
        .args(["dev", "--listen", "127.0.0.1:0", "-f"])
        .arg(&manifest)
        .env("TMPDIR", &tmp)
        .current_dir(dir.path())
        .spawn()
        .expect("start dev");
    let pid = child.id().expect("running");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let shm = std::path::Path::new("/dev/shm");
    let shm_is_tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let base = if shm_is_tmpfs { shm } else { tmp.as_path() };
    let own = format!("asg-batch-dev-{pid}");
    let records = base.join(&own).join("attempts");
    let logs = base.join(&own).join("logs");
    // The job runs: its shim recorded itself, its output goes to its log.
    support::wait_until_async(
        "the running job's shim record and its log",
        Duration::from_secs(120),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dev exited early: {status:?}");
            }
            !shim_records(&records).is_empty()
                && std::fs::read_dir(&logs).is_ok_and(|entries| {
                    entries.flatten().any(|e| {
                        std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("working"))
                    })
                })
        },
    )
    .await;
    if shm_is_tmpfs {
        assert!(!tmp.join(&own).exists(), "nothing of dev's on disk");
    }
    let status = sigterm_and_wait(&mut child).await;
    assert!(status.success(), "clean exit: {status:?}");
    assert!(!base.join(&own).exists(), "records and logs removed");
    assert!(!tmp.join(&own).exists(), "nothing left in TMPDIR");
}

#[tokio::test]
async fn controller_and_agent_binaries_run_a_job_against_an_api_server() {
    let s = support::agent::server_with_crds().await;
    let kubeconfig = s.kubeconfig();
    let dir = s.dir().to_path_buf();
    let manifest = dir.join("world.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: asgbatch.io/v1alpha1\nkind: ComputeEnvironment\nmetadata: {name: static}\n\
         spec:\n  local: {executor: process}\n  minInstances: 1\n  maxInstances: 1\n  \
         instanceShape: {cpu: '2', memory: 1Gi}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: JobQueue\nmetadata: {name: q}\n\
         spec: {priority: 1, computeEnvironments: [static]}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata: {name: twice, namespace: default}\n\
         spec:\n  queue: q\n  process: {command: [sh, -c, 'echo attempt $AWS_BATCH_JOB_ATTEMPT; exit 5']}\n  \
         resources: {cpu: '1', memory: 64Mi}\n  retryStrategy: {attempts: 2}\n",
    )
    .expect("write");
    kubectl(
        &kubeconfig,
        &dir,
        &["apply", "-f", manifest.to_str().expect("utf-8 path")],
    )
    .await;
    let mut controller = binary()
        .args(["controller", "--leader-elect=false", "--resync", "1"])
        .env("KUBECONFIG", &kubeconfig)
        .spawn()
        .expect("start controller");
    let mut agent = binary()
        .args([
            "agent",
            "--compute-environment",
            "static",
            "--instance-id",
            "static-1",
            "--heartbeat-interval",
            "1",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .spawn()
        .expect("start agent");
    // Both attempts fail with exit code 5 (no rule: retried while attempts remain).
    let out = kubectl_until(
        &kubeconfig,
        &dir,
        &[
            "get",
            "bj",
            "twice",
            "-o",
            "jsonpath={.status.phase} {.status.attempts[*].exitCode} {.status.attempts[*].node}",
        ],
        |out| out.starts_with("Failed"),
    )
    .await;
    assert_eq!(out, "Failed 5 5 static-1 static-1");
    let table = kubectl(&kubeconfig, &dir, &["get", "bj", "twice"]).await;
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("Failed") && l.contains(" 2 ")),
        "Attempts column: {table}"
    );
    assert!(sigterm_and_wait(&mut agent).await.success());
    assert!(sigterm_and_wait(&mut controller).await.success());
}

#[tokio::test]
async fn the_controller_without_a_cluster_fails_plainly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = binary()
        .args(["controller"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .output()
        .await
        .expect("run controller");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("asg-batch controller: cannot reach the Kubernetes API"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dev_runs_container_jobs_through_a_docker_api() {
    use support::podman::{PodmanService, TEST_IMAGE, podman_available};
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("containers.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: asgbatch.io/v1alpha1\nkind: ComputeEnvironment\nmetadata: {{name: boxes}}\n\
             spec:\n  local: {{executor: docker}}\n  minInstances: 0\n  maxInstances: 1\n  \
             instanceShape: {{cpu: '1', memory: 512Mi}}\n---\n\
             apiVersion: asgbatch.io/v1alpha1\nkind: JobQueue\nmetadata: {{name: boxes}}\n\
             spec: {{priority: 1, computeEnvironments: [boxes]}}\n---\n\
             apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\n\
             metadata: {{name: in-a-container, namespace: default}}\n\
             spec:\n  queue: boxes\n  container:\n    image: {TEST_IMAGE}\n    \
             command: [sh, -c, 'echo inside $AWS_BATCH_JQ_NAME attempt $AWS_BATCH_JOB_ATTEMPT']\n  \
             resources: {{cpu: 500m, memory: 64Mi}}\n"
        ),
    )
    .expect("write manifest");
    let out = dev_until_done(
        dir.path(),
        &[
            "-f".as_ref(),
            manifest.as_os_str(),
            "--docker-socket".as_ref(),
            podman.socket.as_os_str(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "default/in-a-container: Succeeded, exit code 0, output: inside boxes attempt 1"
        ),
        "{stdout}"
    );
}
