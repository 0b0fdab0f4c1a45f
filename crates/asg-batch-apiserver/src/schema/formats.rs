//! String formats kube-apiserver checks for CRD fields (a subset of its
//! `strfmt` registry). Unknown formats pass, as in Kubernetes.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Whether `s` is valid for `format`.
pub(crate) fn valid(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => {
            jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%:z", s).is_ok()
                || s.parse::<jiff::Timestamp>().is_ok()
        }
        "date" => jiff::civil::Date::strptime("%Y-%m-%d", s).is_ok() && s.len() == 10,
        "byte" => is_base64(s),
        "uuid" => is_uuid(s, None),
        "uuid3" => is_uuid(s, Some('3')),
        "uuid4" => is_uuid(s, Some('4')),
        "uuid5" => is_uuid(s, Some('5')),
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => is_cidr(s),
        "hostname" => is_hostname(s),
        "email" => is_email(s),
        "mac" => is_mac(s),
        _ => true,
    }
}

fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return false;
    }
    b[..b.len() - pad]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn is_uuid(s: &str, version: Option<char>) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if parts.len() != 5
        || parts
            .iter()
            .zip(lens)
            .any(|(p, l)| p.len() != l || !p.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return false;
    }
    match version {
        Some(v) => parts[2].starts_with(v),
        None => true,
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    (ip.parse::<Ipv4Addr>().is_ok() && bits <= 32)
        || (ip.parse::<Ipv6Addr>().is_ok() && bits <= 128)
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => !local.is_empty() && is_hostname(domain),
        None => false,
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    (parts.len() == 6 || parts.len() == 8)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn formats() {
        assert!(valid("date-time", "2024-01-02T03:04:05Z"));
        assert!(valid("date-time", "2024-01-02T03:04:05.123+02:00"));
        assert!(!valid("date-time", "yesterday"));
        assert!(valid("date", "2024-01-02"));
        assert!(!valid("date", "2024-13-02"));
        assert!(valid("byte", "aGVsbG8="));
        assert!(!valid("byte", "a"));
        assert!(valid("uuid", "123e4567-e89b-12d3-a456-426614174000"));
        assert!(!valid("uuid", "123"));
        assert!(valid("ipv4", "10.0.0.1"));
        assert!(!valid("ipv4", "10.0.0.256"));
        assert!(valid("cidr", "10.0.0.0/8"));
        assert!(!valid("cidr", "10.0.0.0/33"));
        assert!(valid("hostname", "a.example.com"));
        assert!(!valid("hostname", "-a"));
        assert!(valid("int-or-string", "anything"));
        assert!(valid("made-up", "anything"));
    }
}
