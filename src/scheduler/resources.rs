//! Integer resource vectors: cpu in millicores, memory in bytes, whole GPUs.

use std::fmt;

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// An amount of compute resources. All arithmetic is integer and saturating, so a
/// malformed snapshot (allocated above capacity, say) can never panic the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Resources {
    /// CPU in millicores (1000 = one vCPU).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
}

/// The name of one resource dimension, used in human reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    /// CPU (millicores).
    Cpu,
    /// Memory (bytes).
    Memory,
    /// GPUs (count).
    Gpu,
}

impl Resources {
    /// No resources at all.
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        gpus: 0,
    };

    /// Builds a resource vector.
    pub const fn new(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
            gpus,
        }
    }

    /// True when every dimension of `self` is at most the same dimension of `other`.
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.gpus <= other.gpus
    }

    /// True when every dimension is zero.
    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }

    /// Dimension-wise saturating addition.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }

    /// Dimension-wise saturating subtraction (never below zero).
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// The first dimension in which `self` exceeds `limit`, if any (cpu, memory, gpu order).
    pub fn first_excess(&self, limit: &Resources) -> Option<Dimension> {
        if self.cpu_millis > limit.cpu_millis {
            Some(Dimension::Cpu)
        } else if self.memory_bytes > limit.memory_bytes {
            Some(Dimension::Memory)
        } else if self.gpus > limit.gpus {
            Some(Dimension::Gpu)
        } else {
            None
        }
    }

    /// The amount in one dimension, widened to u64.
    pub fn get(&self, dim: Dimension) -> u64 {
        match dim {
            Dimension::Cpu => self.cpu_millis,
            Dimension::Memory => self.memory_bytes,
            Dimension::Gpu => u64::from(self.gpus),
        }
    }

    /// Size of `self` relative to `shape`, in millionths, summed over the dimensions the
    /// shape has (a dimension with zero capacity is ignored). Used to sort items for
    /// first-fit-decreasing and to score best-fit; integer, so fully deterministic.
    pub fn relative_size(&self, shape: &Resources) -> u128 {
        const SCALE: u128 = 1_000_000;
        let part = |v: u64, cap: u64| -> u128 {
            if cap == 0 {
                0
            } else {
                u128::from(v) * SCALE / u128::from(cap)
            }
        };
        part(self.cpu_millis, shape.cpu_millis)
            + part(self.memory_bytes, shape.memory_bytes)
            + part(u64::from(self.gpus), u64::from(shape.gpus))
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dimension::Cpu => "cpu",
            Dimension::Memory => "memory",
            Dimension::Gpu => "gpu",
        })
    }
}

/// Formats an amount of one dimension the way Kubernetes quantities read:
/// `1500m` / `2` cpu, `16Gi` / `512Mi` memory, `1` gpu.
pub fn format_amount(dim: Dimension, value: u64) -> String {
    match dim {
        Dimension::Cpu => {
            if value % 1000 == 0 {
                format!("{}", value / 1000)
            } else {
                format!("{value}m")
            }
        }
        Dimension::Memory => format_bytes(value),
        Dimension::Gpu => format!("{value}"),
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly
/// (falling back to one decimal of Gi for large odd values).
pub fn format_bytes(bytes: u64) -> String {
    let exact = crate::api::quantity::format_bytes(bytes);
    if bytes < GIB || exact.ends_with('i') {
        return exact;
    }
    // Not exact: one decimal is enough for a human reason.
    let tenths = (u128::from(bytes) * 10 + u128::from(GIB) / 2) / u128::from(GIB);
    format!("{}.{}Gi", tenths / 10, tenths % 10)
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={}, memory={}",
            format_amount(Dimension::Cpu, self.cpu_millis),
            format_bytes(self.memory_bytes)
        )?;
        if self.gpus > 0 {
            write!(f, ", gpu={}", self.gpus)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_requires_every_dimension() {
        let cap = Resources::new(4000, 16 * GIB, 1);
        assert!(Resources::new(4000, 16 * GIB, 1).fits_in(&cap));
        assert!(!Resources::new(4001, GIB, 0).fits_in(&cap));
        assert!(!Resources::new(1, 16 * GIB + 1, 0).fits_in(&cap));
        assert!(!Resources::new(1, 1, 2).fits_in(&cap));
    }

    #[test]
    fn arithmetic_saturates() {
        let a = Resources::new(1, 1, 1);
        let b = Resources::new(5, 5, 5);
        assert_eq!(a.saturating_sub(&b), Resources::ZERO);
        let max = Resources::new(u64::MAX, u64::MAX, u32::MAX);
        assert_eq!(max.saturating_add(&a), max);
    }

    #[test]
    fn first_excess_names_the_dimension() {
        let cap = Resources::new(4000, 16 * GIB, 0);
        assert_eq!(
            Resources::new(1000, 64 * GIB, 0).first_excess(&cap),
            Some(Dimension::Memory)
        );
        assert_eq!(
            Resources::new(1000, GIB, 1).first_excess(&cap),
            Some(Dimension::Gpu)
        );
        assert_eq!(Resources::new(1000, GIB, 0).first_excess(&cap), None);
    }

    #[test]
    fn formats_like_kubernetes_quantities() {
        assert_eq!(format_bytes(64 * GIB), "64Gi");
        assert_eq!(format_bytes(512 * MIB), "512Mi");
        assert_eq!(format_bytes(GIB + GIB / 2 + 1), "1.5Gi");
        assert_eq!(format_amount(Dimension::Cpu, 2000), "2");
        assert_eq!(format_amount(Dimension::Cpu, 1500), "1500m");
    }

    #[test]
    fn relative_size_ignores_absent_dimensions() {
        let shape = Resources::new(4000, 16 * GIB, 0);
        assert_eq!(
            Resources::new(2000, 8 * GIB, 0).relative_size(&shape),
            1_000_000
        );
        assert_eq!(Resources::new(0, 0, 3).relative_size(&shape), 0);
    }
}
