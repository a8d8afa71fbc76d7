//! `confirmd outbox`: an email that failed for good is visible, and an operator can send it again
//! without restarting the service.

use std::process::Output;

use reqwest::StatusCode;
use serde_json::Value;

use super::{
    binary::run_confirmd,
    helpers::{TestApp, spawn_app},
    smtp::Behaviour,
};

/// Runs the real binary's `outbox` command against the test app's database.
fn outbox(app: &TestApp, args: &[&str]) -> Output {
    run_confirmd(
        &[&["outbox"], args].concat(),
        &[("CONFIRMD_DATABASE__URL", &app.settings.database.url)],
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn a_failed_email_is_listed_and_an_operator_can_send_it_again() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::RejectPermanent);
    let failed_id = app.signup_ok("ann@example.com", "background").await;
    app.wait_for_delivery_state(&failed_id, "failed").await;
    let sent_id = {
        app.smtp().set_behaviour(Behaviour::Accept);
        let id = app.signup_ok("bob@example.com", "sync").await;
        app.smtp().set_behaviour(Behaviour::RejectPermanent);
        id
    };
    assert_eq!(
        app.signup_details(&sent_id).await["delivery"]["state"],
        "sent"
    );

    let status = outbox(&app, &[]);
    assert!(status.status.success());
    let text = stdout(&status);
    assert!(
        text.contains("0 queued, 0 sending, 1 sent, 1 failed, 0 superseded"),
        "{text}"
    );
    assert!(
        text.contains("ann@example.com") && text.contains("550"),
        "{text}"
    );

    let report: Value = serde_json::from_slice(&outbox(&app, &["--json"]).stdout).unwrap();
    assert_eq!(report["counts"]["failed"], 1);
    assert_eq!(report["counts"]["sent"], 1);
    let failed = &report["failed"][0];
    assert_eq!(failed["recipient"], "ann@example.com");
    assert!(failed["last_error"].as_str().unwrap().contains("550"));
    let outbox_id = failed["id"].as_i64().unwrap();

    // Retrying what is not failed changes nothing and says why.
    let refused = outbox(&app, &["retry", "999999", &(outbox_id + 1).to_string()]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("999999: unknown"), "{stderr}");
    assert!(stderr.contains("not failed (state sent)"), "{stderr}");
    assert!(stdout(&refused).contains("requeued 0"));
    let unchanged: Value = serde_json::from_slice(&outbox(&app, &["--json"]).stdout).unwrap();
    assert_eq!(unchanged["counts"], report["counts"]);
    assert_eq!(
        app.signup_details(&failed_id).await["delivery"]["state"],
        "failed"
    );

    // The cause is fixed: the operator sends it again, and the running service delivers it.
    app.smtp().set_behaviour(Behaviour::Accept);
    let retried = outbox(&app, &["retry", &outbox_id.to_string()]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert!(stdout(&retried).contains("requeued 1"));

    let details = app.wait_for_delivery_state(&failed_id, "sent").await;
    assert_eq!(
        details["delivery"]["attempts"], 1,
        "a fresh set of attempts"
    );
    assert_eq!(app.mail_to("ann@example.com").len(), 1);
    let after: Value = serde_json::from_slice(&outbox(&app, &["--json"]).stdout).unwrap();
    assert_eq!(after["counts"]["failed"], 0);
    assert_eq!(after["counts"]["sent"], 2);
}

#[tokio::test]
async fn retry_all_failed_requeues_every_failed_email_of_a_pending_address() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::RejectPermanent);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.signup_ok(&format!("user{i}@example.com"), "background")
                .await,
        );
    }
    for id in &ids {
        app.wait_for_delivery_state(id, "failed").await;
    }
    app.smtp().set_behaviour(Behaviour::Accept);

    let retried = outbox(&app, &["retry", "--failed"]);

    assert!(retried.status.success());
    assert!(
        stdout(&retried).contains("requeued 3"),
        "{}",
        stdout(&retried)
    );
    for id in &ids {
        app.wait_for_delivery_state(id, "sent").await;
    }
    assert_eq!(app.smtp().received().len(), 3);
}

#[tokio::test]
async fn a_failed_email_of_an_address_confirmed_since_is_not_retried() {
    let app = spawn_app().await;
    app.smtp().set_behaviour(Behaviour::RejectPermanent);
    let id = app.signup_ok("ann@example.com", "background").await;
    app.wait_for_delivery_state(&id, "failed").await;
    let report: Value = serde_json::from_slice(&outbox(&app, &["--json"]).stdout).unwrap();
    let old_outbox_id = report["failed"][0]["id"].as_i64().unwrap().to_string();

    app.smtp().set_behaviour(Behaviour::Accept);
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    assert_eq!(app.confirm(&link).await.status(), StatusCode::OK);

    let refused = outbox(&app, &["retry", &old_outbox_id]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already confirmed"), "{stderr}");
    assert_eq!(
        app.mail_to("ann@example.com").len(),
        1,
        "only the new link was sent"
    );
}

#[tokio::test]
async fn the_operator_sees_what_each_request_sent_which_its_sender_is_not_told() {
    let app = super::helpers::spawn_app_with(|s| s.signup.resend_interval_s = 60).await;
    app.signup_ok("ann@example.com", "sync").await;
    let link = app.confirmation_link("ann@example.com").await;
    assert_eq!(app.confirm(&link).await.status(), StatusCode::OK);
    // Ann's email is two minutes old: her next request is past the resend interval.
    let db = app.db().await;
    db.execute("UPDATE email_outbox SET created_at = created_at - 120000")
        .await;
    db.close().await;
    app.signup_ok("ann@example.com", "sync").await;
    app.signup_ok("bob@example.com", "sync").await;
    app.signup_ok("bob@example.com", "sync").await;

    let report: Value = serde_json::from_slice(&outbox(&app, &["--json"]).stdout).unwrap();

    assert_eq!(
        report["kinds"],
        serde_json::json!({ "confirmation": 2, "account_notice": 1, "suppressed": 1 })
    );
    let text = stdout(&outbox(&app, &[]));
    assert!(
        text.contains("requests: 2 confirmations, 1 account notices, 1 suppressed"),
        "{text}"
    );
}

/// `confirmd migrate` beside a running service, as an operator runs it before a roll-out: the
/// schema is current, and the migrator (which locks on PostgreSQL) neither fails nor hangs.
#[tokio::test]
async fn migrate_beside_the_running_service_succeeds() {
    let app = spawn_app().await;
    let output = run_confirmd(
        &["migrate"],
        &[("CONFIRMD_DATABASE__URL", &app.settings.database.url)],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.signup_ok("ann@example.com", "sync").await;
}
