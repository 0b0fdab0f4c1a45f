//! The moto server started by the tests speaks the AWS APIs asg-batch uses: an ASG created
//! from a launch template with the Rust SDK can be read back, and instance types described.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_read_back_an_asg() {
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    support::moto::create_group(&config, "batch-nightly", 5, 2).await;

    let asg = aws_sdk_autoscaling::Client::new(&config);
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("batch-nightly")
        .send()
        .await
        .expect("DescribeAutoScalingGroups");
    let group = groups
        .auto_scaling_groups()
        .first()
        .expect("the group exists");
    assert_eq!(group.auto_scaling_group_name(), Some("batch-nightly"));
    assert_eq!(group.max_size(), Some(5));
    assert_eq!(group.desired_capacity(), Some(2));
    assert_eq!(
        group.instances().len(),
        2,
        "moto launches the desired instances"
    );
    assert!(
        group.launch_template().is_some(),
        "created from the launch template"
    );

    let ec2 = aws_sdk_ec2::Client::new(&config);
    let types = ec2
        .describe_instance_types()
        .instance_types("c5.xlarge".into())
        .send()
        .await
        .expect("DescribeInstanceTypes");
    let info = types.instance_types().first().expect("c5.xlarge known");
    assert_eq!(
        info.v_cpu_info()
            .and_then(aws_sdk_ec2::types::VCpuInfo::default_v_cpus),
        Some(4)
    );
    assert_eq!(
        info.memory_info()
            .and_then(aws_sdk_ec2::types::MemoryInfo::size_in_mib),
        Some(8192)
    );
}
