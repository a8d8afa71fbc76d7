//! `GET /`: one page for a person to sign up as a user would and watch what the API answers.
//!
//! The page is embedded in the binary (`page.html`, `page.js`): running it needs no Node and no
//! build step. It only shows what the API says: the status and `Server-Timing` of
//! `POST /signups`, then the email's state from polling `GET /signups/{id}`.
//!
//! Under `confirmd demo --serve` the same page also races the two modes and shows the demo's
//! inbox, through routes only the demo adds (`crate::demo`, the `tools` feature). The page asks
//! `GET /demo` first; here, without the demo, that is a 404 and those parts stay hidden.
//!
//! Both routes stay out of the OpenAPI document: they are for a browser, not for API clients,
//! and schemathesis (CI) tests the document's JSON API only. The script is a file of its own so
//! that the Content-Security-Policy can refuse every inline script: whatever a signup's data
//! would smuggle into the page, no script of it runs (the page also inserts data only as text).

use axum::{
    Router,
    http::{HeaderName, HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

use super::ApiContext;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");

/// Scripts and network calls to confirmd itself only; no inline script, no frames, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

pub(super) fn router() -> Router<ApiContext> {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(script))
}

fn headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

async fn page() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), PAGE_HTML)
}

async fn script() -> impl IntoResponse {
    (headers("text/javascript; charset=utf-8"), PAGE_JS)
}
