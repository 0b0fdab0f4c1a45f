//! Container settings and GPUs, end to end: the agent runs jobs on Podman's Docker API with
//! the settings of `manifests/examples/job-container-settings.yaml` (host volumes, tmpfs,
//! user, read-only root, ulimits, shared memory, a device, capabilities) and with GPUs
//! assigned per node. What the container really did is the judge: files on the host, the
//! container's own view of its mounts, ids, limits and capabilities.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use asg_batch::agent::executor::docker::DockerExecutor;
use asg_batch::api::common::{Capabilities, ContainerSettings, LinuxParameters};
use asg_batch::api::{BatchJob, JobDefinition};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use support::agent::*;
use support::podman::{PodmanService, TEST_IMAGE, podman_available};

const NODE: &str = "i-0settings";

/// The example's documents: the JobDefinition and the BatchJob that uses it.
fn example() -> (JobDefinition, BatchJob) {
    let path = support::repo_root().join("manifests/examples/job-container-settings.yaml");
    let text = std::fs::read_to_string(path).expect("example");
    let mut def = None;
    let mut job = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v =
            serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("yaml")).expect("json");
        match v["kind"].as_str() {
            Some("JobDefinition") => def = Some(serde_json::from_value(v).expect("definition")),
            Some("BatchJob") => job = Some(serde_json::from_value(v).expect("job")),
            other => panic!("unexpected {other:?}"),
        }
    }
    (def.expect("a JobDefinition"), job.expect("a BatchJob"))
}

async fn executor(podman: &PodmanService) -> Arc<DockerExecutor> {
    Arc::new(
        DockerExecutor::connect(&podman.socket.display().to_string())
            .await
            .expect("connect")
            .with_network_mode("none"),
    )
}

