//! How `asg-batch agent` authenticates without a static secret (`src/kubeauth.rs`):
//! the EKS token is the one `aws eks get-token` makes (checked against botocore, which the
//! AWS CLI signs with, at a fixed time), `asg-batch eks-token` prints it as an
//! ExecCredential from the default credential chain, and moto's STS answers the presigned
//! GetCallerIdentity inside it; a token file is re-read, so a rotated token is used without
//! a restart (the real kube-apiserver, whose ServiceAccount tokens can be revoked).
//!
//! What moto 5.2.5 does not check: it does not verify presigned (query-string) signatures,
//! and it routes and names the caller by an `Authorization` header only (see
//! [`moto_sts_get`]); the signature itself is proven by the byte-for-byte match with
//! botocore.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use asg_batch::kubeauth::{TOKEN_PREFIX, decode_token, eks_token};
use aws_credential_types::Credentials;
use support::moto::{MotoServer, xml_text};

/// aws-cli's `eks get-token` (awscli/customizations/eks/get_token.py) in botocore, with
/// botocore's clock fixed: an STS client on the regional endpoint, the cluster header
/// added before signing, a 60-second presigned GetCallerIdentity URL, base64url without
/// padding behind `k8s-aws-v1.`.
const BOTOCORE_GET_TOKEN: &str = r#"
import sys, datetime, base64
import botocore.session, botocore.auth
key, secret, token, region, cluster, ts = sys.argv[1:]
fixed = datetime.datetime.strptime(ts, "%Y%m%dT%H%M%SZ")
botocore.auth.get_current_datetime = lambda *a, **k: fixed
sts = botocore.session.get_session().create_client(
    "sts", region_name=region, aws_access_key_id=key, aws_secret_access_key=secret,
    aws_session_token=token or None, endpoint_url=f"https://sts.{region}.amazonaws.com")
def add_header(request, **kwargs):
    request.headers["x-k8s-aws-id"] = cluster
sts.meta.events.register("before-sign.sts.GetCallerIdentity", add_header)
url = sts.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET")
print("k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("="))
"#;

/// The token botocore makes for these credentials at `timestamp` (`YYYYMMDDTHHMMSSZ`).
fn botocore_token(
    key: &str,
    secret: &str,
    session: &str,
    region: &str,
    cluster: &str,
    timestamp: &str,
) -> String {
    let python = support::repo_root().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            BOTOCORE_GET_TOKEN,
            key,
            secret,
            session,
            region,
            cluster,
        ])
        .arg(timestamp)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "botocore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_token_is_the_one_aws_eks_get_token_makes() {
    // 2026-11-30T09:00:00Z, the time botocore is given.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_029_200);
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    for (session, region, cluster) in [
        // An instance profile: temporary credentials with a session token.
        ("IQoJb3JpZ2luX2VjE+/x==", "eu-west-1", "prod"),
        // An IAM user's keys.
        ("", "us-east-1", "my-cluster.dev"),
    ] {
        let creds = Credentials::new(
            "ASIAEXAMPLE",
            secret,
            (!session.is_empty()).then(|| session.to_owned()),
            None,
            "test",
        );
        let ours = eks_token(&creds, region, cluster, at).expect("token").token;
        let theirs = botocore_token(
            "ASIAEXAMPLE",
            secret,
            session,
            region,
            cluster,
            "20261130T090000Z",
        );
        assert!(theirs.starts_with(TOKEN_PREFIX), "{theirs}");
        assert_eq!(
            decode_token(&ours).unwrap(),
            decode_token(&theirs).unwrap(),
            "{region}/{cluster}"
        );
        assert_eq!(ours, theirs);
    }
}

/// One raw HTTP/1.1 GET; returns the status and the body.
fn http_get(addr: &str, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What EKS does with a token: GET the presigned URL (`path_and_query` on the STS host) with
/// the cluster header; sent to moto. moto routes a request by the credential scope of its
/// `Authorization` header and has no route for a presigned one, so the scope of
/// `X-Amz-Credential` is copied into such a header (moto verifies no signature either way,
/// and names the caller by that key).
fn moto_sts_get(
    moto: &MotoServer,
    host: &str,
    path_and_query: &str,
    cluster: &str,
) -> (u16, String) {
    let credential = path_and_query
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("X-Amz-Credential="))
        .expect("X-Amz-Credential")
        .replace("%2F", "/");
    let routing =
        format!("AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature=0");
    let addr = moto.endpoint.trim_start_matches("http://").to_owned();
    http_get(
        &addr,
        path_and_query,
        &[
            ("Host", host),
            ("x-k8s-aws-id", cluster),
            ("Authorization", &routing),
        ],
    )
}

