//! The container image (Containerfile + scripts/build-image.sh, which `make image` runs on
//! the release binary), built here from the test's debug binary with Podman from `scratch`.
//! It holds exactly the binary, the libraries `ldd` lists, the CA bundle and
//! passwd/group/nsswitch.conf; it runs as 65532 on a read-only root filesystem; and the
//! controller in it, against an `asg-batch apiserver` process and a moto Auto Scaling Group
//! (host network, loopback), sets the group's desired capacity after a job and back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asg_batch::api::{BatchJob, BatchNode, JobPhase};
use asg_batch::cloud::Fleet;
use asg_batch::cloud::aws::AwsFleet;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::ChildGuard;
use support::controller::apply_yaml;

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman (run `make test-deps`)")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// An image built for this test, removed on drop.
struct Image {
    name: String,
    files: BTreeSet<String>,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "-f", &self.name]);
    }
}

fn build_image() -> Image {
    let name = format!("localhost/asg-batch-test:{}", std::process::id());
    let start = Instant::now();
    let out = Command::new(support::repo_root().join("scripts/build-image.sh"))
        .arg(env!("CARGO_BIN_EXE_asg-batch"))
        .arg(&name)
        .output()
        .expect("scripts/build-image.sh");
    let stdout = ok(out, "build-image.sh");
    eprintln!("image {name} built in {:?}", start.elapsed());
    Image {
        files: stdout
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(String::from)
            .collect(),
        name,
    }
}

/// `podman run` with what the chart's securityContext asks: non-root, read-only root.
fn run_args<'a>(image: &'a str, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--rm",
        "--read-only",
        "--user",
        "65532",
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ];
    args.extend_from_slice(extra);
    args.push(image);
    args.extend_from_slice(cmd);
    args
}

/// The libraries the binary loads, as `ldd` names them.
fn ldd_libraries() -> BTreeSet<String> {
    let out = ok(
        Command::new("ldd")
            .arg(env!("CARGO_BIN_EXE_asg-batch"))
            .arg(env!("CARGO_BIN_EXE_asg-batch-shim"))
            .output()
            .expect("ldd"),
        "ldd",
    );
    out.lines()
        // With two binaries, ldd heads each one's list with `PATH:`.
        .filter(|l| !l.trim_end().ends_with(':'))
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once("=> ") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }
        })
        .filter(|p| p.starts_with('/'))
        .map(String::from)
        .collect()
}

/// A container removed (`podman rm -f`) on drop; killing `podman run` alone would leave it.
struct Container {
    name: String,
    _run: ChildGuard,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

#[test]
fn the_chart_default_image_is_what_make_image_builds() {
    let cargo = std::fs::read_to_string(support::repo_root().join("Cargo.toml")).expect("Cargo");
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("package version");
    let make = Command::new("make")
        .args(["-n", "image", "CARGO=cargo"])
        .current_dir(support::repo_root())
        .output()
        .expect("make");
    let make = ok(make, "make -n image");
    assert!(
        make.contains(&format!("release/asg-batch asg-batch:{version}")),
        "make image builds asg-batch:{version}: {make}"
    );
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(support::repo_root().join("charts/asg-batch/values.yaml"))
            .expect("values"),
    )
    .expect("YAML");
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(support::repo_root().join("charts/asg-batch/Chart.yaml"))
            .expect("Chart.yaml"),
    )
    .expect("YAML");
    assert_eq!(values["image"]["repository"].as_str(), Some("asg-batch"));
    // An empty tag means the chart's appVersion, which is the crate's version.
    assert_eq!(values["image"]["tag"].as_str(), Some(""));
    assert_eq!(chart["appVersion"].as_str(), Some(version));
}

const WORLD: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: cloud}
spec:
  aws: {autoScalingGroupName: batch, region: us-east-1}
  minInstances: 0
  maxInstances: 4
  scaleInAfterIdleSeconds: 0
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q}
spec:
  computeEnvironments: [cloud]
---
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: hello}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "2", memory: 1Gi}
"#;

