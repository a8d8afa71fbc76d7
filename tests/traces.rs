//! What the real binary exports as OpenTelemetry traces, received by an OTLP/HTTP collector in
//! the test: one trace per signup, from the request through the outbox to the SMTP send, a
//! caller's trace continued, log lines that name their trace, no token anywhere, and a collector
//! that is down costing no signup.

mod support;
use support::{links, otlp, process, smtp};

use std::time::Duration;

use otlp::{ExportedSpan, OtlpReceiver};
use process::{ServiceHome, ServiceProcess, free_port};
use reqwest::StatusCode;
use smtp::{Behaviour, SmtpServer};

/// Long enough for a batch to be exported on a slow CI machine; the wait ends when it arrives.
const PATIENCE: Duration = Duration::from_secs(20);

/// A service exporting to `endpoint` and sending to `smtp`, in JSON logs so a test can read
/// them. Batches leave every 50 ms instead of every 5 s, so the tests wait less.
async fn service(
    endpoint: &str,
    smtp: &SmtpServer,
    extra: &[(&str, &str)],
) -> (ServiceHome, ServiceProcess) {
    let mut env = vec![
        ("CONFIRMD_SMTP__PORT".to_owned(), smtp.port().to_string()),
        (
            "CONFIRMD_TELEMETRY__OTLP_ENDPOINT".to_owned(),
            endpoint.to_owned(),
        ),
        ("CONFIRMD_TELEMETRY__FORMAT".to_owned(), "json".to_owned()),
        (
            "CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE".to_owned(),
            "0".to_owned(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "50".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut home = ServiceHome::new(env);
    let service = home.start().await;
    (home, service)
}

async fn signup(
    service: &ServiceProcess,
    email: &str,
    mode: &str,
    traceparent: Option<&str>,
) -> StatusCode {
    let mut request = reqwest::Client::new()
        .post(format!("{}/signups?mode={mode}", service.address))
        .json(&serde_json::json!({ "email": email }));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.send().await.unwrap().status()
}

/// The `request` span of the signup (there is one signup per test, or one per mode).
fn signup_request<'a>(spans: &'a [ExportedSpan], mode: &str) -> Option<&'a ExportedSpan> {
    spans.iter().find(|s| {
        s.name() == "request"
            && s.attribute("route").as_deref() == Some("/signups")
            && s.attribute("mode").as_deref() == Some(mode)
    })
}

fn children<'a>(
    spans: &'a [ExportedSpan],
    parent: &ExportedSpan,
    name: &str,
) -> Vec<&'a ExportedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.name() == name
                && s.trace_id() == parent.trace_id()
                && s.parent_span_id() == parent.span_id()
        })
        .collect()
}

