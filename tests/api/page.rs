//! `GET /`: the signup page is served from the binary, with its script, under a
//! Content-Security-Policy that runs no inline script; it stays out of the OpenAPI document, and
//! the service alone has none of the demo's routes (race, inbox).
//! What the page does in a browser is tested by `.ci/page-test.mjs` (Debian's chromium, in CI).

use reqwest::StatusCode;
use serde_json::Value;

use super::helpers::spawn_app;

#[tokio::test]
async fn the_signup_page_and_its_script_are_served_under_a_csp_without_inline_script() {
    let app = spawn_app().await;

    let page = app.get("/").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src "))
        .unwrap_or_else(|| panic!("no script-src in {csp}"));
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/page.js" defer></script>"#));
    assert!(html.contains(r#"<form id="signup""#));

    let script = app.get("/page.js").await;
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let js = script.text().await.unwrap();
    assert!(js.contains("/signups?mode="));
    // Data goes into the page as text only.
    assert!(!js.contains("innerHTML"), "the script must not insert HTML");

    // The race and the inbox are the demo's (tests/demo_serve.rs): the service alone says so,
    // and its page shows neither.
    let demo = app.get("/demo").await;
    assert_eq!(demo.status(), StatusCode::NOT_FOUND);
    assert_eq!(demo.headers()["content-type"], "application/problem+json");
    assert!(js.contains("fetch('/demo'"));
    let race = app.get("/demo/race").await;
    assert_eq!(race.status(), StatusCode::NOT_FOUND);

    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"].get("/").is_none());
    assert!(doc["paths"].get("/page.js").is_none());
}
