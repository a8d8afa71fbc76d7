//! Does the server take writes? What `/readyz` and signups ask of the store.
//!
//! Every write reports its outcome here. A failure that is about the server, not the row (the
//! connection refused or dropped while the server restarts, no connection free within the
//! acquire timeout, a read-only standby, a full disk, an administrator's shutdown), marks the
//! store unwritable; the next write that succeeds, or the probe, marks it writable again.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::Notify;

/// While the store is unwritable, how often the probe asks the server.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Is this error about the server (any write would fail now) rather than the row being written?
pub(super) fn is_server_fault(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or_default();
            // SQLSTATE classes: 08 connection exception, 53 insufficient resources (disk full,
            // out of memory, too many connections), 57 operator intervention (shutdown, crash
            // recovery), 58 system error; 25006 is a read-only transaction (a standby).
            matches!(code.get(..2), Some("08" | "53" | "57" | "58")) || code == "25006"
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_) => false,
        // I/O, TLS, the protocol, the pool timing out or closed: nothing gets written now.
        _ => true,
    }
}

/// Whether the last writes said the server takes writes, and if not, why.
#[derive(Debug, Default)]
pub(super) struct WriteHealth {
    fault: Mutex<Option<String>>,
    /// Wakes the probe when a write meets a fault.
    faulted: Notify,
    /// Signups inside their transaction now.
    signups: AtomicUsize,
}

impl WriteHealth {
    pub(super) fn fault(&self) -> Option<String> {
        self.fault.lock().expect("not poisoned").clone()
    }

    pub(super) fn failed(&self, error: &sqlx::Error) {
        if is_server_fault(error) {
            let mut fault = self.fault.lock().expect("not poisoned");
            if fault.is_none() {
                tracing::warn!(%error, "the database does not take writes; signups get 503 until it does");
                self.faulted.notify_one();
            }
            *fault = Some(error.to_string());
        }
    }

    pub(super) fn proven_writable(&self) {
        let mut fault = self.fault.lock().expect("not poisoned");
        if fault.take().is_some() {
            tracing::info!("the database takes writes again");
        }
    }

    /// Counts a signup in its transaction until the returned guard is dropped.
    pub(super) fn signup_started(&self) -> SignupInFlight<'_> {
        self.signups.fetch_add(1, Ordering::Relaxed);
        SignupInFlight(&self.signups)
    }

    pub(super) fn signups_in_flight(&self) -> usize {
        self.signups.load(Ordering::Relaxed)
    }
}

pub(super) struct SignupInFlight<'a>(&'a AtomicUsize);

impl Drop for SignupInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The probe: idle while writes succeed; once one fails for the server's sake, asks the server
/// every [`PROBE_INTERVAL`] whether it answers as a primary (a standby refuses writes) until it
/// does.
pub(super) async fn probe_while_unwritable(pool: PgPool, health: std::sync::Arc<WriteHealth>) {
    loop {
        if health.fault().is_none() {
            health.faulted.notified().await;
            continue;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
        let primary = sqlx::query_scalar!(r#"SELECT NOT pg_is_in_recovery() AS "primary!""#)
            .fetch_one(&pool)
            .await;
        match primary {
            Ok(true) => health.proven_writable(),
            Ok(false) => {
                *health.fault.lock().expect("not poisoned") =
                    Some("the database is a read-only standby".into());
            }
            Err(error) => health.failed(&error),
        }
    }
}
