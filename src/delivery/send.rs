//! One attempt at one email: what a claimed row sends, the send itself on a pooled connection,
//! and what it came to, written to the outbox (or kept in hand while the database refuses it).
//! Both the sync request and the workers come through here, so the two modes send, retry and
//! give up by the same rules.

use std::time::{Duration, Instant};

use tracing::{Instrument, info_span};

use super::{Delivery, in_hand::Outcome, retry::AfterFailure};
use crate::{
    clock,
    domain::{ConfirmationToken, TIME_PREFIX},
    mail::{ConfirmationEmail, ConnectionPermit, SendError},
    metrics::EmailOutcome,
    store::{Claim, ClaimedEmail, EmailKind, StoreError},
};

/// What a claimed row sends, built from its kind.
pub(crate) enum Outgoing {
    /// The confirmation email with this link.
    Confirmation { link: String },
    /// The fixed "you already have an account" notice.
    AccountNotice,
    /// Nothing, for about as long as a send takes.
    Nothing,
}

/// Whether the row due next was claimed with an attempt's outcome (see [`Delivery::attempt`]).
pub(crate) enum Next {
    /// It was not asked for.
    NotAsked,
    /// Claimed, leased to the worker that asked.
    Claimed(ClaimedEmail),
    /// Asked for, and none was free; or the outcome's write failed, and nothing was claimed.
    NoneClaimed,
}

/// When a sender asks for the row due next with its outcome: a function, called as the outcome
/// is about to be written, that answers with the lease to claim it under, or `None` not to.
pub(crate) type AskNext<'a> = &'a (dyn Fn() -> Option<Duration> + Sync);

/// What one attempt at sending a claimed row came to; the worker logs it.
#[derive(Debug)]
pub(crate) enum Attempt {
    Sent,
    Retrying { after: Duration, error: SendError },
    Failed { error: SendError },
}

impl Attempt {
    /// The outcome as its span records it.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Attempt::Sent => "sent",
            Attempt::Retrying { .. } => "retry",
            Attempt::Failed { .. } => "failed",
        }
    }
}

impl Delivery {
    /// What a claimed row sends. A confirmation's token is derived here from the row's nonce;
    /// if the secret changed since the signup, the new token's hash replaces the stored one
    /// first, so the link that goes out is the one that works.
    pub(crate) async fn outgoing(&self, claimed: &ClaimedEmail) -> Result<Outgoing, StoreError> {
        // A row queued by a version before the time prefix, its key the whole hash of a token
        // that was the whole MAC: its link may be out already (a send the server took but did
        // not acknowledge in time), so it goes out again as it was, and stays valid.
        let mut stored_as_legacy = false;
        let token = match claimed.kind {
            EmailKind::AccountNotice => return Ok(Outgoing::AccountNotice),
            EmailKind::Suppressed => return Ok(Outgoing::Nothing),
            EmailKind::Confirmation => match (&claimed.nonce, &claimed.legacy_token) {
                (Some(nonce), _) => {
                    // A key of today begins with its nonce's time prefix: only a key that does
                    // not can be the old kind, and only then is the old token worth deriving.
                    let legacy = claimed
                        .token_hash
                        .as_ref()
                        .filter(|stored| stored.0[..TIME_PREFIX] != nonce.0[..TIME_PREFIX])
                        .map(|_| self.inner.key.legacy_token_for(nonce))
                        .filter(|legacy| {
                            claimed.token_hash.as_ref() == Some(&legacy.legacy_hash())
                        });
                    stored_as_legacy = legacy.is_some();
                    legacy.unwrap_or_else(|| self.inner.key.token_for(nonce))
                }
                (None, Some(legacy)) => match ConfirmationToken::parse(legacy) {
                    Ok(token) => token,
                    Err(_) => return Ok(Outgoing::Nothing),
                },
                // A confirmation row keeps its nonce until it is sent; one without is a row
                // from before tokens were derived that has nothing left to send.
                (None, None) => return Ok(Outgoing::Nothing),
            },
        };
        let hash = token.hash();
        // Only a derived token can change with the secret; a legacy row's raw token is what its
        // stored hash was made from.
        if let Some(stored) = &claimed.token_hash
            && claimed.nonce.is_some()
            && !stored_as_legacy
            && *stored != hash
        {
            self.inner
                .store
                .rehash_token(claimed.claim.id, stored, &hash)
                .await?;
        }
        Ok(Outgoing::Confirmation {
            link: self.link(token.expose()),
        })
    }

