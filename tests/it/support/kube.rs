//! A real Kubernetes API server for the tests, modelled on controller-runtime's envtest:
//! etcd and kube-apiserver (built by `scripts/kube-build.sh`, pinned in `tests/kube/`)
//! started by `scripts/kube-up.sh` on free loopback ports with serving certificates,
//! client-certificate authentication, RBAC authorization and ServiceAccount signing keys.
//! No kube-controller-manager runs: namespaces never finish terminating and nothing is
//! garbage-collected, so each test works in its own namespace or with its own names.
//!
//! [`RealKube::shared`] is one server per test process, stopped by a watchdog when the
//! process exits; [`RealKube::start`] is a server of one's own, stopped on drop. Both offer
//! what `support::apiserver::TestServer` offers for the embedded server (`client`,
//! `kubeconfig`, `kubectl`, `helm`), plus identities: [`RealKube::client_for_user`]
//! (a client certificate signed by the cluster's CA) and [`RealKube::mint_token`]
//! (a ServiceAccount token from TokenRequest).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::repo_root;

/// A running etcd + kube-apiserver pair and its state directory.
pub struct RealKube {
    dir: PathBuf,
    /// Removes the state directory when an owned server drops (None for the shared one).
    _tmp: Option<tempfile::TempDir>,
    owned: bool,
}

impl RealKube {
    /// The server of this test process, started on first use and stopped (its directory
    /// removed) by a watchdog once the process has exited.
    pub fn shared() -> &'static RealKube {
        static SHARED: OnceLock<RealKube> = OnceLock::new();
        SHARED.get_or_init(|| {
            let tmp = tempfile::Builder::new()
                .prefix("asg-batch-kube-")
                .tempdir()
                .expect("tempdir");
            // Kept past the process: the watchdog removes it.
            let dir = tmp.keep();
            up(&dir, true);
            RealKube {
                dir,
                _tmp: None,
                owned: false,
            }
        })
    }

    /// A server of one's own, stopped when the guard drops.
    pub fn start() -> RealKube {
        let tmp = tempfile::Builder::new()
            .prefix("asg-batch-kube-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        up(&dir, true);
        RealKube {
            dir,
            _tmp: Some(tmp),
            owned: true,
        }
    }

    /// The state directory (certificates, logs, users' kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        std::fs::read_to_string(self.dir.join("server-url"))
            .expect("server-url")
            .trim()
            .to_string()
    }

    /// etcd's client URL, `http://127.0.0.1:PORT` (plain HTTP, loopback only).
    pub fn etcd_url(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd-url"))
            .expect("etcd-url (written by scripts/kube-up.sh)")
            .trim()
            .to_string()
    }

    /// Compacts etcd up to `revision` (a resourceVersion), as kube-apiserver does every
    /// five minutes: older revisions can no longer be read, so lists at them are 410.
    /// Through etcd's JSON gateway (`POST /v3/kv/compaction`).
    pub async fn compact_etcd(&self, revision: u64) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.etcd_url().trim_start_matches("http://").to_string();
        let body = format!("{{\"revision\":\"{revision}\",\"physical\":true}}");
        let req = format!(
            "POST /v3/kv/compaction HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("connect to etcd at {addr}: {e}"));
        s.write_all(req.as_bytes()).await.expect("write to etcd");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out))
            .await
            .expect("etcd compaction timed out")
            .expect("read from etcd");
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "etcd compaction to {revision}: {out}"
        );
    }

    /// The admin kubeconfig (user `asg-batch-admin` in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A client as admin.
    pub fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig())
    }

    /// A kubeconfig for the user `user` in `groups`, authenticated by a client certificate
    /// signed with the cluster's CA (`scripts/kube-user.sh`). `name` names the files.
    pub fn kubeconfig_for_user(&self, name: &str, user: &str, groups: &[&str]) -> PathBuf {
        let out = Command::new(repo_root().join("scripts/kube-user.sh"))
            .arg(&self.dir)
            .arg(name)
            .arg(user)
            .args(groups)
            .output()
            .expect("run scripts/kube-user.sh");
        assert!(
            out.status.success(),
            "kube-user.sh {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// A client for the user `user` in `groups` (a client certificate).
    pub fn client_for_user(&self, user: &str, groups: &[&str]) -> kube::Client {
        let name: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        client_from_kubeconfig(&self.kubeconfig_for_user(&name, user, groups))
    }

    /// A token of the ServiceAccount `namespace/name` from TokenRequest (the account is
    /// created if missing), valid for an hour for the server's default audience.
    pub async fn mint_token(&self, namespace: &str, name: &str) -> String {
        let admin = self.client();
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        issued.status.expect("TokenRequest status").token
    }

    /// A kubeconfig that authenticates with a bearer token; `name` names the file.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        let admin = std::fs::read_to_string(self.kubeconfig()).expect("read kubeconfig");
        let ca = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
            .expect("certificate-authority-data in the admin kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: kube\n    user: {name}\ncurrent-context: {name}\n",
            self.url()
        );
        let dir = self.dir.join("users");
        std::fs::create_dir_all(&dir).expect("users dir");
        let path = dir.join(format!("{name}.token.kubeconfig"));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A client for the ServiceAccount `namespace/name`, with a token from TokenRequest.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> kube::Client {
        let token = self.mint_token(namespace, name).await;
        client_from_kubeconfig(&self.kubeconfig_for_token(&format!("{namespace}.{name}"), &token))
    }

    /// Creates a namespace of its own for a test: `prefix-` and a random suffix.
    pub async fn namespace(&self, prefix: &str) -> String {
        let api: Api<Namespace> = Api::all(self.client());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {prefix}-*: {e}"))
            .metadata
            .name
            .expect("generated name")
    }

    /// Applies the CRDs under `crds/` and waits until each is Established (see
    /// [`install_crds`]).
    pub async fn install_crds(&self) -> Vec<CustomResourceDefinition> {
        install_crds(&self.client()).await
    }

    /// Runs kubectl as admin; returns its output.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig(), args, None).await
    }

    /// Runs kubectl as admin with stdin.
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_as(&self.kubeconfig(), args, stdin).await
    }

    /// Runs kubectl with a given kubeconfig (see [`Self::kubeconfig_for_user`]).
    pub async fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Output {
        use tokio::io::AsyncWriteExt;
        let home = self.dir.join("home");
        let mut cmd = tokio::process::Command::new(super::tools::kubectl());
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", home.join("kube-cache"))
            .env("HOME", &home)
            .current_dir(repo_root())
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
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl timed out")
            .expect("kubectl output")
    }

    /// Runs helm as admin, its caches and config inside the server's directory.
    pub async fn helm(&self, args: &[&str]) -> Output {
        let home = self.dir.join("home");
        tokio::process::Command::new(super::tools::helm())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("helm-cache"))
            .env("HELM_CONFIG_HOME", home.join("helm-config"))
            .env("HELM_DATA_HOME", home.join("helm-data"))
            .current_dir(repo_root())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run helm")
    }
}

