//! Duration estimates: how long one attempt of a job is expected to run, and where that
//! figure comes from.
//!
//! In order of preference ([`resolve`]):
//! 1. the job's own `spec.expectedDurationSeconds` ([`EstimateSource::Expected`]);
//! 2. the recent successful attempts of its JobDefinition: the median of the last
//!    [`HISTORY_WINDOW`] durations ([`EstimateSource::History`], see [`History`]);
//! 3. its timeout, an upper bound the attempt cannot outlive ([`EstimateSource::Timeout`]).
//!
//! A job with none of these gets [`DEFAULT_SECONDS`] ([`EstimateSource::Default`]) where
//! the scheduler needs a figure.

use super::model::Seconds;

/// Durations of this many recent successful attempts make a definition's history.
pub const HISTORY_WINDOW: usize = 20;

/// The estimate of a job that has no expected duration, history or timeout.
pub const DEFAULT_SECONDS: Seconds = 1800;

/// Where an estimate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EstimateSource {
    /// The job's `spec.expectedDurationSeconds`.
    Expected,
    /// The median of its JobDefinition's recent successful attempts.
    History,
    /// Its `timeoutSeconds` (an upper bound).
    Timeout,
    /// Nothing is known: [`DEFAULT_SECONDS`].
    Default,
}

impl EstimateSource {
    /// The name used in status fields (`Expected`, `History`, `Timeout`, `Default`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expected => "Expected",
            Self::History => "History",
            Self::Timeout => "Timeout",
            Self::Default => "Default",
        }
    }
}

/// An expected duration of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Estimate {
    /// Seconds one attempt is expected to run.
    pub seconds: Seconds,
    /// Where the figure comes from.
    pub source: EstimateSource,
}

impl Estimate {
    /// The estimate a job without any information gets.
    pub const DEFAULT: Estimate = Estimate {
        seconds: DEFAULT_SECONDS,
        source: EstimateSource::Default,
    };
}

/// A robust summary of a JobDefinition's recent successful attempt durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Attempts summarised (at most [`HISTORY_WINDOW`]).
    pub count: u32,
    /// Median duration, seconds (the lower median for an even count).
    pub median: Seconds,
    /// 90th percentile (nearest rank), seconds.
    pub p90: Seconds,
}

impl History {
    /// Summarises durations (any order); `None` when there are none. Only the last
    /// [`HISTORY_WINDOW`] of `recent_last` count, so a definition whose jobs changed
    /// follows the change.
    pub fn of(recent_last: &[Seconds]) -> Option<History> {
        let start = recent_last.len().saturating_sub(HISTORY_WINDOW);
        let mut v: Vec<Seconds> = recent_last.get(start..)?.to_vec();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = |p: usize| {
            // Nearest rank: ceil(p/100 × n), 1-based.
            let r = (p * v.len()).div_ceil(100).max(1);
            v[(r - 1).min(v.len() - 1)]
        };
        Some(History {
            count: u32::try_from(v.len()).unwrap_or(u32::MAX),
            median: v[(v.len() - 1) / 2],
            p90: rank(90),
        })
    }
}

/// The estimate of a job from, in order: its expected duration, its definition's
/// history, its timeout. `None` when none is known.
pub fn resolve(
    expected: Option<Seconds>,
    history: Option<&History>,
    timeout: Option<Seconds>,
) -> Option<Estimate> {
    if let Some(s) = expected {
        return Some(Estimate {
            seconds: s,
            source: EstimateSource::Expected,
        });
    }
    if let Some(h) = history {
        return Some(Estimate {
            seconds: h.median,
            source: EstimateSource::History,
        });
    }
    timeout.map(|s| Estimate {
        seconds: s,
        source: EstimateSource::Timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_beats_history_beats_timeout() {
        let h = History::of(&[100, 300, 200]);
        assert_eq!(
            resolve(Some(50), h.as_ref(), Some(900)).map(|e| e.source),
            Some(EstimateSource::Expected)
        );
        assert_eq!(
            resolve(None, h.as_ref(), Some(900)),
            Some(Estimate {
                seconds: 200,
                source: EstimateSource::History
            })
        );
        assert_eq!(
            resolve(None, None, Some(900)),
            Some(Estimate {
                seconds: 900,
                source: EstimateSource::Timeout
            })
        );
        assert_eq!(resolve(None, None, None), None);
    }

    #[test]
    fn history_is_robust_to_an_outlier_and_keeps_the_recent_window() {
        // One attempt that hung for a day does not move the median.
        let h = History::of(&[60, 62, 58, 61, 86_400]);
        assert_eq!(h.map(|h| h.median), Some(61));
        assert_eq!(h.map(|h| h.p90), Some(86_400));
        // Older attempts than the window are forgotten.
        let mut v = vec![10_000; 30];
        v.extend(std::iter::repeat_n(100, HISTORY_WINDOW));
        let h = History::of(&v);
        assert_eq!(h.map(|h| (h.count, h.median, h.p90)), Some((20, 100, 100)));
        assert_eq!(History::of(&[]), None);
        // p90 by nearest rank over 10 values is the 9th.
        let h = History::of(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(h.map(|h| (h.median, h.p90)), Some((5, 9)));
    }
}
