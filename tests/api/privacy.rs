//! What `POST /signups` and `GET /signups/{id}` tell a stranger about an address: nothing. A new,
//! a pending and a confirmed address get the same answer, and the id in it names the stranger's
//! own request.

use std::{collections::BTreeSet, time::Duration};

use reqwest::{Response, StatusCode};
use serde_json::Value;

use super::{
    helpers::{TestApp, spawn_app_with, spawn_app_without_smtp},
    smtp::Behaviour,
};

/// How long the test's SMTP server takes to accept an email: long enough that an answer which
/// skipped the send would show.
const SMTP_DELAY: Duration = Duration::from_millis(300);

/// The paths of every key in a JSON value (`delivery.state`, ...): its shape without its values.
fn shape(value: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if let Value::Object(map) = value {
        for (key, inner) in map {
            keys.insert(key.clone());
            keys.extend(shape(inner).into_iter().map(|k| format!("{key}.{k}")));
        }
    }
    keys
}

/// One answer to `POST /signups`, taken apart.
struct Answer {
    status: StatusCode,
    headers: BTreeSet<String>,
    body: Value,
    took: Duration,
}

async fn post(app: &TestApp, email: &str, mode: &str) -> Answer {
    let started = std::time::Instant::now();
    let response: Response = app
        .post_signup(
            &serde_json::json!({ "email": email, "name": "Mallory From Phishing Inc" }).to_string(),
            Some(mode),
        )
        .await;
    let took = started.elapsed();
    let status = response.status();
    let headers = response.headers().keys().map(|k| k.to_string()).collect();
    let body = response.json().await.unwrap();
    Answer {
        status,
        headers,
        body,
        took,
    }
}

