//! Podman's Docker-compatible API on a socket in a temporary directory.

use super::{ChildGuard, wait_until};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The image every container test runs (built by `make test-deps` from busybox-static).
pub const TEST_IMAGE: &str = "localhost/busybox:test";

/// A running `podman system service`, stopped on drop.
pub struct PodmanService {
    _child: ChildGuard,
    _dir: tempfile::TempDir,
    /// Path of the API socket.
    pub socket: PathBuf,
}

impl PodmanService {
    /// Starts the service and waits for its socket.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("podman.sock");
        // conmon drops files (e.g. `oom`) in its working directory: keep them in the temp dir.
        let child = Command::new("podman")
            .current_dir(dir.path())
            .args([
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", socket.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn podman system service (run `make test-deps`)");
        let guard = ChildGuard {
            child,
            name: "podman",
        };
        wait_until("podman socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Self {
            _child: guard,
            _dir: dir,
            socket,
        }
    }

    /// A bollard client on this socket, version-negotiated (Podman serves API 1.41).
    pub async fn docker(&self) -> bollard::Docker {
        let docker = bollard::Docker::connect_with_unix(
            &self.socket.display().to_string(),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("connect to podman socket");
        docker
            .negotiate_version()
            .await
            .expect("negotiate API version")
    }
}

/// Whether the podman CLI exists (tests assert on it instead of silently skipping).
pub fn podman_available() -> bool {
    Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
