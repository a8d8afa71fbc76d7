//! The PostgreSQL backend: any number of confirmd instances on one database.
//!
//! What one SQLite process got from being the only writer, this backend gets from the server:
//!
//! - **Claims skip, never wait.** A worker claims a row with `FOR UPDATE SKIP LOCKED`, so two
//!   instances woken for the same row do not queue behind each other's lock: one claims it, the
//!   other moves on at once. Every claim takes a fresh id from a sequence; outcomes are written
//!   only while the row carries it ([`outbox`]).
//! - **One clock.** Leases, due times and the rows a signup writes are stamped with the server's
//!   clock (`confirmd_now_ms()` in the schema), so instances whose clocks disagree still agree on
//!   which lease ran out: a fast clock cannot take a row back from a live sender.
//! - **Wake-ups cross instances.** A statement that writes background signups ends with one
//!   `pg_notify` on [`CHANNEL`] for its rows; every instance listens ([`listener`]) and wakes
//!   workers of its own for the rows due next (every instance hears each one). Notifications
//!   are a fast path only: one lost while a listener reconnects is found by the sweeper, as on
//!   SQLite.
//! - **Concurrent signups of one address** meet on the unique address and the user's row lock
//!   ([`signup`]), never as an error.
//!
//! # Group commit, here too
//!
//! Signups, the workers' claims (of their own rows, and of the oldest due rows for workers offered
//! no row in particular or that lost theirs to another sender) and the outcomes of their sends are
//! each written in batches ([`batch`]): whatever waits when a batch starts is written with one
//! statement, or one transaction, and a request alone is written at once. PostgreSQL runs
//! transactions side by side and shares the WAL flush of those that commit together, so this was
//! not obvious; the measurements decided it (BENCHMARKS.md, section 9). One transaction per signup
//! and two single-row commits per email gave 0.33x the PostgreSQL floor and 287 no-op jobs a second
//! per core on a loaded machine; batched, 0.58x and 1,008 to 1,784 per core on a quieter one. The
//! two were not measured under the same load, so not all of the gain is batching's. A signup alone
//! was six round trips (begin, user, token, outbox row, notification, commit); a batch of new
//! addresses is three. What a batch costs: one statement of each kind in flight per instance (the
//! rest of the pool stays free for reads, the sweeper and the pruner), and a batch that fails for a
//! reason that may be one request's is written again one request at a time.
//!
//! # Claims do not wait for the disk
//!
//! Every commit waits for the WAL to reach the disk, unless its session says otherwise. The
//! claims' two connections say otherwise (`synchronous_commit = off`): a claim lost in a crash
//! of the server leaves its row queued and its email, if it was in hand, is sent again, which is
//! what a crash does to an email in hand anyway; the outcome's commit, which does wait, makes the
//! claim before it durable too. (A worker draining a backlog claims its next row with the outcome
//! of its last, in the outcome's statement, so those claims wait for the flush the outcome waits
//! for anyway.) The sequence that numbers claims may rewind with them, so a
//! claim's id also carries a random offset drawn for its batch ([`outbox`]): an outcome a worker
//! kept through the crash cannot pass the fence of a later claim of its row. A sender waited on
//! the disk twice per email, for its claim and for its outcome; once only, a no-op drain of 16
//! workers went from about 4,000 to 6,000–6,600 jobs a second. Outcomes stay synchronous: were
//! they not, a crash would send again every email whose `sent` it caught unflushed (up to the
//! last 0.6 s of sends), not only those in hand.
//!
//! # The backlog estimate, unchanged
//!
//! The backlog cap (`worker.max_backlog`) reads an estimate, not a count per signup: the
//! sweeper's last count plus the signups this instance took since. With several instances the
//! count is every instance's, but the signups since are only this one's, so an instance may let
//! through what the others took in one sweep interval (2 s by default) beyond the cap. The cap
//! guards the database from an outage's pile-up of hours, so that slack is kept rather than paid
//! for with a count per signup: the count reads two partial indexes (0.3 to 0.8 ms at 1,000,000
//! rows), and every instance recounts at each sweep.
//!
//! # Health
//!
//! A database server has no file to watch. [`writable`](PostgresStore::writable) reflects the
//! last writes: a write that fails for a reason that is not the row's (connection refused while
//! the server restarts, a read-only standby after a fail-over, a full disk) marks the store
//! unwritable, and signups get 503 until a write succeeds again. While it is unwritable a
//! supervised probe asks the server every second whether it takes writes, so an instance taken
//! out of rotation finds out it healed with no signup to try.

