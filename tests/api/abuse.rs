//! Limits that keep the service from being turned against a mailbox or against itself.

use reqwest::StatusCode;

use crate::helpers::{assert_problem, spawn_app_with, spawn_app_without_smtp};

#[tokio::test]
async fn a_pending_address_gets_at_most_one_email_per_resend_interval_and_the_requester_is_not_told()
 {
    let app = spawn_app_with(|s| s.signup.resend_interval_s = 60).await;
    app.signup_ok("victim@example.com", "sync").await;

    for mode in ["sync", "background"] {
        // Answered as any signup is (no 429, no Retry-After), and its request looks sent.
        let id = app.signup_ok("victim@example.com", mode).await;
        app.wait_for_delivery_state(&id, "sent").await;
    }

    assert_eq!(
        app.mail_to("victim@example.com").len(),
        1,
        "one email, not three"
    );
    // Other addresses are not held back.
    app.signup_ok("someone-else@example.com", "sync").await;
    assert_eq!(app.mail_to("someone-else@example.com").len(), 1);
}

#[tokio::test]
async fn background_signups_are_refused_with_503_once_the_backlog_is_full() {
    let app = spawn_app_without_smtp(|s| s.worker.max_backlog = 3).await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..10 {
        let response = app
            .signup(&format!("user{i}@example.com"), "background")
            .await;
        match response.status() {
            StatusCode::ACCEPTED => accepted += 1,
            _ => {
                refused = Some(response);
                break;
            }
        }
    }

    // The cap may err high (it can refuse a little early, never late): never more than 3 waiting.
    assert!(
        (1..=3).contains(&accepted),
        "{accepted} accepted with max_backlog = 3"
    );
    let refused = refused.expect("a signup past the cap is refused");
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
        accepted,
        "nothing written for the refused signup"
    );
}
