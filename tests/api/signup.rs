//! The two modes, side by side.

use reqwest::StatusCode;
use serde_json::Value;

use super::helpers::{PATIENCE, poll_until, spawn_app, spawn_app_with};

#[tokio::test]
async fn sync_signup_answers_201_only_after_smtp_accepted_the_email() {
    let app = spawn_app().await;

    let response = app.signup("ann@example.com", "sync").await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        timing.contains("db;dur=") && timing.contains("smtp;dur=") && timing.contains("total;dur="),
        "{timing}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/signups/{}", body["id"].as_str().unwrap())
    );
    assert_eq!(body["email"], "ann@example.com");
    assert!(body.get("status").is_none(), "nothing about the account");
    assert_eq!(body["delivery"]["mode"], "sync");
    assert_eq!(body["delivery"]["state"], "sent");
    // Already there when the response arrived: no waiting.
    assert_eq!(app.mail_to("ann@example.com").len(), 1);
    let details = app.signup_details(body["id"].as_str().unwrap()).await;
    assert_eq!(details["delivery"]["state"], "sent");
    assert_eq!(details["delivery"]["attempts"], 1);
    assert!(details["delivery"]["sent_at"].is_string());
}

#[tokio::test]
async fn background_signup_answers_202_and_a_worker_sends_the_email() {
    let app = spawn_app().await;

    let response = app.signup("bob@example.com", "background").await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        !timing.contains("smtp"),
        "background mode does not wait for SMTP: {timing}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["delivery"]["mode"], "background");
    assert_eq!(body["delivery"]["state"], "queued");
    let id = body["id"].as_str().unwrap();
    let details = app.wait_for_delivery_state(id, "sent").await;
    assert_eq!(details["delivery"]["attempts"], 1);
    assert_eq!(app.mail_to("bob@example.com").len(), 1);
}

#[tokio::test]
async fn async_is_accepted_as_another_name_for_background() {
    let app = spawn_app().await;
    let response = app.signup("cy@example.com", "async").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["delivery"]["mode"], "background");
}

