//! Every SQL statement of confirmd, and nothing about HTTP or SMTP.
//!
//! SQLite allows one writer at a time. Rather than let many pooled connections race for the write
//! lock (and meet `SQLITE_BUSY`, "database is locked", when a read transaction tries to upgrade),
//! all writes go through a pool of exactly one connection, in WAL mode so that readers on the
//! other pool are never blocked by it. Each write transaction starts with `BEGIN IMMEDIATE`,
//! which takes the write lock up front: with several processes on one file (a restart while the
//! old one drains), the busy timeout then waits for the lock instead of failing.
//!
//! A storage fault (disk full, read-only, I/O error, the lock held by another process) fails
//! writes and leaves reads working; it must not outlast its cause. Two things make sure it does
//! not. The writer connection is replaced whenever it comes back to its pool still inside a
//! transaction (see [`Store::connect_capped`] for how that happens), and [`health`] tracks whether the
//! database takes writes, so that signups are refused with 503 (and `/readyz` says so) while it
//! does not, and accepted again as soon as it does.
//!
//! Queries are checked against the schema at compile time by `sqlx::query!`; the offline data in
//! `.sqlx/` lets a fresh clone build with no database around (see the README to refresh it).

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Connection, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{
    config::DatabaseSettings,
    domain::{DeliveryMode, SubscriberEmail, SubscriberName, TokenHash, TokenNonce},
    supervise::Tasks,
};

mod health;

use health::{FileIdentity, PROBE_INTERVAL, WriteHealth, is_storage_fault};

/// The primary key of an `email_outbox` row: what travels through the workers' channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutboxId(pub i64);

impl std::fmt::Display for OutboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What an outbox row sends. Its requester is never told which: every signup is answered the
/// same way, whether the address is new, pending or confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    /// The confirmation link, to an address that has not confirmed yet.
    Confirmation,
    /// "You already have an account", to a confirmed address: fixed text, nothing the requester
    /// chose.
    AccountNotice,
    /// Nothing: this address was sent an email less than the resend interval ago. The row goes
    /// through the same states as one that sends, so its requester sees the same thing.
    Suppressed,
}

impl EmailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "confirmation",
            EmailKind::AccountNotice => "account_notice",
            EmailKind::Suppressed => "suppressed",
        }
    }

    /// The schema's CHECK constraint allows only these three.
    fn parse(kind: &str) -> EmailKind {
        match kind {
            "account_notice" => EmailKind::AccountNotice,
            "suppressed" => EmailKind::Suppressed,
            _ => EmailKind::Confirmation,
        }
    }
}

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
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the database folder {path}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

/// The database: a one-connection pool for writes and a pool for reads, on the same file, and
/// the group-commit writer that signups go through.
#[derive(Clone, Debug)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    signups: mpsc::Sender<PendingSignup>,
    /// Signups handed to the writer and not answered yet: queued, or in the transaction it is
    /// writing.
    pending: Arc<AtomicUsize>,
    health: Arc<Health>,
    /// The supervised tasks of the application, the writer first among them.
    tasks: Tasks,
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

/// A signup waiting for the group-commit writer, and where to send its outcome.
struct PendingSignup {
    new: NewSignup,
    outcome: oneshot::Sender<Result<StoredSignup, StoreError>>,
}

impl std::fmt::Debug for PendingSignup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingSignup")
    }
}

/// Most signups written in one transaction. Bounds the wait of the last one in a batch.
const MAX_GROUP: usize = 64;

/// Signups waiting for the writer beyond which callers wait to hand theirs over.
const SIGNUP_QUEUE: usize = 1024;

/// SQLite's default page size, which confirmd never changes: what `database.max_size_mb` is
/// counted in.
const PAGE_SIZE: u64 = 4096;

/// A sender's hold on an outbox row: its id and the lease it was claimed with. Outcomes are
/// written only while the row still carries this lease, so a sender whose lease ran out (and whose
/// row the sweeper gave to another sender) cannot overwrite the newer sender's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub id: OutboxId,
    pub lease_until: i64,
}

/// What a signup writes, already parsed. Owned, because it travels to the group-commit writer.
/// It carries no token: the outbox row keeps the nonce the token is derived from, and the user's
/// side the token's hash.
pub struct NewSignup {
    /// The signup request's public id (a random UUID): what its sender is told, and all it can
    /// ask about.
    pub signup_id: String,
    pub email: SubscriberEmail,
    /// Kept with the token, and given to the user only when that token's link is confirmed.
    pub name: Option<SubscriberName>,
    pub nonce: TokenNonce,
    pub token_hash: TokenHash,
    pub token_expires_at: i64,
    pub mode: DeliveryMode,
    pub request_id: Option<String>,
    /// For sync mode: the row is written already claimed by the request, leased until then, so
    /// no worker or sweeper sends it at the same time.
    pub claimed_until: Option<i64>,
    /// An address gets no new email sooner than this after its last one.
    pub resend_interval_ms: i64,
    pub now: i64,
}

