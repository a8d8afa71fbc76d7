//! What the HTTP layer may read of the core, besides signing up and confirming: one signup
//! request's email, whether the service can take signups, and the metrics. The handlers get
//! these answers, never the store, the mailer or the metrics registry themselves, so data flows
//! one way: `http` -> `delivery` -> `store` / `mail`.

use std::time::Duration;

use super::Delivery;
use crate::store::{SignupView, StoreError};

/// Whether the service can take signups, and if not, each reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The database answers a query.
    pub database_answers: bool,
    /// It can take signups: it is the file that was opened, and writes meet no storage fault
    /// (full, locked, read-only). Why not is in the log, once, when it started.
    pub database_writable: bool,
    /// An internal task (the signup writer, a delivery worker, the sweeper) panicked and is
    /// waiting for its restart.
    pub task_restarting: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.database_answers && self.database_writable && !self.task_restarting
    }
}

impl Delivery {
    /// A signup request's email, by the id its sender was given.
    pub async fn show(&self, signup_id: &str) -> Result<Option<SignupView>, StoreError> {
        self.inner.store.signup(signup_id).await
    }

    /// Can the service take signups now? Not SMTP: emails wait in the outbox while it is down.
    pub async fn readiness(&self) -> Readiness {
        let store = &self.inner.store;
        let database_answers = store.ping().await.is_ok();
        Readiness {
            database_answers,
            database_writable: database_answers && store.writable().is_ok(),
            task_restarting: !store.tasks().down().is_empty(),
        }
    }

    /// The metrics in Prometheus' text format, with the states that stay small (queued,
    /// sending, failed) counted: a scrape never reads the sent rows.
    pub async fn metrics_text(&self) -> Result<String, StoreError> {
        let counts = self.inner.store.active_counts().await?;
        Ok(self.inner.metrics.render(&counts))
    }

    /// Counts a finished HTTP request in the metrics: `mode` is the delivery mode it used, or
    /// empty.
    pub fn observe_request(
        &self,
        method: &str,
        route: &str,
        mode: &str,
        status: u16,
        took: Duration,
    ) {
        self.inner
            .metrics
            .observe_request(method, route, mode, status, took);
    }
}