#[tokio::test]
async fn without_a_mode_the_configured_default_applies() {
    let app = spawn_app().await;
    let response = app
        .post_signup(r#"{"email": "dee@example.com"}"#, None)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let app =
        spawn_app_with(|s| s.delivery.default_mode = confirmd::domain::DeliveryMode::Sync).await;
    let response = app
        .post_signup(r#"{"email": "dee@example.com"}"#, None)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// The name is kept for the application, but no email shows it: whoever signs up may type
/// anyone's address, and a name must not carry their words to a stranger.
#[tokio::test]
async fn the_email_is_addressed_from_the_configured_sender_and_never_shows_the_name() {
    let app = spawn_app().await;
    let body = r#"{"email": "eve@example.com", "name": "<b>Eve</b> & \"co\""}"#;
    assert_eq!(
        app.post_signup(body, Some("sync")).await.status(),
        StatusCode::CREATED
    );

    let mail = app.mail_to("eve@example.com").pop().unwrap();
    assert_eq!(mail.from, "no-reply@confirmd.localhost");
    assert_eq!(mail.subject(), "Confirm your email address");
    let to = mail.header("To").unwrap();
    assert_eq!(to, "eve@example.com", "no display name");
    let (text, html) = (mail.text_body(), mail.html_body());
    for part in [&text, &html] {
        assert!(!part.contains("Eve"), "{part}");
    }
    assert!(text.starts_with("Hi,"), "{text}");
    // The same link in both parts.
    let link = mail.confirmation_link();
    assert!(html.contains(&link), "{html}");
    assert_eq!(
        stored_names(&app).await,
        [Some("<b>Eve</b> & \"co\"".to_owned())]
    );
}

/// A name that looks like a template placeholder was replaced by the real link in both parts,
/// so an email could carry a second, attacker-worded link. Templates now get values, never
/// template text, and the email does not show the name at all.
#[tokio::test]
async fn a_name_with_a_placeholder_adds_nothing_to_the_email() {
    let app = spawn_app().await;
    let name = "Click {{link}} or {{ link }} or {{greeting}}";
    let body = serde_json::json!({ "email": "eve@example.com", "name": name }).to_string();
    assert_eq!(
        app.post_signup(&body, Some("sync")).await.status(),
        StatusCode::CREATED
    );

    let mail = app.mail_to("eve@example.com").pop().unwrap();
    let (text, html) = (mail.text_body(), mail.html_body());
    for part in [&text, &html] {
        assert!(!part.contains("Click") && !part.contains("{{"), "{part}");
    }
    assert_eq!(text.matches("/confirm?token=").count(), 1, "{text}");
    // The HTML part has the link twice: the button's href and the text to paste.
    assert_eq!(html.matches("/confirm?token=").count(), 2, "{html}");
    assert_eq!(stored_names(&app).await, [Some(name.to_owned())]);
}

async fn stored_names(app: &super::helpers::TestApp) -> Vec<Option<String>> {
    let db = app.db().await;
    // Kept with the request's token until its link is confirmed (tests/api/privacy.rs).
    let names: Vec<(Option<String>,)> = db.rows("SELECT name FROM confirmation_tokens").await;
    db.close().await;
    names.into_iter().map(|(name,)| name).collect()
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_a_sane_incoming_one() {
    let app = spawn_app().await;
    let generated = app.get("/healthz").await;
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(id.len() >= 16, "{id}");

    let echoed = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc.123");

    let replaced = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_ne!(
        replaced.headers()["x-request-id"].to_str().unwrap(),
        "x".repeat(200)
    );
}

#[tokio::test]
async fn many_concurrent_signups_in_both_modes_all_get_their_email() {
    let app = spawn_app().await;
    let requests = (0..60).map(|i| {
        let app = &app;
        async move {
            let mode = if i % 2 == 0 { "sync" } else { "background" };
            app.signup(&format!("user{i}@example.com"), mode)
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");

    let smtp = app.smtp();
    assert!(poll_until(PATIENCE, || async { smtp.received().len() >= 60 }).await);
    let mut recipients: Vec<String> = smtp.received().into_iter().flat_map(|m| m.to).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(
        recipients.len(),
        60,
        "each signup gets exactly its own email"
    );
    assert_eq!(smtp.received().len(), 60, "and no email is sent twice");
    assert_eq!(app.count("users").await, 60);
}

#[tokio::test]
async fn consecutive_emails_reuse_one_smtp_connection() {
    // The background SMTP check opens the first connection at start-up; once it has answered,
    // the signups reuse that one. Its next check is an hour away.
    let app = spawn_app_with(|s| s.smtp.check_interval_ms = 3_600_000).await;
    assert!(
        poll_until(PATIENCE, || async {
            let health: Value = app.get("/healthz").await.json().await.unwrap();
            health["smtp"] == "up"
        })
        .await,
        "the start-up SMTP check never answered"
    );
    for i in 0..5 {
        app.signup_ok(&format!("user{i}@example.com"), "sync").await;
    }
    assert_eq!(app.smtp().received().len(), 5);
    assert_eq!(
        app.smtp().connections(),
        1,
        "the pool should keep the connection open"
    );
}

#[tokio::test]
async fn a_backlog_larger_than_the_channel_drains_without_waiting_for_the_sweep_interval() {
    // A two-slot channel and a sweeper that would not come back for a minute on its own.
    let app = spawn_app_with(|s| {
        s.worker.queue_capacity = 2;
        s.worker.concurrency = 1;
        s.worker.sweep_interval_ms = 60_000;
    })
    .await;
    app.smtp().set_behaviour(super::smtp::Behaviour::Delay(
        std::time::Duration::from_millis(20),
    ));
    for i in 0..30 {
        app.signup_ok(&format!("user{i}@example.com"), "background")
            .await;
    }

    let smtp = app.smtp();
    let drained = poll_until(PATIENCE, || async { smtp.received().len() >= 30 }).await;

    assert!(
        drained,
        "only {} of 30 emails were sent",
        smtp.received().len()
    );
}

/// `bücher.de` and `xn--bcher-kva.de` are one domain, and `Ünï` and `ünï` one mailbox: each pair
/// is one user. The email goes to the punycode domain (no SMTPUTF8 needed for it) and to the
/// local part as typed.
#[tokio::test]
async fn one_mailbox_is_one_user_whatever_the_spelling_of_its_domain_or_case() {
    let app = spawn_app().await;
    app.signup_ok("same@bücher.de", "sync").await;
    let again = app.signup("same@XN--BCHER-KVA.de", "sync").await;
    assert!(again.status().is_success(), "{}", again.status());
    assert_eq!(app.count("users").await, 1);
    let recipients: Vec<Vec<String>> = app.smtp().received().into_iter().map(|m| m.to).collect();
    assert_eq!(recipients[0], ["same@xn--bcher-kva.de"]);

    app.signup_ok("Ünï@example.com", "sync").await;
    let again = app.signup("ünï@example.com", "background").await;
    assert!(again.status().is_success(), "{}", again.status());
    assert_eq!(app.count("users").await, 2);
    let first = app.smtp().received().into_iter().nth(2).unwrap();
    assert_eq!(first.to, ["Ünï@example.com"], "sent as typed");
}

/// The users table keeps an address's comparison key (lower-cased); every email still goes to
/// the address as typed, a re-signup's too (a worker reads it back from the outbox).
#[tokio::test]
async fn a_re_signup_is_mailed_to_the_address_as_typed_not_its_key() {
    let app = spawn_app().await;
    app.signup_ok("Ann.Lee@example.com", "sync").await;
    app.signup_ok("Ann.Lee@example.com", "background").await;
    let mail = app.smtp().wait_for_mail(2, PATIENCE).await;
    let recipients: Vec<Vec<String>> = mail.into_iter().map(|m| m.to).collect();
    assert_eq!(
        recipients,
        [["Ann.Lee@example.com"], ["Ann.Lee@example.com"]]
    );
}