#[tokio::test]
async fn eks_token_prints_an_exec_credential_that_moto_sts_answers() {
    let moto = MotoServer::start();
    moto.query_ok(
        "iam",
        &[
            ("Action", "CreateUser"),
            ("Version", "2010-05-08"),
            ("UserName", "worker"),
        ],
    );
    let xml = moto.query_ok(
        "iam",
        &[
            ("Action", "CreateAccessKey"),
            ("Version", "2010-05-08"),
            ("UserName", "worker"),
        ],
    );
    let key = xml_text(&xml, "AccessKeyId").unwrap().to_owned();
    let secret = xml_text(&xml, "SecretAccessKey").unwrap().to_owned();

    // As a kubeconfig `exec:` runs it: credentials and region from the default chain.
    let before = jiff::Timestamp::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args(["eks-token", "--cluster-name", "batch-prod"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_ACCESS_KEY_ID", &key)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run asg-batch eks-token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cred: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["apiVersion"], "client.authentication.k8s.io/v1beta1");
    let expires: jiff::Timestamp = cred["status"]["expirationTimestamp"]
        .as_str()
        .expect("expirationTimestamp")
        .parse()
        .expect("RFC 3339");
    let lifetime = expires.duration_since(before).as_secs();
    assert!((13 * 60..=14 * 60 + 5).contains(&lifetime), "{lifetime} s");
    let token = cred["status"]["token"].as_str().expect("token");
    let url = decode_token(token).expect("an EKS token");
    let rest = url
        .strip_prefix("https://sts.us-east-1.amazonaws.com")
        .unwrap_or_else(|| panic!("regional STS endpoint: {url}"));
    assert!(
        rest.contains(&format!("X-Amz-Credential={key}%2F")),
        "{url}"
    );
    assert!(
        rest.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"),
        "{url}"
    );
    assert!(rest.contains("X-Amz-Expires=60"), "{url}");

    // What EKS does with it: GET the presigned URL with the cluster header.
    let (status, body) = moto_sts_get(&moto, "sts.us-east-1.amazonaws.com", rest, "batch-prod");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<GetCallerIdentityResult>"), "{body}");
    assert!(
        xml_text(&body, "Arn").is_some_and(|a| a.ends_with(":user/worker")),
        "the signer's identity: {body}"
    );

    // No credentials anywhere: a plain error, nothing on stdout.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args([
            "eks-token",
            "--cluster-name",
            "batch-prod",
            "--region",
            "us-east-1",
        ])
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .await
        .expect("run asg-batch eks-token");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS credentials"), "{err}");
}

/// The bearer token in `file` is re-read by the running agent: after the file is rotated to
/// a new ServiceAccount token and the old account is deleted (its tokens now refused), the
/// same agent process keeps heartbeating. On the real kube-apiserver, which authenticates
/// ServiceAccount tokens (the embedded server does not authenticate at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_used_without_a_restart() {
    use asg_batch::api::{BatchNode, ComputeEnvironment};
    use kube::api::{Api, PostParams};
    use support::kube::{RealKube, client_from_kubeconfig};

    let real = RealKube::shared();
    real.install_crds().await;
    let ns = real.namespace("tokenfile").await;
    let admin = real.client();
    let token_a = real.mint_token(&ns, "node-a").await;
    for sa in ["node-a", "node-b"] {
        // What an agent may do is the nodeauth tests' subject; here it may do anything.
        let binding = format!("{ns}-{sa}");
        let account = format!("{ns}:{sa}");
        let out = real
            .kubectl(&[
                "create",
                "clusterrolebinding",
                &binding,
                "--clusterrole=cluster-admin",
                &format!("--serviceaccount={account}"),
            ])
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ce: ComputeEnvironment = serde_json::from_value(serde_json::json!({
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "ComputeEnvironment",
        "metadata": {"name": ns},
        "spec": {"local": {"executor": "process"}, "minInstances": 0, "maxInstances": 1,
                 "instanceShape": {"cpu": "1", "memory": "1Gi"}}
    }))
    .expect("ce");
    Api::<ComputeEnvironment>::all(admin.clone())
        .create(&PostParams::default(), &ce)
        .await
        .expect("create ce");

    let dir = tempfile::tempdir().expect("tempdir");
    let admin_kubeconfig = std::fs::read_to_string(real.kubeconfig()).expect("kubeconfig");
    let ca = admin_kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .and_then(support::base64_decode)
        .expect("the cluster CA");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca).expect("write CA");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token_a).expect("write token");

    let node = format!("{ns}-n1");
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .arg("agent")
        .args(["--compute-environment", &ns, "--instance-id", &node])
        .args(["--heartbeat-interval", "1", "--executor", "process"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--kube-server", &real.url()])
        .arg("--kube-ca-file")
        .arg(&ca_file)
        .arg("--kube-token-file")
        .arg(&token_file)
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start agent");
    let nodes: Api<BatchNode> = Api::all(admin.clone());
    let heartbeat = |n: &Option<BatchNode>| {
        n.as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.heartbeat_time.clone())
            .map(|t| t.0.to_string())
    };
    support::eventually_within(
        "the agent registers with token A",
        Duration::from_secs(60),
        || async { nodes.get_opt(&node).await.ok().flatten() },
        |n| heartbeat(n).is_some(),
    )
    .await;

    // Rotate: token B into the file (atomically), then revoke A by deleting its account.
    let token_b = real.mint_token(&ns, "node-b").await;
    let next = dir.path().join("token.next");
    std::fs::write(&next, &token_b).expect("write token");
    std::fs::rename(&next, &token_file).expect("rotate token");
    let out = real
        .kubectl(&["-n", &ns, "delete", "serviceaccount", "node-a"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_a = client_from_kubeconfig(&real.kubeconfig_for_token(&format!("{ns}-a"), &token_a));
    let refused = support::eventually_within(
        "token A refused",
        Duration::from_secs(30),
        || async {
            Api::<BatchNode>::all(as_a.clone())
                .get_opt(&node)
                .await
                .err()
        },
        |e| matches!(e, Some(kube::Error::Api(s)) if s.code == 401),
    )
    .await;
    assert!(refused.is_some());

    // The same process goes on heartbeating, so it now sends token B.
    let after_revocation = heartbeat(&nodes.get_opt(&node).await.expect("get node"));
    support::eventually_within(
        "a heartbeat after token A was revoked",
        Duration::from_secs(120),
        || async { nodes.get_opt(&node).await.ok().flatten() },
        |n| heartbeat(n).is_some() && heartbeat(n) != after_revocation,
    )
    .await;
    assert!(
        agent.try_wait().expect("agent status").is_none(),
        "the agent did not restart"
    );
}

/// A front for a plain-HTTP API server that records the `Authorization` header of the
/// first request on every connection, then relays the bytes both ways. Returns its URL.
async fn recording_front(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match inbound.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                if let Some(v) = text.lines().find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_owned())
                }) {
                    record.lock().expect("lock").push(v);
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if outbound.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (url, seen)
}

