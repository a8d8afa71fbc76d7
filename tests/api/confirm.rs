//! The link in the email, its page and button, and signing up again.
//!
//! Opening a link (GET, HEAD) confirms nothing, so that a mail scanner that fetches every link
//! cannot confirm an address nobody read; only `POST /confirm` (the page's button) confirms.

use reqwest::StatusCode;
use serde_json::Value;

use super::helpers::{assert_problem, spawn_app, token_of};

fn content_type(response: &reqwest::Response) -> String {
    response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// What a scanner does (GET and HEAD, as a browser and as an API client) leaves the signup
/// pending; the page's button confirms it.
#[tokio::test]
async fn opening_the_link_confirms_nothing_and_the_pages_button_confirms() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "background").await;
    let link = app.confirmation_link("ann@example.com").await;

    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(content_type(&page).starts_with("text/html"));
    assert_eq!(page.headers()["cache-control"], "no-store");
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"<form method="post""#), "{page}");
    assert!(
        page.contains(token_of(&link)),
        "the button carries the token"
    );
    let head = app.client.head(&link).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let as_json = app
        .client
        .get(&link)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(as_json.status(), StatusCode::OK);
    let as_json: Value = as_json.json().await.unwrap();
    assert_eq!(as_json["status"], "pending");
    assert_eq!(
        app.user_statuses().await,
        ["pending"],
        "GET and HEAD confirm nothing"
    );

    let pressed = app.press_the_button(&link).await;

    assert_eq!(pressed.status(), StatusCode::OK);
    assert!(content_type(&pressed).starts_with("text/html"));
    let page = pressed.text().await.unwrap();
    assert!(page.contains("Your email address is confirmed."), "{page}");
    assert!(!page.contains("ann@example.com"), "{page}");
    assert_eq!(app.user_statuses().await, ["confirmed"]);
}

/// A used link says so, in HTML and in JSON, without saying whose it is.
#[tokio::test]
async fn a_used_link_says_already_confirmed_without_the_address() {
    let app = spawn_app().await;
    let id = app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    let first = app.confirm(&link).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "confirmed");
    assert_eq!(first["already_confirmed"], false);

    let again = app.confirm(&link).await;
    assert_eq!(again.status(), StatusCode::OK);
    let text = again.text().await.unwrap();
    let again: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(again["status"], "confirmed");
    assert_eq!(again["already_confirmed"], true);
    assert_eq!(
        again.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["already_confirmed", "status"],
        "no email, no id"
    );
    assert!(
        !text.contains("ann@example.com") && !text.contains(&id),
        "{text}"
    );

    // The form submitted again (the back button), and the link opened again.
    let resubmitted = app
        .client
        .post(format!("{}/confirm", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", token_of(&link)))
        .send()
        .await
        .unwrap();
    for page in [resubmitted, app.client.get(&link).send().await.unwrap()] {
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        assert!(page.contains("already confirmed"), "{page}");
        assert!(
            !page.contains("ann@example.com") && !page.contains(&id),
            "{page}"
        );
        assert!(!page.contains("<form"), "no button on a used link: {page}");
    }
}

#[tokio::test]
async fn a_confirmed_address_signing_up_again_is_sent_a_notice_without_a_link() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    assert_eq!(app.confirm(&link).await.status(), StatusCode::OK);

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
    let old = app.confirm(&old_link).await;
    assert_eq!(old.status(), StatusCode::OK);
    assert_eq!(
        old.json::<Value>().await.unwrap()["already_confirmed"],
        false
    );
    let new = app.confirm(&new_link).await;
    assert_eq!(new.status(), StatusCode::OK);
    assert_eq!(
        new.json::<Value>().await.unwrap()["already_confirmed"],
        true
    );
}

