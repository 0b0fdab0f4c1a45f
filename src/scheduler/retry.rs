//! Retry decision after an attempt ends, following AWS Batch's `retryStrategy`:
//!
//! - `attempts` (1–10) counts every start of the job, including the first; a job whose
//!   strategy is absent has one attempt.
//! - `evaluateOnExit` holds at most 5 rules, checked in order; the first rule all of
//!   whose given conditions match decides: `action` RETRY or EXIT (case-insensitive).
//!   A rule may give any of `onExitCode` (digits, optional trailing `*`), `onReason` and
//!   `onStatusReason` (letters, digits, `.`, `:`, white space, optional trailing `*`).
//!   A pattern without `*` must equal the value; with a trailing `*` the value must
//!   start with what precedes it. A condition on a value the attempt does not have (no
//!   exit code after a lost node, say) does not match.
//! - No rule matches: retry while attempts remain.
//! - RETRY with no attempts left: the job fails.
//! - Lost nodes and timeouts end attempts with the reasons [`REASON_NODE_LOST`] and
//!   [`REASON_TIMEOUT`], which rules can match like any other reason. A lost node is an
//!   ordinary failure (retried while attempts remain). A timed-out attempt is, as in AWS
//!   Batch, not retried by default ("if a job is terminated for exceeding the timeout,
//!   it isn't retried"); a rule that matches it with RETRY opts in to retrying it.
//! - Optionally, an exponential backoff delays the retry: the `n`-th retry waits
//!   `min(max, base × 2^(n−1))` seconds before the job is runnable again.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::model::Seconds;

/// Reason of an attempt whose node was lost (the protocol's one spelling).
pub use crate::api::protocol::reason::NODE_LOST as REASON_NODE_LOST;
/// Reason of an attempt that ran past `timeoutSeconds`.
pub use crate::api::protocol::reason::TIMEOUT as REASON_TIMEOUT;

/// Most attempts AWS Batch allows.
pub const MAX_ATTEMPTS: u32 = 10;
/// Most `evaluateOnExit` rules AWS Batch allows.
pub const MAX_RULES: usize = 5;
/// Longest pattern AWS Batch allows.
pub const MAX_PATTERN_LEN: usize = 512;

/// `RETRY` or `EXIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Retry while attempts remain.
    Retry,
    /// Fail now.
    Exit,
}

impl FromStr for Action {
    type Err = RetryError;

    /// Parses `RETRY` / `EXIT` in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("retry") {
            Ok(Action::Retry)
        } else if s.eq_ignore_ascii_case("exit") {
            Ok(Action::Exit)
        } else {
            Err(RetryError::UnknownAction(s.to_owned()))
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Retry => "RETRY",
            Action::Exit => "EXIT",
        })
    }
}

/// One `evaluateOnExit` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluateOnExit {
    /// `onExitCode`: digits with an optional trailing `*`.
    pub on_exit_code: Option<String>,
    /// `onReason`: glob with an optional trailing `*`.
    pub on_reason: Option<String>,
    /// `onStatusReason`: glob with an optional trailing `*`.
    pub on_status_reason: Option<String>,
    /// `action`.
    pub action: Action,
}

/// A job's `retryStrategy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryStrategy {
    /// `attempts`: every start counts, the first included.
    pub attempts: u32,
    /// `evaluateOnExit` rules, in order.
    pub evaluate_on_exit: Vec<EvaluateOnExit>,
}

impl Default for RetryStrategy {
    /// One attempt, no rules: what a job without `retryStrategy` gets.
    fn default() -> Self {
        RetryStrategy {
            attempts: 1,
            evaluate_on_exit: Vec::new(),
        }
    }
}

/// Optional exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base_seconds: Seconds,
    /// Cap on any delay.
    pub max_seconds: Seconds,
}

