//! The promises of the outbox, checked against the real binary as a child process: an email the
//! service acknowledged (`202 Accepted`) is delivered even if the process is killed, and a
//! SIGTERM stops it cleanly with nothing sent twice. Also a load run (ignored by default).
//!
//! Each test prints what it measured; `--nocapture` shows it:
//! `SQLX_OFFLINE=true cargo test --test process -- --nocapture` (the fast ones),
//! `SQLX_OFFLINE=true cargo test --test process -- --ignored --nocapture` (the load; set
//! `CONFIRMD_E2E_SMTP_PORT` and `CONFIRMD_E2E_MAILDEV_URL` to send its email to maildev).

mod support;
use support::{burst, links, process, smtp};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use burst::{addresses, burst, copies_by_recipient, duplicates, wait_for, wait_until_delivered};
use process::{ServiceHome, free_port};
use smtp::{Behaviour, ReceivedMail, SmtpServer};

/// `worker.concurrency` in the compiled-in defaults, which these tests keep: at most this many
/// emails are in a sender's hands at any moment.
const WORKER_CONCURRENCY: usize = 4;

/// How long a test waits for every acknowledged email to arrive after a restart.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(60);

/// Settings that make a failed send come back within a test's patience: SMTP on `smtp_port`,
/// retries every 50–200 ms without giving up, sweeps every 100 ms, leases of 3 s; and no
/// per-client signup limit, since each test is one client sending bursts of signups.
fn fast_retries(smtp_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE", "0".into()),
        ("CONFIRMD_SMTP__PORT", smtp_port.to_string()),
        ("CONFIRMD_SMTP__TIMEOUT_MS", "2000".into()),
        ("CONFIRMD_WORKER__RETRY_BASE_MS", "50".into()),
        ("CONFIRMD_WORKER__RETRY_MAX_MS", "200".into()),
        ("CONFIRMD_WORKER__MAX_ATTEMPTS", "1000".into()),
        ("CONFIRMD_WORKER__SWEEP_INTERVAL_MS", "100".into()),
        ("CONFIRMD_WORKER__LEASE_MS", "3000".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn emails_acknowledged_while_smtp_is_down_survive_a_crash() {
    // Nothing listens on the SMTP port for the whole first run: every send fails and is
    // rescheduled, so at the kill every email is only in the database.
    let smtp_port = free_port();
    let mut home = ServiceHome::new(fast_retries(smtp_port));
    let mut first = home.start().await;

    let signups = burst(
        first.address.clone(),
        "background",
        addresses("down", 200),
        8,
        Arc::default(),
    )
    .await;
    assert_eq!(
        signups.statuses,
        BTreeMap::from([(202, 200)]),
        "every signup is acknowledged; errors: {:?}",
        signups.errors
    );
    let states = home.outbox_states().await;
    assert_eq!(states.values().sum::<i64>(), 200, "{states:?}");
    assert!(!states.contains_key("sent"), "SMTP is down: {states:?}");

    first.kill_9();
    let smtp = SmtpServer::start_on(smtp_port).await;
    let restarted_at = Instant::now();
    let _second = home.start().await;
    let mail = wait_until_delivered(&smtp, &home, &signups.acknowledged, DELIVERY_PATIENCE).await;

    let copies = copies_by_recipient(&mail);
    let delivered: BTreeSet<&String> = copies.keys().collect();
    let acknowledged: BTreeSet<&String> = signups.acknowledged.iter().collect();
    println!(
        "crash with SMTP down: acknowledged {}, delivered {} ({} messages, {} duplicates) \
         {:.1}s after the restart",
        acknowledged.len(),
        delivered.len(),
        mail.len(),
        duplicates(&copies),
        restarted_at.elapsed().as_secs_f64()
    );
    assert_eq!(delivered, acknowledged);
    // Nothing reached SMTP before the crash, so nothing can have gone twice.
    assert_eq!(duplicates(&copies), 0, "{copies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_burst_loses_no_acknowledged_email() {
    let smtp = SmtpServer::start().await;
    // Each send takes 50 ms, so at the kill every worker has one in flight.
    smtp.set_behaviour(Behaviour::Delay(Duration::from_millis(50)));
    let mut home = ServiceHome::new(fast_retries(smtp.port()));
    let mut first = home.start().await;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let signups = tokio::spawn(burst(
        first.address.clone(),
        "background",
        addresses("burst", 1_000),
        32,
        Arc::clone(&acknowledged),
    ));
    wait_for(
        "300 signups acknowledged",
        Duration::from_secs(30),
        async || acknowledged.load(Ordering::SeqCst) >= 300,
    )
    .await;
    assert!(!signups.is_finished(), "the kill must land mid-burst");
    let killed_at = Instant::now();
    first.kill_9();
    let signups = signups.await.unwrap();
    let sent_before_kill = smtp.received().len();

    assert_eq!(
        signups.statuses.keys().collect::<Vec<_>>(),
        [&202],
        "until the kill every answer is a 202: {:?}",
        signups.statuses
    );
    assert!(
        signups.errors.iter().all(|(at, _)| *at >= killed_at),
        "requests failed before the kill: {:?}",
        signups.errors
    );

    smtp.set_behaviour(Behaviour::Accept);
    let restarted_at = Instant::now();
    let _second = home.start().await;
    let mail = wait_until_delivered(&smtp, &home, &signups.acknowledged, DELIVERY_PATIENCE).await;

    let copies = copies_by_recipient(&mail);
    let committed = home.outbox_states().await.values().sum::<i64>();
    let lost: Vec<&String> = signups
        .acknowledged
        .iter()
        .filter(|email| !copies.contains_key(*email))
        .collect();
    println!(
        "crash mid-burst: acknowledged {}, committed {committed}, delivered {} ({} messages; \
         {sent_before_kill} before the kill), duplicates {} (at most {WORKER_CONCURRENCY}), \
         failed requests {}, all delivered {:.1}s after the restart",
        signups.acknowledged.len(),
        copies.len(),
        mail.len(),
        duplicates(&copies),
        signups.errors.len(),
        restarted_at.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    // Only an email in a worker's hands at the kill can go twice: the SMTP server had it (the
    // test server keeps a message whose DATA it read even if the client dies before the 250),
    // but `mark_sent` never committed, so its lease ran out and the restart sent it again. There
    // are at most `worker.concurrency` of those per kill.
    assert!(
        duplicates(&copies) <= WORKER_CONCURRENCY,
        "{} duplicates after one kill: {:?}",
        duplicates(&copies),
        copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_what_is_in_hand_and_sends_nothing_twice() {
    let smtp = SmtpServer::start().await;
    // Slow sends: at the SIGTERM every worker, and the sync request, has an email in hand.
    smtp.set_behaviour(Behaviour::Delay(Duration::from_millis(1_500)));
    let mut env = fast_retries(smtp.port());
    env.push(("CONFIRMD_WORKER__SHUTDOWN_TIMEOUT_MS", "5000".into()));
    let mut home = ServiceHome::new(env);
    let mut first = home.start().await;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let signups = tokio::spawn(burst(
        first.address.clone(),
        "background",
        addresses("term", 5_000),
        16,
        Arc::clone(&acknowledged),
    ));
    let sync_signup = tokio::spawn(burst(
        first.address.clone(),
        "sync",
        vec!["term-sync@example.com".to_owned()],
        1,
        Arc::default(),
    ));
    wait_for(
        "100 background signups acknowledged and the sync one sending",
        Duration::from_secs(30),
        async || {
            acknowledged.load(Ordering::SeqCst) >= 100
                && home.outbox_count("sync", "sending").await == 1
        },
    )
    .await;
    assert!(!signups.is_finished(), "the SIGTERM must land mid-burst");
    let term_at = Instant::now();
    first.sigterm();
    let status = first.wait_exit(Duration::from_secs(10)).await;
    let exit_time = term_at.elapsed();
    let signups = signups.await.unwrap();
    let sync_signup = sync_signup.await.unwrap();

    assert!(status.success(), "exit status {status}");
    assert_eq!(
        sync_signup.statuses,
        BTreeMap::from([(201, 1)]),
        "the sync request in flight at the SIGTERM completes; errors: {:?}",
        sync_signup.errors
    );
    assert_eq!(
        signups.statuses.keys().collect::<Vec<_>>(),
        [&202],
        "a request answered during the drain is answered 202, never 5xx: {:?}",
        signups.statuses
    );
    assert!(
        signups.errors.iter().all(|(at, _)| *at >= term_at),
        "requests failed before the SIGTERM: {:?}",
        signups.errors
    );
    let states = home.outbox_states().await;
    assert!(
        !states.contains_key("sending"),
        "a graceful stop leaves no email in a sender's hands: {states:?}"
    );

    smtp.set_behaviour(Behaviour::Accept);
    let _second = home.start().await;
    let mut acknowledged = signups.acknowledged.clone();
    acknowledged.extend(sync_signup.acknowledged);
    let mail = wait_until_delivered(&smtp, &home, &acknowledged, DELIVERY_PATIENCE).await;

    let copies = copies_by_recipient(&mail);
    println!(
        "SIGTERM mid-burst: {status} after {:.2}s (shutdown_timeout 5s); acknowledged {} \
         (+1 sync, 201), failed requests {}, outbox at exit {states:?}; delivered {} \
         ({} messages, {} duplicates)",
        exit_time.as_secs_f64(),
        signups.acknowledged.len(),
        signups.errors.len(),
        copies.len(),
        mail.len(),
        duplicates(&copies)
    );
    assert!(
        exit_time < Duration::from_secs(10),
        "exited {exit_time:?} after SIGTERM"
    );
    assert_eq!(
        duplicates(&copies),
        0,
        "after a graceful stop nothing goes twice: {:?}",
        copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

/// Where the load test's email goes: the in-test server, or maildev when CI provides one.
enum MailSink {
    InTest(SmtpServer),
    Maildev { smtp_port: u16, url: String },
}

impl MailSink {
    async fn from_env() -> MailSink {
        match (
            std::env::var("CONFIRMD_E2E_SMTP_PORT"),
            std::env::var("CONFIRMD_E2E_MAILDEV_URL"),
        ) {
            (Ok(port), Ok(url)) => MailSink::Maildev {
                smtp_port: port
                    .parse()
                    .expect("CONFIRMD_E2E_SMTP_PORT is a port number"),
                url,
            },
            _ => MailSink::InTest(SmtpServer::start().await),
        }
    }

    fn smtp_port(&self) -> u16 {
        match self {
            MailSink::InTest(smtp) => smtp.port(),
            MailSink::Maildev { smtp_port, .. } => *smtp_port,
        }
    }

    /// Distinct recipients starting with `prefix` that got an email, and how many emails those
    /// were in all.
    async fn delivered(&self, prefix: &str) -> (usize, usize) {
        let recipients: Vec<String> = match self {
            MailSink::InTest(smtp) => smtp
                .received()
                .into_iter()
                .flat_map(|mail| mail.to)
                .collect(),
            MailSink::Maildev { url, .. } => {
                #[derive(serde::Deserialize)]
                struct Mail {
                    to: Vec<Address>,
                }
                #[derive(serde::Deserialize)]
                struct Address {
                    address: String,
                }
                let mail: Vec<Mail> = reqwest::get(format!("{url}/api/email"))
                    .await
                    .expect("maildev answers")
                    .json()
                    .await
                    .expect("maildev lists its email as JSON");
                mail.into_iter()
                    .flat_map(|m| m.to)
                    .map(|a| a.address)
                    .collect()
            }
        };
        let ours: Vec<String> = recipients
            .into_iter()
            .filter(|r| r.starts_with(prefix))
            .collect();
        let total = ours.len();
        (ours.into_iter().collect::<BTreeSet<_>>().len(), total)
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test; .ci/run runs it"]
async fn ten_thousand_signups_in_each_mode_from_64_connections_without_a_server_error() {
    const BACKGROUND: usize = 10_000;
    const SYNC: usize = 10_000;
    const CLIENTS: usize = 64;
    let sink = MailSink::from_env().await;
    // Unique per run, so the count in a long-lived maildev is this run's.
    let run = format!(
        "load{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    // Production defaults, except where the email goes, without the per-client signup limit
    // (this load is one client), and with an SMTP connection for each client, as `confirmd
    // bench` and `demo` size it: 64 sync requests at once over the default 8 connections wait
    // for one, and on a loaded machine some wait past `smtp.acquire_timeout_ms` and are rightly
    // answered 503 with Retry-After (tests/api/smtp_faults.rs shows that bound). This test is
    // about the rest of the stack under load, which must answer no 5xx at all.
    let mut home = ServiceHome::new([
        ("CONFIRMD_SMTP__PORT", sink.smtp_port().to_string()),
        ("CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE", "0".into()),
        ("CONFIRMD_SMTP__POOL_SIZE", CLIENTS.to_string()),
    ]);
    let mut service = home.start().await;

    let load_started = Instant::now();
    let background = burst(
        service.address.clone(),
        "background",
        addresses(&format!("{run}-bg"), BACKGROUND),
        CLIENTS,
        Arc::default(),
    )
    .await;
    println!(
        "background: {BACKGROUND} signups from {CLIENTS} connections in {:.1}s ({:.0}/s); \
         statuses {:?}, 5xx {}, \"database is locked\" {}, failed requests {}",
        background.elapsed.as_secs_f64(),
        BACKGROUND as f64 / background.elapsed.as_secs_f64(),
        background.statuses,
        background.server_errors(),
        background.locked,
        background.errors.len()
    );
    assert_eq!(background.server_errors(), 0);
    assert_eq!(background.locked, 0);
    assert!(background.errors.is_empty(), "{:?}", background.errors);
    assert_eq!(background.statuses, BTreeMap::from([(202, BACKGROUND)]));

    let prefix = format!("{run}-bg-");
    // Generous: the workers drain at the pace of the SMTP server, after the burst.
    const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    // Two seconds: maildev answers with every email it holds, bodies and all.
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let (distinct, total) = loop {
        tick.tick().await;
        let (distinct, total) = sink.delivered(&prefix).await;
        if total >= BACKGROUND {
            break (distinct, total);
        }
        assert!(
            Instant::now() < deadline,
            "only {total} of {BACKGROUND} background emails arrived within {DELIVERY_DEADLINE:?}"
        );
    };
    println!(
        "background: {total} emails to {distinct} distinct recipients, the last {:.1}s after \
         the first signup",
        load_started.elapsed().as_secs_f64()
    );
    assert_eq!(distinct, BACKGROUND, "every recipient got an email");
    assert_eq!(total, BACKGROUND, "and only one");

    let sync = burst(
        service.address.clone(),
        "sync",
        addresses(&format!("{run}-sync"), SYNC),
        CLIENTS,
        Arc::default(),
    )
    .await;
    let peak_rss_kib = service.peak_rss_kib();
    println!(
        "sync: {SYNC} signups from {CLIENTS} connections in {:.1}s ({:.0}/s); statuses {:?}, \
         5xx {}, \"database is locked\" {}, failed requests {}; peak RSS {:.1} MiB",
        sync.elapsed.as_secs_f64(),
        SYNC as f64 / sync.elapsed.as_secs_f64(),
        sync.statuses,
        sync.server_errors(),
        sync.locked,
        sync.errors.len(),
        peak_rss_kib as f64 / 1024.0
    );
    assert_eq!(sync.server_errors(), 0);
    assert_eq!(sync.locked, 0);
    assert!(sync.errors.is_empty(), "{:?}", sync.errors);
    assert_eq!(sync.statuses, BTreeMap::from([(201, SYNC)]));
    // About 26 MiB in a debug build on the machine this was written on: ten times that means
    // something grows with the number of signups.
    assert!(
        peak_rss_kib < 256 * 1024,
        "peak RSS {peak_rss_kib} KiB after {} signups",
        BACKGROUND + SYNC
    );

    service.sigterm();
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

/// Where `needle` (a token, as text or as its 32 bytes) occurs in the database files, by file.
fn files_holding(files: &BTreeMap<String, Vec<u8>>, needle: &[u8]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The token an email's link carries, as text and as the 32 bytes it encodes.
fn token_of(mail: &ReceivedMail) -> (String, Vec<u8>) {
    use base64::Engine;
    let link = mail.confirmation_link();
    let token = links::token_of(&link);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .expect("a token is base64url");
    (token.to_owned(), bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_database_file_ever_holds_a_token_the_emails_carried() {
    // SMTP is down at first, so the emails wait in the outbox (and are retried) for a while.
    let smtp_port = free_port();
    let mut home = ServiceHome::new(fast_retries(smtp_port));
    let mut service = home.start().await;
    let client = reqwest::Client::new();
    let emails = addresses("at-rest", 12);
    for (i, email) in emails.iter().enumerate() {
        let mode = if i % 3 == 0 { "sync" } else { "background" };
        let response = client
            .post(format!("{}/signups?mode={mode}", service.address))
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .unwrap();
        let expected = match mode {
            // Stored and queued; the problem says SMTP failed.
            "sync" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::ACCEPTED,
        };
        assert_eq!(response.status(), expected, "{email}");
    }
    // Every email has been tried (a worker held it, `sending`) and is waiting again.
    wait_for("every email tried twice", DELIVERY_PATIENCE, async || {
        home.query_number("SELECT MIN(attempts) FROM email_outbox")
            .await
            >= 2
    })
    .await;
    let while_waiting = home.database_files();

    let smtp = SmtpServer::start_on(smtp_port).await;
    let mail = wait_until_delivered(&smtp, &home, &emails, DELIVERY_PATIENCE).await;
    let after_sent = home.database_files();
    service.kill_9();
    let after_kill = home.database_files();

    assert!(
        while_waiting.contains_key("confirmd.db-wal") && after_kill.contains_key("confirmd.db"),
        "the files searched: {:?}",
        while_waiting.keys().collect::<Vec<_>>()
    );
    // The search can find what is there: every address is in the files, in plain text.
    for email in &emails {
        assert!(
            !files_holding(&while_waiting, email.as_bytes()).is_empty(),
            "{email} is not found in the files: the search is blind"
        );
    }
    let tokens: Vec<(String, Vec<u8>)> = mail.iter().map(token_of).collect();
    assert_eq!(tokens.len(), emails.len());
    for (moment, files) in [
        ("while the emails waited", &while_waiting),
        ("after they were sent", &after_sent),
        ("after kill -9", &after_kill),
    ] {
        for (text, bytes) in &tokens {
            let found: Vec<String> = [text.as_bytes(), bytes.as_slice()]
                .into_iter()
                .flat_map(|needle| files_holding(files, needle))
                .collect();
            assert!(found.is_empty(), "{moment}, a token is in {found:?}");
        }
    }

    // The secret they were derived from is outside the database, readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let secret = std::fs::metadata(home.path("confirmd.secret")).expect("a generated secret");
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    }
    // And the links work: after a restart, one confirms.
    let restarted = home.start().await;
    let link = mail[0]
        .confirmation_link()
        .replace(&service.address, &restarted.address);
    let confirmed = client.get(&link).send().await.unwrap();
    assert_eq!(confirmed.status(), StatusCode::OK);
}
