//! Stalled clients against the real binary under the open-file limit of a default Linux login
//! (1,024, soft and hard, so the service cannot raise it): more connections that never finish
//! a request than the process has descriptors. The server must shed them, by its header timeout
//! or to make room for newer connections, at the default settings, never run out of
//! descriptors, and keep serving normal clients, during and after.
//!
//! `SQLX_OFFLINE=true cargo test --test stalled_clients -- --nocapture` prints what it measured.

mod support;
use support::{process, smtp};

use std::time::Duration;

use confirmd::Settings;
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
    time::Instant,
};

use process::ServiceHome;
use smtp::SmtpServer;

/// The child's open-file limit: the usual soft default.
const FILE_LIMIT: u64 = 1024;

/// Stalled connections held at once: more than the child has descriptors.
const STALLED: usize = 1100;

/// On top of a timeout, for timers and scheduling on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_stalled_connections_than_the_file_limit_are_shed_and_normal_clients_are_served() {
    // This process holds every stalled connection: it needs more than the child's limit.
    let ours = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit can be read");
    assert!(
        ours >= STALLED as u64 + 256,
        "this test holds {STALLED} connections, but the hard open-file limit is {ours}"
    );
    let header_timeout = Duration::from_millis(Settings::defaults().server.header_read_timeout_ms);

    let smtp = SmtpServer::start().await;
    // Defaults, except where the email goes.
    let mut home = ServiceHome::new([("CONFIRMD_SMTP__PORT", smtp.port().to_string())])
        .with_file_limit(FILE_LIMIT);
    let service = home.start().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", service.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"],
        "{open_files}"
    );
    let authority = service.address.trim_start_matches("http://").to_owned();

    // Open them all, then hold them: half send nothing, half the start of a head that never
    // ends. Each watcher reports when the server closed its connection.
    let mut watchers = JoinSet::new();
    for i in 0..STALLED {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&authority))
                .await
                .unwrap_or_else(|_| panic!("connection {i} was not even taken into the backlog"))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let connected = Instant::now();
        if i % 2 == 1 {
            stream
                .write_all(b"POST /signups HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        watchers.spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return (connected, Instant::now()),
                    // hyper may answer 408 before closing.
                    Ok(_) => {}
                }
            }
        });
    }
    let all_held = Instant::now();

    // A normal client while they are held: served without waiting for them to time out.
    let client = reqwest::Client::builder()
        .timeout(2 * header_timeout + SLACK)
        .build()
        .unwrap();
    let during = Instant::now();
    let response = client
        .post(format!("{}/signups", service.address))
        .json(&serde_json::json!({ "email": "during@example.com" }))
        .send()
        .await
        .expect("a normal client is served while stalled ones are held");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let during = during.elapsed();
    // A bound with a wide margin on a loaded machine: it takes milliseconds; waiting for a
    // slot to free would take the rest of a header timeout.
    assert!(
        during < header_timeout / 2,
        "a signup sent while stalled connections held every slot took {during:?}"
    );

    // Every stalled connection is closed by the server: shed for a newer one, or at its
    // header timeout.
    let deadline = all_held + header_timeout + SLACK;
    let mut lifetimes = Vec::with_capacity(STALLED);
    while let Some(joined) = tokio::time::timeout_at(deadline, watchers.join_next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} of {STALLED} stalled connections were still open {:?} after all were held",
                watchers.len(),
                all_held.elapsed()
            )
        })
    {
        let (connected, closed) = joined.unwrap();
        lifetimes.push(closed - connected);
    }
    let shed_early = lifetimes
        .iter()
        .filter(|lifetime| **lifetime < header_timeout.saturating_sub(Duration::from_millis(100)))
        .count();
    let longest = *lifetimes.iter().max().unwrap();

    // Afterwards, normal clients are served at once, on fresh and kept-alive connections.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut served = 0;
    for i in 0..4 {
        let response = client
            .post(format!("{}/signups", service.address))
            .json(&serde_json::json!({ "email": format!("after-{i}@example.com") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        served += 1;
    }
    for _ in 0..50 {
        let response = client
            .get(format!("{}/healthz", service.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        served += 1;
    }
    let log = service.log();
    assert!(
        !log.contains("Too many open files"),
        "the service ran out of descriptors"
    );
    println!(
        "under a {FILE_LIMIT} file limit: opened {STALLED} stalled connections; the server shed \
         {shed_early} to make room and timed the rest out, the last {longest:.1?} after it \
         connected (header timeout {header_timeout:?}); a signup sent meanwhile answered 202 \
         after {during:.1?}; afterwards {served}/{served} normal requests served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_is_not_held_up_by_stalled_connections_and_still_answers_the_request_in_flight() {
    let smtp = SmtpServer::start().await;
    // Slow sends: the sync signup is in flight when the SIGTERM comes.
    smtp.set_behaviour(smtp::Behaviour::Delay(Duration::from_millis(1_000)));
    let mut home = ServiceHome::new([("CONFIRMD_SMTP__PORT", smtp.port().to_string())]);
    let mut service = home.start().await;
    let authority = service.address.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for i in 0..50 {
        let mut stream = TcpStream::connect(&authority).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .unwrap();
        }
        stalled.push(stream);
    }
    let url = format!("{}/signups?mode=sync", service.address);
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "email": "in-flight@example.com" }))
            .send()
            .await
            .map(|response| response.status())
    });
    // Wait, with a deadline, until the sync send is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while home.outbox_count("sync", "sending").await == 0 {
        assert!(Instant::now() < deadline, "the sync send never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let header_timeout = Duration::from_millis(Settings::defaults().server.header_read_timeout_ms);
    let stopping = Instant::now();
    service.sigterm();
    let status = service.wait_exit(2 * header_timeout).await;
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");
    assert_eq!(in_flight.await.unwrap().unwrap(), StatusCode::CREATED);
    // The request in flight needed about a second; a stalled connection, if waited for, the
    // rest of its header timeout.
    assert!(
        took < header_timeout / 2,
        "the stop took {took:?}: it waited for connections that had no request"
    );
    println!(
        "SIGTERM with 50 stalled connections and one sync signup in flight: exited after {took:.1?}"
    );
}
