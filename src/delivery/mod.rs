//! Getting the confirmation email out: the part of confirmd that the two modes differ in.
//!
//! Both modes first write the user, the token's hash and an **outbox** row in one transaction.
//! Then:
//!
//! - **sync**: the request itself sends the email and answers only when the SMTP server has
//!   accepted it. Its outbox row was written already claimed (state `sending`, with a lease), so
//!   no worker sends it at the same time; if SMTP fails, the row goes back to the queue and a
//!   worker delivers it later, while the caller gets a 502/504. The request waits a bounded time
//!   (`smtp.acquire_timeout_ms`) for one of the `smtp.pool_size` SMTP connections: if none comes
//!   free, the row goes back to the queue the same way and the caller gets a 503.
//! - **background**: the request puts the row's id on a bounded channel and answers at once. A
//!   pool of workers ([`worker`]) takes ids off the channel, claims each row (so no two senders
//!   ever hold it; a worker whose row another sender claimed first claims the oldest due row
//!   instead), sends, and marks it sent, or schedules a retry with exponential backoff
//!   ([`retry`]): for as long as the link in the email would be valid, so an SMTP outage of
//!   hours delays emails but fails none.
//!
//! The channel is only a wake-up call: the outbox table is the queue. If the channel is full,
//! or the process dies with ids in it, nothing is lost: the [`sweeper`] finds due rows in the
//! table (and rows whose sender died mid-send) and feeds them to the workers again. The
//! [`pruner`] deletes what the outbox no longer needs: sent emails after days, failed ones after
//! weeks, and pending signups whose links have all expired.
//!
//! Every signup is answered the same way whatever the address's state, so the answer tells
//! nobody whether an account exists: the row sends a confirmation to a new or pending address, a
//! fixed "you already have an account" notice to a confirmed one, or nothing when the address was
//! sent an email less than `signup.resend_interval_s` ago. A row that sends nothing still takes
//! about as long as a send ([`recent_sends`]) and goes through the same states.
//!
//! Each attempt is traced as a `delivery` span, with the `smtp.send` inside it. A background
//! delivery is a child of the signup's request span, whose W3C `traceparent` the outbox row
//! keeps, rather than a new trace linked to it. The messaging conventions recommend links for
//! consumers that handle messages in batches, where one span cannot have many parents; here one
//! delivery sends one row, and a child puts the signup's whole story, every retry included, in
//! one trace a viewer draws as one waterfall, where a link is a reference to follow by hand. The
//! price is a long trace when a retry comes hours later, after an outage or a restart: then that
//! length is what the user waited, which is what the trace is for.
//!
//! No token is ever written down: the row keeps a nonce, and the token is derived from it with
//! the server secret ([`crate::secret`]) when the email is built, by the worker or the sync
//! request.
//!
//! Nothing here knows about HTTP: the `http` module calls the core's verbs ([`Delivery::signup`],
//! [`Delivery::confirm`], [`Delivery::show`], [`Delivery::readiness`], ...) and renders what they
//! return. It never reaches past them to the store or the mailer.

mod backlog;
mod confirm;
mod in_hand;
mod pruner;
mod recent_sends;
mod retry;
mod send;
mod smtp_check;
mod status;
mod sweeper;
mod worker;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, Span, debug, field, info_span, warn};

use backlog::Backlog;
pub use confirm::LinkState;
use in_hand::InHand;
use recent_sends::RecentSends;
pub use retry::Backoff;
use retry::RetryPolicy;
pub(crate) use send::{AskNext, Attempt, Next, Outgoing};
pub use smtp_check::SmtpStatus;
pub use status::Readiness;

use crate::{
    clock,
    config::Settings,
    domain::{DeliveryMode, SubscriberEmail, SubscriberName, TokenNonce},
    mail::{Mailer, SendError},
    metrics::Metrics,
    secret::TokenKey,
    store::{Claim, EmailKind, NewSignup, OutboxId, OutboxState, Store, StoreError},
};

/// What a worker is told: which row, and enough context to report how long it waited.
#[derive(Debug)]
pub(crate) struct Job {
    /// The row to claim, or `None` for whichever row is due next: the offer of a row that
    /// other instances were offered too (see [`Delivery::offer_found`]).
    id: Option<OutboxId>,
    /// When the job entered the channel, to measure queue wait (commit → pick-up).
    enqueued_at: Instant,
}

