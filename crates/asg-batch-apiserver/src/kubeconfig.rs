//! Writes a kubeconfig that kubectl and `kube::Client` both accept.

use std::path::Path;

/// The kubeconfig YAML for a plain-HTTP server at `base_url`.
pub fn render(base_url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: asg-batch
  cluster:
    server: {base_url}
contexts:
- name: asg-batch
  context:
    cluster: asg-batch
    user: asg-batch
    namespace: default
current-context: asg-batch
preferences: {{}}
users:
- name: asg-batch
  user: {{}}
"
    )
}

/// Write the kubeconfig to `path` (creating parent directories).
pub fn write(path: &Path, base_url: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(base_url))
}
