//! SMTP down, slow or refusing: sync mode says so, and nothing acknowledged is lost.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{
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
    // The workers are failing and rescheduling: the retry schedule shows in the API. Wait for a
    // moment between attempts: during one, the row is claimed (`sending`) with its count
    // already raised.
    let retried = poll(PATIENCE, || async {
        let details = app.signup_details(&ids[0]).await;
        if details["delivery"]["attempts"].as_i64().unwrap() >= 2
            && details["delivery"]["state"] == "queued"
        {
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

/// 554 5.7.1 (relay denied) is about the server or our account, not the address: no other
/// address would get through either. It is retried like an outage, and delivered once lifted.
#[tokio::test]
async fn a_rejection_that_is_not_about_the_address_is_retried_until_it_is_lifted() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::RejectPolicy);

    let sync = app.signup("ann@example.com", "sync").await;

    let problem = assert_problem(sync, StatusCode::BAD_GATEWAY).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("will be retried") && detail.contains("554"),
        "{detail}"
    );
    let id = problem["id"].as_str().unwrap().to_owned();
    let background = app.signup_ok("bob@example.com", "background").await;
    for id in [&id, &background] {
        poll(PATIENCE, || async {
            let details = app.signup_details(id).await;
            let state = &details["delivery"]["state"];
            if details["delivery"]["attempts"].as_i64().unwrap() >= 3 {
                Ok(())
            } else if state == "failed" {
                panic!("a policy rejection failed the email: {details:#}")
            } else {
                Err(details)
            }
        })
        .await
        .unwrap_or_else(|last| panic!("no retries seen: {last:#}"));
    }

    app.smtp().set_behaviour(Behaviour::Accept);

    app.wait_for_delivery_state(&id, "sent").await;
    app.wait_for_delivery_state(&background, "sent").await;
}

/// Without an attempt limit (the default), an email is retried until the next attempt would
/// come after its link expired. The signup is made to look almost a link's lifetime old.
#[tokio::test]
async fn an_email_is_given_up_only_when_its_link_would_have_expired() {
    let app = spawn_app_without_smtp(|_| {}).await;
    assert_eq!(app.settings.worker.max_attempts, 0, "the default: no limit");
    let id = app.signup_ok("ann@example.com", "background").await;
    let lifetime_ms = i64::try_from(app.settings.token.ttl().as_millis()).unwrap();
    // A second of the link's life left: a few more retries (50 to 200 ms apart), then it ends.
    let db = app.db().await;
    db.execute(&format!(
        "UPDATE email_outbox SET created_at = created_at - {}",
        lifetime_ms - 1_000
    ))
    .await;
    db.close().await;

    let details = app.wait_for_delivery_state(&id, "failed").await;

    let attempts = details["delivery"]["attempts"].as_i64().unwrap();
    let last_error = app.last_error(&id).await.unwrap();
    assert!(
        last_error.contains("its link expires before the next"),
        "{last_error}"
    );
    assert!(last_error.contains(&format!("gave up after {attempts} attempts")));
    assert!(attempts > 2, "{attempts} attempts");
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

/// A burst of sync signups against a slow server: never more than `smtp.pool_size` connections
/// at once. A request that finds none free within `smtp.acquire_timeout_ms` gets 503 with
/// Retry-After, and its email, already stored, is delivered by the workers.
#[tokio::test(flavor = "multi_thread")]
async fn sync_signups_never_open_more_smtp_connections_than_the_pool_allows() {
    let app = spawn_app().await;
    let defaults = confirmd::Settings::defaults();
    assert_eq!(app.settings.smtp.pool_size, defaults.smtp.pool_size);
    assert_eq!(
        app.settings.smtp.acquire_timeout_ms,
        defaults.smtp.acquire_timeout_ms
    );
    let pool_size = app.settings.smtp.pool_size as usize;
    app.smtp()
        .set_behaviour(Behaviour::Delay(Duration::from_millis(100)));

    let signups = 200;
    let answers = futures_util::future::join_all((0..signups).map(|i| {
        let app = &app;
        async move {
            let response = app.signup(&format!("user{i}@example.com"), "sync").await;
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body)
        }
    }))
    .await;

    let mut created = 0;
    let mut busy = 0;
    for (status, retry_after, body) in &answers {
        match *status {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry_after.is_some(), "503 without Retry-After: {body}");
                assert!(body["detail"].as_str().unwrap().contains("busy"), "{body}");
                busy += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(created >= pool_size, "{created} created");
    let mail = app
        .smtp()
        .wait_for_mail(signups, Duration::from_secs(60))
        .await;
    let mut delivered: Vec<String> = mail.iter().flat_map(|m| m.to.clone()).collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered.len(),
        signups,
        "every signup's email, once refused or not"
    );
    let most = app.smtp().most_connections_at_once();
    println!(
        "{signups} sync signups: {created} created, {busy} busy (503); at most {most} SMTP \
         connections at once (pool_size {pool_size}); {} messages for {signups} addresses",
        mail.len()
    );
    assert!(most <= pool_size, "{most} connections at once");
}

/// An internationalised address (`ünï@…`) can only go to a server that announces SMTPUTF8, and
/// lettre does not offer it to one that does not. That is the address's problem at this server,
/// not an outage: sync mode answers 422 (it was a 502), and the email fails at once instead of
/// being retried. ASCII addresses still go through.
#[tokio::test]
async fn a_server_without_smtputf8_refuses_an_internationalised_address_with_a_422() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::NoSmtpUtf8);

    let sync = app.signup("ünï@example.com", "sync").await;
    let problem = assert_problem(sync, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("SMTPUTF8"),
        "{problem}"
    );
    app.signup_ok("ann@example.com", "sync").await;
    app.signup_ok("zoë@example.com", "background").await;

    let outcome = poll(PATIENCE, || async {
        let db = app.db().await;
        let row: Option<(String, i64)> = db
            .rows("SELECT state, attempts FROM email_outbox WHERE recipient = 'zoë@example.com'")
            .await
            .pop();
        db.close().await;
        match row {
            Some((state, attempts)) if state == "failed" => Ok(attempts),
            other => Err(other),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("the email never failed: {last:?}"));
    assert_eq!(
        outcome, 1,
        "no retries for an address this server cannot take"
    );
    assert_eq!(app.smtp().received().len(), 1, "only ann's email");
}
