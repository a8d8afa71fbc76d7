//! The checkpointer: copies the write-ahead log's pages into the database file, off the writer's
//! path.
//!
//! In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them into the
//! database file and syncs it, so that the log can start over. Left to itself, SQLite checkpoints
//! in the connection whose commit takes the log past 1,000 pages: here that is the writer, every
//! signup, claim and outcome waiting while it writes those pages to their places in the file
//! and waits for the disk. On a large file those places are scattered, and a pruner deleting old
//! rows fills the log quickly; with no checkpoint at all (an ablation) the background signups'
//! p99 fell by half (BENCHMARKS.md, 10.1).
//!
//! So a task on a connection of its own looks at the log every [`LOOK_EVERY`] and, once it holds
//! [`COPY_AT_PAGES`] pages not yet copied (half of SQLite's threshold), runs `PASSIVE`
//! checkpoints. `PASSIVE` never waits for the writer or readers and never blocks them: it copies
//! what no reader still needs while the writer goes on appending. When the log reaches 1,000
//! pages the writer still checkpoints, as SQLite does by default, but finds part of the log copied
//! already, and the log starts over at the same pace as before.
//!
//! Leaving the writer only a backstop far above 1,000 pages was measured too, and not kept
//! (BENCHMARKS.md, 10.1): the task rarely copies the whole log in a gap between two of the
//! writer's commits, and only a whole copy lets the log start over, so it grew to the backstop
//! (40 MiB), and the sync signups' p50 on an empty file rose in every run (4.09–4.92 ms against
//! 3.72 and 3.96).

use std::time::Duration;

use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the checkpointer looks at the log.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Pages of log not yet in the database file at which the checkpointer copies them: half of
/// the 1,000 at which the writer checkpoints (SQLite's default), so that the task starts copying
/// well before the writer would.
pub(super) const COPY_AT_PAGES: i64 = 500;

/// Most `PASSIVE` passes one look makes to catch up with the writer.
const CATCH_UP_PASSES: usize = 4;

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
/// A `NOOP` checkpoint only reads the log's counts: the pages in it and the pages copied (both
/// -1 when it met the writer updating the log's header: nothing is copied until the next look).
async fn checkpoint_if_due(connection: &SqlitePool) -> Result<(), sqlx::Error> {
    let (_, in_log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(NOOP)")
        .fetch_one(connection)
        .await?;
    if in_log - copied < COPY_AT_PAGES {
        return Ok(());
    }
    // The writer appends while a pass copies, so one pass rarely leaves the whole log copied.
    // Each further pass copies what was appended during the one before, fewer pages each time;
    // what is left when the log reaches 1,000 pages, the writer copies itself.
    for _ in 0..CATCH_UP_PASSES {
        let (busy, in_log, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(connection)
                .await?;
        if busy != 0 || copied >= in_log {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::sqlite::SqliteStore;

    /// Closing the store ends the task and closes its connection, so the writer, closing last,
    /// checkpoints the rest and deletes the log, as SQLite's last connection to a file does.
    #[tokio::test]
    async fn a_closed_store_leaves_no_log_behind() {
        let (dir, store) = SqliteStore::migrated_in_temp_dir().await;
        let wal = dir.path().join("db-wal");
        assert!(wal.exists(), "a migrated database in WAL mode has a log");
        store.close().await;
        assert!(!wal.exists(), "the log outlived the store's close");
    }
}
