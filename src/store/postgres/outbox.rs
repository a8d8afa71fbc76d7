//! The outbox's state machine, as its senders on every instance drive it: claim a due row
//! (`queued` -> `sending`, under a lease), then record what the send came to (`sent`, back to
//! `queued` with a backoff, or `failed`). The sweepers take back rows whose lease ran out and
//! find the due ones.
//!
//! A claim takes the row with `FOR UPDATE SKIP LOCKED`: when every instance is woken for one
//! new row, one claims it and the others find nothing at once, instead of waiting on its lock to
//! learn the same. The claim writes the next id of a sequence into the row, and every outcome is
//! written only while the row still carries it, so a sender whose lease ran out cannot
//! overwrite the outcome of the sender that took its row over, on whichever instance.
//!
//! Every lease and due time is set and compared by the server's clock (`confirmd_now_ms()`).
//!
//! A claim is asked for one row at a time, by a worker that already holds an SMTP connection
//! for it: a worker that took several would lease emails that then wait for connections, their
//! leases running on while they wait. What is batched is the writing: the claims and the
//! outcomes that this instance's workers ask for at the same time go to the server together
//! ([`super::batch`]), one statement for all the claims, one for each kind of outcome. A worker
//! going through a backlog asks for its next row with the outcome of its last: the statement
//! that writes the sent rows also claims the rows due next (complete-and-fetch), so an email
//! costs a drain one statement where it cost two.

use std::{collections::HashMap, time::Duration};

use sqlx::{PgConnection, PgPool};

use super::{PostgresStore, batch::Batch};
use crate::{
    domain::TokenHash,
    store::{Claim, ClaimedEmail, OutboxId, StoreError, millis, records::ClaimedRow},
};

impl PostgresStore {
    /// Claims a queued, due row for sending: the row moves to `sending`, leased for `lease`, a
    /// new claim id fences it, and its attempt is counted. `None` when another sender has it
    /// (or is claiming it right now), it is not due yet, or it was superseded. Written with the
    /// other claims this instance's workers make at the same time (see [`super::batch`]).
    pub async fn claim(
        &self,
        id: OutboxId,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        self.claims.write((id, lease)).await
    }

    /// Claims the oldest due row no sender holds, as [`PostgresStore::claim`] claims one row:
    /// for a worker offered no row in particular (a sweeper's find, another instance's signup)
    /// or whose own row another sender took first. `None` when no due row is free. Written with
    /// the other such claims of this instance's workers ([`NextDue`]).
    pub async fn claim_next_due(
        &self,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        self.next_due.write(lease).await
    }

    /// The SMTP server accepted the email. The outbox forgets the nonce, so even the secret
    /// cannot rebuild this link from the database any more, and the link stays valid until
    /// `link_expires_at`, however long the email waited in the queue. The token's expiry moves
    /// only if the row was still this claim's.
    pub async fn mark_sent(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
    ) -> Result<(), StoreError> {
        let sent = Outcome::Sent {
            at: now,
            link_expires_at,
        };
        self.outcomes.write((claim, sent, None)).await.map(drop)
    }

    /// [`PostgresStore::mark_sent`], and in the same statement [`PostgresStore::claim_next_due`]
    /// for the worker that sent it: a worker going through a backlog records one email and takes
    /// the next in one round trip where it took two. `None` when no due row is free.
    pub async fn mark_sent_and_claim_next(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        let sent = Outcome::Sent {
            at: now,
            link_expires_at,
        };
        self.outcomes.write((claim, sent, Some(lease))).await
    }

    /// A failed attempt that may succeed later: back to the queue, due `retry_in` from now.
    pub async fn mark_retry(
        &self,
        claim: Claim,
        retry_in: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        let retry = Outcome::Retry {
            retry_in,
            error: error.to_owned(),
        };
        self.outcomes.write((claim, retry, None)).await.map(drop)
    }

