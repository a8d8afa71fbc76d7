//! Getting the confirmation email out: the part of confirmd that the two modes differ in.
//!
//! Both modes first write the user, the token and an **outbox** row in one transaction. Then:
//!
//! - **sync**: the request itself sends the email and answers only when the SMTP server has
//!   accepted it. Its outbox row was written already claimed (state `sending`, with a lease), so
//!   no worker sends it at the same time; if SMTP fails, the row goes back to the queue and a
//!   worker delivers it later, while the caller gets a 502/504.
//! - **background**: the request puts the row's id on a bounded channel and answers at once. A
//!   pool of workers ([`worker`]) takes ids off the channel, claims each row (so no two senders
//!   ever hold it), sends, and marks it sent, or schedules a retry with exponential backoff.
//!
//! The channel is only a wake-up call: the outbox table is the queue. If the channel is full,
//! or the process dies with ids in it, nothing is lost: the [`sweeper`] finds due rows in the
//! table (and rows whose sender died mid-send) and feeds them to the workers again.
//!
//! Nothing here knows about HTTP: the `http` module calls [`Delivery::signup`] and maps the result.

mod backlog;
mod in_hand;
mod retry;
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
use tracing::{Instrument, debug, info_span, warn};

use backlog::Backlog;
use in_hand::{InHand, Outcome};
pub use retry::Backoff;

use crate::{
    clock,
    config::Settings,
    domain::{ConfirmationToken, DeliveryMode, SubscriberEmail, SubscriberName},
    mail::{ConfirmationEmail, Mailer, SendError},
    metrics::{EmailOutcome, Metrics},
    store::{Claim, NewSignup, OutboxId, Store, StoreError},
};

/// What a worker is told: which row, and enough context to report how long it waited.
#[derive(Debug)]
pub(crate) struct Job {
    id: OutboxId,
    /// When the id entered the channel, to measure queue wait (commit → pick-up).
    enqueued_at: Instant,
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
    backoff: Backoff,
    /// Attempts before an email that keeps failing is `failed`.
    max_attempts: u32,
    sweep_interval: Duration,
    /// Least time between two emails to one pending address.
    resend_interval: Duration,
    /// Waiting emails beyond which background signups are refused.
    max_backlog: u64,
}

/// The delivery core: shared by the HTTP handlers, the workers and the sweeper.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    mailer: Mailer,
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
    /// Rows being sent, and outcomes of sends that the database refused to record until it
    /// takes writes again: the sweeper leaves these rows alone.
    in_hand: InHand,
}

/// A committed signup and what became of its email so far.
#[derive(Debug, Clone)]
pub struct SignupReceipt {
    pub user_id: String,
    pub email: String,
    pub mode: DeliveryMode,
    /// The outbox state as the request leaves it: `sent` (sync) or `queued` (background).
    pub state: &'static str,
    /// Time in the signup transaction.
    pub db_time: Duration,
    /// Time waiting for SMTP (sync mode only).
    pub smtp_time: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    #[error("{0} is already confirmed")]
    AlreadyConfirmed(String),
    /// The address was sent an email less than `signup.resend_interval_s` ago.
    #[error("an email was sent to this address moments ago")]
    TooSoon { retry_after: Duration },
    /// Background mode: `worker.max_backlog` emails are already waiting (SMTP is down or slow).
    #[error("too many emails are waiting to be sent")]
    Backlogged { retry_after: Duration },
    /// Sync mode: the signup is stored, but SMTP failed now; `will_retry` says whether its email
    /// went back to the queue (or failed for good: a permanent rejection, or out of attempts).
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
        match e {
            StoreError::AlreadyConfirmed(email) => SignupError::AlreadyConfirmed(email),
            StoreError::TooSoon { retry_after_ms } => SignupError::TooSoon {
                retry_after: Duration::from_millis(u64::try_from(retry_after_ms).unwrap_or(0)),
            },
            other => SignupError::Store(other),
        }
    }
}

/// What one attempt at sending a claimed row came to; the worker logs it.
#[derive(Debug)]
pub(crate) enum Attempt {
    Sent,
    Retrying { after: Duration, error: SendError },
    Failed { error: SendError },
}

