//! The operator's view of the outbox, for `confirmd outbox`: what the queue holds, which emails
//! failed and why, and putting failed emails back in the queue.

use super::SqliteStore;
use crate::{
    clock,
    store::{
        EmailKind, FailedEmail, KindCounts, OutboxCounts, OutboxId, OutboxState, Requeue,
        StoreError,
    },
};

impl SqliteStore {
    /// How many emails are in each state; a state with none counts zero.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT state AS "state!", COUNT(*) AS "count!: i64" FROM email_outbox GROUP BY state"#
        )
        .fetch_all(&self.reader)
        .await?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let slot = match row.state.parse()? {
                OutboxState::Queued => &mut counts.queued,
                OutboxState::Sending => &mut counts.sending,
                OutboxState::Sent => &mut counts.sent,
                OutboxState::Failed => &mut counts.failed,
                OutboxState::Superseded => &mut counts.superseded,
            };
            *slot = row.count;
        }
        Ok(counts)
    }

    /// How many rows send each kind of email; a kind with none counts zero. The kinds other
    /// than confirmations are counted off their partial index, and confirmations are the rest.
    pub async fn outbox_kinds(&self) -> Result<KindCounts, StoreError> {
        let total = sqlx::query_scalar!(r#"SELECT COUNT(*) AS "count!: i64" FROM email_outbox"#)
            .fetch_one(&self.reader)
            .await?;
        let rows = sqlx::query!(
            r#"SELECT kind AS "kind!", COUNT(*) AS "count!: i64" FROM email_outbox
               WHERE kind != 'confirmation' GROUP BY kind"#
        )
        .fetch_all(&self.reader)
        .await?;
        let mut counts = KindCounts {
            confirmation: total,
            ..KindCounts::default()
        };
        for row in rows {
            let slot = match row.kind.parse()? {
                EmailKind::Confirmation => continue,
                EmailKind::AccountNotice => &mut counts.account_notice,
                EmailKind::Suppressed => &mut counts.suppressed,
            };
            *slot = row.count;
            counts.confirmation -= row.count;
        }
        Ok(counts)
    }

    /// When the oldest email still waiting was written, if any waits.
    pub async fn oldest_queued_at(&self) -> Result<Option<i64>, StoreError> {
        let oldest = sqlx::query_scalar!(
            r#"SELECT MIN(created_at) AS "created_at: i64" FROM email_outbox WHERE state = 'queued'"#
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(oldest)
    }

    /// Failed emails, newest first, at most `limit`.
    pub async fn failed_emails(&self, limit: i64) -> Result<Vec<FailedEmail>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT id AS "id!", kind AS "kind!", recipient AS "recipient!",
                      attempts AS "attempts!", created_at AS "created_at!", last_error
               FROM email_outbox WHERE state = 'failed' ORDER BY id DESC LIMIT ?1"#,
            limit
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(FailedEmail {
                    id: OutboxId(r.id),
                    kind: r.kind.parse()?,
                    recipient: r.recipient,
                    attempts: r.attempts,
                    created_at: r.created_at,
                    last_error: r.last_error,
                })
            })
            .collect()
    }

    /// Puts one failed email back in the queue with a fresh set of attempts, due now. A running
    /// service's sweeper picks it up at its next sweep.
    pub async fn requeue(&self, id: OutboxId) -> Result<Requeue, StoreError> {
        let now = clock::now_ms();
        let done = sqlx::query!(
            "UPDATE email_outbox SET state = 'queued', attempts = 0, next_attempt_at = ?2, lease_until = NULL,
                 claim_id = NULL
             WHERE id = ?1 AND state = 'failed'
               AND (SELECT status FROM users WHERE users.id = email_outbox.user_id) = 'pending'",
            id.0,
            now
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        if done.rows_affected() == 1 {
            return Ok(Requeue::Requeued);
        }
        let row = sqlx::query!(
            r#"SELECT o.state AS "state!", u.status AS "status!"
               FROM email_outbox o JOIN users u ON u.id = o.user_id WHERE o.id = ?1"#,
            id.0
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(match row {
            None => Requeue::Unknown,
            Some(r) => Requeue::NotFailed {
                state: r.state.parse()?,
                status: r.status.parse()?,
            },
        })
    }

    /// Puts every failed email of a pending user back in the queue, due now; returns how many.
    pub async fn requeue_all_failed(&self) -> Result<u64, StoreError> {
        let now = clock::now_ms();
        let done = sqlx::query!(
            "UPDATE email_outbox SET state = 'queued', attempts = 0, next_attempt_at = ?1, lease_until = NULL,
                 claim_id = NULL
             WHERE state = 'failed'
               AND (SELECT status FROM users WHERE users.id = email_outbox.user_id) = 'pending'",
            now
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        Ok(done.rows_affected())
    }
}
