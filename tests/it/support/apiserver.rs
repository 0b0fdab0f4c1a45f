//! Shared helpers for the `apiserver_*` tests: an in-process server that stops on drop,
//! a test CRD (`Widget`), and a kubectl runner with an isolated cache.

use std::path::PathBuf;
use std::process::Output;

use asg_batch_apiserver::{ApiServerConfig, RunningApiServer, start};
use kube::CustomResource;
use kube::api::{Api, PostParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec of the test kind `Widget` (group `example.asgbatch.io`, see
/// `tests/apiserver_data/widgets-crd.yaml`).
#[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "example.asgbatch.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd"
)]
pub struct WidgetSpec {
    /// Size.
    pub size: i64,
    /// Colour (defaulted to blue by the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// Widget status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct WidgetStatus {
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// A test server with its scratch directory; stops when dropped.
pub struct TestServer {
    pub server: RunningApiServer,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn client(&self) -> kube::Client {
        self.server.client().expect("kube client")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        let p = self.dir.path().join("kubeconfig");
        if !p.exists() {
            self.server.write_kubeconfig(&p).expect("write kubeconfig");
        }
        p
    }
    /// Run helm against this server, its caches and config inside the test's directory.
    pub async fn helm(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(super::tools::helm())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .env("HELM_CACHE_HOME", self.dir.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", self.dir.path().join("helm-config"))
            .env("HELM_DATA_HOME", self.dir.path().join("helm-data"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .kill_on_drop(true)
            .output()
            .await
            .expect("run helm")
    }
    /// Run kubectl against this server; returns its output.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None).await
    }
    /// Run kubectl with stdin.
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(kubectl_path());
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(mut si) = child.stdin.take() {
            if let Some(s) = stdin {
                si.write_all(s.as_bytes()).await.expect("write stdin");
            }
            drop(si);
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl timed out")
            .expect("kubectl output")
    }
}

/// The kubectl binary (see [`super::tools::kubectl`]).
pub fn kubectl_path() -> PathBuf {
    super::tools::kubectl()
}

/// Start an in-memory server.
pub async fn server() -> TestServer {
    server_with(ApiServerConfig::default()).await
}

/// Start a server with a config (listen defaults to 127.0.0.1:0).
pub async fn server_with(cfg: ApiServerConfig) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(cfg).await.expect("start apiserver");
    TestServer { server, dir }
}

/// The Widget CRD as JSON.
pub fn widget_crd() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apiserver_data/widgets-crd.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(p).expect("read crd")).expect("parse crd")
}

/// Install the Widget CRD through the API.
pub async fn install_widgets(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(widget_crd()).expect("crd type");
    api.create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
}

/// A widget object.
pub fn widget(name: &str, size: i64) -> Widget {
    Widget::new(
        name,
        WidgetSpec {
            size,
            ..WidgetSpec::default()
        },
    )
}

/// The Status of a kube API error (panics on other errors).
pub fn status_of(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Raw HTTP request to the server; returns (status, headers text, body).
pub async fn raw(server: &TestServer, req: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.server.addr())
        .await
        .expect("connect");
    s.write_all(req).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// Simple HTTP/1.1 request with `Connection: close`.
pub async fn http(
    server: &TestServer,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let (code, head, body) = raw(server, &bytes).await;
    // de-chunk if needed
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (code, head, body)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A JSON merge patch of `name` that must succeed; returns the patched object.
pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
    .unwrap_or_else(|e| panic!("merge patch of {name}: {e}"))
}

/// Creates `widget(name, size)` and returns it as stored.
pub async fn create_widget(api: &Api<Widget>, name: &str, size: i64) -> Widget {
    api.create(&PostParams::default(), &widget(name, size))
        .await
        .unwrap_or_else(|e| panic!("create widget {name}: {e}"))
}
