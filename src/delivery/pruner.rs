//! The pruner: deletes what the outbox no longer needs, so the tables, their indexes and every
//! query over them stay the size of the recent past, not of the service's whole life.
//!
//! Every `retention.interval_s` it deletes, in this order:
//!
//! - sent and superseded emails written more than `retention.sent_days` ago. The resend interval
//!   is read off an address's last email, so these must outlive it by far (config checks it);
//! - failed emails written more than `retention.failed_days` ago, kept until then for operators
//!   to read and requeue (`confirmd outbox`);
//! - pending signups whose every link expired more than `retention.sent_days` ago: the user, its
//!   tokens and its emails, unless an email of theirs still waits to be sent or failed within
//!   `retention.failed_days`;
//! - the tokens of confirmed users that expired more than `retention.sent_days` ago.
//!
//! Confirmed users stay. Each kind goes in batches of at most `retention.batch_size` rows, one
//! transaction each (one statement, but for PostgreSQL's expired signups, which take two), with
//! `retention.batch_pause_ms` between them, so the pruner never holds SQLite's write lock for long
//! and signups slip in between its batches. A kind is done when a batch finds fewer rows than
//! its limit. Runs supervised, like the sweeper: it keeps no state between passes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::Delivery;
use crate::{
    clock,
    config::RetentionSettings,
    metrics::Metrics,
    store::{Prune, Store, StoreError, millis},
};

pub(super) async fn run(
    delivery: Delivery,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    loop {
        let pass = Pass::at(clock::now_ms(), &settings, delivery.inner.policy.token_ttl);
        match pass
            .run(delivery.store(), delivery.metrics(), &settings, &shutdown)
            .await
        {
            Ok(0) => debug!("nothing to prune"),
            Ok(rows) => info!(rows, "pruned old rows"),
            Err(e) => error!(error = %e, "prune failed; trying again next interval"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(settings.interval()) => {}
        }
    }
    debug!("pruner stopped");
}

/// One pass: what is old enough to go, as of one reading of the clock.
#[derive(Debug)]
struct Pass {
    targets: Vec<Prune>,
}

impl Pass {
    /// What a pass at `now` deletes under `settings`, where links last `token_ttl`.
    fn at(now: i64, settings: &RetentionSettings, token_ttl: Duration) -> Pass {
        let before = |age: Option<Duration>| age.map(|age| now.saturating_sub(millis(age)));
        let failed_before = before(settings.failed_age());
        let mut targets = Vec::with_capacity(4);
        if let Some(written_before) = before(settings.sent_age()) {
            targets.push(Prune::DoneEmails { written_before });
        }
        if let Some(written_before) = failed_before {
            targets.push(Prune::FailedEmails { written_before });
        }
        // An expired link keeps its answer ("This link has expired", or "already confirmed") for
        // as long as a sent email is kept, and goes with its signup or token after that: a link
        // clicked a day late still says what happened to it.
        if let Some(expired_before) = before(settings.sent_age()) {
            // A link lasts `token_ttl` from its token's creation or longer (from its send), so
            // only tokens created that long before `expired_before` can have expired by then:
            // the pruner reads those, off the creation index the sends never move.
            let created_before = expired_before.saturating_sub(millis(token_ttl));
            targets.push(Prune::ExpiredSignups {
                expired_before,
                created_before,
                // Failed emails kept forever keep their signups forever.
                failed_since: failed_before.unwrap_or(i64::MIN),
            });
            targets.push(Prune::ExpiredTokens {
                expired_before,
                created_before,
            });
        }
        Pass { targets }
    }

    /// Deletes batch by batch until each kind is done or `shutdown`; returns the rows deleted.
    async fn run(
        &self,
        store: &Store,
        metrics: &Metrics,
        settings: &RetentionSettings,
        shutdown: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        for &what in &self.targets {
            loop {
                let pruned = store.prune(what, settings.batch_size).await?;
                metrics.observe_pruned(what, pruned.rows);
                total += pruned.rows;
                if !pruned.full {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(total),
                    () = tokio::time::sleep(settings.batch_pause()) => {}
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn an_expired_link_keeps_its_answer_as_long_as_a_sent_email_is_kept() {
        let settings = Settings::defaults().retention;
        let now = 10_000_000_000;
        let day = 24 * 3600 * 1000;
        let three_days_ago = now - 3 * day;
        let ttl = Settings::defaults().token.ttl();
        assert_eq!(ttl, Duration::from_secs(24 * 3600));
        let pass = Pass::at(now, &settings, ttl);
        // Tokens created four days ago or earlier: a link made later lasts past three days ago.
        assert!(pass.targets.contains(&Prune::ExpiredSignups {
            expired_before: three_days_ago,
            created_before: three_days_ago - day,
            failed_since: now - 30 * day,
        }));
        assert!(pass.targets.contains(&Prune::ExpiredTokens {
            expired_before: three_days_ago,
            created_before: three_days_ago - day,
        }));

        // Sent emails kept forever keep expired links forever.
        let forever = RetentionSettings {
            sent_days: 0,
            ..settings
        };
        let pass = Pass::at(now, &forever, ttl);
        assert!(pass.targets.iter().all(|target| !matches!(
            target,
            Prune::ExpiredSignups { .. } | Prune::ExpiredTokens { .. }
        )));
    }
}
