//! What the pruner deletes (see `delivery::pruner`), and the cheap counts `/metrics` reads.
//!
//! Every prune statement is one batch: a `LIMIT`ed subselect picks the rows and locks them with
//! `FOR UPDATE SKIP LOCKED`, so the pruners of several instances take different rows instead of
//! waiting on each other, and a row a sender or a signup holds is left for the next pass. Each
//! reads only the rows it may delete, off an index made for it
//! (`migrations/postgres/20261130000700_retention.sql` and
//! `20261201000100_tokens_by_creation.sql`). The picked keys are collected into an array (`=
//! ANY(ARRAY(…))`) rather than joined with `IN (…)`: with `IN`, the generic plan a
//! prepared statement may settle on hash-joins the picked rows against a sequential scan of the
//! whole table (184 ms per batch at 1,000,000 rows, against 2.4 ms for the same batch by the
//! primary key), and that cost would grow with the very table the pruner keeps small. For the
//! same reason the expired-signup delete walks the tokens' creation index in order (`ORDER BY
//! t.created_at`), and asks about a user's emails with a scalar `(SELECT EXISTS …)`, which the
//! planner runs per user off `email_outbox_user`: written as `NOT EXISTS`, its generic plan
//! scanned the whole outbox once per batch for the few rows that are queued, sending or
//! failed, and when nothing had expired it scanned every token.

use super::PostgresStore;
use crate::store::{ActiveCounts, Prune, StoreError};

impl PostgresStore {
    /// Queued, sending and failed emails, each counted off its partial index, never the sent
    /// rows.
    pub async fn active_counts(&self) -> Result<ActiveCounts, StoreError> {
        let row = sqlx::query!(
            r#"SELECT
                 (SELECT COUNT(*) FROM email_outbox WHERE state = 'queued') AS "queued!",
                 (SELECT COUNT(*) FROM email_outbox WHERE state = 'sending') AS "sending!",
                 (SELECT COUNT(*) FROM email_outbox WHERE state = 'failed') AS "failed!""#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ActiveCounts {
            queued: row.queued,
            sending: row.sending,
            failed: row.failed,
        })
    }

    /// Deletes at most `limit` rows of `what`; returns how many.
    pub async fn prune(&self, what: Prune, limit: u32) -> Result<u64, StoreError> {
        let limit = i64::from(limit);
        let done = match what {
            Prune::DoneEmails { written_before } => {
                sqlx::query!(
                    "DELETE FROM email_outbox WHERE id = ANY(ARRAY(
                         SELECT id FROM email_outbox
                         WHERE state IN ('sent', 'superseded') AND created_at < $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED))",
                    written_before,
                    limit
                )
                .execute(&self.pool)
                .await
            }
            Prune::FailedEmails { written_before } => {
                sqlx::query!(
                    "DELETE FROM email_outbox WHERE id = ANY(ARRAY(
                         SELECT id FROM email_outbox
                         WHERE state = 'failed' AND created_at < $1
                         LIMIT $2 FOR UPDATE SKIP LOCKED))",
                    written_before,
                    limit
                )
                .execute(&self.pool)
                .await
            }
            // The user's tokens and emails go with it (ON DELETE CASCADE). Its row is locked
            // first: a signup of the same address holds that lock while it adds a token, and is
            // skipped.
            Prune::ExpiredSignups {
                expired_before,
                created_before,
                failed_since,
            } => {
                sqlx::query!(
                    "DELETE FROM users WHERE id = ANY(ARRAY(
                         SELECT u.id FROM confirmation_tokens t
                         JOIN users u ON u.id = t.user_id
                         WHERE t.created_at < $2 AND t.expires_at < $1 AND u.status = 'pending'
                           AND NOT EXISTS (SELECT 1 FROM confirmation_tokens live
                                           WHERE live.user_id = u.id AND live.expires_at >= $1)
                           AND NOT (SELECT EXISTS (
                                   SELECT 1 FROM email_outbox o
                                   WHERE o.user_id = u.id
                                     AND (o.state IN ('queued', 'sending')
                                          OR (o.state = 'failed' AND o.created_at >= $3))))
                         ORDER BY t.created_at
                         LIMIT $4 FOR UPDATE OF u SKIP LOCKED))",
                    expired_before,
                    created_before,
                    failed_since,
                    limit
                )
                .execute(&self.pool)
                .await
            }
            Prune::ExpiredTokens {
                expired_before,
                created_before,
            } => {
                sqlx::query!(
                    "DELETE FROM confirmation_tokens WHERE token_hash = ANY(ARRAY(
                         SELECT t.token_hash FROM confirmation_tokens t
                         JOIN users u ON u.id = t.user_id
                         WHERE t.created_at < $2 AND t.expires_at < $1 AND u.status = 'confirmed'
                         ORDER BY t.created_at
                         LIMIT $3 FOR UPDATE OF t SKIP LOCKED))",
                    expired_before,
                    created_before,
                    limit
                )
                .execute(&self.pool)
                .await
            }
        };
        Ok(self.wrote(done)?.rows_affected())
    }
}