impl Job {
    fn new(id: Option<OutboxId>) -> Job {
        Job {
            id,
            enqueued_at: Instant::now(),
        }
    }

    /// Whichever row is due next.
    fn next_due() -> Job {
        Job::new(None)
    }
}

/// Settings the delivery core needs, copied out of [`Settings`] once.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// `app.base_url`: where the link in the email points.
    base_url: String,
    /// How long a link stays valid, counted from the send.
    token_ttl: Duration,
    /// How long a claimed email belongs to its sender before the sweeper may take it back.
    lease: Duration,
    /// When a failed email is tried again, and when it is given up.
    retry: RetryPolicy,
    sweep_interval: Duration,
    /// `worker.concurrency`: on a shared queue, the most offers one sweep makes.
    concurrency: usize,
    /// Least time between two emails to one pending address.
    resend_interval: Duration,
    /// Emails still to send beyond which signups are refused.
    max_backlog: u64,
    /// How long a sync signup waits for a free SMTP connection.
    acquire_timeout: Duration,
    /// `smtp.timeout_ms`: once it has passed, every send that held a connection has ended; also
    /// the longest a row that sends nothing waits to look like a send.
    send_timeout: Duration,
    /// How often the background check asks the SMTP server whether it answers.
    smtp_check_interval: Duration,
}

/// The delivery core: shared by the HTTP handlers, the workers and the sweeper.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    mailer: Mailer,
    /// Turns an outbox row's nonce into its link's token.
    key: TokenKey,
    /// How long sends take lately, for the rows that send nothing.
    recent_sends: RecentSends,
    metrics: Arc<Metrics>,
    policy: Policy,
    jobs: mpsc::Sender<Job>,
    /// Sync sends run as their own tasks, tracked here with the workers, so that a client that
    /// hangs up mid-send cannot abandon an email half-sent and shutdown waits for them.
    tasks: TaskTracker,
    /// Emails waiting to be sent, for the backlog cap.
    backlog: Backlog,
    /// Set when due rows did not fit in the channel. The first worker to see the channel half
    /// empty clears it and wakes the sweeper through `refill`, so a backlog larger than the
    /// channel drains at the workers' pace instead of one channel-full per sweep interval.
    overflowed: AtomicBool,
    refill: Notify,
    /// What the background SMTP check last found.
    smtp: smtp_check::LastStatus,
    /// Rows being sent, and outcomes of sends that the database refused to record until it
    /// takes writes again: the sweeper leaves these rows alone.
    in_hand: InHand,
}

/// A committed signup and what became of its email so far: the same for every address, whatever
/// its state.
#[derive(Debug, Clone)]
pub struct SignupReceipt {
    /// The signup request's id: a time-ordered random UUID (see [`signup_id`]), not the user's.
    pub signup_id: String,
    pub email: String,
    pub mode: DeliveryMode,
    /// The outbox state as the request leaves it: `sent` (sync) or `queued` (background).
    pub state: OutboxState,
    /// Time in the signup transaction.
    pub db_time: Duration,
    /// Time waiting for SMTP (sync mode only).
    pub smtp_time: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// `worker.max_backlog` emails are already waiting to be sent (SMTP is down or slow).
    #[error("too many emails are waiting to be sent")]
    Backlogged { retry_after: Duration },
    /// Sync mode: the signup is stored, but every SMTP connection stayed busy for
    /// `smtp.acquire_timeout_ms`; its email went back to the queue, for the workers.
    #[error("every SMTP connection is busy; the email is queued")]
    SmtpBusy {
        receipt: SignupReceipt,
        retry_after: Duration,
    },
    /// Sync mode: the signup is stored, but SMTP failed now; `will_retry` says whether its email
    /// went back to the queue (or failed for good: the address was refused).
    #[error("the signup is saved but its email could not be sent now: {error}")]
    SendFailed {
        receipt: SignupReceipt,
        error: SendError,
        will_retry: bool,
    },
    #[error(transparent)]
    Store(StoreError),
    /// The send task panicked: a bug, not an input problem. The row's lease brings it back.
    #[error("the send task failed: {0}")]
    Internal(String),
}

