//! An SMTP outage far longer than ten attempts, survived by the real binary with no operator:
//! the emails acknowledged during the outage go out once SMTP is back.
//!
//! The binary runs the default retry schedule compressed a thousandfold (1 ms doubling up to
//! 900 ms instead of 1 s up to 15 min); `delivery::retry`'s unit tests show that this schedule is
//! the default one scaled, attempt for attempt, so every second of outage here stands for about
//! 17 minutes at the defaults. The measured outage is printed: `--nocapture` shows it:
//! `SQLX_OFFLINE=true cargo test --test smtp_outage -- --nocapture`.

mod support;
use support::{process, smtp};

use std::str::FromStr;
use std::time::Duration;

use reqwest::StatusCode;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::time::Instant;

use process::{ServiceHome, free_port};
use smtp::SmtpServer;

/// The compression of the retry schedule against the defaults (`retry_base_ms = 1000`,
/// `retry_max_ms = 900000`).
const COMPRESSION: u32 = 1_000;

/// How long SMTP stays down at the least: 20 s here, about 5.5 hours at the defaults.
const OUTAGE: Duration = Duration::from_secs(20);

/// The fewest attempts every email must have failed before SMTP comes back.
const ATTEMPTS_DURING_OUTAGE: i64 = 10;

/// Signups during the outage, in each mode.
const SIGNUPS: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_many_attempts_ends_in_delivery_without_an_operator() {
    let smtp_port = free_port();
    // Only the retry schedule is compressed (and the sweep, which offers due retries, made
    // frequent enough for it); `worker.max_attempts` and `token.ttl_hours` keep their defaults.
    let mut home = ServiceHome::new([
        ("CONFIRMD_SMTP__PORT", smtp_port.to_string()),
        (
            "CONFIRMD_WORKER__RETRY_BASE_MS",
            (1_000 / COMPRESSION).to_string(),
        ),
        (
            "CONFIRMD_WORKER__RETRY_MAX_MS",
            (900_000 / COMPRESSION).to_string(),
        ),
        ("CONFIRMD_WORKER__SWEEP_INTERVAL_MS", "20".into()),
        // Twenty signups from one client: the per-client limit is not what this test is about.
        ("CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE", "0".into()),
    ]);
    let service = home.start().await;
    let client = reqwest::Client::new();

    // SMTP is down (nothing listens on its port) from before the first signup.
    let outage_began = Instant::now();
    let mut recipients = Vec::new();
    for (mode, acknowledged) in [
        ("background", StatusCode::ACCEPTED),
        ("sync", StatusCode::BAD_GATEWAY),
    ] {
        for i in 0..SIGNUPS {
            let email = format!("{mode}-{i}@example.com");
            let response = client
                .post(format!("{}/signups?mode={mode}", service.address))
                .json(&serde_json::json!({ "email": email }))
                .send()
                .await
                .unwrap();
            // Sync mode stores the signup and says its email will be retried.
            assert_eq!(response.status(), acknowledged, "{email}");
            recipients.push(email);
        }
    }

    let db = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::from_str(&home.database_url())
            .unwrap()
            .busy_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let attempts = async || -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT MIN(attempts), MAX(attempts), SUM(state = 'failed') FROM email_outbox",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    // Hold the outage until every email has failed ten times and the outage lasted `OUTAGE`.
    let deadline = outage_began + OUTAGE + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (fewest, most) = loop {
        tick.tick().await;
        let (fewest, most, failed) = attempts().await;
        assert_eq!(failed, 0, "an email was given up during the outage");
        if fewest >= ATTEMPTS_DURING_OUTAGE && outage_began.elapsed() >= OUTAGE {
            break (fewest, most);
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}, the fewest attempts of an email are {fewest}",
            outage_began.elapsed()
        );
    };

    let smtp = SmtpServer::start_on(smtp_port).await;
    let outage = outage_began.elapsed();
    let back = Instant::now();
    // Back within one cap (900 ms) plus a sweep, give or take a loaded machine.
    let mail = smtp
        .wait_for_mail(recipients.len(), Duration::from_secs(30))
        .await;
    let delivered_after = back.elapsed();

    let mut delivered: Vec<String> = mail.iter().flat_map(|m| m.to.clone()).collect();
    delivered.sort();
    recipients.sort();
    assert_eq!(delivered, recipients, "each email exactly once");
    let (fewest_at_end, _, failed) = attempts().await;
    assert_eq!(failed, 0);
    // The server has the mail before the worker records it: poll for the last `sent`.
    let recorded_by = Instant::now() + Duration::from_secs(10);
    let states = loop {
        let states: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT state FROM email_outbox")
            .fetch_all(&db)
            .await
            .unwrap();
        if states == [("sent".to_owned(),)] || Instant::now() >= recorded_by {
            break states;
        }
        tick.tick().await;
    };
    assert_eq!(states, [("sent".to_owned(),)]);
    println!(
        "SMTP outage of {:.1} s survived ({:.1} h at the defaults), {fewest}..{most} failed attempts \
         per email by its end; all {} emails delivered {:.2} s after SMTP came back, \
         after {fewest_at_end}+ attempts each",
        outage.as_secs_f64(),
        outage.as_secs_f64() * f64::from(COMPRESSION) / 3600.0,
        recipients.len(),
        delivered_after.as_secs_f64(),
    );
}
