//! `GET /metrics` counts what the service did, per mode and outcome.

use reqwest::StatusCode;

use super::{helpers::spawn_app, smtp::Behaviour};

/// The value of the sample whose line starts with `series` (name and labels as exposed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_requests_by_mode_emails_by_outcome_and_the_outbox_by_state() {
    let app = spawn_app().await;
    for i in 0..2 {
        app.signup_ok(&format!("sync{i}@example.com"), "sync").await;
    }
    let mut background = Vec::new();
    for i in 0..3 {
        background.push(
            app.signup_ok(&format!("bg{i}@example.com"), "background")
                .await,
        );
    }
    for id in &background {
        app.wait_for_delivery_state(id, "sent").await;
    }
    app.smtp().set_behaviour(Behaviour::RejectPermanent);
    let failed = app.signup_ok("gone@example.com", "background").await;
    app.wait_for_delivery_state(&failed, "failed").await;

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();

    let requests = |mode: &str, status: u16| {
        format!(
            r#"confirmd_http_request_duration_seconds_count{{method="POST",mode="{mode}",route="/signups",status="{status}"}}"#
        )
    };
    assert_eq!(sample(&text, &requests("sync", 201)), 2.0);
    assert_eq!(sample(&text, &requests("background", 202)), 4.0);
    assert_eq!(
        sample(&text, r#"confirmd_emails_total{outcome="sent"}"#),
        5.0
    );
    assert_eq!(
        sample(&text, r#"confirmd_emails_total{outcome="failed"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"confirmd_emails_total{outcome="retried"}"#),
        0.0
    );
    assert_eq!(
        sample(&text, "confirmd_smtp_send_duration_seconds_count"),
        6.0
    );
    assert_eq!(sample(&text, "confirmd_queue_wait_seconds_count"), 4.0);
    // The outbox gauges count what stays small; sends are counted by the counters above.
    assert!(!text.contains(r#"confirmd_outbox_emails{state="sent"}"#));
    assert_eq!(
        sample(&text, r#"confirmd_outbox_emails{state="failed"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"confirmd_outbox_emails{state="queued"}"#),
        0.0
    );
    assert_eq!(
        sample(&text, r#"confirmd_outbox_emails{state="sending"}"#),
        0.0
    );
    // Nothing is old enough to prune yet.
    assert_eq!(
        sample(&text, r#"confirmd_pruned_rows_total{what="sent_emails"}"#),
        0.0
    );
}
