//! The checkpointer: copies the write-ahead log's pages into the database file, off the writer's
//! path.
//!
//! In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them into the
//! database file and syncs it, so that the log can start over. Left to itself, SQLite checkpoints
//! in the connection whose commit takes the log past 1,000 pages: here that is the writer, every
//! signup, claim and outcome waiting while it writes those pages to their places in the file
//! and waits for the disk. On a large file those places are scattered, and a pruner deleting old
//! rows fills the log quickly; the checkpoints were most of the signups' p99 (BENCHMARKS.md,
//! 10.1).
//!
//! So the writer's own checkpoint is only a backstop ([`WRITER_CHECKPOINT_PAGES`]), and a task
//! on a connection of its own looks at the log every [`LOOK_EVERY`] and, once it holds
//! [`COPY_AT_PAGES`] pages not yet copied (SQLite's own threshold), runs a `PASSIVE` checkpoint.
//! `PASSIVE` never waits for the writer or readers and never blocks them: it copies what no
//! reader still needs, and the writer goes on appending meanwhile. Once the whole log is copied,
//! the writer's next commit starts it over from its beginning, and that commit syncs the log's
//! new header: waiting for 1,000 pages, not copying at every look, keeps those syncs as rare as
//! they were. Under a write load that leaves no gap for the task to finish, the log grows to the
//! backstop and the writer copies what remains, the pages written since the task's last pass.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the checkpointer looks at the log.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Pages of log not yet in the database file at which the checkpointer copies them: SQLite's
/// default for its own checkpoints.
pub(super) const COPY_AT_PAGES: i64 = 1_000;

/// Pages of log (4 KiB each) past which the writer checkpoints after its commit: ten times
/// SQLite's default, so the writer checkpoints only when the task falls behind or is down. The
/// `-wal` file can so reach about 40 MiB under a sustained write load; it keeps its largest size
/// on disk, as it did at SQLite's default.
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 10_000;

/// Checkpoints on `connection` (a pool of one) until `stop`.
pub(super) async fn checkpoints(connection: &SqlitePool, stop: &CancellationToken) {
    let mut every = tokio::time::interval(LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match checkpoint_if_due(connection).await {
            Ok(()) if failing => {
                failing = false;
                info!("WAL checkpoints work again");
            }
            Ok(()) => {}
            // Said once, not ten times a second: a full disk or a lost file fails every pass
            // until it is mended, and the writer's health reports it meanwhile.
            Err(error) if !failing && !stop.is_cancelled() => {
                failing = true;
                warn!(%error, "WAL checkpoint failed; trying again every pass");
            }
            Err(_) => {}
        }
    }
}

/// Copies the log into the database file if it holds [`COPY_AT_PAGES`] pages not copied yet.
/// A `NOOP` checkpoint only reads the log's counts: the pages in it and the pages copied.
async fn checkpoint_if_due(connection: &SqlitePool) -> Result<(), sqlx::Error> {
    let (_, in_log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(NOOP)")
        .fetch_one(connection)
        .await?;
    if in_log - copied >= COPY_AT_PAGES {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_optional(connection)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = SqliteStore::connect_capped(&url, 2, 0).await.unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// Without this the writer checkpoints at SQLite's 1,000 pages, and the task only races it.
    #[tokio::test]
    async fn the_writer_checkpoints_only_at_the_backstop() {
        let (_dir, store) = store().await;
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(pages, i64::from(WRITER_CHECKPOINT_PAGES));
    }

    /// Closing the store ends the task and closes its connection, so the writer, closing last,
    /// checkpoints the rest and deletes the log, as SQLite's last connection to a file does.
    #[tokio::test]
    async fn a_closed_store_leaves_no_log_behind() {
        let (dir, store) = store().await;
        let wal = dir.path().join("db-wal");
        assert!(wal.exists(), "a migrated database in WAL mode has a log");
        store.close().await;
        assert!(!wal.exists(), "the log outlived the store's close");
    }
}
