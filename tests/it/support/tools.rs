//! Locating the real kubectl and helm binaries installed by `make test-deps` into `.tools/`.

use super::repo_root;
use std::path::PathBuf;

fn tool(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools").join(name));
    assert!(
        path.is_file(),
        "{name} not found at {} (run `make test-deps`, or set {env})",
        path.display()
    );
    path
}

/// Path of kubectl (v1.35, from `.tools/`, or `$ASG_BATCH_KUBECTL`).
pub fn kubectl() -> PathBuf {
    tool("kubectl", "ASG_BATCH_KUBECTL")
}

/// Path of helm (v4, from `.tools/`, or `$ASG_BATCH_HELM`).
pub fn helm() -> PathBuf {
    tool("helm", "ASG_BATCH_HELM")
}