/// What a committed signup is known by.
#[derive(Debug, Clone)]
pub struct StoredSignup {
    pub signup_id: String,
    pub user_id: String,
    pub outbox_id: OutboxId,
    pub email: String,
    /// What its outbox row sends (for the operator's logs and for sync mode; never for the
    /// requester).
    pub kind: EmailKind,
    /// How many signups were committed in the same transaction, this one included.
    pub group_size: usize,
}

/// An outbox row claimed for sending: everything needed to build and send the email.
/// (No `Debug`: a row written before tokens were derived may hold a raw token.)
#[derive(Clone)]
pub struct ClaimedEmail {
    pub claim: Claim,
    pub kind: EmailKind,
    pub recipient: String,
    /// What the link's token is derived from.
    pub nonce: Option<TokenNonce>,
    /// A raw token, on rows queued before tokens were derived (erased once sent).
    pub legacy_token: Option<String>,
    /// The hash stored for this row's link: if the secret changed since the signup, the new
    /// token's hash replaces it before the email goes out.
    pub token_hash: Option<TokenHash>,
    /// Attempts including this one.
    pub attempts: i64,
    pub request_id: Option<String>,
    pub created_at: i64,
}

/// A signup request as its sender may see it, for `GET /signups/{id}`: its own email's delivery,
/// and nothing about the account (no name, no status, no error text, no kind).
#[derive(Debug, Clone)]
pub struct SignupView {
    pub id: String,
    pub created_at: i64,
    pub mode: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub sent_at: Option<i64>,
}

