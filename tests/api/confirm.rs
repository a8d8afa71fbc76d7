//! The link in the email, and signing up again.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn the_link_from_the_email_confirms_the_signup_and_works_twice() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "background").await;
    let link = app.confirmation_link("ann@example.com").await;

    let first = app.client.get(&link).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(
        first.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = first.text().await.unwrap();
    assert!(page.contains("ann@example.com is confirmed"), "{page}");

    let (status, _) = app.account("ann@example.com").await.unwrap();
    assert_eq!(status, "confirmed");

    let second: Value = app
        .client
        .get(&link)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["status"], "confirmed");
    assert_eq!(second["already_confirmed"], true);
}

#[tokio::test]
async fn a_confirmed_address_signing_up_again_is_sent_a_notice_without_a_link() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    assert_eq!(
        app.client.get(&link).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Answered as any signup is: the requester learns nothing of the account.
    app.signup_ok("ANN@EXAMPLE.COM", "sync").await;

    let mails = app.mail_to("ann@example.com");
    assert_eq!(mails.len(), 2, "the confirmation, then the notice");
    let notice = &mails[1];
    assert_eq!(notice.subject(), "You already have an account");
    assert!(!notice.text_body().contains("/confirm"));
    assert!(!notice.html_body().contains("/confirm"));
    assert_eq!(app.count("confirmation_tokens").await, 1, "no new token");
}

#[tokio::test]
async fn signing_up_again_while_pending_sends_a_fresh_link_and_keeps_the_old_one() {
    let app = spawn_app().await;
    let first_id = app.signup_ok("ann@example.com", "sync").await;
    let old_link = app.confirmation_link("ann@example.com").await;

    // The same address in another case is the same person; each request has its own id.
    let second_id = app.signup_ok("Ann@Example.com", "background").await;
    assert_ne!(first_id, second_id);
    app.wait_for_delivery_state(&second_id, "sent").await;
    let new_link = app.confirmation_link("ann@example.com").await;
    assert_ne!(old_link, new_link);
    assert_eq!(app.mail_to("ann@example.com").len(), 2);
    assert_eq!(app.count("users").await, 1);

    // The link already in the inbox still works; the newer one then finds the address done.
    let old = app
        .client
        .get(&old_link)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::OK);
    assert_eq!(
        old.json::<Value>().await.unwrap()["already_confirmed"],
        false
    );
    let new = app
        .client
        .get(&new_link)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), StatusCode::OK);
    assert_eq!(
        new.json::<Value>().await.unwrap()["already_confirmed"],
        true
    );
}

#[tokio::test]
async fn an_expired_link_is_gone() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    app.expire_tokens().await;

    let response = app.client.get(&link).send().await.unwrap();

    let problem = assert_problem(response, StatusCode::GONE).await;
    assert!(problem["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn unknown_malformed_and_missing_tokens_are_told_apart() {
    let app = spawn_app().await;
    let unknown = format!("/confirm?token={}", "A".repeat(43));
    assert_problem(app.get(&unknown).await, StatusCode::NOT_FOUND).await;
    assert_problem(
        app.get("/confirm?token=not-a-token").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_problem(app.get("/confirm").await, StatusCode::BAD_REQUEST).await;
    assert_problem(
        app.get("/confirm?token=%FF%FE").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn the_database_keeps_only_a_hash_of_the_token() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    let token = link.split("token=").nth(1).unwrap();

    let db = app.db().await;
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM confirmation_tokens")
        .fetch_all(&db)
        .await
        .unwrap();
    // Once sent, the outbox forgets the token as well.
    let outbox_tokens: Vec<Option<String>> = sqlx::query_scalar("SELECT token FROM email_outbox")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(hashes.len(), 1);
    assert_eq!(hashes[0].len(), 32);
    assert!(
        !hashes[0]
            .windows(token.len())
            .any(|w| w == token.as_bytes())
    );
    assert_eq!(outbox_tokens, vec![None]);
}

#[tokio::test]
async fn a_re_signup_while_the_first_email_waits_takes_nothing_away_from_it() {
    let mut app = crate::helpers::spawn_app_without_smtp(|_| {}).await;
    let first = app.signup_ok("ann@example.com", "background").await;
    let second = app.signup_ok("ann@example.com", "background").await;

    app.start_smtp().await;

    app.wait_for_delivery_state(&first, "sent").await;
    app.wait_for_delivery_state(&second, "sent").await;
    let mails = app.mail_to("ann@example.com");
    assert_eq!(mails.len(), 2, "the first email is sent too");
    // The first email's link confirms, whichever email arrived first.
    let first_link = app.local_link(&mails[0].confirmation_link());
    assert_eq!(
        app.client.get(&first_link).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(app.account("ann@example.com").await.unwrap().0, "confirmed");
}

#[tokio::test]
async fn two_clicks_racing_on_one_link_confirm_once_and_both_succeed() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;

    let click = || async {
        let response = app
            .client
            .get(&link)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()["already_confirmed"]
            .as_bool()
            .unwrap()
    };
    let clicks = futures_util::future::join_all((0..8).map(|_| click())).await;

    assert_eq!(
        clicks.iter().filter(|already| !**already).count(),
        1,
        "exactly one click confirms: {clicks:?}"
    );
    assert_eq!(app.account("ann@example.com").await.unwrap().0, "confirmed");
}

#[tokio::test]
async fn a_link_sent_after_a_long_outage_is_valid_for_a_full_ttl_from_the_send() {
    let mut app = crate::helpers::spawn_app_without_smtp(|_| {}).await;
    let id = app.signup_ok("ann@example.com", "background").await;
    // SMTP stays down past the token's lifetime.
    app.expire_tokens().await;

    app.start_smtp().await;
    app.wait_for_delivery_state(&id, "sent").await;

    let link = app.confirmation_link("ann@example.com").await;
    let response = app.client.get(&link).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the link works when it arrives"
    );
}