impl Drop for RealKube {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new(repo_root().join("scripts/kube-down.sh"))
                .arg(&self.dir)
                .output();
        }
    }
}

/// Starts the servers in `dir` with `scripts/kube-up.sh` (which builds the binaries with
/// `scripts/kube-build.sh` first if `.tools/kube/bin` lacks them) and waits for /readyz.
fn up(dir: &Path, watchdog: bool) {
    // The free ports are picked before the servers bind them: another process may take
    // one in between, so a start that failed on a taken port is tried again.
    for _ in 0..3 {
        let mut cmd = Command::new(repo_root().join("scripts/kube-up.sh"));
        cmd.env("KUBE_DIR", dir);
        if watchdog {
            cmd.env("KUBE_OWNER_PID", std::process::id().to_string());
        }
        let out = cmd.output().expect("run scripts/kube-up.sh");
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("address already in use"),
            "scripts/kube-up.sh failed (are Go and the Go module proxy available? \
             `scripts/kube-build.sh` builds kube-apiserver and etcd):\n{err}"
        );
    }
    panic!("scripts/kube-up.sh: the picked ports were taken three times");
}

/// Applies the CRDs under `crds/` through `client` (server-side apply, so idempotent and
/// safe from parallel tests) and waits until each is Established; returns them as stored.
pub async fn install_crds(client: &kube::Client) -> Vec<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in super::manifests::yaml_files(&repo_root().join("crds")) {
        for doc in super::manifests::read_documents(&file) {
            let name = doc["metadata"]["name"].as_str().expect("name").to_string();
            api.patch(
                &name,
                &PatchParams::apply("asg-batch-tests").force(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            names.push(name);
        }
    }
    let mut out = Vec::new();
    for name in names {
        out.push(wait_established(&api, &name).await);
    }
    out
}

/// What a test needs of an API server, so that one test body runs against the embedded
/// server (`support::apiserver::TestServer`) and the real one ([`RealKube`]).
pub trait Cluster {
    /// Which server this is, for messages.
    fn label(&self) -> &'static str;
    /// A client with full rights.
    fn client(&self) -> kube::Client;
    /// A kubeconfig with full rights.
    fn kubeconfig(&self) -> PathBuf;
    /// Runs kubectl with full rights, stdin optional.
    fn kubectl_stdin(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> impl std::future::Future<Output = Output>;
    /// Runs kubectl with full rights.
    fn kubectl(&self, args: &[&str]) -> impl std::future::Future<Output = Output> {
        self.kubectl_stdin(args, None)
    }
    /// Runs helm with full rights, its caches and config in a scratch directory.
    fn helm(&self, args: &[&str]) -> impl std::future::Future<Output = Output>;
}

impl Cluster for RealKube {
    fn label(&self) -> &'static str {
        "kube-apiserver"
    }
    fn client(&self) -> kube::Client {
        RealKube::client(self)
    }
    fn kubeconfig(&self) -> PathBuf {
        RealKube::kubeconfig(self)
    }
    async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        RealKube::kubectl_stdin(self, args, stdin).await
    }
    async fn helm(&self, args: &[&str]) -> Output {
        RealKube::helm(self, args).await
    }
}

