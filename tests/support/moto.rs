//! A real moto server (the AWS API emulator) on a free loopback port.

use super::{ChildGuard, free_port, repo_root, wait_until};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running `moto_server`, stopped on drop.
pub struct MotoServer {
    _child: ChildGuard,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl MotoServer {
    /// Starts `.venv/bin/moto_server` and waits until it accepts connections.
    pub fn start() -> Self {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(
            bin.is_file(),
            "moto_server not found at {} (run `make test-deps`)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let guard = ChildGuard {
            child,
            name: "moto_server",
        };
        let addr = format!("127.0.0.1:{port}");
        wait_until("moto_server to listen", Duration::from_secs(30), || {
            TcpStream::connect(&addr).is_ok()
        });
        Self {
            _child: guard,
            endpoint: format!("http://{addr}"),
        }
    }

    /// An AWS SDK config pointing at this server with dummy credentials in us-east-1.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

/// Creates a c5.xlarge launch template (from an AMI moto ships) and an Auto Scaling Group
/// `name` using it, with min 0, the given max and desired capacity, in us-east-1a.
pub async fn create_group(config: &aws_config::SdkConfig, name: &str, max: i32, desired: i32) {
    use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
    use aws_sdk_ec2::types::RequestLaunchTemplateData;
    let ec2 = aws_sdk_ec2::Client::new(config);
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
        .launch_template_name(format!("{name}-lt"))
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image_id)
                .instance_type("c5.xlarge".into())
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate");
    let lt_id = lt
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("launch template id")
        .to_string();
    aws_sdk_autoscaling::Client::new(config)
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(lt_id)
                .version("$Latest")
                .build(),
        )
        .min_size(0)
        .max_size(max)
        .desired_capacity(desired)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("CreateAutoScalingGroup");
}
