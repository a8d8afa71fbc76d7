//! How many emails wait to be sent, for the backlog cap (`worker.max_backlog`).

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering::SeqCst},
};

/// An estimate that never undercounts: the sweeper's last COUNT plus the signups accepted since,
/// so the cap needs no COUNT per request. A signup counts itself after its commit; the recount
/// forgets only the increments it saw before it started counting, whose rows the COUNT therefore
/// includes. (An increment that lands during the COUNT stays, and may count its row twice until
/// the next recount: erring high is the safe side for a cap.)
#[derive(Debug, Default)]
pub(super) struct Backlog {
    counted: AtomicU64,
    accepted_since: AtomicU64,
}

impl Backlog {
    /// A committed signup whose email now waits.
    pub(super) fn accepted(&self) {
        self.accepted_since.fetch_add(1, SeqCst);
    }

    pub(super) fn estimate(&self) -> u64 {
        self.counted.load(SeqCst) + self.accepted_since.load(SeqCst)
    }

    /// Replaces the estimate with a fresh `count` of the waiting rows.
    pub(super) async fn recount<E, F>(&self, count: F) -> Result<(), E>
    where
        F: Future<Output = Result<u64, E>>,
    {
        let seen = self.accepted_since.load(SeqCst);
        let counted = count.await?;
        self.counted.store(counted, SeqCst);
        self.accepted_since.fetch_sub(seen, SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signup_accepted_while_counting_is_not_lost() {
        let backlog = Backlog::default();
        backlog.accepted();
        backlog.accepted();
        assert_eq!(backlog.estimate(), 2);

        // The COUNT sees the two rows; a third signup commits and counts itself meanwhile.
        let counting = async {
            backlog.accepted();
            Ok::<u64, ()>(2)
        };
        backlog.recount(counting).await.unwrap();
        assert!(backlog.estimate() >= 3, "estimate {}", backlog.estimate());

        // The next recount sees all three rows.
        backlog.recount(async { Ok::<u64, ()>(3) }).await.unwrap();
        assert_eq!(backlog.estimate(), 3);
    }
}