impl Cluster for super::apiserver::TestServer {
    fn label(&self) -> &'static str {
        "embedded"
    }
    fn client(&self) -> kube::Client {
        super::apiserver::TestServer::client(self)
    }
    fn kubeconfig(&self) -> PathBuf {
        super::apiserver::TestServer::kubeconfig(self)
    }
    async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        super::apiserver::TestServer::kubectl_stdin(self, args, stdin).await
    }
    async fn helm(&self, args: &[&str]) -> Output {
        super::apiserver::TestServer::helm(self, args).await
    }
}

/// The API server a suite runs against: the embedded one, or the real one when
/// `ASG_BATCH_TEST_SERVER=kube-apiserver` ([`selected`]).
pub enum ServerUnderTest {
    Embedded(super::apiserver::TestServer),
    Real(RealKube),
}

impl ServerUnderTest {
    /// The embedded server, or the real one when `ASG_BATCH_TEST_SERVER=kube-apiserver`.
    pub async fn start() -> ServerUnderTest {
        if selected() {
            ServerUnderTest::Real(RealKube::start())
        } else {
            ServerUnderTest::Embedded(super::apiserver::server().await)
        }
    }

    /// A client with full rights.
    pub fn client(&self) -> kube::Client {
        match self {
            ServerUnderTest::Embedded(s) => Cluster::client(s),
            ServerUnderTest::Real(s) => Cluster::client(s),
        }
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        match self {
            ServerUnderTest::Embedded(s) => s.dir.path(),
            ServerUnderTest::Real(s) => s.dir(),
        }
    }

    /// A kubeconfig with full rights.
    pub fn kubeconfig(&self) -> PathBuf {
        match self {
            ServerUnderTest::Embedded(s) => Cluster::kubeconfig(s),
            ServerUnderTest::Real(s) => Cluster::kubeconfig(s),
        }
    }
}

/// Whether the suites that can run against either server were asked to use the real one:
/// `ASG_BATCH_TEST_SERVER=kube-apiserver` (the default, or `embedded`, is the embedded one).
pub fn selected() -> bool {
    match std::env::var("ASG_BATCH_TEST_SERVER").as_deref() {
        Ok("kube-apiserver") => true,
        Ok("embedded" | "") | Err(_) => false,
        Ok(other) => panic!("ASG_BATCH_TEST_SERVER={other}: use kube-apiserver or embedded"),
    }
}

/// A client from a kubeconfig file (its current context).
pub fn client_from_kubeconfig(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    // Loading a kubeconfig with inline credentials does no I/O: block_on is fine here.
    let config = futures::executor::block_on(kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &KubeConfigOptions::default(),
    ))
    .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    kube::Client::try_from(config).expect("kube client")
}

/// Polls the CRD `name` until its Established condition is True (30 s at most); fails at
/// once if the server reports it non-structural or its names not accepted.
pub async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> CustomResourceDefinition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get crd {name}: {e}"));
        let conditions = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for c in &conditions {
            let bad = (c.type_ == "NonStructuralSchema" && c.status == "True")
                || (c.type_ == "NamesAccepted" && c.status == "False");
            assert!(
                !bad,
                "crd {name}: {} {}: {:?}",
                c.type_, c.status, c.message
            );
        }
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return crd;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "crd {name} not Established after 30 s: {conditions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
