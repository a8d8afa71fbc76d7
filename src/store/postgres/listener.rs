//! Hearing of emails that other instances wrote: `LISTEN` on [`CHANNEL`].
//!
//! A background signup's transaction notifies `<instance>:<outbox id>` on commit (PostgreSQL
//! delivers a notification only if its transaction commits, and to every listening session).
//! Each instance's listener wakes one of its own workers for each of other instances' signups;
//! every instance hears each one, so the worker claims whichever row is due next, skipping rows
//! other senders hold, rather than that row (see `Delivery::offer_found`): whichever instance is
//! idle sends first. Its own signups woke its workers directly, so it skips its own instance's
//! notifications.
//!
//! sqlx's `PgListener` reconnects by itself when the connection drops; notifications sent while
//! it was away are lost, and the sweeper finds those rows at its next sweep.

use std::sync::Arc;

use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::OutboxId;

/// The channel background signups are announced on.
pub const CHANNEL: &str = "confirmd_outbox";

/// Listens until `shutdown`. Returns early (for the supervisor to log and restart) only if it
/// cannot start listening at all.
pub(super) async fn run(
    pool: PgPool,
    instance: Arc<str>,
    wake: Arc<dyn Fn(OutboxId) + Send + Sync>,
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
            Ok(Some(notification)) => {
                let Some((from, id)) = notification.payload().split_once(':') else {
                    continue;
                };
                if from == &*instance {
                    continue;
                }
                if let Ok(id) = id.parse() {
                    wake(OutboxId(id));
                }
            }
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
