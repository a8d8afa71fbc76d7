//! The outbox's state machine, as its senders drive it: claim a due row (`queued` -> `sending`,
//! under a lease), then record what the send came to (`sent`, back to `queued` with a backoff,
//! or `failed`). The sweeper takes back rows whose lease ran out and finds the due ones.
//!
//! Claims and outcomes are written by the group-commit [`writer`](super::writer), in the
//! transactions that write signups: with workers sending, they were two of the four transactions
//! each email cost, each a commit of its own. [`claim_rows`] claims every row a group asks for
//! with one statement, and [`record_outcomes`] writes a group's outcomes with one statement per
//! kind, their rows passed as a JSON array.
//!
//! Every outcome is written only while the row still carries the claim's id, so a sender whose
//! lease ran out cannot overwrite the outcome of the sender that took its row over. Claim ids are
//! `random()`: 64 random bits, which one row's claims do not repeat.
//!
//! These statements find their rows by id. The unary `+` before `state` and `next_attempt_at`
//! keeps SQLite from walking the index on `state` instead, which its planner prefers when the
//! database has no statistics, and which would read every queued (or sending) row per group.
//!
//! Times are the process's clock: one process owns the file.

use std::{collections::HashMap, time::Duration};

use sqlx::SqliteConnection;

use super::{
    SqliteStore,
    writer::{Pending, Write},
};
use crate::{
    clock,
    domain::TokenHash,
    store::{Claim, ClaimedEmail, OutboxId, StoreError, millis, records::ClaimedRow},
};

/// A sender asks for a row, to send it under a lease.
pub(super) struct ClaimRequest {
    pub(super) id: OutboxId,
    pub(super) lease: Duration,
}

/// What a send came to, to be recorded under its claim.
pub(super) struct OutcomeRequest {
    pub(super) claim: Claim,
    pub(super) outcome: Outcome,
}

pub(super) enum Outcome {
    Sent { at: i64, link_expires_at: i64 },
    Retry { retry_in: Duration, error: String },
    Failed { error: String },
}

