//! The emails this process has in hand: being sent, or sent with an outcome the database has not
//! taken yet. The sweeper must not take these back when their lease runs out.
//!
//! A send ends with a write: `sent`, or back to the queue, or `failed`. If the database refuses
//! that write (disk full, the lock held elsewhere), the outcome is known but not on disk, and the
//! row stays `sending` under its sender's lease. Were the outcome dropped, the sweeper would take
//! the row back once the lease ran out and give it to another sender, and an email the SMTP
//! server had already accepted would go out again at every lease for as long as the fault lasts.
//!
//! So the outcome is kept here, and the sweeper writes what is kept at each sweep. Rows whose
//! outcome is still kept, and rows being sent right now, are left out of its lease reclaim: a
//! lease that runs out is meant to bring back the email of a sender that died, and these senders
//! are alive (their sends are bounded by `smtp.timeout_ms`). An outcome moves from "being sent"
//! to "kept" before it leaves "being sent", and the sweeper reads "being sent" before "kept", so
//! it sees every row in hand in at least one of the two.
//!
//! Kept outcomes live in memory: if the process dies before the database heals, the row comes
//! back after the restart and is sent once more, as after any crash mid-send.

use std::{collections::HashSet, sync::Mutex as SyncMutex, time::Duration};

use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::store::{Claim, ClaimedEmail, OutboxId, Store, StoreError};

/// What a send came to, as the store records it.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Sent {
        at: i64,
        link_expires_at: i64,
    },
    /// Due again this long after the write (a kept outcome's delay counts from when the
    /// database took it).
    Retry {
        retry_in: Duration,
        error: String,
    },
    Failed {
        error: String,
    },
}

impl Outcome {
    /// Writes this outcome of `claim`.
    pub(super) async fn write(&self, store: &Store, claim: Claim) -> Result<(), StoreError> {
        match self {
            Outcome::Sent {
                at,
                link_expires_at,
            } => store.mark_sent(claim, *at, *link_expires_at).await,
            Outcome::Retry { retry_in, error } => store.mark_retry(claim, *retry_in, error).await,
            Outcome::Failed { error } => store.mark_failed(claim, error).await,
        }
    }

    /// Writes this outcome of `claim` and claims the row due next under `lease`: a sent
    /// email's in the same statement (see [`Store::mark_sent_and_claim_next`]), any other's
    /// after it. An error is the outcome's; a claim that fails after the outcome was written
    /// claims nothing, and the sweeper offers the rows again.
    pub(super) async fn write_and_claim_next(
        &self,
        store: &Store,
        claim: Claim,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        match self {
            Outcome::Sent {
                at,
                link_expires_at,
            } => {
                store
                    .mark_sent_and_claim_next(claim, *at, *link_expires_at, lease)
                    .await
            }
            _ => {
                self.write(store, claim).await?;
                Ok(store.claim_next_after_outcome(lease).await)
            }
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct InHand {
    /// Rows claimed by a sender of this process that has not finished with them.
    sending: SyncMutex<HashSet<OutboxId>>,
    /// Outcomes the database refused, oldest first.
    kept: Mutex<Vec<(Claim, Outcome)>>,
}

/// A row being sent; dropping it (the send recorded or kept, or its task panicked) lets the
/// sweeper take the row back again once its lease runs out.
pub(super) struct Sending<'a> {
    in_hand: &'a InHand,
    id: OutboxId,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.in_hand
            .sending
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
    }
}

impl InHand {
    pub(super) fn sending(&self, id: OutboxId) -> Sending<'_> {
        self.sending.lock().expect("not poisoned").insert(id);
        Sending { in_hand: self, id }
    }

    /// Keeps an outcome whose write failed with `error`, to write it at the next sweep.
    pub(super) async fn keep(&self, claim: Claim, outcome: Outcome, error: &StoreError) {
        warn!(outbox_id = %claim.id, %error, ?outcome, "cannot record the outcome of a send; keeping it until the database takes writes");
        self.kept.lock().await.push((claim, outcome));
    }

    /// The rows the sweeper must not take back: being sent, or with an outcome that is still
    /// kept after trying to write every kept outcome once more.
    pub(super) async fn write_kept(&self, store: &Store) -> Vec<OutboxId> {
        let mut held: Vec<OutboxId> = self
            .sending
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect();
        let mut kept = self.kept.lock().await;
        let mut left = Vec::new();
        for (claim, outcome) in kept.drain(..) {
            // After one failure the database still refuses writes: keep the rest for later
            // without waiting on each (a held lock costs a busy timeout per write).
            if !left.is_empty() {
                left.push((claim, outcome));
                continue;
            }
            match outcome.write(store, claim).await {
                Ok(()) => info!(outbox_id = %claim.id, ?outcome, "recorded a kept outcome"),
                Err(_) => left.push((claim, outcome)),
            }
        }
        held.extend(left.iter().map(|(claim, _)| claim.id));
        *kept = left;
        held
    }
}
