//! Full logs of attempts: kept by the agent under `<data dir>/logs/`, served to
//! `asg-batch logs` as the kubelet serves a pod's logs.
//!
//! **Capture.** Each attempt's output (stdout and stderr, in the order the executor gives
//! them) goes to `<data dir>/logs/<attempt name>.log` (the attempt name is
//! `asgb-<job>-<job uid>-a<N>`): process jobs through their shim, which copies one pipe
//! shared by stdout and stderr; containers by following the engine's log stream (a
//! re-adopted container is read again from its start, so the file holds each line once).
//! A file is capped at `--log-max-bytes`: the beginning is kept and one last line says it
//! was truncated. Once the attempt ended the agent marks the file ended: an extended
//! attribute `user.asgbatch.end` on it naming the job (no file per attempt: a new file
//! costs an inode and a directory entry, which on ext4 was ≈ 6 % of a trivial job's
//! CPU), or, where the filesystem has no user attributes, a file `<attempt name>.end`
//! beside it (as agents before this one always did; both are read). Logs whose end is
//! older than `--log-retention` are deleted, and so are those of jobs that no longer
//! exist.
//!
//! **Serving** (`--log-listen ADDR`): `GET /logs/<namespace>/<job>/<attempt>[?follow=true]`
//! streams the file; with `follow` it keeps streaming until the attempt ended. The agent
//! finds the file from the job's uid (read from the API server), so it serves only
//! attempts it ran, and only under names it made itself. It publishes where it listens in
//! its BatchNode's `status.logEndpoint`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Api;
use tokio::io::AsyncReadExt;

use crate::api::BatchJob;

/// Default cap of one attempt's log file (100 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
/// Default time an ended attempt's log is kept (7 days).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a follower looks for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often old logs are swept (default).
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The line that ends a log file cut at its cap of `max_bytes`.
pub fn truncated_line(max_bytes: u64) -> String {
    format!(
        "\n[asg-batch: output truncated: the log keeps the first {max_bytes} bytes (--log-max-bytes); the status keeps the last lines]\n"
    )
}

/// Where an agent keeps its attempts' logs, and their cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl LogStore {
    /// Logs under `dir` (made absolute), each capped at `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        let dir = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Self { dir, max_bytes }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cap of one file in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The log file of the attempt named `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The file saying the attempt named `name` ended (its log is complete), where its
    /// log cannot carry [`END_XATTR`].
    pub fn end_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.end"))
    }

    /// Records that attempt `key` (named `name`) ended, when it has a log: its log is
    /// complete, and the sweep knows which job it belongs to. The mark is an attribute of
    /// the log file ([`END_XATTR`]); a filesystem without user attributes gets the
    /// `.end` file instead.
    pub fn mark_ended(&self, name: &str, key: &super::plan::AttemptKey) {
        let mark = EndMark {
            namespace: key.namespace.clone(),
            job: key.name.clone(),
            uid: key.uid.clone(),
        };
        let bytes = serde_json::to_vec(&mark).unwrap_or_default();
        let log = self.path(name);
        match rustix::fs::setxattr(&log, END_XATTR, &bytes, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // No log (an attempt that never started, or logs not kept): nothing to mark.
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                tracing::debug!(attempt = name, error = %e, "no extended attribute on the log; marking its end with a file");
                if let Err(e) = std::fs::write(self.end_path(name), bytes) {
                    tracing::warn!(attempt = name, error = %e, "cannot mark the attempt's log complete");
                }
            }
        }
    }

    /// A capped writer of the attempt named `name`'s log, emptied first.
    pub fn create(&self, name: &str) -> std::io::Result<CappedFile> {
        std::fs::create_dir_all(&self.dir)?;
        let _ = std::fs::remove_file(self.end_path(name));
        // A new file, not the old one truncated: a writer still holding the old one (the
        // copy of an agent being torn down while the next one adopts the container) then
        // writes into an unlinked file instead of interleaving with the new copy.
        let _ = std::fs::remove_file(self.path(name));
        let file = std::fs::File::create(self.path(name))?;
        Ok(CappedFile::new(file, Some(self.max_bytes)))
    }

    /// Deletes the logs (and end marks) of attempts that ended more than `retention`
    /// ago, and those for which `gone` says the job no longer exists (called with the
    /// attempt name). Returns how many logs went.
    pub fn sweep(&self, retention: Duration, gone: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for end in self.ends() {
            let old = end
                .at
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= retention);
            if old || gone(&end.name) {
                let _ = std::fs::remove_file(self.path(&end.name));
                let _ = std::fs::remove_file(self.end_path(&end.name));
                removed += 1;
            }
        }
        removed
    }

    /// The attempts whose logs are complete: name and end mark.
    pub fn ended(&self) -> Vec<(String, EndMark)> {
        self.ends()
            .into_iter()
            .filter_map(|e| Some((e.name, e.mark?)))
            .collect()
    }

    /// Every ended attempt's log: marked by its attribute, or by an `.end` file (an
    /// agent's on a filesystem without user attributes, or an older agent's), once each.
    fn ends(&self) -> Vec<End> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ends = Vec::new();
        let mut by_file = std::collections::HashSet::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some(name) = file_name.strip_suffix(".end") {
                let mark = std::fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let at = entry.metadata().and_then(|m| m.modified()).ok();
                by_file.insert(name.to_owned());
                ends.push(End {
                    name: name.to_owned(),
                    mark,
                    at,
                    by_file: true,
                });
            } else if let Some(name) = file_name.strip_suffix(".log") {
                let path = entry.path();
                let mut buf = [0u8; 2048];
                let Ok(len) = rustix::fs::getxattr(&path, END_XATTR, &mut buf[..]) else {
                    continue;
                };
                // Set once, when the attempt ended: the attribute's change is the inode's
                // last (its change time), later than the last output (its modification).
                let at = entry.metadata().ok().map(|m| {
                    std::time::UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(m.ctime()).unwrap_or(0),
                            u32::try_from(m.ctime_nsec()).unwrap_or(0),
                        )
                });
                ends.push(End {
                    name: name.to_owned(),
                    mark: buf.get(..len).and_then(|b| serde_json::from_slice(b).ok()),
                    at,
                    by_file: false,
                });
            }
        }
        // A log with both marks counts once, by its file (as an older agent's sweep).
        ends.retain(|e| e.by_file || !by_file.contains(&e.name));
        ends
    }
}