/// The user a token belongs to, for `GET /confirm`.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub email: String,
    pub status: String,
    pub expires_at: i64,
    /// The name the token's request gave, applied when this link confirms the address.
    pub name: Option<String>,
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

    /// Opens (and creates, with its folder) the database. Does not migrate: see [`Store::migrate`].
    pub async fn connect(url: &str, max_readers: u32) -> Result<Store, StoreError> {
        Store::connect_capped(url, max_readers, 0).await
    }

    /// [`Store::connect`], with writes refused as "database or disk is full" once the file
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
    ) -> Result<Store, StoreError> {
        let options = Store::connect_options(url)?;
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
        let (signups, queue) = mpsc::channel(SIGNUP_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let pending = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::new();
        tokio::spawn(tasks.supervise("writer", {
            let (writer, pending, health) = (writer.clone(), pending.clone(), health.clone());
            move || {
                let (writer, queue, pending, health) = (
                    writer.clone(),
                    queue.clone(),
                    pending.clone(),
                    health.clone(),
                );
                async move {
                    // The queue outlives a run of the writer: signups waiting in it are
                    // written by the next run after a panic.
                    let mut queue = queue.lock().await;
                    group_commit(&writer, &mut queue, &pending, &health).await;
                }
            }
        }));
        Ok(Store {
            writer,
            reader,
            signups,
            pending,
            health,
            tasks,
        })
    }

    /// The supervised tasks of the application: the store's writer, and whatever else the
    /// caller supervises with it (the delivery workers and sweeper).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// How every connection to the database is set up. Public so that the floor benchmark
    /// (`benches/floor.rs`) measures a bare handler on exactly these settings.
    pub fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
        Ok(SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL is durable against process crashes (the property the outbox
            // needs); only an OS crash or power loss can lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true))
    }

    /// Is there a database file at `url`? For the operator's commands, which must not create an
    /// empty database at a mistyped path and then report its empty queue as an all-clear.
    pub fn exists(url: &str) -> Result<bool, StoreError> {
        Ok(SqliteConnectOptions::from_str(url)?
            .get_filename()
            .is_file())
    }

    /// Applies the migrations embedded in the binary from `migrations/`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.writer).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Signups handed to the group-commit writer and not answered yet.
    pub fn signups_pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
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

    /// Passes a write's outcome through, noting a storage fault for [`Store::writable`].
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
    /// The write goes through the group-commit writer (see [`group_commit`]): it returns once
    /// the transaction holding this signup has committed.
    pub async fn create_signup(&self, new: NewSignup) -> Result<StoredSignup, StoreError> {
        let (outcome, receive) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self
            .signups
            .send(PendingSignup { new, outcome })
            .await
            .is_err()
        {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::WriterStopped);
        }
        receive.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Claims a queued, due row for sending: the row moves to `sending`, leased until
    /// `lease_until`, and its attempt is counted. `None` when another sender has it, it is not
    /// due yet, or it was superseded: the caller simply moves on.
    pub async fn claim(
        &self,
        id: OutboxId,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<ClaimedEmail>, StoreError> {
        let row = sqlx::query!(
            r#"UPDATE email_outbox
               SET state = 'sending', lease_until = ?3, attempts = attempts + 1
               WHERE id = ?1 AND state = 'queued' AND next_attempt_at <= ?2
               RETURNING id AS "id!", kind AS "kind!", recipient AS "recipient!", nonce, token,
                         token_hash, attempts AS "attempts!", request_id, created_at AS "created_at!""#,
            id.0,
            now,
            lease_until
        )
        // Stepped to the end, not just to its row: the statement commits (it runs outside a
        // transaction) only when it completes, and a commit that fails (a full disk) then shows
        // as an error here. Stopping at the first row would report a claim that was rolled back,
        // and the email would be sent while its row stays queued, again at every sweep.
        .fetch_all(&self.writer)
        .await
        .map(|rows| rows.into_iter().next());
        let row = self.wrote(row)?;
        Ok(row.map(|r| ClaimedEmail {
            claim: Claim {
                id: OutboxId(r.id),
                lease_until,
            },
            kind: EmailKind::parse(&r.kind),
            recipient: r.recipient,
            nonce: r
                .nonce
                .and_then(|n| <[u8; 32]>::try_from(n).ok())
                .map(TokenNonce),
            legacy_token: r.token,
            token_hash: r
                .token_hash
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .map(TokenHash),
            attempts: r.attempts,
            request_id: r.request_id,
            created_at: r.created_at,
        }))
    }

    /// The SMTP server accepted the email. The outbox forgets the nonce (and a legacy raw
    /// token), so even the secret cannot rebuild this link from the database any more, and the
    /// link stays valid for a full `token.ttl_hours` from now, however long the email waited in
    /// the queue.
    pub async fn mark_sent(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
    ) -> Result<(), StoreError> {
        let written = self.write_sent(claim, now, link_expires_at).await;
        self.wrote(written)
    }

    async fn write_sent(
        &self,
        claim: Claim,
        now: i64,
        link_expires_at: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'sent', sent_at = ?2, token = NULL, nonce = NULL, lease_until = NULL,
                 last_error = NULL
             WHERE id = ?1 AND state = 'sending' AND lease_until = ?3",
            claim.id.0,
            now,
            claim.lease_until
        )
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            sqlx::query!(
                "UPDATE confirmation_tokens SET expires_at = MAX(expires_at, ?2)
                 WHERE token_hash = (SELECT token_hash FROM email_outbox WHERE id = ?1)",
                claim.id.0,
                link_expires_at
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A failed attempt that may succeed later: back to the queue, due at `next_attempt_at`.
    pub async fn mark_retry(
        &self,
        claim: Claim,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query!(
            "UPDATE email_outbox
             SET state = 'queued', next_attempt_at = ?2, lease_until = NULL, last_error = ?3
             WHERE id = ?1 AND state = 'sending' AND lease_until = ?4",
            claim.id.0,
            next_attempt_at,
            error,
            claim.lease_until
        )
        .execute(&self.writer)
        .await;
        self.wrote(done)?;
        Ok(())
    }

    /// Gave up: a permanent rejection, or out of attempts. The row and its token stay, so an
    /// operator can see why and put it back in the queue.
    pub async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        let done = sqlx::query!(
            "UPDATE email_outbox SET state = 'failed', lease_until = NULL, last_error = ?2
             WHERE id = ?1 AND state = 'sending' AND lease_until = ?3",
            claim.id.0,
            error,
            claim.lease_until
        )
        .execute(&self.writer)
        .await;
        self.wrote(done)?;
        Ok(())
    }

    /// Takes back rows whose sender's lease ran out (the process died mid-send, most likely):
    /// they go back to the queue, due now. Rows in `except` are left alone: their sender is alive
    /// in this process. Returns how many.
    pub async fn reclaim_expired_leases(
        &self,
        now: i64,
        except: &[OutboxId],
    ) -> Result<u64, StoreError> {
        let except: Vec<i64> = except.iter().map(|id| id.0).collect();
        let except = serde_json::to_string(&except).expect("numbers serialize");
        let done = sqlx::query!(
            "UPDATE email_outbox SET state = 'queued', lease_until = NULL, next_attempt_at = ?1
             WHERE state = 'sending' AND lease_until < ?1
               AND id NOT IN (SELECT value FROM json_each(?2))",
            now,
            except
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        Ok(done.rows_affected())
    }

    /// Queued rows that are due, oldest first, at most `limit`.
    pub async fn due_emails(&self, now: i64, limit: i64) -> Result<Vec<OutboxId>, StoreError> {
        let ids = sqlx::query_scalar!(
            r#"SELECT id AS "id!" FROM email_outbox
               WHERE state = 'queued' AND next_attempt_at <= ?1
               ORDER BY next_attempt_at LIMIT ?2"#,
            now,
            limit
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().map(OutboxId).collect())
    }

    /// How many emails wait to be sent (queued or being sent).
    pub async fn backlog(&self) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar!(
            r#"SELECT COUNT(*) AS "count!: i64" FROM email_outbox WHERE state IN ('queued', 'sending')"#
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(count)
    }

    /// A signup request, by the id its sender was given.
    pub async fn signup(&self, signup_id: &str) -> Result<Option<SignupView>, StoreError> {
        let row = sqlx::query_as!(
            SignupView,
            r#"SELECT signup_id AS "id!", created_at AS "created_at!", mode AS "mode!",
                      state AS "state!", attempts AS "attempts!",
                      next_attempt_at AS "next_attempt_at!", sent_at
               FROM email_outbox WHERE signup_id = ?1"#,
            signup_id
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(row)
    }

    /// Who a token belongs to, if anyone.
    pub async fn token_owner(&self, hash: &TokenHash) -> Result<Option<TokenOwner>, StoreError> {
        let hash = &hash.0[..];
        let row = sqlx::query_as!(
            TokenOwner,
            r#"SELECT u.id AS "user_id!", u.email AS "email!", u.status AS "status!",
                      t.expires_at AS "expires_at!", t.name
               FROM confirmation_tokens t JOIN users u ON u.id = t.user_id
               WHERE t.token_hash = ?1"#,
            hash
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(row)
    }

    /// Confirms the pending user a token belongs to, who takes the name that token's request
    /// gave (if it gave one). `false` if it was confirmed already, so two clicks racing on one
    /// link confirm once and both learn the outcome; a name then changes nothing.
    pub async fn confirm(&self, owner: &TokenOwner, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query!(
            "UPDATE users SET status = 'confirmed', confirmed_at = ?2, name = COALESCE(?3, name)
             WHERE id = ?1 AND status = 'pending'",
            owner.user_id,
            now,
            owner.name
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        Ok(done.rows_affected() == 1)
    }

    /// The secret changed between a signup and its send: the link about to go out carries a
    /// token derived with the new secret, so its hash replaces the one stored at signup.
    pub async fn rehash_token(
        &self,
        id: OutboxId,
        old: &TokenHash,
        new: &TokenHash,
    ) -> Result<(), StoreError> {
        let (old, new) = (&old.0[..], &new.0[..]);
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query!(
            "UPDATE confirmation_tokens SET token_hash = ?2 WHERE token_hash = ?1",
            old,
            new
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE email_outbox SET token_hash = ?2 WHERE id = ?1",
            id.0,
            new
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

// The operator's view of the outbox, for `confirmd outbox` (src/outbox.rs): what the queue holds,
// which emails failed and why, and putting failed emails back in the queue.

/// The queue as an operator sees it (`confirmd outbox`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub superseded: i64,
}

/// What the outbox's rows send, for the operator: the requesters are never told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub confirmation: i64,
    pub account_notice: i64,
    pub suppressed: i64,
}

/// An email that will not be sent unless someone puts it back in the queue.
#[derive(Debug, Clone)]
pub struct FailedEmail {
    pub id: OutboxId,
    pub kind: EmailKind,
    pub recipient: String,
    pub attempts: i64,
    pub created_at: i64,
    pub last_error: Option<String>,
}

/// What `requeue` did with one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    Requeued,
    /// Only failed emails of pending users go back in the queue; this one is in `state`, its
    /// user `status`.
    NotFailed {
        state: String,
        status: String,
    },
    Unknown,
}

impl Store {
    /// How many emails are in each state; a state with none counts zero.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT state AS "state!", COUNT(*) AS "count!: i64" FROM email_outbox GROUP BY state"#
        )
        .fetch_all(&self.reader)
        .await?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let slot = match row.state.as_str() {
                "queued" => &mut counts.queued,
                "sending" => &mut counts.sending,
                "sent" => &mut counts.sent,
                "failed" => &mut counts.failed,
                "superseded" => &mut counts.superseded,
                // The schema's CHECK constraint allows no other state.
                _ => continue,
            };
            *slot = row.count;
        }
        Ok(counts)
    }

    /// How many rows send each kind of email; a kind with none counts zero. The kinds other
    /// than confirmations are counted off their partial index, and confirmations are the rest.
    pub async fn outbox_kinds(&self) -> Result<KindCounts, StoreError> {
        let total = sqlx::query_scalar!(r#"SELECT COUNT(*) AS "count!: i64" FROM email_outbox"#)
            .fetch_one(&self.reader)
            .await?;
        let rows = sqlx::query!(
            r#"SELECT kind AS "kind!", COUNT(*) AS "count!: i64" FROM email_outbox
               WHERE kind != 'confirmation' GROUP BY kind"#
        )
        .fetch_all(&self.reader)
        .await?;
        let mut counts = KindCounts {
            confirmation: total,
            ..KindCounts::default()
        };
        for row in rows {
            let slot = match EmailKind::parse(&row.kind) {
                EmailKind::Confirmation => continue,
                EmailKind::AccountNotice => &mut counts.account_notice,
                EmailKind::Suppressed => &mut counts.suppressed,
            };
            *slot = row.count;
            counts.confirmation -= row.count;
        }
        Ok(counts)
    }

    /// When the oldest email still waiting was written, if any waits.
    pub async fn oldest_queued_at(&self) -> Result<Option<i64>, StoreError> {
        let oldest = sqlx::query_scalar!(
            r#"SELECT MIN(created_at) AS "created_at: i64" FROM email_outbox WHERE state = 'queued'"#
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(oldest)
    }

    /// Failed emails, newest first, at most `limit`.
    pub async fn failed_emails(&self, limit: i64) -> Result<Vec<FailedEmail>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT id AS "id!", kind AS "kind!", recipient AS "recipient!",
                      attempts AS "attempts!", created_at AS "created_at!", last_error
               FROM email_outbox WHERE state = 'failed' ORDER BY id DESC LIMIT ?1"#,
            limit
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FailedEmail {
                id: OutboxId(r.id),
                kind: EmailKind::parse(&r.kind),
                recipient: r.recipient,
                attempts: r.attempts,
                created_at: r.created_at,
                last_error: r.last_error,
            })
            .collect())
    }

    /// Puts one failed email back in the queue with a fresh set of attempts, due now. A running
    /// service's sweeper picks it up at its next sweep.
    pub async fn requeue(&self, id: OutboxId, now: i64) -> Result<Requeue, StoreError> {
        let done = sqlx::query!(
            "UPDATE email_outbox SET state = 'queued', attempts = 0, next_attempt_at = ?2, lease_until = NULL
             WHERE id = ?1 AND state = 'failed'
               AND (SELECT status FROM users WHERE users.id = email_outbox.user_id) = 'pending'",
            id.0,
            now
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        if done.rows_affected() == 1 {
            return Ok(Requeue::Requeued);
        }
        let row = sqlx::query!(
            r#"SELECT o.state AS "state!", u.status AS "status!"
               FROM email_outbox o JOIN users u ON u.id = o.user_id WHERE o.id = ?1"#,
            id.0
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map_or(Requeue::Unknown, |r| Requeue::NotFailed {
            state: r.state,
            status: r.status,
        }))
    }

    /// Puts every failed email of a pending user back in the queue; returns how many.
    pub async fn requeue_all_failed(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query!(
            "UPDATE email_outbox SET state = 'queued', attempts = 0, next_attempt_at = ?1, lease_until = NULL
             WHERE state = 'failed'
               AND (SELECT status FROM users WHERE users.id = email_outbox.user_id) = 'pending'",
            now
        )
        .execute(&self.writer)
        .await;
        let done = self.wrote(done)?;
        Ok(done.rows_affected())
    }
}

/// The group-commit writer: one task that writes every signup, as many per transaction as are
/// waiting when it starts one.
///
/// SQLite commits are cheap in WAL mode, but statements are not free here: sqlx runs each
/// connection on its own thread, so every statement is a round trip between threads. A signup
/// written alone takes five (a lookup, three inserts, the commit). Signups that arrive while a
/// transaction is being written wait for the next one, and that one writes all the new addresses
/// among them with one statement per table (their rows passed as a JSON array), so under load a
/// group of thirty costs about what one signup costs alone. Alone, a signup is written at once:
/// the writer never waits for company.
///
/// Signing up again (an address that has a user, or one that appears twice in a group) takes the
/// statement-by-statement path, after the group's new users, so it sees them. A database error
/// about the signups (a constraint) rolls the whole group back and each of its signups is then
/// written in a transaction of its own, so only the one at fault gets the error. A storage fault
/// (disk full, the lock held elsewhere, ...) fails the whole group at once: written one by one,
/// each signup would only meet the fault again.
///
/// Before each group the writer checks that the database file is still the one it opened, and
/// refuses the group if not. Once writes meet a storage fault, it refuses groups without trying
/// them and probes every [`PROBE_INTERVAL`] instead, so that signups get the same answer as
/// `/readyz` until the fault is gone, and it learns the fault is gone even with no signups
/// coming in (see [`health`]).
async fn group_commit(
    writer: &SqlitePool,
    queue: &mut mpsc::Receiver<PendingSignup>,
    pending: &AtomicUsize,
    health: &Health,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut next_probe = tokio::time::Instant::now();
    loop {
        let received = if health.writes.fault().is_some() {
            tokio::select! {
                received = queue.recv_many(&mut group, MAX_GROUP) => received,
                () = tokio::time::sleep_until(next_probe) => {
                    probe(writer, health).await;
                    next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                    continue;
                }
            }
        } else {
            tokio::select! {
                received = queue.recv_many(&mut group, MAX_GROUP) => received,
                // Another task's write met a fault: start probing.
                () = health.writes.fault_noticed() => continue,
            }
        };
        if received == 0 {
            break;
        }
        // Answered one way or another from here, even if this run panics: then the group's
        // reply channels are dropped and each caller gets `WriterStopped`.
        let _answered = Answered {
            pending,
            count: group.len(),
        };
        #[cfg(test)]
        tests::panic_if_asked(&group);
        let outcomes = write_or_refuse(writer, &group, health).await;
        for (signup, outcome) in group.drain(..).zip(outcomes) {
            // The caller may have gone (its client hung up): the signup stands regardless.
            let _ = signup.outcome.send(outcome);
        }
    }
}

/// Takes a group off the count of signups waiting for the writer when it is answered.
struct Answered<'a> {
    pending: &'a AtomicUsize,
    count: usize,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.count, Ordering::Relaxed);
    }
}

