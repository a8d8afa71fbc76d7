//! What the pruner deletes (see `delivery::pruner`), and the cheap counts `/metrics` reads.
//!
//! Every prune statement is one batch in a transaction of its own, through the writer
//! connection: it waits for the signup group being written, holds the write lock for one batch,
//! and the group-commit writer gets it back at once. Each reads only the rows it may delete, off
//! an index made for it (`migrations/sqlite/20261130000700_retention.sql` and
//! `20261201000100_tokens_by_creation.sql`). The joins from tokens to users are `CROSS JOIN`s,
//! which in SQLite fix the order: old tokens first (a range of the creation index, filtered by
//! expiry), then each one's user. Left to itself, the planner may read every user and look up
//! each one's tokens.

use super::SqliteStore;
use crate::store::{ActiveCounts, Prune, Pruned, StoreError};

impl SqliteStore {
    /// Queued, sending and failed emails, each counted off an index that holds only its state's
    /// rows (or leads with the state), never the sent rows.
    pub async fn active_counts(&self) -> Result<ActiveCounts, StoreError> {
        let row = sqlx::query!(
            r#"SELECT
                 (SELECT COUNT(*) FROM email_outbox WHERE state = 'queued') AS "queued!: i64",
                 (SELECT COUNT(*) FROM email_outbox WHERE state = 'sending') AS "sending!: i64",
                 (SELECT COUNT(*) FROM email_outbox WHERE state = 'failed') AS "failed!: i64""#
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(ActiveCounts {
            queued: row.queued,
            sending: row.sending,
            failed: row.failed,
        })
    }

    /// Deletes at most `limit` rows of `what`.
    pub async fn prune(&self, what: Prune, limit: u32) -> Result<Pruned, StoreError> {
        let limit = i64::from(limit);
        let done = match what {
            Prune::DoneEmails { written_before } => {
                sqlx::query!(
                    "DELETE FROM email_outbox WHERE id IN (
                         SELECT id FROM email_outbox
                         WHERE state IN ('sent', 'superseded') AND created_at < ?1
                         LIMIT ?2)",
                    written_before,
                    limit
                )
                .execute(&self.writer)
                .await
            }
            Prune::FailedEmails { written_before } => {
                sqlx::query!(
                    "DELETE FROM email_outbox WHERE id IN (
                         SELECT id FROM email_outbox
                         WHERE state = 'failed' AND created_at < ?1
                         LIMIT ?2)",
                    written_before,
                    limit
                )
                .execute(&self.writer)
                .await
            }
            // The user's tokens and emails go with it (ON DELETE CASCADE, over their user_id
            // indexes). DISTINCT: the limit counts users, not their tokens, so that a batch
            // comes back full for as long as users are left to delete. The ORDER BY keeps the
            // walk on the creation index: DISTINCT alone is planned as a scan of every token in
            // user order, which yields the users distinct without a temporary B-tree.
            Prune::ExpiredSignups {
                expired_before,
                created_before,
                failed_since,
            } => {
                sqlx::query!(
                    "DELETE FROM users WHERE id IN (
                         SELECT DISTINCT t.user_id FROM confirmation_tokens t
                         CROSS JOIN users u ON u.id = t.user_id
                         WHERE t.created_at < ?4 AND t.expires_at < ?1 AND u.status = 'pending'
                           AND NOT EXISTS (SELECT 1 FROM confirmation_tokens live
                                           WHERE live.user_id = t.user_id AND live.expires_at >= ?1)
                           AND NOT EXISTS (SELECT 1 FROM email_outbox o
                                           WHERE o.user_id = t.user_id
                                             AND (o.state IN ('queued', 'sending')
                                                  OR (o.state = 'failed' AND o.created_at >= ?2)))
                         ORDER BY t.created_at LIMIT ?3)",
                    expired_before,
                    failed_since,
                    limit,
                    created_before
                )
                .execute(&self.writer)
                .await
            }
            Prune::ExpiredTokens {
                expired_before,
                created_before,
            } => {
                sqlx::query!(
                    "DELETE FROM confirmation_tokens WHERE token_hash IN (
                         SELECT t.token_hash FROM confirmation_tokens t
                         CROSS JOIN users u ON u.id = t.user_id
                         WHERE t.created_at < ?3 AND t.expires_at < ?1 AND u.status = 'confirmed'
                         LIMIT ?2)",
                    expired_before,
                    limit,
                    created_before
                )
                .execute(&self.writer)
                .await
            }
        };
        Ok(Pruned::deleted(self.wrote(done)?.rows_affected(), limit))
    }
}