/// Whether the log `file` is complete: it carries [`END_XATTR`], or its `.end` file
/// (`end`) exists.
async fn log_ended(file: &tokio::fs::File, end: &Path) -> bool {
    rustix::fs::fgetxattr_query(file, END_XATTR).is_ok()
        || tokio::fs::try_exists(end).await.unwrap_or(false)
}

/// The extended attribute marking an attempt's log complete: its [`EndMark`] as JSON.
pub const END_XATTR: &str = "user.asgbatch.end";

/// An ended attempt's log, as the sweep sees it.
struct End {
    name: String,
    mark: Option<EndMark>,
    /// When it ended.
    at: Option<std::time::SystemTime>,
    /// Marked by an `.end` file (not the log's attribute).
    by_file: bool,
}

/// What `<attempt>.end` holds: the job the log belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndMark {
    /// The job's namespace.
    pub namespace: String,
    /// The job's name.
    pub job: String,
    /// The job's uid.
    pub uid: String,
}

/// Every `every` ([`SWEEP_EVERY`] by default): deletes the logs of attempts that ended
/// more than `retention` ago and of jobs that are gone (not found, or replaced by another
/// with the same name).
pub async fn sweep_loop(
    store: LogStore,
    client: kube::Client,
    retention: Duration,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        let mut gone = std::collections::HashSet::new();
        for (name, mark) in store.ended() {
            let api: Api<BatchJob> = Api::namespaced(client.clone(), &mark.namespace);
            match api.get_opt(&mark.job).await {
                Ok(None) => {
                    gone.insert(name);
                }
                Ok(Some(j)) if j.metadata.uid.as_deref() != Some(mark.uid.as_str()) => {
                    gone.insert(name);
                }
                Ok(Some(_)) => {}
                // Unknown: kept until the next sweep (or its retention).
                Err(e) => tracing::debug!(error = %e, "cannot read a job for the log sweep"),
            }
        }
        let removed = store.sweep(retention, |n| gone.contains(n));
        if removed > 0 {
            tracing::info!(removed, "old attempt logs deleted");
        }
    }
}

/// A file that takes at most `max_bytes`; what comes beyond is dropped, and one line
/// ([`truncated_line`]) says so.
#[derive(Debug)]
pub struct CappedFile {
    file: std::fs::File,
    written: u64,
    max_bytes: Option<u64>,
    truncated: bool,
}

impl CappedFile {
    /// Appends to `file` (its current length counts), up to `max_bytes` (`None`: no cap).
    pub fn new(file: std::fs::File, max_bytes: Option<u64>) -> Self {
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Self {
            file,
            written,
            max_bytes,
            truncated: false,
        }
    }

