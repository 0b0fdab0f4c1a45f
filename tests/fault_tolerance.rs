//! Fault tests with real processes: a moto Auto Scaling Group, the API server
//! (`asg-batch apiserver`) and the controller (`asg-batch controller`) as processes, and a
//! fleet player that starts one real `asg-batch agent` process per InService instance and,
//! when an instance leaves the group, kills its agent and everything its jobs started (what
//! a terminated instance does). Ground truth is what the jobs themselves wrote (start and
//! stop times, the instance), never the status alone.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use asg_batch::api::{BatchJob, JobPhase};
use asg_batch::cloud::Fleet;
use asg_batch::cloud::aws::AwsFleet;
use kube::api::{Api, ListParams};
use support::ChildGuard;
use support::controller::apply_yaml;

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

/// What the fleet player saw: instances and when they left the group.
#[derive(Default)]
struct Played {
    launched: BTreeMap<String, f64>,
    terminated: BTreeMap<String, f64>,
}

struct World {
    dir: tempfile::TempDir,
    _moto: support::moto::MotoServer,
    apiserver: ChildGuard,
    _controller: ChildGuard,
    client: kube::Client,
    played: Arc<Mutex<Played>>,
    player: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.player.abort();
        // Resume a paused API server so it can be killed and reaped.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.apiserver.child.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        );
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
    async fn start(world_yaml: &str, lost_node_timeout: u64) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("truth")).expect("truth dir");
        let moto = support::moto::MotoServer::start();
        let config = moto.sdk_config().await;
        support::moto::create_group(&config, "batch", 4, 0).await;

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

        let mut cmd = std::process::Command::new(bin());
        cmd.args([
            "controller",
            "--leader-elect=false",
            "--resync",
            "1",
            "--lost-node-timeout",
            &lost_node_timeout.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(log_file(dir.path(), "controller.log"));
        aws_env(&mut cmd, &moto.endpoint);
        let controller = ChildGuard {
            child: cmd.spawn().expect("spawn controller"),
            name: "controller",
        };

        let played = Arc::new(Mutex::new(Played::default()));
        let player = tokio::spawn(play(
            AwsFleet::new(&config, "batch"),
            moto.endpoint.clone(),
            kubeconfig,
            dir.path().to_owned(),
            played.clone(),
        ));
        World {
            dir,
            _moto: moto,
            apiserver,
            _controller: controller,
            client,
            played,
            player,
        }
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
                self.dir.path().join("controller.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn signal_apiserver(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.apiserver.child.id() as i32),
            sig,
        )
        .expect("signal the API server");
    }
}

/// The fleet player: one agent process per live instance; an instance that leaves the
/// group takes its agent and its jobs with it.
async fn play(
    fleet: AwsFleet,
    endpoint: String,
    kubeconfig: PathBuf,
    dir: PathBuf,
    played: Arc<Mutex<Played>>,
) {
    let mut agents: BTreeMap<String, std::process::Child> = BTreeMap::new();
    loop {
        if let Ok(state) = fleet.describe().await {
            let live: Vec<String> = state
                .live_instances()
                .map(|i| i.instance_id.clone())
                .collect();
            for id in &live {
                if agents.contains_key(id) {
                    continue;
                }
                let mut cmd = std::process::Command::new(bin());
                cmd.args([
                    "agent",
                    "--compute-environment",
                    "cloud",
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
                .env("KUBECONFIG", &kubeconfig)
                .env("INSTANCE", id)
                .stdout(Stdio::null())
                .stderr(log_file(&dir, &format!("agent-{id}.log")));
                aws_env(&mut cmd, &endpoint);
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                if let Ok(child) = cmd.spawn() {
                    agents.insert(id.clone(), child);
                    if let Ok(mut p) = played.lock() {
                        p.launched.insert(id.clone(), epoch());
                    }
                }
            }
            let gone: Vec<String> = agents
                .keys()
                .filter(|id| !live.contains(id))
                .cloned()
                .collect();
            for id in gone {
                let at = epoch();
                if let Some(mut child) = agents.remove(&id) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = child.wait();
                }
                // Whatever its jobs started dies with the instance.
                for runs in truth(&dir).values() {
                    for r in runs.iter().filter(|r| r.instance == id && r.stop.is_none()) {
                        // The job's group is led by its shim (`asg-batch shim`), which
                        // outlives the agent like the job does.
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

/// A process job that records its own start and stop (time, instance, pid).
fn job(dir: &Path, name: &str, seconds: f64) -> String {
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
  queue: q
  process: {{command: ["sh", "-c", {script:?}]}}
  resources: {{cpu: "2", memory: 1Gi}}
"#
    )
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
    let w = World::start(WORLD, 30).await;
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
    let w = World::start(WORLD, lost).await;
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
    let jobs = w
        .wait_all(4, JobPhase::Succeeded, Duration::from_secs(180))
        .await;
    for j in &jobs {
        let s = j.status.clone().unwrap_or_default();
        assert_eq!(
            (s.attempt, s.attempts.len()),
            (Some(1), 1),
            "{:?} succeeded on its first attempt",
            j.metadata.name
        );
    }
    let (_, terminated) = check_ground_truth(&w, 4, 0.0);
    let last_stop = truth(w.dir.path())
        .values()
        .filter_map(|r| r[0].stop)
        .fold(0.0, f64::max);
    eprintln!(
        "API server paused {:.1}s (lost-node timeout {lost}s): 4 jobs, 1 attempt each, none terminated while busy ({terminated} instances terminated in all); all Succeeded in status {:.1}s after the last job really ended ({:.1}s after the resume)",
        resumed - paused,
        epoch() - last_stop,
        epoch() - resumed,
    );
}
