//! `AwsFleet` against a real moto server: the verbs the controller and agent use on an
//! Auto Scaling Group, including scale-in protection keeping busy instances alive.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::cloud::aws::AwsFleet;
use asg_batch::cloud::{CloudError, Fleet, Lifecycle};

fn live_ids(state: &asg_batch::cloud::FleetState) -> Vec<String> {
    let mut ids: Vec<String> = state
        .live_instances()
        .map(|i| i.instance_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_protect_and_terminate() {
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    support::moto::create_group(&config, "nightly", 5, 0).await;
    let fleet = AwsFleet::new(&config, "nightly");

    let empty = fleet.describe().await.expect("describe");
    assert_eq!((empty.desired, empty.min, empty.max), (0, 0, 5));
    assert_eq!(
        empty.instance_type.as_deref(),
        Some("c5.xlarge"),
        "read from the launch template"
    );
    assert!(empty.instances.is_empty());

    fleet.set_desired(3).await.expect("scale out");
    let three = fleet.describe().await.expect("describe");
    assert_eq!(three.desired, 3);
    let ids = live_ids(&three);
    assert_eq!(ids.len(), 3);
    assert!(
        three
            .instances
            .iter()
            .all(|i| i.lifecycle == Lifecycle::InService && !i.protected_from_scale_in)
    );

    // Two instances hold jobs: protect them, then scale in to 1 from "elsewhere".
    let busy = vec![ids[0].clone(), ids[1].clone()];
    fleet.protect(&busy, true).await.expect("protect");
    let protected = fleet.describe().await.expect("describe");
    for i in protected.live_instances() {
        assert_eq!(
            i.protected_from_scale_in,
            busy.contains(&i.instance_id),
            "{}",
            i.instance_id
        );
    }
    fleet.set_desired(1).await.expect("scale in");
    let after = fleet.describe().await.expect("describe");
    let survivors = live_ids(&after);
    for id in &busy {
        assert!(
            survivors.contains(id),
            "scale-in killed busy instance {id}: {survivors:?}"
        );
    }
    assert!(
        !survivors.contains(&ids[2]),
        "the idle unprotected instance is scaled in"
    );

    // The controller retires one idle instance: unprotect, terminate with decrement.
    fleet.protect(&busy[1..], false).await.expect("unprotect");
    let desired_before = fleet.describe().await.expect("describe").desired;
    fleet.terminate(&busy[1]).await.expect("terminate");
    let end = fleet.describe().await.expect("describe");
    assert!(!live_ids(&end).contains(&busy[1]));
    assert!(live_ids(&end).contains(&busy[0]));
    assert!(
        end.desired <= desired_before,
        "terminate must not raise desired capacity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    support::moto::create_group(&config, "small", 2, 0).await;

    let missing = AwsFleet::new(&config, "no-such-group");
    let err = missing.describe().await.expect_err("missing group");
    assert!(matches!(err, CloudError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-group"), "{err}");

    // (moto accepts a desired capacity above max and answers 500 for an unknown instance id,
    // unlike AWS, so those classifications are covered by unit tests on the AWS error codes.)
    let fleet = AwsFleet::new(&config, "small");

    let info = fleet
        .instance_type_info("c5.xlarge")
        .await
        .expect("c5.xlarge");
    assert_eq!(info.cpu_millis, 4000);
    assert_eq!(info.memory_bytes, 8192 * 1024 * 1024);
    assert_eq!(info.gpus, 0);
    let err = fleet
        .instance_type_info("z9.nonexistent")
        .await
        .expect_err("unknown type");
    assert!(matches!(err, CloudError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("z9.nonexistent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_a_transport_error() {
    let port = support::free_port();
    let config = asg_batch::cloud::aws::config_loader()
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
            "t", "t", None, None, "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let err = AwsFleet::new(&config, "any")
        .describe()
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, CloudError::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_with_backoff_then_classified() {
    use asg_batch::cloud::aws::{MAX_ATTEMPTS, retry_config, timeout_config};
    use support::proxy::{AwsFaultProxy, Fault};
    let moto = support::moto::MotoServer::start();
    support::moto::create_group(&moto.sdk_config().await, "retried", 3, 0).await;
    let proxy = std::sync::Arc::new(AwsFaultProxy::start(&moto.endpoint).await);
    let config = asg_batch::cloud::aws::config_loader()
        .endpoint_url(&proxy.endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .retry_config(retry_config())
        .timeout_config(timeout_config())
        .load()
        .await;
    let fleet = AwsFleet::new(&config, "retried");

    // Throttling, then 500s, then service: one describe call rides it out.
    proxy.set(Fault::Throttle);
    let p = proxy.clone();
    let faults = tokio::spawn(async move {
        let count = |f: Fault| p.seen().iter().filter(|s| s.fault == f).count();
        while count(Fault::Throttle) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        p.set(Fault::ServerError);
        while count(Fault::ServerError) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        p.set(Fault::Pass);
    });
    let state = fleet
        .describe()
        .await
        .expect("describe succeeds after retries");
    faults.await.expect("fault script");
    assert_eq!(state.max, 3);
    let counts = proxy.counts();
    let n = |action: &str, fault: &str| {
        counts
            .get(&(action.to_owned(), fault.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert!(
        n("DescribeAutoScalingGroups", "Throttle") >= 2,
        "{counts:?}"
    );
    assert!(
        n("DescribeAutoScalingGroups", "ServerError") >= 2,
        "{counts:?}"
    );

    // A fault that outlasts every attempt is reported, classified, after MAX_ATTEMPTS.
    proxy.set(Fault::Throttle);
    let before = n("SetDesiredCapacity", "Throttle");
    let e = fleet.set_desired(1).await.expect_err("still throttled");
    assert_eq!(e.label(), "Throttled", "{e}");
    let after = proxy
        .counts()
        .get(&("SetDesiredCapacity".to_owned(), "Throttle".to_owned()))
        .copied()
        .unwrap_or(0);
    assert_eq!(after - before, MAX_ATTEMPTS as usize);
}
