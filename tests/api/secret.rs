//! Rotating the token secret: what docs/how-it-works.md promises about the links in flight.

use reqwest::StatusCode;

use super::{
    helpers::{PATIENCE, poll_until, spawn_app_with},
    smtp::Behaviour,
};

#[tokio::test]
async fn after_a_secret_rotation_sent_links_still_work_and_waiting_emails_get_working_ones() {
    let app = spawn_app_with(|s| {
        s.token.secret = "the-first-secret-of-at-least-32-chars".into();
        s.worker.max_attempts = 1_000;
    })
    .await;
    // Ann's email goes out under the first secret; Bob's waits (the server says "try later").
    app.signup_ok("ann@example.com", "sync").await;
    let anns_link = app.confirmation_link("ann@example.com").await;
    app.smtp().set_behaviour(Behaviour::RejectTransient);
    let bob = app.signup_ok("bob@example.com", "background").await;
    let tried = poll_until(PATIENCE, || async { app.last_error(&bob).await.is_some() }).await;
    assert!(tried, "Bob's email was tried under the first secret");

    let mut stopped = app.stop().await;
    stopped.settings.token.secret = "the-second-secret-of-at-least-32-chars".into();
    stopped
        .smtp
        .as_ref()
        .unwrap()
        .set_behaviour(Behaviour::Accept);
    let app = stopped.restart().await;

    app.wait_for_delivery_state(&bob, "sent").await;
    let bobs_link = app.confirmation_link("bob@example.com").await;
    // Ann's link was derived from the first secret: only its hash is stored, so it still works.
    let anns_link = format!(
        "{}{}",
        app.address,
        &anns_link[anns_link.find("/confirm").unwrap()..]
    );
    for link in [anns_link, bobs_link] {
        let response = app.confirm(&link).await;
        assert_eq!(response.status(), StatusCode::OK, "{link}");
    }
    assert_eq!(app.account("bob@example.com").await.unwrap().0, "confirmed");
    assert_eq!(app.account("ann@example.com").await.unwrap().0, "confirmed");
}
