//! Conversions between Kubernetes `Time` and the scheduler's Unix seconds.

use crate::api::common::Time;
use crate::scheduler::Seconds;

/// Unix seconds of a timestamp (0 before the epoch).
pub fn seconds(t: &Time) -> Seconds {
    u64::try_from(t.0.as_second()).unwrap_or(0)
}

/// A timestamp at Unix second `s` (clamped to jiff's range).
pub fn time(s: Seconds) -> Time {
    let s = i64::try_from(s).unwrap_or(i64::MAX);
    Time(jiff::Timestamp::from_second(s).unwrap_or(jiff::Timestamp::MAX))
}

/// The current Unix time in seconds.
pub fn now() -> Seconds {
    u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(seconds(&time(1_700_000_000)), 1_700_000_000);
        assert!(seconds(&time(u64::MAX)) > 0);
    }
}