    /// Gave up: the address was refused, the attempts ran out, or the link expires first.
    /// The row and its nonce stay, so an operator can see why and put it back in the queue.
    pub async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        let failed = Outcome::Failed {
            error: error.to_owned(),
        };
        self.outcomes.write((claim, failed, None)).await.map(drop)
    }

    /// Takes back rows whose sender's lease ran out (its instance died mid-send, most likely):
    /// they go back to the queue, due now. Rows in `except` are left alone: their sender is
    /// alive in this process. Rows being claimed or written right now are skipped, not waited
    /// for. Returns how many.
    pub async fn reclaim_expired_leases(&self, except: &[OutboxId]) -> Result<u64, StoreError> {
        let except: Vec<i64> = except.iter().map(|id| id.0).collect();
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'queued', lease_until = NULL, claim_id = NULL,
                 next_attempt_at = confirmd_now_ms()
             WHERE id IN (SELECT id FROM email_outbox
                          WHERE state = 'sending' AND lease_until < confirmd_now_ms()
                            AND id <> ALL($1)
                          FOR UPDATE SKIP LOCKED)",
            &except
        )
        .execute(&self.pool)
        .await;
        Ok(self.wrote(done)?.rows_affected())
    }

    /// Queued rows that are due, oldest first, at most `limit`.
    pub async fn due_emails(&self, limit: i64) -> Result<Vec<OutboxId>, StoreError> {
        let ids = sqlx::query_scalar!(
            "SELECT id FROM email_outbox
             WHERE state = 'queued' AND next_attempt_at <= confirmd_now_ms()
             ORDER BY next_attempt_at LIMIT $1",
            limit
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(OutboxId).collect())
    }

    /// How many emails wait to be sent (queued or being sent), on every instance.
    pub async fn backlog(&self) -> Result<i64, StoreError> {
        // One count per state: each is a range of a partial index. `state IN (…)` is planned as
        // a scan of the whole table (205 ms at 1,000,000 rows, against 0.3–0.8 ms this way).
        let count = sqlx::query_scalar!(
            r#"SELECT (SELECT COUNT(*) FROM email_outbox WHERE state = 'queued')
                    + (SELECT COUNT(*) FROM email_outbox WHERE state = 'sending') AS "count!""#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    /// The secret changed between a signup and its send: the link about to go out carries a
    /// token derived with the new secret, so its hash replaces the one stored at signup.
    pub async fn rehash_token(
        &self,
        id: OutboxId,
        old: &TokenHash,
        new: &TokenHash,
    ) -> Result<(), StoreError> {
        let done = sqlx::query!(
            "WITH token AS (
                 UPDATE confirmation_tokens SET token_hash = $3 WHERE token_hash = $2
             )
             UPDATE email_outbox SET token_hash = $3 WHERE id = $1",
            id.0,
            &old.0[..],
            &new.0[..]
        )
        .execute(&self.pool)
        .await;
        self.wrote(done)?;
        Ok(())
    }
}

/// What a send came to, as a batch of outcomes writes it.
#[derive(Debug)]
pub(super) enum Outcome {
    Sent { at: i64, link_expires_at: i64 },
    Retry { retry_in: Duration, error: String },
    Failed { error: String },
}

/// What a batch of claims adds to the sequence's values to make its claim ids: a random number
/// between 2^40 and 2^62, drawn for each batch.
///
/// Claims commit without waiting for the WAL flush (see the module docs of `super`), and so
/// does the sequence's advance that `nextval` logs with them: a crash of the server may rewind
/// the sequence and hand out again ids that claims lost in the crash carried. A worker that
/// held such a claim keeps its outcome and writes it once the server is back; were the row
/// claimed again under the same id, that stale outcome would pass the fence. With the offset,
/// a rewound value names another claim id but with odds of about 2^-62 per pair. Rows a sync
/// signup writes claimed take the sequence's value alone, below 2^40 for a trillion claims.
fn claim_offset() -> i64 {
    const LOW: u64 = 1 << 40;
    let spread = (1u64 << 62) - LOW;
    // The operating system's random source failing is not worth refusing a claim for: the
    // clock's nanoseconds still differ from one batch to the next.
    let random = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    }) % spread;
    i64::try_from(LOW + random).expect("below 2^62")
}

