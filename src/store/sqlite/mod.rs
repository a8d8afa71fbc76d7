//! The SQLite backend: one file, one writer, readers beside it.
//!
//! SQLite allows one writer at a time. Rather than let many pooled connections race for the write
//! lock (and meet `SQLITE_BUSY`, "database is locked", when a read transaction tries to upgrade),
//! all writes go through a pool of exactly one connection, in WAL mode so that readers on the
//! other pool are never blocked by it. Each write transaction starts with `BEGIN IMMEDIATE`,
//! which takes the write lock up front: with several processes on one file (a restart while the
//! old one drains), the busy timeout then waits for the lock instead of failing. Signups, the
//! senders' claims and the outcomes of their sends go through the group-commit [`writer`], which
//! writes all that is waiting in one transaction: each statement is a round trip to the thread
//! sqlx runs the connection on, and each transaction a commit, so writing a busy moment's
//! requests together costs little more than writing one.
//!
//! A storage fault (disk full, read-only, I/O error, the lock held by another process) fails
//! writes and leaves reads working; it must not outlast its cause. Two things make sure it does
//! not. The writer connection is replaced whenever it comes back to its pool still inside a
//! transaction (see [`SqliteStore::connect_capped`] for how that happens), and [`health`] tracks
//! whether the database takes writes, so that signups are refused with 503 (and `/readyz` says
//! so), and claims and outcomes refused at once, while it does not, and accepted again as soon
//! as it does.
//!
//! A task beside the writer copies the write-ahead log into the database file before the writer
//! would have to (see [`checkpoint`]).
//!
//! The statements are grouped by what they serve: [`signup`] (the signup and the link),
//! [`outbox`] (the sender's state machine), [`operator`] (`confirmd outbox`), [`retention`] (the
//! pruner's deletes and the counts `/metrics` reads).

mod checkpoint;
mod health;
mod operator;
mod outbox;
mod retention;
mod signup;
mod writer;

use std::{
    str::FromStr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use sqlx::{
    Connection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use health::{FileIdentity, WriteHealth};
use writer::{Pending, QUEUE, Waiting, Write, group_commit};

use super::{NewSignup, StoreError, StoredSignup};
use crate::supervise::Tasks;

/// How every connection to the database is set up. Public so that the floor benchmark
/// (`benches/floor.rs`) measures a bare handler on these settings, and so that the token secret
/// (`crate::secret`) can find the database file's folder. The writer adds the size cap; the
/// checkpointer (see [`checkpoint`]) is confirmd's, not the floor's.
pub fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        // In WAL mode NORMAL is durable against process crashes (the property the outbox
        // needs); only an OS crash or power loss can lose the last transactions.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true))
}

/// The database: a one-connection pool for writes and a pool for reads, on the same file, and
/// the group-commit writer that signups, claims and outcomes go through.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The group-commit writer's queue.
    writes: mpsc::Sender<Write>,
    waiting: Arc<Waiting>,
    health: Arc<Health>,
    checkpointer: Arc<Checkpointer>,
    /// The supervised tasks of the application, the writer first among them.
    tasks: Tasks,
}

/// The checkpointer task's connection, and what stops the task: [`SqliteStore::close`], or the
/// last clone of the store dropped.
#[derive(Debug)]
struct Checkpointer {
    connection: SqlitePool,
    stop: CancellationToken,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What tells whether the store can take signups (see [`health`]).
#[derive(Debug)]
struct Health {
    /// The file as opened; `None` for an in-memory database.
    file: Option<FileIdentity>,
    writes: WriteHealth,
}

impl Health {
    /// The file is still the one opened, and the last writes met no storage fault.
    fn writable(&self) -> Result<(), StoreError> {
        self.same_file()?;
        match self.writes.fault() {
            None => Ok(()),
            Some(fault) => Err(StoreError::Unwritable(fault)),
        }
    }

