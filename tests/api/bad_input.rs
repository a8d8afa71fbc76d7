//! Every class of bad input gets a clear 4xx as application/problem+json, and writes nothing.

use reqwest::StatusCode;

use super::helpers::{TestApp, assert_problem, spawn_app};

async fn assert_rejected(
    app: &TestApp,
    response: reqwest::Response,
    status: StatusCode,
    detail_contains: &str,
) {
    let problem = assert_problem(response, status).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_contains),
        "{detail:?} should mention {detail_contains:?}"
    );
    assert_eq!(
        app.count("users").await,
        0,
        "a rejected request wrote a row"
    );
    assert_eq!(app.count("email_outbox").await, 0);
}

#[tokio::test]
async fn invalid_fields_are_422() {
    let app = spawn_app().await;
    let too_long_email = format!("{}@example.com", "a".repeat(250));
    let too_long_name = format!(
        r#"{{"email": "ann@example.com", "name": "{}"}}"#,
        "n".repeat(101)
    );
    let cases = [
        (r#"{"email": ""}"#.to_owned(), "empty"),
        (
            r#"{"email": "not-an-email"}"#.to_owned(),
            "not a valid address",
        ),
        (r#"{"email": "ann@"}"#.to_owned(), "not a valid address"),
        (
            r#"{"email": "ann@example.com\r\nBcc: victim@example.com"}"#.to_owned(),
            "not a valid address",
        ),
        (format!(r#"{{"email": "{too_long_email}"}}"#), "254"),
        (too_long_name, "100"),
        (
            r#"{"email": "ann@example.com", "name": "Ann\r\nBcc: victim@example.com"}"#.to_owned(),
            "control",
        ),
        (r#"{"name": "Ann"}"#.to_owned(), "email"),
        // A right-to-left override, a line separator, a zero-width space: each is refused.
        (
            r#"{"email": "ann@example.com", "name": "Ann\u202Emoc.elpmaxe"}"#.to_owned(),
            "U+202E",
        ),
        (
            r#"{"email": "ann@example.com", "name": "Ann\u2028Visit evil.example"}"#.to_owned(),
            "invisible or text-direction",
        ),
        (
            r#"{"email": "ann@example.com", "name": "Ann\u200B"}"#.to_owned(),
            "U+200B",
        ),
        (r#"{"email": 42}"#.to_owned(), "email"),
        (r#"["ann@example.com"]"#.to_owned(), ""),
    ];
    for (body, detail) in cases {
        let response = app.post_signup(&body, Some("sync")).await;
        assert_rejected(&app, response, StatusCode::UNPROCESSABLE_ENTITY, detail).await;
    }
    assert!(app.smtp().received().is_empty());
}

/// An empty `?mode=` is an unknown mode too, not a request for the default.
#[tokio::test]
async fn an_unknown_or_empty_mode_is_422() {
    let app = spawn_app().await;
    for mode in ["carrier-pigeon", ""] {
        let response = app
            .post_signup(r#"{"email": "ann@example.com"}"#, Some(mode))
            .await;
        assert_rejected(
            &app,
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown delivery mode",
        )
        .await;
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    for body in [
        r#"{"email": "ann@example.com""#,
        "",
        "nul",
        r#"{"email": "ann@example.com"} trailing"#,
    ] {
        let response = app.post_signup(body, Some("sync")).await;
        assert_rejected(&app, response, StatusCode::BAD_REQUEST, "").await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app
            .client
            .post(format!("{}/signups?mode=sync", app.address))
            .body(r#"{"email": "ann@example.com"}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_rejected(
            &app,
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_over_16_kib_is_413() {
    let app = spawn_app().await;
    let body = format!(
        r#"{{"email": "ann@example.com", "name": "{}"}}"#,
        "n".repeat(20 * 1024)
    );
    let response = app.post_signup(&body, Some("sync")).await;
    assert_rejected(&app, response, StatusCode::PAYLOAD_TOO_LARGE, "16384").await;
}

#[tokio::test]
async fn unknown_paths_ids_and_methods_answer_in_the_same_shape() {
    let app = spawn_app().await;
    assert_problem(app.get("/nowhere").await, StatusCode::NOT_FOUND).await;
    assert_problem(
        app.get("/signups/01234567-89ab-7def-8123-456789abcdef")
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        app.get("/signups/'%20OR%201=1").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // Not UTF-8 once decoded: axum's own answer was a text/plain 400.
    assert_problem(app.get("/signups/%FF").await, StatusCode::BAD_REQUEST).await;
    let delete = app
        .client
        .delete(format!("{}/signups", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(delete, StatusCode::METHOD_NOT_ALLOWED).await;
}

/// These passed validation before and could not be sent: sync mode answered 502 ("cannot build
/// the email", with no SMTP server involved) and background mode 202, then `failed`. Now they
/// are refused at the door, in both modes, and nothing is stored or sent.
#[tokio::test]
async fn addresses_that_cannot_be_sent_are_422_in_both_modes() {
    let app = spawn_app().await;
    let cases = [
        (r#""a b"@example.com"#, "quoted"),
        (r#""a\"b"@example.com"#, "quoted"),
        ("ip@[127.0.0.1]", "IP address"),
        ("ip@[IPv6:::1]", "IP address"),
        ("ip@127.0.0.1", "IP address"),
        ("ann@exa_mple.com", "domain"),
    ];
    for mode in ["sync", "background"] {
        for (email, detail) in cases {
            let response = app.signup(email, mode).await;
            assert_rejected(&app, response, StatusCode::UNPROCESSABLE_ENTITY, detail).await;
        }
    }
    assert!(app.smtp().received().is_empty());
}
