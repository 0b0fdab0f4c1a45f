//! The least-privilege IAM policies in `manifests/aws/iam/` against moto with IAM
//! enforcement on (`INITIAL_NO_AUTH_ACTION_COUNT`): setup calls run unauthenticated, then
//! every call is signed by an IAM user holding only one of the policies.
//!
//! What moto 5.2.5 enforces, and so what these tests prove: the SigV4 signature and the
//! access key (an unknown key is `InvalidClientTokenId`), and each policy's `Action` list
//! (an action no statement allows is `AccessDenied`; moto sends it in an envelope the SDK
//! does not parse, which `AwsFleet` reads itself, see [`assert_denied`]). The controller
//! run with keys lacking `SetDesiredCapacity` shows the denial on the ComputeEnvironment
//! (condition and Event `AccessDenied` naming the permission); with the controller's
//! keys it scales out and in with no such condition. What it does not: `Resource` is always `*` for autoscaling and EC2
//! calls, and `Condition` blocks are skipped when moto has no value for their key, which is
//! the case for every `aws:ResourceTag/...` key. So the tag condition that limits
//! SetDesiredCapacity, TerminateInstanceInAutoScalingGroup and SetInstanceProtection to
//! groups tagged `asg-batch/managed=true` is NOT evaluated by moto:
//! [`moto_does_not_evaluate_resource_tag_conditions`] pins that down (it fails, and should
//! then become a denial test, the day moto evaluates them), and
//! [`policies_scope_every_write_to_managed_groups`] checks the documents themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::time::Duration;

use asg_batch::cloud::aws::AwsFleet;
use asg_batch::cloud::{CloudError, Fleet, Lifecycle};
use serde_json::Value;
use support::moto::{MotoServer, xml_text};

const MANAGED_TAG: &str = "asg-batch/managed";

