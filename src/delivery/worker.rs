//! The worker pool: `concurrency` tokio tasks sharing one channel receiver.
//!
//! Each worker is one of the "waiters" of docs/sync-vs-background.md: it takes a job, waits for a
//! free SMTP connection (`smtp.pool_size` in all, shared with sync signups), claims the job's row
//! (or, if another sender claimed it first, the oldest row that is due; or, for a job that names
//! no row, the oldest due row at once), waits on the SMTP server, records the outcome and takes
//! the next. While one waits on the network the others run; that is concurrency on a handful of
//! threads, not one thread per email.
//!
//! On a queue several instances share, most jobs name no row (see `Delivery::offer_found`). A
//! worker that took a row that way goes on taking the row due next until none is due, as a
//! queue's fetch loop does, so a backlog drains at the workers' pace without an offer per row.
//! It asks for the next row with the outcome of the last (`Store::mark_sent_and_claim_next`:
//! one statement on PostgreSQL, as River's and Oban's complete-and-fetch), and keeps its SMTP
//! connection for it, but only while no job waits in the channel (a local signup's own row, most
//! likely: it goes first, so new emails do not wait behind the whole backlog) and no sync
//! request or other worker waits for a connection.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Mutex, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, Span, error, field, info, info_span, warn};

use super::{AskNext, Attempt, Delivery, Job, Next};
use crate::{
    clock,
    mail::ConnectionPermit,
    store::{Claim, ClaimedEmail},
    telemetry::millis,
};

pub(super) fn spawn_pool(
    delivery: Delivery,
    receiver: mpsc::Receiver<Job>,
    concurrency: usize,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    // tokio's mpsc has one receiver; the workers take turns holding it. The lock is held only
    // while waiting for the next id, never while sending.
    // Each worker is supervised: after a panic it starts again (its email in hand comes back
    // when the lease runs out).
    let receiver = Arc::new(Mutex::new(receiver));
    let supervisor = delivery.store().tasks().clone();
    for worker in 0..concurrency {
        let (delivery, receiver, shutdown) = (delivery.clone(), receiver.clone(), shutdown.clone());
        tasks.spawn(supervisor.supervise("worker", move || {
            run(worker, delivery.clone(), receiver.clone(), shutdown.clone())
        }));
    }
}

async fn run(
    worker: usize,
    delivery: Delivery,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            // Stop taking new work at shutdown; what is still in the channel stays queued in the
            // table for the next start.
            biased;
            () = shutdown.cancelled() => break,
            job = async { receiver.lock().await.recv().await } => match job {
                Some(job) => job,
                None => break,
            },
        };
        delivery.took_job();
        // Once taken, a job is finished even during shutdown (bounded by the SMTP timeout).
        // While it keeps finding due rows, the worker goes on (see the module docs).
        let mut job = job;
        let mut draining = false;
        loop {
            let names_a_row = job.id.is_some();
            match deliver(&delivery, job, &receiver, &shutdown).await {
                Took::NextDue => draining = true,
                Took::Other if !names_a_row => draining = false,
                Took::Other => {}
            }
            if !draining || shutdown.is_cancelled() {
                break;
            }
            job = match waiting(&receiver) {
                Some(job) => {
                    delivery.took_job();
                    job
                }
                None => Job::next_due(),
            };
        }
    }
    info!(worker, "worker stopped");
}

/// A job waiting in the channel, if one is and no idle worker is already waiting for it.
fn waiting(receiver: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    receiver.try_lock().ok()?.try_recv().ok()
}

/// What a delivery claimed.
#[derive(Debug, PartialEq, Eq)]
enum Took {
    /// The row due next, for a job that named none, and the rows after it while the outcomes
    /// claimed them; more may be due.
    NextDue,
    /// Its own row, a row taken over, or nothing; or rows due next until a claim found none
    /// free (or failed), or a shutdown came.
    Other,
}

