//! Limits that keep the service from being turned against a mailbox or against itself.

use reqwest::StatusCode;

use crate::helpers::{assert_problem, spawn_app_with, spawn_app_without_smtp};

#[tokio::test]
async fn a_pending_address_gets_at_most_one_email_per_resend_interval() {
    let app = spawn_app_with(|s| s.signup.resend_interval_s = 60).await;
    app.signup_ok("victim@example.com", "sync").await;

    for mode in ["sync", "background"] {
        let again = app.signup("victim@example.com", mode).await;
        let retry_after: u64 = again.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=60).contains(&retry_after),
            "Retry-After: {retry_after}"
        );
        let problem = assert_problem(again, StatusCode::TOO_MANY_REQUESTS).await;
        assert!(problem["detail"].as_str().unwrap().contains("moments ago"));
    }

    assert_eq!(
        app.mail_to("victim@example.com").len(),
        1,
        "one email, not three"
    );
    assert_eq!(
        app.count("email_outbox").await,
        1,
        "the refused requests wrote nothing"
    );
    // Other addresses are not held back.
    app.signup_ok("someone-else@example.com", "sync").await;
}

#[tokio::test]
async fn background_signups_are_refused_with_503_once_the_backlog_is_full() {
    let app = spawn_app_without_smtp(|s| s.worker.max_backlog = 3).await;
    for i in 0..3 {
        app.signup_ok(&format!("user{i}@example.com"), "background")
            .await;
    }

    let refused = app.signup("user3@example.com", "background").await;

    assert!(refused.headers().contains_key("retry-after"));
    let problem = assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("waiting to be sent")
    );
    assert_eq!(
        app.count("users").await,
        3,
        "nothing written for the refused signup"
    );
}
