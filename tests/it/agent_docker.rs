//! The node agent with the container executor on Podman's Docker API: a job's container
//! runs with AWS Batch's variables, its exit code and output are reported, deleting a
//! running job removes its container, and a container outlives a crashed agent and is
//! adopted by the next one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use asg_batch::agent::executor::docker::DockerExecutor;
use asg_batch::api::BatchJob;
use asg_batch::api::common::{ContainerSpec, JobTemplate, Resources};
use kube::api::{Api, DeleteParams};
use std::sync::Arc;
use support::agent::*;
use support::podman::{PodmanService, TEST_IMAGE, podman_available};

const NODE: &str = "i-0docker";

fn container_job(name: &str, script: &str) -> BatchJob {
    let mut job = process_job(name, "unused");
    job.spec.template = JobTemplate {
        container: Some(Box::new(ContainerSpec {
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            env: vec![],
            working_dir: None,
            settings: Default::default(),
        })),
        resources: Some(Resources {
            cpu: "500m".into(),
            memory: "64Mi".into(),
            gpu: 0,
        }),
        ..Default::default()
    };
    job
}

async fn container_exists(docker: &bollard::Docker, name: &str) -> bool {
    docker.inspect_container(name, None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_containers_and_removes_cancelled_ones() {
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let docker = podman.docker().await;
    let executor = DockerExecutor::connect(&podman.socket.display().to_string())
        .await
        .expect("connect")
        .with_network_mode("none");
    let s = server_with_crds().await;
    let client = s.client();
    let config = config(NODE, "ce-docker")
        .with_executor(asg_batch::api::compute_environment::Executor::Docker);
    let agent = TestAgent::start(client.clone(), config, Arc::new(executor), None);

    // Unique names: the Podman store is shared with other tests.
    let tag = std::process::id();
    let done = format!("ctr-exit-{tag}");
    let long = format!("ctr-long-{tag}");
    create_job(
        &client,
        "default",
        &container_job(
            &done,
            "echo hello from attempt $AWS_BATCH_JOB_ATTEMPT in $AWS_BATCH_CE_NAME; exit 3",
        ),
    )
    .await;
    let long_uid = create_job(&client, "default", &container_job(&long, "sleep 300"))
        .await
        .metadata
        .uid
        .expect("uid");
    bind(&client, "default", &done, NODE, 1).await;
    bind(&client, "default", &long, NODE, 1).await;

    let job = eventually(
        "the container job's report",
        || get_job(&client, "default", &done),
        |j| attempt(j, 1).is_some_and(|a| a.stopped_at.is_some()),
    )
    .await;
    let a1 = attempt(&job, 1).expect("attempt");
    assert!(a1.started_at.is_some(), "{a1:?}");
    assert_eq!(
        (a1.exit_code, a1.reason.as_ref().map(AttemptReason::as_str)),
        (Some(3), Some("Error"))
    );
    assert_eq!(
        a1.log_tail.as_deref().map(str::trim),
        Some("hello from attempt 1 in ce-docker")
    );

    let container = format!("asgb-{long}-{long_uid}-a1");
    eventually(
        "the long job to start",
        || get_job(&client, "default", &long),
        |j| attempt(j, 1).is_some_and(|a| a.started_at.is_some()),
    )
    .await;
    assert!(container_exists(&docker, &container).await);
    Api::<BatchJob>::namespaced(client.clone(), "default")
        .delete(&long, &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the cancelled job's container to be removed",
        || container_exists(&docker, &container),
        |exists| !exists,
    )
    .await;
    agent.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_agent_crash_a_container_is_adopted_and_one_that_vanished_is_reported_lost() {
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let docker = podman.docker().await;
    let connect = || async {
        DockerExecutor::connect(&podman.socket.display().to_string())
            .await
            .expect("connect")
            .with_network_mode("none")
    };
    let s = server_with_crds().await;
    let client = s.client();
    let config = config(NODE, "ce-docker")
        .with_executor(asg_batch::api::compute_environment::Executor::Docker);
    let agent = TestAgent::start(
        client.clone(),
        config.clone(),
        Arc::new(connect().await),
        None,
    );

    let tag = std::process::id();
    let kept = format!("ctr-kept-{tag}");
    let gone = format!("ctr-gone-{tag}");
    let mut containers = Vec::new();
    for name in [&kept, &gone] {
        let uid = create_job(&client, "default", &container_job(name, "sleep 300"))
            .await
            .metadata
            .uid
            .expect("uid");
        bind(&client, "default", name, NODE, 1).await;
        containers.push(format!("asgb-{name}-{uid}-a1"));
    }
    for name in [&kept, &gone] {
        eventually(
            "the container to start",
            || get_job(&client, "default", name),
            |j| attempt(j, 1).is_some_and(|a| a.started_at.is_some()),
        )
        .await;
    }
    let before = docker
        .inspect_container(&containers[0], None)
        .await
        .expect("container");

    // The agent dies; its containers do not. One of them is then removed by someone else.
    agent.crash().await;
    assert!(
        container_exists(&docker, &containers[0]).await,
        "outlives the agent"
    );
    docker
        .remove_container(
            &containers[1],
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .expect("remove");

    let agent = TestAgent::start(client.clone(), config, Arc::new(connect().await), None);
    // Nothing left of one: reported lost, not run again.
    let job = eventually(
        "the lost attempt's report",
        || get_job(&client, "default", &gone),
        |j| attempt(j, 1).is_some_and(|a| a.stopped_at.is_some()),
    )
    .await;
    assert_eq!(
        attempt(&job, 1)
            .and_then(|a| a.reason)
            .as_ref()
            .map(AttemptReason::as_str),
        Some("StartFailed")
    );
    assert!(!container_exists(&docker, &containers[1]).await);
    // The other keeps running, supervised by the new agent: the same container.
    let after = docker
        .inspect_container(&containers[0], None)
        .await
        .expect("container");
    assert_eq!(after.id, before.id);
    assert_eq!(after.state.and_then(|s| s.running), Some(true));
    let a1 = attempt(&get_job(&client, "default", &kept).await, 1).expect("attempt");
    assert!(a1.stopped_at.is_none(), "{a1:?}");
    // ...and cancelled like any when its job is deleted.
    Api::<BatchJob>::namespaced(client.clone(), "default")
        .delete(&kept, &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the adopted container to be removed",
        || container_exists(&docker, &containers[0]),
        |exists| !exists,
    )
    .await;
    agent.stop().await.expect("clean stop");
}
