//! Several confirmd instances on one PostgreSQL database, as replicas behind a load balancer run:
//! the real binary three times over, with signups spread over the three, and one of them killed,
//! stopped, or left without its database mid-burst. The promises are the single instance's: an
//! acknowledged email arrives, a crash sends at most what its workers had in hand twice, an
//! orderly stop sends nothing twice, and one address signed up everywhere at once is one user
//! with one email.
//!
//! Each test creates a database of its own on the server `CONFIRMD_TEST_POSTGRES_URL` names
//! (`.ci/run` sets it), and says that it skipped when the variable is unset. The test that
//! restarts PostgreSQL runs a server of its own, so that no other test loses its database.
//!
//! `CONFIRMD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!  SQLX_OFFLINE=true cargo test --test multi_instance -- --nocapture` prints what each measured.

mod support;
use support::{burst, postgres, process, smtp};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use burst::{Burst, addresses, burst, copies_by_recipient, duplicates, wait_for};
use postgres::{PrivateServer, TestDatabase};
use process::{ServiceHome, ServiceProcess};
use smtp::{Behaviour, SmtpServer};

/// How many instances share the database.
const INSTANCES: usize = 3;

/// `worker.concurrency` in the compiled-in defaults, which these tests keep: at most this many
/// emails are in one instance's senders' hands at any moment.
const WORKER_CONCURRENCY: usize = 4;

/// How long a test waits for every acknowledged email to arrive.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(90);

/// The settings of every instance: one shared token secret (one instance derives the link whose
/// hash another stored), SMTP on `smtp_port`, and failed sends retried within a test's patience
/// (retries every 50–200 ms, sweeps every 100 ms, leases of 3 s); no per-client signup limit,
/// since each burst is one client.
fn instance_settings(smtp_port: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "CONFIRMD_TOKEN__SECRET",
            "multi-instance-test-secret-0123456789abcdef".into(),
        ),
        ("CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE", "0".into()),
        ("CONFIRMD_SMTP__PORT", smtp_port.to_string()),
        ("CONFIRMD_SMTP__TIMEOUT_MS", "2000".into()),
        ("CONFIRMD_WORKER__RETRY_BASE_MS", "50".into()),
        ("CONFIRMD_WORKER__RETRY_MAX_MS", "200".into()),
        ("CONFIRMD_WORKER__SWEEP_INTERVAL_MS", "100".into()),
        ("CONFIRMD_WORKER__LEASE_MS", "3000".into()),
    ]
}

/// Starts [`INSTANCES`] instances in `home`, one after another (each migrates; the first
/// creates the schema and the others find it there).
async fn start_instances(home: &mut ServiceHome) -> Vec<ServiceProcess> {
    let mut instances = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        instances.push(home.start().await);
    }
    instances
}

/// One burst per instance, at once: `per_instance` background signups to each, from `clients`
/// clients each, addresses labelled by the instance. Successes are counted in `acknowledged` as
/// they come.
fn bursts(
    instances: &[ServiceProcess],
    label: &str,
    per_instance: usize,
    clients: usize,
    acknowledged: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Burst>> {
    instances
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            tokio::spawn(burst(
                instance.address.clone(),
                "background",
                addresses(&format!("{label}{i}"), per_instance),
                clients,
                Arc::clone(acknowledged),
            ))
        })
        .collect()
}