    fn same_file(&self) -> Result<(), StoreError> {
        self.file.as_ref().map_or(Ok(()), FileIdentity::check)
    }
}

/// SQLite's default page size, which confirmd never changes: what `database.max_size_mb` is
/// counted in.
const PAGE_SIZE: u64 = 4096;

impl SqliteStore {
    /// Opens (and creates, with its folder) the database file, with writes refused as "database or disk is full" once the file
    /// holds `max_size_mb` MiB (0: no cap but the disk's). SQLite's `max_page_count` is a
    /// setting of each connection, so it is set on every writer connection the pool opens.
    ///
    /// The writer pool replaces any connection that comes back to it still inside a
    /// transaction. That is how sqlx leaves a connection whose transaction SQLite rolled back
    /// on its own: SQLite may do so when a statement or the COMMIT fails with SQLITE_FULL,
    /// SQLITE_IOERR or SQLITE_BUSY; the `Transaction` guard, dropped on the error, then sends a
    /// ROLLBACK that fails ("no transaction is active"), and sqlx, which counts transactions
    /// itself, never brings its count back to zero. Every later `BEGIN` is then refused
    /// ("attempted to call begin_with at non-zero transaction depth") until the process
    /// restarts. The pool pings a connection before handing it out, which runs any ROLLBACK a
    /// dropped guard queued; if the count is still not zero, the connection is closed (which
    /// rolls back whatever SQLite still holds) and the pool opens a fresh one.
    pub async fn connect_capped(
        url: &str,
        max_readers: u32,
        max_size_mb: u64,
    ) -> Result<SqliteStore, StoreError> {
        let options = connect_options(url)?;
        if let Some(folder) = options.get_filename().parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder).map_err(|source| StoreError::Folder {
                path: folder.display().to_string(),
                source,
            })?;
        }
        let mut writer_options = options.clone();
        if max_size_mb > 0 {
            let pages = max_size_mb.saturating_mul(1024 * 1024) / PAGE_SIZE;
            writer_options = writer_options.pragma("max_page_count", pages.to_string());
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(true)
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    let clean = !conn.is_in_transaction();
                    if !clean {
                        tracing::warn!("the writer connection was left inside a failed transaction; replacing it");
                    }
                    Ok(clean)
                })
            })
            .connect_with(writer_options)
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers)
            .connect_with(options.clone())
            .await?;
        let health = Arc::new(Health {
            file: FileIdentity::of(options.get_filename()),
            writes: WriteHealth::default(),
        });
        let (writes, queue) = mpsc::channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let waiting = Arc::new(Waiting::default());
        let tasks = Tasks::new();
        tokio::spawn(tasks.supervise("writer", {
            let (writer, waiting, health) = (writer.clone(), waiting.clone(), health.clone());
            move || {
                let (writer, queue, waiting, health) = (
                    writer.clone(),
                    queue.clone(),
                    waiting.clone(),
                    health.clone(),
                );
                async move {
                    // The queue outlives a run of the writer: requests waiting in it are
                    // written by the next run after a panic.
                    let mut queue = queue.lock().await;
                    group_commit(&writer, &mut queue, &waiting, &health).await;
                }
            }
        }));
        let checkpointer = Arc::new(Checkpointer {
            // A connection of its own: a checkpoint's copies and syncs take no reader from the
            // requests, even with `database.max_connections = 1`.
            connection: SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?,
            stop: CancellationToken::new(),
        });
        // An in-memory database has no log to copy (SQLite answers a checkpoint there with an
        // error whenever another connection is inside a transaction).
        let on_file = health.file.is_some();
        if on_file {
            tokio::spawn(tasks.supervise("checkpointer", {
                let (connection, stop) =
                    (checkpointer.connection.clone(), checkpointer.stop.clone());
                move || {
                    let (connection, stop) = (connection.clone(), stop.clone());
                    async move { checkpoint::checkpoints(&connection, &stop).await }
                }
            }));
        }
        Ok(SqliteStore {
            writer,
            reader,
            writes,
            waiting,
            health,
            checkpointer,
            tasks,
        })
    }

    /// The supervised tasks of the application: the store's writer, and whatever else the
    /// caller supervises with it (the delivery workers and sweeper).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Is there a database file at `url`? For the operator's commands, which must not create an
    /// empty database at a mistyped path and then report its empty queue as an all-clear.
    pub fn exists(url: &str) -> Result<bool, StoreError> {
        Ok(SqliteConnectOptions::from_str(url)?
            .get_filename()
            .is_file())
    }

    /// Applies the migrations embedded in the binary from `migrations/sqlite/`. A migration's
    /// version is its file name's prefix and its checksum its content, so the folder's name is
    /// free to change: databases that applied these files before they moved here see no
    /// difference.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        // The writer closes last: SQLite's last connection to a file checkpoints the whole log
        // and deletes it.
        self.checkpointer.stop.cancel();
        self.checkpointer.connection.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A migrated store on a file `db` in a folder of its own, for the unit tests.
    #[cfg(test)]
    async fn migrated_in_temp_dir() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = SqliteStore::connect_capped(&url, 2, 0).await.unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// Signups handed to the group-commit writer and not answered yet.
    pub fn signups_pending(&self) -> usize {
        self.waiting.signups.load(Ordering::Relaxed)
    }

    /// Nothing to hear: this process wrote every row of the file, and its signups wake its
    /// workers directly.
    pub fn hear_new_emails(
        &self,
        _wake: impl Fn(usize) + Send + Sync + 'static,
        _shutdown: CancellationToken,
        _tracker: &TaskTracker,
    ) {
    }

    /// One process owns the file.
    pub fn shared(&self) -> bool {
        false
    }

    /// Is the database answering? For `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(&self.reader)
            .await?;
        Ok(())
    }

    /// Can it take signups? The file is the one opened, and writes meet no storage fault (see
    /// [`health`]). Answers from what the writer last saw, without waiting on the write lock, so
    /// a probe is never slower than a `stat`.
    pub fn writable(&self) -> Result<(), StoreError> {
        self.health.writable()
    }

    /// Passes a write's outcome through, noting a storage fault for [`SqliteStore::writable`].
    fn wrote<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        result.map_err(|error| {
            self.health.writes.failed(&error);
            StoreError::Database(error)
        })
    }

    /// Writes a signup, its token and its outbox row in one transaction, so an acknowledged
    /// signup always has its email on disk. Signing up again adds a token: the links already
    /// sent keep working until they expire or the address is confirmed.
    ///
    /// The write goes through the group-commit writer (see [`writer`]): it returns once
    /// the transaction holding this signup has committed.
    pub async fn create_signup(&self, new: NewSignup) -> Result<StoredSignup, StoreError> {
        self.waiting.signups.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let write = Write::Signup(Pending {
            request: new,
            answer,
        });
        if self.writes.send(write).await.is_err() {
            self.waiting.signups.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::WriterStopped);
        }
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Hands a claim or an outcome to the group-commit writer, and waits for the transaction
    /// holding it to commit.
    async fn hand_to_writer<A>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<A, StoreError>>) -> Write,
    ) -> Result<A, StoreError> {
        let (answer, answered) = oneshot::channel();
        if self.writes.send(write(answer)).await.is_err() {
            return Err(StoreError::WriterStopped);
        }
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }
}
