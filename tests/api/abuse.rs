//! Limits that keep the service from being turned against a mailbox or against itself.

use reqwest::StatusCode;

use super::helpers::{PATIENCE, assert_problem, poll, spawn_app_with, spawn_app_without_smtp};

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

/// Waiting emails no longer fail after a few minutes of outage, so they stay in the backlog for
/// as long as the outage lasts: the cap keeps holding, for sync signups too (whose failed send
/// would leave one more email waiting), until SMTP is back and the backlog drains.
#[tokio::test]
async fn the_backlog_cap_holds_for_the_whole_outage_and_lifts_once_smtp_is_back() {
    let mut app = spawn_app_without_smtp(|s| s.worker.max_backlog = 3).await;
    let mut ids: Vec<String> = Vec::new();
    while ids.len() < 3 {
        // Fill the backlog. The estimate may err high until the next recount, refusing a little
        // early: then top it up once the emails below have been recounted.
        loop {
            let response = app
                .signup(&format!("user{}@example.com", ids.len()), "background")
                .await;
            if response.status() != StatusCode::ACCEPTED {
                break;
            }
            let body: serde_json::Value = response.json().await.unwrap();
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        assert!(
            ids.len() <= 3,
            "{} accepted with max_backlog = 3",
            ids.len()
        );
        // Ten attempts each: the old limit of 8 would have failed them and emptied the backlog.
        for id in &ids {
            poll(PATIENCE, || async {
                let details = app.signup_details(id).await;
                match details["delivery"]["attempts"].as_i64().unwrap() {
                    10.. => Ok(()),
                    _ if details["delivery"]["state"] == "failed" => {
                        panic!("gave up during the outage: {details:#}")
                    }
                    _ => Err(details),
                }
            })
            .await
            .unwrap_or_else(|last| panic!("fewer than ten attempts: {last:#}"));
        }
    }

    for (i, mode) in ["background", "sync"].into_iter().enumerate() {
        let refused = app.signup(&format!("late{i}@example.com"), mode).await;
        assert!(refused.headers().contains_key("retry-after"), "{mode}");
        assert_problem(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    }

    app.start_smtp().await;
    for id in &ids {
        app.wait_for_delivery_state(id, "sent").await;
    }
    let accepted = poll(PATIENCE, || async {
        let response = app.signup("after@example.com", "background").await;
        match response.status() {
            StatusCode::ACCEPTED => Ok(()),
            status => Err(format!("{status}: {}", response.text().await.unwrap())),
        }
    })
    .await;
    assert_eq!(accepted, Ok(()), "the cap lifts once the backlog drains");
}