/// Claims the rows of a group's claims that are queued and due: one statement for all the
/// claims that ask for the same lease (in practice, all of them). Claims are taken in order, so
/// of two claims of one row the first gets it and the second `None`, as if it came a moment
/// later.
pub(super) async fn claim_rows(
    conn: &mut SqliteConnection,
    claims: &[&ClaimRequest],
) -> Result<Vec<Result<Option<ClaimedEmail>, StoreError>>, sqlx::Error> {
    let now = clock::now_ms();
    let mut claimed: Vec<Option<Result<Option<ClaimedEmail>, StoreError>>> =
        claims.iter().map(|_| None).collect();
    while let Some(first) = claimed.iter().position(Option::is_none) {
        let lease = claims[first].lease;
        let alike: Vec<usize> = (first..claims.len())
            .filter(|&i| claimed[i].is_none() && claims[i].lease == lease)
            .collect();
        let mut ids: Vec<i64> = alike.iter().map(|&i| claims[i].id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids = serde_json::to_string(&ids).expect("numbers serialize");
        let lease_until = now.saturating_add(millis(lease));
        let mut rows: HashMap<i64, _> = sqlx::query_as!(
            ClaimedRow,
            r#"UPDATE email_outbox
               SET state = 'sending', lease_until = ?3, attempts = attempts + 1,
                   claim_id = random()
               WHERE id IN (SELECT value FROM json_each(?1))
                 AND +state = 'queued' AND +next_attempt_at <= ?2
               RETURNING id AS "id!", claim_id AS "claim_id!", kind AS "kind!",
                         recipient AS "recipient!", nonce, token AS legacy_token, token_hash,
                         attempts AS "attempts!", request_id, trace_context,
                         created_at AS "created_at!""#,
            ids,
            now,
            lease_until
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
        for i in alike {
            claimed[i] = Some(
                rows.remove(&claims[i].id.0)
                    .map(|row| ClaimedEmail::try_from(row).map_err(StoreError::from))
                    .transpose(),
            );
        }
    }
    Ok(claimed
        .into_iter()
        .map(|claim| claim.expect("every claim was tried"))
        .collect())
}

/// A row of [`record_outcomes`], as JSON for `json_each`.
#[derive(serde::Serialize)]
struct OutcomeRow<'a> {
    id: i64,
    claim_id: i64,
    /// Sent: when.
    at: Option<i64>,
    /// Sent: the link's new expiry.
    link_expires_at: Option<i64>,
    /// Retry: when the row is due again.
    next_attempt_at: Option<i64>,
    error: Option<&'a str>,
}

/// Records a group's outcomes, one statement per kind, each fenced by its claim: a stale claim's
/// outcome writes nothing. A sent row's token stays valid until at least the link's expiry; that
/// statement runs first, under the same fence, so it extends exactly the tokens of the rows the
/// next one marks sent.
pub(super) async fn record_outcomes(
    conn: &mut SqliteConnection,
    outcomes: &[&OutcomeRequest],
) -> Result<(), sqlx::Error> {
    let (mut sent, mut retry, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for OutcomeRequest { claim, outcome } in outcomes.iter().copied() {
        let mut row = OutcomeRow {
            id: claim.id.0,
            claim_id: claim.claim_id,
            at: None,
            link_expires_at: None,
            next_attempt_at: None,
            error: None,
        };
        match outcome {
            Outcome::Sent {
                at,
                link_expires_at,
            } => {
                row.at = Some(*at);
                row.link_expires_at = Some(*link_expires_at);
                sent.push(row);
            }
            Outcome::Retry { retry_in, error } => {
                // Due `retry_in` after the database took the outcome.
                row.next_attempt_at = Some(clock::ms_from_now(*retry_in));
                row.error = Some(error);
                retry.push(row);
            }
            Outcome::Failed { error } => {
                row.error = Some(error);
                failed.push(row);
            }
        }
    }
    if !sent.is_empty() {
        let sent = serde_json::to_string(&sent).expect("rows serialize");
        sqlx::query!(
            r#"UPDATE confirmation_tokens
               SET expires_at = MAX(expires_at, s.value ->> 'link_expires_at')
               FROM json_each(?1) AS s JOIN email_outbox AS o ON o.id = s.value ->> 'id'
               WHERE confirmation_tokens.token_hash = o.token_hash
                 AND +o.state = 'sending' AND o.claim_id = s.value ->> 'claim_id'"#,
            sent
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query!(
            r#"UPDATE email_outbox
               SET state = 'sent', sent_at = s.value ->> 'at', token = NULL, nonce = NULL,
                   lease_until = NULL, claim_id = NULL, last_error = NULL
               FROM json_each(?1) AS s
               WHERE email_outbox.id = s.value ->> 'id' AND +email_outbox.state = 'sending'
                 AND email_outbox.claim_id = s.value ->> 'claim_id'"#,
            sent
        )
        .execute(&mut *conn)
        .await?;
    }
    if !retry.is_empty() {
        let retry = serde_json::to_string(&retry).expect("rows serialize");
        sqlx::query!(
            r#"UPDATE email_outbox
               SET state = 'queued', next_attempt_at = s.value ->> 'next_attempt_at',
                   lease_until = NULL, claim_id = NULL, last_error = s.value ->> 'error'
               FROM json_each(?1) AS s
               WHERE email_outbox.id = s.value ->> 'id' AND +email_outbox.state = 'sending'
                 AND email_outbox.claim_id = s.value ->> 'claim_id'"#,
            retry
        )
        .execute(&mut *conn)
        .await?;
    }
    if !failed.is_empty() {
        let failed = serde_json::to_string(&failed).expect("rows serialize");
        sqlx::query!(
            r#"UPDATE email_outbox
               SET state = 'failed', lease_until = NULL, claim_id = NULL,
                   last_error = s.value ->> 'error'
               FROM json_each(?1) AS s
               WHERE email_outbox.id = s.value ->> 'id' AND +email_outbox.state = 'sending'
                 AND email_outbox.claim_id = s.value ->> 'claim_id'"#,
            failed
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl SqliteStore {
    /// Claims a queued, due row for sending: the row moves to `sending`, leased for `lease`,
    /// a new claim id fences it, and its attempt is counted. `None` when another sender has it,
    /// it is not due yet, or it was superseded: the caller simply moves on.
    ///
    /// Answered once the transaction holding the claim has committed: a claim that was rolled
    /// back (a commit refused by a full disk) must not be reported, or the email would be sent
    /// while its row stays queued, and again at every sweep.
    pub async fn claim(
        &self,
        id: OutboxId,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        self.hand_to_writer(|answer| {
            Write::Claim(Pending {
                request: ClaimRequest { id, lease },
                answer,
            })
        })
        .await
    }

    /// The SMTP server accepted the email. The outbox forgets the nonce (and a legacy raw
    /// token), so even the secret cannot rebuild this link from the database any more, and the
    /// link stays valid for a full `token.ttl_hours` from now, however long the email waited in
    /// the queue.
    pub async fn mark_sent(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
    ) -> Result<(), StoreError> {
        self.record(
            claim,
            Outcome::Sent {
                at: now,
                link_expires_at,
            },
        )
        .await
    }

    /// A failed attempt that may succeed later: back to the queue, due `retry_in` from now.
    pub async fn mark_retry(
        &self,
        claim: Claim,
        retry_in: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.record(claim, Outcome::Retry { retry_in, error }).await
    }

    /// Gave up: the address was refused, the attempts ran out, or the link expires first.
    /// The row and its nonce stay, so an operator can see why and put it back in the queue.
    pub async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.record(claim, Outcome::Failed { error }).await
    }

    async fn record(&self, claim: Claim, outcome: Outcome) -> Result<(), StoreError> {
        self.hand_to_writer(|answer| {
            Write::Outcome(Pending {
                request: OutcomeRequest { claim, outcome },
                answer,
            })
        })
        .await
    }

    /// Takes back rows whose sender's lease ran out (the process died mid-send, most likely):
    /// they go back to the queue, due now. Rows in `except` are left alone: their sender is alive
    /// in this process. Returns how many.
    pub async fn reclaim_expired_leases(&self, except: &[OutboxId]) -> Result<u64, StoreError> {
        let now = clock::now_ms();
        let except: Vec<i64> = except.iter().map(|id| id.0).collect();
        let except = serde_json::to_string(&except).expect("numbers serialize");
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'queued', lease_until = NULL, claim_id = NULL, next_attempt_at = ?1
             WHERE state = 'sending' AND lease_until < ?1
               AND id NOT IN (SELECT value FROM json_each(?2))",
            now,
            except
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        Ok(done.rows_affected())
    }

    /// Claims the oldest due row, as [`SqliteStore::claim`] claims one. One process owns the
    /// file, so this is rarely asked (a worker's row was claimed first only when the sweeper
    /// offered it twice); two workers asking at once may pick the same row, and one then gets
    /// `None`.
    pub async fn claim_next_due(
        &self,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        match self.due_emails(1).await?.first() {
            Some(&id) => self.claim(id, lease).await,
            None => Ok(None),
        }
    }

    /// Queued rows that are due, oldest first, at most `limit`.
    pub async fn due_emails(&self, limit: i64) -> Result<Vec<OutboxId>, StoreError> {
        let now = clock::now_ms();
        let ids = sqlx::query_scalar!(
            r#"SELECT id AS "id!" FROM email_outbox
               WHERE state = 'queued' AND next_attempt_at <= ?1
               ORDER BY next_attempt_at LIMIT ?2"#,
            now,
            limit
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().map(OutboxId).collect())
    }

    /// How many emails wait to be sent (queued or being sent).
    pub async fn backlog(&self) -> Result<i64, StoreError> {
        // One count per state, each off the partial index that holds only that state's rows;
        // `state IN (…)` matches neither index and would read the table.
        let count = sqlx::query_scalar!(
            r#"SELECT (SELECT COUNT(*) FROM email_outbox WHERE state = 'queued')
                    + (SELECT COUNT(*) FROM email_outbox WHERE state = 'sending') AS "count!: i64""#
        )
        .fetch_one(&self.reader)
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
        let (old, new) = (&old.0[..], &new.0[..]);
        // A storage fault here is noted for readiness like any other write's.
        let rehashed = async {
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query!(
                "UPDATE confirmation_tokens SET token_hash = ?2 WHERE token_hash = ?1",
                old,
                new
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "UPDATE email_outbox SET token_hash = ?2 WHERE id = ?1",
                id.0,
                new
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        };
        self.wrote(rehashed.await)
    }
}