    /// Writes what fits of `chunk`; returns whether the file is truncated now.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<bool> {
        let room = self
            .max_bytes
            .map_or(u64::MAX, |m| m.saturating_sub(self.written));
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
        if keep > 0 {
            self.file.write_all(&chunk[..keep])?;
            self.written += keep as u64;
        }
        if keep < chunk.len() && !self.truncated {
            self.truncated = true;
            if let Some(max) = self.max_bytes {
                self.file.write_all(truncated_line(max).as_bytes())?;
            }
        }
        Ok(self.truncated)
    }

    /// Whether output was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// Whether `s` is a DNS-1123 label (a namespace).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (an object name).
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// How callers of the log endpoint are checked.
#[derive(Clone)]
pub enum LogAuth {
    /// Nobody is checked: a loopback endpoint with the trust of a loopback API server
    /// (`asg-batch dev`).
    None,
    /// Bearer tokens: a `TokenReview` says who the caller is, a `SubjectAccessReview`
    /// whether it may `get` `batchjobs/log` (group `asgbatch.io`) in the job's namespace.
    Kube,
}

/// Why the log endpoint cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listen address is unspecified and no address to publish was given.
    #[error(
        "--log-listen {0} listens on every interface: pass --log-advertise-address (the address clients reach this instance at)"
    )]
    NoAdvertiseAddress(std::net::SocketAddr),
    /// The endpoint's certificate could not be made.
    #[error("cannot make the log endpoint's certificate: {0}")]
    Certificate(String),
}

/// Listens on `addr` and serves `store`'s logs there (TLS and authenticated callers when
/// `config.logs.secure`); returns the endpoint to publish and the server's task.
pub async fn serve(
    addr: std::net::SocketAddr,
    config: &super::AgentConfig,
    store: LogStore,
    client: kube::Client,
    metrics: Arc<super::metrics::AgentMetrics>,
) -> Result<
    (
        crate::api::batch_node::LogEndpoint,
        tokio::task::JoinHandle<()>,
    ),
    ServeError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    let host = match &config.logs.advertise {
        Some(h) => h.clone(),
        None if local.ip().is_unspecified() => return Err(ServeError::NoAdvertiseAddress(local)),
        None => local.ip().to_string(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let node = config.node_name.clone();
    if config.logs.secure {
        let (tls, certificate) =
            super::logtls::server_config(&host).map_err(ServeError::Certificate)?;
        let app = router(store, client, node, LogAuth::Kube, Some(metrics));
        let task = tokio::spawn(super::logtls::serve(listener, tls, app));
        let endpoint = crate::api::batch_node::LogEndpoint {
            url: format!("https://{host}:{}", local.port()),
            certificate: Some(certificate),
        };
        Ok((endpoint, task))
    } else {
        let app = router(store, client, node, LogAuth::None, Some(metrics));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the log endpoint stopped");
            }
        });
        let endpoint = crate::api::batch_node::LogEndpoint {
            url: format!("http://{host}:{}", local.port()),
            certificate: None,
        };
        Ok((endpoint, task))
    }
}

#[derive(Clone)]
struct Served {
    store: LogStore,
    client: kube::Client,
    node: String,
    auth: LogAuth,
    metrics: Option<Arc<super::metrics::AgentMetrics>>,
}

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
}

fn plain(code: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (code, text).into_response()
}

/// The router serving `/logs/<namespace>/<job>/<attempt>` of `store`, counting requests
/// by status code in `metrics`.
pub fn router(
    store: LogStore,
    client: kube::Client,
    node: String,
    auth: LogAuth,
    metrics: Option<Arc<super::metrics::AgentMetrics>>,
) -> Router {
    Router::new()
        .route("/logs/{namespace}/{job}/{attempt}", get(serve_log))
        .with_state(Arc::new(Served {
            store,
            client,
            node,
            auth,
            metrics,
        }))
}

async fn serve_log(
    State(s): State<Arc<Served>>,
    UrlPath((namespace, job, attempt)): UrlPath<(String, String, String)>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let response = answer(&s, namespace, job, attempt, query, headers).await;
    if let Some(m) = &s.metrics {
        m.log_requests
            .get_or_create(&vec![(
                "code".to_string(),
                response.status().as_u16().to_string(),
            )])
            .inc();
    }
    response
}

