//! The sweeper: the safety net that makes the channel a mere wake-up call.
//!
//! At start-up and then every `worker.sweep_interval_ms` it writes the outcomes of sends that the
//! database refused to record (see `in_hand`), then takes back rows whose lease expired (their
//! sender died mid-send; rows this process still has in hand are left alone), and offers the
//! workers every queued row that is due: retries whose backoff has passed, rows the full channel
//! could not take, rows left by the last run. It also counts the backlog, which the backlog cap
//! (`worker.max_backlog`) is checked against. Between intervals it sweeps again whenever the
//! workers have drained a channel that rows could not fit in (see `Delivery::took_job`), so a large
//! backlog is not paced by the interval. On a queue other instances share, it offers no more rows
//! than there are workers, each offer for the row due next, and a worker that took one goes on to
//! the next by itself (see `worker`).

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::Delivery;
use crate::store::StoreError;

pub(super) async fn run(delivery: Delivery, shutdown: CancellationToken) {
    let interval = delivery.inner.policy.sweep_interval;
    loop {
        if let Err(e) = sweep(&delivery).await {
            error!(error = %e, "sweep failed; trying again next interval");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
            // The workers have room again while due rows wait outside the channel.
            () = delivery.inner.refill.notified() => {}
        }
    }
    debug!("sweeper stopped");
}

async fn sweep(delivery: &Delivery) -> Result<(), StoreError> {
    let store = delivery.store();
    // A row this process still has in hand (being sent, or sent with its outcome not written
    // yet) has a live sender, whatever its lease says: taking it back would send it again.
    let in_hand = delivery.inner.in_hand.write_kept(store).await;
    let reclaimed = store.reclaim_expired_leases(&in_hand).await?;
    if reclaimed > 0 {
        info!(reclaimed, "took back emails whose sender's lease expired");
    }
    delivery
        .inner
        .backlog
        .recount(async { Ok::<_, StoreError>(u64::try_from(store.backlog().await?).unwrap_or(0)) })
        .await?;
    // Offer no more than the channel can hold right now: what does not fit waits for the next
    // sweep, and a busy pool is not flooded with duplicates of ids it already holds.
    let room = delivery.inner.jobs.capacity();
    if room == 0 {
        delivery
            .inner
            .overflowed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    }
    // On a shared queue each offer is for the row due next, and a worker that took one goes on
    // to the next until none is due (see `worker`): as many offers as workers keep them all
    // busy however many rows wait, and the query reads no more rows than that.
    let wanted = if store.shared() {
        room.min(delivery.inner.policy.concurrency)
    } else {
        room
    };
    let due = store.due_emails(wanted as i64).await?;
    if !due.is_empty() {
        debug!(count = due.len(), "offering due emails to the workers");
    }
    if due.len() == room {
        // The channel is full again and more rows may be due: refill once the workers catch up.
        delivery
            .inner
            .overflowed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    for id in due {
        delivery.offer_found(id);
    }
    Ok(())
}
