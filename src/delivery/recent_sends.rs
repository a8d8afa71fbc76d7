//! How recent sends went, so that a row that sends nothing takes as long and ends the same way.
//!
//! A signup to an address that was sent an email moments ago sends nothing (the resend interval),
//! but its requester must not learn that: in sync mode the answer would come back without the
//! SMTP round trip, visibly faster, and in background mode its row would be `sent` at once. So a
//! suppressed row waits about as long as a real send has taken recently, then goes through the
//! same states as one that sent. The estimate is a moving average of recent sends (build and
//! SMTP together), which follows a mail server that slows down without keeping its outliers.
//!
//! During an outage a real send fails (sync mode answers 502 or 504, and the email is retried),
//! so a row that sends nothing fails the same way, with the same error, and after as long as that
//! failed send took (a refused connection fails at once, a silent server at the SMTP timeout),
//! while the last real send failed for a reason that may heal.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::mail::SendError;

/// Until the first send of this process is measured.
const FIRST_GUESS: Duration = Duration::from_millis(50);

/// The weight of the newest send in the average: 1/8.
const SHIFT: u32 = 3;

/// How recent sends went: a moving average of their times, and the outage they met, if any.
#[derive(Debug, Default)]
pub(super) struct RecentSends {
    /// Microseconds; 0 until the first send.
    average: AtomicU64,
    /// The error of the last real send, if it failed for a reason that may heal, and how long
    /// that send took to fail.
    outage: Mutex<Option<(SendError, Duration)>>,
}

impl RecentSends {
    /// How a real send ended: an error worth retrying means the mail server is (still) out;
    /// a success or a refusal of one address means it answers.
    pub(super) fn record(&self, result: &Result<(), SendError>, took: Duration) {
        let outage = match result {
            Err(error) if error.is_retryable() => Some((error.clone(), took)),
            _ => None,
        };
        *self.outage.lock().expect("no panic while holding it") = outage;
    }

    /// What a send would meet now, and how long it would take to meet it (at most `cap`, the
    /// SMTP timeout): the outage's error after as long as its send took, or success after as
    /// long as sends take lately.
    pub(super) fn mimic(&self, cap: Duration) -> (Duration, Result<(), SendError>) {
        match self
            .outage
            .lock()
            .expect("no panic while holding it")
            .clone()
        {
            Some((error, took)) => (took.min(cap), Err(error)),
            None => (self.estimate(cap), Ok(())),
        }
    }

    /// A send that reached the SMTP server's answer took `took`.
    pub(super) fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // A lost update under a race costs one sample of an average: no lock for that.
        let old = self.average.load(Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            old - (old >> SHIFT) + (sample >> SHIFT)
        };
        self.average.store(new, Relaxed);
    }

    /// How long a send takes lately, at most `cap` (the SMTP timeout).
    pub(super) fn estimate(&self, cap: Duration) -> Duration {
        match self.average.load(Relaxed) {
            0 => FIRST_GUESS,
            micros => Duration::from_micros(micros),
        }
        .min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_recent_sends() {
        let time = RecentSends::default();
        let cap = Duration::from_secs(5);
        assert_eq!(time.estimate(cap), FIRST_GUESS);
        time.observe(Duration::from_millis(200));
        assert_eq!(time.estimate(cap), Duration::from_millis(200));
        for _ in 0..64 {
            time.observe(Duration::from_millis(20));
        }
        let settled = time.estimate(cap).as_millis();
        assert!((19..=22).contains(&settled), "{settled} ms");
        time.observe(Duration::from_secs(60));
        assert_eq!(time.estimate(cap), cap);
    }

    #[test]
    fn an_outage_lasts_until_a_send_gets_an_answer() {
        let time = RecentSends::default();
        let (cap, fast) = (Duration::from_secs(5), Duration::from_millis(1));
        assert!(time.mimic(cap).1.is_ok());
        time.record(
            &Err(SendError::Transient("connection refused".into())),
            fast,
        );
        assert!(matches!(time.mimic(cap), (d, Err(SendError::Transient(_))) if d == fast));
        time.record(&Err(SendError::RecipientRefused("550".into())), fast);
        assert!(time.mimic(cap).1.is_ok(), "the server answered");
        time.record(&Err(SendError::Timeout(cap)), cap);
        time.record(&Ok(()), fast);
        assert!(time.mimic(cap).1.is_ok());
    }

    /// A silent server fails a send only at the SMTP timeout: a row that sends nothing meanwhile
    /// must take as long, or its quick 504 would tell the requester that it sent nothing.
    #[test]
    fn during_an_outage_nothing_takes_as_long_as_the_failed_send() {
        let time = RecentSends::default();
        let cap = Duration::from_secs(5);
        time.observe(Duration::from_millis(40));
        time.record(&Err(SendError::Timeout(cap)), cap);
        let (wait, outcome) = time.mimic(cap);
        assert_eq!(wait, cap);
        assert!(matches!(outcome, Err(SendError::Timeout(_))));
    }
}
