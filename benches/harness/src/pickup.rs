//! Enqueue-to-pick-up latency: when the producer's enqueue call returned (the job is durable),
//! and when a worker started on the job.
//!
//! Both moments are nanoseconds on one monotonic clock, kept per job in atomics, so producer and
//! workers note them without a lock. A worker can start on a job before its producer's enqueue
//! call has returned (the commit comes first, the return after): such a job counts as picked up
//! in zero time, and [`Latencies::early`] says how many did.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use confirmd::mail::{SendError, Transport};
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use lettre::address::Envelope;
use serde::Serialize;

/// The two moments of every job of one run. 0 means "not yet".
pub struct PickupClock {
    base: Instant,
    enqueued: Box<[AtomicU64]>,
    picked: Box<[AtomicU64]>,
    picked_count: AtomicUsize,
}

impl PickupClock {
    pub fn new(jobs: usize) -> Arc<PickupClock> {
        let zeros = || (0..jobs).map(|_| AtomicU64::new(0)).collect();
        Arc::new(PickupClock {
            base: Instant::now(),
            enqueued: zeros(),
            picked: zeros(),
            picked_count: AtomicUsize::new(0),
        })
    }

    fn now(&self) -> u64 {
        // +1 so that no moment is 0, "not yet".
        self.base.elapsed().as_nanos() as u64 + 1
    }

    /// The producer's enqueue call for job `i` has returned.
    pub fn enqueued(&self, i: usize) {
        self.enqueued[i].store(self.now(), Ordering::Relaxed);
    }

    /// A worker starts on job `i`. Only the first pick-up counts (a retry is not a pick-up).
    pub fn picked(&self, i: usize) {
        let Some(slot) = self.picked.get(i) else {
            return;
        };
        if slot
            .compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.picked_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn picked_count(&self) -> usize {
        self.picked_count.load(Ordering::Relaxed)
    }

    /// Waits until workers have started on `jobs` jobs. Cheaper to ask than the database, so a
    /// run asks this first and the database only for the last jobs' outcomes: polling a table
    /// that is being written takes CPU from the queue under test.
    pub async fn wait_picked(&self, jobs: usize, deadline: Duration) -> anyhow::Result<()> {
        let what = format!("{jobs} jobs picked up");
        crate::wait_until(deadline, &what, || async {
            Ok(self.picked_count() >= jobs)
        })
        .await
    }

    /// The latencies of every job that was both enqueued and picked up.
    pub fn latencies(&self) -> Latencies {
        let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits are valid");
        let mut early = 0;
        for (enqueued, picked) in self.enqueued.iter().zip(self.picked.iter()) {
            let (enqueued, picked) = (
                enqueued.load(Ordering::Relaxed),
                picked.load(Ordering::Relaxed),
            );
            if enqueued == 0 || picked == 0 {
                continue;
            }
            if picked < enqueued {
                early += 1;
            }
            let micros = picked.saturating_sub(enqueued) / 1_000;
            histogram
                .record(micros)
                .expect("an auto-resizing histogram");
        }
        let ms = |micros: u64| Duration::from_micros(micros).as_secs_f64() * 1e3;
        Latencies {
            jobs: histogram.len() as usize,
            early,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Enqueue-to-pick-up latency of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    /// Jobs measured.
    pub jobs: usize,
    /// Jobs a worker started on before the enqueue call returned (counted as 0 ms).
    pub early: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The transport confirmd's workers send through in these benchmarks. Its `send` is called when
/// a worker has claimed the email and built it, so it notes the pick-up (the job is found from
/// the recipient, see [`crate::job_of`]), then sends nothing (`then: None`, a job that does
/// nothing) or passes the email on to the real transport.
pub struct Observed {
    pub clock: Arc<PickupClock>,
    pub then: Option<Arc<dyn Transport>>,
}

impl Transport for Observed {
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), SendError>> {
        if let Some(i) = envelope
            .to()
            .first()
            .and_then(|to| crate::job_of(to.as_ref()))
        {
            self.clock.picked(i);
        }
        match &self.then {
            Some(transport) => transport.send(envelope, message),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn ping(&self) -> BoxFuture<'_, bool> {
        match &self.then {
            Some(transport) => transport.ping(),
            None => Box::pin(async { true }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_picked_up_before_its_enqueue_returned_counts_as_zero_and_early() {
        let clock = PickupClock::new(3);
        clock.enqueued(0);
        std::thread::sleep(Duration::from_millis(2));
        clock.picked(0);
        clock.picked(1);
        clock.enqueued(1);
        clock.picked(0); // a second pick-up of job 0 does not count
        let latencies = clock.latencies();
        assert_eq!(clock.picked_count(), 2);
        assert_eq!((latencies.jobs, latencies.early), (2, 1));
        assert!(latencies.max_ms >= 2.0, "{latencies:?}");
    }
}