/// Writes a group (see [`group_commit`]), or refuses it whole when the file is gone or the
/// storage is at fault, and tells `health` what the write showed.
async fn write_or_refuse(
    writer: &SqlitePool,
    group: &[PendingSignup],
    health: &Health,
) -> Vec<Result<StoredSignup, StoreError>> {
    let refuse_all = |error: &dyn Fn() -> StoreError| group.iter().map(|_| Err(error())).collect();
    if let Err(StoreError::FileGone { path }) = health.same_file() {
        return refuse_all(&|| StoreError::FileGone { path: path.clone() });
    }
    // Refused at once while the fault lasts, rather than each group meeting it again (and a
    // held lock's busy timeout with it): answers stay consistent with `/readyz`, and the probe
    // says within a second when the fault is gone.
    if let Some(fault) = health.writes.fault() {
        return refuse_all(&|| StoreError::Unwritable(fault.clone()));
    }
    match write_group(writer, group).await {
        Ok(outcomes) => {
            // A refusal writes nothing, so only a stored signup proves there is room for one.
            if outcomes.iter().any(Result::is_ok) {
                health.writes.proven_writable();
            }
            outcomes
        }
        Err(error) if is_storage_fault(&error) => {
            health.writes.failed(&error);
            let fault = error.to_string();
            refuse_all(&|| StoreError::Unwritable(fault.clone()))
        }
        Err(_) if group.len() > 1 => {
            let mut outcomes = Vec::with_capacity(group.len());
            for signup in group {
                let outcome = write_alone(writer, &signup.new).await;
                if let Err(StoreError::Database(error)) = &outcome {
                    health.writes.failed(error);
                }
                outcomes.push(outcome);
            }
            outcomes
        }
        Err(error) => vec![Err(error.into())],
    }
}

