//! confirmd's side: a fresh database, its outbox and its worker pool, driven through its own
//! library API exactly as the HTTP handlers drive it, minus HTTP.

use std::{path::Path, sync::Arc, time::Duration};

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
use tempfile::TempDir;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    SmtpAddr, address,
    pickup::{Observed, PickupClock},
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
}

/// One confirmd outbox on a database of its own, with its workers running or not yet.
pub struct Outbox {
    settings: Settings,
    store: Store,
    /// The server secret the links are derived from, as `Application::build` loads it.
    key: TokenKey,
    running: Option<Running>,
    /// Holds the database; removed when the outbox is dropped.
    _dir: TempDir,
}

struct Running {
    delivery: Delivery,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Outbox {
    /// A new, migrated database, as `Application::build` opens one; no workers yet.
    pub async fn create(setup: &OutboxSettings) -> anyhow::Result<Outbox> {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let settings = settings(dir.path(), setup)?;
        let store = Store::connect(&settings.database.url, settings.database.max_connections)
            .await
            .context("cannot open confirmd's database")?;
        store.migrate().await.context("cannot migrate")?;
        let key = TokenKey::load(&settings.token, &settings.database.url)?;
        Ok(Outbox {
            settings,
            store,
            key,
            running: None,
            _dir: dir,
        })
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

    /// Writes `jobs` background signups (user, token and queued email; one at a time, so one transaction each)
    /// with confirmd's own `Store::create_signup`, as `POST /signups` does while no worker runs.
    pub async fn seed(&self, jobs: usize) -> anyhow::Result<()> {
        for i in 0..jobs {
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
                .with_context(|| format!("cannot seed signup {i}"))?;
        }
        Ok(())
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

    /// Stops the workers (each finishes the email in hand) and closes the database.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown.cancel();
            running.tasks.close();
            running.tasks.wait().await;
        }
        self.store.close().await;
    }
}

/// confirmd's compiled-in defaults, with the database in `dir` and the worker pool sized.
fn settings(dir: &Path, setup: &OutboxSettings) -> anyhow::Result<Settings> {
    let mut settings = crate::settings(&setup.smtp, setup.workers)?;
    settings.database.url = format!("sqlite://{}/confirmd.db?mode=rwc", dir.display());
    settings.worker.concurrency = setup.workers;
    settings.worker.queue_capacity = setup.queue_capacity;
    Ok(settings.validated()?)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
