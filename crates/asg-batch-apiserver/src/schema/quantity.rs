//! Kubernetes resource quantities (`resource.Quantity`) for the CEL quantity
//! library: exact values and comparison, parsed as `resource.ParseQuantity` does.
//! The operator's `asg_batch::api::quantity::parse_nanos` is the same parser; a test
//! there checks that both agree.

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
        parse_nanos(s).map(|nanos| Quantity { nanos })
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

/// Parses a quantity (sign, decimal and binary suffixes `n u m k M G T P E Ki Mi Gi Ti Pi
/// Ei`, exponents `e3`/`E-2`) into an exact count of nano-units (value × 10^9); finer
/// fractions round up (away from zero), as Kubernetes does. `None` if it is not a
/// quantity or out of range.
fn parse_nanos(s: &str) -> Option<i128> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(num_end);
    if number.is_empty() || number == "." {
        return None;
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((_, f)) if f.contains('.') => return None,
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    // value = digits * 10^exp10 * 2^exp2
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let exp = other
                .strip_prefix(['e', 'E'])
                .filter(|e| {
                    let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                })?
                .parse::<i32>()
                .ok()?;
            (exp, 0)
        }
    };
    let mut mantissa: i128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    let frac_len = i32::try_from(frac_part.len()).ok()?;
    let mut value = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    let pow10 = exp10.checked_sub(frac_len)?.checked_add(9)?;
    if pow10 >= 0 {
        if value != 0 {
            value = value.checked_mul(10i128.checked_pow(pow10.unsigned_abs())?)?;
        }
    } else {
        value = match 10i128.checked_pow(pow10.unsigned_abs()) {
            // Rounds up: the value is not negative here.
            Some(divisor) => value / divisor + i128::from(value % divisor != 0),
            None => i128::from(value != 0),
        };
    }
    Some(if negative { -value } else { value })
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