impl Backoff {
    /// Delay before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Seconds {
        let shift = retry.saturating_sub(1).min(63);
        let factor = 1u64.checked_shl(shift).unwrap_or(u64::MAX);
        self.base_seconds
            .saturating_mul(factor)
            .min(self.max_seconds)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptOutcome<'a> {
    /// Container exit code, when the container exited.
    pub exit_code: Option<i32>,
    /// Short machine reason (`NodeLost`, `Timeout`, `OutOfMemory`, ...).
    pub reason: Option<&'a str>,
    /// Human status reason.
    pub status_reason: Option<&'a str>,
}

/// Why a job fails instead of retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCause {
    /// Rule number `rule` (0-based) matched with action EXIT.
    ExitRule {
        /// Index in `evaluateOnExit`.
        rule: usize,
    },
    /// The attempt timed out and no rule asked to retry it.
    TimedOut,
    /// Every attempt has been used.
    AttemptsExhausted {
        /// `attempts`.
        attempts: u32,
    },
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Back to Runnable, not before `runnable_at`.
    Retry {
        /// Earliest time the job may be placed again (`now` without backoff).
        runnable_at: Seconds,
        /// The rule that matched with RETRY, if one did.
        rule: Option<usize>,
    },
    /// The job fails.
    Fail(FailCause),
}

/// A malformed `retryStrategy`, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RetryError {
    /// `attempts` out of 1–10.
    #[error("retryStrategy.attempts must be between 1 and {MAX_ATTEMPTS}, got {0}")]
    AttemptsOutOfRange(u32),
    /// More than 5 rules.
    #[error("retryStrategy.evaluateOnExit holds at most {MAX_RULES} rules, got {0}")]
    TooManyRules(usize),
    /// Bad `onExitCode`.
    #[error(
        "retryStrategy.evaluateOnExit[{index}].onExitCode {pattern:?} must be digits with an optional trailing *"
    )]
    BadExitCodePattern {
        /// Rule index.
        index: usize,
        /// The pattern.
        pattern: String,
    },
    /// Bad `onReason` / `onStatusReason`.
    #[error(
        "retryStrategy.evaluateOnExit[{index}].{field} {pattern:?} may hold only letters, digits, '.', ':', white space and a trailing *, at most {MAX_PATTERN_LEN} characters"
    )]
    BadReasonPattern {
        /// Rule index.
        index: usize,
        /// `onReason` or `onStatusReason`.
        field: &'static str,
        /// The pattern.
        pattern: String,
    },
    /// `action` neither RETRY nor EXIT.
    #[error("evaluateOnExit action must be RETRY or EXIT, got {0:?}")]
    UnknownAction(String),
}

/// Checks a strategy against AWS Batch's limits.
pub fn validate(strategy: &RetryStrategy) -> Result<(), RetryError> {
    if !(1..=MAX_ATTEMPTS).contains(&strategy.attempts) {
        return Err(RetryError::AttemptsOutOfRange(strategy.attempts));
    }
    if strategy.evaluate_on_exit.len() > MAX_RULES {
        return Err(RetryError::TooManyRules(strategy.evaluate_on_exit.len()));
    }
    for (index, rule) in strategy.evaluate_on_exit.iter().enumerate() {
        if let Some(p) = &rule.on_exit_code
            && !valid_pattern(p, |c| c.is_ascii_digit())
        {
            return Err(RetryError::BadExitCodePattern {
                index,
                pattern: p.clone(),
            });
        }
        let reason_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':') || c.is_whitespace();
        for (field, value) in [
            ("onReason", &rule.on_reason),
            ("onStatusReason", &rule.on_status_reason),
        ] {
            if let Some(p) = value
                && !valid_pattern(p, reason_char)
            {
                return Err(RetryError::BadReasonPattern {
                    index,
                    field,
                    pattern: p.clone(),
                });
            }
        }
    }
    Ok(())
}

