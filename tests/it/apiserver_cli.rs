//! The `asg-batch apiserver` command: refuses non-loopback addresses without
//! `--allow-remote`, writes a kubeconfig kubectl accepts, stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_asg-batch"))
}

#[test]
fn refuses_non_loopback_without_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["apiserver", "--listen", "0.0.0.0:0", "--kubeconfig"])
        .arg(dir.path().join("kc"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("refusing to listen on non-loopback address 0.0.0.0:0"),
        "{e}"
    );
    assert!(e.contains("--allow-remote"), "{e}");
    assert!(!dir.path().join("kc").exists());
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_kubectl_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "first", "info");
    let text = std::fs::read_to_string(&s.kubeconfig).unwrap();
    assert!(
        text.contains(&format!("server: http://127.0.0.1:{}", s.port)),
        "{text}"
    );
    let names = s.kubectl(&["get", "namespaces", "-o", "name"]);
    assert!(
        names.contains("namespace/default") && names.contains("namespace/kube-system"),
        "{names}"
    );
    // SIGTERM: clean exit 0
    let Server { mut child, log, .. } = s;
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    support::wait_until("exit on SIGTERM", Duration::from_secs(10), || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
    support::wait_until("the log read to its end", Duration::from_secs(10), || {
        log.lock().unwrap().contains("shutting down")
    });
    let log = log.lock().unwrap();
    assert!(log.contains("GET /api"), "requests are logged: {log}");
    assert!(log.contains("status=200"), "{log}");
}

/// `asg-batch apiserver --data-dir DIR/data` on a free loopback port, its stderr
/// (`RUST_LOG` as given) collected.
struct Server {
    child: Kill,
    port: u16,
    kubeconfig: std::path::PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(dir: &std::path::Path, name: &str, rust_log: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kubeconfig = dir.join(format!("kubeconfig-{name}"));
        let mut child = Kill(
            bin()
                .args([
                    "apiserver",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--kubeconfig",
                ])
                .arg(&kubeconfig)
                .arg("--data-dir")
                .arg(dir.join("data"))
                .env("RUST_LOG", rust_log)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.0.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        support::wait_until("the kubeconfig written", Duration::from_secs(20), || {
            kubeconfig.exists()
        });
        Server {
            child,
            port,
            kubeconfig,
            log,
        }
    }

    /// Runs kubectl against it; its stdout.
    fn kubectl(&self, args: &[&str]) -> String {
        let kubectl = std::env::var_os("ASG_BATCH_KUBECTL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/kubectl")
            });
        let o = Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "KUBECACHEDIR",
                self.kubeconfig.with_extension("kubectl-cache"),
            )
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The ConfigMaps of `default` and their resourceVersions.
    fn config_maps(&self) -> std::collections::BTreeMap<String, u64> {
        self.kubectl(&[
            "get",
            "configmaps",
            "-n",
            "default",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
        ])
        .lines()
        .filter_map(|l| {
            let (name, rv) = l.split_once('=')?;
            Some((name.to_owned(), rv.parse().unwrap()))
        })
        .collect()
    }

    /// The highest resourceVersion its log says the store flushed durably.
    fn flushed(&self) -> Option<u64> {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("data store flushed"))
            .filter_map(|l| {
                let (_, rest) = l.split_once("resource_version=")?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
    }
}

#[test]
fn a_killed_server_restarts_with_every_write_it_flushed_and_a_consistent_rest() {
    // The store writes behind: one durable transaction a second. SIGKILL may lose the
    // writes of the last second, never what a flush committed, and what survives is the
    // state as of one resourceVersion (a flush is one transaction).
    let dir = tempfile::tempdir().unwrap();
    const LOG: &str = "warn,asg_batch_apiserver::store=debug";
    let s = Server::start(dir.path(), "first", LOG);
    for i in 0..5 {
        s.kubectl(&[
            "create",
            "configmap",
            &format!("flushed-{i}"),
            "-n",
            "default",
            &format!("--from-literal=i={i}"),
        ]);
    }
    s.kubectl(&[
        "patch",
        "configmap",
        "flushed-1",
        "-n",
        "default",
        "-p",
        r#"{"data":{"i":"changed"}}"#,
    ]);
    s.kubectl(&["delete", "configmap", "flushed-2", "-n", "default"]);
    let before = s.config_maps();
    let last = before.values().copied().max().unwrap();
    assert_eq!(before.len(), 4, "{before:?}");
    support::wait_until(
        "the store flushed the writes",
        Duration::from_secs(20),
        || s.flushed().is_some_and(|rv| rv >= last),
    );
    // More writes, then SIGKILL at once: some may be lost.
    for i in 0..3 {
        s.kubectl(&["create", "configmap", &format!("late-{i}"), "-n", "default"]);
    }
    let late = s.config_maps();
    let Server { mut child, .. } = s;
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let s = Server::start(dir.path(), "second", LOG);
    let after = s.config_maps();
    // Everything flushed, at the same resourceVersions (the patch too; the deletion kept).
    for (name, rv) in &before {
        assert_eq!(after.get(name), Some(rv), "{name}: {after:?}");
    }
    assert!(!after.contains_key("flushed-2"), "{after:?}");
    // The late writes: those kept are as written, and each kept one's earlier ones are
    // kept too (the state as of one resourceVersion).
    let kept: Vec<&String> = late
        .iter()
        .filter(|(name, _)| name.starts_with("late-"))
        .filter(|(name, rv)| {
            let got = after.get(*name);
            assert!(got.is_none_or(|g| g == *rv), "{name}: {got:?} vs {rv}");
            got.is_some()
        })
        .map(|(name, _)| name)
        .collect();
    let expected: Vec<&String> = late
        .keys()
        .filter(|n| n.starts_with("late-"))
        .take(kept.len())
        .collect();
    assert_eq!(kept, expected, "a prefix of the late writes survives");
    // New writes go on above every resourceVersion handed out before the kill, kept or
    // lost: no number names two changes.
    let highest = late.values().copied().max().unwrap();
    s.kubectl(&["create", "configmap", "next", "-n", "default"]);
    let next = s.config_maps()["next"];
    assert!(next > highest, "{next} > {highest}");
}
