//! Builds the whole application from [`Settings`]: for `main`, and for the tests, which start it
//! on port 0 with a temporary database and then talk to it over real HTTP and SMTP.
//!
//! Shutdown is one [`CancellationToken`]: cancelling it stops the HTTP server from accepting
//! (in-flight requests finish), stops the workers from taking new emails (the one in hand is
//! finished) and stops the sweeper. A [`TaskTracker`] then tells when every task is done.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Settings,
    delivery::Delivery,
    http::{self, ApiContext},
    mail::Mailer,
    metrics::Metrics,
    store::Store,
};

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    shutdown_timeout: Duration,
}

impl Application {
    /// Opens and migrates the database, builds the SMTP transport, starts the workers and the
    /// sweeper, and binds the listener. The server itself starts with [`run_until_stopped`].
    ///
    /// [`run_until_stopped`]: Application::run_until_stopped
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.database.url, settings.database.max_connections)
            .await
            .with_context(|| format!("cannot open the database at {}", settings.database.url))?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let mailer =
            Mailer::new(&settings.smtp, settings.mail_from()).context("invalid SMTP settings")?;
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (server.listen)",
                    settings.server.listen
                )
            })?;

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let delivery = Delivery::start(
            &settings,
            store.clone(),
            mailer,
            Arc::new(Metrics::new()),
            shutdown.clone(),
            tasks.clone(),
        );
        let router = http::router(ApiContext {
            delivery,
            default_mode: settings.delivery.default_mode,
        });
        Ok(Application {
            listener,
            router,
            store,
            shutdown,
            tasks,
            shutdown_timeout: settings.worker.shutdown_timeout(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Cancelling this token shuts the application down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains: in-flight requests finish,
    /// workers finish the email in hand, within `worker.shutdown_timeout_ms`. Emails still queued
    /// stay in the outbox for the next start.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        info!(address = %self.local_addr(), "listening");
        let shutdown = self.shutdown.clone();
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("the HTTP server failed")?;
        // The server returns once every in-flight request has answered; the workers and any
        // sync send still running get the rest of the deadline.
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                timeout_ms = self.shutdown_timeout.as_millis() as u64,
                "shutdown deadline passed with emails in hand; their leases will bring them back"
            );
        }
        self.store.close().await;
        info!("stopped");
        Ok(())
    }
}
