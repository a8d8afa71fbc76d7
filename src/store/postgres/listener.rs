//! Hearing of emails that other instances wrote: `LISTEN` on [`CHANNEL`].
//!
//! A statement that writes background signups notifies `<instance>:<emails>` on commit, once for
//! all its rows (PostgreSQL delivers a notification only if its transaction commits, and to every
//! listening session). Each instance's listener offers its own workers the row due next, once per
//! email and at most once per worker: every instance hears each notification, so the workers
//! claim whichever rows are due next, skipping rows other senders hold (see
//! `Delivery::offer_heard`), and whichever instance is idle sends first. Its own signups woke its
//! workers directly, so it skips its own instance's notifications.
//!
//! One notification per statement, not per email: PostgreSQL queues each notification, signals
//! every listening session and hands it to every listener, its writer's own included, and each
//! woke a worker on every other instance. (On one instance, the signups a second with the
//! workers sending moved within the spread between runs: BENCHMARKS.md, 9.5.)
//!
//! The version before notified once per email, its payload the email's id. An instance of that
//! version reads a count as an id, and this one reads an id as a count: either way a listener
//! offers its workers the row due next, at most once per worker, so instances of both versions
//! can share a database during a rolling deploy.
//!
//! sqlx's `PgListener` reconnects by itself when the connection drops; notifications sent while
//! it was away are lost, and the sweeper finds those rows at its next sweep.

use std::sync::Arc;

use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The channel background signups are announced on.
pub const CHANNEL: &str = "confirmd_outbox";

/// What `instance` notifies when it wrote `emails` background rows. The batch statement in
/// `signup` builds the same text in SQL.
pub(super) fn payload(instance: &str, emails: usize) -> String {
    format!("{instance}:{emails}")
}

/// The writer's instance and its number of emails, from a notification's payload.
fn parse(payload: &str) -> Option<(&str, usize)> {
    let (from, emails) = payload.split_once(':')?;
    Some((from, emails.parse().ok()?))
}

/// Listens until `shutdown`. Returns early (for the supervisor to log and restart) only if it
/// cannot start listening at all.
pub(super) async fn run(
    pool: PgPool,
    instance: Arc<str>,
    wake: Arc<dyn Fn(usize) + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut listener = loop {
        let started = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            started = started => match started {
                Ok(listener) => break listener,
                Err(error) => {
                    warn!(%error, "cannot listen for other instances' signups; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            },
        }
    };
    info!(channel = CHANNEL, "listening for other instances' signups");
    loop {
        let notification = tokio::select! {
            () = shutdown.cancelled() => break,
            // `try_recv` reports a lost connection as `None` (and reconnects on the next call),
            // where `recv` would hide it.
            notification = listener.try_recv() => notification,
        };
        match notification {
            Ok(Some(notification)) => match parse(notification.payload()) {
                Some((from, emails)) if from != &*instance => wake(emails),
                _ => {}
            },
            Ok(None) => {
                warn!(
                    "lost the connection that listens for other instances' signups; reconnecting (the sweeper finds what it missed)"
                );
            }
            Err(error) => {
                debug!(%error, "listening failed; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
    debug!("listener stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_as_its_instance_and_count() {
        let written = payload("4f1c", 30);
        assert_eq!(parse(&written), Some(("4f1c", 30)));
        assert_eq!(parse("4f1c"), None);
        assert_eq!(parse("4f1c:many"), None);
    }
}
