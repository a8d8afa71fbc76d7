//! The database: every SQL statement of confirmd lives below this module, and nothing here knows
//! about HTTP or SMTP.
//!
//! The rest of the crate sees one type, [`Store`], and the backend-neutral records it reads and
//! writes ([`records`], [`state`]). Behind it sits one backend per database engine, each in a
//! module of its own with its own SQL and its own migrations (`migrations/<engine>/`):
//!
//! - [`sqlite`], the embedded default: one process owns one file, with a single group-commit
//!   writer.
//! - [`postgres`], picked by a `postgres://` URL: any number of instances share one database.
//!   Claims skip rows another instance holds, leases and due times are read off the database's
//!   clock, and a signup committed on one instance wakes the workers of all of them.
//!
//! `delivery/` and `http/` never learn which one runs.
//!
//! # Why an enum and not a trait
//!
//! [`Store`] is an enum with one variant per backend, and each of its methods matches on the
//! variant and calls the backend's method of the same name (the `backend!` macro writes that
//! match). The alternative, a `trait Backend` that each engine implements, would need either a
//! type parameter on everything that holds a store (`Delivery<B>`, `ApiContext<B>`, the handlers,
//! the workers) or a `dyn Backend`. Native `async fn` in traits is not dyn-compatible, so the
//! second means boxing every future (`async-trait` or hand-written `Pin<Box<dyn Future>>`), on
//! the request path, for a choice made once at start-up. The enum keeps every call statically
//! dispatched, keeps `async fn` plain, and makes adding a backend a checklist the compiler
//! enforces: a variant here, an arm in `backend!`, and the same method names in its module.
//! What a trait would give in return (backends outside this crate) confirmd does not need.
//!
//! # What crosses the seam
//!
//! Only parsed values: states are enums ([`OutboxState`], [`UserStatus`], [`EmailKind`]), parsed
//! where a row is read, so a value the code does not know is an error at the edge, not a silent
//! default deep inside. Timestamps are Unix milliseconds (`i64`).
//!
//! Whatever decides who may send an email is timed by the store, not by the caller: a claim's
//! lease, a retry's due time, which leases ran out and which rows are due are given as durations
//! and measured on the backend's clock (the process's for SQLite, the server's for PostgreSQL).
//! With several instances, a caller's clock that runs ahead would otherwise take rows back from
//! live senders, or hide new rows until it catches up. A claim is fenced by a claim id the
//! claiming statement writes into the row ([`Claim`]), not by its lease's end.
//!
//! Queries are checked against the schema at compile time by `sqlx::query!`; the offline data in
//! `.sqlx/` (both engines' queries) lets a fresh clone build with no database around.
//! `.ci/sqlx-prepare` refreshes it, one engine at a time: the macros take one `DATABASE_URL` per
//! crate, so each pass compiles the library with `--cfg sqlx_prepare="<engine>"`, which leaves
//! the other engine's module out.

#[cfg(not(sqlx_prepare = "sqlite"))]
pub mod postgres;
pub mod records;
#[cfg(not(sqlx_prepare = "postgres"))]
pub mod sqlite;
pub mod state;

use std::{path::PathBuf, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::DatabaseSettings, domain::TokenHash, supervise::Tasks};

#[cfg(not(sqlx_prepare = "sqlite"))]
pub use postgres::PostgresStore;
pub use records::{
    ActiveCounts, Claim, ClaimedEmail, FailedEmail, KindCounts, NewSignup, OutboxCounts, OutboxId,
    Prune, Pruned, Requeue, SignupView, StoredSignup, TokenOwner,
};
#[cfg(not(sqlx_prepare = "postgres"))]
pub use sqlite::SqliteStore;
pub use state::{EmailKind, OutboxState, UnknownState, UserStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A storage fault failed the transaction this signup was in (with the rest of its group),
    /// or the last writes did and none has succeeded since.
    #[error("the database does not take writes: {0}")]
    Unwritable(String),
    /// The database file was deleted or replaced under the running process: what is written
    /// now would be lost at the next start, so nothing is.
    #[error("the database file {path} was deleted or replaced since it was opened")]
    FileGone { path: String },
    /// The store was closed (the process is shutting down).
    #[error("the database writer has stopped")]
    WriterStopped,
    /// A row holds a state this build does not know: the database was written by a newer
    /// version, or by hand.
    #[error(transparent)]
    UnknownState(#[from] UnknownState),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database.url: confirmd has no backend for {0:?} URLs; use sqlite:// or postgres://")]
    UnknownEngine(String),
    #[error("cannot create the database folder {path}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

/// The database, whichever engine holds it. Cheap to clone: a clone shares the pools.
#[derive(Clone, Debug)]
pub enum Store {
    /// One SQLite file: a single writer with group commit, readers beside it (see [`sqlite`]).
    #[cfg(not(sqlx_prepare = "postgres"))]
    Sqlite(SqliteStore),
    /// One PostgreSQL database, shared by any number of instances (see [`postgres`]).
    #[cfg(not(sqlx_prepare = "sqlite"))]
    Postgres(PostgresStore),
}

/// Which engine a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine of `url`, by its scheme; `None` for a scheme confirmd has no backend for.
    pub fn of(url: &str) -> Option<Engine> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme)?;
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Some(Engine::Sqlite),
            "postgres" | "postgresql" => Some(Engine::Postgres),
            _ => None,
        }
    }
}

