//! What the pruner deletes (see `delivery::pruner`), and the cheap counts `/metrics` reads.
//!
//! Every prune is one batch: a `LIMIT`ed subselect picks the rows and locks them with
//! `FOR UPDATE SKIP LOCKED`, so the pruners of several instances take different rows instead of
//! waiting on each other, and a row a sender or a signup holds is left for the next pass. (The
//! expired signups take a second statement, which deletes each user with its tokens and emails:
//! see `prune_signups`.) Each
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
use crate::store::{ActiveCounts, Prune, Pruned, StoreError};

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

    /// Deletes at most `limit` rows of `what`.
    pub async fn prune(&self, what: Prune, limit: u32) -> Result<Pruned, StoreError> {
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
            Prune::ExpiredSignups {
                expired_before,
                created_before,
                failed_since,
            } => {
                let done = self
                    .prune_signups(expired_before, created_before, failed_since, limit)
                    .await;
                return self.wrote(done);
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
        Ok(Pruned::deleted(self.wrote(done)?.rows_affected(), limit))
    }

    /// Deletes at most `limit` pending signups whose every link expired before
    /// `expired_before` (among tokens created before `created_before`), with their tokens and
    /// emails, unless an email of theirs waits to be sent or failed since `failed_since`.
    ///
    /// Two statements in one transaction. The first picks the users and locks their rows,
    /// skipping any that a signup of the same address holds. The second, on a snapshot taken
    /// once those locks are held, checks each again and deletes it with its tokens and emails
    /// (the tables have no foreign keys to do it: see `20261207000100_no_foreign_keys.sql`).
    /// In one statement, a signup that added a live token and committed between that
    /// statement's snapshot and its lock would go unseen: its user would be deleted, and its
    /// token and email, written after the snapshot, left behind.
    async fn prune_signups(
        &self,
        expired_before: i64,
        created_before: i64,
        failed_since: i64,
        limit: i64,
    ) -> Result<Pruned, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let picked = sqlx::query_scalar!(
            "SELECT u.id FROM confirmation_tokens t
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
             LIMIT $4 FOR UPDATE OF u SKIP LOCKED",
            expired_before,
            created_before,
            failed_since,
            limit
        )
        .fetch_all(&mut *tx)
        .await?;
        // The pick counts tokens, and a user who signed up twice has two: whether more may be
        // left is read off the pick, not off the users deleted.
        let full = i64::try_from(picked.len()).is_ok_and(|picked| picked >= limit);
        if picked.is_empty() {
            return Ok(Pruned { rows: 0, full });
        }
        let deleted = sqlx::query!(
            "WITH doomed AS (
                 SELECT u.id FROM users u
                 WHERE u.id = ANY($1) AND u.status = 'pending'
                   AND NOT EXISTS (SELECT 1 FROM confirmation_tokens live
                                   WHERE live.user_id = u.id AND live.expires_at >= $2)
                   AND NOT (SELECT EXISTS (
                           SELECT 1 FROM email_outbox o
                           WHERE o.user_id = u.id
                             AND (o.state IN ('queued', 'sending')
                                  OR (o.state = 'failed' AND o.created_at >= $3))))
             ), tokens AS (
                 DELETE FROM confirmation_tokens
                 WHERE user_id = ANY(ARRAY(SELECT id FROM doomed))
             ), emails AS (
                 DELETE FROM email_outbox WHERE user_id = ANY(ARRAY(SELECT id FROM doomed))
             )
             DELETE FROM users WHERE id = ANY(ARRAY(SELECT id FROM doomed))",
            &picked,
            expired_before,
            failed_since
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Pruned {
            rows: deleted.rows_affected(),
            full,
        })
    }
}