impl Delivery {
    /// Builds the delivery core and starts its workers and sweeper on `tasks`; they stop when
    /// `shutdown` is cancelled, each finishing the email in hand.
    pub fn start(
        settings: &Settings,
        store: Store,
        mailer: Mailer,
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
            backoff: Backoff::new(worker.retry_base(), worker.retry_max()),
            max_attempts: worker.max_attempts,
            sweep_interval: worker.sweep_interval(),
            resend_interval: settings.signup.resend_interval(),
            max_backlog: worker.max_backlog,
        };
        let delivery = Delivery {
            inner: Arc::new(Inner {
                store,
                mailer,
                metrics,
                policy,
                jobs,
                tasks: tasks.clone(),
                backlog: Backlog::default(),
                overflowed: AtomicBool::new(false),
                refill: Notify::new(),
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
        let sweeper = {
            let delivery = delivery.clone();
            move || sweeper::run(delivery.clone(), shutdown.clone())
        };
        tasks.spawn(delivery.store().tasks().supervise("sweeper", sweeper));
        delivery
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn mailer(&self) -> &Mailer {
        &self.inner.mailer
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
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
        if mode == DeliveryMode::Background && self.inner.backlog.estimate() >= policy.max_backlog {
            return Err(SignupError::Backlogged {
                retry_after: policy.sweep_interval,
            });
        }
        let token = ConfirmationToken::generate();
        let now = clock::now_ms();
        let claimed_until = (mode == DeliveryMode::Sync).then(|| clock::ms_from_now(policy.lease));
        let new = NewSignup {
            email: email.clone(),
            name: name.cloned(),
            token: token.expose().to_owned(),
            token_hash: token.hash(),
            token_expires_at: clock::ms_from_now(policy.token_ttl),
            mode,
            request_id: request_id.map(str::to_owned),
            claimed_until,
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
        let mut receipt = SignupReceipt {
            user_id: stored.user_id,
            email: stored.email,
            mode,
            state: "queued",
            db_time,
            smtp_time: None,
        };

        match mode {
            DeliveryMode::Background => {
                self.inner.backlog.accepted();
                self.enqueue(stored.outbox_id);
                Ok(receipt)
            }
            DeliveryMode::Sync => {
                let this = self.clone();
                let link = self.link(token.expose());
                let claim = Claim {
                    id: stored.outbox_id,
                    lease_until: claimed_until.expect("a sync row is written claimed"),
                };
                let (to, name) = (receipt.email.clone(), name.map(|n| n.as_str().to_owned()));
                let started = Instant::now();
                let send = async move {
                    let email = ConfirmationEmail {
                        id: claim.id.0,
                        to_address: &to,
                        to_name: name.as_deref(),
                        link: &link,
                    };
                    this.attempt(claim, &email, 1).await
                };
                let attempt = self
                    .inner
                    .tasks
                    .spawn(send.instrument(info_span!("smtp.send", outbox_id = %claim.id)))
                    .await
                    .map_err(|e| SignupError::Internal(e.to_string()))?;
                receipt.smtp_time = Some(started.elapsed());
                match attempt {
                    Attempt::Sent => {
                        receipt.state = "sent";
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
        let job = Job {
            id,
            enqueued_at: Instant::now(),
        };
        if let Err(e) = self.inner.jobs.try_send(job) {
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.inner.overflowed.store(true, Ordering::Relaxed);
                    debug!(outbox_id = %id, "worker queue full; the sweeper will pick the email up")
                }
                mpsc::error::TrySendError::Closed(_) => {
                    warn!(outbox_id = %id, "workers stopped; the email stays queued for the next start")
                }
            }
        }
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

    /// Sends a claimed row once and records the outcome: sent, retry later, or failed for good.
    async fn attempt(&self, claim: Claim, email: &ConfirmationEmail<'_>, attempts: i64) -> Attempt {
        let _sending = self.inner.in_hand.sending(claim.id);
        let started = Instant::now();
        let result = match self.inner.mailer.confirmation(email) {
            Ok(message) => self.inner.mailer.send(message).await,
            Err(e) => Err(SendError::Permanent(e.to_string())),
        };
        let took = started.elapsed();
        let attempt = self.record(claim, attempts, result).await;
        let outcome = match &attempt {
            Attempt::Sent => EmailOutcome::Sent,
            Attempt::Retrying { .. } => EmailOutcome::Retried,
            Attempt::Failed { .. } => EmailOutcome::Failed,
        };
        self.inner.metrics.observe_send(took, outcome);
        attempt
    }

    /// Writes what a send came to: sent, due again after a backoff, or failed for good. If the
    /// database refuses the write, the outcome is kept and written later (see [`in_hand`]):
    /// the send happened either way.
    async fn record(&self, claim: Claim, attempts: i64, result: Result<(), SendError>) -> Attempt {
        let policy = &self.inner.policy;
        let (attempt, outcome) = match result {
            Ok(()) => (
                Attempt::Sent,
                Outcome::Sent {
                    at: clock::now_ms(),
                    link_expires_at: clock::ms_from_now(policy.token_ttl),
                },
            ),
            Err(error) => {
                let out_of_attempts = attempts >= i64::from(policy.max_attempts);
                if !error.is_retryable() || out_of_attempts {
                    let reason = if error.is_retryable() {
                        let plural = if attempts == 1 { "" } else { "s" };
                        format!("gave up after {attempts} attempt{plural}: {error}")
                    } else {
                        error.to_string()
                    };
                    (Attempt::Failed { error }, Outcome::Failed { error: reason })
                } else {
                    let after = policy.backoff.delay(attempts);
                    let outcome = Outcome::Retry {
                        next_attempt_at: clock::ms_from_now(after),
                        error: error.to_string(),
                    };
                    (Attempt::Retrying { after, error }, outcome)
                }
            }
        };
        if let Err(error) = outcome.write(&self.inner.store, claim).await {
            self.inner.in_hand.keep(claim, outcome, &error).await;
        }
        attempt
    }
}
