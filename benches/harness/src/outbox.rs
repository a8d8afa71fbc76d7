//! confirmd's side: a fresh database, its outbox and its worker pool, driven through its own
//! library API exactly as the HTTP handlers drive it, minus HTTP.
//!
//! The database is an SQLite file in a temporary folder, or a fresh database on a PostgreSQL
//! server ([`crate::postgres`]). On PostgreSQL, more instances can [`join`](Outbox::join) it: each
//! has its own pool, listener, sweeper and workers, as a separate `confirmd serve` process would.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use confirmd::{
    Settings,
    delivery::Delivery,
    domain::{DeliveryMode, SubscriberEmail, TokenNonce},
    mail::{Mailer, SmtpTransport, Transport},
    metrics::Metrics,
    secret::TokenKey,
    store::{NewSignup, Store},
};
use futures::{StreamExt, TryStreamExt};
use tempfile::TempDir;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    SmtpAddr, address,
    pickup::{Observed, PickupClock},
    postgres::{FreshDatabase, TOKEN_SECRET},
    wait_until,
};

/// How the outbox is set up for a run.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub smtp: SmtpAddr,
    /// `worker.concurrency`, and `smtp.pool_size` to match, so every worker keeps a connection.
    pub workers: usize,
    /// `worker.queue_capacity`: ids the workers' channel holds; the table holds the rest.
    pub queue_capacity: usize,
    /// A PostgreSQL server (any database URL of it) to create the database on; `None`: an
    /// SQLite file.
    pub postgres: Option<String>,
}

/// One confirmd outbox on a database of its own, with its workers running or not yet.
pub struct Outbox {
    settings: Settings,
    store: Store,
    /// The server secret the links are derived from, as `Application::build` loads it.
    key: TokenKey,
    running: Option<Running>,
    database: Database,
}

/// Where the rows are, and who removes them.
enum Database {
    /// Removed with the folder when the outbox is dropped.
    File { _folder: TempDir },
    /// Dropped by [`Outbox::stop`] of the instance that created it.
    Fresh(FreshDatabase),
    /// Another instance's.
    Joined,
}