/// Claims, written by one statement per batch.
pub(super) struct Claims;

impl Batch for Claims {
    type Request = (OutboxId, Duration);
    type Answer = Option<ClaimedEmail>;

    /// One statement claims every row of the batch that is free and due; a row another
    /// instance holds is skipped, never waited for, so two instances' batches never wait on
    /// each other. An id asked for twice is claimed once, for the first who asked. Every worker
    /// asks with the same lease (`worker.lease_ms`); the batch's longest is given to all.
    ///
    /// Each row is looked up by its key alone, locked, and only then checked for being queued
    /// and due. Asked with `state = 'queued'` in the lookup, the statement let PostgreSQL
    /// choose the queue's partial index instead, read from end to end and filtered by id: the
    /// cheapest plan while the queue is short. A prepared statement keeps the plan it settled
    /// on until the table is next analysed, so through a burst every claim read the whole
    /// queue (BENCHMARKS.md 9.5). By key, a row costs one lookup at any queue length; the ids
    /// come through `confirmd_ids` so that plan is made once, not at every run (see its
    /// migration).
    async fn write(
        &self,
        pool: &PgPool,
        requests: &[(OutboxId, Duration)],
    ) -> Result<Vec<Result<Option<ClaimedEmail>, StoreError>>, sqlx::Error> {
        let mut ids: Vec<i64> = requests.iter().map(|(id, _)| id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let lease = requests.iter().map(|(_, lease)| *lease).max();
        let rows = sqlx::query_as!(
            ClaimedRow,
            "WITH locked AS (
                 SELECT row.* FROM confirmd_ids($1) AS asked(id) CROSS JOIN LATERAL (
                     SELECT id, state, next_attempt_at FROM email_outbox
                     WHERE id = asked.id
                     FOR UPDATE SKIP LOCKED
                 ) AS row
             )
             UPDATE email_outbox o
             SET state = 'sending', lease_until = confirmd_now_ms() + $2,
                 attempts = o.attempts + 1, claim_id = nextval('email_outbox_claims') + $3
             FROM locked
             WHERE o.id = locked.id
               AND locked.state = 'queued' AND locked.next_attempt_at <= confirmd_now_ms()
             RETURNING o.id, o.claim_id AS \"claim_id!\", o.kind, o.recipient, o.nonce,
                       NULL::TEXT AS legacy_token, o.token_hash, o.attempts, o.request_id,
                       o.trace_context, o.created_at",
            &ids,
            millis(lease.unwrap_or_default()),
            claim_offset()
        )
        .fetch_all(pool)
        .await?;
        let mut claimed: HashMap<i64, Result<ClaimedEmail, StoreError>> = rows
            .into_iter()
            .map(|row| {
                (
                    row.id,
                    ClaimedEmail::try_from(row).map_err(StoreError::from),
                )
            })
            .collect();
        Ok(requests
            .iter()
            .map(|(id, _)| claimed.remove(&id.0).transpose())
            .collect())
    }
}

/// Claims of whichever rows are due, by one statement per batch: the oldest due rows no sender
/// holds, one for each request, skipping rows another instance has locked.
///
/// The claim is the function `confirmd_claim_due`, so that it walks the queue's index in order
/// under any statistics: planned as a statement of its own on a young table, it sorted every
/// queued row for each claim (see its migration, `20261201000200_claim_due.sql`).
pub(super) struct NextDue;

impl Batch for NextDue {
    type Request = Duration;
    type Answer = Option<ClaimedEmail>;

