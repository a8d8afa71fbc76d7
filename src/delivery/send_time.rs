//! How long sending an email takes lately, so that a row that sends nothing takes as long.
//!
//! A signup to an address that was sent an email moments ago sends nothing (the resend interval),
//! but its requester must not learn that: in sync mode the answer would come back without the
//! SMTP round trip, visibly faster, and in background mode its row would be `sent` at once. So a
//! suppressed row waits about as long as a real send has taken recently, then goes through the
//! same states as one that sent. The estimate is a moving average of recent sends (build and
//! SMTP together), which follows a mail server that slows down without keeping its outliers.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Until the first send of this process is measured.
const FIRST_GUESS: Duration = Duration::from_millis(50);

/// The weight of the newest send in the average: 1/8.
const SHIFT: u32 = 3;

/// A moving average of send times, in microseconds; 0 until the first send.
#[derive(Debug, Default)]
pub(super) struct SendTime(AtomicU64);

impl SendTime {
    /// A send that reached the SMTP server's answer took `took`.
    pub(super) fn observe(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // A lost update under a race costs one sample of an average: no lock for that.
        let old = self.0.load(Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            old - (old >> SHIFT) + (sample >> SHIFT)
        };
        self.0.store(new, Relaxed);
    }

    /// How long a send takes lately, at most `cap` (the SMTP timeout).
    pub(super) fn estimate(&self, cap: Duration) -> Duration {
        match self.0.load(Relaxed) {
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
        let time = SendTime::default();
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
}
