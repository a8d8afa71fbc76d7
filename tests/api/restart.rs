//! Nothing acknowledged is lost across a restart.

use super::{
    helpers::{PATIENCE, poll_until, spawn_app_without_smtp},
    smtp::SmtpServer,
};

#[tokio::test]
async fn emails_queued_before_a_restart_are_delivered_after_it() {
    // SMTP is down for the whole first run: the workers fail and reschedule every email.
    let app = spawn_app_without_smtp(|s| s.worker.max_attempts = 1_000).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            app.signup_ok(&format!("user{i}@example.com"), "background")
                .await,
        );
    }

    let mut stopped = app.stop().await;

    let db = stopped.db().await;
    let queued: Vec<(i64,)> = db
        .rows("SELECT COUNT(*) FROM email_outbox WHERE state = 'queued'")
        .await;
    let queued = queued[0].0;
    db.close().await;
    assert_eq!(
        queued, 10,
        "every acknowledged email is still queued after the stop"
    );

    stopped.smtp = Some(SmtpServer::start_on(stopped.settings.smtp.port).await);
    let app = stopped.restart().await;

    for id in &ids {
        app.wait_for_delivery_state(id, "sent").await;
    }
    let smtp = app.smtp();
    assert!(poll_until(PATIENCE, || async { smtp.received().len() >= 10 }).await);
    assert_eq!(smtp.received().len(), 10, "each email exactly once");
}

/// More rows than workers, left queued by the last run, all go out at the next start without
/// waiting for a second sweep. On PostgreSQL the first sweep offers only as many rows as there
/// are workers, each for the row due next, and each worker goes on to the next due row by itself.
#[tokio::test]
async fn a_backlog_left_by_the_last_run_drains_without_a_second_sweep() {
    let app = spawn_app_without_smtp(|s| {
        s.worker.max_attempts = 1_000;
        s.worker.concurrency = 2;
    })
    .await;
    for i in 0..20 {
        app.signup_ok(&format!("user{i}@example.com"), "background")
            .await;
    }
    let mut stopped = app.stop().await;
    let db = stopped.db().await;
    // Every row due at once, as when an outage ended while the service was down.
    db.execute("UPDATE email_outbox SET next_attempt_at = 0 WHERE state = 'queued'")
        .await;
    db.close().await;

    // The next sweep after the one at start would come in an hour.
    stopped.settings.worker.sweep_interval_ms = 3_600_000;
    stopped.smtp = Some(SmtpServer::start_on(stopped.settings.smtp.port).await);
    let app = stopped.restart().await;

    let smtp = app.smtp();
    let drained = poll_until(PATIENCE, || async { smtp.received().len() >= 20 }).await;
    assert!(
        drained,
        "only {} of 20 emails were sent",
        smtp.received().len()
    );
    assert_eq!(smtp.received().len(), 20, "each email exactly once");
}