/// Bytes the probe writes: more than a signup's rows and index entries take, even when each of
/// its B-trees splits a page, so a probe that finds room means a signup finds room too.
const PROBE_BYTES: i64 = 64 * 1024;

/// A write that needs what a signup needs: the write lock, free pages (taken from the free list
/// or by growing the file, which `max_page_count` and a full disk refuse) and a commit.
async fn probe(writer: &SqlitePool, health: &Health) {
    if health.same_file().is_err() {
        return;
    }
    let written: Result<(), sqlx::Error> = async {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query!(
            "INSERT INTO write_probe (room) VALUES (zeroblob(?1))",
            PROBE_BYTES
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM write_probe")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await;
    match written {
        Ok(()) => health.writes.proven_writable(),
        Err(error) => health.writes.failed(&error),
    }
}

/// Writes a group in one transaction. The outer error is a database error that rolled the
/// whole group back; the inner ones are errors of single signups.
async fn write_group(
    writer: &SqlitePool,
    group: &[PendingSignup],
) -> Result<Vec<Result<StoredSignup, StoreError>>, sqlx::Error> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;

    // Which addresses are new? `users.email` holds each address's comparison key (see
    // `SubscriberEmail::key`); NOCASE, which folds ASCII only, still matches rows written before
    // keys were stored, as typed.
    let addresses: Vec<&str> = group.iter().map(|p| p.new.email.key()).collect();
    let addresses = serde_json::to_string(&addresses).expect("strings serialize");
    let taken: HashSet<String> = sqlx::query_scalar!(
        r#"SELECT email AS "email!" FROM users
           WHERE email IN (SELECT value FROM json_each(?1))"#,
        addresses
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|email| email.to_ascii_lowercase())
    .collect();
    let mut seen = HashSet::new();
    let (fresh, again): (Vec<usize>, Vec<usize>) = (0..group.len()).partition(|&i| {
        let key = group[i].new.email.key().to_ascii_lowercase();
        !taken.contains(&key) && seen.insert(key)
    });

    let mut outcomes: Vec<Option<Result<StoredSignup, StoreError>>> =
        group.iter().map(|_| None).collect();
    let signups: Vec<&NewSignup> = fresh.iter().map(|&i| &group[i].new).collect();
    for (i, stored) in fresh
        .into_iter()
        .zip(insert_new_users(&mut tx, &signups).await?)
    {
        outcomes[i] = Some(Ok(stored));
    }
    for i in again {
        outcomes[i] = match write_signup(&mut tx, &group[i].new).await {
            Err(StoreError::Database(e)) => return Err(e),
            outcome => Some(outcome),
        };
    }
    tx.commit().await?;

    Ok(outcomes
        .into_iter()
        .map(|outcome| {
            let mut outcome = outcome.expect("every signup of the group was written or refused");
            if let Ok(stored) = &mut outcome {
                stored.group_size = group.len();
            }
            outcome
        })
        .collect())
}

/// One signup in a transaction of its own: the fall-back when its group failed.
async fn write_alone(writer: &SqlitePool, new: &NewSignup) -> Result<StoredSignup, StoreError> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let stored = write_signup(&mut tx, new).await?;
    tx.commit().await?;
    Ok(stored)
}