fn valid_pattern(p: &str, allowed: impl Fn(char) -> bool) -> bool {
    let body = p.strip_suffix('*').unwrap_or(p);
    p.len() <= MAX_PATTERN_LEN && body.chars().all(allowed)
}

/// Glob match with an optional trailing `*` (the only wildcard AWS Batch has).
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn rule_matches(rule: &EvaluateOnExit, outcome: &AttemptOutcome<'_>) -> bool {
    let exit_ok = rule.on_exit_code.as_deref().is_none_or(|p| {
        outcome
            .exit_code
            .is_some_and(|code| glob_matches(p, &code.to_string()))
    });
    let reason_ok = rule
        .on_reason
        .as_deref()
        .is_none_or(|p| outcome.reason.is_some_and(|r| glob_matches(p, r)));
    let status_ok = rule
        .on_status_reason
        .as_deref()
        .is_none_or(|p| outcome.status_reason.is_some_and(|r| glob_matches(p, r)));
    exit_ok && reason_ok && status_ok
}

/// Decides what happens after a failed attempt.
///
/// `attempts_started` counts every start of the job so far, the one that just ended
/// included (so it is 1 after the first attempt). The caller calls this only for an
/// attempt that failed (non-zero exit, lost node, timeout, ...).
pub fn decide(
    strategy: &RetryStrategy,
    attempts_started: u32,
    outcome: &AttemptOutcome<'_>,
    backoff: Option<&Backoff>,
    now: Seconds,
) -> RetryDecision {
    let attempts = strategy.attempts.max(1);
    let matched = strategy
        .evaluate_on_exit
        .iter()
        .enumerate()
        .find(|(_, r)| rule_matches(r, outcome));
    if let Some((rule, r)) = matched
        && r.action == Action::Exit
    {
        return RetryDecision::Fail(FailCause::ExitRule { rule });
    }
    if matched.is_none() && outcome.reason == Some(REASON_TIMEOUT) {
        return RetryDecision::Fail(FailCause::TimedOut);
    }
    if attempts_started >= attempts {
        return RetryDecision::Fail(FailCause::AttemptsExhausted { attempts });
    }
    let delay = backoff.map_or(0, |b| b.delay(attempts_started));
    RetryDecision::Retry {
        runnable_at: now.saturating_add(delay),
        rule: matched.map(|(i, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        code: Option<&str>,
        reason: Option<&str>,
        status: Option<&str>,
        action: &str,
    ) -> EvaluateOnExit {
        EvaluateOnExit {
            on_exit_code: code.map(str::to_owned),
            on_reason: reason.map(str::to_owned),
            on_status_reason: status.map(str::to_owned),
            action: action.parse().expect("test action"),
        }
    }

    fn strategy(attempts: u32, rules: Vec<EvaluateOnExit>) -> RetryStrategy {
        RetryStrategy {
            attempts,
            evaluate_on_exit: rules,
        }
    }

    fn exit(code: i32) -> AttemptOutcome<'static> {
        AttemptOutcome {
            exit_code: Some(code),
            ..AttemptOutcome::default()
        }
    }

    fn reason(r: &'static str) -> AttemptOutcome<'static> {
        AttemptOutcome {
            reason: Some(r),
            ..AttemptOutcome::default()
        }
    }

    const RETRY_NOW: RetryDecision = RetryDecision::Retry {
        runnable_at: 100,
        rule: None,
    };

    #[test]
    fn without_rules_retry_while_attempts_remain() {
        let s = strategy(3, vec![]);
        assert_eq!(decide(&s, 1, &exit(1), None, 100), RETRY_NOW);
        assert_eq!(decide(&s, 2, &exit(1), None, 100), RETRY_NOW);
        assert_eq!(
            decide(&s, 3, &exit(1), None, 100),
            RetryDecision::Fail(FailCause::AttemptsExhausted { attempts: 3 })
        );
    }

    #[test]
    fn no_strategy_means_one_attempt() {
        assert_eq!(
            decide(&RetryStrategy::default(), 1, &exit(1), None, 0),
            RetryDecision::Fail(FailCause::AttemptsExhausted { attempts: 1 })
        );
    }

    #[test]
    fn first_matching_rule_decides() {
        let s = strategy(
            5,
            vec![
                rule(Some("137"), None, None, "EXIT"),
                rule(Some("1*"), None, None, "RETRY"),
                rule(Some("*"), None, None, "EXIT"),
            ],
        );
        assert_eq!(
            decide(&s, 1, &exit(137), None, 100),
            RetryDecision::Fail(FailCause::ExitRule { rule: 0 })
        );
        assert_eq!(
            decide(&s, 1, &exit(13), None, 100),
            RetryDecision::Retry {
                runnable_at: 100,
                rule: Some(1)
            }
        );
        assert_eq!(
            decide(&s, 1, &exit(2), None, 100),
            RetryDecision::Fail(FailCause::ExitRule { rule: 2 })
        );
    }

    #[test]
    fn every_given_condition_of_a_rule_must_match() {
        let s = strategy(3, vec![rule(Some("1"), Some("Timeout"), None, "EXIT")]);
        // Exit code matches, reason does not: the rule does not apply, default retry.
        assert_eq!(decide(&s, 1, &exit(1), None, 100), RETRY_NOW);
        let both = AttemptOutcome {
            exit_code: Some(1),
            reason: Some("Timeout"),
            status_reason: None,
        };
        assert_eq!(
            decide(&s, 1, &both, None, 100),
            RetryDecision::Fail(FailCause::ExitRule { rule: 0 })
        );
    }

    #[test]
    fn node_lost_and_timeout_are_matchable_reasons() {
        let s = strategy(
            3,
            vec![
                rule(None, Some(REASON_NODE_LOST), None, "retry"),
                rule(None, Some(REASON_TIMEOUT), None, "exit"),
            ],
        );
        assert_eq!(
            decide(&s, 1, &reason(REASON_NODE_LOST), None, 100),
            RetryDecision::Retry {
                runnable_at: 100,
                rule: Some(0)
            }
        );
        assert_eq!(
            decide(&s, 1, &reason(REASON_TIMEOUT), None, 100),
            RetryDecision::Fail(FailCause::ExitRule { rule: 1 })
        );
    }

    #[test]
    fn timeout_is_not_retried_unless_a_rule_says_so() {
        let none = strategy(3, vec![]);
        assert_eq!(
            decide(&none, 1, &reason(REASON_TIMEOUT), None, 100),
            RetryDecision::Fail(FailCause::TimedOut)
        );
        let opt_in = strategy(3, vec![rule(None, Some("Time*"), None, "RETRY")]);
        assert_eq!(
            decide(&opt_in, 1, &reason(REASON_TIMEOUT), None, 100),
            RetryDecision::Retry {
                runnable_at: 100,
                rule: Some(0)
            }
        );
        // A lost node, by contrast, is retried by default.
        assert_eq!(
            decide(&none, 1, &reason(REASON_NODE_LOST), None, 100),
            RETRY_NOW
        );
    }

    #[test]
    fn exit_code_condition_does_not_match_a_missing_exit_code() {
        let s = strategy(3, vec![rule(Some("*"), None, None, "EXIT")]);
        assert_eq!(
            decide(&s, 1, &reason(REASON_NODE_LOST), None, 100),
            RETRY_NOW
        );
    }

    #[test]
    fn status_reason_glob_with_trailing_star() {
        let s = strategy(3, vec![rule(None, None, Some("Host EC2*"), "EXIT")]);
        let lost = AttemptOutcome {
            exit_code: None,
            reason: None,
            status_reason: Some("Host EC2 (instance i-0abc) terminated."),
        };
        assert_eq!(
            decide(&s, 1, &lost, None, 100),
            RetryDecision::Fail(FailCause::ExitRule { rule: 0 })
        );
    }

    #[test]
    fn retry_rule_cannot_exceed_attempts() {
        let s = strategy(2, vec![rule(Some("*"), None, None, "RETRY")]);
        assert_eq!(
            decide(&s, 2, &exit(1), None, 100),
            RetryDecision::Fail(FailCause::AttemptsExhausted { attempts: 2 })
        );
    }

    #[test]
    fn glob_is_exact_without_star_and_prefix_with_it() {
        assert!(glob_matches("137", "137"));
        assert!(!glob_matches("13", "137"));
        assert!(glob_matches("13*", "137"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("Timeout", "timeout"));
    }

    #[test]
    fn action_is_case_insensitive() {
        assert_eq!("Retry".parse::<Action>(), Ok(Action::Retry));
        assert_eq!("exit".parse::<Action>(), Ok(Action::Exit));
        assert_eq!(
            "stop".parse::<Action>(),
            Err(RetryError::UnknownAction("stop".into()))
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            base_seconds: 10,
            max_seconds: 60,
        };
        assert_eq!(b.delay(1), 10);
        assert_eq!(b.delay(2), 20);
        assert_eq!(b.delay(3), 40);
        assert_eq!(b.delay(4), 60);
        assert_eq!(b.delay(200), 60);
        let s = strategy(5, vec![]);
        assert_eq!(
            decide(&s, 2, &exit(1), Some(&b), 1000),
            RetryDecision::Retry {
                runnable_at: 1020,
                rule: None
            }
        );
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            validate(&strategy(0, vec![])),
            Err(RetryError::AttemptsOutOfRange(0))
        );
        assert_eq!(
            validate(&strategy(11, vec![])),
            Err(RetryError::AttemptsOutOfRange(11))
        );
        let six = vec![rule(Some("1"), None, None, "EXIT"); 6];
        assert_eq!(
            validate(&strategy(3, six)),
            Err(RetryError::TooManyRules(6))
        );
        let bad = vec![rule(Some("1*2"), None, None, "EXIT")];
        let err = validate(&strategy(3, bad)).map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("retryStrategy.evaluateOnExit[0].onExitCode \"1*2\" must be digits with an optional trailing *".to_string())
        );
        let bad = vec![rule(None, Some("Out-of-memory"), None, "EXIT")];
        assert!(matches!(
            validate(&strategy(3, bad)),
            Err(RetryError::BadReasonPattern {
                field: "onReason",
                ..
            })
        ));
        let ok = vec![rule(
            Some("137"),
            Some("OutOfMemory*"),
            Some("Essential container: exited"),
            "EXIT",
        )];
        assert_eq!(validate(&strategy(10, ok)), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn never_retries_past_attempts_and_exit_rules_always_fail(
            attempts in 1u32..=10,
            started in 1u32..=12,
            code in proptest::option::of(0i32..300),
            rules in proptest::collection::vec(
                (proptest::option::of("[0-9]{0,2}\\*?"), proptest::bool::ANY), 0..=5),
        ) {
            let s = strategy(
                attempts,
                rules
                    .iter()
                    .map(|(p, retry)| rule(p.as_deref(), None, None, if *retry { "RETRY" } else { "EXIT" }))
                    .collect(),
            );
            let outcome = AttemptOutcome { exit_code: code, ..AttemptOutcome::default() };
            let d = decide(&s, started, &outcome, None, 0);
            if let RetryDecision::Retry { .. } = d {
                proptest::prop_assert!(started < attempts);
            }
            let first = s.evaluate_on_exit.iter().position(|r| rule_matches(r, &outcome));
            if let Some(i) = first
                && s.evaluate_on_exit[i].action == Action::Exit
            {
                proptest::prop_assert_eq!(d, RetryDecision::Fail(FailCause::ExitRule { rule: i }));
            }
        }
    }
}
