//! Clients that hold a connection without finishing their request: each is cut off within its
//! timeout, at the default `server.*` settings (the test app keeps them), and answered
//! problem+json where an answer is still possible. And a request without `Host`.
//!
//! These talk raw TCP: an HTTP client library would not send a request this badly.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::helpers::{TestApp, spawn_app};

/// How far past a timeout the test waits for the server to act on it: timers, scheduling on a
/// loaded machine.
const SLACK: Duration = Duration::from_secs(5);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("the app accepts a connection")
}

/// Reads until the server closes the connection or `within` passes; what it sent, and whether
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_cut_off_at_the_header_timeout() {
    let app = spawn_app().await;
    let timeout = app.settings.server.header_read_timeout();
    let mut stream = connect(&app).await;
    // One byte a second: ten times faster than the slowloris of the issue, and still never
    // done, because the head goes on and on.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "a".repeat(1000)
    );
    let started = Instant::now();
    let mut bytes = head.bytes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    let cut_off = loop {
        tokio::select! {
            _ = tick.tick() => {
                let byte = bytes.next().expect("the head outlasts the test");
                if stream.write_all(&[byte]).await.is_err() {
                    break started.elapsed();
                }
            }
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                // hyper may say 408 before it closes.
                Ok(_) => {}
            },
        }
        assert!(
            started.elapsed() < timeout + SLACK,
            "still connected {:?} after the first byte, with server.header_read_timeout_ms = {:?}",
            started.elapsed(),
            timeout
        );
    };
    assert!(
        cut_off >= timeout.saturating_sub(Duration::from_millis(100)),
        "cut off after {cut_off:?}, before the header timeout ({timeout:?})"
    );
    println!("a head trickled at 1 byte/s was cut off after {cut_off:?} (timeout {timeout:?})");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed() {
    let app = spawn_app().await;
    let timeout = app.settings.server.body_read_timeout();
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /signups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\": ",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, timeout + SLACK).await;
    let waited = started.elapsed();
    assert!(
        closed,
        "the connection is still open {waited:?} after a body that stopped"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "answered instead: {answer}"
    );
    assert!(
        answer.contains("application/problem+json"),
        "answered instead: {answer}"
    );
    assert!(
        waited >= timeout.saturating_sub(Duration::from_millis(100)),
        "{waited:?}"
    );
}

#[tokio::test]
async fn http_1_1_without_host_is_answered_400() {
    let app = spawn_app().await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 400"), "answered: {answer}");
    assert!(
        answer.contains("application/problem+json") && answer.contains("Host"),
        "answered: {answer}"
    );

    // HTTP/1.0 has no such rule.
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "answered: {answer}");

    // And with a Host, as every client sends it, HTTP/1.1 is served.
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed_at_the_header_timeout() {
    let app = spawn_app().await;
    let timeout = app.settings.server.header_read_timeout();
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    // Sized, not chunked: the server's wrapping of response bodies keeps their length known.
    assert!(answer.contains("content-length:"), "{answer}");
    // The response is in; the connection stays open for a next request that never comes.
    let idle_since = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, timeout + SLACK).await;
    let idle = idle_since.elapsed();
    assert!(
        closed,
        "an idle keep-alive connection is still open after {idle:?}"
    );
    assert!(
        idle >= timeout.saturating_sub(Duration::from_millis(100)),
        "closed after {idle:?}"
    );
}
