//! Kubernetes resource quantities for cpu (millicores) and memory (bytes).
//!
//! Accepts the Kubernetes serialisation (`"500m"`, `"2"`, `"1.5"`, `"2Gi"`, `"512Mi"`,
//! `"1e3"`, plain integers) and rejects anything else with an error that names the value.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// The schema pattern of a non-negative quantity (controller-gen's pattern without a sign).
pub const QUANTITY_PATTERN: &str =
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$";

/// Why a quantity string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {value:?}: {reason}")]
pub struct QuantityError {
    /// The text that was given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl QuantityError {
    fn new(value: &str, reason: impl Into<String>) -> Self {
        Self {
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// A resource quantity as written by the user (`"2"`, `"500m"`, `"4Gi"`), kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Quantity(pub String);

impl Quantity {
    /// Wraps text without checking it; use [`Quantity::millicores`] / [`Quantity::bytes`] to parse.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The quantity in thousandths (cpu millicores), rounded up like Kubernetes does.
    pub fn millicores(&self) -> Result<u64, QuantityError> {
        parse_scaled(&self.0, 3)
    }
    /// The quantity as a whole number (memory bytes), rounded up.
    pub fn bytes(&self) -> Result<u64, QuantityError> {
        parse_scaled(&self.0, 0)
    }
    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"500m\", \"2\" or \"4Gi\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity: an integer or a string such as \"500m\", \"2\", \"4Gi\".",
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": true,
        })
    }
}

/// Parses a quantity as `resource.ParseQuantity` does (sign, decimal and binary suffixes
/// `n u m k M G T P E Ki Mi Gi Ti Pi Ei`, exponents `e3`/`E-2`) into an exact count of
/// nano-units (value × 10^9); finer fractions round up (away from zero), as Kubernetes does.
/// Resource accounting uses it; the API server crate's CEL quantity library has the same
/// parser (`asg_batch_apiserver::schema::Quantity::parse`), and a test here checks that
/// both agree.
pub fn parse_nanos(s: &str) -> Result<i128, QuantityError> {
    let err = |reason: &str| QuantityError::new(s, reason);
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (negative, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(num_end);
    if number.is_empty() || number == "." {
        return Err(err("no number"));
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((_, f)) if f.contains('.') => return Err(err("more than one decimal point")),
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
                })
                .and_then(|e| e.parse::<i32>().ok());
            match exp {
                Some(e) => (e, 0),
                None => return Err(err(&format!("unknown suffix {other:?}"))),
            }
        }
    };
    let too_large = || err("number too large");
    let mut mantissa: i128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| too_large())?;
    let mut value = mantissa
        .checked_mul(1i128.checked_shl(exp2).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    let pow10 = exp10
        .checked_sub(frac_len)
        .and_then(|e| e.checked_add(9))
        .ok_or_else(too_large)?;
    if pow10 >= 0 {
        if value != 0 {
            let factor = 10i128
                .checked_pow(pow10.unsigned_abs())
                .ok_or_else(too_large)?;
            value = value.checked_mul(factor).ok_or_else(too_large)?;
        }
    } else {
        value = match 10i128.checked_pow(pow10.unsigned_abs()) {
            Some(divisor) => value.div_ceil_pos(divisor),
            None => i128::from(value != 0),
        };
    }
    Ok(if negative { -value } else { value })
}

/// Division rounding up, for non-negative dividends.
trait DivCeilPos {
    fn div_ceil_pos(self, d: i128) -> i128;
}

impl DivCeilPos for i128 {
    fn div_ceil_pos(self, d: i128) -> i128 {
        let q = self / d;
        if self % d != 0 { q + 1 } else { q }
    }
}

/// Parses `s` and returns its value times 10^`scale` (0..=9), rounded up to an integer.
fn parse_scaled(s: &str, scale: u32) -> Result<u64, QuantityError> {
    let nanos = parse_nanos(s)?;
    if nanos < 0 {
        return Err(QuantityError::new(s, "must not be negative"));
    }
    let value = nanos.div_ceil_pos(10i128.pow(9 - scale));
    u64::try_from(value).map_err(|_| QuantityError::new(s, "number too large"))
}