/// Calls the backend's method of the same name: `backend!(self, store => store.ping().await)`.
/// A new backend adds its arm here.
macro_rules! backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            #[cfg(not(sqlx_prepare = "postgres"))]
            Store::Sqlite($backend) => $call,
            #[cfg(not(sqlx_prepare = "sqlite"))]
            Store::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens the database as `database` in the settings says, its size capped at
    /// `database.max_size_mb`. Does not migrate: see [`Store::migrate`].
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        Store::connect_capped(
            &settings.url,
            settings.max_connections,
            settings.max_size_mb,
        )
        .await
    }

    /// Opens (and creates) the database at `url`. Does not migrate: see [`Store::migrate`].
    pub async fn connect(url: &str, max_readers: u32) -> Result<Store, StoreError> {
        Store::connect_capped(url, max_readers, 0).await
    }

    /// [`Store::connect`], with the backend picked by the URL's scheme: `sqlite:` or
    /// `postgres:`. For SQLite, writes are refused as "database or disk is full" once the file
    /// holds `max_size_mb` MiB (0: no cap but the disk's); PostgreSQL manages its own space, and
    /// `max_readers` sizes its one pool.
    #[cfg_attr(sqlx_prepare = "postgres", allow(unused_variables))]
    pub async fn connect_capped(
        url: &str,
        max_readers: u32,
        max_size_mb: u64,
    ) -> Result<Store, StoreError> {
        match Engine::of(url) {
            #[cfg(not(sqlx_prepare = "postgres"))]
            Some(Engine::Sqlite) => SqliteStore::connect_capped(url, max_readers, max_size_mb)
                .await
                .map(Store::Sqlite),
            #[cfg(not(sqlx_prepare = "sqlite"))]
            Some(Engine::Postgres) => PostgresStore::connect(url, max_readers)
                .await
                .map(Store::Postgres),
            _ => Err(StoreError::UnknownEngine(url_scheme(url))),
        }
    }

    /// Is there a database at `url`? For the operator's commands, which must not create an
    /// empty database at a mistyped path and then report its empty queue as an all-clear.
    /// A PostgreSQL database is never created by confirmd: it exists if it can be connected to.
    pub async fn exists(url: &str) -> Result<bool, StoreError> {
        match Engine::of(url) {
            #[cfg(not(sqlx_prepare = "postgres"))]
            Some(Engine::Sqlite) => SqliteStore::exists(url),
            #[cfg(not(sqlx_prepare = "sqlite"))]
            Some(Engine::Postgres) => PostgresStore::exists(url).await,
            _ => Err(StoreError::UnknownEngine(url_scheme(url))),
        }
    }

    /// The database file's path, for the things kept beside it (the generated token secret);
    /// `None` for a server database.
    pub fn database_file(url: &str) -> Option<PathBuf> {
        match Engine::of(url) {
            #[cfg(not(sqlx_prepare = "postgres"))]
            Some(Engine::Sqlite) => sqlite::connect_options(url)
                .ok()
                .map(|options| options.get_filename().to_path_buf()),
            _ => None,
        }
    }

    /// Applies the backend's migrations, embedded in the binary.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        backend!(self, store => store.migrate().await)
    }

    pub async fn close(&self) {
        backend!(self, store => store.close().await)
    }

    /// The supervised tasks of the application: the store's writer, and whatever else the
    /// caller supervises with it (the delivery workers and sweeper).
    pub fn tasks(&self) -> &Tasks {
        backend!(self, store => store.tasks())
    }

    /// Signups handed to the store and not answered yet.
    pub fn signups_pending(&self) -> usize {
        backend!(self, store => store.signups_pending())
    }

    /// Starts what hears of emails written by other instances, and tells `wake` how many each
    /// time it hears of some. A no-op for SQLite, whose one process wrote every row itself.
    /// Runs (supervised) until `shutdown`.
    pub fn hear_new_emails(
        &self,
        wake: impl Fn(usize) + Send + Sync + 'static,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        backend!(self, store => store.hear_new_emails(wake, shutdown, tracker))
    }

    /// Do other instances take rows from this queue too? Then each due row is found by every
    /// instance's sweeper, and each new one heard of by every instance.
    pub fn shared(&self) -> bool {
        backend!(self, store => store.shared())
    }

    /// Is the database answering? For `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        backend!(self, store => store.ping().await)
    }

    /// Can it take signups? Answers from what the backend last saw, without waiting on a lock,
    /// so a readiness probe is never slow.
    pub fn writable(&self) -> Result<(), StoreError> {
        backend!(self, store => store.writable())
    }

    // The signup and the link.

    /// Writes a signup, its token and its outbox row in one transaction, so an acknowledged
    /// signup always has its email on disk. Signing up again adds a token: the links already
    /// sent keep working until they expire or the address is confirmed.
    pub async fn create_signup(&self, new: NewSignup) -> Result<StoredSignup, StoreError> {
        backend!(self, store => store.create_signup(new).await)
    }

    /// A signup request, by the id its sender was given.
    pub async fn signup(&self, signup_id: &str) -> Result<Option<SignupView>, StoreError> {
        backend!(self, store => store.signup(signup_id).await)
    }

    /// Who a token belongs to, if anyone.
    pub async fn token_owner(&self, hash: &TokenHash) -> Result<Option<TokenOwner>, StoreError> {
        backend!(self, store => store.token_owner(hash).await)
    }

    /// Confirms the pending user a token belongs to, who takes the name that token's request
    /// gave (if it gave one). `false` if it was confirmed already, so two clicks racing on one
    /// link confirm once and both learn the outcome.
    pub async fn confirm(&self, owner: &TokenOwner, now: i64) -> Result<bool, StoreError> {
        backend!(self, store => store.confirm(owner, now).await)
    }

    // The outbox's state machine: queued -> sending -> sent, back to queued, or failed.

    /// Claims a queued, due row for sending: the row moves to `sending`, leased for `lease` on
    /// the database's clock, a new claim id fences it, and its attempt is counted. `None` when
    /// another sender has it, it is not due yet, or it was superseded: the caller simply moves
    /// on.
    pub async fn claim(
        &self,
        id: OutboxId,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        backend!(self, store => store.claim(id, lease).await)
    }

    /// Claims the oldest due row no sender holds, as [`Store::claim`] claims one: for a worker
    /// whose own row another sender took first, and, on a shared queue, for one offered a row
    /// that every instance was offered (see [`Store::shared`]). `None` when nothing is due, on
    /// PostgreSQL when every due row is held by another sender, and on SQLite when another
    /// worker asking at the same moment took the one row both picked.
    pub async fn claim_next_due(
        &self,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        backend!(self, store => store.claim_next_due(lease).await)
    }

    /// The SMTP server accepted the email: the row forgets how to rebuild its link, and the
    /// link stays valid until `link_expires_at`, however long the email waited in the queue.
    pub async fn mark_sent(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
    ) -> Result<(), StoreError> {
        backend!(self, store => store.mark_sent(claim, now, link_expires_at).await)
    }

    /// [`Store::mark_sent`], then [`Store::claim_next_due`] for the worker that sent it. On
    /// PostgreSQL one statement does both, so a worker going through a shared backlog records
    /// an email and takes the next in one round trip; SQLite writes them one after the other.
    /// `None` when no due row is free. An error is the outcome's: nothing was claimed.
    pub async fn mark_sent_and_claim_next(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
        lease: Duration,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        match self {
            #[cfg(not(sqlx_prepare = "postgres"))]
            Store::Sqlite(store) => {
                store.mark_sent(claim, now, link_expires_at).await?;
                Ok(self.claim_next_after_outcome(lease).await)
            }
            #[cfg(not(sqlx_prepare = "sqlite"))]
            Store::Postgres(store) => {
                store
                    .mark_sent_and_claim_next(claim, now, link_expires_at, lease)
                    .await
            }
        }
    }

    /// [`Store::claim_next_due`] once an outcome is written: a claim that fails claims nothing
    /// (logged), and must not pass for the outcome's failure; the sweeper offers the rows again.
    pub(crate) async fn claim_next_after_outcome(&self, lease: Duration) -> Option<ClaimedEmail> {
        self.claim_next_due(lease).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot claim a due email; the sweeper will offer it again");
            None
        })
    }

    /// A failed attempt that may succeed later: back to the queue, due `retry_in` from now on
    /// the database's clock.
    pub async fn mark_retry(
        &self,
        claim: Claim,
        retry_in: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        backend!(self, store => store.mark_retry(claim, retry_in, error).await)
    }

    /// Gave up: the row and its token stay, so an operator can see why and requeue it.
    pub async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        backend!(self, store => store.mark_failed(claim, error).await)
    }

    /// Takes back rows whose sender's lease ran out by the database's clock, except those in
    /// `except` (their sender is alive in this process). Returns how many.
    pub async fn reclaim_expired_leases(&self, except: &[OutboxId]) -> Result<u64, StoreError> {
        backend!(self, store => store.reclaim_expired_leases(except).await)
    }

    /// Queued rows that are due by the database's clock, oldest first, at most `limit`.
    pub async fn due_emails(&self, limit: i64) -> Result<Vec<OutboxId>, StoreError> {
        backend!(self, store => store.due_emails(limit).await)
    }

    /// How many emails wait to be sent (queued or being sent).
    pub async fn backlog(&self) -> Result<i64, StoreError> {
        backend!(self, store => store.backlog().await)
    }

    /// The secret changed between a signup and its send: the new token's hash replaces `old`.
    pub async fn rehash_token(
        &self,
        id: OutboxId,
        old: &TokenHash,
        new: &TokenHash,
    ) -> Result<(), StoreError> {
        backend!(self, store => store.rehash_token(id, old, new).await)
    }

    /// Queued, sending and failed emails, for `/metrics`: counted off indexes that hold only
    /// them, so a scrape costs the same however many sent rows the table holds.
    pub async fn active_counts(&self) -> Result<ActiveCounts, StoreError> {
        backend!(self, store => store.active_counts().await)
    }

    // Retention.

    /// Deletes at most `limit` rows of `what` in one transaction (one statement, but two for
    /// PostgreSQL's expired signups). More may be left while the answer is `full`, even when
    /// its `rows` is below `limit` (see [`Pruned`]). Each statement reads only the rows it may
    /// delete, off an index. On SQLite it goes through the writer connection, so it
    /// waits its turn between signup groups and holds the write lock for one batch only; on
    /// PostgreSQL it skips rows another instance's pruner holds.
    pub async fn prune(&self, what: Prune, limit: u32) -> Result<Pruned, StoreError> {
        backend!(self, store => store.prune(what, limit).await)
    }

    // The operator's view, for `confirmd outbox`.

    /// How many emails are in each state; a state with none counts zero. Sent and superseded
    /// rows are counted one by one: for the operator's command, not for `/metrics`.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        backend!(self, store => store.outbox_counts().await)
    }

    /// How many rows send each kind of email; a kind with none counts zero.
    pub async fn outbox_kinds(&self) -> Result<KindCounts, StoreError> {
        backend!(self, store => store.outbox_kinds().await)
    }

    /// When the oldest email still waiting was written, if any waits.
    pub async fn oldest_queued_at(&self) -> Result<Option<i64>, StoreError> {
        backend!(self, store => store.oldest_queued_at().await)
    }

    /// Failed emails, newest first, at most `limit`.
    pub async fn failed_emails(&self, limit: i64) -> Result<Vec<FailedEmail>, StoreError> {
        backend!(self, store => store.failed_emails(limit).await)
    }

    /// Puts one failed email of a pending user back in the queue, due now.
    pub async fn requeue(&self, id: OutboxId) -> Result<Requeue, StoreError> {
        backend!(self, store => store.requeue(id).await)
    }

    /// Puts every failed email of a pending user back in the queue, due now; returns how many.
    pub async fn requeue_all_failed(&self) -> Result<u64, StoreError> {
        backend!(self, store => store.requeue_all_failed().await)
    }
}