    /// Sends a claimed row once, on the connection `permit` stands for, and records the outcome:
    /// sent, retry later, or failed for good. A row that sends nothing waits about as long as a
    /// send and ends as the last real send did (sent, or retried during an outage): its
    /// requester cannot tell it from one that sent.
    ///
    /// With `ask_next`, the outcome may also claim the row due next, as it is written (see
    /// [`AskNext`] and [`crate::store::Store::mark_sent_and_claim_next`]); what it claimed comes
    /// back beside the attempt.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt(
        &self,
        permit: &ConnectionPermit,
        claim: Claim,
        to: &str,
        outgoing: &Outgoing,
        attempts: i64,
        created_at: i64,
        ask_next: Option<AskNext<'_>>,
    ) -> (Attempt, Next) {
        let _sending = self.inner.in_hand.sending(claim.id);
        let started = Instant::now();
        let mailer = &self.inner.mailer;
        let message = match outgoing {
            Outgoing::Nothing => {
                let (wait, outcome) = self
                    .inner
                    .recent_sends
                    .mimic(self.inner.policy.send_timeout);
                tokio::time::sleep(wait).await;
                return self
                    .record(claim, attempts, created_at, outcome, ask_next)
                    .await;
            }
            Outgoing::Confirmation { link } => mailer.confirmation(&ConfirmationEmail {
                id: claim.id.0,
                to_address: to,
                link,
            }),
            Outgoing::AccountNotice => mailer.account_notice(claim.id.0, to),
        };
        let result = match message {
            Ok(message) => {
                mailer
                    .send_on(permit, message)
                    .instrument(info_span!("smtp.send"))
                    .await
            }
            Err(e) => Err(SendError::Unbuildable(e.to_string())),
        };
        let took = started.elapsed();
        if result.is_ok() {
            self.inner.recent_sends.observe(took);
        }
        self.inner.recent_sends.record(&result, took);
        let (attempt, next) = self
            .record(claim, attempts, created_at, result, ask_next)
            .await;
        let outcome = match &attempt {
            Attempt::Sent => EmailOutcome::Sent,
            Attempt::Retrying { .. } => EmailOutcome::Retried,
            Attempt::Failed { .. } => EmailOutcome::Failed,
        };
        self.inner.metrics.observe_send(took, outcome);
        (attempt, next)
    }

    /// Writes what a send came to: sent, due again after a backoff, or failed for good. If the
    /// database refuses the write, the outcome is kept and written later (see [`in_hand`]):
    /// the send happened either way. The `attempts`-th attempt at an email signed up at
    /// `created_at` (Unix ms). With `ask_next`, asked as the outcome is written, claims the row
    /// due next with it.
    async fn record(
        &self,
        claim: Claim,
        attempts: i64,
        created_at: i64,
        result: Result<(), SendError>,
        ask_next: Option<AskNext<'_>>,
    ) -> (Attempt, Next) {
        let policy = &self.inner.policy;
        let (attempt, outcome) = match result {
            Ok(()) => (
                Attempt::Sent,
                Outcome::Sent {
                    at: clock::now_ms(),
                    link_expires_at: clock::ms_from_now(policy.token_ttl),
                },
            ),
            Err(error) if !error.is_retryable() => {
                let reason = error.to_string();
                (Attempt::Failed { error }, Outcome::Failed { error: reason })
            }
            Err(error) => {
                let now = clock::now_ms();
                let age = Duration::from_millis(u64::try_from(now - created_at).unwrap_or(0));
                let plural = if attempts == 1 { "" } else { "s" };
                match policy.retry.after_failure(attempts, age) {
                    AfterFailure::RetryIn(after) => {
                        let outcome = Outcome::Retry {
                            retry_in: after,
                            error: error.to_string(),
                        };
                        (Attempt::Retrying { after, error }, outcome)
                    }
                    AfterFailure::LinkExpires => {
                        let reason = format!(
                            "gave up after {attempts} attempt{plural} over {}: its link expires before the next: {error}",
                            readable(age)
                        );
                        (Attempt::Failed { error }, Outcome::Failed { error: reason })
                    }
                    AfterFailure::OutOfAttempts => {
                        let reason = format!("gave up after {attempts} attempt{plural}: {error}");
                        (Attempt::Failed { error }, Outcome::Failed { error: reason })
                    }
                }
            }
        };
        let store = &self.inner.store;
        // Asked now, after the send: a job or a sync request that began waiting during it goes
        // before the row due next.
        let written = match ask_next.and_then(|ask| ask()) {
            Some(lease) => outcome
                .write_and_claim_next(store, claim, lease)
                .await
                .map(|claimed| claimed.map_or(Next::NoneClaimed, Next::Claimed)),
            None => outcome.write(store, claim).await.map(|()| Next::NotAsked),
        };
        match written {
            Ok(next) => (attempt, next),
            Err(error) => {
                self.inner.in_hand.keep(claim, outcome, &error).await;
                (attempt, Next::NoneClaimed)
            }
        }
    }
}

/// A duration for a person, to the second: "23h 52m 10s".
fn readable(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
