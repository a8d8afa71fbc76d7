//! The PostgreSQL peer: apalis 1.0 with apalis-postgres 1.0, set up as its README shows, on the
//! same PostgreSQL server as confirmd, each on a fresh database.
//!
//! What is the same as confirmd: the server, and at most `workers` jobs at once per instance
//! (`.concurrency(workers)`, as for apalis-sqlite in [`crate::apalis_peer`]). The jobs are the
//! same [`JobContext`]: nothing, or confirmd's confirmation email over confirmd's SMTP pool.
//!
//! What is apalis's own, left at its defaults: the schema from `PostgresStorage::setup`, a pool
//! of sqlx's default size (10) per instance, fetches of 10 jobs, a heartbeat every 30 s, task
//! locking and result persistence on. Two set-ups ([`Listening`]): the README's basic worker,
//! and its "pubsub listener" worker, woken by `LISTEN/NOTIFY` as confirmd's instances are.
//!
//! Several instances share one database as confirmd's do: each has its own pool and its own
//! worker (with a name of its own: apalis registers workers by name).

use std::time::Duration;

use anyhow::{Context, bail};
use apalis::prelude::{TaskSink, WorkerBuilder, WorkerBuilderExt, WorkerError};
use apalis_postgres::PostgresStorage;
use serde::Serialize;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    apalis_peer::{JobContext, run_job},
    postgres::FreshDatabase,
    wait_until,
};

/// The job: its number, as for apalis-sqlite.
type Job = u64;

/// How an idle apalis-postgres worker learns that a job was pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Listening {
    /// `PostgresStorage::new(&pool)`, the README's basic worker: it fetches when it is ready
    /// and, with no poll strategy, is woken again only by its heartbeat (every 30 s).
    Defaults,
    /// `PostgresStorage::new(&pool).with_pubsub()`, the README's "pubsub listener" worker: a
    /// listener of its own on `apalis::job::insert`, which apalis's insert trigger notifies.
    Pubsub,
}

impl Listening {
    pub fn describe(self) -> &'static str {
        match self {
            Listening::Defaults => "apalis defaults",
            Listening::Pubsub => "apalis pubsub",
        }
    }
}

/// One apalis-postgres instance, with its worker running or not yet.
pub struct PgPeer {
    listening: Listening,
    /// This instance's number: its worker's name.
    instance: usize,
    url: String,
    storage: PostgresStorage<Job>,
    /// A connection of its own for counting finished jobs, so the count takes none of the pool.
    counter: PgPool,
    running: Option<(CancellationToken, JoinHandle<Result<(), WorkerError>>)>,
    /// The database, for the instance that created it; dropped by [`PgPeer::stop`].
    database: Option<FreshDatabase>,
}

impl PgPeer {
    /// A fresh database on `server` with apalis's schema, and its first instance.
    pub async fn create(server: &str, listening: Listening) -> anyhow::Result<PgPeer> {
        let database = FreshDatabase::create(server).await?;
        let url = database.url().to_owned();
        let pool = PgPool::connect(&url).await?;
        PostgresStorage::<()>::setup(&pool)
            .await
            .context("cannot set apalis-postgres's schema up")?;
        let mut peer = PgPeer::open(&url, listening, 0, pool).await?;
        peer.database = Some(database);
        Ok(peer)
    }

    /// Another instance on this one's database: a pool and (once started) a worker of its own.
    pub async fn join(&self, instance: usize) -> anyhow::Result<PgPeer> {
        let pool = PgPool::connect(&self.url).await?;
        PgPeer::open(&self.url, self.listening, instance, pool).await
    }

    async fn open(
        url: &str,
        listening: Listening,
        instance: usize,
        pool: PgPool,
    ) -> anyhow::Result<PgPeer> {
        let counter = PgPoolOptions::new().max_connections(1).connect(url).await?;
        Ok(PgPeer {
            listening,
            instance,
            url: url.to_owned(),
            storage: PostgresStorage::new(&pool),
            counter,
            running: None,
            database: None,
        })
    }

    /// Pushes `jobs` jobs at once (`push_bulk`), for a backlog.
    pub async fn seed(&mut self, jobs: usize) -> anyhow::Result<()> {
        let all = (0..jobs as Job).collect();
        self.storage
            .push_bulk(all)
            .await
            .map_err(|e| anyhow::anyhow!("cannot push the backlog: {e}"))
    }

    /// Pushes job `i`; returns when it is committed.
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
        let name = format!("apalis-postgres-peer-{}", self.instance);
        let storage = self.storage.clone();
        let worker = match self.listening {
            Listening::Defaults => {
                let worker = WorkerBuilder::new(name)
                    .backend(storage)
                    .data(context)
                    .concurrency(workers)
                    .build(run_job);
                tokio::spawn(worker.run_until(signal))
            }
            Listening::Pubsub => {
                let worker = WorkerBuilder::new(name)
                    .backend(storage.with_pubsub())
                    .data(context)
                    .concurrency(workers)
                    .build(run_job);
                tokio::spawn(worker.run_until(signal))
            }
        };
        self.running = Some((stop, worker));
    }

    /// Waits until `jobs` jobs are `Done` (acknowledged by a worker of any instance).
    pub async fn wait_done(&self, jobs: usize, deadline: Duration) -> anyhow::Result<()> {
        let what = format!("{jobs} jobs done by apalis");
        wait_until(deadline, &what, || async {
            let done: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'")
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

    /// Stops the worker (it finishes the jobs in hand) and closes the pools; the instance that
    /// created the database drops it (stop the others first).
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
        if let Some(database) = self.database.take() {
            database.drop().await?;
        }
        Ok(())
    }
}
