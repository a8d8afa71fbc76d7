//! A write that fails at COMMIT, against the real binary: a file-size limit (RLIMIT_FSIZE, set on
//! the running child with `prlimit`, no root needed) makes SQLite's append to the WAL fail the way
//! a full disk does. Before the fix, SQLite rolled the failed transaction back itself, sqlx's
//! rollback then failed, and its transaction count stayed at 1: every later signup got 503
//! ("attempted to call begin_with at non-zero transaction depth") until a restart.
//!
//! `SQLX_OFFLINE=true cargo test --test disk_full -- --nocapture` prints the recovery time.

mod support;
use support::{process, smtp};

use std::{process::Command, time::Duration};

use reqwest::StatusCode;
use sqlx::{Connection, SqliteConnection};
use tokio::time::Instant;

use process::{ServiceHome, free_port};
use smtp::{Behaviour, SmtpServer};

const PATIENCE: Duration = Duration::from_secs(10);

/// Sets the soft file-size limit of process `pid` (`unlimited` lifts it).
fn limit_file_size(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--fsize={limit}:"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={limit}: failed");
}

/// The state of the latest email to `recipient`, read from the database file.
async fn outbox_state(home: &ServiceHome, recipient: &str) -> String {
    let mut conn = SqliteConnection::connect(&home.database_url())
        .await
        .unwrap();
    sqlx::query_scalar("SELECT state FROM email_outbox WHERE recipient = ?1 ORDER BY id DESC")
        .bind(recipient)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn signup(client: &reqwest::Client, address: &str, email: &str) -> reqwest::Response {
    client
        .post(format!("{address}/signups?mode=background"))
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn signups_come_back_without_a_restart_after_a_commit_fails_for_lack_of_space() {
    // SMTP is down: emails wait in the outbox, which is all this test needs.
    let mut home = ServiceHome::new([
        ("CONFIRMD_SMTP__PORT", free_port().to_string()),
        // One client fills the disk: the per-client limit is not what this test is about.
        ("CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE", "0".into()),
    ]);
    let service = home.start().await;
    let address = service.address.clone();
    let client = reqwest::Client::new();

    // The WAL may grow by half a MiB more; then a commit fails.
    limit_file_size(service.pid(), &(512 * 1024).to_string());
    let mut refused = None;
    for i in 0..2_000 {
        let response = signup(&client, &address, &format!("user{i}@example.com")).await;
        if response.status() != StatusCode::ACCEPTED {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("a signup is refused once the WAL cannot grow");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    limit_file_size(service.pid(), "unlimited");
    let freed = Instant::now();
    let mut i = 0;
    let recovered = loop {
        i += 1;
        let response = signup(&client, &address, &format!("after{i}@example.com")).await;
        if response.status() == StatusCode::ACCEPTED {
            break freed.elapsed();
        }
        assert!(
            freed.elapsed() < PATIENCE,
            "signups still refused {PATIENCE:?} after the limit was lifted: {}\n{}",
            response.status(),
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("commit failure: next signup accepted {recovered:?} after the limit was lifted");
    assert!(service.log().contains("replacing it"), "{}", service.log());
}

#[tokio::test]
async fn an_email_in_flight_when_commits_start_failing_is_sent_once() {
    let smtp = SmtpServer::start().await;
    smtp.set_behaviour(Behaviour::Delay(Duration::from_millis(500)));
    let mut home = ServiceHome::new([
        ("CONFIRMD_SMTP__PORT", smtp.port().to_string()),
        ("CONFIRMD_SMTP__TIMEOUT_MS", "1000".into()),
        ("CONFIRMD_WORKER__LEASE_MS", "1500".into()),
        ("CONFIRMD_SMTP__ACQUIRE_TIMEOUT_MS", "200".into()),
        ("CONFIRMD_WORKER__SWEEP_INTERVAL_MS", "100".into()),
        ("CONFIRMD_SIGNUP__RESEND_INTERVAL_S", "0".into()),
    ]);
    let service = home.start().await;
    let address = service.address.clone();
    let client = reqwest::Client::new();

    // The email goes out while the database stops taking commits: recording it fails.
    let first = signup(&client, &address, "in-flight@example.com").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    limit_file_size(service.pid(), &(64 * 1024).to_string());
    for i in 0..2_000 {
        let response = signup(&client, &address, &format!("user{i}@example.com")).await;
        if response.status() != StatusCode::ACCEPTED {
            break;
        }
    }
    // Four leases of the fault, then the limit is lifted.
    let full = Instant::now();
    while full.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    limit_file_size(service.pid(), "unlimited");

    let deadline = Instant::now() + PATIENCE;
    let mut state = outbox_state(&home, "in-flight@example.com").await;
    while state != "sent" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = outbox_state(&home, "in-flight@example.com").await;
    }
    let copies = smtp
        .received()
        .iter()
        .filter(|mail| mail.to.iter().any(|to| to == "in-flight@example.com"))
        .count();
    eprintln!("commit failure: {copies} copies of the email in flight");
    assert_eq!(state, "sent", "{}", service.log());
    assert_eq!(copies, 1);
}
