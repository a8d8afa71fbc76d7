//! SMTP down, slow or refusing: sync mode says so, and nothing acknowledged is lost.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    helpers::{PATIENCE, assert_problem, poll, spawn_app, spawn_app_with, spawn_app_without_smtp},
    smtp::Behaviour,
};

#[tokio::test]
async fn sync_with_smtp_down_is_502_and_the_email_goes_out_once_smtp_is_back() {
    let mut app = spawn_app_without_smtp(|_| {}).await;

    let response = app.signup("ann@example.com", "sync").await;

    let problem = assert_problem(response, StatusCode::BAD_GATEWAY).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("saved") && detail.contains("retried"),
        "{detail}"
    );
    let id = problem["id"]
        .as_str()
        .expect("the problem names the stored signup")
        .to_owned();
    let details = app.signup_details(&id).await;
    assert_eq!(details["delivery"]["mode"], "sync");
    assert!(app.last_error(&id).await.is_some(), "{details}");

    app.start_smtp().await;

    let details = app.wait_for_delivery_state(&id, "sent").await;
    assert!(details["delivery"]["attempts"].as_i64().unwrap() >= 2);
    assert_eq!(app.mail_to("ann@example.com").len(), 1);
}

#[tokio::test]
async fn background_with_smtp_down_is_acknowledged_and_delivered_once_smtp_is_back() {
    let mut app = spawn_app_without_smtp(|_| {}).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.signup_ok(&format!("user{i}@example.com"), "background")
                .await,
        );
    }
    // The workers are failing and rescheduling: the retry schedule shows in the API.
    let retried = poll(PATIENCE, || async {
        let details = app.signup_details(&ids[0]).await;
        if details["delivery"]["attempts"].as_i64().unwrap() >= 2 {
            Ok(details)
        } else {
            Err(details)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("no retry seen: {last:#}"));
    assert_eq!(retried["delivery"]["state"], "queued");
    assert!(
        retried["delivery"]["next_attempt_at"].is_string(),
        "{retried:#}"
    );
    assert!(app.last_error(&ids[0]).await.is_some(), "{retried:#}");

    app.start_smtp().await;

    for id in &ids {
        app.wait_for_delivery_state(id, "sent").await;
    }
    assert_eq!(app.smtp().received().len(), 5, "each email exactly once");
}

#[tokio::test]
async fn sync_with_a_server_that_never_answers_is_504_and_the_email_is_retried() {
    let app = spawn_app_with(|s| {
        s.smtp.timeout_ms = 300;
        s.worker.lease_ms = 1_000;
    })
    .await;
    app.smtp().set_behaviour(Behaviour::Hang);

    let response = app.signup("ann@example.com", "sync").await;

    let problem = assert_problem(response, StatusCode::GATEWAY_TIMEOUT).await;
    let id = problem["id"].as_str().unwrap().to_owned();
    app.smtp().set_behaviour(Behaviour::Accept);
    app.wait_for_delivery_state(&id, "sent").await;
}

#[tokio::test]
async fn a_refused_address_fails_at_once_and_sync_mode_says_the_address_is_the_problem() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::RejectPermanent);

    let sync = app.signup("ann@example.com", "sync").await;
    let problem = assert_problem(sync, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("refused this address")
    );
    let sync_id = problem["id"].as_str().unwrap().to_owned();

    let background_id = app.signup_ok("bob@example.com", "background").await;
    let details = app.wait_for_delivery_state(&background_id, "failed").await;

    assert_eq!(
        details["delivery"]["attempts"], 1,
        "no retry storm on a 5xx"
    );
    let last_error = app.last_error(&background_id).await.unwrap();
    assert!(last_error.contains("550"), "{last_error}");
    let sync_details = app.signup_details(&sync_id).await;
    assert_eq!(sync_details["delivery"]["state"], "failed");
    assert_eq!(sync_details["delivery"]["attempts"], 1);
}

