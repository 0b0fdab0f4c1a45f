//! Fault tests with real processes: a moto Auto Scaling Group, the API server
//! (`asg-batch apiserver`, or etcd and the real kube-apiserver under
//! `ASG_BATCH_TEST_SERVER=kube-apiserver`) and the controller (`asg-batch controller`) as
//! processes, and a
//! fleet player that starts one real `asg-batch agent` process per InService instance and,
//! when an instance leaves the group, kills its agent and everything its jobs started (what
//! a terminated instance does). Ground truth is what the jobs themselves wrote (start and
//! stop times, the instance), never the status alone; the controllers' own view (such as
//! whether a backlog is parked) is read from their `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use asg_batch::api::{BatchJob, JobPhase};
use asg_batch::cloud::Fleet;
use asg_batch::cloud::aws::AwsFleet;
use kube::api::{Api, ListParams};
use std::net::SocketAddr;
use support::ChildGuard;
use support::controller::apply_yaml;
use support::proxy::{AwsFaultProxy, Fault, TcpProxy};

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_asg-batch")
}

/// One attempt as the job wrote it.
#[derive(Debug, Clone)]
struct Ran {
    instance: String,
    pid: i32,
    start: f64,
    stop: Option<f64>,
}

/// Reads `truth/<job>`: lines `start <t> <instance> <pid>` and `stop <t> <instance> <pid>`.
fn truth(dir: &Path) -> BTreeMap<String, Vec<Ran>> {
    let mut out: BTreeMap<String, Vec<Ran>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join("truth")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let runs = out.entry(name).or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [what, t, instance, pid] = f[..] else {
                continue;
            };
            let t: f64 = t.parse().unwrap_or(0.0);
            let pid: i32 = pid.parse().unwrap_or(0);
            match what {
                "start" => runs.push(Ran {
                    instance: instance.to_owned(),
                    pid,
                    start: t,
                    stop: None,
                }),
                "stop" => {
                    if let Some(r) = runs.iter_mut().find(|r| r.pid == pid && r.stop.is_none()) {
                        r.stop = Some(t);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// What the fleet player saw: instances and when they left the group; and each agent's
/// route to the API server (a proxy the test can cut).
#[derive(Default)]
struct Played {
    launched: BTreeMap<String, f64>,
    terminated: BTreeMap<String, f64>,
    routes: BTreeMap<String, Arc<TcpProxy>>,
}

/// How a world is set up.
#[derive(Clone, Copy)]
struct Options {
    lost_node_timeout: u64,
    /// Controllers with leader election (1: none).
    controllers: usize,
    /// The Auto Scaling Groups (in moto, 4 instances at most each) and the compute
    /// environment whose agents each one's instances run.
    groups: &'static [(&'static str, &'static str)],
    /// More flags for every controller.
    controller_args: &'static [&'static str],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lost_node_timeout: 30,
            controllers: 1,
            groups: &[("batch", "cloud")],
            controller_args: &[],
        }
    }
}

/// The API server of a world: the embedded one as a process, or a kube-apiserver (and
/// its etcd) of the world's own.
enum Server {
    Embedded(ChildGuard),
    Real(support::kube::RealKube),
}

impl Server {
    /// The API server's process (the one a pause stops; etcd runs on).
    fn pid(&self) -> nix::unistd::Pid {
        let pid = match self {
            Server::Embedded(c) => i32::try_from(c.child.id()).expect("pid"),
            Server::Real(k) => std::fs::read_to_string(k.dir().join("kube-apiserver.pid"))
                .expect("kube-apiserver.pid (written by scripts/kube-up.sh)")
                .trim()
                .parse()
                .expect("a pid"),
        };
        nix::unistd::Pid::from_raw(pid)
    }
}

struct World {
    dir: tempfile::TempDir,
    _moto: support::moto::MotoServer,
    aws: AwsFaultProxy,
    apiserver: Server,
    controllers: Vec<Option<ChildGuard>>,
    /// Each controller's `/metrics` address, by index.
    metrics: Vec<SocketAddr>,
    /// The first group's fleet.
    fleet: AwsFleet,
    client: kube::Client,
    played: Arc<Mutex<Played>>,
    player: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.player.abort();
        // Resume a paused API server so it can be killed and reaped.
        let _ = nix::sys::signal::kill(self.apiserver.pid(), nix::sys::signal::Signal::SIGCONT);
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name)).map_or(Stdio::null(), Stdio::from)
}