/// Formats millicores the way Kubernetes prints cpu: whole cores when exact, else `NNNm`.
pub fn format_millicores(m: u64) -> String {
    if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

/// Formats bytes with the largest binary suffix that represents them exactly.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if b == 0 {
        return "0".into();
    }
    for (unit, shift) in UNITS {
        let size = 1u64 << shift;
        if b % size == 0 {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(s: &str) -> Result<u64, QuantityError> {
        Quantity::from(s).millicores()
    }
    fn mem(s: &str) -> Result<u64, QuantityError> {
        Quantity::from(s).bytes()
    }

    /// The API server crate parses quantities on its own (it does not depend on this
    /// crate): both parsers agree on every form, valid or not.
    #[test]
    fn the_api_servers_parser_agrees() {
        let forms = [
            "0",
            "1",
            "-1",
            "+2",
            "500m",
            "0.5",
            "1.5Gi",
            "2Gi",
            "1k",
            "1e3",
            "1E3",
            "1e-3",
            "1E+2",
            "1n",
            "0.1n",
            "0.5n",
            "-0.1n",
            "123456789.123456789",
            "1Ei",
            "8Ei",
            "1e40",
            "99999999999999999999999999999999999999999E",
            "",
            "abc",
            "1Gb",
            "1.2.3",
            "1e",
            ".",
            "-",
            "+",
            "1Xi",
            "m",
            ".5",
            "5.",
            "1e+",
            "1ee3",
            "1 ",
            " 1",
            "1.5.",
            "Ki",
        ];
        for s in forms {
            assert_eq!(
                parse_nanos(s).ok(),
                asg_batch_apiserver::schema::Quantity::parse(s).map(|q| q.nanos),
                "{s:?}"
            );
        }
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(cpu("1").unwrap(), 1000);
        assert_eq!(cpu("500m").unwrap(), 500);
        assert_eq!(cpu("1.5").unwrap(), 1500);
        assert_eq!(cpu("0.1").unwrap(), 100);
        assert_eq!(cpu(".5").unwrap(), 500);
        assert_eq!(cpu("2.").unwrap(), 2000);
        assert_eq!(
            cpu("0.0001").unwrap(),
            1,
            "sub-millicore rounds up like Kubernetes"
        );
        assert_eq!(cpu("1e3").unwrap(), 1_000_000);
        assert_eq!(cpu("+4").unwrap(), 4000);
        assert_eq!(cpu("1k").unwrap(), 1_000_000);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(mem("128").unwrap(), 128);
        assert_eq!(mem("1Ki").unwrap(), 1024);
        assert_eq!(mem("512Mi").unwrap(), 512 << 20);
        assert_eq!(mem("2Gi").unwrap(), 2 << 30);
        assert_eq!(mem("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(mem("1G").unwrap(), 1_000_000_000);
        assert_eq!(mem("1M").unwrap(), 1_000_000);
        assert_eq!(mem("1500m").unwrap(), 2, "fractional bytes round up");
        assert_eq!(mem("8E").unwrap(), 8_000_000_000_000_000_000);
    }

    #[test]
    fn bad_input_names_the_value() {
        for bad in [
            "", "-1", "2Gx", "1.5.3", "abc", "Gi", ".", "1e", "1ee3", "9Ei9",
        ] {
            let err = mem(bad).expect_err(bad);
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(mem("-1").unwrap_err().reason, "must not be negative");
        assert_eq!(mem("2Gx").unwrap_err().reason, "unknown suffix \"Gx\"");
        assert_eq!(
            mem("1.5.3").unwrap_err().reason,
            "more than one decimal point"
        );
        assert_eq!(mem("").unwrap_err().reason, "empty");
    }

    #[test]
    fn nano_and_micro_suffixes_and_exact_values() {
        assert_eq!(cpu("250u").unwrap(), 1, "0.25m rounds up to 1m");
        assert_eq!(cpu("1000000n").unwrap(), 1);
        assert_eq!(parse_nanos("-1").unwrap(), -1_000_000_000);
        assert_eq!(parse_nanos("1Gi").unwrap(), parse_nanos("1024Mi").unwrap());
        assert_eq!(parse_nanos("0.1n").unwrap(), 1, "finer than nano rounds up");
        assert_eq!(parse_nanos("1E-3").unwrap(), 1_000_000);
        assert!(parse_nanos("1e+").is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(mem("16Ei").is_err());
        assert!(cpu("99999999999999999999").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for m in [0u64, 1, 250, 1000, 1500, 64_000] {
            assert_eq!(cpu(&format_millicores(m)).unwrap(), m);
        }
        assert_eq!(format_millicores(2000), "2");
        assert_eq!(format_millicores(2500), "2500m");
        for b in [0u64, 1, 1023, 1024, 3 << 29, 16 << 30, 1_000_000_000] {
            assert_eq!(mem(&format_bytes(b)).unwrap(), b);
        }
        assert_eq!(format_bytes(16 << 30), "16Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
    }

    #[test]
    fn deserialises_numbers_and_strings() {
        let q: Quantity = serde_json::from_str("4").unwrap();
        assert_eq!(q.millicores().unwrap(), 4000);
        let q: Quantity = serde_yaml::from_str("\"2Gi\"").unwrap();
        assert_eq!(q.bytes().unwrap(), 2 << 30);
        let q: Quantity = serde_yaml::from_str("0.5").unwrap();
        assert_eq!(q.millicores().unwrap(), 500);
    }

    #[test]
    fn pattern_agrees_with_parser_on_samples() {
        let re = regex_lite(QUANTITY_PATTERN);
        for good in ["1", "500m", "1.5", "2Gi", "1e3", ".5"] {
            assert!(re(good), "{good}");
            assert!(mem(good).is_ok(), "{good}");
        }
        for bad in ["", "-1", "2Gx", "1.5.3"] {
            assert!(!re(bad), "{bad}");
            assert!(mem(bad).is_err(), "{bad}");
        }
    }

    /// The schema pattern checked with the same regex engine family the tests use elsewhere.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let validator =
            jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": pattern}))
                .expect("pattern compiles");
        move |s| validator.is_valid(&serde_json::json!(s))
    }
}
