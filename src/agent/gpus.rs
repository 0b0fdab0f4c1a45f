//! Which of the node's GPUs each attempt holds, so two attempts never share one.
//!
//! [`GpuAssignments`] is pure: attempts (by their name, [`super::spec::attempt_name`]) get
//! the lowest free indices, asking again returns the same ones, and releasing frees them.
//! [`GpuAllocator`] keeps it under a lock and in `<data dir>/gpus.json`, written before an
//! assignment is used, so a restarted agent re-adopts an attempt with the GPUs it had and
//! gives none of them to another.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Environment variable naming the GPUs a container sees (NVIDIA's container toolkit).
pub const VISIBLE_DEVICES_ENV: &str = "NVIDIA_VISIBLE_DEVICES";

/// Why GPUs could not be assigned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GpuError {
    /// The node has too few free GPUs.
    #[error(
        "resources.gpu: the attempt needs {wanted} GPU(s) but this node has {free} free of {total}"
    )]
    NotEnough {
        /// GPUs asked for.
        wanted: u32,
        /// GPUs free now.
        free: u32,
        /// GPUs of the node.
        total: u32,
    },
    /// The state file could not be read or written.
    #[error("GPU assignments in {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// The GPUs held by each attempt of a node with `total` GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAssignments {
    /// GPUs of the node (indices `0..total`).
    pub total: u32,
    /// Indices held, by attempt name.
    pub held: BTreeMap<String, Vec<u32>>,
}

impl GpuAssignments {
    /// No GPU held on a node with `total`.
    pub fn new(total: u32) -> Self {
        Self {
            total,
            held: BTreeMap::new(),
        }
    }

    /// Indices no attempt holds, ascending.
    pub fn free(&self) -> Vec<u32> {
        (0..self.total)
            .filter(|i| !self.held.values().any(|h| h.contains(i)))
            .collect()
    }

    /// The `wanted` GPUs of attempt `name`: those it holds already (a re-adopted attempt
    /// keeps its GPUs), else the lowest free ones. Zero wanted: none.
    pub fn assign(&mut self, name: &str, wanted: u32) -> Result<Vec<u32>, GpuError> {
        if wanted == 0 {
            return Ok(Vec::new());
        }
        if let Some(held) = self.held.get(name) {
            return Ok(held.clone());
        }
        let free = self.free();
        let n = usize::try_from(wanted).unwrap_or(usize::MAX);
        if free.len() < n {
            return Err(GpuError::NotEnough {
                wanted,
                free: u32::try_from(free.len()).unwrap_or(u32::MAX),
                total: self.total,
            });
        }
        let picked: Vec<u32> = free.into_iter().take(n).collect();
        self.held.insert(name.to_string(), picked.clone());
        Ok(picked)
    }

    /// Frees what attempt `name` holds; whether it held anything.
    pub fn release(&mut self, name: &str) -> bool {
        self.held.remove(name).is_some()
    }

    /// Keeps only the attempts `live` says are still on the node (an agent that crashed
    /// between an attempt's report and its release left its entry behind).
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) -> Vec<String> {
        let gone: Vec<String> = self.held.keys().filter(|k| !live(k)).cloned().collect();
        for name in &gone {
            self.held.remove(name);
        }
        gone
    }
}