mod batch;
mod health;
mod listener;
mod operator;
mod outbox;
mod retention;
mod signup;

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    ConnectOptions, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use batch::Batcher;
use health::WriteHealth;
pub use listener::CHANNEL;
use outbox::{Claims, NextDue, Outcomes};
use signup::Signups;

use super::StoreError;
use crate::supervise::Tasks;

/// How long a signup, a claim or a probe waits for a pooled connection before it fails (and
/// the store is marked unwritable): a server that is down must not hang requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Set on every connection as it opens: no JIT compilation. Each of confirmd's statements
/// reads a few rows off an index, but the planner's estimate for some crosses `jit_above_cost`
/// (the pruner's expired-signup delete is costed at 1.7 million before the tables are first
/// analysed), and PostgreSQL then compiles the statement with LLVM at every run: 145 to 790 ms
/// of CPU for a delete that runs in 0.04 ms, the same cores the signups and the sends need
/// (BENCHMARKS.md 9.4). Set by a statement rather than a startup option, which connection
/// poolers may refuse.
const SESSION: &str = "SET jit = off";

/// The claims' connections also commit without waiting for the WAL flush (see the module docs:
/// a lost claim leaves its row queued, and the outcome's flush makes the claim durable).
const CLAIM_SESSION: &str = "SET jit = off; SET synchronous_commit = off";

async fn set(conn: &mut PgConnection, settings: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(settings).execute(conn).await.map(drop)
}

/// The database: a pool for every statement but the claims, the claims' own, the health of the
/// last writes, and the supervised tasks (the probe and the listener, beside the delivery's).
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// The claims' connections, whose commits do not wait for the WAL flush.
    claim_pool: PgPool,
    /// Tells this instance's notifications apart from other instances', so its listener does
    /// not wake its workers twice for its own signups.
    instance: Arc<str>,
    health: Arc<WriteHealth>,
    /// Signups, the workers' claims and the outcomes of their sends, each written in batches;
    /// the claims on connections of their own (see [`PostgresStore::connect`]).
    signups: Batcher<Signups>,
    claims: Batcher<Claims>,
    next_due: Batcher<NextDue>,
    outcomes: Batcher<Outcomes>,
    tasks: Tasks,
}