fn log_line(job: &BatchJob, n: u32, key: &str) -> Option<String> {
    let tail = attempt(job, n)?.log_tail?;
    tail.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

async fn ended(client: &kube::Client, name: &str) -> BatchJob {
    eventually(
        "the attempt's report",
        || get_job(client, "default", name),
        |j| attempt(j, 1).is_some_and(|a| a.stopped_at.is_some()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_settings_shape_the_container() {
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let s = server_with_crds().await;
    let client = s.client();
    let config = config(NODE, "ce-settings")
        .with_executor(asg_batch::api::compute_environment::Executor::Docker);
    let agent = TestAgent::start(client.clone(), config, executor(&podman).await, None);

    // The example's definition, with the test image, a script that reports what the
    // container sees, and the host paths in a temporary directory.
    let host = tempfile::tempdir().expect("dir");
    let assets = host.path().join("assets");
    let scratch = host.path().join("scratch");
    std::fs::create_dir_all(&assets).expect("assets");
    std::fs::create_dir_all(&scratch).expect("scratch");
    std::fs::write(assets.join("input.txt"), "frame data\n").expect("input");
    // The job runs as uid 1000: let it write its results.
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (mut def, mut job) = example();
    let tag = std::process::id();
    let name = format!("render-{tag}");
    def.metadata.name = Some(name.clone());
    job.metadata.name = Some(name.clone());
    job.spec
        .definition_ref
        .as_mut()
        .expect("definitionRef")
        .name = name.clone();
    let c = def.spec.template.container.as_mut().expect("container");
    c.image = TEST_IMAGE.into();
    c.command = vec!["sh".into(), "-c".into()];
    c.args = vec![
        r#"
        echo uid=$(id -u):$(id -g)
        cat /assets/input.txt > /scratch/result.txt && echo scratch=written
        if touch /assets/x 2>/dev/null; then echo assets=writable; else echo assets=readonly; fi
        if touch /rootfile 2>/dev/null; then echo root=writable; else echo root=readonly; fi
        echo tmpfs=$(awk '$2 == "/cache" { print $3 }' /proc/mounts)
        echo tmpfs_size=$(df -k /cache | awk 'NR == 2 { print $2 }')
        touch /cache/t && echo cache=writable
        echo nofile=$(ulimit -n)
        echo nproc=$(ulimit -u)
        echo shm=$(df -k /dev/shm | awk 'NR == 2 { print $2 }')
        if [ -c /dev/fuse ]; then echo fuse=present; else echo fuse=absent; fi
        echo capeff=$(awk '/^CapEff/ { print $2 }' /proc/self/status)
        "#
        .into(),
    ];
    let volumes = &mut c.settings.volumes;
    volumes[0].host.source_path = assets.display().to_string();
    volumes[1].host.source_path = scratch.display().to_string();
    Api::<JobDefinition>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &def)
        .await
        .expect("create definition");
    create_job(&client, "default", &job).await;
    bind(&client, "default", &name, NODE, 1).await;

    let done = ended(&client, &name).await;
    let a1 = attempt(&done, 1).expect("attempt");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Completed"),
        "{a1:?}"
    );
    let seen = |key: &str| log_line(&done, 1, key);
    assert_eq!(seen("uid").as_deref(), Some("1000:1000"), "user");
    assert_eq!(seen("scratch").as_deref(), Some("written"));
    // Ground truth on the host: the file is there, written by uid 1000.
    let result = scratch.join("result.txt");
    assert_eq!(
        std::fs::read_to_string(&result).expect("result on the host"),
        "frame data\n"
    );
    assert_eq!(std::fs::metadata(&result).expect("meta").uid(), 1000);
    assert_eq!(
        seen("assets").as_deref(),
        Some("readonly"),
        "readOnly mount point"
    );
    assert!(!assets.join("x").exists());
    assert_eq!(
        seen("root").as_deref(),
        Some("readonly"),
        "readonlyRootFilesystem"
    );
    assert_eq!(
        seen("tmpfs").as_deref(),
        Some("tmpfs"),
        "linuxParameters.tmpfs"
    );
    assert_eq!(
        seen("tmpfs_size").as_deref(),
        Some("65536"),
        "tmpfs size 64 MiB"
    );
    assert_eq!(seen("cache").as_deref(), Some("writable"));
    assert_eq!(seen("nofile").as_deref(), Some("8192"), "ulimits");
    assert_eq!(seen("nproc").as_deref(), Some("4096"), "ulimits");
    assert_eq!(
        seen("shm").as_deref(),
        Some("131072"),
        "sharedMemorySize 128 MiB"
    );
    assert_eq!(seen("fuse").as_deref(), Some("present"), "devices");
    assert_eq!(
        seen("capeff").as_deref(),
        Some("0000000000000000"),
        "capabilities drop ALL"
    );
    agent.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_privileged_change_what_root_may_do() {
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let s = server_with_crds().await;
    let client = s.client();
    let config = config(NODE, "ce-settings")
        .with_executor(asg_batch::api::compute_environment::Executor::Docker);
    let agent = TestAgent::start(client.clone(), config, executor(&podman).await, None);

    let script = "echo capeff=$(awk '/^CapEff/ { print $2 }' /proc/self/status)";
    let tag = std::process::id();
    let cases = [
        (format!("caps-default-{tag}"), ContainerSettings::default()),
        (
            format!("caps-one-{tag}"),
            ContainerSettings {
                linux_parameters: Some(LinuxParameters {
                    capabilities: Some(Capabilities {
                        drop: vec!["ALL".into()],
                        add: vec!["NET_BIND_SERVICE".into()],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            format!("caps-privileged-{tag}"),
            ContainerSettings {
                privileged: true,
                ..Default::default()
            },
        ),
    ];
    for (name, settings) in &cases {
        let mut job = settings_job(name, script);
        job.spec
            .template
            .container
            .as_mut()
            .expect("container")
            .settings = settings.clone();
        create_job(&client, "default", &job).await;
        bind(&client, "default", name, NODE, 1).await;
    }
    let mut caps = Vec::new();
    for (name, _) in &cases {
        let job = ended(&client, name).await;
        let hex = log_line(&job, 1, "capeff").expect("CapEff line");
        caps.push(u64::from_str_radix(&hex, 16).expect("hex"));
    }
    const NET_BIND_SERVICE: u64 = 1 << 10;
    const SYS_ADMIN: u64 = 1 << 21;
    let (default, one, privileged) = (caps[0], caps[1], caps[2]);
    assert!(
        default & NET_BIND_SERVICE != 0 && default & SYS_ADMIN == 0,
        "{default:x}"
    );
    assert_eq!(
        one, NET_BIND_SERVICE,
        "drop ALL, add NET_BIND_SERVICE: {one:x}"
    );
    assert!(
        privileged & SYS_ADMIN != 0 && privileged & default == default,
        "{privileged:x}"
    );
    agent.stop().await.expect("clean stop");
}

fn settings_job(name: &str, script: &str) -> BatchJob {
    let mut job = process_job(name, "unused");
    job.spec.template = asg_batch::api::common::JobTemplate {
        container: Some(Box::new(asg_batch::api::common::ContainerSpec {
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            env: vec![],
            working_dir: None,
            settings: ContainerSettings::default(),
        })),
        ..Default::default()
    };
    job
}

fn gpu_job(name: &str, gpus: u32, script: &str) -> BatchJob {
    let mut job = settings_job(name, script);
    job.spec.template.resources = Some(asg_batch::api::common::Resources {
        cpu: "100m".into(),
        memory: "32Mi".into(),
        gpu: gpus,
    });
    job
}

/// Two GPU jobs at once get different GPUs; an agent restart keeps the assignment of the
/// attempt it re-adopts, so a job started after it gets another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_jobs_get_their_own_gpus_across_an_agent_restart() {
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let docker = podman.docker().await;
    let s = server_with_crds().await;
    let client = s.client();
    let data = tempfile::tempdir().expect("data dir");
    let mut config = config(NODE, "ce-gpu")
        .with_executor(asg_batch::api::compute_environment::Executor::Docker)
        .with_data_dir(data.path())
        .with_shutdown_mode(asg_batch::agent::config::ShutdownMode::Leave);
    config.capacity.gpu = 2;
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        executor(&podman).await,
        None,
    );

    let tag = std::process::id();
    let marker = tempfile::tempdir().expect("marker dir");
    std::fs::set_permissions(marker.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // Each job prints its GPUs, then waits for the test's go.
    let script = "echo gpus=$NVIDIA_VISIBLE_DEVICES; while [ ! -e /go/go ]; do sleep 0.1; done";
    let with_go = |mut job: BatchJob| {
        use asg_batch::api::common::{HostVolume, MountPoint, Volume};
        let c = job.spec.template.container.as_mut().expect("container");
        c.settings.volumes = vec![Volume {
            name: "go".into(),
            host: HostVolume {
                source_path: marker.path().display().to_string(),
            },
        }];
        c.settings.mount_points = vec![MountPoint {
            source_volume: "go".into(),
            container_path: "/go".into(),
            read_only: true,
        }];
        job
    };
    let first = format!("gpu-a-{tag}");
    let uid = create_job(&client, "default", &with_go(gpu_job(&first, 1, script)))
        .await
        .metadata
        .uid
        .expect("uid");
    bind(&client, "default", &first, NODE, 1).await;
    eventually(
        "the first GPU job to start",
        || get_job(&client, "default", &first),
        |j| attempt(j, 1).is_some_and(|a| a.started_at.is_some()),
    )
    .await;
    let container = format!("asgb-{first}-{uid}-a1");
    let env = docker
        .inspect_container(&container, None)
        .await
        .expect("container")
        .config
        .and_then(|c| c.env)
        .unwrap_or_default();
    assert!(
        env.contains(&"NVIDIA_VISIBLE_DEVICES=0".to_string()),
        "{env:?}"
    );

    // The agent dies and comes back; the first attempt keeps GPU 0.
    agent.crash().await;
    let agent = TestAgent::start(client.clone(), config, executor(&podman).await, None);
    let second = format!("gpu-b-{tag}");
    create_job(&client, "default", &with_go(gpu_job(&second, 1, script))).await;
    bind(&client, "default", &second, NODE, 1).await;
    eventually(
        "the second GPU job to start",
        || get_job(&client, "default", &second),
        |j| attempt(j, 1).is_some_and(|a| a.started_at.is_some()),
    )
    .await;
    // No GPU left for a third while both run: the agent refuses it, naming the field.
    let third = format!("gpu-c-{tag}");
    create_job(&client, "default", &with_go(gpu_job(&third, 1, script))).await;
    bind(&client, "default", &third, NODE, 1).await;
    let refused = ended(&client, &third).await;
    let a = attempt(&refused, 1).expect("attempt");
    assert_eq!(
        a.reason.as_ref().map(AttemptReason::as_str),
        Some("StartFailed"),
        "{a:?}"
    );
    assert!(
        a.status_reason
            .as_deref()
            .unwrap_or_default()
            .contains("resources.gpu"),
        "{a:?}"
    );

    std::fs::write(marker.path().join("go"), "").expect("go");
    let a = ended(&client, &first).await;
    let b = ended(&client, &second).await;
    assert_eq!(log_line(&a, 1, "gpus").as_deref(), Some("0"));
    assert_eq!(
        log_line(&b, 1, "gpus").as_deref(),
        Some("1"),
        "GPU 0 is still held"
    );
    // Both ended and were reported: nothing is held any more.
    let state = data.path().join("gpus.json");
    eventually(
        "the GPUs to be freed",
        || async { std::fs::read_to_string(&state).unwrap_or_default() },
        |s| !s.contains("asgb-"),
    )
    .await;
    agent.stop().await.expect("clean stop");
}
