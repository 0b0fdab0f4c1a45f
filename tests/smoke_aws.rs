//! The moto server started by the tests speaks the AWS APIs asg-batch uses: an ASG created
//! from a launch template with the Rust SDK can be read back.

mod support;

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_ec2::types::{RequestLaunchTemplateData, ResourceType};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_read_back_an_asg() {
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let asg = aws_sdk_autoscaling::Client::new(&config);

    let image_id = ec2
        .describe_images()
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .first()
        .and_then(|i| i.image_id().map(String::from))
        .expect("moto ships AMIs");
    let lt = ec2
        .create_launch_template()
        .launch_template_name("batch-workers")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(&image_id)
                .instance_type("c5.xlarge".into())
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate");
    let lt_id = lt
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("template id")
        .to_string();
    let _ = ResourceType::Instance;

    asg.create_auto_scaling_group()
        .auto_scaling_group_name("batch-nightly")
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(&lt_id)
                .version("$Latest")
                .build(),
        )
        .min_size(0)
        .max_size(5)
        .desired_capacity(2)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("CreateAutoScalingGroup");

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

    let types = ec2
        .describe_instance_types()
        .instance_types("c5.xlarge".into())
        .send()
        .await
        .expect("DescribeInstanceTypes");
    let info = types.instance_types().first().expect("c5.xlarge known");
    assert_eq!(info.v_cpu_info().and_then(|v| v.default_v_cpus()), Some(4));
    assert_eq!(info.memory_info().and_then(|m| m.size_in_mib()), Some(8192));
}