impl PostgresStore {
    /// Connects a pool of up to `max_connections` to the database at `url` (at least two: the
    /// listener holds one of its own), and two connections more for the workers' claims. Fails
    /// if the server does not answer now: a URL that is wrong shows at start, not at the first
    /// signup.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("confirmd");
        let pool = PgPoolOptions::new()
            // Room for the signups, the outcomes, the listener and the sweeper at once: beside
            // the claims', the pool is the way to the database (SQLite has a writer beside its
            // readers).
            .max_connections(max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| Box::pin(set(conn, SESSION)))
            .connect_with(options.clone())
            .await?;
        // The claims' own connections, one per batching task, whose commits do not wait for
        // the WAL flush (`CLAIM_SESSION`).
        let claim_pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| Box::pin(set(conn, CLAIM_SESSION)))
            .connect_with(options)
            .await?;
        let health = Arc::new(WriteHealth::default());
        let tasks = Tasks::new();
        let instance: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let signups = Signups {
            instance: instance.clone(),
            health: health.clone(),
        };
        let store = PostgresStore {
            instance,
            signups: Batcher::start("signups", signups, pool.clone(), health.clone(), &tasks),
            claims: Batcher::start("claims", Claims, claim_pool.clone(), health.clone(), &tasks),
            next_due: Batcher::start(
                "next_due",
                NextDue,
                claim_pool.clone(),
                health.clone(),
                &tasks,
            ),
            outcomes: Batcher::start("outcomes", Outcomes, pool.clone(), health.clone(), &tasks),
            pool,
            claim_pool,
            health,
            tasks,
        };
        tokio::spawn(store.tasks.supervise("db_probe", {
            let (pool, health) = (store.pool.clone(), store.health.clone());
            move || health::probe_while_unwritable(pool.clone(), health.clone())
        }));
        Ok(store)
    }

    /// Does the database at `url` exist? confirmd never creates a PostgreSQL database, so it
    /// exists if it can be connected to; a database that does not exist is a clean `false`.
    pub async fn exists(url: &str) -> Result<bool, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        match options.connect().await {
            Ok(connection) => {
                let _ = sqlx::Connection::close(connection).await;
                Ok(true)
            }
            // invalid_catalog_name: "database ... does not exist".
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies the migrations embedded in the binary from `migrations/postgres/`. sqlx's
    /// migrator holds a PostgreSQL advisory lock while it runs, so instances that start
    /// together apply each migration once and the others wait for it.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.claim_pool.close().await;
    }

    /// The supervised tasks of the application: the store's probe and listener, and whatever
    /// else the caller supervises with it (the delivery workers and sweeper).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Signups handed to the store and not answered yet: waiting for their batch, or in it.
    pub fn signups_pending(&self) -> usize {
        self.health.signups_in_flight()
    }

    /// Starts the listener (see [`listener`]) under supervision, until `shutdown`.
    pub fn hear_new_emails(
        &self,
        wake: impl Fn(usize) + Send + Sync + 'static,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let wake: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(wake);
        let (pool, instance) = (self.pool.clone(), self.instance.clone());
        tracker.spawn(self.tasks.supervise("listener", move || {
            listener::run(
                pool.clone(),
                instance.clone(),
                wake.clone(),
                shutdown.clone(),
            )
        }));
    }

    /// Any number of instances share the database.
    pub fn shared(&self) -> bool {
        true
    }

    /// Is the database answering? For `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query!(r#"SELECT TRUE AS "answers!""#)
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Can it take signups? Answers from what the last writes (or the probe) saw.
    pub fn writable(&self) -> Result<(), StoreError> {
        match self.health.fault() {
            None => Ok(()),
            Some(fault) => Err(StoreError::Unwritable(fault)),
        }
    }

    /// Passes a write's outcome through, noting a fault of the server (not of the row) for
    /// [`PostgresStore::writable`], and a success as proof that it takes writes.
    fn wrote<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.health.proven_writable();
                Ok(value)
            }
            Err(error) => {
                self.health.failed(&error);
                Err(StoreError::Database(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection the store opens, in either pool, runs without JIT, and the claims'
    /// without waiting for the WAL flush. Needs a server: `CONFIRMD_TEST_POSTGRES_URL`.
    #[tokio::test]
    async fn every_connection_opens_with_the_session_settings() {
        let Ok(url) = std::env::var("CONFIRMD_TEST_POSTGRES_URL") else {
            eprintln!("skipped: CONFIRMD_TEST_POSTGRES_URL is not set");
            return;
        };
        let store = PostgresStore::connect(&url, 2).await.expect("connects");
        let show = |pool: &PgPool, show: &'static str| {
            let pool = pool.clone();
            async move {
                // Every connection of the pool at once, so none is asked twice.
                let mut conns = Vec::new();
                for _ in 0..2 {
                    conns.push(pool.acquire().await.expect("a connection"));
                }
                let mut values = Vec::new();
                for conn in &mut conns {
                    let value: String = sqlx::query_scalar(show)
                        .fetch_one(&mut **conn)
                        .await
                        .expect("shows");
                    values.push(value);
                }
                values
            }
        };
        assert_eq!(show(&store.pool, "SHOW jit").await, ["off", "off"]);
        assert_eq!(show(&store.claim_pool, "SHOW jit").await, ["off", "off"]);
        assert_eq!(
            show(&store.claim_pool, "SHOW synchronous_commit").await,
            ["off", "off"]
        );
        store.close().await;
    }
}
