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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = dir.path().join("kubeconfig");
    let mut child = Kill(
        bin()
            .args([
                "apiserver",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--kubeconfig",
            ])
            .arg(&kc)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    support::wait_until("the kubeconfig written", Duration::from_secs(20), || {
        kc.exists()
    });
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(
        text.contains(&format!("server: http://127.0.0.1:{port}")),
        "{text}"
    );
    let kubectl = std::env::var_os("ASG_BATCH_KUBECTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/kubectl"));
    let o = Command::new(&kubectl)
        .args(["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", &kc)
        .env("KUBECACHEDIR", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = String::from_utf8_lossy(&o.stdout);
    assert!(
        names.contains("namespace/default") && names.contains("namespace/kube-system"),
        "{names}"
    );
    // SIGTERM: clean exit 0
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
    let status = status.unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("GET /api"), "requests are logged: {log}");
    assert!(log.contains("status=200"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
}