/// A row of [`insert_new_users`], as JSON for `json_each`.
#[derive(serde::Serialize)]
struct NewUserRow<'a> {
    id: String,
    signup_id: &'a str,
    /// The address to send to, for the outbox.
    email: &'a str,
    /// What `users.email` holds: the address's comparison key, so one mailbox is one user.
    key: &'a str,
    name: Option<&'a str>,
    /// Hex, like the hash: JSON has no bytes, and SQLite's `unhex` turns them back into BLOBs.
    nonce: String,
    token_hash: String,
    token_expires_at: i64,
    mode: &'static str,
    state: &'static str,
    attempts: i64,
    claimed_until: Option<i64>,
    request_id: Option<&'a str>,
    now: i64,
}

/// Writes signups of addresses that have no user yet (and appear once): one statement per
/// table for all of them. The user starts without a name: the name waits with the token until
/// its link is confirmed.
async fn insert_new_users(
    conn: &mut SqliteConnection,
    signups: &[&NewSignup],
) -> Result<Vec<StoredSignup>, sqlx::Error> {
    if signups.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<NewUserRow> = signups
        .iter()
        .map(|new| {
            let (state, attempts) = outbox_start(new);
            NewUserRow {
                id: uuid::Uuid::now_v7().to_string(),
                signup_id: &new.signup_id,
                email: new.email.as_str(),
                key: new.email.key(),
                name: new.name.as_ref().map(SubscriberName::as_str),
                nonce: hex(&new.nonce.0),
                token_hash: hex(&new.token_hash.0),
                token_expires_at: new.token_expires_at,
                mode: new.mode.as_str(),
                state,
                attempts,
                claimed_until: new.claimed_until,
                request_id: new.request_id.as_deref(),
                now: new.now,
            }
        })
        .collect();
    let json = serde_json::to_string(&rows).expect("rows serialize");
    sqlx::query!(
        r#"INSERT INTO users (id, email, status, created_at)
           SELECT value ->> 'id', value ->> 'key', 'pending', value ->> 'now'
           FROM json_each(?1)"#,
        json
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        r#"INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
           SELECT unhex(value ->> 'token_hash'), value ->> 'id', value ->> 'name', value ->> 'now',
                  value ->> 'token_expires_at'
           FROM json_each(?1)"#,
        json
    )
    .execute(&mut *conn)
    .await?;
    let outbox: HashMap<String, i64> = sqlx::query!(
        r#"INSERT INTO email_outbox
             (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
              next_attempt_at, lease_until, request_id, created_at)
           SELECT value ->> 'signup_id', value ->> 'id', 'confirmation', value ->> 'email',
                  unhex(value ->> 'nonce'), unhex(value ->> 'token_hash'),
                  value ->> 'mode', value ->> 'state', value ->> 'attempts', value ->> 'now',
                  value ->> 'claimed_until', value ->> 'request_id', value ->> 'now'
           FROM json_each(?1)
           RETURNING id AS "id!: i64", user_id AS "user_id!: String""#,
        json
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.user_id, row.id))
    .collect();
    Ok(rows
        .into_iter()
        .map(|row| StoredSignup {
            signup_id: row.signup_id.to_owned(),
            outbox_id: OutboxId(outbox[&row.id]),
            user_id: row.id,
            email: row.email.to_owned(),
            kind: EmailKind::Confirmation,
            group_size: 1,
        })
        .collect())
}

