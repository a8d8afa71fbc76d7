//! When to try a failed email again, and when to stop.
//!
//! An email is worth sending for as long as the link it carries would be valid: `token.ttl_hours`
//! counted from the signup. Until then a failure that may heal (SMTP down, a timeout, a 4xx, a
//! 5xx about the server or our account) is tried again with capped exponential backoff and
//! jitter, so an outage of hours ends in delivery with no operator. Only when the next attempt
//! would come after that moment does the email become `failed`. At the defaults (1 s doubling up
//! to 15 min, 24 h links) that is about 105 to 200 attempts, the last within 15 minutes of the
//! link's end; once SMTP is back, each waiting email goes out within one cap. For comparison,
//! Sidekiq and River make 25 attempts over about three weeks, and Postfix keeps a message for
//! five days: they pace for outages of days, confirmd for the life of a link.
//!
//! The rule is a pure function of durations ([`RetryPolicy::decide`]), so scaling every duration
//! by the same factor scales the whole schedule by it: a test with a compressed schedule shows
//! what the defaults do over a day.

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

/// The retry schedule of one email: backoff between attempts, and the horizon past which a
/// retry is pointless because the link in the email would have expired.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// How long the link stays valid, counted from the signup: `token.ttl_hours`.
    pub link_lifetime: Duration,
    /// `worker.max_attempts`, when the operator wants fewer attempts than the link's lifetime
    /// allows; `None` (the default, 0 in config) retries until the link would have expired.
    pub max_attempts: Option<u32>,
}

/// What to do after a failed attempt that may heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this long.
    RetryIn(Duration),
    /// The next attempt would come after the link expired.
    LinkExpires,
    /// `worker.max_attempts` attempts were made.
    OutOfAttempts,
}

impl RetryPolicy {
    /// After the `attempts`-th failed attempt, `age` after the signup: when to try again, with a
    /// fresh jittered delay.
    pub fn after_failure(&self, attempts: i64, age: Duration) -> AfterFailure {
        self.decide(attempts, age, self.backoff.delay(attempts))
    }

    /// The rule itself, with the delay given: retry unless the attempts are used up or the retry
    /// at `age + delay` would come after the link expired.
    pub fn decide(&self, attempts: i64, age: Duration, delay: Duration) -> AfterFailure {
        if self
            .max_attempts
            .is_some_and(|max| attempts >= i64::from(max))
        {
            return AfterFailure::OutOfAttempts;
        }
        if age.saturating_add(delay) > self.link_lifetime {
            return AfterFailure::LinkExpires;
        }
        AfterFailure::RetryIn(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

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

    /// Which end of the jitter a simulated schedule takes at every step.
    #[derive(Clone, Copy)]
    enum Jitter {
        Shortest,
        Longest,
    }

    /// An email that fails at every attempt, each attempt taking no time: the age of each
    /// attempt (the first at signup), and how the schedule ended.
    fn schedule(policy: &RetryPolicy, jitter: Jitter) -> (Vec<Duration>, AfterFailure) {
        let mut attempts_at = vec![Duration::ZERO];
        loop {
            let attempts = attempts_at.len() as i64;
            let ceiling = policy.backoff.ceiling(attempts);
            let delay = match jitter {
                Jitter::Shortest => ceiling / 2,
                Jitter::Longest => ceiling,
            };
            let age = *attempts_at.last().unwrap();
            match policy.decide(attempts, age, delay) {
                AfterFailure::RetryIn(delay) => attempts_at.push(age + delay),
                end => return (attempts_at, end),
            }
        }
    }

    fn default_policy() -> (RetryPolicy, Duration) {
        let settings = Settings::defaults().validated().unwrap();
        let worker = &settings.worker;
        let policy = RetryPolicy {
            backoff: Backoff::new(worker.retry_base(), worker.retry_max()),
            link_lifetime: settings.token.ttl(),
            max_attempts: worker.max_attempts(),
        };
        (policy, worker.retry_max())
    }

    #[test]
    fn at_the_defaults_an_email_is_retried_for_as_long_as_its_link_lives() {
        let (policy, cap) = default_policy();
        assert_eq!(policy.max_attempts, None, "no attempt limit by default");
        let lifetime = policy.link_lifetime;
        assert_eq!(lifetime, Duration::from_secs(24 * 3600));
        for jitter in [Jitter::Shortest, Jitter::Longest] {
            let (attempts_at, end) = schedule(&policy, jitter);
            let last = *attempts_at.last().unwrap();
            assert_eq!(end, AfterFailure::LinkExpires);
            // The retries span the link's life: the last attempt comes before the link expires,
            // less than one cap before it, so an outage of up to `lifetime - cap` is survived.
            assert!(last <= lifetime, "last attempt at {last:?}");
            assert!(last >= lifetime - cap, "gave up at {last:?}, too early");
            // No gap longer than the cap: an email waits at most one cap once SMTP is back.
            assert!(attempts_at.windows(2).all(|w| w[1] - w[0] <= cap));
            println!(
                "{} attempts, the last {:?} after the signup",
                attempts_at.len(),
                last
            );
            // Far more attempts than the old limit of 8, yet not a flood: ~105 to ~200.
            assert!(
                (100..=210).contains(&attempts_at.len()),
                "{} attempts",
                attempts_at.len()
            );
        }
    }

    #[test]
    fn a_compressed_schedule_is_the_default_one_scaled_down() {
        let (policy, _) = default_policy();
        // What the process test runs: every duration divided by the same factor.
        let factor = 1_000;
        let compressed = RetryPolicy {
            backoff: Backoff::new(policy.backoff.base / factor, policy.backoff.max / factor),
            link_lifetime: policy.link_lifetime / factor,
            max_attempts: policy.max_attempts,
        };
        for jitter in [Jitter::Shortest, Jitter::Longest] {
            let (full, full_end) = schedule(&policy, jitter);
            let (small, small_end) = schedule(&compressed, jitter);
            assert_eq!(full_end, small_end);
            assert_eq!(full.len(), small.len(), "same number of attempts");
            let scaled: Vec<Duration> = full.iter().map(|at| *at / factor).collect();
            assert_eq!(scaled, small, "same attempts, at a thousandth of the time");
        }
    }

    #[test]
    fn an_attempt_limit_stops_retries_before_the_link_expires() {
        let (mut policy, _) = default_policy();
        policy.max_attempts = Some(3);
        let (attempts_at, end) = schedule(&policy, Jitter::Longest);
        assert_eq!(end, AfterFailure::OutOfAttempts);
        assert_eq!(attempts_at.len(), 3);
    }
}