#[tracing::instrument(skip(s, headers, query), fields(node = %s.node))]
async fn answer(
    s: &Served,
    namespace: String,
    job: String,
    attempt: String,
    query: LogQuery,
    headers: HeaderMap,
) -> Response {
    if !dns_label(&namespace) {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("namespace {namespace:?} is not a valid namespace name"),
        );
    }
    if !dns_subdomain(&job) {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("job {job:?} is not a valid BatchJob name"),
        );
    }
    let Ok(attempt) = attempt.parse::<u32>() else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("attempt {attempt:?} is not a number"),
        );
    };
    if let LogAuth::Kube = s.auth {
        if let Err(denied) = super::logauth::authorize(&s.client, &headers, &namespace, &job).await
        {
            return denied;
        }
    }
    let api: Api<BatchJob> = Api::namespaced(s.client.clone(), &namespace);
    let uid = match api.get_opt(&job).await {
        Ok(Some(j)) => j.metadata.uid.unwrap_or_default(),
        Ok(None) => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("batchjob {namespace}/{job} not found"),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the job");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "node {} cannot read batchjob {namespace}/{job}: {e}",
                    s.node
                ),
            );
        }
    };
    let key = super::plan::AttemptKey {
        namespace: namespace.clone(),
        name: job.clone(),
        uid,
        attempt,
    };
    let name = super::spec::attempt_name(&key);
    let path = s.store.path(&name);
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "node {} has no log of attempt {attempt} of batchjob {namespace}/{job}",
                s.node
            ),
        );
    };
    tracing::debug!(attempt = %name, follow = query.follow, "serving a log");
    let end = s.store.end_path(&name);
    let stream = futures::stream::unfold(
        Some(Reading {
            file,
            end,
            follow: query.follow,
            end_seen: false,
            buf: vec![0u8; 64 * 1024],
        }),
        |state| async move {
            let mut r = state?;
            loop {
                match r.file.read(&mut r.buf).await {
                    Ok(0) => {
                        if !r.follow || r.end_seen {
                            return None;
                        }
                        // The end mark is written after the last byte: once it is seen,
                        // one more read to the end of the file gets everything.
                        if log_ended(&r.file, &r.end).await {
                            r.end_seen = true;
                        } else {
                            tokio::time::sleep(FOLLOW_POLL).await;
                        }
                    }
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&r.buf[..n]);
                        return Some((Ok::<_, std::io::Error>(chunk), Some(r)));
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
        },
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        Body::from_stream(stream),
    )
        .into_response()
}

struct Reading {
    file: tokio::fs::File,
    end: PathBuf,
    follow: bool,
    end_seen: bool,
    buf: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_file_keeps_the_beginning_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path(), 10);
        let mut f = store.create("a").expect("create");
        assert!(!f.write(b"0123456").expect("write"));
        assert!(f.write(b"789abc").expect("write"));
        assert!(f.write(b"more").expect("write"));
        let text = std::fs::read_to_string(store.path("a")).expect("read");
        assert_eq!(text, format!("0123456789{}", truncated_line(10)));
    }

    #[test]
    fn names_are_checked_before_any_path_is_made() {
        assert!(dns_label("team-a"));
        assert!(!dns_label("../etc"));
        assert!(!dns_label("A"));
        assert!(!dns_label(""));
        assert!(dns_subdomain("nightly.etl-1"));
        assert!(!dns_subdomain("a/b"));
        assert!(!dns_subdomain(".."));
    }

    #[test]
    fn sweep_removes_old_and_gone_logs_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path(), 100);
        for name in ["kept", "gone", "running"] {
            store.create(name).expect("create");
        }
        let key = crate::agent::plan::AttemptKey {
            namespace: "ns".into(),
            name: "job".into(),
            uid: "u".into(),
            attempt: 1,
        };
        store.mark_ended("kept", &key);
        store.mark_ended("gone", &key);
        assert_eq!(store.ended().len(), 2);
        assert_eq!(store.ended()[0].1.job, "job");
        assert_eq!(store.sweep(DEFAULT_RETENTION, |n| n == "gone"), 1);
        assert!(store.path("kept").exists());
        assert!(!store.path("gone").exists());
        assert!(store.path("running").exists(), "not ended: kept");
        assert_eq!(store.sweep(Duration::ZERO, |_| false), 1);
        assert!(!store.path("kept").exists());
        assert!(store.path("running").exists());
    }

    #[test]
    fn the_end_is_an_attribute_of_the_log_and_an_older_agents_end_file_still_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path(), 100);
        let key = crate::agent::plan::AttemptKey {
            namespace: "ns".into(),
            name: "job".into(),
            uid: "u".into(),
            attempt: 1,
        };
        for name in ["new", "old", "both"] {
            store.create(name).expect("create");
        }
        store.mark_ended("new", &key);
        store.mark_ended("both", &key);
        store.mark_ended("never-started", &key);
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        // (TMPDIR on a filesystem with user attributes, as ext4, xfs and tmpfs are.)
        assert_eq!(files, ["both.log", "new.log", "old.log"], "no file per end");
        // What an agent before this one wrote.
        let legacy = br#"{"namespace":"ns","job":"job","uid":"u"}"#;
        std::fs::write(store.end_path("old"), legacy).expect("end file");
        std::fs::write(store.end_path("both"), legacy).expect("end file");
        let mut ended: Vec<String> = store.ended().into_iter().map(|(n, _)| n).collect();
        ended.sort();
        assert_eq!(ended, ["both", "new", "old"]);
        assert_eq!(store.sweep(Duration::ZERO, |_| false), 3);
        let left = std::fs::read_dir(dir.path()).expect("read dir").count();
        assert_eq!(left, 0, "logs and end files swept");
    }
}
