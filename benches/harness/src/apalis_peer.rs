//! The peer: apalis 1.0 with apalis-sqlite 1.0, set up as its documentation shows, on the same
//! SQLite settings as confirmd.
//!
//! What is the same as confirmd: the SQLite file is opened with confirmd's options (WAL,
//! `synchronous = NORMAL`, a 5 s busy timeout, foreign keys on), and at most `workers` jobs run
//! at once (`.concurrency(workers)`: one apalis worker whose tower concurrency limit plays the
//! part of confirmd's `worker.concurrency` tasks). A job that sends uses confirmd's `Mailer`
//! over the same SMTP connection pool, sized to `workers`.
//!
//! What is apalis's own, left at its defaults: one pool of 10 connections for everything (sqlx's
//! default size; confirmd has one writer and eight readers), batches of 10 jobs per fetch, a
//! heartbeat every 30 s, job locking and result persistence on.
//!
//! Two differences are deliberate. The schema comes from `SqliteStorage::migrations()` rather
//! than `SqliteStorage::setup()`, because `setup` also runs `PRAGMA synchronous = OFF` (on
//! whichever one pooled connection runs it), which would give apalis a durability confirmd does
//! not take. And the event-driven set-up installs the same SQLite update hook as
//! `SqliteStorage::connect_with_callback`, on a pool opened with the options above, because
//! `connect_with_callback` opens its own pool from a URL and so with SQLite's defaults.
//!
//! How a worker learns about new jobs ([`Polling`]) is where apalis's defaults and its tuned set-up
//! differ, and both are measured.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use apalis::prelude::{
    BackendExt, BoxDynError, Data, Strategy, TaskSink, WorkerBuilder, WorkerBuilderExt, WorkerError,
};
use apalis_sqlite::SqliteStorage;
use confirmd::mail::Mailer;
use futures::{StreamExt, channel::mpsc};
use serde::Serialize;
use sqlx::{
    SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqliteOperation, SqlitePoolOptions,
        SqliteSynchronous,
    },
};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{pickup::PickupClock, wait_until};

/// The job: its number. What it does is in [`JobContext`].
type Job = u64;

/// How an idle apalis worker learns that a job was pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Polling {
    /// `SqliteStorage::new(&pool)` and nothing else, as in apalis-sqlite's README and
    /// `examples/basic.rs`. A worker whose fetch came back empty waits to be woken, and with no
    /// poll strategy only its heartbeat timer wakes it: every 30 s (`Config::heartbeat_interval`).
    Defaults,
    /// The README's "event-driven worker (hooked)" set-up, for minimal latency: an SQLite update
    /// hook wakes the worker on every insert into `Jobs`, with a 500 ms interval as fallback.
    Hooked,
}

impl Polling {
    pub fn describe(self) -> &'static str {
        match self {
            Polling::Defaults => "apalis defaults",
            Polling::Hooked => "apalis hooked",
        }
    }
}

/// The fallback interval of the README's hooked set-up.
const HOOKED_INTERVAL: Duration = Duration::from_millis(500);

/// What a job does when a worker starts on it.
#[derive(Clone)]
pub struct JobContext {
    pub clock: Arc<PickupClock>,
    /// `None`: nothing. `Some`: send job's confirmation email to the catcher.
    pub mailer: Option<Mailer>,
}

pub(crate) async fn run_job(job: Job, context: Data<JobContext>) -> Result<(), BoxDynError> {
    let i = job as usize;
    context.clock.picked(i);
    if let Some(mailer) = &context.mailer {
        let message = crate::confirmation(mailer, i)?;
        mailer.send(message).await?;
    }
    Ok(())
}

/// One apalis-sqlite queue on a database of its own, with its worker running or not yet.
pub struct Peer {
    polling: Polling,
    storage: SqliteStorage<Job>,
    /// Wakes from the update hook, for [`Polling::Hooked`].
    hook: Option<mpsc::UnboundedReceiver<()>>,
    /// A connection of its own for counting finished jobs, so the count takes none of the pool.
    counter: SqlitePool,
    running: Option<(CancellationToken, JoinHandle<Result<(), WorkerError>>)>,
    _dir: TempDir,
}