/// The state an outbox row starts in: sync rows are written already claimed by their request.
fn outbox_start(new: &NewSignup) -> (&'static str, i64) {
    match new.claimed_until {
        Some(_) => ("sending", 1),
        None => ("queued", 0),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One signup's statements, inside the group's transaction, for an address that may have a user
/// already. It is never refused, and it never touches what earlier signups left: an address
/// that has a user gets the email its state calls for, and the requester is not told which.
///
/// - A pending address gets a confirmation with a token of its own, beside the tokens already
///   sent (their links keep working), its name kept with the token.
/// - A confirmed address gets the account notice, and no token.
/// - Either way, if this address was sent an email less than the resend interval ago, the row
///   is `suppressed`: it sends nothing. Suppressed rows do not count as emails sent, so a stream
///   of them cannot keep the owner from getting the next one.
async fn write_signup(
    conn: &mut SqliteConnection,
    new: &NewSignup,
) -> Result<StoredSignup, StoreError> {
    let email = new.email.as_str();
    let existing = sqlx::query!(
        r#"SELECT id AS "id!", email AS "email!", status AS "status!" FROM users WHERE email = ?1"#,
        // `users.email` holds the comparison key; the outbox below gets the address as typed.
        new.email.key()
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(user) = existing else {
        // A new address: written as a group's new users are, as a group of one.
        let mut stored = insert_new_users(conn, &[new]).await?;
        return Ok(stored.pop().expect("one signup in, one written"));
    };

    let last_email_at = sqlx::query_scalar!(
        r#"SELECT MAX(created_at) AS "created_at: i64" FROM email_outbox
           WHERE user_id = ?1 AND kind != 'suppressed'"#,
        user.id
    )
    .fetch_one(&mut *conn)
    .await?;
    let too_soon =
        last_email_at.is_some_and(|last| last.saturating_add(new.resend_interval_ms) > new.now);
    let kind = match (too_soon, user.status.as_str()) {
        (true, _) => EmailKind::Suppressed,
        (false, "confirmed") => EmailKind::AccountNotice,
        (false, _) => EmailKind::Confirmation,
    };

    let (nonce, token_hash) = match kind {
        EmailKind::Confirmation => {
            let (hash, name) = (
                &new.token_hash.0[..],
                new.name.as_ref().map(SubscriberName::as_str),
            );
            sqlx::query!(
                "INSERT INTO confirmation_tokens (token_hash, user_id, name, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                hash,
                user.id,
                name,
                new.now,
                new.token_expires_at
            )
            .execute(&mut *conn)
            .await?;
            (Some(&new.nonce.0[..]), Some(hash))
        }
        EmailKind::AccountNotice | EmailKind::Suppressed => (None, None),
    };

    let (mode, kind_name) = (new.mode.as_str(), kind.as_str());
    let (state, attempts) = outbox_start(new);
    let outbox_id = sqlx::query_scalar!(
        r#"INSERT INTO email_outbox
             (signup_id, user_id, kind, recipient, nonce, token_hash, mode, state, attempts,
              next_attempt_at, lease_until, request_id, created_at)
           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?10)
           RETURNING id AS "id!""#,
        new.signup_id,
        user.id,
        kind_name,
        user.email,
        nonce,
        token_hash,
        mode,
        state,
        attempts,
        new.now,
        new.claimed_until,
        new.request_id.as_deref()
    )
    .fetch_one(&mut *conn)
    .await?;

    Ok(StoredSignup {
        signup_id: new.signup_id.clone(),
        user_id: user.id,
        outbox_id: OutboxId(outbox_id),
        email: email.to_owned(),
        kind,
        group_size: 1,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::ConfirmationToken;

    /// The address that makes the writer panic in these tests: a panic no input can cause in the
    /// service, so it is compiled into unit tests only.
    const PANIC_ADDRESS: &str = "panic@writer.test";

    pub(super) fn panic_if_asked(group: &[PendingSignup]) {
        if group.iter().any(|p| p.new.email.as_str() == PANIC_ADDRESS) {
            panic!("injected writer panic");
        }
    }

    fn signup(address: &str) -> NewSignup {
        let token = ConfirmationToken::generate();
        NewSignup {
            signup_id: address.to_owned(),
            email: SubscriberEmail::parse(address).unwrap(),
            name: None,
            nonce: TokenNonce::generate(),
            token_hash: token.hash(),
            token_expires_at: i64::MAX,
            mode: DeliveryMode::Background,
            request_id: None,
            claimed_until: None,
            resend_interval_ms: 0,
            now: 1,
        }
    }

    #[tokio::test]
    async fn a_writer_that_panics_answers_its_group_with_an_error_and_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();

        // The signup in hand when the writer panics gets an answer, not a hang.
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            store.create_signup(signup(PANIC_ADDRESS)),
        )
        .await
        .expect("answered");
        assert!(matches!(answer, Err(StoreError::WriterStopped)));
        assert_eq!(store.tasks().restarts("writer"), 1);
        assert_eq!(store.signups_pending(), 0);

        // The next signup waits in the queue for the restarted writer and is written.
        let stored = tokio::time::timeout(
            Duration::from_secs(10),
            store.create_signup(signup("ann@example.com")),
        )
        .await
        .expect("answered")
        .unwrap();
        assert_eq!(stored.email, "ann@example.com");
        assert!(store.tasks().down().is_empty());
    }
}
