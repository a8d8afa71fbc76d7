//! Can the database take writes? What `/readyz` asks of the store, and what the writer checks
//! before it writes signups, claims and send outcomes.
//!
//! Three things can stop writes while reads go on working, and none of them shows in a
//! `SELECT 1`:
//!
//! - a **storage fault**: the disk (or the `database.max_size_mb` cap) is full, the file became
//!   read-only, an I/O error, another process holds the write lock past the busy timeout. Every
//!   write through the writer connection reports its outcome to [`WriteHealth`]: a fault marks the
//!   store unwritable, and only a write that proves the opposite (a committed signup group, or the
//!   writer's own probe, which allocates pages the way a signup does) marks it writable again.
//!   While it is unwritable the writer probes on its own every [`PROBE_INTERVAL`], so an instance
//!   that a load balancer took out of rotation (and so gets no signups) still finds out it healed.
//! - the **file was deleted or replaced** under the process. SQLite keeps writing to the inode it
//!   has open, which no longer has a name: every signup acknowledged from then on would be gone
//!   at the next start. The device and inode of the file are recorded at open, and the writer
//!   compares them with what the path names now before every group it writes (one `stat`).
//! - the **writer is not running** (it panicked and waits for its restart): see `crate::supervise`.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use tokio::sync::Notify;

use crate::store::StoreError;

/// While the store is unwritable, how often the writer tries a probe write.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Is this error about the storage (it would fail any write now) rather than about the request
/// being written? A storage fault fails a whole group at once: writing its requests one by one
/// would only repeat the fault (and its busy timeout) once per request.
pub(super) fn is_storage_fault(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => {
            // Primary result codes (the low byte of an extended code):
            // https://www.sqlite.org/rescode.html
            const BUSY: i64 = 5;
            const LOCKED: i64 = 6;
            const NOMEM: i64 = 7;
            const READONLY: i64 = 8;
            const IOERR: i64 = 10;
            const CORRUPT: i64 = 11;
            const FULL: i64 = 13;
            const CANTOPEN: i64 = 14;
            const PROTOCOL: i64 = 15;
            const NOTADB: i64 = 26;
            let code = e.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            matches!(
                code & 0xff,
                BUSY | LOCKED
                    | NOMEM
                    | READONLY
                    | IOERR
                    | CORRUPT
                    | FULL
                    | CANTOPEN
                    | PROTOCOL
                    | NOTADB
            )
        }
        // A row that does not decode, or a bad argument, is about what was written.
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_) => false,
        // The connection, the pool or its worker thread failed: nothing gets written now.
        _ => true,
    }
}

/// The device and inode of the database file as opened, to notice it being deleted or replaced.
#[derive(Debug, Clone)]
pub(super) struct FileIdentity {
    path: PathBuf,
    #[cfg(unix)]
    id: (u64, u64),
}

impl FileIdentity {
    /// The file at `path` as it is now; `None` for an in-memory database (no file to watch).
    pub(super) fn of(path: &Path) -> Option<FileIdentity> {
        let metadata = std::fs::metadata(path).ok()?;
        #[cfg(not(unix))]
        let _ = metadata;
        Some(FileIdentity {
            path: path.to_owned(),
            #[cfg(unix)]
            id: unix_id(&metadata),
        })
    }

    /// `Err` if the path no longer names the file that was opened.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let gone = || StoreError::FileGone {
            path: self.path.display().to_string(),
        };
        let metadata = std::fs::metadata(&self.path).map_err(|_| gone())?;
        #[cfg(unix)]
        if unix_id(&metadata) != self.id {
            return Err(gone());
        }
        #[cfg(not(unix))]
        let _ = metadata;
        Ok(())
    }
}

#[cfg(unix)]
fn unix_id(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

/// Whether the last write said the database takes writes, and if not, why.
#[derive(Debug, Default)]
pub(super) struct WriteHealth {
    fault: Mutex<Option<String>>,
    /// Wakes the writer when a write it does not make (the sweeper's lease reclaim, a
    /// confirmation) meets a fault while the writer waits for requests, so that it starts
    /// probing without waiting for one.
    faulted: Notify,
}

impl WriteHealth {
    /// The storage fault writes last met, if it has not been cleared since.
    pub(super) fn fault(&self) -> Option<String> {
        self.fault.lock().expect("not poisoned").clone()
    }

    /// A write failed: if the storage is at fault, the store is unwritable until proven writable.
    pub(super) fn failed(&self, error: &sqlx::Error) {
        if is_storage_fault(error) {
            let mut fault = self.fault.lock().expect("not poisoned");
            if fault.is_none() {
                tracing::warn!(%error, "the database does not take writes; signups get 503 until it does");
                self.faulted.notify_one();
            }
            *fault = Some(error.to_string());
        }
    }

    /// Completes once a fault is noticed (at once if one was noticed since the last call).
    pub(super) async fn fault_noticed(&self) {
        self.faulted.notified().await;
    }

    /// A write that needs what a signup needs (the lock, room, a commit) succeeded.
    pub(super) fn proven_writable(&self) {
        let mut fault = self.fault.lock().expect("not poisoned");
        if fault.take().is_some() {
            tracing::info!("the database takes writes again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_deleted_or_replaced_under_the_store_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"one").unwrap();
        let identity = FileIdentity::of(&path).unwrap();
        assert!(identity.check().is_ok());

        // Replaced: a file created while the first exists (so another inode), renamed over it.
        let replacement = dir.path().join("replacement");
        std::fs::write(&replacement, b"two").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        #[cfg(unix)]
        assert!(matches!(identity.check(), Err(StoreError::FileGone { .. })));

        // Deleted.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(identity.check(), Err(StoreError::FileGone { .. })));
    }
}
