//! Test support shared by the integration tests: real servers started per test (moto,
//! Podman's Docker API), the real kubectl/helm binaries, and manifest validation.
//! Every server started here stops when its guard drops, also when a test fails.
#![allow(dead_code)]
// Test set-up that cannot go on (a server that does not start, a fixture that does not
// parse) panics with a message: that is the test failing, which is what it should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod apiserver;
pub mod controller;
pub mod kube;
pub mod manifests;
pub mod moto;
pub mod podman;
pub mod proxy;
pub mod tools;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository root.
/// The built-in demo's compute environment and queue (its first two documents), for a
/// test's own `asg-batch dev -f` manifest.
pub fn dev_demo_environment_and_queue() -> String {
    asg_batch::dev::DEMO
        .split("\n---\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on loopback");
    listener.local_addr().expect("local addr").port()
}

/// The polling helpers: [`wait_until`] for synchronous checks, [`eventually`] (and
/// [`eventually_within`]) for asynchronous reads. Polls `ready` every 50 ms until it
/// returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] for async tests: polls `ready` every 50 ms, yielding to the runtime in
/// between, until it returns true or `timeout` passes.
pub async fn wait_until_async(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `get` every 100 ms until `ready` holds (60 s at most); returns the last value.
pub async fn eventually<T, F, Fut>(what: &str, get: F, ready: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: std::fmt::Debug,
{
    eventually_within(what, Duration::from_secs(60), get, ready).await
}

/// Polls `get` every 100 ms until `ready` holds or `timeout` passes (then fails with the
/// last value); returns the value that was ready.
pub async fn eventually_within<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut get: F,
    ready: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value = get().await;
        if ready(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {value:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    pub child: std::process::Child,
    pub name: &'static str,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes standard base64 (with or without padding); `None` on any other character.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