struct Running {
    delivery: Delivery,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Outbox {
    /// A new, migrated database, as `Application::build` opens one; no workers yet.
    pub async fn create(setup: &OutboxSettings) -> anyhow::Result<Outbox> {
        let (url, database) = match &setup.postgres {
            None => {
                let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
                let url = format!("sqlite://{}/confirmd.db?mode=rwc", dir.path().display());
                (url, Database::File { _folder: dir })
            }
            Some(server) => {
                let fresh = FreshDatabase::create(server).await?;
                (fresh.url().to_owned(), Database::Fresh(fresh))
            }
        };
        let settings = settings(&url, setup)?;
        let store = Store::connect(&settings.database.url, settings.database.max_connections)
            .await
            .context("cannot open confirmd's database")?;
        store.migrate().await.context("cannot migrate")?;
        let key = match &database {
            Database::File { .. } => TokenKey::load(&settings.token, &settings.database.url)?,
            // No file to keep a secret beside: the instances share one, as `token.secret`.
            _ => TokenKey::new(TOKEN_SECRET),
        };
        Ok(Outbox {
            settings,
            store,
            key,
            running: None,
            database,
        })
    }

    /// Another instance on this outbox's PostgreSQL database (`url`: its URL, or that URL with
    /// connection parameters added): its own pool, and later its own listener, sweeper and
    /// workers. No workers yet.
    pub async fn join(&self, url: &str) -> anyhow::Result<Outbox> {
        anyhow::ensure!(
            !matches!(self.database, Database::File { .. }),
            "only a PostgreSQL database has room for more instances"
        );
        let store = Store::connect(url, self.settings.database.max_connections)
            .await
            .context("cannot open confirmd's database")?;
        Ok(Outbox {
            settings: self.settings.clone(),
            store,
            key: self.key.clone(),
            running: None,
            database: Database::Joined,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.settings.database.url
    }

    /// The production mailer: SMTP to the catcher through confirmd's pool.
    pub fn smtp_mailer(&self) -> anyhow::Result<Mailer> {
        Ok(Mailer::new(&self.settings.smtp, self.settings.mail_from())?)
    }

    /// A mailer whose transport notes each pick-up on `clock`, then sends nothing (`sends` is
    /// false: a job that does nothing) or sends over SMTP as [`Outbox::smtp_mailer`] does.
    pub fn observed_mailer(&self, clock: Arc<PickupClock>, sends: bool) -> anyhow::Result<Mailer> {
        let then = if sends {
            Some(Arc::new(SmtpTransport::new(&self.settings.smtp)?) as Arc<dyn Transport>)
        } else {
            None
        };
        Ok(Mailer::with_transport(
            Arc::new(Observed { clock, then }),
            self.settings.mail_from(),
            self.settings.smtp.timeout(),
        ))
    }

    /// Writes `jobs` background signups (user, token and queued email; one transaction each)
    /// with confirmd's own `Store::create_signup`, as `POST /signups` does while no worker runs:
    /// as many at once as the pool has connections, as concurrent requests would.
    pub async fn seed(&self, jobs: usize) -> anyhow::Result<()> {
        let at_once = self.settings.database.max_connections as usize;
        futures::stream::iter(0..jobs)
            .map(|i| self.write_signup(i))
            .buffer_unordered(at_once)
            .try_collect::<()>()
            .await
    }

    /// Writes the background signup of job `i` with `Store::create_signup` alone: committed,
    /// and announced to other instances on PostgreSQL, but not handed to this instance's workers
    /// (an instance with no workers, say, whose signups only others send).
    pub async fn write_signup(&self, i: usize) -> anyhow::Result<()> {
        let email = SubscriberEmail::parse(&address(i))?;
        let nonce = TokenNonce::generate();
        let token_hash = self.key.token_for(&nonce).hash();
        let now = now_ms();
        self.store
            .create_signup(NewSignup {
                signup_id: format!("seed-{i}-{now}"),
                email,
                name: None,
                nonce,
                token_hash,
                token_expires_at: now + 24 * 3_600_000,
                mode: DeliveryMode::Background,
                request_id: None,
                trace_context: None,
                claim_for: None,
                resend_interval_ms: 60_000,
                now,
            })
            .await
            .with_context(|| format!("cannot write signup {i}"))?;
        Ok(())
    }

    /// Sets `worker.sweep_interval_ms` for the workers [`Outbox::start`] starts.
    pub fn set_sweep_interval(&mut self, interval: Duration) {
        self.settings.worker.sweep_interval_ms = interval.as_millis() as u64;
    }

    /// Starts the workers and the sweeper (whose first sweep offers the queued emails to them).
    pub fn start(&mut self, mailer: Mailer) {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let delivery = Delivery::start(
            &self.settings,
            self.store.clone(),
            mailer,
            self.key.clone(),
            Arc::new(Metrics::new()),
            shutdown.clone(),
            tasks.clone(),
        );
        self.running = Some(Running {
            delivery,
            shutdown,
            tasks,
        });
    }

    /// A background signup for job `i`, as `POST /signups` makes one: it returns once the email
    /// is committed to the outbox and offered to the workers.
    pub async fn enqueue(&self, i: usize) -> anyhow::Result<()> {
        let Some(running) = &self.running else {
            bail!("the workers are not started");
        };
        let email = SubscriberEmail::parse(&address(i))?;
        running
            .delivery
            .signup(&email, None, DeliveryMode::Background, None)
            .await
            .with_context(|| format!("signup {i} failed"))?;
        Ok(())
    }

    /// Waits until `jobs` emails are `sent` in the outbox table.
    pub async fn wait_sent(&self, jobs: usize, deadline: Duration) -> anyhow::Result<()> {
        let what = format!("{jobs} emails sent by confirmd");
        wait_until(deadline, &what, || async {
            let counts = self.store.outbox_counts().await?;
            if counts.failed > 0 {
                bail!("{} emails failed", counts.failed);
            }
            Ok(counts.sent as usize >= jobs)
        })
        .await
    }

    /// Stops the workers (each finishes the email in hand) and closes the database; the
    /// instance that created a PostgreSQL database drops it (stop the others first).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(running) = self.running.take() {
            running.shutdown.cancel();
            running.tasks.close();
            running.tasks.wait().await;
        }
        self.store.close().await;
        if let Database::Fresh(fresh) = self.database {
            fresh.drop().await?;
        }
        Ok(())
    }
}

/// confirmd's compiled-in defaults, with the database at `url` and the worker pool sized.
fn settings(url: &str, setup: &OutboxSettings) -> anyhow::Result<Settings> {
    let mut settings = crate::settings(&setup.smtp, setup.workers)?;
    settings.database.url = url.to_owned();
    settings.worker.concurrency = setup.workers;
    settings.worker.queue_capacity = setup.queue_capacity;
    Ok(settings.validated()?)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