async fn wait_desired(fleet: &AwsFleet, want: u32, logs: &str) {
    let start = Instant::now();
    loop {
        let d = fleet.describe().await.expect("describe").desired;
        if d == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let out = podman(&["logs", logs]);
            panic!(
                "desired capacity stayed {d}, want {want}; controller log:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_phase(jobs: &Api<BatchJob>, name: &str, phase: JobPhase) {
    support::eventually(
        &format!("job {name} {phase:?}"),
        || async { jobs.get(name).await.expect("job").status },
        |status| status.as_ref().and_then(|s| s.phase) == Some(phase),
    )
    .await;
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_non_root_read_only_and_its_controller_drives_a_moto_group() {
    let image = build_image();

    // Exactly the binaries, what ldd lists, the CA bundle and the user database.
    let mut want: BTreeSet<String> = ldd_libraries();
    for f in [
        "/usr/local/bin/asg-batch",
        "/usr/local/bin/asg-batch-shim",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    ] {
        want.insert(f.into());
    }
    assert_eq!(image.files, want);
    let inspect = ok(
        podman(&[
            "image",
            "inspect",
            &image.name,
            "--format",
            "{{.Config.User}} {{.Config.Entrypoint}} {{.Config.Cmd}} {{.Size}}",
        ]),
        "inspect",
    );
    let fields: Vec<&str> = inspect.split_whitespace().collect();
    assert_eq!(
        &fields[..3],
        ["65532:65532", "[/usr/local/bin/asg-batch]", "[controller]"]
    );
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_asg-batch"))
        .expect("binary")
        .len()
        + std::fs::metadata(env!("CARGO_BIN_EXE_asg-batch-shim"))
            .expect("shim binary")
            .len();
    let size: u64 = fields[3].parse().expect("size");
    eprintln!("image size {size} bytes, binary {binary} bytes");
    // Libraries, certificates and metadata add little beyond the binary.
    assert!(size < binary + 8 * 1024 * 1024, "{size} vs binary {binary}");

    // One-shot commands, non-root on a read-only root.
    let crds = ok(
        podman(&run_args(&image.name, &[], &["crds"])),
        "asg-batch crds in the image",
    );
    let host = ok(
        Command::new(env!("CARGO_BIN_EXE_asg-batch"))
            .arg("crds")
            .output()
            .expect("crds"),
        "crds",
    );
    assert_eq!(crds, host);
    let help = ok(
        podman(&run_args(&image.name, &[], &["controller", "--help"])),
        "controller --help in the image",
    );
    assert!(help.contains("Usage: asg-batch controller"), "{help}");

    // An API server process with the CRDs and the world, and a moto group.
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    support::moto::create_group(&config, "batch", 4, 0).await;
    let port = support::free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    let _apiserver = ChildGuard {
        child: Command::new(env!("CARGO_BIN_EXE_asg-batch"))
            .args(["apiserver", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apiserver"),
        name: "apiserver",
    };
    support::wait_until("the API server", Duration::from_secs(30), || {
        kubeconfig.is_file() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config"),
    )
    .expect("client");
    support::kube::install_crds(&client).await;
    // The container's user reads the kubeconfig through a bind mount.
    let shared = dir.path().join("kubeconfig-shared");
    std::fs::copy(&kubeconfig, &shared).expect("copy kubeconfig");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    // The controller, in the image, as the chart's Deployment runs it.
    let name = format!("asg-batch-controller-test-{}", std::process::id());
    let mount = format!("{}:/etc/asg-batch/kubeconfig:ro", shared.display());
    let aws = format!("AWS_ENDPOINT_URL={}", moto.endpoint);
    let run = run_args(
        &image.name,
        &[
            "--name",
            &name,
            "-v",
            &mount,
            "-e",
            "KUBECONFIG=/etc/asg-batch/kubeconfig",
            "-e",
            &aws,
            "-e",
            "AWS_REGION=us-east-1",
            "-e",
            "AWS_ACCESS_KEY_ID=testing",
            "-e",
            "AWS_SECRET_ACCESS_KEY=testing",
            "-e",
            "RUST_LOG=info",
        ],
        &[
            "controller",
            "--leader-elect=false",
            "--resync",
            "1",
            "--identity",
            "image-test",
        ],
    )
    .into_iter()
    .filter(|a| *a != "--rm")
    .collect::<Vec<_>>();
    let container = Container {
        _run: ChildGuard {
            child: Command::new("podman")
                .args(&run)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("podman run"),
            name: "podman run controller",
        },
        name,
    };

    apply_yaml(&client, WORLD).await;
    let fleet = Arc::new(AwsFleet::new(&config, "batch"));
    // One 2-cpu job: one c5.xlarge.
    wait_desired(&fleet, 1, &container.name).await;
    let id = fleet
        .describe()
        .await
        .expect("describe")
        .live_instances()
        .map(|i| i.instance_id.to_ascii_lowercase())
        .next()
        .expect("an instance");

    // The instance's agent (played by the test) registers, heartbeats and runs the job.
    let nodes: Api<BatchNode> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
        "metadata": {"name": id},
        "spec": {"instanceId": id, "computeEnvironment": "cloud",
                 "capacity": {"cpu": "4", "memory": "8Gi"}, "executor": "process"},
    });
    nodes
        .patch(
            &id,
            &PatchParams::apply("asg-batch-agent"),
            &Patch::Apply(&node),
        )
        .await
        .expect("register node");
    let heartbeat = {
        let (nodes, id) = (nodes.clone(), id.clone());
        tokio::spawn(async move {
            // As the real agent's gate: it stops accepting work once its node is Draining.
            let mut draining = false;
            loop {
                let hb = json!({
                    "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
                    "status": {"heartbeatTime": now(), "acceptingAttempts": !draining},
                });
                if let Ok(node) = nodes
                    .patch_status(
                        &id,
                        &PatchParams::apply("asg-batch-agent"),
                        &Patch::Apply(&hb),
                    )
                    .await
                {
                    draining = node.status.and_then(|s| s.phase)
                        == Some(asg_batch::api::NodePhase::Draining);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), "default");
    wait_phase(&jobs, "hello", JobPhase::Starting).await;
    let started = now();
    for attempt in [
        json!({"attempt": 1, "startedAt": started}),
        json!({"attempt": 1, "startedAt": started, "stoppedAt": now(), "exitCode": 0,
               "reason": "Completed", "logTail": "exit 0\n"}),
    ] {
        let body = json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                          "status": {"attempts": [attempt]}});
        jobs.patch_status(
            "hello",
            &PatchParams::apply("asg-batch-agent-attempt-1"),
            &Patch::Apply(&body),
        )
        .await
        .expect("attempt status");
    }
    wait_phase(&jobs, "hello", JobPhase::Succeeded).await;
    // Idle: the controller in the image terminates the instance, desired back to 0.
    wait_desired(&fleet, 0, &container.name).await;
    heartbeat.abort();

    // It ran as 65532 all along.
    let user = ok(
        podman(&["inspect", &container.name, "--format", "{{.Config.User}}"]),
        "inspect container",
    );
    assert_eq!(user.trim(), "65532");
    drop(container);
}