fn policy_text(name: &str) -> String {
    let path = support::repo_root().join("manifests/aws/iam").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn policy(name: &str) -> Value {
    serde_json::from_str(&policy_text(name)).expect("policy is JSON")
}

/// Keys of an IAM user holding exactly one inline policy.
struct Keys {
    id: String,
    secret: String,
}

/// Creates user `name` with the inline policy from `manifests/aws/iam/<file>` and an access
/// key (unauthenticated Query calls: only valid before enforcement starts).
fn iam_user(moto: &MotoServer, name: &str, file: &str) -> Keys {
    moto.query_ok(
        "iam",
        &[
            ("Action", "CreateUser"),
            ("Version", "2010-05-08"),
            ("UserName", name),
        ],
    );
    moto.query_ok(
        "iam",
        &[
            ("Action", "PutUserPolicy"),
            ("Version", "2010-05-08"),
            ("UserName", name),
            ("PolicyName", name),
            ("PolicyDocument", &policy_text(file)),
        ],
    );
    let xml = moto.query_ok(
        "iam",
        &[
            ("Action", "CreateAccessKey"),
            ("Version", "2010-05-08"),
            ("UserName", name),
        ],
    );
    Keys {
        id: xml_text(&xml, "AccessKeyId").expect("AccessKeyId").into(),
        secret: xml_text(&xml, "SecretAccessKey")
            .expect("SecretAccessKey")
            .into(),
    }
}

/// The setup budget: moto serves this many calls unauthenticated, then enforces.
const NO_AUTH_CALLS: &str = "40";

/// A moto server with two groups (`managed`, tagged `asg-batch/managed=true`, and
/// `unmanaged`), a controller user and an agent user; returns once moto enforces IAM.
async fn enforcing_moto() -> (MotoServer, Keys, Keys) {
    let moto = MotoServer::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", NO_AUTH_CALLS)]);
    let root = moto.sdk_config().await;
    support::moto::create_group(&root, "managed", 3, 0).await;
    support::moto::create_group(&root, "unmanaged", 3, 0).await;
    aws_sdk_autoscaling::Client::new(&root)
        .create_or_update_tags()
        .tags(
            aws_sdk_autoscaling::types::Tag::builder()
                .resource_id("managed")
                .resource_type("auto-scaling-group")
                .key(MANAGED_TAG)
                .value("true")
                .propagate_at_launch(true)
                .build(),
        )
        .send()
        .await
        .expect("tag the managed group");
    let controller = iam_user(&moto, "asg-batch-controller", "controller-policy.json");
    let agent = iam_user(&moto, "asg-batch-agent", "agent-policy.json");

    // Use up the rest of the unauthenticated budget with calls under an unknown key: each
    // succeeds until enforcement starts, then the first refused one proves it is on.
    let bogus = AwsFleet::new(
        &moto.sdk_config_with_keys("AKIANOSUCHKEY", "x").await,
        "managed",
    );
    let budget: u32 = NO_AUTH_CALLS.parse().expect("number");
    let mut refused = None;
    for _ in 0..=budget {
        if let Err(e) = bogus.describe().await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("moto enforces IAM after INITIAL_NO_AUTH_ACTION_COUNT calls");
    assert!(
        matches!(refused, CloudError::Unauthorized { .. }),
        "an unknown access key is refused as Unauthorized: {refused}"
    );
    (moto, controller, agent)
}

async fn fleet_as(moto: &MotoServer, keys: &Keys, group: &str) -> AwsFleet {
    AwsFleet::new(
        &moto.sdk_config_with_keys(&keys.id, &keys.secret).await,
        group,
    )
}

/// A denial of `operation` (an `autoscaling:` action), classified `AccessDenied` with the
/// missing permission. moto answers AccessDenied for autoscaling with EC2's error envelope
/// (`<Response><Errors><Error>`) where AWS uses `<ErrorResponse><Error>`; the SDK cannot
/// read the code from it, so `AwsFleet` reads the code and message from the raw body.
/// That AWS's own codes are classified the same is asserted apart
/// ([`access_denied_codes_are_classified_access_denied`]).
fn assert_denied(result: Result<(), CloudError>, operation: &str) {
    match result {
        Err(CloudError::AccessDenied {
            operation: op,
            action,
            message,
        }) => {
            assert_eq!(op, operation);
            assert_eq!(action, format!("autoscaling:{operation}"));
            assert!(
                message.contains(&format!("not authorized to perform: {action}")),
                "{message}"
            );
        }
        other => panic!("{operation} must be denied (AccessDenied), got {other:?}"),
    }
}

#[test]
fn access_denied_codes_are_classified_access_denied() {
    for code in [
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
    ] {
        let e = CloudError::from_aws_code(
            "SetDesiredCapacity",
            Some(code),
            "User: arn:aws:iam::123456789012:user/x is not authorized to perform: \
             autoscaling:SetDesiredCapacity"
                .into(),
        );
        assert_eq!(e.label(), "AccessDenied", "{code}");
        assert!(
            matches!(&e, CloudError::AccessDenied { action, .. } if action == "autoscaling:SetDesiredCapacity"),
            "{e:?}"
        );
    }
}

/// Waits until the group has `want` InService instances and no others.
async fn wait_in_service(fleet: &AwsFleet, want: usize) -> Vec<String> {
    let state = support::eventually_within(
        &format!("{want} InService instances and no others"),
        Duration::from_secs(30),
        || async { fleet.describe().await.expect("describe") },
        |state| {
            let live: Vec<_> = state.live_instances().collect();
            live.len() == want && live.iter().all(|i| i.lifecycle == Lifecycle::InService)
        },
    )
    .await;
    state
        .live_instances()
        .map(|i| i.instance_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_policy_runs_a_scale_out_and_scale_in_cycle_and_nothing_else() {
    let (moto, controller, _) = enforcing_moto().await;
    let fleet = fleet_as(&moto, &controller, "managed")
        .await
        .reading_launch_times();

    // Describe: group, launch template version (instance type), instance type shape.
    let state = fleet.describe().await.expect("DescribeAutoScalingGroups");
    assert_eq!((state.desired, state.min, state.max), (0, 0, 3));
    assert_eq!(state.instance_type.as_deref(), Some("c5.xlarge"));
    let shape = fleet
        .instance_type_info("c5.xlarge")
        .await
        .expect("DescribeInstanceTypes");
    assert_eq!((shape.cpu_millis, shape.memory_bytes), (4000, 8 << 30));

    // Scale out to 2, terminate one instance (decrementing), scale the rest in.
    fleet.set_desired(2).await.expect("SetDesiredCapacity");
    let ids = wait_in_service(&fleet, 2).await;
    // Their launch times (DescribeInstances), for the observed boot time.
    let described = fleet.describe().await.expect("describe");
    assert!(
        described.live_instances().all(|i| i.launched_at.is_some()),
        "launch times read: {described:?}"
    );
    fleet
        .terminate(&ids[0])
        .await
        .expect("TerminateInstanceInAutoScalingGroup");
    assert_eq!(fleet.describe().await.expect("describe").desired, 1);
    fleet.set_desired(0).await.expect("SetDesiredCapacity 0");
    wait_in_service(&fleet, 0).await;

    // Not the agent's call, and none that changes a group's definition.
    assert_denied(
        fleet.protect(&ids[1..], true).await,
        "SetInstanceProtection",
    );
    let raw = aws_sdk_autoscaling::Client::new(
        &moto
            .sdk_config_with_keys(&controller.id, &controller.secret)
            .await,
    );
    for (op, denied) in [
        (
            "UpdateAutoScalingGroup",
            raw.update_auto_scaling_group()
                .auto_scaling_group_name("managed")
                .max_size(100)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        ),
        (
            "DeleteAutoScalingGroup",
            raw.delete_auto_scaling_group()
                .auto_scaling_group_name("managed")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        ),
    ] {
        let message = denied.expect_err(op);
        assert!(
            message.contains(&format!("not authorized to perform: autoscaling:{op}")),
            "{op}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_policy_protects_instances_and_cannot_scale() {
    let (moto, controller, agent) = enforcing_moto().await;
    let scaler = fleet_as(&moto, &controller, "managed").await;
    scaler.set_desired(1).await.expect("SetDesiredCapacity");
    let ids = wait_in_service(&scaler, 1).await;

    let fleet = fleet_as(&moto, &agent, "managed").await;
    // What the agent does at start (reads its protection) and around attempts.
    fleet
        .describe()
        .await
        .expect("DescribeAutoScalingGroups as the agent");
    fleet
        .instance_type_info("c5.xlarge")
        .await
        .expect("DescribeInstanceTypes as the agent");
    fleet
        .protect(&ids, true)
        .await
        .expect("SetInstanceProtection");
    let state = fleet.describe().await.expect("describe");
    assert!(state.instances.iter().all(|i| i.protected_from_scale_in));
    fleet.protect(&ids, false).await.expect("unprotect");
    let state = fleet.describe().await.expect("describe");
    assert!(state.instances.iter().all(|i| !i.protected_from_scale_in));

    assert_denied(fleet.set_desired(5).await, "SetDesiredCapacity");
    assert_denied(
        fleet.terminate(&ids[0]).await,
        "TerminateInstanceInAutoScalingGroup",
    );
    // Nothing changed behind the denials.
    let state = scaler.describe().await.expect("describe");
    assert_eq!(state.desired, 1);
    assert_eq!(state.live_instances().count(), 1);
}

/// moto 5.2.5 skips `Condition` keys it has no value for, and it has none for
/// `aws:ResourceTag/...`: the controller's keys may scale a group that lacks the
/// `asg-batch/managed=true` tag. On AWS the same call is AccessDenied. This test pins the
/// emulator's gap so it is not mistaken for coverage; when it fails, moto has started
/// evaluating the condition and this should assert the denial instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_does_not_evaluate_resource_tag_conditions() {
    let (moto, controller, agent) = enforcing_moto().await;
    let untagged = fleet_as(&moto, &controller, "unmanaged").await;
    untagged
        .set_desired(1)
        .await
        .expect("moto 5.2.5 ignores aws:ResourceTag conditions (AWS would deny this)");
    let ids = wait_in_service(&untagged, 1).await;
    fleet_as(&moto, &agent, "unmanaged")
        .await
        .protect(&ids, true)
        .await
        .expect("moto 5.2.5 ignores aws:ResourceTag conditions (AWS would deny this)");
}

/// Statement by statement: reads on `*`; each write (anything not Describe*) is allowed
/// only under `StringEquals aws:ResourceTag/asg-batch/managed = "true"`; no wildcard
/// actions, no Deny-less `NotAction`; the exact action sets.
#[test]
fn policies_scope_every_write_to_managed_groups() {
    let expect = [
        (
            "controller-policy.json",
            vec![
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLaunchConfigurations",
                "autoscaling:SetDesiredCapacity",
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeInstances",
                "ec2:DescribeLaunchTemplateVersions",
            ],
        ),
        (
            "agent-policy.json",
            vec![
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeLaunchConfigurations",
                "autoscaling:SetInstanceProtection",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplateVersions",
            ],
        ),
    ];
    for (file, want) in expect {
        let doc = policy(file);
        assert_eq!(doc["Version"], "2012-10-17", "{file}");
        let mut actions = Vec::new();
        for st in doc["Statement"].as_array().expect("Statement list") {
            assert_eq!(st["Effect"], "Allow", "{file}: {st}");
            assert!(st.get("NotAction").is_none() && st.get("NotResource").is_none());
            let list: Vec<&str> = match &st["Action"] {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().map(|v| v.as_str().expect("action")).collect(),
                other => panic!("{file}: Action {other}"),
            };
            let writes = list
                .iter()
                .any(|a| !a.split(':').nth(1).unwrap_or("").starts_with("Describe"));
            for a in &list {
                assert!(!a.contains('*'), "{file}: wildcard action {a}");
            }
            if writes {
                assert!(
                    list.iter()
                        .all(|a| !a.split(':').nth(1).unwrap_or("").starts_with("Describe")),
                    "{file}: reads and writes share a statement: {st}"
                );
                assert_eq!(
                    st["Condition"],
                    serde_json::json!({"StringEquals": {format!("aws:ResourceTag/{MANAGED_TAG}"): "true"}}),
                    "{file}: a write without the managed-group condition: {st}"
                );
            }
            actions.extend(list);
        }
        actions.sort_unstable();
        assert_eq!(actions, want, "{file}");
    }
}

const WORLD: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: cloud}
spec:
  aws: {autoScalingGroupName: managed, region: us-east-1}
  minInstances: 0
  maxInstances: 3
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
metadata: {name: work}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "3", memory: 2Gi}
"#;

/// The controller against `managed`, as the IAM user `keys`.
async fn controller_as(moto: &MotoServer, keys: &Keys) -> (support::controller::Harness, AwsFleet) {
    use std::collections::HashMap;
    use std::sync::Arc;
    let fleet = fleet_as(moto, keys, "managed").await;
    let fleets: HashMap<String, Arc<dyn Fleet>> = HashMap::from([(
        "cloud".to_string(),
        Arc::new(fleet.clone()) as Arc<dyn Fleet>,
    )]);
    let h = support::controller::start(
        WORLD,
        support::controller::test_config(Duration::from_secs(30)),
        fleets,
    )
    .await;
    (h, fleet)
}

/// The Ready condition of compute environment `cloud`, once `ready` holds for it.
async fn ce_ready(
    h: &support::controller::Harness,
    what: &str,
    ready: impl Fn(&asg_batch::api::common::Condition) -> bool,
) -> asg_batch::api::common::Condition {
    let ces: kube::Api<asg_batch::api::ComputeEnvironment> = kube::Api::all(h.client.clone());
    support::eventually_within(
        what,
        Duration::from_secs(30),
        || async {
            ces.get("cloud")
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        },
        |c| c.as_ref().is_some_and(&ready),
    )
    .await
    .expect("a Ready condition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_without_set_desired_capacity_says_so_on_the_compute_environment() {
    let (moto, _, agent) = enforcing_moto().await;
    // The agent's keys describe groups and instance types but may not scale.
    let (h, fleet) = controller_as(&moto, &agent).await;
    let c = ce_ready(&h, "Ready=False AccessDenied", |c| {
        c.status == "False" && c.reason == "AccessDenied"
    })
    .await;
    assert!(
        c.message
            .contains("missing IAM permission autoscaling:SetDesiredCapacity"),
        "{}",
        c.message
    );
    use k8s_openapi::api::events::v1::Event;
    let events: kube::Api<Event> = kube::Api::namespaced(h.client.clone(), "default");
    let denied = support::eventually_within(
        "a Warning Event AccessDenied on the compute environment",
        Duration::from_secs(30),
        || async {
            events
                .list(&Default::default())
                .await
                .expect("events")
                .items
        },
        |items| {
            items.iter().any(|e| {
                e.reason.as_deref() == Some("AccessDenied")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("cloud")
            })
        },
    )
    .await;
    let note = denied
        .iter()
        .find(|e| e.reason.as_deref() == Some("AccessDenied"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(note.contains("autoscaling:SetDesiredCapacity"), "{note}");
    // The job says why it waits; the group is untouched.
    let job = h
        .wait_job("work", "a message naming the denial", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .is_some_and(|m| m.contains("autoscaling:SetDesiredCapacity"))
        })
        .await;
    assert!(
        job.status
            .and_then(|s| s.message)
            .is_some_and(|m| m.starts_with("ce/cloud cannot launch instances")),
    );
    assert_eq!(fleet.describe().await.expect("describe").desired, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_with_its_policy_scales_out_and_in_with_no_denial() {
    let (moto, controller, _) = enforcing_moto().await;
    let (mut h, fleet) = controller_as(&moto, &controller).await;
    let ids = wait_in_service(&fleet, 1).await;
    let node = ids[0].to_ascii_lowercase();
    h.register_node(&node, "cloud", "4", "8Gi").await;
    h.wait_job("work", "Starting", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(asg_batch::api::JobPhase::Starting)
    })
    .await;
    h.agent_started("work", 1).await;
    h.agent_exited("work", 1, 0).await;
    h.wait_job("work", "Succeeded", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(asg_batch::api::JobPhase::Succeeded)
    })
    .await;
    // Idle at once (scaleInAfterIdleSeconds: 0): drained, terminated, desired 0.
    wait_in_service(&fleet, 0).await;
    assert_eq!(fleet.describe().await.expect("describe").desired, 0);
    let c = ce_ready(&h, "Ready condition", |_| true).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Ready"),
        "{c:?}"
    );
    let reasons = h.wait_events("cloud", &["Scaled", "Terminating"]).await;
    assert!(
        !reasons
            .iter()
            .any(|r| r == "AccessDenied" || r == "FleetError"),
        "{reasons:?}"
    );
}
