//! Scale-in protection through a real (moto) Auto Scaling Group: the agent protects its
//! instance while it holds an attempt and unprotects it after its idle heartbeats.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

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
        Arc::new(process_executor()),
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

/// A fleet whose protection calls never answer (an Auto Scaling API that hangs; moto
/// cannot be made to): otherwise a group holding the unprotected instance `i-stalled`.
struct StalledFleet;

impl Fleet for StalledFleet {
    fn describe(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<FleetState, asg_batch::cloud::CloudError>> {
        Box::pin(async {
            Ok(FleetState {
                desired: 1,
                min: 0,
                max: 1,
                instance_type: None,
                instances: vec![asg_batch::cloud::FleetInstance {
                    instance_id: "i-stalled".into(),
                    lifecycle: asg_batch::cloud::Lifecycle::InService,
                    protected_from_scale_in: false,
                    instance_type: None,
                    launched_at: None,
                }],
            })
        })
    }
    fn set_desired(
        &self,
        _: u32,
    ) -> futures::future::BoxFuture<'_, Result<(), asg_batch::cloud::CloudError>> {
        Box::pin(async { Ok(()) })
    }
    fn terminate(
        &self,
        _: &str,
    ) -> futures::future::BoxFuture<'_, Result<(), asg_batch::cloud::CloudError>> {
        Box::pin(async { Ok(()) })
    }
    fn protect(
        &self,
        _: &[String],
        _: bool,
    ) -> futures::future::BoxFuture<'_, Result<(), asg_batch::cloud::CloudError>> {
        Box::pin(std::future::pending())
    }
    fn instance_type_info(
        &self,
        t: &str,
    ) -> futures::future::BoxFuture<
        '_,
        Result<asg_batch::cloud::InstanceTypeInfo, asg_batch::cloud::CloudError>,
    > {
        let t = t.to_owned();
        Box::pin(async move {
            Err(asg_batch::cloud::CloudError::NotFound {
                operation: "DescribeInstanceTypes",
                message: t,
            })
        })
    }
}

#[tokio::test]
async fn a_hanging_protection_call_does_not_stop_the_heartbeat() {
    let s = server_with_crds().await;
    let client = s.client();
    let agent = TestAgent::start(
        client.clone(),
        config("i-stalled", "ce"),
        Arc::new(process_executor()),
        Some(Arc::new(StalledFleet)),
    );
    let first = eventually(
        "registration and a first heartbeat",
        || get_node(&client, "i-stalled"),
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .is_some_and(|s| s.heartbeat_time.is_some())
        },
    )
    .await
    .and_then(|n| n.status)
    .and_then(|s| s.heartbeat_time)
    .expect("heartbeat");
    // The attempt's protect(true) and the idle check's protect(false) both hang...
    create_job(&client, "default", &process_job("held", "sleep 30")).await;
    bind(&client, "default", "held", "i-stalled", 1).await;
    // ...and the heartbeat goes on (a node whose heartbeat stops is Lost).
    let later = eventually(
        "later heartbeats",
        || get_node(&client, "i-stalled"),
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.heartbeat_time.as_ref())
                .is_some_and(|t| t.0 > first.0 + jiff::SignedDuration::from_secs(2))
        },
    )
    .await;
    assert!(later.is_some());
    agent.crash().await;
}
