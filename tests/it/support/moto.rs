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
        Self::start_with_env(&[])
    }

    /// As [`MotoServer::start`], with extra environment variables for the server (e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT`, which turns IAM enforcement on after that many calls).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(
            bin.is_file(),
            "moto_server not found at {} (run `make test-deps`)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
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
        self.sdk_config_with_keys("testing", "testing").await
    }

    /// An AWS SDK config pointing at this server with the given access key, in us-east-1.
    pub async fn sdk_config_with_keys(&self, id: &str, secret: &str) -> aws_config::SdkConfig {
        asg_batch::cloud::aws::config_loader()
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
                id, secret, None, None, "moto",
            ))
            .load()
            .await
    }

    /// One AWS Query-protocol call (form-encoded POST) to `service` (`iam`, `cloudformation`,
    /// ...), for services the crate has no SDK for. It carries a SigV4-shaped `Authorization`
    /// header naming the service (moto routes on its credential scope) but no real
    /// signature, so it only succeeds while moto does not enforce IAM (before
    /// `INITIAL_NO_AUTH_ACTION_COUNT` calls). Returns the status and the XML body.
    pub fn query(&self, service: &str, params: &[(&str, &str)]) -> (u16, String) {
        use std::io::{Read, Write};
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().copied())
            .finish();
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).expect("connect to moto");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
             X-Amz-Date: 20250101T000000Z\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send to moto");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read from moto");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("HTTP status line");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// As [`MotoServer::query`], asserting a 2xx answer; returns the XML body.
    pub fn query_ok(&self, service: &str, params: &[(&str, &str)]) -> String {
        let (status, body) = self.query(service, params);
        assert!(
            (200..300).contains(&status),
            "{service} {params:?}: HTTP {status}: {body}"
        );
        body
    }
}

/// The text of the first `<tag>...</tag>` element in an XML answer.
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..end])
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
