//! `manifests/aws/fleet.yaml` on moto's CloudFormation: the stack creates the instance role
//! and profile, the launch template with the bootstrap user data and the Auto Scaling Group;
//! `AwsFleet` sees the group as the controller will (min 0, instance type from the launch
//! template, the `asg-batch/managed=true` tag), SetDesiredCapacity launches instances
//! carrying the rendered user data, and the controller runs a job through the group.
//!
//! moto 5.2.5 limits: it creates the resources and renders `Fn::Sub`/`Fn::Base64`, but boots
//! nothing, so cloud-init and the agent do not run here (tests/it/aws_bootstrap.rs checks the
//! user data and unit instead) and the job's agent is played by the test; moto does not
//! attach the instance profile to launched instances either (it is checked on the launch
//! template).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use asg_batch::api::JobPhase;
use asg_batch::cloud::Fleet;
use asg_batch::cloud::aws::AwsFleet;
use support::controller::{start, test_config};
use support::moto::{MotoServer, xml_text};

fn read(rel: &str) -> String {
    let path = support::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Creates the fleet stack for compute environment `cloud` with group `batch` (max 4) and
/// returns the stack's outputs.
async fn create_stack(
    moto: &MotoServer,
    config: &aws_config::SdkConfig,
) -> HashMap<String, String> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let image = ec2
        .describe_images()
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .first()
        .and_then(|i| i.image_id().map(String::from))
        .expect("moto ships AMIs");
    let subnets: Vec<String> = ec2
        .describe_subnets()
        .send()
        .await
        .expect("DescribeSubnets")
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(String::from))
        .take(2)
        .collect();
    assert!(!subnets.is_empty(), "moto has a default VPC with subnets");
    let template = read("manifests/aws/fleet.yaml");
    let params = [
        ("FleetName", "batch".to_string()),
        ("ComputeEnvironment", "cloud".to_string()),
        ("ImageId", image),
        ("MaxSize", "4".to_string()),
        ("Subnets", subnets.join(",")),
        ("ClusterName", "prod".to_string()),
        (
            "ClusterEndpoint",
            "https://ABC.gr7.us-east-1.eks.amazonaws.com".to_string(),
        ),
        ("ClusterCertificateAuthority", "Q0EgYnVuZGxl".to_string()),
        ("AgentBinaryBucket", "artifacts".to_string()),
        ("AgentBinaryKey", "asg-batch/0.1.0/asg-batch".to_string()),
    ];
    let mut form: Vec<(String, String)> = vec![
        ("Action".into(), "CreateStack".into()),
        ("Version".into(), "2010-05-15".into()),
        ("StackName".into(), "fleet".into()),
        ("TemplateBody".into(), template),
        ("Capabilities.member.1".into(), "CAPABILITY_IAM".into()),
    ];
    for (i, (k, v)) in params.iter().enumerate() {
        form.push((
            format!("Parameters.member.{}.ParameterKey", i + 1),
            k.to_string(),
        ));
        form.push((
            format!("Parameters.member.{}.ParameterValue", i + 1),
            v.clone(),
        ));
    }
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    moto.query_ok("cloudformation", &form);
    let xml = moto.query_ok(
        "cloudformation",
        &[
            ("Action", "DescribeStacks"),
            ("Version", "2010-05-15"),
            ("StackName", "fleet"),
        ],
    );
    assert_eq!(
        xml_text(&xml, "StackStatus"),
        Some("CREATE_COMPLETE"),
        "{xml}"
    );
    let mut outputs = HashMap::new();
    let mut rest = xml.as_str();
    while let Some(i) = rest.find("<OutputKey>") {
        rest = &rest[i..];
        let key = xml_text(rest, "OutputKey").expect("key").to_string();
        let value = xml_text(rest, "OutputValue").expect("value").to_string();
        outputs.insert(key, value);
        rest = &rest["<OutputKey>".len()..];
    }
    outputs
}

