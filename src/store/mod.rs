//! The database: every SQL statement of confirmd lives below this module, and nothing here knows
//! about HTTP or SMTP.
//!
//! The rest of the crate sees one type, [`Store`], and the backend-neutral records it reads and
//! writes ([`records`], [`state`]). Behind it sits one backend per database engine, each in a
//! module of its own with its own SQL: today [`sqlite`], the embedded default. A second backend
//! (PostgreSQL, for several instances on one database) goes in a sibling module beside it, and
//! `delivery/` and `http/` do not change.
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
//! default deep inside. Times are Unix milliseconds (`i64`), chosen by the caller.
//!
//! Queries are checked against the schema at compile time by `sqlx::query!`; the offline data in
//! `.sqlx/` lets a fresh clone build with no database around (`.ci/sqlx-prepare` refreshes it).

pub mod records;
pub mod sqlite;
pub mod state;

use crate::{config::DatabaseSettings, domain::TokenHash, supervise::Tasks};

pub use records::{
    Claim, ClaimedEmail, FailedEmail, KindCounts, NewSignup, OutboxCounts, OutboxId, Requeue,
    SignupView, StoredSignup, TokenOwner,
};
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
    Sqlite(SqliteStore),
}

/// Calls the backend's method of the same name: `backend!(self, store => store.ping().await)`.
/// A new backend adds its arm here.
macro_rules! backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            Store::Sqlite($backend) => $call,
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

    /// [`Store::connect`], with writes refused as "database or disk is full" once the database
    /// holds `max_size_mb` MiB (0: no cap but the disk's). Every URL is a SQLite one today; a
    /// second backend is picked here, by the URL's scheme.
    pub async fn connect_capped(
        url: &str,
        max_readers: u32,
        max_size_mb: u64,
    ) -> Result<Store, StoreError> {
        SqliteStore::connect_capped(url, max_readers, max_size_mb)
            .await
            .map(Store::Sqlite)
    }

    /// Is there a database at `url`? For the operator's commands, which must not create an
    /// empty database at a mistyped path and then report its empty queue as an all-clear.
    pub fn exists(url: &str) -> Result<bool, StoreError> {
        SqliteStore::exists(url)
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

    /// Claims a queued, due row for sending: the row moves to `sending`, leased until
    /// `lease_until`, and its attempt is counted. `None` when another sender has it, it is not
    /// due yet, or it was superseded: the caller simply moves on.
    pub async fn claim(
        &self,
        id: OutboxId,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        backend!(self, store => store.claim(id, now, lease_until).await)
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

    /// A failed attempt that may succeed later: back to the queue, due at `next_attempt_at`.
    pub async fn mark_retry(
        &self,
        claim: Claim,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        backend!(self, store => store.mark_retry(claim, next_attempt_at, error).await)
    }

    /// Gave up: the row and its token stay, so an operator can see why and requeue it.
    pub async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        backend!(self, store => store.mark_failed(claim, error).await)
    }

    /// Takes back rows whose sender's lease ran out, except those in `except` (their sender is
    /// alive in this process). Returns how many.
    pub async fn reclaim_expired_leases(
        &self,
        now: i64,
        except: &[OutboxId],
    ) -> Result<u64, StoreError> {
        backend!(self, store => store.reclaim_expired_leases(now, except).await)
    }

    /// Queued rows that are due, oldest first, at most `limit`.
    pub async fn due_emails(&self, now: i64, limit: i64) -> Result<Vec<OutboxId>, StoreError> {
        backend!(self, store => store.due_emails(now, limit).await)
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

    // The operator's view, for `confirmd outbox`.

    /// How many emails are in each state; a state with none counts zero.
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
    pub async fn requeue(&self, id: OutboxId, now: i64) -> Result<Requeue, StoreError> {
        backend!(self, store => store.requeue(id, now).await)
    }

    /// Puts every failed email of a pending user back in the queue; returns how many.
    pub async fn requeue_all_failed(&self, now: i64) -> Result<u64, StoreError> {
        backend!(self, store => store.requeue_all_failed(now).await)
    }
}