/// The scheme of a URL, for an error that names it (never the whole URL: it may hold a password).
fn url_scheme(url: &str) -> String {
    url.split_once(':')
        .map_or("", |(scheme, _)| scheme)
        .chars()
        .take(32)
        .collect()
}

/// Milliseconds in `d`, saturating: config values can be large but never overflow a timestamp.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `url` with its password, if any, replaced by `***`: for logs and error messages.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_the_urls_scheme_and_a_password_is_never_shown() {
        assert_eq!(
            Engine::of("sqlite://data/c.db?mode=rwc"),
            Some(Engine::Sqlite)
        );
        assert_eq!(Engine::of("sqlite::memory:"), Some(Engine::Sqlite));
        assert_eq!(Engine::of("postgres://u@h/db"), Some(Engine::Postgres));
        assert_eq!(Engine::of("PostgreSQL://u@h/db"), Some(Engine::Postgres));
        assert_eq!(Engine::of("mysql://u@h/db"), None);
        assert_eq!(Engine::of("data/c.db"), None);
        assert_eq!(
            shown_url("postgres://app:s3cret@db:5432/confirmd"),
            "postgres://app:***@db:5432/confirmd"
        );
        assert_eq!(
            shown_url("postgres://app@db/confirmd"),
            "postgres://app@db/confirmd"
        );
    }
}