/// Polls until every `acknowledged` address got its email and the outbox holds only sent rows,
/// and returns how many copies each recipient got.
async fn wait_until_delivered(
    smtp: &SmtpServer,
    home: &ServiceHome,
    acknowledged: &[String],
) -> BTreeMap<String, usize> {
    let mail = burst::wait_until_delivered(smtp, home, acknowledged, DELIVERY_PATIENCE).await;
    copies_by_recipient(&mail)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_burst_loses_no_acknowledged_email() {
    if !postgres::available("a_replica_killed_mid_burst…") {
        return;
    }
    let database = TestDatabase::create().await;
    let smtp = SmtpServer::start().await;
    // Each send takes 50 ms, so at the kill every worker of the victim has one in flight.
    smtp.set_behaviour(Behaviour::Delay(Duration::from_millis(50)));
    let mut home = ServiceHome::new(instance_settings(smtp.port())).on_postgres(&database.url);
    let mut instances = start_instances(&mut home).await;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let running = bursts(&instances, "kill", 400, 8, &acknowledged);
    wait_for(
        "300 signups acknowledged",
        Duration::from_secs(60),
        async || acknowledged.load(Ordering::SeqCst) >= 300,
    )
    .await;
    assert!(
        !running[1].is_finished(),
        "the kill must land mid-burst on the victim"
    );
    let killed_at = Instant::now();
    instances[1].kill_9();
    let mut signups = Vec::new();
    for handle in running {
        signups.push(handle.await.expect("a burst does not panic"));
    }

    for (i, seen) in signups.iter().enumerate() {
        assert_eq!(
            seen.statuses.keys().collect::<Vec<_>>(),
            [&202],
            "instance {i} answers every signup it answers with 202: {:?}",
            seen.statuses
        );
        if i == 1 {
            assert!(
                seen.errors.iter().all(|(at, _)| *at >= killed_at),
                "requests to the victim failed before the kill: {:?}",
                seen.errors
            );
        } else {
            assert!(
                seen.errors.is_empty(),
                "instance {i} is untouched by the kill: {:?}",
                seen.errors
            );
        }
    }
    let sent_before_restart = smtp.received().len();
    let restarted_at = Instant::now();
    instances[1] = home.start().await;

    let acknowledged: Vec<String> = signups
        .iter()
        .flat_map(|seen| seen.acknowledged.iter().cloned())
        .collect();
    let copies = wait_until_delivered(&smtp, &home, &acknowledged).await;
    println!(
        "{INSTANCES} instances, one killed mid-burst: acknowledged {}, delivered {} \
         ({sent_before_restart} before the restart), duplicates {} (at most \
         {WORKER_CONCURRENCY}), failed requests {}, all delivered {:.1}s after the restart",
        acknowledged.len(),
        copies.len(),
        duplicates(&copies),
        signups[1].errors.len(),
        restarted_at.elapsed().as_secs_f64()
    );
    // Only what the victim's workers had in hand at the kill can go twice: the SMTP server had
    // it, `mark_sent` never committed, and another instance took the row once its lease ran out.
    assert!(
        duplicates(&copies) <= WORKER_CONCURRENCY,
        "{} duplicates after one kill: {:?}",
        duplicates(&copies),
        copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    drop(instances);
    drop(database);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_stopped_mid_burst_sends_nothing_twice() {
    if !postgres::available("a_replica_stopped_mid_burst…") {
        return;
    }
    let database = TestDatabase::create().await;
    let smtp = SmtpServer::start().await;
    // Slow sends: at the SIGTERM every worker of the stopping instance has an email in hand.
    smtp.set_behaviour(Behaviour::Delay(Duration::from_millis(500)));
    let mut env = instance_settings(smtp.port());
    env.push(("CONFIRMD_WORKER__SHUTDOWN_TIMEOUT_MS", "5000".into()));
    let mut home = ServiceHome::new(env).on_postgres(&database.url);
    let mut instances = start_instances(&mut home).await;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let running = bursts(&instances, "term", 300, 8, &acknowledged);
    wait_for(
        "100 signups acknowledged and the victim sending",
        Duration::from_secs(60),
        async || {
            acknowledged.load(Ordering::SeqCst) >= 100
                && home.outbox_count("background", "sending").await >= 1
        },
    )
    .await;
    assert!(
        !running[1].is_finished(),
        "the SIGTERM must land mid-burst on the victim"
    );
    let term_at = Instant::now();
    instances[1].sigterm();
    let status = instances[1].wait_exit(Duration::from_secs(15)).await;
    let exit_time = term_at.elapsed();
    assert!(status.success(), "exit status {status}");

    let mut signups = Vec::new();
    for handle in running {
        signups.push(handle.await.expect("a burst does not panic"));
    }
    for (i, seen) in signups.iter().enumerate() {
        assert_eq!(
            seen.statuses.keys().collect::<Vec<_>>(),
            [&202],
            "instance {i} answers 202, never 5xx, also while draining: {:?}",
            seen.statuses
        );
        assert!(
            seen.errors.iter().all(|(at, _)| *at >= term_at),
            "requests to instance {i} failed before the SIGTERM: {:?}",
            seen.errors
        );
    }

    // No restart: the two instances left send what the stopped one acknowledged.
    let acknowledged: Vec<String> = signups
        .iter()
        .flat_map(|seen| seen.acknowledged.iter().cloned())
        .collect();
    let copies = wait_until_delivered(&smtp, &home, &acknowledged).await;
    println!(
        "{INSTANCES} instances, one stopped mid-burst: exit {status} after {:.2}s; acknowledged \
         {}, delivered {}, duplicates {}",
        exit_time.as_secs_f64(),
        acknowledged.len(),
        copies.len(),
        duplicates(&copies)
    );
    assert_eq!(
        duplicates(&copies),
        0,
        "after an orderly stop nothing goes twice: {:?}",
        copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    drop(instances);
    drop(database);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_signed_up_on_every_replica_at_once_is_one_user_with_one_email() {
    if !postgres::available("one_address_signed_up_on_every_replica…") {
        return;
    }
    let database = TestDatabase::create().await;
    let smtp = SmtpServer::start().await;
    // The default resend interval: a second email to the address within a minute is suppressed.
    let mut home = ServiceHome::new(instance_settings(smtp.port())).on_postgres(&database.url);
    let instances = start_instances(&mut home).await;

    const PER_INSTANCE: usize = 10;
    let email = "Same.Person@Example.com";
    let barrier = Arc::new(tokio::sync::Barrier::new(INSTANCES * PER_INSTANCE));
    let mut requests = tokio::task::JoinSet::new();
    for (i, instance) in instances.iter().enumerate() {
        for n in 0..PER_INSTANCE {
            let barrier = Arc::clone(&barrier);
            // Half of each instance's signups inline, half in the background.
            let mode = if n % 2 == 0 { "sync" } else { "background" };
            let url = format!("{}/signups?mode={mode}", instance.address);
            // The address in varying case: one mailbox however it is typed.
            let typed = if (i + n) % 2 == 0 {
                email.to_owned()
            } else {
                email.to_lowercase()
            };
            requests.spawn(async move {
                let client = reqwest::Client::new();
                barrier.wait().await;
                let response = client
                    .post(url)
                    .json(&serde_json::json!({ "email": typed, "name": format!("try {i}.{n}") }))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("every signup is answered");
                let status = response.status();
                (status, response.text().await.unwrap_or_default())
            });
        }
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    while let Some(answer) = requests.join_next().await {
        let (status, body) = answer.expect("a request task does not panic");
        assert!(
            status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
            "{status}: {body}"
        );
        *statuses.entry(status.as_u16()).or_default() += 1;
    }
    assert_eq!(statuses.values().sum::<usize>(), INSTANCES * PER_INSTANCE);

    wait_for(
        "the outbox settled (nothing queued or sending)",
        DELIVERY_PATIENCE,
        async || {
            let states = home.outbox_states().await;
            !states.contains_key("queued") && !states.contains_key("sending")
        },
    )
    .await;
    let users = home.query_number("SELECT COUNT(*) FROM users").await;
    let to_address = smtp
        .received()
        .iter()
        .filter(|mail| mail.to.iter().any(|to| to.eq_ignore_ascii_case(email)))
        .count();
    let states = home.outbox_states().await;
    println!(
        "one address, {} signups over {INSTANCES} instances at once: statuses {statuses:?}; \
         users {users}; emails {to_address}; outbox {states:?}",
        INSTANCES * PER_INSTANCE
    );
    assert_eq!(users, 1, "one address is one user");
    assert_eq!(
        to_address, 1,
        "one email within the resend interval, however many instances took the signup"
    );
    drop(instances);
    drop(database);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_burst_answers_503_meanwhile_and_loses_nothing() {
    let Some(server) = PrivateServer::start("postgres_restarted_mid_burst…").await else {
        return;
    };
    down_mid_burst(server, PrivateServer::stop).await;
}

/// As a restart, but the server crashes: the claims' commits, which do not wait for the WAL
/// flush, may be lost with it, and still nothing acknowledged is lost and only what was in
/// hand goes twice.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_crashed_mid_burst_answers_503_meanwhile_and_loses_nothing() {
    let Some(server) = PrivateServer::start("postgres_crashed_mid_burst…").await else {
        return;
    };
    down_mid_burst(server, PrivateServer::crash).await;
}

async fn down_mid_burst(server: PrivateServer, stop: fn(&PrivateServer)) {
    let url = server.create_database("confirmd").await;
    let smtp = SmtpServer::start().await;
    smtp.set_behaviour(Behaviour::Delay(Duration::from_millis(20)));
    let mut home = ServiceHome::new(instance_settings(smtp.port())).on_postgres(&url);
    let instances = start_instances(&mut home).await;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let running = bursts(&instances, "restart", 600, 4, &acknowledged);
    wait_for(
        "150 signups acknowledged",
        Duration::from_secs(60),
        async || acknowledged.load(Ordering::SeqCst) >= 150,
    )
    .await;
    stop(&server);
    let stopped_at = Instant::now();

    // While the database is down, every instance answers a signup at once, and with 503.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    for (i, instance) in instances.iter().enumerate() {
        let asked = Instant::now();
        let response = client
            .post(format!("{}/signups?mode=background", instance.address))
            .json(&serde_json::json!({ "email": format!("while-down-{i}@example.com") }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("instance {i} hangs or drops a signup while down: {e}"));
        let status = response.status();
        println!(
            "instance {i}, database down: {status} in {:.0} ms",
            asked.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
    server.start_again().await;
    let down_for = stopped_at.elapsed();

    // Recovered without a restart of its own: each instance takes a signup again.
    for (i, instance) in instances.iter().enumerate() {
        let email = format!("after-restart-{i}@example.com");
        let recovered_at = Instant::now();
        wait_for(
            &format!("instance {i} takes signups again"),
            Duration::from_secs(30),
            async || {
                client
                    .post(format!("{}/signups?mode=background", instance.address))
                    .json(&serde_json::json!({ "email": email }))
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == StatusCode::ACCEPTED)
            },
        )
        .await;
        println!(
            "instance {i}: 202 again {:.0} ms after PostgreSQL was back",
            recovered_at.elapsed().as_secs_f64() * 1e3
        );
    }

    let mut signups = Vec::new();
    for handle in running {
        signups.push(handle.await.expect("a burst does not panic"));
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for seen in &signups {
        assert!(
            seen.errors.is_empty(),
            "every request is answered, none hangs or is dropped: {:?}",
            seen.errors
        );
        for (status, n) in &seen.statuses {
            *statuses.entry(*status).or_default() += n;
        }
    }
    assert!(
        statuses.keys().all(|status| [202, 503].contains(status)),
        "202 or 503, nothing else: {statuses:?}"
    );
    let mut acknowledged: Vec<String> = signups
        .iter()
        .flat_map(|seen| seen.acknowledged.iter().cloned())
        .collect();
    acknowledged.extend((0..INSTANCES).map(|i| format!("after-restart-{i}@example.com")));
    let copies = wait_until_delivered(&smtp, &home, &acknowledged).await;
    println!(
        "PostgreSQL down {:.1}s mid-burst under {INSTANCES} instances: statuses {statuses:?}; \
         acknowledged {}, delivered {}, duplicates {}",
        down_for.as_secs_f64(),
        acknowledged.len(),
        copies.len(),
        duplicates(&copies)
    );
    // A send whose outcome could not be written while the database was down is kept in hand
    // and written once it is back, so at most the emails in the workers' hands go twice.
    assert!(
        duplicates(&copies) <= INSTANCES * WORKER_CONCURRENCY,
        "{} duplicates: {:?}",
        duplicates(&copies),
        copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    drop(instances);
}
