//! Podman's Docker-compatible API runs the test image and reports exit code and logs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use support::podman::{PodmanService, TEST_IMAGE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_container_and_reads_exit_code_and_logs() {
    let service = PodmanService::start();
    let docker = service.docker().await;
    let name = format!("asg-batch-smoke-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(TEST_IMAGE.to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()]),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .expect("create container");
    docker
        .start_container(&name, None)
        .await
        .expect("start container");
    let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
    let exit_code = match wait.next().await.expect("a wait result") {
        Ok(r) => r.status_code,
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => code,
        Err(e) => panic!("wait failed: {e}"),
    };
    let logs: Vec<String> = docker
        .logs(
            &name,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        )
        .map(|l| l.expect("log line").to_string())
        .collect()
        .await;
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .expect("remove container");
    assert_eq!(exit_code, 3);
    assert_eq!(logs.concat().trim(), "hi");
}