impl Peer {
    pub async fn create(polling: Polling) -> anyhow::Result<Peer> {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("apalis.db"))
            .create_if_missing(true)
            // confirmd's settings (src/store/sqlite/mod.rs, connect_options).
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let (pool, hook) = match polling {
            Polling::Defaults => (
                SqlitePoolOptions::new()
                    .connect_with(options.clone())
                    .await?,
                None,
            ),
            Polling::Hooked => {
                let (wake, woken) = mpsc::unbounded();
                let pool = SqlitePoolOptions::new()
                    .after_connect(move |connection, _| {
                        let wake = wake.clone();
                        Box::pin(async move {
                            // As apalis-sqlite's `update_hook_callback`: inserts into Jobs.
                            let mut handle = connection.lock_handle().await?;
                            handle.set_update_hook(move |event| {
                                if event.operation == SqliteOperation::Insert
                                    && event.table == "Jobs"
                                {
                                    let _ = wake.unbounded_send(());
                                }
                            });
                            Ok(())
                        })
                    })
                    .connect_with(options.clone())
                    .await?;
                (pool, Some(woken))
            }
        };
        SqliteStorage::migrations()
            .run(&pool)
            .await
            .context("cannot migrate apalis-sqlite's schema")?;
        let counter = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Peer {
            polling,
            storage: SqliteStorage::new(&pool),
            hook,
            counter,
            running: None,
            _dir: dir,
        })
    }

    /// Pushes `jobs` jobs at once (`push_bulk`, one transaction), for a backlog.
    pub async fn seed(&mut self, jobs: usize) -> anyhow::Result<()> {
        let all = (0..jobs as Job).collect();
        self.storage
            .push_bulk(all)
            .await
            .map_err(|e| anyhow::anyhow!("cannot push the backlog: {e}"))
    }

    /// Pushes job `i`; returns when its transaction has committed.
    pub async fn enqueue(&mut self, i: usize) -> anyhow::Result<()> {
        self.storage
            .push(i as Job)
            .await
            .map_err(|e| anyhow::anyhow!("cannot push job {i}: {e}"))
    }

    /// Starts one worker that runs at most `workers` jobs at once.
    pub fn start(&mut self, workers: usize, context: JobContext) {
        let stop = CancellationToken::new();
        let signal = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            }
        };
        let storage = self.storage.clone();
        let worker = match (self.polling, self.hook.take()) {
            (Polling::Hooked, Some(woken)) => {
                let batch = apalis_sqlite::Config::default().batch_size;
                let strategy = Strategy::new()
                    .stream(woken.ready_chunks(batch))
                    .interval(HOOKED_INTERVAL);
                let worker = WorkerBuilder::new("apalis-peer")
                    .backend(storage.poll_with_strategy(strategy))
                    .data(context)
                    .concurrency(workers)
                    .build(run_job);
                tokio::spawn(worker.run_until(signal))
            }
            _ => {
                let worker = WorkerBuilder::new("apalis-peer")
                    .backend(storage)
                    .data(context)
                    .concurrency(workers)
                    .build(run_job);
                tokio::spawn(worker.run_until(signal))
            }
        };
        self.running = Some((stop, worker));
    }

    /// Waits until `jobs` jobs are `Done` in the `Jobs` table (acknowledged by the worker).
    pub async fn wait_done(&self, jobs: usize, deadline: Duration) -> anyhow::Result<()> {
        let what = format!("{jobs} jobs done by apalis");
        wait_until(deadline, &what, || async {
            let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE status = 'Done'")
                .fetch_one(&self.counter)
                .await?;
            if let Some((_, worker)) = &self.running
                && worker.is_finished()
            {
                bail!("the apalis worker stopped");
            }
            Ok(done as usize >= jobs)
        })
        .await
    }

    /// Stops the worker (it finishes the jobs in hand) and closes the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some((stop, worker)) = self.running.take() {
            stop.cancel();
            worker
                .await
                .context("the apalis worker panicked")?
                .context("the apalis worker failed")?;
        }
        self.storage.pool().close().await;
        self.counter.close().await;
        Ok(())
    }
}
