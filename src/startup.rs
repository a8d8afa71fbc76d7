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
    http::{
        self, ApiContext, ClientLimit, RequestTimeouts,
        server::{self, ServerLimits, file_limit},
    },
    mail::Mailer,
    metrics::Metrics,
    secret::TokenKey,
    store::Store,
};

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    server_limits: ServerLimits,
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
        Self::assemble(settings, None).await
    }

    /// [`build`](Application::build), serving on a listener the caller has bound instead of
    /// `server.listen`. `confirmd demo` binds port 0 first, so that it knows the port before the
    /// service starts and can put it in `app.base_url`, where the links in the emails point.
    pub async fn build_on(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        Self::assemble(settings, Some(listener)).await
    }

    async fn assemble(
        settings: Settings,
        listener: Option<TcpListener>,
    ) -> anyhow::Result<Application> {
        let store = Store::open(&settings.database)
            .await
            .with_context(|| format!("cannot open the database at {}", settings.database.url))?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let mailer =
            Mailer::new(&settings.smtp, settings.mail_from()).context("invalid SMTP settings")?;
        let key = TokenKey::load(&settings.token, &settings.database.url)
            .context("cannot load the token secret")?;
        let listener = match listener {
            Some(listener) => listener,
            None => server::bind(&settings.server.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} (server.listen)",
                        settings.server.listen
                    )
                })?,
        };

        // Before anything else opens files: every connection, SQLite file and SMTP socket
        // counts against this limit.
        let file_limit = file_limit::raise();
        let server_limits = ServerLimits {
            header_read_timeout: settings.server.header_read_timeout(),
            max_connections: match settings.server.max_connections {
                0 => file_limit::default_max_connections(file_limit),
                configured => configured,
            },
        };
        if server_limits.max_connections as u64 + file_limit::RESERVED > file_limit {
            warn!(
                max_connections = server_limits.max_connections,
                file_limit,
                "server.max_connections leaves little room below the open-file limit; \
                 accepts may fail with 'Too many open files'"
            );
        }
        info!(
            file_limit,
            max_connections = server_limits.max_connections,
            "connection limits"
        );

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let delivery = Delivery::start(
            &settings,
            store.clone(),
            mailer,
            key,
            Arc::new(Metrics::new().with_task_restarts(store.tasks())),
            shutdown.clone(),
            tasks.clone(),
        );
        let router = http::router(ApiContext {
            delivery,
            default_mode: settings.delivery.default_mode,
            client_limit: ClientLimit::new(
                settings.signup.per_client_per_minute,
                settings.server.client_ip_header(),
            ),
            timeouts: RequestTimeouts {
                body_read: settings.server.body_read_timeout(),
                request: settings.server.request_timeout(),
            },
        });
        Ok(Application {
            listener,
            router,
            server_limits,
            store,
            shutdown,
            tasks,
            shutdown_timeout: settings.worker.shutdown_timeout(),
        })
    }

    /// Serves `routes` beside the service's own, outside its layers and its OpenAPI document:
    /// `confirmd demo --serve` adds the page's race and inbox, which the service itself has not.
    pub fn with_routes(mut self, routes: axum::Router) -> Application {
        self.router = self.router.merge(routes);
        self
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
        let server = server::serve(self.listener, self.router, self.server_limits, shutdown);
        // One deadline for the whole drain, counted from the shutdown signal: a client that
        // trickles its request must not hold the process open.
        let deadline = async {
            self.shutdown.cancelled().await;
            tokio::time::Instant::now() + self.shutdown_timeout
        };
        tokio::pin!(server, deadline);
        let deadline = tokio::select! {
            () = &mut server => {
                // Stopped without a signal (it cannot today; kept for safety): stop the workers.
                self.shutdown.cancel();
                tokio::time::Instant::now() + self.shutdown_timeout
            }
            at = &mut deadline => {
                if tokio::time::timeout_at(at, &mut server).await.is_err() {
                    warn!("requests still in flight at the shutdown deadline; closing them");
                }
                at
            }
        };
        // The workers and any sync send still running get the rest of the deadline.
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            self.store.close().await;
        } else {
            // Closing the store now would make a send that is about to finish fail to record
            // itself; leave the connections to the process exit instead.
            warn!(
                timeout_ms = self.shutdown_timeout.as_millis() as u64,
                "shutdown deadline passed with emails in hand; their leases will bring them back"
            );
        }
        info!("stopped");
        Ok(())
    }
}