    async fn write(
        &self,
        pool: &PgPool,
        leases: &[Duration],
    ) -> Result<Vec<Result<Option<ClaimedEmail>, StoreError>>, sqlx::Error> {
        // Every worker asks with the same lease (`worker.lease_ms`); the batch's longest is
        // given to all, so none gets less than it asked for.
        let lease = leases.iter().max().copied().unwrap_or_default();
        let rows = sqlx::query_as!(
            ClaimedRow,
            "SELECT id AS \"id!\", claim_id AS \"claim_id!\", kind AS \"kind!\",
                    recipient AS \"recipient!\", nonce, NULL::TEXT AS legacy_token, token_hash,
                    attempts AS \"attempts!\", request_id, trace_context,
                    created_at AS \"created_at!\"
             FROM confirmd_claim_due($1, $2, $3, '{}')",
            leases.len() as i64,
            millis(lease),
            claim_offset()
        )
        .fetch_all(pool)
        .await?;
        let mut claimed = rows
            .into_iter()
            .map(|row| ClaimedEmail::try_from(row).map_err(StoreError::from));
        Ok(leases.iter().map(|_| claimed.next().transpose()).collect())
    }
}

/// Outcomes, written by one statement for each kind of outcome in a batch, in one transaction
/// when there is more than one kind. A sent outcome may also ask for the row due next (its
/// lease): the statement that writes the sent rows claims those too.
pub(super) struct Outcomes;

impl Batch for Outcomes {
    type Request = (Claim, Outcome, Option<Duration>);
    type Answer = Option<ClaimedEmail>;

    /// Each row is written only while it still carries its claim's id; a stale claim (its lease
    /// ran out and another sender took the row) writes nothing, and is not an error.
    async fn write(
        &self,
        pool: &PgPool,
        requests: &[(Claim, Outcome, Option<Duration>)],
    ) -> Result<Vec<Result<Option<ClaimedEmail>, StoreError>>, sqlx::Error> {
        let mut rows = OutcomeRows::default();
        for (claim, outcome, next) in requests {
            rows.push(claim, outcome, *next);
        }
        // A batch of one kind (all sent, as a drain's are) is one statement, committed alone:
        // BEGIN and COMMIT around it would be two more round trips for each batch.
        let claimed = if rows.kinds() > 1 {
            let mut tx = pool.begin().await?;
            let claimed = rows.write(&mut tx).await?;
            tx.commit().await?;
            claimed
        } else {
            rows.write(&mut *pool.acquire().await?).await?
        };
        // The rows claimed go to the requests that asked for one, in order. A row that cannot
        // be read claims nothing for its requester, whose outcome is written: it comes back
        // when its lease runs out, to fail where it is read again.
        let mut claimed = claimed.into_iter().map(|row| {
            ClaimedEmail::try_from(row)
                .inspect_err(|e| tracing::error!(error = %e, "cannot read a claimed email"))
                .ok()
        });
        Ok(requests
            .iter()
            .map(|(_, outcome, next)| match (outcome, next) {
                (Outcome::Sent { .. }, Some(_)) => Ok(claimed.next().flatten()),
                _ => Ok(None),
            })
            .collect())
    }
}

/// A batch's outcomes, each kind's rows as the columns its statement unnests.
#[derive(Default)]
struct OutcomeRows {
    sent: Fenced,
    sent_at: Vec<i64>,
    link_expires: Vec<i64>,
    /// The leases of the rows due next that sent outcomes asked for, one each.
    next: Vec<Duration>,
    retried: Fenced,
    retry_in_ms: Vec<i64>,
    retry_errors: Vec<String>,
    failed: Fenced,
    fail_errors: Vec<String>,
}

impl OutcomeRows {
    /// Adds an outcome; `next`, the lease of the row due next it asks for, counts only with a
    /// sent one (the only kind that asks).
    fn push(&mut self, claim: &Claim, outcome: &Outcome, next: Option<Duration>) {
        match outcome {
            Outcome::Sent {
                at,
                link_expires_at,
            } => {
                self.sent.push(claim);
                self.sent_at.push(*at);
                self.link_expires.push(*link_expires_at);
                self.next.extend(next);
            }
            Outcome::Retry { retry_in, error } => {
                self.retried.push(claim);
                self.retry_in_ms.push(millis(*retry_in));
                self.retry_errors.push(error.clone());
            }
            Outcome::Failed { error } => {
                self.failed.push(claim);
                self.fail_errors.push(error.clone());
            }
        }
    }