/// A stranger signs up a new address, an address pending since moments ago and a confirmed one,
/// in `mode`, with the resend interval at `resend_interval_s`.
async fn a_stranger_learns_nothing(mode: &str, resend_interval_s: u64) {
    let app = spawn_app_with(|s| s.signup.resend_interval_s = resend_interval_s).await;
    app.smtp().set_behaviour(Behaviour::Delay(SMTP_DELAY));
    let context = format!("mode {mode}, resend interval {resend_interval_s} s");

    // The owners sign up (one of them confirms), by the same mode.
    let pending_id = app.signup_ok("pending@example.com", mode).await;
    let confirmed_id = app.signup_ok("confirmed@example.com", mode).await;
    let link = app.confirmation_link("confirmed@example.com").await;
    assert_eq!(app.confirm(&link).await.status(), StatusCode::OK);
    app.confirmation_link("pending@example.com").await;

    let new = post(&app, "new@example.com", mode).await;
    let pending = post(&app, "pending@example.com", mode).await;
    let confirmed = post(&app, "confirmed@example.com", mode).await;
    let answers = [&new, &pending, &confirmed];
    println!(
        "{context}: answered new in {:?}, pending in {:?}, confirmed in {:?} (SMTP takes {SMTP_DELAY:?})",
        new.took, pending.took, confirmed.took
    );

    let expected = if mode == "sync" {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    for answer in answers {
        assert_eq!(answer.status, expected, "{context}: {}", answer.body);
        assert_eq!(answer.headers, new.headers, "{context}: the same headers");
        assert_eq!(
            shape(&answer.body),
            shape(&new.body),
            "{context}: the same keys"
        );
        assert_eq!(answer.body["delivery"], new.body["delivery"], "{context}");
        if mode == "sync" {
            // A lower bound only: every answer waited for a send, or as long as one takes.
            assert!(
                answer.took >= SMTP_DELAY / 2,
                "{context}: answered in {:?}, sooner than a send takes",
                answer.took
            );
        }
    }

    // No foreign id: each id is a fresh request's, not the owner's request nor any user's.
    let ids: Vec<&str> = answers
        .iter()
        .map(|a| a.body["id"].as_str().unwrap())
        .collect();
    let db = app.db().await;
    for id in &ids {
        assert!(
            uuid_v7(id),
            "{context}: {id} is not a time-ordered random UUID"
        );
        assert!(
            ![pending_id.as_str(), confirmed_id.as_str()].contains(id),
            "{context}"
        );
        // As text: a PostgreSQL user id is a UUID column.
        let users: Vec<(i64,)> = db
            .rows(&format!(
                "SELECT COUNT(*) FROM users WHERE CAST(id AS TEXT) = {}",
                super::helpers::quoted(id)
            ))
            .await;
        let users = users[0].0;
        assert_eq!(users, 0, "{context}: {id} is a user's id");
    }
    db.close().await;

    // What the stranger can ask about its requests: the same, and nothing of the owners.
    let mut shown = Vec::new();
    for id in &ids {
        let details = app.wait_for_delivery_state(id, "sent").await;
        let text = details.to_string();
        for secret in ["pending@", "confirmed@", "Mallory", "confirmed\""] {
            assert!(!text.contains(secret), "{context}: {secret} in {text}");
        }
        shown.push(details);
    }
    for details in &shown {
        assert_eq!(shape(details), shape(&shown[0]), "{context}");
        assert_eq!(details["delivery"]["mode"], shown[0]["delivery"]["mode"]);
        assert_eq!(
            details["delivery"]["attempts"],
            shown[0]["delivery"]["attempts"]
        );
    }
    // The owner's own request is untouched: still its own, still sent.
    assert_eq!(
        app.signup_details(&pending_id).await["id"],
        pending_id.as_str()
    );

    // What differs is only what the addresses receive, which the stranger does not see.
    let subjects =
        |to: &str| -> Vec<String> { app.mail_to(to).iter().map(|mail| mail.subject()).collect() };
    let (confirm, notice) = ("Confirm your email address", "You already have an account");
    assert_eq!(subjects("new@example.com"), [confirm], "{context}");
    if resend_interval_s == 0 {
        assert_eq!(subjects("pending@example.com"), [confirm, confirm]);
        assert_eq!(subjects("confirmed@example.com"), [confirm, notice]);
    } else {
        // Both were sent an email moments ago: the stranger's requests sent nothing.
        assert_eq!(subjects("pending@example.com"), [confirm], "{context}");
        assert_eq!(subjects("confirmed@example.com"), [confirm], "{context}");
    }
}

/// A version 7 UUID as text: a time, then randomness (the request's own time, which
/// `GET /signups/{id}` shows its holder as `created_at`).
fn uuid_v7(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && parts[2].starts_with('7')
}

#[tokio::test]
async fn sync_answers_are_the_same_for_new_pending_and_confirmed_addresses() {
    a_stranger_learns_nothing("sync", 0).await;
}

#[tokio::test]
async fn background_answers_are_the_same_for_new_pending_and_confirmed_addresses() {
    a_stranger_learns_nothing("background", 0).await;
}

#[tokio::test]
async fn sync_answers_are_the_same_when_the_resend_interval_holds_the_email_back() {
    a_stranger_learns_nothing("sync", 60).await;
}

#[tokio::test]
async fn background_answers_are_the_same_when_the_resend_interval_holds_the_email_back() {
    a_stranger_learns_nothing("background", 60).await;
}

#[tokio::test]
async fn a_re_signup_by_someone_else_takes_nothing_away_from_the_owner() {
    // At the defaults: the stranger's re-signup comes within the resend interval (it sends
    // nothing) or after it (a second link); neither may touch the owner's link or name.
    for resend_interval_s in [60, 0] {
        let app = spawn_app_with(|s| s.signup.resend_interval_s = resend_interval_s).await;
        let context = format!("resend interval {resend_interval_s} s");
        let signup = |name: &str| serde_json::json!({ "email": "ann@example.com", "name": name });
        let owner = app
            .post_signup(&signup("Ann Owner").to_string(), Some("sync"))
            .await;
        assert_eq!(owner.status(), StatusCode::CREATED);
        let owners_link = app.confirmation_link("ann@example.com").await;

        for mode in ["sync", "background"] {
            let stranger = app
                .post_signup(&signup("Attacker Chosen Name").to_string(), Some(mode))
                .await;
            assert!(stranger.status().is_success(), "{context}");
            let id = stranger.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            app.wait_for_delivery_state(&id, "sent").await;
        }
        // Until a link is confirmed, no name given by anyone is the account's.
        assert_eq!(
            app.account("ann@example.com").await,
            Some(("pending".to_owned(), None)),
            "{context}"
        );

        // The link already in the owner's inbox still works, and the owner's name is the one kept.
        let confirmed = app.confirm(&owners_link).await;
        assert_eq!(confirmed.status(), StatusCode::OK, "{context}");
        assert_eq!(
            app.account("ann@example.com").await,
            Some(("confirmed".to_owned(), Some("Ann Owner".to_owned()))),
            "{context}"
        );
        // The stranger's name is in no email; links confirmed later change nothing.
        for mail in app.mail_to("ann@example.com") {
            for part in [&mail.raw, &mail.text_body(), &mail.html_body()] {
                assert!(!part.contains("Attacker"), "{context}: {part}");
            }
        }
        if let Some(later) = app.mail_to("ann@example.com").get(1) {
            let link = app.local_link(&later.confirmation_link());
            assert_eq!(app.confirm(&link).await.status(), StatusCode::OK);
        }
        assert_eq!(
            app.account("ann@example.com").await.unwrap().1.as_deref(),
            Some("Ann Owner"),
            "{context}"
        );
    }
}

#[tokio::test]
async fn during_an_smtp_outage_a_held_back_request_fails_like_a_real_send() {
    let mut app = spawn_app_without_smtp(|s| s.signup.resend_interval_s = 60).await;
    // The owner's signup meets the outage: stored, queued, 502.
    let owner = app.signup("pending@example.com", "sync").await;
    assert_eq!(owner.status(), StatusCode::BAD_GATEWAY);

    // The stranger's requests: one for a new address (a real send), one held back by the
    // resend interval (no send at all). Both answer as the outage makes a send answer.
    let new = app.signup("new@example.com", "sync").await;
    let held_back = app.signup("pending@example.com", "sync").await;
    let (new_status, held_back_status) = (new.status(), held_back.status());
    let mut new: Value = new.json().await.unwrap();
    let mut held_back: Value = held_back.json().await.unwrap();
    assert_eq!(held_back_status, new_status);
    assert_eq!(new_status, StatusCode::BAD_GATEWAY);
    let (new_id, held_back_id) = (new["id"].take(), held_back["id"].take());
    assert_eq!(held_back, new, "the same problem, id aside");

    // Both are retried, and both read `sent` once the mail server is back.
    app.start_smtp().await;
    for id in [new_id, held_back_id] {
        app.wait_for_delivery_state(id.as_str().unwrap(), "sent")
            .await;
    }
    assert_eq!(
        app.mail_to("pending@example.com").len(),
        1,
        "the owner's only"
    );
}