/// `NVIDIA_VISIBLE_DEVICES`'s value for these indices (`0,2`).
pub fn visible_devices(indices: &[u32]) -> String {
    indices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The node's [`GpuAssignments`], shared by its attempts and kept in a file.
#[derive(Debug)]
pub struct GpuAllocator {
    state: Mutex<GpuAssignments>,
    path: Option<PathBuf>,
}

impl GpuAllocator {
    /// Assignments kept in memory only (tests, nodes without a data directory).
    pub fn in_memory(total: u32) -> Self {
        Self {
            state: Mutex::new(GpuAssignments::new(total)),
            path: None,
        }
    }

    /// The file under `data_dir` that keeps the assignments.
    pub fn state_file(data_dir: &Path) -> PathBuf {
        data_dir.join("gpus.json")
    }

    /// Loads the assignments an earlier agent process kept under `data_dir`, for a node
    /// with `total` GPUs now (entries naming indices beyond it are dropped: the node cannot
    /// have them).
    pub fn load(data_dir: &Path, total: u32) -> Result<Self, GpuError> {
        let path = Self::state_file(data_dir);
        let err = |reason: String| GpuError::State {
            path: path.display().to_string(),
            reason,
        };
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<GpuAssignments>(&bytes).map_err(|e| err(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GpuAssignments::new(total),
            Err(e) => return Err(err(e.to_string())),
        };
        state.total = total;
        state.held.retain(|_, h| h.iter().all(|i| *i < total));
        Ok(Self {
            state: Mutex::new(state),
            path: Some(path),
        })
    }

    /// GPUs of the node.
    pub fn total(&self) -> u32 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GpuAssignments> {
        // A panic while holding the lock leaves consistent data (every change is one call).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, state: &GpuAssignments) -> Result<(), GpuError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |reason: String| GpuError::State {
            path: path.display().to_string(),
            reason,
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Assigns (or returns the assignment of) attempt `name`; kept on disk before it is
    /// returned.
    pub fn assign(&self, name: &str, wanted: u32) -> Result<Vec<u32>, GpuError> {
        let mut state = self.lock();
        let before = state.clone();
        let gpus = state.assign(name, wanted)?;
        if *state != before {
            if let Err(e) = self.save(&state) {
                *state = before;
                return Err(e);
            }
        }
        Ok(gpus)
    }

    /// Frees what attempt `name` holds.
    pub fn release(&self, name: &str) {
        let mut state = self.lock();
        if state.release(name) {
            if let Err(e) = self.save(&state) {
                tracing::warn!(error = %e, attempt = name, "could not record freed GPUs");
            }
        }
    }

    /// Frees what attempts no longer on the node hold (see [`GpuAssignments::retain`]).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        let mut state = self.lock();
        let gone = state.retain(live);
        if !gone.is_empty() {
            tracing::info!(attempts = ?gone, "freed the GPUs of attempts no longer on this node");
            if let Err(e) = self.save(&state) {
                tracing::warn!(error = %e, "could not record freed GPUs");
            }
        }
    }

    /// What each attempt holds now.
    pub fn snapshot(&self) -> GpuAssignments {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn attempts_get_disjoint_lowest_free_gpus() {
        let mut a = GpuAssignments::new(4);
        assert_eq!(a.assign("a", 2), Ok(vec![0, 1]));
        assert_eq!(a.assign("b", 1), Ok(vec![2]));
        assert_eq!(a.assign("a", 2), Ok(vec![0, 1]), "asking again: the same");
        assert_eq!(
            a.assign("c", 2),
            Err(GpuError::NotEnough {
                wanted: 2,
                free: 1,
                total: 4
            })
        );
        assert!(a.release("a"));
        assert_eq!(a.assign("c", 2), Ok(vec![0, 1]));
        assert_eq!(a.assign("d", 1), Ok(vec![3]));
        assert_eq!(a.assign("e", 0), Ok(vec![]));
        assert!(a.free().is_empty());
        assert_eq!(visible_devices(&[0, 3]), "0,3");
        let err = GpuAssignments::new(0).assign("x", 1).expect_err("no GPU");
        assert!(err.to_string().contains("resources.gpu"), "{err}");
    }

    #[test]
    fn concurrent_attempts_never_share_a_gpu() {
        let alloc = Arc::new(GpuAllocator::in_memory(8));
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let alloc = alloc.clone();
                std::thread::spawn(move || alloc.assign(&format!("attempt-{i}"), 1 + i % 2))
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let mut seen: Vec<u32> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        let granted = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), granted, "a GPU was given twice: {results:?}");
        assert!((7..=8).contains(&granted), "{results:?}");
        assert!(
            results.iter().any(Result::is_err),
            "16 attempts cannot fit 8 GPUs"
        );
    }

    #[test]
    fn assignments_survive_a_restart_and_stale_ones_are_freed() {
        let dir = tempfile::tempdir().expect("dir");
        let first = GpuAllocator::load(dir.path(), 4).expect("load");
        assert_eq!(first.assign("kept", 2), Ok(vec![0, 1]));
        assert_eq!(first.assign("stale", 1), Ok(vec![2]));
        drop(first);

        let second = GpuAllocator::load(dir.path(), 4).expect("reload");
        assert_eq!(
            second.assign("kept", 2),
            Ok(vec![0, 1]),
            "re-adopted: same GPUs"
        );
        assert_eq!(
            second.assign("new", 1),
            Ok(vec![3]),
            "held ones are not given out"
        );
        second.retain(|name| name != "stale");
        assert_eq!(second.assign("newer", 1), Ok(vec![2]));
        second.release("kept");
        drop(second);

        let third = GpuAllocator::load(dir.path(), 2).expect("fewer GPUs now");
        assert_eq!(
            third.snapshot().held.keys().count(),
            0,
            "{:?}",
            third.snapshot()
        );
        std::fs::write(GpuAllocator::state_file(dir.path()), b"{not json").expect("write");
        let err = GpuAllocator::load(dir.path(), 4).expect_err("corrupt");
        assert!(err.to_string().contains("gpus.json"), "{err}");
    }
}