#[tokio::test]
async fn a_rejection_that_is_not_about_the_address_is_the_gateways_fault() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::RejectPolicy);

    let sync = app.signup("ann@example.com", "sync").await;

    let problem = assert_problem(sync, StatusCode::BAD_GATEWAY).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("will not be retried") && detail.contains("554"),
        "{detail}"
    );
    let details = app.signup_details(problem["id"].as_str().unwrap()).await;
    assert_eq!(details["delivery"]["state"], "failed");
}

#[tokio::test]
async fn temporary_rejections_are_retried_with_backoff_until_max_attempts() {
    let app = spawn_app_with(|s| s.worker.max_attempts = 3).await;
    app.smtp().set_behaviour(Behaviour::RejectTransient);

    let id = app.signup_ok("ann@example.com", "background").await;

    let details = app.wait_for_delivery_state(&id, "failed").await;
    assert_eq!(details["delivery"]["attempts"], 3);
    let last_error = app.last_error(&id).await.unwrap();
    assert!(
        last_error.contains("gave up after 3 attempts") && last_error.contains("451"),
        "{last_error}"
    );
    assert!(app.smtp().received().is_empty());
}

#[tokio::test]
async fn a_slow_server_delays_sync_but_not_background() {
    let app = spawn_app().await;
    let delay = Duration::from_millis(400);
    app.smtp().set_behaviour(Behaviour::Delay(delay));

    // Not a timing assertion: Server-Timing reports where the time went, and the sync request
    // spent it waiting on SMTP, which background mode never does.
    let sync = app.signup("ann@example.com", "sync").await;
    assert_eq!(sync.status(), StatusCode::CREATED);
    let timing = sync.headers()["server-timing"].to_str().unwrap().to_owned();
    let smtp_ms: f64 = timing
        .split(", ")
        .find_map(|part| part.strip_prefix("smtp;dur="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(smtp_ms >= delay.as_millis() as f64, "{timing}");

    let background = app.signup("bob@example.com", "background").await;
    assert_eq!(background.status(), StatusCode::ACCEPTED);
    assert!(
        app.mail_to("bob@example.com").is_empty(),
        "answered before the email went out"
    );
    let id = background.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for_delivery_state(&id, "sent").await;
}

#[tokio::test]
async fn a_connection_dropped_mid_message_is_retried() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::DropDuringData);
    let id = app.signup_ok("ann@example.com", "background").await;
    let smtp = app.smtp();
    poll(PATIENCE, || async {
        let details = app.signup_details(&id).await;
        if details["delivery"]["attempts"].as_i64().unwrap() >= 2 {
            Ok(())
        } else {
            Err(details)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("the dropped connection was not retried: {last:#}"));

    smtp.set_behaviour(Behaviour::Accept);

    app.wait_for_delivery_state(&id, "sent").await;
    assert_eq!(app.mail_to("ann@example.com").len(), 1);
}

#[tokio::test]
async fn a_send_that_hangs_times_out_and_does_not_stall_the_worker() {
    // One worker: if a hung send held it, nothing else would ever be delivered.
    let app = spawn_app_with(|s| {
        s.worker.concurrency = 1;
        s.smtp.timeout_ms = 300;
        s.worker.lease_ms = 1_000;
    })
    .await;
    app.smtp().set_behaviour(Behaviour::Hang);
    let stuck = app.signup_ok("ann@example.com", "background").await;
    poll(PATIENCE, || async {
        let error = app.last_error(&stuck).await;
        let timed_out = error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer"));
        if timed_out { Ok(()) } else { Err(error) }
    })
    .await
    .unwrap_or_else(|last| panic!("the hung send never timed out: {last:?}"));

    app.smtp().set_behaviour(Behaviour::Accept);
    let next = app.signup_ok("bob@example.com", "background").await;

    app.wait_for_delivery_state(&next, "sent").await;
    app.wait_for_delivery_state(&stuck, "sent").await;
}
