//! The operator's view of the outbox, for `confirmd outbox`: what the queue holds, which emails
//! failed and why, and putting failed emails back in the queue (due by the server's clock, so
//! whichever instance sweeps next picks them up).

use super::PostgresStore;
use crate::store::{
    EmailKind, FailedEmail, KindCounts, OutboxCounts, OutboxId, OutboxState, Requeue, StoreError,
};

impl PostgresStore {
    /// How many emails are in each state; a state with none counts zero.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let rows =
            sqlx::query!(r#"SELECT state, COUNT(*) AS "count!" FROM email_outbox GROUP BY state"#)
                .fetch_all(&self.pool)
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

    /// How many rows send each kind of email; a kind with none counts zero.
    pub async fn outbox_kinds(&self) -> Result<KindCounts, StoreError> {
        let rows =
            sqlx::query!(r#"SELECT kind, COUNT(*) AS "count!" FROM email_outbox GROUP BY kind"#)
                .fetch_all(&self.pool)
                .await?;
        let mut counts = KindCounts::default();
        for row in rows {
            let slot = match row.kind.parse()? {
                EmailKind::Confirmation => &mut counts.confirmation,
                EmailKind::AccountNotice => &mut counts.account_notice,
                EmailKind::Suppressed => &mut counts.suppressed,
            };
            *slot = row.count;
        }
        Ok(counts)
    }

    /// When the oldest email still waiting was written, if any waits.
    pub async fn oldest_queued_at(&self) -> Result<Option<i64>, StoreError> {
        let oldest =
            sqlx::query_scalar!("SELECT MIN(created_at) FROM email_outbox WHERE state = 'queued'")
                .fetch_one(&self.pool)
                .await?;
        Ok(oldest)
    }

    /// Failed emails, newest first, at most `limit`.
    pub async fn failed_emails(&self, limit: i64) -> Result<Vec<FailedEmail>, StoreError> {
        let rows = sqlx::query!(
            "SELECT id, kind, recipient, attempts, created_at, last_error
             FROM email_outbox WHERE state = 'failed' ORDER BY id DESC LIMIT $1",
            limit
        )
        .fetch_all(&self.pool)
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
        let done = sqlx::query!(
            "UPDATE email_outbox o
             SET state = 'queued', attempts = 0, next_attempt_at = confirmd_now_ms(),
                 lease_until = NULL, claim_id = NULL
             FROM users u
             WHERE o.id = $1 AND o.state = 'failed' AND u.id = o.user_id AND u.status = 'pending'",
            id.0
        )
        .execute(&self.pool)
        .await;
        if self.wrote(done)?.rows_affected() == 1 {
            return Ok(Requeue::Requeued);
        }
        let row = sqlx::query!(
            "SELECT o.state, u.status
             FROM email_outbox o JOIN users u ON u.id = o.user_id WHERE o.id = $1",
            id.0
        )
        .fetch_optional(&self.pool)
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
        let done = sqlx::query!(
            "UPDATE email_outbox o
             SET state = 'queued', attempts = 0, next_attempt_at = confirmd_now_ms(),
                 lease_until = NULL, claim_id = NULL
             FROM users u
             WHERE o.state = 'failed' AND u.id = o.user_id AND u.status = 'pending'"
        )
        .execute(&self.pool)
        .await;
        Ok(self.wrote(done)?.rows_affected())
    }
}