/// Claims, sends and records one outbox row, and, for a job that named none, the rows due after
/// it while its outcome can claim them (see [`send`]). Each send is traced in a span that carries
/// the queue wait (from the commit, or the offer of the row by id, to the claim), the attempt, the
/// send time, the outcome and the id of the request that created it. The span starts at the claim:
/// only a claimed row says which trace it belongs to, and a span joins a trace only before it is
/// first entered.
async fn deliver(
    delivery: &Delivery,
    job: Job,
    receiver: &Mutex<mpsc::Receiver<Job>>,
    shutdown: &CancellationToken,
) -> Took {
    // A connection first, the claim second: the lease starts only once the send can.
    let permit = delivery.mailer().connection().await;
    let store = delivery.store();
    let lease = delivery.inner.policy.lease;
    // Its own row, or, if another sender took it first (or it is not due, or was superseded),
    // the oldest row that is due: a worker that lost its row would otherwise sit out a turn
    // while work waits. An offer of no row in particular takes the oldest due row at once. Not
    // during shutdown, which finishes the jobs taken and starts no others.
    let claimed = match job.id {
        Some(id) => match store.claim(id, lease).await {
            Ok(None) if !shutdown.is_cancelled() => store.claim_next_due(lease).await,
            Err(e) => {
                error!(outbox_id = %id, error = %e, "cannot claim the email; the sweeper will offer it again");
                return Took::Other;
            }
            own => own,
        },
        // A job that names no row is dropped at shutdown: its rows stay queued in the table.
        None if shutdown.is_cancelled() => return Took::Other,
        None => store.claim_next_due(lease).await,
    };
    let mut claimed = match claimed {
        Ok(Some(claimed)) => claimed,
        Ok(None) => return Took::Other,
        Err(e) => {
            error!(error = %e, "cannot claim a due email; the sweeper will offer it again");
            return Took::Other;
        }
    };
    if job.id.is_some() {
        send(delivery, &permit, claimed, Some(job), None).await;
        return Took::Other;
    }
    // The row due next: the outcome claims the row after it, asked as it is written, while no
    // shutdown came, no one waits for a connection and no job waits in the channel (it goes
    // first: a local signup's own row, most likely).
    let ask_next = || {
        let going_on = !shutdown.is_cancelled()
            && !delivery.mailer().awaited()
            && receiver
                .try_lock()
                .map_or(true, |receiver| receiver.is_empty());
        going_on.then_some(lease)
    };
    loop {
        match send(delivery, &permit, claimed, None, Some(&ask_next)).await {
            // Claimed as the outcome was written: after a shutdown that came since, it goes
            // back to the queue unsent, so the shutdown waits for no second send.
            Next::Claimed(next) if shutdown.is_cancelled() => {
                give_back(delivery, next.claim).await;
                return Took::Other;
            }
            Next::Claimed(next) => claimed = next,
            // None was free (or the outcome's write failed): the backlog is done here.
            Next::NoneClaimed => return Took::Other,
            // Not asked: the worker's loop takes the waiting job, or stops.
            Next::NotAsked => return Took::NextDue,
        }
    }
}

/// Puts a row claimed during shutdown back in the queue, due now (its attempt stays counted).
/// If that write fails, the row comes back when its lease runs out.
async fn give_back(delivery: &Delivery, claim: Claim) {
    let reason = "not tried: the instance was shutting down";
    if let Err(e) = delivery
        .store()
        .mark_retry(claim, Duration::ZERO, reason)
        .await
    {
        warn!(outbox_id = %claim.id, error = %e, "cannot put the email back in the queue; its lease will");
    }
}

/// Sends the claimed row, traced (see [`deliver`]), for `job` if it was offered by id; with
/// `ask_next`, its outcome may also claim the row due next.
async fn send(
    delivery: &Delivery,
    permit: &ConnectionPermit,
    claimed: ClaimedEmail,
    job: Option<Job>,
    ask_next: Option<AskNext<'_>>,
) -> Next {
    // The queue wait (commit or offer → claim) of the row in hand: a row taken over waited
    // from its commit if this is its first attempt; a retry's wait since its due time is not
    // known here, and is left out.
    let queue_wait = match job {
        Some(job) if job.id == Some(claimed.claim.id) => Some(job.enqueued_at.elapsed()),
        _ if claimed.attempts == 1 => {
            let waited = clock::now_ms().saturating_sub(claimed.created_at);
            Some(Duration::from_millis(u64::try_from(waited).unwrap_or(0)))
        }
        _ => None,
    };
    if let Some(queue_wait) = queue_wait {
        delivery.metrics().observe_queue_wait(queue_wait);
    }
    let span = info_span!(
        "delivery",
        outbox_id = %claimed.claim.id,
        request_id = claimed.request_id.as_deref(),
        attempt = claimed.attempts,
        kind = claimed.kind.as_str(),
        queue_wait_ms = queue_wait.map(millis),
        send_ms = field::Empty,
        outcome = field::Empty,
        trace_id = field::Empty,
    );
    // Into the signup's trace, as a child of its request (see the module docs of `delivery`).
    crate::telemetry::continue_trace(&span, claimed.trace_context.as_deref());
    async {
        let span = Span::current();
        let outgoing = match delivery.outgoing(&claimed).await {
            Ok(outgoing) => outgoing,
            Err(e) => {
                error!(error = %e, "cannot store the link's new hash; the lease will bring the email back");
                return Next::NoneClaimed;
            }
        };
        let sending = Instant::now();
        let (attempt, next) = delivery
            .attempt(
                permit,
                claimed.claim,
                &claimed.recipient,
                &outgoing,
                claimed.attempts,
                claimed.created_at,
                ask_next,
            )
            .await;
        span.record("send_ms", millis(sending.elapsed()));
        // Commit → SMTP accepted, the figure background mode is judged by.
        let end_to_end_ms = clock::now_ms().saturating_sub(claimed.created_at);
        span.record("outcome", attempt.as_str());
        match attempt {
            Attempt::Sent => {
                info!(end_to_end_ms, "email sent");
            }
            Attempt::Retrying { after, error } => {
                warn!(error = %error, retry_in_ms = after.as_millis() as u64, "send failed; will retry");
            }
            Attempt::Failed { error } => {
                error!(error = %error, "email failed for good");
            }
        }
        next
    }
    .instrument(span)
    .await
}