/// `asg-batch agent --eks-cluster-name` end to end: the agent process runs its own
/// `eks-token` (from the AWS credentials of its environment) and registers its BatchNode
/// with that bearer token; the token it sent names the cluster, is signed by its key and
/// moto's STS answers the request inside it. (The embedded API server does not
/// authenticate: the front records what an EKS API server would check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_signs_in_with_an_eks_token_from_its_aws_credentials() {
    use asg_batch::api::{BatchNode, ComputeEnvironment};
    use kube::api::{Api, PostParams};

    let moto = MotoServer::start();
    let server = support::apiserver::server().await;
    let client = server.client();
    support::kube::install_crds(&client).await;
    let ce: ComputeEnvironment = serde_json::from_value(serde_json::json!({
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "ComputeEnvironment",
        "metadata": {"name": "eks"},
        "spec": {"local": {"executor": "process"}, "minInstances": 0, "maxInstances": 1,
                 "instanceShape": {"cpu": "1", "memory": "1Gi"}}
    }))
    .expect("ce");
    Api::<ComputeEnvironment>::all(client.clone())
        .create(&PostParams::default(), &ce)
        .await
        .expect("create ce");
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).expect("kubeconfig");
    let upstream = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .and_then(|s| s.trim().strip_prefix("http://"))
        .expect("server: http://... in the kubeconfig")
        .to_owned();
    let (front, seen) = recording_front(upstream).await;

    let data = tempfile::tempdir().expect("tempdir");
    let _agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .arg("agent")
        .args(["--compute-environment", "eks", "--instance-id", "i-0EKS"])
        .args(["--heartbeat-interval", "1", "--executor", "process"])
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--eks-cluster-name",
            "batch-prod",
            "--eks-region",
            "eu-west-1",
        ])
        .args(["--kube-server", &front])
        .env_remove("KUBECONFIG")
        .env("AWS_ACCESS_KEY_ID", "ASIAINSTANCEPROFILE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_SESSION_TOKEN", "session")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start agent");
    let nodes: Api<BatchNode> = Api::all(client.clone());
    support::eventually_within(
        "the agent registers through the front",
        Duration::from_secs(60),
        || async { nodes.get_opt("i-0eks").await.ok().flatten() },
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .is_some_and(|s| s.heartbeat_time.is_some())
        },
    )
    .await;

    let tokens = seen.lock().expect("lock").clone();
    assert!(!tokens.is_empty(), "no request carried a bearer token");
    for header in &tokens {
        let token = header
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("a bearer token: {header}"));
        let url = decode_token(token).expect("an EKS token");
        let rest = url
            .strip_prefix("https://sts.eu-west-1.amazonaws.com")
            .unwrap_or_else(|| panic!("the cluster's regional STS: {url}"));
        assert!(
            rest.contains("X-Amz-Credential=ASIAINSTANCEPROFILE%2F"),
            "{url}"
        );
        assert!(rest.contains("X-Amz-Security-Token=session"), "{url}");
        assert!(
            rest.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"),
            "{url}"
        );
        let (status, body) = moto_sts_get(&moto, "sts.eu-west-1.amazonaws.com", rest, "batch-prod");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<GetCallerIdentityResult>"), "{body}");
        // Exactly what `aws eks get-token` signs with these credentials at that moment.
        let date = rest
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("X-Amz-Date="))
            .expect("X-Amz-Date");
        let theirs = botocore_token(
            "ASIAINSTANCEPROFILE",
            "secret",
            "session",
            "eu-west-1",
            "batch-prod",
            date,
        );
        assert_eq!(token, theirs);
    }
}