fn aws_env(cmd: &mut std::process::Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("RUST_LOG", "info,asg_batch=debug");
}

impl World {
    async fn start(world_yaml: &str, opts: Options) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("truth")).expect("truth dir");
        let moto = support::moto::MotoServer::start();
        let config = moto.sdk_config().await;
        for (group, _) in opts.groups {
            support::moto::create_group(&config, group, 4, 0).await;
        }

        let (apiserver, kubeconfig, port) = if support::kube::selected() {
            let real = tokio::task::spawn_blocking(support::kube::RealKube::start)
                .await
                .expect("start kube-apiserver");
            let port: u16 = real
                .url()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("the server URL's port");
            let kubeconfig = real.kubeconfig();
            (Server::Real(real), kubeconfig, port)
        } else {
            let port = support::free_port();
            let kubeconfig = dir.path().join("kubeconfig");
            let apiserver = ChildGuard {
                child: std::process::Command::new(bin())
                    .args(["apiserver", "--listen", &format!("127.0.0.1:{port}")])
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .stdout(Stdio::null())
                    .stderr(log_file(dir.path(), "apiserver.log"))
                    .spawn()
                    .expect("spawn apiserver"),
                name: "apiserver",
            };
            support::wait_until("the API server", Duration::from_secs(30), || {
                kubeconfig.is_file() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            (Server::Embedded(apiserver), kubeconfig, port)
        };
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(cfg).expect("client");
        let out = std::process::Command::new(support::apiserver::kubectl_path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["apply", "--server-side", "-f"])
            .arg(support::repo_root().join("crds"))
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        support::wait_until("CRDs served", Duration::from_secs(30), || {
            std::process::Command::new(support::apiserver::kubectl_path())
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "bj"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        apply_yaml(&client, world_yaml).await;

        // The controllers reach AWS through a proxy that can inject faults.
        let aws = AwsFaultProxy::start(&moto.endpoint).await;
        let mut controllers = Vec::new();
        let mut metrics = Vec::new();
        for i in 0..opts.controllers {
            let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
            let mut cmd = std::process::Command::new(bin());
            cmd.args([
                "controller",
                "--resync",
                "1",
                "--lost-node-timeout",
                &opts.lost_node_timeout.to_string(),
                "--identity",
                &format!("controller-{i}"),
                "--metrics-bind-address",
                &addr.to_string(),
            ])
            .args(opts.controller_args);
            metrics.push(addr);
            if opts.controllers == 1 {
                cmd.arg("--leader-elect=false");
            }
            cmd.env("KUBECONFIG", &kubeconfig)
                .stdout(Stdio::null())
                .stderr(log_file(dir.path(), &format!("controller-{i}.log")));
            aws_env(&mut cmd, &aws.endpoint);
            controllers.push(Some(ChildGuard {
                child: cmd.spawn().expect("spawn controller"),
                name: "controller",
            }));
        }

        let played = Arc::new(Mutex::new(Played::default()));
        let player = tokio::spawn(play(
            opts.groups
                .iter()
                .map(|(group, ce)| ((*ce).to_owned(), AwsFleet::new(&config, *group)))
                .collect(),
            moto.endpoint.clone(),
            kubeconfig,
            port,
            dir.path().to_owned(),
            played.clone(),
        ));
        World {
            dir,
            _moto: moto,
            aws,
            apiserver,
            controllers,
            metrics,
            fleet: AwsFleet::new(&config, opts.groups[0].0),
            client,
            played,
            player,
        }
    }

    /// The agent route of `instance`.
    fn route(&self, instance: &str) -> Option<Arc<TcpProxy>> {
        self.played.lock().ok()?.routes.get(instance).cloned()
    }

    /// The controller holding the leader Lease, by index.
    async fn leader(&self) -> Option<usize> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "default");
        let l = leases.get("asg-batch-controller").await.ok()?;
        let holder = l.spec?.holder_identity?;
        holder.strip_prefix("controller-")?.parse().ok()
    }

    /// The controller holding the leader Lease once there is one other than `not` (60 s
    /// at most).
    async fn wait_leader(&self, not: Option<usize>) -> usize {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await
                && Some(l) != not
            {
                return l;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "a leader other than {not:?} is elected"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of the unlabelled metric `name` on controller `i`'s `/metrics`, if it
    /// answers.
    async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics[i]).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .ok()?
            .ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    async fn jobs(&self) -> Vec<BatchJob> {
        Api::<BatchJob>::namespaced(self.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    async fn wait_all(&self, n: usize, phase: JobPhase, timeout: Duration) -> Vec<BatchJob> {
        let start = Instant::now();
        loop {
            let jobs = self.jobs().await;
            if jobs.len() == n
                && jobs
                    .iter()
                    .all(|j| j.status.as_ref().and_then(|s| s.phase) == Some(phase))
            {
                return jobs;
            }
            assert!(
                start.elapsed() < timeout,
                "jobs not all {phase:?} after {timeout:?}: {:?}\ncontroller log: {}",
                jobs.iter()
                    .map(|j| (
                        j.metadata.name.clone(),
                        j.status.as_ref().and_then(|s| s.phase),
                        j.status.as_ref().and_then(|s| s.message.clone())
                    ))
                    .collect::<Vec<_>>(),
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the `n` jobs all Succeeded ([`World::wait_all`]), each on its first
    /// attempt (asserted).
    async fn wait_all_succeeded_once(&self, n: usize, timeout: Duration) {
        for j in self.wait_all(n, JobPhase::Succeeded, timeout).await {
            let s = j.status.unwrap_or_default();
            assert_eq!(
                (s.attempt, s.attempts.len()),
                (Some(1), 1),
                "{:?} succeeded on its first attempt",
                j.metadata.name
            );
        }
    }

    fn signal_apiserver(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.apiserver.pid(), sig).expect("signal the API server");
    }
}

/// The agent processes of the live instances, each leading its process group; dropped with
/// the player (aborted when its world is dropped), they die with it, as do the jobs their
/// shims still run.
struct Agents {
    children: BTreeMap<String, std::process::Child>,
    /// The world's directory, where the jobs record what really ran.
    dir: PathBuf,
}

impl std::ops::Deref for Agents {
    type Target = BTreeMap<String, std::process::Child>;
    fn deref(&self) -> &Self::Target {
        &self.children
    }
}

impl std::ops::DerefMut for Agents {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.children
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        for runs in truth(&self.dir).values() {
            for r in runs.iter().filter(|r| r.stop.is_none()) {
                let pid = nix::unistd::Pid::from_raw(r.pid);
                if let Ok(group) = nix::unistd::getpgid(Some(pid)) {
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// The fleet player: one agent process per live instance of each group (an agent of the
/// group's compute environment); an instance that leaves its group takes its agent and its
/// jobs with it.
async fn play(
    fleets: Vec<(String, AwsFleet)>,
    endpoint: String,
    kubeconfig: PathBuf,
    apiserver_port: u16,
    dir: PathBuf,
    played: Arc<Mutex<Played>>,
) {
    let mut agents = Agents {
        children: BTreeMap::new(),
        dir: dir.clone(),
    };
    let admin = std::fs::read_to_string(&kubeconfig).unwrap_or_default();
    loop {
        // The live instances of every group, with their compute environment (none are
        // taken as gone while a group cannot be described).
        let mut live: BTreeMap<String, &str> = BTreeMap::new();
        let mut described = true;
        for (ce, fleet) in &fleets {
            match fleet.describe().await {
                Ok(state) => live.extend(
                    state
                        .live_instances()
                        .map(|i| (i.instance_id.clone(), ce.as_str())),
                ),
                Err(_) => described = false,
            }
        }
        if described {
            for (id, &ce) in &live {
                if agents.contains_key(id) {
                    continue;
                }
                // Each agent reaches the API server through its own route.
                let route = Arc::new(
                    TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], apiserver_port))).await,
                );
                let own = dir.join(format!("kubeconfig-{id}"));
                let text = admin.replace(
                    &format!("127.0.0.1:{apiserver_port}"),
                    &route.addr.to_string(),
                );
                if std::fs::write(&own, text).is_err() {
                    continue;
                }
                let mut cmd = std::process::Command::new(bin());
                cmd.args([
                    "agent",
                    "--compute-environment",
                    ce,
                    "--instance-id",
                    id,
                    "--instance-type",
                    "c5.xlarge",
                    "--executor",
                    "process",
                    "--heartbeat-interval",
                    "1",
                    "--idle-polls",
                    "2",
                    "--data-dir",
                ])
                .arg(dir.join(format!("agent-{id}")))
                .env("KUBECONFIG", &own)
                .env("INSTANCE", id)
                .stdout(Stdio::null())
                .stderr(log_file(&dir, &format!("agent-{id}.log")));
                aws_env(&mut cmd, &endpoint);
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                if let Ok(child) = cmd.spawn() {
                    agents.insert(id.clone(), child);
                    if let Ok(mut p) = played.lock() {
                        p.launched.insert(id.clone(), epoch());
                        p.routes.insert(id.clone(), route);
                    }
                }
            }
            let gone: Vec<String> = agents
                .keys()
                .filter(|id| !live.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                let at = epoch();
                if let Some(mut child) = agents.remove(&id) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = child.wait();
                }
                // Whatever its jobs started dies with the instance.
                for runs in truth(&dir).values() {
                    for r in runs.iter().filter(|r| r.instance == id && r.stop.is_none()) {
                        // The job leads its own process group (under the agent's node
                        // supervisor, `asg-batch shim --serve`, which outlives the agent like
                        // the job does and ends once the jobs it ran are gone).
                        let pid = nix::unistd::Pid::from_raw(r.pid);
                        let group = nix::unistd::getpgid(Some(pid)).unwrap_or(pid);
                        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    }
                }
                if let Ok(mut p) = played.lock() {
                    p.terminated.insert(id, at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WORLD: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: cloud}
spec:
  aws: {autoScalingGroupName: batch, region: us-east-1}
  minInstances: 0
  maxInstances: 4
  scaleInAfterIdleSeconds: 3
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q}
spec:
  computeEnvironments: [cloud]
"#;

/// A process job of queue `q` that records its own start and stop (time, instance, pid).
fn job(dir: &Path, name: &str, seconds: f64) -> String {
    job_with(dir, "q", name, seconds, "2", 1)
}

/// [`job`] in `queue`, with `cpu` and `attempts`.
fn job_with(dir: &Path, queue: &str, name: &str, seconds: f64, cpu: &str, attempts: u32) -> String {
    let f = dir.join("truth").join(name);
    let script = format!(
        "f={f}; echo \"start $(date +%s.%N) $INSTANCE $$\" >> $f; sleep {seconds}; echo \"stop $(date +%s.%N) $INSTANCE $$\" >> $f",
        f = f.display()
    );
    format!(
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {{name: {name}}}
spec:
  queue: {queue}
  process: {{command: ["sh", "-c", {script:?}]}}
  resources: {{cpu: "{cpu}", memory: 1Gi}}
  retryStrategy: {{attempts: {attempts}}}
"#
    )
}

/// Instance-seconds the fleet ran (launch to termination, or to now) and job-seconds
/// the jobs ran (start to stop, or to now), from the player's and the jobs' records.
fn usage(world: &World) -> (f64, f64) {
    let now = epoch();
    let instances = world
        .played
        .lock()
        .map(|p| {
            p.launched
                .iter()
                .map(|(id, at)| p.terminated.get(id).copied().unwrap_or(now) - at)
                .sum()
        })
        .unwrap_or(0.0);
    let jobs = truth(world.dir.path())
        .values()
        .flatten()
        .map(|r| r.stop.unwrap_or(now) - r.start)
        .sum();
    (instances, jobs)
}

/// Every job ran exactly once, to its end, and no instance was terminated while it ran
/// a job or within `idle` seconds of a job's end there.
fn check_ground_truth(world: &World, jobs: usize, idle: f64) -> (f64, usize) {
    let truth = truth(world.dir.path());
    assert_eq!(truth.len(), jobs, "every job ran: {truth:?}");
    for (name, runs) in &truth {
        assert_eq!(runs.len(), 1, "{name} ran once: {runs:?}");
        assert!(runs[0].stop.is_some(), "{name} ran to its end: {runs:?}");
    }
    let played = world
        .played
        .lock()
        .map(|p| p.terminated.clone())
        .unwrap_or_default();
    let mut closest = f64::INFINITY;
    for (instance, at) in &played {
        for (name, runs) in &truth {
            for r in runs.iter().filter(|r| &r.instance == instance) {
                let stop = r.stop.unwrap_or(f64::INFINITY);
                assert!(
                    r.start > *at || *at - stop >= idle,
                    "{instance} was terminated at {at:.2}, {:.2}s after {name} ended there (idle window {idle}s)",
                    *at - stop
                );
                if stop <= *at {
                    closest = closest.min(*at - stop);
                }
            }
        }
    }
    (closest, played.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_never_terminates_an_instance_within_its_idle_window_of_a_job() {
    let w = World::start(WORLD, Options::default()).await;
    let durations = [1.0, 4.0, 2.0, 6.0, 1.5, 3.0, 5.0, 2.5, 1.0, 4.5, 2.0, 3.5];
    for (i, s) in durations.iter().enumerate() {
        apply_yaml(&w.client, &job(w.dir.path(), &format!("m{i}"), *s)).await;
        if i % 4 == 3 {
            // Jobs arrive in waves, so instances go idle and busy again.
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
    }
    w.wait_all(
        durations.len(),
        JobPhase::Succeeded,
        Duration::from_secs(240),
    )
    .await;
    // Scale-in completes: every instance goes once idle.
    let start = Instant::now();
    loop {
        let p = w
            .played
            .lock()
            .map(|p| (p.launched.len(), p.terminated.len()))
            .unwrap_or_default();
        if p.0 > 0 && p.0 == p.1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "idle instances are terminated ({} launched, {} terminated)",
            p.0,
            p.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (closest, terminated) = check_ground_truth(&w, durations.len(), 3.0);
    eprintln!(
        "scale-in: {} jobs, {terminated} instances terminated, the closest termination came {closest:.2}s after a job ended on that instance (idle window 3s)",
        durations.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_api_server_fails_no_job_and_terminates_no_busy_instance() {
    let lost = 8;
    let w = World::start(
        WORLD,
        Options {
            lost_node_timeout: lost,
            ..Options::default()
        },
    )
    .await;
    for i in 0..4 {
        apply_yaml(&w.client, &job(w.dir.path(), &format!("long{i}"), 30.0)).await;
    }
    // All four run (ground truth), then the API server stops answering for twice the
    // lost-node timeout.
    support::wait_until("four jobs running", Duration::from_secs(120), || {
        truth(w.dir.path()).len() == 4
    });
    w.signal_apiserver(nix::sys::signal::Signal::SIGSTOP);
    let paused = epoch();
    tokio::time::sleep(Duration::from_secs(2 * lost)).await;
    w.signal_apiserver(nix::sys::signal::Signal::SIGCONT);
    let resumed = epoch();
    w.wait_all_succeeded_once(4, Duration::from_secs(180)).await;
    let (_, terminated) = check_ground_truth(&w, 4, 0.0);
    let last_stop = truth(w.dir.path())
        .values()
        .filter_map(|r| r[0].stop)
        .fold(0.0, f64::max);
    let (instance_seconds, job_seconds) = usage(&w);
    eprintln!(
        "API server paused {:.1}s (lost-node timeout {lost}s): 4 jobs, 1 attempt each, none terminated while busy ({terminated} instances terminated in all); all Succeeded in status {:.1}s after the last job really ended ({:.1}s after the resume); {instance_seconds:.0} instance-seconds for {job_seconds:.0} job-seconds (2 jobs fit an instance)",
        resumed - paused,
        epoch() - last_stop,
        epoch() - resumed,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_api_server_is_fenced_before_its_job_runs_again() {
    let lost = 8;
    let w = World::start(
        WORLD,
        Options {
            lost_node_timeout: lost,
            ..Options::default()
        },
    )
    .await;
    // Two 3-cpu jobs: one per 4-cpu instance.
    apply_yaml(&w.client, &job_with(w.dir.path(), "q", "cut", 45.0, "3", 2)).await;
    apply_yaml(
        &w.client,
        &job_with(w.dir.path(), "q", "other", 45.0, "3", 1),
    )
    .await;
    support::wait_until("both jobs running", Duration::from_secs(120), || {
        truth(w.dir.path()).len() == 2
    });
    let victim = truth(w.dir.path())["cut"][0].instance.clone();
    let route = w.route(&victim).expect("the victim's route");
    route.cut();
    let cut_at = epoch();
    let jobs = w
        .wait_all(2, JobPhase::Succeeded, Duration::from_secs(240))
        .await;
    let cut_job = jobs
        .iter()
        .find(|j| j.metadata.name.as_deref() == Some("cut"))
        .and_then(|j| j.status.clone())
        .unwrap_or_default();
    assert_eq!(cut_job.attempts.len(), 2, "{:?}", cut_job.attempts);
    assert_eq!(
        cut_job.attempts[0]
            .reason
            .as_ref()
            .map(AttemptReason::as_str),
        Some("NodeLost")
    );
    let fenced_at = w
        .played
        .lock()
        .ok()
        .and_then(|p| p.terminated.get(&victim).copied())
        .expect("the cut-off instance was terminated (fenced)");
    let runs = &truth(w.dir.path())["cut"];
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].instance, victim);
    assert!(
        runs[0].stop.is_none(),
        "the first run died with its instance"
    );
    assert!(
        runs[1].start > fenced_at,
        "the retry started {:.2}s before the fence",
        fenced_at - runs[1].start
    );
    assert_ne!(runs[1].instance, victim);
    let other = &truth(w.dir.path())["other"];
    assert_eq!(other.len(), 1, "{other:?}");
    assert!(other[0].stop.is_some());
    let (instance_seconds, job_seconds) = usage(&w);
    eprintln!(
        "agent cut off (lost-node timeout {lost}s): fenced {:.1}s after the cut, retried {:.1}s after the fence, attempts never overlapped; work lost with the fenced instance {:.1}s; {instance_seconds:.0} instance-seconds for {job_seconds:.0} job-seconds",
        fenced_at - cut_at,
        runs[1].start - fenced_at,
        fenced_at - runs[0].start,
    );
}

/// The desired capacities SetDesiredCapacity set (the calls moto answered), in order.
fn desired_sequence(aws: &AwsFaultProxy) -> Vec<u32> {
    aws.seen()
        .into_iter()
        .filter(|s| s.action == "SetDesiredCapacity" && s.fault == Fault::Pass)
        .filter_map(|s| {
            s.body
                .split('&')
                .find_map(|kv| kv.strip_prefix("DesiredCapacity="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_under_aws_throttling_and_errors_loses_no_job_and_does_not_thrash() {
    let w = World::start(
        WORLD,
        Options {
            controllers: 2,
            ..Options::default()
        },
    )
    .await;
    let leader = w.wait_leader(None).await;
    // AWS throttles, then fails, while jobs arrive and the leader dies mid-way.
    w.aws.set(Fault::Throttle);
    for i in 0..4 {
        apply_yaml(&w.client, &job(w.dir.path(), &format!("t{i}"), 20.0)).await;
    }
    let count = |f: Fault| w.aws.seen().iter().filter(|s| s.fault == f).count();
    support::wait_until("throttled calls", Duration::from_secs(60), || {
        count(Fault::Throttle) >= 3
    });
    w.aws.set(Fault::ServerError);
    support::wait_until("failed calls", Duration::from_secs(60), || {
        count(Fault::ServerError) >= 3
    });
    let mut w = w;
    w.controllers[leader] = None; // SIGKILL: no Lease release.
    let killed = epoch();
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.aws.set(Fault::Pass);
    let new_leader = w.wait_leader(Some(leader)).await;
    let took_over = epoch();
    w.wait_all_succeeded_once(4, Duration::from_secs(240)).await;
    check_ground_truth(&w, 4, 0.0);
    // No capacity thrash: desired goes up, then (once idle) down; never down and up again.
    let seq = desired_sequence(&w.aws);
    let turns = seq
        .windows(3)
        .filter(|x| (x[1] > x[0] && x[2] < x[1]) || (x[1] < x[0] && x[2] > x[1]))
        .count();
    assert!(turns <= 1, "desired capacity oscillated: {seq:?}");
    let live = w.fleet.describe().await.map(|f| f.desired).unwrap_or(0);
    eprintln!(
        "leader controller-{leader} killed under AWS faults; controller-{new_leader} led {:.1}s later; 4 jobs, 1 attempt each; SetDesiredCapacity values {seq:?} (desired now {live}); requests by action and fault: {:?}",
        took_over - killed,
        w.aws.counts()
    );
}

/// A backlog environment of one instance (two 2-cpu jobs at a time) and another
/// environment, of one instance too, for a second queue.
const BACKLOG_WORLD: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: cloud}
spec:
  aws: {autoScalingGroupName: batch, region: us-east-1}
  minInstances: 0
  maxInstances: 1
  scaleInAfterIdleSeconds: 3
---
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: other}
spec:
  aws: {autoScalingGroupName: batch2, region: us-east-1}
  minInstances: 0
  maxInstances: 1
  scaleInAfterIdleSeconds: 3
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q}
spec:
  computeEnvironments: [cloud]
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q2}
spec:
  computeEnvironments: [other]
"#;

/// What a controller reported parked, and what had really happened by then.
struct ParkedSeen {
    /// `asg_batch_controller_parked_jobs`.
    jobs: f64,
    /// `asg_batch_controller_parked_classes`.
    classes: f64,
    /// Backlog jobs that had started (ground truth).
    started: usize,
    /// ... and ended.
    ended: usize,
}

impl std::fmt::Display for ParkedSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} jobs of {} class(es) parked while {} backlog jobs had started and {} ended",
            self.jobs, self.classes, self.started, self.ended
        )
    }
}

/// Backlog jobs (named `b*`) that started, and that ended, by the jobs' own records.
fn backlog_progress(dir: &Path) -> (usize, usize) {
    let t = truth(dir);
    let runs = t.iter().filter(|(k, _)| k.starts_with('b'));
    let started = runs.clone().count();
    let ended = runs
        .filter(|(_, r)| r.iter().any(|r| r.stop.is_some()))
        .count();
    (started, ended)
}

/// Waits until controller `i` reports a parked backlog from a pass begun after this call
/// (`asg_batch_controller_parked_jobs` above 0 once its pass count has grown by two);
/// fails if the backlog (the jobs named `b*`, `backlog` of them) has all started first, as
/// then nothing after this point is tested with a parked backlog.
async fn wait_parked(w: &World, i: usize, backlog: usize, when: &str) -> ParkedSeen {
    const PASSES: &str = "asg_batch_controller_pass_duration_seconds_count";
    let start = Instant::now();
    let passes = w.metric(i, PASSES).await.unwrap_or(0.0);
    loop {
        let fresh = w.metric(i, PASSES).await.unwrap_or(0.0) >= passes + 2.0;
        let jobs = w
            .metric(i, "asg_batch_controller_parked_jobs")
            .await
            .unwrap_or(0.0);
        if fresh && jobs > 0.0 {
            let classes = w
                .metric(i, "asg_batch_controller_parked_classes")
                .await
                .unwrap_or(0.0);
            let (started, ended) = backlog_progress(w.dir.path());
            return ParkedSeen {
                jobs,
                classes,
                started,
                ended,
            };
        }
        let (started, _) = backlog_progress(w.dir.path());
        assert!(
            started < backlog,
            "{when}: controller-{i} never parked the backlog before all of it started (logs in {})",
            w.dir.path().display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{when}: controller-{i} parked nothing in 120 s (logs in {})",
            w.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_backlog_survives_a_paused_api_server_and_a_killed_leader_and_runs_once() {
    let lost = 8;
    let backlog = 16;
    let mut w = World::start(
        BACKLOG_WORLD,
        Options {
            lost_node_timeout: lost,
            controllers: 2,
            groups: &[("batch", "cloud"), ("batch2", "other")],
            // Parks all but each queue's first 2 waiting jobs, with a refresh every 5 s.
            controller_args: &["--parked-kept", "2", "--full-pass-interval", "5"],
        },
    )
    .await;
    // Sixteen 2-cpu jobs for one 4-cpu instance: a backlog that no node and no new
    // instance can take while two of them run.
    for i in 0..backlog {
        apply_yaml(
            &w.client,
            &job_with(w.dir.path(), "q", &format!("b{i:02}"), 4.0, "2", 1),
        )
        .await;
    }
    let leader = w.wait_leader(None).await;
    let parked_before = wait_parked(&w, leader, backlog, "before the pause").await;
    // New work of the other queue binds while the backlog is parked.
    for name in ["n0", "n1"] {
        apply_yaml(&w.client, &job_with(w.dir.path(), "q2", name, 3.0, "2", 1)).await;
    }
    support::wait_until(
        "the other queue's jobs running",
        Duration::from_secs(120),
        || {
            let t = truth(w.dir.path());
            t.contains_key("n0") && t.contains_key("n1")
        },
    );
    let parked_beside = wait_parked(&w, leader, backlog, "beside the other queue").await;

    // The API server stops answering for twice the lost-node timeout (and longer than the
    // 15 s Lease: the leader steps down).
    w.signal_apiserver(nix::sys::signal::Signal::SIGSTOP);
    let paused = epoch();
    tokio::time::sleep(Duration::from_secs(2 * lost)).await;
    w.signal_apiserver(nix::sys::signal::Signal::SIGCONT);
    let resumed = epoch();
    let leader = w.wait_leader(None).await;
    let parked_after = wait_parked(&w, leader, backlog, "after the resume").await;

    // The leader dies (SIGKILL: no Lease release) with the backlog parked; the standby
    // takes over with no memory of what was settled, and parks it again.
    w.controllers[leader] = None;
    let killed = epoch();
    let new_leader = w.wait_leader(Some(leader)).await;
    let took_over = epoch();
    for name in ["n2", "n3"] {
        apply_yaml(&w.client, &job_with(w.dir.path(), "q2", name, 3.0, "2", 1)).await;
    }
    let parked_new = wait_parked(&w, new_leader, backlog, "after the takeover").await;

    let total = backlog + 4;
    w.wait_all_succeeded_once(total, Duration::from_secs(300))
        .await;
    // Ground truth: every job ran once to its end; no instance was terminated busy.
    let (_, terminated) = check_ground_truth(&w, total, 0.0);
    let t = truth(w.dir.path());
    let backlog_starts: Vec<f64> = t
        .iter()
        .filter(|(k, _)| k.starts_with('b'))
        .map(|(_, r)| r[0].start)
        .collect();
    let last_backlog_start = backlog_starts.iter().copied().fold(0.0, f64::max);
    for name in ["n0", "n1", "n2", "n3"] {
        let start = t[name][0].start;
        assert!(
            start < last_backlog_start,
            "{name} started {:.1}s after the whole backlog had started: it did not bind beside the parked backlog",
            start - last_backlog_start
        );
    }
    // The backlog's environment never ran more than its one instance's two jobs at once.
    let runs: Vec<&Ran> = t
        .iter()
        .filter(|(k, _)| k.starts_with('b'))
        .flat_map(|(_, r)| r)
        .collect();
    let most = runs
        .iter()
        .map(|a| {
            runs.iter()
                .filter(|b| b.start <= a.start && b.stop.is_none_or(|s| s > a.start))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 2, "{most} backlog jobs ran at once on one instance");
    let (instance_seconds, job_seconds) = usage(&w);
    eprintln!(
        "parked backlog of {backlog} jobs (--parked-kept 2): {parked_before} before the pause; {parked_beside} beside the other queue; {parked_after} after a {:.1}s pause (lost-node timeout {lost}s), {parked_new} on controller-{new_leader} after controller-{leader} was killed (took over {:.1}s later); {total} jobs, 1 attempt each, at most {most} backlog jobs at once, none on an instance terminated while busy ({terminated} terminated in all); the other queue's 4 jobs started before the backlog's last; all Succeeded {:.1}s after the resume; {instance_seconds:.0} instance-seconds for {job_seconds:.0} job-seconds",
        resumed - paused,
        took_over - killed,
        epoch() - resumed,
    );
}
