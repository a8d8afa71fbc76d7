//! The outbox's state machine, as its senders drive it: claim a due row (`queued` -> `sending`,
//! under a lease), then record what the send came to (`sent`, back to `queued` with a backoff,
//! or `failed`). The sweeper takes back rows whose lease ran out and finds the due ones.
//!
//! Every outcome is written only while the row still carries the claim's id, so a sender whose
//! lease ran out cannot overwrite the outcome of the sender that took its row over. Claim ids are
//! `random()`: 64 random bits, which one row's claims do not repeat.
//!
//! Times are the process's clock: one process owns the file.

use std::time::Duration;

use super::SqliteStore;
use crate::{
    clock,
    domain::{TokenHash, TokenNonce},
    store::{Claim, ClaimedEmail, OutboxId, StoreError, millis},
};

impl SqliteStore {
    /// Claims a queued, due row for sending: the row moves to `sending`, leased for `lease`,
    /// a new claim id fences it, and its attempt is counted. `None` when another sender has it,
    /// it is not due yet, or it was superseded: the caller simply moves on.
    pub async fn claim(
        &self,
        id: OutboxId,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        let now = clock::now_ms();
        let lease_until = now.saturating_add(millis(lease));
        let row = sqlx::query!(
            r#"UPDATE email_outbox
               SET state = 'sending', lease_until = ?3, attempts = attempts + 1,
                   claim_id = random()
               WHERE id = ?1 AND state = 'queued' AND next_attempt_at <= ?2
               RETURNING id AS "id!", claim_id AS "claim_id!", kind AS "kind!",
                         recipient AS "recipient!", nonce, token, token_hash,
                         attempts AS "attempts!", request_id, trace_context,
                         created_at AS "created_at!""#,
            id.0,
            now,
            lease_until
        )
        // Stepped to the end, not just to its row: the statement commits (it runs outside a
        // transaction) only when it completes, and a commit that fails (a full disk) then shows
        // as an error here. Stopping at the first row would report a claim that was rolled back,
        // and the email would be sent while its row stays queued, again at every sweep.
        .fetch_all(&self.writer)
        .await
        .map(|rows| rows.into_iter().next());
        let row = self.wrote(row)?;
        row.map(|r| {
            Ok(ClaimedEmail {
                claim: Claim {
                    id: OutboxId(r.id),
                    claim_id: r.claim_id,
                },
                kind: r.kind.parse()?,
                recipient: r.recipient,
                nonce: r
                    .nonce
                    .and_then(|n| <[u8; 32]>::try_from(n).ok())
                    .map(TokenNonce),
                legacy_token: r.token,
                token_hash: r
                    .token_hash
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                    .map(TokenHash),
                attempts: r.attempts,
                request_id: r.request_id,
                trace_context: r.trace_context,
                created_at: r.created_at,
            })
        })
        .transpose()
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
        let written = self.write_sent(claim, now, link_expires_at).await;
        self.wrote(written)
    }

    async fn write_sent(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'sent', sent_at = ?2, token = NULL, nonce = NULL, lease_until = NULL,
                 claim_id = NULL, last_error = NULL
             WHERE id = ?1 AND state = 'sending' AND claim_id = ?3",
            claim.id.0,
            now,
            claim.claim_id
        )
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            sqlx::query!(
                "UPDATE confirmation_tokens SET expires_at = MAX(expires_at, ?2)
                 WHERE token_hash = (SELECT token_hash FROM email_outbox WHERE id = ?1)",
                claim.id.0,
                link_expires_at
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A failed attempt that may succeed later: back to the queue, due `retry_in` from now.
    pub async fn mark_retry(
        &self,
        claim: Claim,
        retry_in: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        let next_attempt_at = clock::ms_from_now(retry_in);
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'queued', next_attempt_at = ?2, lease_until = NULL, claim_id = NULL,
                 last_error = ?3
             WHERE id = ?1 AND state = 'sending' AND claim_id = ?4",
            claim.id.0,
            next_attempt_at,
            error,
            claim.claim_id
        )
        .execute(&self.writer)
        .await;
        self.wrote(done)?;
        Ok(())
    }

    /// Gave up: the address was refused, the attempts ran out, or the link expires first.
    /// The row and its nonce stay, so an operator can see why and put it back in the queue.
    pub async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'failed', lease_until = NULL, claim_id = NULL, last_error = ?2
             WHERE id = ?1 AND state = 'sending' AND claim_id = ?3",
            claim.id.0,
            error,
            claim.claim_id
        )
        .execute(&self.writer)
        .await;
        self.wrote(done)?;
        Ok(())
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
        let count = sqlx::query_scalar!(
            r#"SELECT COUNT(*) AS "count!: i64" FROM email_outbox WHERE state IN ('queued', 'sending')"#
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
