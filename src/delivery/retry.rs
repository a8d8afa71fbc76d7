//! When to try a failed email again.

use std::time::Duration;

/// Exponential backoff with jitter: attempt *n* waits about `base · 2ⁿ⁻¹`, capped at `max`, and
/// a random half of that is shaved off. The jitter matters when SMTP comes back after an outage:
/// without it every email queued during the outage would be retried in the same instant.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The ceiling for the wait after the `attempts`-th failed attempt (1-based), before jitter.
    pub fn ceiling(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// The wait after the `attempts`-th failed attempt: between half the ceiling and the ceiling.
    pub fn delay(&self, attempts: i64) -> Duration {
        let ceiling = self.ceiling(attempts);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        let jitter = getrandom::u64().unwrap_or(0) % spread.saturating_add(1);
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (1..=9).map(|n| backoff.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff.ceiling(1_000), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_between_half_the_ceiling_and_the_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(1000), Duration::from_millis(60_000));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(2000) && *d <= Duration::from_millis(4000))
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "delays should vary, got {distinct:?}");
    }
}