impl From<StoreError> for SignupError {
    fn from(e: StoreError) -> Self {
        SignupError::Store(e)
    }
}

impl Delivery {
    /// Builds the delivery core and starts its workers, sweeper and pruner on `tasks`; they stop when
    /// `shutdown` is cancelled, each finishing the email in hand.
    pub fn start(
        settings: &Settings,
        store: Store,
        mailer: Mailer,
        key: TokenKey,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Delivery {
        let worker = &settings.worker;
        let (jobs, receiver) = mpsc::channel(worker.queue_capacity);
        let policy = Policy {
            base_url: settings.app.base_url.clone(),
            token_ttl: settings.token.ttl(),
            lease: worker.lease(),
            retry: RetryPolicy {
                backoff: Backoff::new(worker.retry_base(), worker.retry_max()),
                link_lifetime: settings.token.ttl(),
                max_attempts: worker.max_attempts(),
            },
            sweep_interval: worker.sweep_interval(),
            concurrency: worker.concurrency,
            resend_interval: settings.signup.resend_interval(),
            max_backlog: worker.max_backlog,
            acquire_timeout: settings.smtp.acquire_timeout(),
            send_timeout: settings.smtp.timeout(),
            smtp_check_interval: settings.smtp.check_interval(),
        };
        let delivery = Delivery {
            inner: Arc::new(Inner {
                store,
                mailer,
                key,
                recent_sends: RecentSends::default(),
                metrics,
                policy,
                jobs,
                tasks: tasks.clone(),
                backlog: Backlog::default(),
                overflowed: AtomicBool::new(false),
                refill: Notify::new(),
                smtp: smtp_check::LastStatus::default(),
                in_hand: InHand::default(),
            }),
        };
        worker::spawn_pool(
            delivery.clone(),
            receiver,
            worker.concurrency,
            shutdown.clone(),
            &tasks,
        );
        let smtp_check = {
            let (delivery, shutdown) = (delivery.clone(), shutdown.clone());
            move || smtp_check::run(delivery.clone(), shutdown.clone())
        };
        tasks.spawn(delivery.store().tasks().supervise("smtp_check", smtp_check));
        // Emails written by other instances on a shared database wake these workers the way
        // this process's own signups do.
        let wake = {
            let delivery = delivery.clone();
            move |emails| delivery.offer_heard(emails)
        };
        delivery
            .store()
            .hear_new_emails(wake, shutdown.clone(), &tasks);
        let sweeper = {
            let (delivery, shutdown) = (delivery.clone(), shutdown.clone());
            move || sweeper::run(delivery.clone(), shutdown.clone())
        };
        tasks.spawn(delivery.store().tasks().supervise("sweeper", sweeper));
        let pruner = {
            let (delivery, retention) = (delivery.clone(), settings.retention.clone());
            move || pruner::run(delivery.clone(), retention.clone(), shutdown.clone())
        };
        tasks.spawn(delivery.store().tasks().supervise("pruner", pruner));
        delivery
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn mailer(&self) -> &Mailer {
        &self.inner.mailer
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the SMTP server answered the last background check.
    pub fn smtp_status(&self) -> SmtpStatus {
        self.inner.smtp.get()
    }

    /// Stores a signup and delivers its email in the requested mode.
    pub async fn signup(
        &self,
        email: &SubscriberEmail,
        name: Option<&SubscriberName>,
        mode: DeliveryMode,
        request_id: Option<&str>,
    ) -> Result<SignupReceipt, SignupError> {
        let policy = &self.inner.policy;
        // Both modes: a sync signup whose send fails leaves an email waiting too.
        if self.inner.backlog.estimate() >= policy.max_backlog {
            return Err(SignupError::Backlogged {
                retry_after: policy.sweep_interval,
            });
        }
        let now = clock::now_ms();
        let nonce = TokenNonce::made_at(now);
        let token = self.inner.key.token_for(&nonce);
        let claim_for = (mode == DeliveryMode::Sync).then_some(policy.lease);
        let new = NewSignup {
            signup_id: signup_id(now),
            email: email.clone(),
            name: name.cloned(),
            nonce,
            token_hash: token.hash(),
            token_expires_at: clock::ms_from_now(policy.token_ttl),
            mode,
            request_id: request_id.map(str::to_owned),
            // The request's trace, for the delivery to join, however late it runs.
            trace_context: crate::telemetry::traceparent(&Span::current()),
            claim_for,
            resend_interval_ms: i64::try_from(policy.resend_interval.as_millis())
                .unwrap_or(i64::MAX),
            now,
        };
        let started = Instant::now();
        let stored = self
            .inner
            .store
            .create_signup(new)
            .instrument(info_span!("db.transaction"))
            .await?;
        let db_time = started.elapsed();
        self.inner.metrics.observe_signup_group(stored.group_size);
        // For the operator: what this request sends, which its answer does not say.
        debug!(signup_id = %stored.signup_id, outbox_id = %stored.outbox_id, kind = stored.kind.as_str(), "signup stored");
        let mut receipt = SignupReceipt {
            signup_id: stored.signup_id,
            email: stored.email,
            mode,
            state: OutboxState::Queued,
            db_time,
            smtp_time: None,
        };

        // Until the next recount, even a sync email sent at once counts: the cap errs high.
        self.inner.backlog.accepted();
        match mode {
            DeliveryMode::Background => {
                self.enqueue(stored.outbox_id);
                Ok(receipt)
            }
            DeliveryMode::Sync => {
                let this = self.clone();
                // The token lives in this request's memory only, as in a worker's.
                let outgoing = match stored.kind {
                    EmailKind::Confirmation => Outgoing::Confirmation {
                        link: self.link(token.expose()),
                    },
                    EmailKind::AccountNotice => Outgoing::AccountNotice,
                    EmailKind::Suppressed => Outgoing::Nothing,
                };
                let claim = stored.claim.expect("a sync row is written claimed");
                let to = receipt.email.clone();
                let started = Instant::now();
                let send = async move {
                    // A row that sends nothing waits for a connection too: under load it must
                    // answer as a real send would.
                    let wait = this.inner.policy.acquire_timeout;
                    let Some(permit) = this.inner.mailer.connection_within(wait).await else {
                        this.hand_back(claim).await?;
                        return Ok(None);
                    };
                    let (attempt, _) = this
                        .attempt(&permit, claim, &to, &outgoing, 1, now, None)
                        .await;
                    Span::current().record("outcome", attempt.as_str());
                    Ok::<_, StoreError>(Some(attempt))
                };
                let attempt = self
                    .inner
                    .tasks
                    .spawn(
                        send.instrument(info_span!("delivery", outbox_id = %claim.id, attempt = 1, outcome = field::Empty)),
                    )
                    .await
                    .map_err(|e| SignupError::Internal(e.to_string()))??;
                receipt.smtp_time = Some(started.elapsed());
                let Some(attempt) = attempt else {
                    return Err(SignupError::SmtpBusy {
                        receipt,
                        retry_after: policy.send_timeout,
                    });
                };
                match attempt {
                    Attempt::Sent => {
                        receipt.state = OutboxState::Sent;
                        Ok(receipt)
                    }
                    Attempt::Retrying { error, .. } => Err(SignupError::SendFailed {
                        receipt,
                        error,
                        will_retry: true,
                    }),
                    Attempt::Failed { error } => Err(SignupError::SendFailed {
                        receipt,
                        error,
                        will_retry: false,
                    }),
                }
            }
        }
    }

    /// Hands a committed row to the workers without waiting: if the channel is full the row
    /// simply stays queued in the table, and the sweeper brings it back.
    fn enqueue(&self, id: OutboxId) {
        self.hand_over(Some(id));
    }

    /// Hands the workers a due row this process did not just write, one the sweeper found. On a
    /// queue other instances share, their sweepers offered them the same row (and their
    /// listeners offer them the rows other instances write: [`Delivery::offer_heard`]); a worker
    /// that asked for it by id would most often lose it to one of them, and then ask again for
    /// whichever row is due. So there the offer is for the row due next, which a claim takes
    /// skipping rows other senders hold, and no instance loses a claim to another.
    fn offer_found(&self, id: OutboxId) {
        self.hand_over((!self.store().shared()).then_some(id));
    }

    /// Another instance wrote `emails` rows (its notification said how many): offers the row due
    /// next that many times, at most once per worker. A worker that took such an offer goes on to
    /// the next due row until none is due (see `worker`), as after the sweeper's offers; more
    /// offers than workers would add no sender, only claims of their own.
    fn offer_heard(&self, emails: usize) {
        for _ in 0..emails.min(self.inner.policy.concurrency) {
            self.hand_over(None);
        }
    }

    fn hand_over(&self, id: Option<OutboxId>) {
        if let Err(e) = self.inner.jobs.try_send(Job::new(id)) {
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.inner.overflowed.store(true, Ordering::Relaxed);
                    debug!(outbox_id = ?id, "worker queue full; the sweeper will pick the email up")
                }
                mpsc::error::TrySendError::Closed(_) => {
                    warn!(outbox_id = ?id, "workers stopped; the email stays queued for the next start")
                }
            }
        }
    }

    /// A sync signup found no free SMTP connection: its row, written claimed, goes back to the
    /// queue due now, and to the workers, who wait for a connection as long as it takes. The
    /// attempt the row was written with stays counted; its `last_error` says it was not tried.
    async fn hand_back(&self, claim: Claim) -> Result<(), StoreError> {
        let reason = "not tried at signup: every SMTP connection was busy; queued for the workers";
        self.inner
            .store
            .mark_retry(claim, Duration::ZERO, reason)
            .await?;
        self.enqueue(claim.id);
        Ok(())
    }

    /// Called by a worker after taking a job: if rows are waiting outside a channel that is now
    /// half empty, wake the sweeper to refill it.
    fn took_job(&self) {
        let jobs = &self.inner.jobs;
        if self.inner.overflowed.load(Ordering::Relaxed)
            && jobs.capacity() * 2 >= jobs.max_capacity()
            && self.inner.overflowed.swap(false, Ordering::Relaxed)
        {
            self.inner.refill.notify_one();
        }
    }

    /// The confirmation link for a raw token.
    fn link(&self, token: &str) -> String {
        format!("{}/confirm?token={token}", self.inner.policy.base_url)
    }
}

/// A signup request's public id: a version 7 UUID, the request's millisecond (`now`) then 74
/// random bits. It says nothing about the user or the address, and of the time only what
/// `GET /signups/{id}` shows its holder anyway (`created_at`). Unguessable: the random bits are
/// all the operating system's, with no counter among them (which `Uuid::now_v7` would put there
/// to order ids within a millisecond). Time-ordered, so each new id lands on the last page of the
/// outbox's index of ids; a random (version 4) id landed on a random page of an index as large as
/// the table, one page more to write per signup (BENCHMARKS.md, section 2).
fn signup_id(now: i64) -> String {
    let mut random = [0u8; 10];
    getrandom::fill(&mut random).expect("the operating system's random source failed");
    let millis = u64::try_from(now).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signup_ids_are_version_7_uuids_of_their_millisecond_with_random_bits_and_sort_by_it() {
        let now = 1_796_000_000_123_i64;
        let id = uuid::Uuid::parse_str(&signup_id(now)).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (seconds, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            seconds * 1000 + u64::from(nanos / 1_000_000),
            1_796_000_000_123
        );

        // Two ids of one millisecond share the first 48 bits and nothing that counts up: of
        // 64 such ids, no two are a step apart.
        let mut twins: Vec<u128> = (0..64)
            .map(|_| uuid::Uuid::parse_str(&signup_id(now)).unwrap().as_u128())
            .collect();
        assert!(twins.iter().all(|t| t >> 80 == id.as_u128() >> 80));
        twins.sort_unstable();
        twins.dedup();
        assert_eq!(twins.len(), 64);
        assert!(
            twins.windows(2).all(|w| w[1] - w[0] > 1 << 16),
            "{twins:x?}"
        );

        // As text (how the index holds them), later ids sort after.
        let ids: Vec<String> = [now - 1_000, now - 1, now, now + 1, now + 86_400_000]
            .into_iter()
            .map(signup_id)
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
