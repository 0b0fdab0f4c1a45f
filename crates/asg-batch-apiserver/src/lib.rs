//! The embedded Kubernetes API server used by `asg-batch dev` and the tests.
//!
//! Plain HTTP, held to kube-apiserver's behaviour for what kube-rs, kubectl and Helm
//! use: discovery (legacy and aggregated), OpenAPI v3, CRDs served live with their
//! schemas, namespaces, Leases, Events, Secrets, ConfigMaps; CRUD, `/status`, all patch
//! types including server-side apply with managedFields; list/watch with selectors,
//! pagination, bookmarks and streaming lists; finalizers and ownerReference cascades;
//! optional persistence (`redb`). See this crate's `README.md`.
//!
//! The public surface: [`start`] with [`ApiServerConfig`] and [`RunningApiServer`], and
//! [`run_cli`] (the `asg-batch apiserver` command); besides, for the property tests of
//! the operator's suite, the write pipeline's parts ([`objects`], [`patch`], [`ssa`],
//! [`selectors`], [`store`], [`table`]) and the schema engine ([`schema`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use asg_batch_apiserver::{ApiServerConfig, start};
//! let server = start(ApiServerConfig::default()).await?;
//! let client = server.client()?;
//! # drop(client);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admission;
pub(crate) mod crd;
pub(crate) mod discovery;
pub(crate) mod error;
pub(crate) mod gc;
pub(crate) mod kubeconfig;
pub(crate) mod meta;
pub mod objects;
pub(crate) mod openapi;
pub mod patch;
pub(crate) mod project;
pub(crate) mod protobuf;
pub(crate) mod resources;
pub mod schema;
pub mod selectors;
pub(crate) mod server;
pub mod ssa;
pub mod store;
pub mod table;
pub(crate) mod validation;
pub(crate) mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use objects::Core;
use store::Store;

/// Configuration of an API server.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Persist objects here (in memory when `None`).
    pub data_dir: Option<PathBuf>,
    /// Allow a non-loopback listen address.
    pub allow_remote: bool,
    /// Number of change events retained for watches (older resourceVersions get 410).
    pub history_limit: usize,
    /// Bound of the watch history in bytes (its events' objects as JSON); older events
    /// are dropped (their resourceVersions get 410) beyond either bound.
    pub history_bytes: usize,
    /// Bearer tokens (kube-apiserver's `--token-auth-file`): requests with a token act as
    /// its user (ValidatingAdmissionPolicies see it); without one, as the loopback
    /// administrator; with an unknown one, 401.
    pub tokens: Option<admission::Tokens>,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            allow_remote: false,
            history_limit: 10_000,
            history_bytes: store::DEFAULT_HISTORY_BYTES,
            tokens: None,
        }
    }
}

/// Errors starting or running the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// A non-loopback address without `--allow-remote`.
    #[error(
        "refusing to listen on non-loopback address {0}: the API server has no authentication; pass --allow-remote to expose it anyway"
    )]
    NonLoopback(SocketAddr),
    /// Binding the socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The data store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Writing the kubeconfig failed.
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Building a kube client failed.
    #[error("kube client: {0}")]
    Client(String),
    /// The token file cannot be used.
    #[error(transparent)]
    Tokens(#[from] admission::TokenFileError),
}

/// A running server. Dropping it stops the server (without waiting).
#[derive(Debug)]
pub struct RunningApiServer {
    addr: SocketAddr,
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Start a server.
pub async fn start(cfg: ApiServerConfig) -> Result<RunningApiServer, ApiServerError> {
    if !cfg.listen.ip().is_loopback() && !cfg.allow_remote {
        return Err(ApiServerError::NonLoopback(cfg.listen));
    }
    let store = match &cfg.data_dir {
        Some(dir) => Store::open(dir, cfg.history_limit)?,
        None => Store::in_memory(cfg.history_limit),
    }
    .with_history_bytes(cfg.history_bytes);
    let core = Arc::new(Core::new(store));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ApiServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ApiServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let app = server::router(server::AppState {
        core: core.clone(),
        addr: addr.to_string(),
        tokens: cfg.tokens.clone().map(Arc::new),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        // TCP_NODELAY, as Go's net/http (kube-apiserver) does: a response is never held
        // back waiting for the client's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "API server stopped with an error");
        }
    });
    let mut tasks = vec![tokio::spawn(gc::run(core.clone()))];
    if cfg.data_dir.is_some() {
        let c = core.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = 0;
            loop {
                tick.tick().await;
                let rv = c.store.read(store::State::rv);
                if rv != last {
                    let c2 = c.clone();
                    let _ = tokio::task::spawn_blocking(move || c2.store.flush()).await;
                    last = rv;
                }
            }
        }));
    }
    tracing::info!(%addr, persistent = cfg.data_dir.is_some(), "API server listening");
    Ok(RunningApiServer {
        addr,
        core,
        tasks,
        http: Some(http),
        stop: Some(stop_tx),
    })
}

impl RunningApiServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The server's core (store and registry), for in-process inspection.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
    /// Write a kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ApiServerError> {
        kubeconfig::write(path, &self.base_url()).map_err(|source| ApiServerError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })
    }
    /// A `kube::Client` for this server (default namespace `default`).
    pub fn client(&self) -> Result<kube::Client, ApiServerError> {
        let uri = self
            .base_url()
            .parse()
            .map_err(|e: http::uri::InvalidUri| ApiServerError::Client(e.to_string()))?;
        let config = kube::Config::new(uri);
        kube::Client::try_from(config).map_err(|e| ApiServerError::Client(e.to_string()))
    }
    /// Stop: end watches, stop accepting, flush the store.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(http) = self.http.take() {
            let abort = http.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), http)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let core = self.core.clone();
        let _ = tokio::task::spawn_blocking(move || core.store.flush()).await;
    }

    fn stop_now(&mut self) {
        let _ = self.core.shutdown.send(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        self.stop_now();
        if let Some(h) = self.http.take() {
            h.abort();
        }
        self.core.store.flush();
    }
}

/// `asg-batch apiserver`: start, write the kubeconfig, serve until SIGINT/SIGTERM.
pub async fn run_cli(
    listen: SocketAddr,
    kubeconfig_path: &Path,
    data_dir: Option<PathBuf>,
    allow_remote: bool,
    token_auth_file: Option<&Path>,
) -> Result<(), ApiServerError> {
    let tokens = token_auth_file.map(admission::Tokens::read).transpose()?;
    let server = start(ApiServerConfig {
        listen,
        data_dir,
        allow_remote,
        tokens,
        ..ApiServerConfig::default()
    })
    .await?;
    server.write_kubeconfig(kubeconfig_path)?;
    eprintln!(
        "asg-batch apiserver listening on {}; kubeconfig written to {}\n  export KUBECONFIG={}",
        server.base_url(),
        kubeconfig_path.display(),
        kubeconfig_path.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ApiServerError::Bind {
            addr: listen,
            source,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