async fn wait_desired(fleet: &AwsFleet, want: u32) {
    support::eventually(
        &format!("desired capacity {want}"),
        || async { fleet.describe().await.expect("describe").desired },
        |d| *d == want,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_creates_a_managed_group_that_scales_with_the_bootstrap_user_data() {
    let moto = MotoServer::start();
    let config = moto.sdk_config().await;
    let outputs = create_stack(&moto, &config).await;
    assert_eq!(
        outputs.get("AutoScalingGroupName").map(String::as_str),
        Some("batch")
    );
    let role = outputs
        .get("InstanceRoleArn")
        .expect("InstanceRoleArn output");
    assert!(
        role.starts_with("arn:aws:iam::") && role.contains(":role/"),
        "{role}"
    );

    // The group as the controller sees it.
    let fleet = AwsFleet::new(&config, "batch");
    let state = fleet.describe().await.expect("describe");
    assert_eq!((state.min, state.max, state.desired), (0, 4, 0));
    assert_eq!(state.instance_type.as_deref(), Some("c5.xlarge"));
    let autoscaling = aws_sdk_autoscaling::Client::new(&config);
    let group = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("batch")
        .send()
        .await
        .expect("DescribeAutoScalingGroups");
    let group = group.auto_scaling_groups().first().expect("group");
    let tags: HashMap<&str, (&str, bool)> = group
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default(),
                (
                    t.value().unwrap_or_default(),
                    t.propagate_at_launch().unwrap_or(false),
                ),
            )
        })
        .collect();
    assert_eq!(tags.get("asg-batch/managed"), Some(&("true", true)));
    assert_eq!(
        tags.get("asg-batch/compute-environment"),
        Some(&("cloud", true))
    );

    // The launch template: the instance profile, IMDSv2, and the rendered user data.
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let lt_id = outputs
        .get("LaunchTemplateId")
        .expect("LaunchTemplateId output");
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_id(lt_id)
        .versions("$Latest")
        .send()
        .await
        .expect("DescribeLaunchTemplateVersions");
    let data = versions
        .launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
        .expect("launch template data");
    let profile = data
        .iam_instance_profile()
        .and_then(|p| p.arn())
        .expect("an instance profile");
    assert!(profile.contains(":instance-profile/"), "{profile}");
    assert_eq!(
        data.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(aws_sdk_ec2::types::LaunchTemplateHttpTokensState::as_str),
        Some("required")
    );
    let user_data = String::from_utf8(
        support::base64_decode(data.user_data().expect("user data")).expect("base64 user data"),
    )
    .expect("UTF-8 user data");
    assert!(user_data.starts_with("#cloud-config\n"));
    assert!(!user_data.contains("${"), "every placeholder is filled");
    for want in [
        "ASG_BATCH_COMPUTE_ENVIRONMENT=cloud\n",
        "AWS_REGION=us-east-1\n",
        "server: https://ABC.gr7.us-east-1.eks.amazonaws.com\n",
        "certificate-authority-data: Q0EgYnVuZGxl\n",
        r#"args: [eks-token, --cluster-name, "prod", --region, "us-east-1"]"#,
        r#"bucket="artifacts""#,
        r#"key="asg-batch/0.1.0/asg-batch""#,
        "ExecStart=/usr/local/bin/asg-batch agent --compute-environment $ASG_BATCH_COMPUTE_ENVIRONMENT $ASG_BATCH_AGENT_ARGS\n",
    ] {
        assert!(
            user_data.contains(want),
            "user data lacks {want:?}:\n{user_data}"
        );
    }
    // Rendered, it is still valid YAML whose structure survived the substitution.
    let doc: serde_yaml::Value = serde_yaml::from_str(&user_data).expect("user data is YAML");
    assert_eq!(doc["write_files"].as_sequence().map(Vec::len), Some(4));

    // SetDesiredCapacity launches instances of the template in the group's subnets.
    fleet.set_desired(2).await.expect("SetDesiredCapacity");
    let state = fleet.describe().await.expect("describe");
    let ids: Vec<String> = state
        .live_instances()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(ids.len(), 2, "{:?}", state.instances);
    assert!(
        state
            .instances
            .iter()
            .all(|i| i.instance_type.as_deref() == Some("c5.xlarge"))
    );
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&ids[0])
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("DescribeInstanceAttribute userData");
    let launched =
        support::base64_decode(attr.user_data().and_then(|u| u.value()).expect("user data"))
            .expect("base64");
    assert_eq!(String::from_utf8(launched).expect("UTF-8"), user_data);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_a_job_through_the_stacks_group() {
    let moto = MotoServer::start();
    let config = moto.sdk_config().await;
    create_stack(&moto, &config).await;
    let fleet = Arc::new(AwsFleet::new(&config, "batch"));
    let fleets: HashMap<String, Arc<dyn Fleet>> =
        HashMap::from([("cloud".to_string(), fleet.clone() as Arc<dyn Fleet>)]);
    let mut h = start(WORLD, test_config(Duration::from_secs(5)), fleets).await;

    // One 2-cpu job: one c5.xlarge (shape from the stack's launch template).
    wait_desired(&fleet, 1).await;
    let state = fleet.describe().await.expect("describe");
    let id = state
        .live_instances()
        .map(|i| i.instance_id.clone())
        .next()
        .expect("a launched instance");
    // The instance's agent (played here: moto boots nothing) registers and runs the job.
    h.register_node(&id.to_ascii_lowercase(), "cloud", "4", "8Gi")
        .await;
    h.wait_job("hello", "Starting", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
    })
    .await;
    h.agent_started("hello", 1).await;
    h.agent_exited("hello", 1, 0).await;
    h.wait_job("hello", "Succeeded", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Succeeded)
    })
    .await;
    // Idle: the instance is terminated through the group and desired goes back to 0.
    wait_desired(&fleet, 0).await;
}
