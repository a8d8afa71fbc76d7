//! Storage faults, injected without root: the database full (`database.max_size_mb`, SQLite's
//! `max_page_count`, with the test filling the file from a connection of its own), another
//! process holding the write lock, and the file deleted under the running service. While a fault
//! lasts signups get 503 with Retry-After and reads go on; once it is gone the service takes
//! signups again, with no restart. (A full database refuses a statement; a full disk can also
//! fail the COMMIT itself, which `tests/disk_full.rs` shows against the real binary.)

use std::time::Duration;

use reqwest::StatusCode;
use sqlx::{Connection, SqliteConnection};
use tokio::time::Instant;

use super::{
    helpers::{
        PATIENCE, TestApp, assert_problem, poll, poll_until, spawn_app, spawn_app_with, unix_ms,
    },
    smtp::Behaviour,
};

/// A connection of the test's own to the service's database file, as another process would have.
async fn other_process(app: &TestApp) -> SqliteConnection {
    SqliteConnection::connect(&app.settings.database.url)
        .await
        .unwrap()
}

/// Fills the database past the service's cap with a table the service knows nothing about;
/// deleting its rows gives the space back (SQLite reuses free pages before it grows the file).
async fn fill(app: &TestApp) -> SqliteConnection {
    let mut conn = other_process(app).await;
    sqlx::query("CREATE TABLE filler (b BLOB)")
        .execute(&mut conn)
        .await
        .unwrap();
    let cap = app.settings.database.max_size_mb * 1024 * 1024;
    sqlx::query("INSERT INTO filler VALUES (zeroblob(?1))")
        .bind(i64::try_from(cap).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Signs new addresses up until one is refused, and returns that answer.
async fn signup_until_refused(app: &TestApp, prefix: &str) -> reqwest::Response {
    for i in 0..200 {
        let response = app
            .signup(&format!("{prefix}{i}@example.com"), "background")
            .await;
        if response.status() != StatusCode::ACCEPTED {
            return response;
        }
    }
    panic!("200 signups were accepted into a full database");
}

/// Asserts a 503 that tells the client when to come back.
async fn assert_retry_later(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    let seconds: u64 = retry_after
        .expect("a 503 for a storage fault carries Retry-After")
        .parse()
        .unwrap();
    assert!(seconds >= 1);
}

async fn ready(app: &TestApp) -> bool {
    app.get("/readyz").await.status() == StatusCode::OK
}

/// Polls with new addresses until a signup is accepted; returns how long that took.
async fn time_to_next_signup(app: &TestApp, prefix: &str) -> Duration {
    let freed = Instant::now();
    let mut i = 0;
    poll(PATIENCE, || {
        i += 1;
        let email = format!("{prefix}{i}@example.com");
        async move {
            let status = app.signup(&email, "background").await.status();
            if status == StatusCode::ACCEPTED {
                Ok(())
            } else {
                Err(status)
            }
        }
    })
    .await
    .unwrap_or_else(|status| panic!("signups still answered {status} after the fault ended"));
    freed.elapsed()
}

#[tokio::test]
async fn a_full_database_refuses_signups_with_503_keeps_reads_and_takes_signups_once_space_is_freed()
 {
    let app = spawn_app_with(|s| s.database.max_size_mb = 1).await;
    let earlier = app.signup_ok("before@example.com", "background").await;
    assert!(ready(&app).await);

    let mut filler = fill(&app).await;
    assert_retry_later(signup_until_refused(&app, "full").await).await;
    // Still refused while the fault lasts, and the instance says it cannot take signups.
    assert_retry_later(app.signup("still-full@example.com", "background").await).await;
    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Reads go on.
    app.signup_details(&earlier).await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::OK);

    sqlx::query("DELETE FROM filler")
        .execute(&mut filler)
        .await
        .unwrap();
    let recovery = time_to_next_signup(&app, "freed").await;
    eprintln!("disk full: next signup accepted {recovery:?} after the space was freed");
    assert!(poll_until(PATIENCE, || ready(&app)).await);
}

#[tokio::test]
async fn readiness_returns_once_space_is_freed_even_with_no_signup_to_prove_it() {
    let app = spawn_app_with(|s| s.database.max_size_mb = 1).await;
    let mut filler = fill(&app).await;
    assert_retry_later(signup_until_refused(&app, "full").await).await;
    assert!(!ready(&app).await);

    // No signup comes in (a load balancer sends none to an unready instance): the writer's own
    // probe finds the room.
    sqlx::query("DELETE FROM filler")
        .execute(&mut filler)
        .await
        .unwrap();
    let freed = Instant::now();
    assert!(poll_until(PATIENCE, || ready(&app)).await);
    eprintln!(
        "disk full: /readyz 200 again {:?} after the space was freed",
        freed.elapsed()
    );
    app.signup_ok("after@example.com", "background").await;
}

#[tokio::test]
async fn signups_get_503_with_retry_after_while_another_process_holds_the_write_lock() {
    let app = spawn_app().await;
    let earlier = app.signup_ok("before@example.com", "background").await;
    app.wait_for_delivery_state(&earlier, "sent").await;

    let mut holder = other_process(&app).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    // Refused once the busy timeout passes, and reads go on meanwhile.
    assert_retry_later(app.signup("locked@example.com", "background").await).await;
    app.signup_details(&earlier).await;
    assert!(!ready(&app).await);

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let recovery = time_to_next_signup(&app, "unlocked").await;
    eprintln!("lock held: next signup accepted {recovery:?} after the lock was released");
    assert!(poll_until(PATIENCE, || ready(&app)).await);
}

#[tokio::test]
async fn a_fault_met_by_the_sweeper_shows_in_readiness_and_clears_with_no_signup_coming() {
    // No signups at all: the sweeper's writes meet the held lock, and the writer, woken by it,
    // probes until the lock is released.
    let app = spawn_app().await;
    assert!(ready(&app).await);

    let mut holder = other_process(&app).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    assert!(
        poll_until(PATIENCE, || async { !ready(&app).await }).await,
        "/readyz stayed 200 while the database was locked"
    );

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert!(poll_until(PATIENCE, || ready(&app)).await);
}

#[tokio::test]
async fn a_database_file_deleted_under_the_service_makes_it_unready_and_refuses_signups() {
    let app = spawn_app().await;
    app.signup_ok("before@example.com", "background").await;
    assert!(ready(&app).await);

    std::fs::remove_file(app.db_path()).unwrap();

    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Not acknowledged into a file that is gone.
    assert_retry_later(app.signup("lost@example.com", "background").await).await;
    assert_retry_later(app.signup("lost@example.com", "sync").await).await;
}

#[tokio::test]
async fn an_email_whose_outcome_could_not_be_written_is_sent_once() {
    // The lease runs out while the outcome cannot be written: before the fix, the sweeper took
    // the row back and sent the email again.
    let app = spawn_app_with(|s| {
        s.smtp.timeout_ms = 3_000;
        s.smtp.acquire_timeout_ms = 200;
        s.worker.lease_ms = 3_500;
    })
    .await;
    app.smtp()
        .set_behaviour(Behaviour::Delay(Duration::from_millis(1_500)));
    let id = app.signup_ok("once@example.com", "background").await;

    // A worker has claimed the email and waits on the SMTP server: take the write lock now, so
    // that recording the send fails.
    let db = app.db().await;
    let lease_until: i64 = poll(PATIENCE, || async {
        db.rows::<(Option<i64>,)>("SELECT lease_until FROM email_outbox WHERE state = 'sending'")
            .await
            .pop()
            .and_then(|(lease_until,)| lease_until)
            .ok_or(())
    })
    .await
    .expect("a worker claims the email");
    db.close().await;
    let mut holder = other_process(&app).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let mail = app.smtp().wait_for_mail(1, PATIENCE).await;
    assert_eq!(mail.len(), 1);
    let delivered = Instant::now();

    // Hold the fault until recording the send has failed and the lease has run out, with a few
    // sweeps after both. Recording waits out the busy timeout (5 s) twice at most: once for the
    // writer connection, which a sweep may hold while it waits for the lock, and once itself.
    let busy_timeout = Duration::from_secs(5);
    assert!(
        poll_until(3 * PATIENCE, || async {
            delivered.elapsed() > 2 * busy_timeout + Duration::from_millis(500)
                && unix_ms() > lease_until + 500
        })
        .await
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let details = app.wait_for_delivery_state(&id, "sent").await;
    assert_eq!(
        app.mail_to("once@example.com").len(),
        1,
        "copies sent of the email whose outcome was written late"
    );
    assert_eq!(details["delivery"]["attempts"], 1);
}

#[tokio::test]
async fn restarts_of_internal_tasks_are_counted_in_metrics() {
    // A panic cannot be caused through the API; `supervise` and the store's unit tests inject one.
    // Here: the counter every dashboard needs exists from the start, at zero.
    let app = spawn_app().await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for task in ["writer", "worker", "sweeper"] {
        let series = format!(r#"confirmd_task_restarts_total{{task="{task}"}} 0"#);
        assert!(text.contains(&series), "no {series} in\n{text}");
    }
}
