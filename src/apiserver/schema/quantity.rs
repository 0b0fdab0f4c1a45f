//! Kubernetes resource quantities (`resource.Quantity`) for the CEL quantity
//! library: exact values and comparison over the project's one quantity parser,
//! [`crate::api::quantity::parse_nanos`].

/// A parsed quantity, held exactly as a count of nano-units (10^-9), the
/// smallest scale Kubernetes keeps (smaller fractions round up, as Kubernetes does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    /// The value times 10^9.
    pub nanos: i128,
}

const NANO: i128 = 1_000_000_000;

impl Quantity {
    /// Parses a quantity string like `500m`, `2Gi`, `1.5`, `1e3`; `None` if it
    /// is not a valid quantity (or out of the representable range).
    pub fn parse(s: &str) -> Option<Quantity> {
        crate::api::quantity::parse_nanos(s)
            .ok()
            .map(|nanos| Quantity { nanos })
    }

    /// The value rounded to an integer, if it is one within i64 range.
    pub fn as_integer(&self) -> Option<i64> {
        if self.nanos % NANO != 0 {
            return None;
        }
        i64::try_from(self.nanos / NANO).ok()
    }

    /// The value as a float (approximate).
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// -1, 0 or 1.
    pub fn sign(&self) -> i64 {
        self.nanos.signum() as i64
    }

    /// Renders the value in canonical-ish form (decimal, with `m`/`n` for fractions).
    pub fn render(&self) -> String {
        if self.nanos % NANO == 0 {
            format!("{}", self.nanos / NANO)
        } else if self.nanos % 1_000_000 == 0 {
            format!("{}m", self.nanos / 1_000_000)
        } else if self.nanos % 1_000 == 0 {
            format!("{}u", self.nanos / 1_000)
        } else {
            format!("{}n", self.nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_forms() {
        let q = |s: &str| Quantity::parse(s).map(|q| q.nanos);
        assert_eq!(q("1"), Some(NANO));
        assert_eq!(q("500m"), Some(NANO / 2));
        assert_eq!(q("0.5"), Some(NANO / 2));
        assert_eq!(q("2Gi"), Some(2 * (1 << 30) * NANO));
        assert_eq!(q("1k"), Some(1000 * NANO));
        assert_eq!(q("1e3"), Some(1000 * NANO));
        assert_eq!(q("1E3"), Some(1000 * NANO));
        assert_eq!(q("-1"), Some(-NANO));
        assert_eq!(q("1.5Gi"), Some(3 * (1 << 29) * NANO));
        assert_eq!(q("1n"), Some(1));
        assert_eq!(q("0.1n"), Some(1));
        assert_eq!(q(""), None);
        assert_eq!(q("abc"), None);
        assert_eq!(q("1Gb"), None);
        assert_eq!(q("1.2.3"), None);
        assert_eq!(q("1e"), None);
        assert_eq!(q("."), None);
        assert_eq!(q("1Xi"), None);
        assert!(Quantity::parse("1Gi") > Quantity::parse("1000Mi"));
        assert_eq!(Quantity::parse("1Gi"), Quantity::parse("1024Mi"));
        assert_eq!(
            Quantity::parse("99999999999999999999999999999999999999999E"),
            None
        );
    }

    #[test]
    fn integer_and_render() {
        assert_eq!(
            Quantity::parse("2k").and_then(|q| q.as_integer()),
            Some(2000)
        );
        assert_eq!(Quantity::parse("500m").and_then(|q| q.as_integer()), None);
        assert_eq!(
            Quantity::parse("500m").map(|q| q.render()),
            Some("500m".into())
        );
        assert_eq!(Quantity::parse("-3").map(|q| q.sign()), Some(-1));
    }
}