#[tokio::test]
async fn an_expired_link_is_gone_and_its_page_says_how_to_get_a_new_one() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    app.expire_tokens().await;

    let problem = assert_problem(app.confirm(&link).await, StatusCode::GONE).await;
    assert!(problem["detail"].as_str().unwrap().contains("expired"));

    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::GONE);
    assert!(content_type(&page).starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(
        page.contains("expired") && page.contains("Sign up again"),
        "{page}"
    );
    // `/confirm` and the signup page (`/`) share a folder: "." is the signup page, also behind a
    // proxy's path prefix.
    assert!(
        page.contains(r#"<a href=".">Sign up again for a new link</a>"#),
        "{page}"
    );
    assert!(
        !page.contains("<form"),
        "no button on an expired link: {page}"
    );
    assert_eq!(app.user_statuses().await, ["pending"]);
}

#[tokio::test]
async fn unknown_malformed_and_missing_tokens_are_told_apart() {
    let app = spawn_app().await;
    let unknown = "A".repeat(43);
    let json = |path: String| {
        app.client
            .get(format!("{}{path}", app.address))
            .header("accept", "application/json")
            .send()
    };
    let cases = [
        (format!("/confirm?token={unknown}"), StatusCode::NOT_FOUND),
        ("/confirm?token=not-a-token".into(), StatusCode::BAD_REQUEST),
        ("/confirm".into(), StatusCode::BAD_REQUEST),
        ("/confirm?token=%FF%FE".into(), StatusCode::BAD_REQUEST),
    ];
    for (path, status) in cases {
        assert_problem(json(path.clone()).await.unwrap(), status).await;
        // A browser gets a page with the same status.
        let page = app.get(&path).await;
        assert_eq!(page.status(), status, "{path}");
        assert!(content_type(&page).starts_with("text/html"), "{path}");
        assert!(page.text().await.unwrap().contains("not valid"), "{path}");
    }

    let post = |content_type: &'static str, body: String| {
        app.client
            .post(format!("{}/confirm", app.address))
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(body)
            .send()
    };
    let json_body = "application/json";
    let form = "application/x-www-form-urlencoded";
    for (content_type, body, status) in [
        (
            json_body,
            format!(r#"{{"token": "{unknown}"}}"#),
            StatusCode::NOT_FOUND,
        ),
        (form, format!("token={unknown}"), StatusCode::NOT_FOUND),
        (
            json_body,
            r#"{"token": "short"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (json_body, "{}".into(), StatusCode::BAD_REQUEST),
        (form, String::new(), StatusCode::BAD_REQUEST),
        (json_body, "{".into(), StatusCode::BAD_REQUEST),
        (
            json_body,
            r#"{"token": 42}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "text/plain",
            format!("token={unknown}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        assert_problem(post(content_type, body).await.unwrap(), status).await;
    }
}

#[tokio::test]
async fn the_database_keeps_only_a_hash_of_the_token() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    let token = token_of(&link);

    let db = app.db().await;
    let hashes: Vec<Vec<u8>> = db
        .rows("SELECT token_hash FROM confirmation_tokens")
        .await
        .into_iter()
        .map(|(hash,)| hash)
        .collect();
    // Once sent, the outbox forgets the nonce the token was derived from as well.
    let outbox_tokens: Vec<Option<Vec<u8>>> = db
        .rows("SELECT nonce FROM email_outbox")
        .await
        .into_iter()
        .map(|(nonce,)| nonce)
        .collect();
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
    let mut app = super::helpers::spawn_app_without_smtp(|_| {}).await;
    let first = app.signup_ok("ann@example.com", "background").await;
    let second = app.signup_ok("ann@example.com", "background").await;

    app.start_smtp().await;

    app.wait_for_delivery_state(&first, "sent").await;
    app.wait_for_delivery_state(&second, "sent").await;
    let mails = app.mail_to("ann@example.com");
    assert_eq!(mails.len(), 2, "the first email is sent too");
    // The first email's link confirms, whichever email arrived first.
    let first_link = app.local_link(&mails[0].confirmation_link());
    assert_eq!(app.confirm(&first_link).await.status(), StatusCode::OK);
    assert_eq!(app.account("ann@example.com").await.unwrap().0, "confirmed");
}

#[tokio::test]
async fn two_clicks_racing_on_one_link_confirm_once_and_both_succeed() {
    let app = spawn_app().await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;

    let click = || async {
        let response = app.confirm(&link).await;
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
    let mut app = super::helpers::spawn_app_without_smtp(|_| {}).await;
    let id = app.signup_ok("ann@example.com", "background").await;
    // SMTP stays down past the token's lifetime.
    app.expire_tokens().await;

    app.start_smtp().await;
    app.wait_for_delivery_state(&id, "sent").await;

    let link = app.confirmation_link("ann@example.com").await;
    let response = app.confirm(&link).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the link works when it arrives"
    );
}
