//! Scale-in protection through a real (moto) Auto Scaling Group: the agent protects its
//! instance while it holds an attempt and unprotects it after its idle heartbeats.

mod support;

use asg_batch::agent::executor::process::ProcessExecutor;
use asg_batch::api::BatchJob;
use asg_batch::cloud::aws::AwsFleet;
use asg_batch::cloud::{Fleet, FleetState};
use kube::api::{Api, DeleteParams};
use std::sync::Arc;
use support::agent::*;

fn protected(state: &FleetState, id: &str) -> Option<bool> {
    state
        .instances
        .iter()
        .find(|i| i.instance_id == id)
        .map(|i| i.protected_from_scale_in)
}

async fn node_protected(client: &kube::Client, node: &str) -> Option<bool> {
    get_node(client, node)
        .await
        .and_then(|n| n.status)
        .and_then(|s| s.protected_from_scale_in)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protects_the_instance_while_it_holds_a_job() {
    let moto = support::moto::MotoServer::start();
    let sdk = moto.sdk_config().await;
    support::moto::create_group(&sdk, "workers", 3, 2).await;
    let fleet = Arc::new(AwsFleet::new(&sdk, "workers"));
    let state = fleet.describe().await.expect("describe");
    let ids: Vec<String> = state
        .live_instances()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(ids.len(), 2);
    let me = ids[0].clone();
    let node = me.to_ascii_lowercase();

    // An earlier agent run left the instance protected.
    fleet
        .protect(std::slice::from_ref(&me), true)
        .await
        .expect("protect");
    let s = server_with_crds().await;
    let client = s.client();
    let config = config(&me, "ce-aws").with_instance_type(Some("c5.xlarge".into()));
    let agent = TestAgent::start(
        client.clone(),
        config,
        Arc::new(ProcessExecutor),
        Some(fleet.clone() as Arc<dyn Fleet>),
    );
    // Idle from the start: after its idle heartbeats the stale protection is removed.
    eventually(
        "the idle node to report itself unprotected",
        || node_protected(&client, &node),
        |p| *p == Some(false),
    )
    .await;
    assert_eq!(
        protected(&fleet.describe().await.expect("describe"), &me),
        Some(false)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    create_job(&client, "default", &process_job("busy", &script)).await;
    bind(&client, "default", "busy", &node, 1).await;
    eventually(
        "attempt 1 to start",
        || get_job(&client, "default", "busy"),
        |j| attempt(j, 1).is_some_and(|a| a.started_at.is_some()),
    )
    .await;
    // Protected before the attempt started.
    assert_eq!(
        protected(&fleet.describe().await.expect("describe"), &me),
        Some(true)
    );
    eventually(
        "the node to mirror the protection",
        || node_protected(&client, &node),
        |p| *p == Some(true),
    )
    .await;

    // A scale-in from elsewhere spares the busy instance.
    fleet.set_desired(1).await.expect("scale in");
    let after = fleet.describe().await.expect("describe");
    let live: Vec<&str> = after
        .live_instances()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(live, [me.as_str()], "the busy instance survives scale-in");

    // The job goes away: after the idle heartbeats the instance is unprotected again.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    Api::<BatchJob>::namespaced(client.clone(), "default")
        .delete("busy", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the process to die",
        || async { process_alive(pid) },
        |a| !a,
    )
    .await;
    eventually(
        "the instance to be unprotected",
        || async { protected(&fleet.describe().await.expect("describe"), &me) },
        |p| *p == Some(false),
    )
    .await;
    eventually(
        "the node to mirror it",
        || node_protected(&client, &node),
        |p| *p == Some(false),
    )
    .await;
    agent.stop().await.expect("clean stop");
}
