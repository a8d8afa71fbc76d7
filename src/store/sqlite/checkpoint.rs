//! The checkpointer: copies the write-ahead log's pages into the database file, off the writer's
//! path.
//!
//! In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them into the
//! database file and syncs it, so that the log can start over. Left to itself, SQLite checkpoints
//! in the connection whose commit takes the log past 1,000 pages: here that is the writer, every
//! signup, claim and outcome waiting while it writes those pages to their places in the file
//! and waits for the disk twice. On a large file those places are scattered, and a pruner
//! deleting old rows fills the log quickly, so the writer stalled on checkpoints more often and
//! for longer there than on a small one.
//!
//! So the writer's own checkpoint is only a backstop ([`WRITER_CHECKPOINT_PAGES`]), and a task
//! of its own runs a `PASSIVE` checkpoint every [`CHECKPOINT_EVERY`] on a reader connection.
//! `PASSIVE` never waits for the writer or readers and never blocks them: it copies what no
//! reader still needs, and the writer goes on appending meanwhile. Once it has copied the whole
//! log, the writer's next transaction starts the log over from its beginning. Under a write load
//! that leaves no gap for that, the log grows to the backstop and the writer checkpoints what
//! remains, the few pages written since the task's last pass.

use std::time::Duration;

use sqlx::SqlitePool;
use tracing::{info, warn};

/// How often the checkpointer runs. At the write rates measured here (section 2 of
/// BENCHMARKS.md) that is a few hundred pages of log per pass.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Pages of log (4 KiB each) past which the writer checkpoints after its commit, as SQLite does at
/// 1,000 by default: ten times that, so the writer checkpoints only when the task falls behind.
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 10_000;

/// Checkpoints the log every [`CHECKPOINT_EVERY`] until the reader pool is closed.
pub(super) async fn checkpoints(reader: &SqlitePool) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    while !reader.is_closed() {
        every.tick().await;
        match checkpoint(reader).await {
            Ok(()) if failing => {
                failing = false;
                info!("WAL checkpoints work again");
            }
            Ok(()) => {}
            // Said once, not ten times a second: a full disk or a lost file fails every pass
            // until it is mended, and the writer's health reports it meanwhile.
            Err(error) if !failing && !reader.is_closed() => {
                failing = true;
                warn!(%error, "WAL checkpoint failed; trying again every pass");
            }
            Err(_) => {}
        }
    }
}

/// One `PASSIVE` checkpoint. SQLite answers with whether it met a lock, the pages in the log and
/// the pages now copied; none of them changes what the next pass does.
pub(super) async fn checkpoint(reader: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_optional(reader)
        .await?;
    Ok(())
}