    /// How many kinds of outcome the batch holds: one statement each.
    fn kinds(&self) -> usize {
        [&self.sent, &self.retried, &self.failed]
            .iter()
            .filter(|kind| !kind.ids.is_empty())
            .count()
    }

    /// One statement for each kind in the batch, on `conn`; returns the rows due next claimed
    /// with the sent ones.
    ///
    /// The sent rows' statement also claims as many of the oldest due rows as were asked for,
    /// through the function [`NextDue`] calls. The function claims on a snapshot of its own,
    /// taken after this statement's: on it, another instance may have put one of the sent rows
    /// back in the queue (its lease ran out), and claimed there, the row would fail this
    /// statement's own update of it. So the sent rows are excluded from the claim by id.
    async fn write(&self, conn: &mut PgConnection) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        let mut claimed = Vec::new();
        if !self.sent.ids.is_empty() {
            let lease = self.next.iter().max().copied().unwrap_or_default();
            claimed = sqlx::query_as!(
                ClaimedRow,
                "WITH outcome AS (
                     SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[])
                         AS outcome(id, claim_id, sent_at, link_expires_at)
                 ), sent AS (
                     UPDATE email_outbox o
                     SET state = 'sent', sent_at = outcome.sent_at, nonce = NULL,
                         lease_until = NULL, claim_id = NULL, last_error = NULL
                     FROM outcome
                     WHERE o.id = outcome.id AND o.state = 'sending'
                       AND o.claim_id = outcome.claim_id
                     RETURNING o.token_hash, outcome.link_expires_at
                 ), token AS (
                     UPDATE confirmation_tokens t
                     SET expires_at = GREATEST(t.expires_at, sent.link_expires_at)
                     FROM sent WHERE t.token_hash = sent.token_hash
                 )
                 SELECT id AS \"id!\", claim_id AS \"claim_id!\", kind AS \"kind!\",
                        recipient AS \"recipient!\", nonce, NULL::TEXT AS legacy_token,
                        token_hash, attempts AS \"attempts!\", request_id, trace_context,
                        created_at AS \"created_at!\"
                 FROM confirmd_claim_due($5, $6, $7, $1)",
                &self.sent.ids,
                &self.sent.claim_ids,
                &self.sent_at,
                &self.link_expires,
                self.next.len() as i64,
                millis(lease),
                claim_offset()
            )
            .fetch_all(&mut *conn)
            .await?;
        }
        if !self.retried.ids.is_empty() {
            sqlx::query!(
                "UPDATE email_outbox o
                 SET state = 'queued', next_attempt_at = confirmd_now_ms() + outcome.retry_in_ms,
                     lease_until = NULL, claim_id = NULL, last_error = outcome.error
                 FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[])
                     AS outcome(id, claim_id, retry_in_ms, error)
                 WHERE o.id = outcome.id AND o.state = 'sending' AND o.claim_id = outcome.claim_id",
                &self.retried.ids,
                &self.retried.claim_ids,
                &self.retry_in_ms,
                &self.retry_errors
            )
            .execute(&mut *conn)
            .await?;
        }
        if !self.failed.ids.is_empty() {
            sqlx::query!(
                "UPDATE email_outbox o
                 SET state = 'failed', lease_until = NULL, claim_id = NULL,
                     last_error = outcome.error
                 FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[])
                     AS outcome(id, claim_id, error)
                 WHERE o.id = outcome.id AND o.state = 'sending' AND o.claim_id = outcome.claim_id",
                &self.failed.ids,
                &self.failed.claim_ids,
                &self.fail_errors
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok(claimed)
    }
}

/// The rows one kind of outcome is written to, and the claims that fence them.
#[derive(Default)]
struct Fenced {
    ids: Vec<i64>,
    claim_ids: Vec<i64>,
}

impl Fenced {
    fn push(&mut self, claim: &Claim) {
        self.ids.push(claim.id.0);
        self.claim_ids.push(claim.claim_id);
    }
}