/// Neither the token the email carried nor its link is in anything the collector received.
fn assert_no_token_in(receiver: &OtlpReceiver, mail: &smtp::ReceivedMail) {
    let link = links::confirmation_link_in(&mail.text_body())
        .expect("the email has a link")
        .to_owned();
    let token = links::token_of(&link);
    let raw = String::from_utf8_lossy(&receiver.raw()).into_owned();
    let decoded = format!("{:?}", receiver.spans());
    for text in [&raw, &decoded] {
        assert!(!text.contains(token), "the token was exported");
        assert!(!text.contains(&link), "the link was exported");
        assert!(!text.contains("token="), "a link's query was exported");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_signup_is_one_trace_from_request_to_smtp_send() {
    let receiver = OtlpReceiver::start().await;
    let smtp = SmtpServer::start().await;
    let (_home, service) = service(&receiver.endpoint(), &smtp, &[]).await;

    assert_eq!(
        signup(&service, "ann@example.com", "background", None).await,
        StatusCode::ACCEPTED
    );
    let mail = smtp.wait_for_mail(1, PATIENCE).await;
    let spans = receiver
        .wait_until(PATIENCE, |spans| {
            spans.iter().any(|s| s.name() == "delivery")
                && signup_request(spans, "background").is_some()
        })
        .await;

    let request = signup_request(&spans, "background").unwrap();
    assert_eq!(request.service_name.as_deref(), Some("confirmd"));
    assert_eq!(request.attribute("status").as_deref(), Some("202"));
    assert_eq!(children(&spans, request, "db.transaction").len(), 1);
    // The delivery runs in a worker, after the answer, yet is the request's child.
    let delivery = children(&spans, request, "delivery");
    assert_eq!(delivery.len(), 1, "{spans:#?}");
    let delivery = delivery[0];
    assert_eq!(delivery.attribute("outcome").as_deref(), Some("sent"));
    assert_eq!(delivery.attribute("attempt").as_deref(), Some("1"));
    let queue_wait: f64 = delivery
        .attribute("queue_wait_ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(queue_wait >= 0.0);
    assert_eq!(children(&spans, delivery, "smtp.send").len(), 1);

    // The log line that closed the request names its trace.
    let log = service.log();
    let finished = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["fields"]["message"] == "request finished" && line["span"]["route"] == "/signups"
        })
        .expect("a log line for the signup");
    assert_eq!(
        finished["span"]["trace_id"],
        request.trace_id(),
        "{finished}"
    );

    assert_no_token_in(&receiver, &mail[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_signup_sends_under_its_request_span() {
    let receiver = OtlpReceiver::start().await;
    let smtp = SmtpServer::start().await;
    let (_home, service) = service(&receiver.endpoint(), &smtp, &[]).await;

    assert_eq!(
        signup(&service, "bob@example.com", "sync", None).await,
        StatusCode::CREATED
    );
    let spans = receiver
        .wait_until(PATIENCE, |spans| {
            spans.iter().any(|s| s.name() == "smtp.send") && signup_request(spans, "sync").is_some()
        })
        .await;
    let request = signup_request(&spans, "sync").unwrap();
    assert_eq!(request.attribute("status").as_deref(), Some("201"));
    let delivery = children(&spans, request, "delivery");
    assert_eq!(delivery.len(), 1, "{spans:#?}");
    assert_eq!(delivery[0].attribute("outcome").as_deref(), Some("sent"));
    let send = spans.iter().find(|s| s.name() == "smtp.send").unwrap();
    assert!(send.descends_from(request, &spans), "{spans:#?}");
    assert_no_token_in(&receiver, &smtp.received()[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_attempt_and_its_successful_retry_are_in_the_signups_trace() {
    let receiver = OtlpReceiver::start().await;
    let smtp = SmtpServer::start().await;
    smtp.set_behaviour(Behaviour::RejectTransient);
    let (_home, service) = service(
        &receiver.endpoint(),
        &smtp,
        &[
            ("CONFIRMD_WORKER__RETRY_BASE_MS", "20"),
            ("CONFIRMD_WORKER__SWEEP_INTERVAL_MS", "20"),
        ],
    )
    .await;

    assert_eq!(
        signup(&service, "cat@example.com", "background", None).await,
        StatusCode::ACCEPTED
    );
    let retried = |spans: &[ExportedSpan]| {
        spans
            .iter()
            .any(|s| s.name() == "delivery" && s.attribute("outcome").as_deref() == Some("retry"))
    };
    receiver.wait_until(PATIENCE, retried).await;
    smtp.set_behaviour(Behaviour::Accept);
    let mail = smtp.wait_for_mail(1, PATIENCE).await;
    let spans = receiver
        .wait_until(PATIENCE, |spans| {
            spans.iter().any(|s| {
                s.name() == "delivery" && s.attribute("outcome").as_deref() == Some("sent")
            })
        })
        .await;

    let request = signup_request(&spans, "background").unwrap();
    let attempts = children(&spans, request, "delivery");
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|d| {
            (
                d.attribute("attempt").unwrap(),
                d.attribute("outcome").unwrap(),
            )
        })
        .collect();
    assert!(outcomes.len() >= 2, "{outcomes:?}");
    assert_eq!(
        outcomes[0],
        ("1".to_owned(), "retry".to_owned()),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|(_, outcome)| outcome == "sent")
            .count(),
        1,
        "{outcomes:?}"
    );
    // Every attempt, failed or not, has its SMTP send inside it.
    for attempt in &attempts {
        assert_eq!(children(&spans, attempt, "smtp.send").len(), 1);
    }
    assert_no_token_in(&receiver, &mail[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_traceparent_is_continued_and_an_invalid_one_ignored() {
    let receiver = OtlpReceiver::start().await;
    let smtp = SmtpServer::start().await;
    let (_home, service) = service(&receiver.endpoint(), &smtp, &[]).await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    assert_eq!(
        signup(
            &service,
            "dan@example.com",
            "background",
            Some(&traceparent)
        )
        .await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        signup(
            &service,
            "eve@example.com",
            "sync",
            Some("00-not-a-trace-01")
        )
        .await,
        StatusCode::CREATED
    );
    let spans = receiver
        .wait_until(PATIENCE, |spans| {
            signup_request(spans, "background").is_some() && signup_request(spans, "sync").is_some()
        })
        .await;

    let continued = signup_request(&spans, "background").unwrap();
    assert_eq!(continued.trace_id(), caller_trace);
    assert_eq!(continued.parent_span_id(), caller_span);
    let fresh = signup_request(&spans, "sync").unwrap();
    assert_ne!(fresh.trace_id(), caller_trace);
    assert_eq!(
        fresh.parent_span_id(),
        "",
        "an invalid traceparent starts a new trace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_no_signup() {
    let smtp = SmtpServer::start().await;
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (_home, service) = service(&nobody, &smtp, &[]).await;

    for i in 0..10 {
        for (mode, answered) in [
            ("background", StatusCode::ACCEPTED),
            ("sync", StatusCode::CREATED),
        ] {
            let email = format!("{mode}-{i}@example.com");
            assert_eq!(signup(&service, &email, mode, None).await, answered);
        }
    }
    smtp.wait_for_mail(20, PATIENCE).await;
    let metrics = reqwest::get(format!("{}/metrics", service.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("confirmd_trace_spans_dropped_total"),
        "{metrics}"
    );
}
