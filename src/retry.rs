//! The one retry policy of the deploy engine and the registry client: a failure is transient
//! (trying again may help) or fatal (the same thing would happen again); transient failures are
//! tried again up to a number of attempts, waiting with exponential backoff and jitter.
//!
//! Callers decide which of their failures are transient and do the waiting (a thread sleeps in
//! deploy, a task in the registry client); this module only says whether and how long. It does
//! no I/O.

use std::time::Duration;

/// Largest doubling of the first wait: the seventh and later retries wait 64 × `backoff`.
const MAX_DOUBLINGS: u32 = 6;

/// How many attempts an operation gets and how long to wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
}

impl RetryPolicy {
    pub fn new(attempts: u32, backoff: Duration) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            backoff,
        }
    }

    /// True when a failure of attempt number `attempt` (1-based) is tried again: it is
    /// transient and attempts are left.
    pub fn retries(&self, transient: bool, attempt: u32) -> bool {
        transient && attempt < self.attempts
    }

    /// The wait after the failed attempt number `attempt` (1-based): `backoff × 2^(attempt-1)`
    /// (at most 64 × `backoff`), give or take 25 % so that hosts or transfers failing together
    /// do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
        let exp = self.backoff.saturating_mul(1 << doublings);
        exp.mul_f64(1.0 + jitter())
    }
}

/// A fraction in [-0.25, 0.25), from the clock's nanoseconds: spread, not secrecy, is needed.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 500) as f64 / 1000.0 - 0.25
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_a_quarter_and_stop_doubling_at_64_times() {
        let policy = RetryPolicy::new(10, Duration::from_millis(400));
        for (attempt, base_ms) in [(1, 400u64), (2, 800), (3, 1600), (7, 25_600), (9, 25_600)] {
            let delay = policy.delay(attempt).as_secs_f64() * 1000.0;
            let base = base_ms as f64;
            assert!(
                delay >= base * 0.75 && delay < base * 1.25,
                "attempt {attempt}: {delay} ms"
            );
        }
    }

    #[test]
    fn only_transient_failures_with_attempts_left_are_retried() {
        let policy = RetryPolicy::new(3, Duration::ZERO);
        assert!(policy.retries(true, 1));
        assert!(policy.retries(true, 2));
        assert!(!policy.retries(true, 3));
        assert!(!policy.retries(false, 1));
        assert!(!RetryPolicy::new(0, Duration::ZERO).retries(true, 1));
    }
}
