//! The per-client signup limit: one client signing up many third-party addresses gets at most
//! its bucket's worth of emails sent; the rest are 429 with `Retry-After`, and other clients do
//! not notice. At the default `signup.per_client_per_minute`.
//!
//! Two clients on one machine: Linux routes all of 127.0.0.0/8 to the loopback, so a client
//! bound to 127.0.0.2 reaches the app on 127.0.0.1 from another address.

use std::net::{IpAddr, Ipv4Addr};

use confirmd::Settings;
use reqwest::{Client, StatusCode};

use super::helpers::{TestApp, assert_problem, spawn_app_with};

/// The compiled-in default, which these tests keep.
fn per_minute() -> usize {
    Settings::defaults().signup.per_client_per_minute as usize
}

fn client_from(last_octet: u8) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)))
        .build()
        .unwrap()
}

/// One sync signup of `email` from `client`, with `forwarded` as `X-Forwarded-For` if given.
async fn signup(
    app: &TestApp,
    client: &Client,
    email: &str,
    forwarded: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("{}/signups?mode=sync", app.address))
        .json(&serde_json::json!({ "email": email }));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap()
}

/// Asserts a 429 from the per-client limit, with a `Retry-After` of at most a minute.
async fn assert_limited(response: reqwest::Response) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn a_burst_from_one_client_sends_at_most_the_bucket_and_a_spoofed_header_does_not_help() {
    let app = spawn_app_with(|s| {
        s.signup.per_client_per_minute = Settings::defaults().signup.per_client_per_minute
    })
    .await;
    let attacker = client_from(1);
    let burst = 4 * per_minute();
    let mut sent = 0;
    for i in 0..burst {
        // A different forged address every time: with no trusted header configured, ignored.
        let forged = format!("203.0.113.{i}");
        let response = signup(
            &app,
            &attacker,
            &format!("victim-{i}@example.com"),
            Some(&forged),
        )
        .await;
        if response.status() == StatusCode::CREATED {
            sent += 1;
        } else {
            assert_limited(response).await;
        }
    }
    assert_eq!(sent, per_minute(), "signups answered 201 out of {burst}");
    // Sync mode: every email the burst caused has reached the SMTP server by now.
    assert_eq!(app.smtp().received().len(), per_minute());
    println!(
        "a burst of {burst} signups from one client sent {} emails",
        app.smtp().received().len()
    );

    // Another client is unaffected.
    let neighbour = client_from(2);
    let response = signup(&app, &neighbour, "neighbour@example.com", None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_header_names_the_client_and_only_its_last_address_counts() {
    let app = spawn_app_with(|s| {
        s.signup.per_client_per_minute = Settings::defaults().signup.per_client_per_minute;
        s.server.client_ip_header = "x-forwarded-for".into();
    })
    .await;
    // Every request comes from the proxy's address, 127.0.0.1.
    let proxy = client_from(1);
    for i in 0..per_minute() {
        let response = signup(
            &app,
            &proxy,
            &format!("a-{i}@example.com"),
            Some("198.51.100.1"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_limited(signup(&app, &proxy, "a-more@example.com", Some("198.51.100.1")).await).await;
    // The client prepends an address of its own choosing; the proxy appends the real one.
    assert_limited(
        signup(
            &app,
            &proxy,
            "a-forged@example.com",
            Some("192.0.2.77, 198.51.100.1"),
        )
        .await,
    )
    .await;

    // Another client behind the same proxy has its own bucket.
    let response = signup(&app, &proxy, "b@example.com", Some("198.51.100.2")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.smtp().received().len(), per_minute() + 1);
}
