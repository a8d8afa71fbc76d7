//! The HTTP layer: axum routes that parse requests into domain values, call the delivery core,
//! and turn its results into responses. One module per resource, each exporting `router()`.
//!
//! The routes are registered through `utoipa-axum`, so the OpenAPI document served at
//! `GET /openapi.json` is built from the same handlers and annotations as the router itself and
//! cannot drift from it. The signup page for a browser ([`page`], `GET /`) is left out of it.
//!
//! Every response, errors included, passes through the same layers, outermost first:
//!
//! 1. the request id: a well-formed incoming `x-request-id` is kept, any other is replaced by a
//!    fresh UUIDv7 (tower-http's `SetRequestIdLayer`), and the answer carries it back
//!    (`PropagateRequestIdLayer`);
//! 2. a `request` span with the method, route, request id, mode, status and latency in
//!    milliseconds, closed by one log line per request (tower-http's `TraceLayer`). When traces
//!    are exported, it continues the caller's trace if the request carries a valid `traceparent`
//!    (an invalid one starts a new trace), and records the `trace_id` (see `crate::telemetry`);
//! 3. [`observe`], ours: `Server-Timing` and the per-mode request metrics;
//! 4. a panic in a handler answered as a problem+json 500 rather than a dropped connection
//!    (tower-http's `CatchPanicLayer`);
//! 5. [`limits`], ours: a request without `Host`, one whose body is too slow, and one not
//!    answered in time are refused as problem+json.
//!
//! [`server`] runs the router over TCP with hyper: the header timeout, the connection cap and
//! the client's address for [`client_limit`], the per-client signup bucket.

mod client_limit;
mod confirm;
mod error;
mod health;
mod limits;
mod metrics;
mod page;
pub mod server;
mod signups;

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::de::DeserializeOwned;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::{Span, field, info, info_span};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use client_limit::ClientLimit;
pub use error::Error;
pub use limits::RequestTimeouts;

use crate::{delivery::Delivery, domain::DeliveryMode};

/// The largest request body accepted: a signup is two short strings.
pub const BODY_LIMIT: usize = 16 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
/// The caller's W3C trace context: the request span joins its trace.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiContext {
    pub delivery: Delivery,
    pub default_mode: DeliveryMode,
    /// The per-client signup bucket (`signup.per_client_per_minute`).
    pub client_limit: ClientLimit,
    /// The body-read and whole-request timeouts (`server.*`).
    pub timeouts: RequestTimeouts,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "confirmd",
    description = "Sign a user up and send the confirmation email, inline (sync) or from a durable background outbox."
))]
struct ApiDoc;

/// The API's OpenAPI 3.1 document, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

fn routes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(signups::router())
        .merge(confirm::router())
        .merge(health::router())
        .merge(metrics::router())
}

pub fn router(ctx: ApiContext) -> Router {
    let (router, api) = routes().split_for_parts();
    let api = Arc::new(api);
    let router = router
        .route(
            "/openapi.json",
            get(move || async move { Json(api.as_ref().clone()) }),
        )
        // The page for a browser, outside the OpenAPI document: see [`page`].
        .merge(page::router())
        .fallback(|| async { Error::NotFound("There is nothing at this path.".into()) })
        .method_not_allowed_fallback(|| async {
            Error::MethodNotAllowed("This path does not accept that method.".into())
        });
    with_layers(router, ctx)
}

/// The layers every answer passes through: see the module docs.
fn with_layers(router: Router<ApiContext>, ctx: ApiContext) -> Router {
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Each layer wraps the ones above it, so the outermost comes last. See the module docs.
        .layer(middleware::from_fn_with_state(
            ctx.timeouts,
            limits::read_body_within,
        ))
        .layer(middleware::from_fn_with_state(
            ctx.timeouts,
            limits::time_limit,
        ))
        .layer(middleware::from_fn(limits::require_host))
        .layer(CatchPanicLayer::custom(answer_panic))
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_finished)
                // A 5xx is logged once, by `log_finished` and, with its cause, by `Error`.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
        // `SetRequestIdLayer` keeps any incoming id: drop the malformed ones before it.
        .layer(middleware::map_request(drop_malformed_request_id))
        .with_state(ctx)
}

/// Durations a handler measured, for the `Server-Timing` header; `total` is added by [`observe`].
#[derive(Clone, Debug, Default)]
pub struct ServerTiming(pub Vec<(&'static str, Duration)>);

/// The id of a request that came without a well-formed one: a UUIDv7 (time-ordered) as 32 hex
/// digits.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        HeaderValue::try_from(id).ok().map(RequestId::new)
    }
}

/// Incoming ids are echoed into headers and logs, so only short, plain ones are kept.
async fn drop_malformed_request_id(mut request: Request) -> Request {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-_.".contains(b);
    if let Some(id) = request.headers().get(&REQUEST_ID)
        && !((1..=64).contains(&id.len()) && id.as_bytes().iter().all(plain))
    {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// The request's id as text; `SetRequestIdLayer` has given every request a well-formed one.
fn request_id_str(id: &RequestId) -> &str {
    id.header_value().to_str().unwrap_or_default()
}

/// The route's pattern (`/signups`), not its path: a path would carry the token of
/// `/confirm?token=..` into the log, and make a metrics series per id.
fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
}

fn request_span<B>(request: &axum::http::Request<B>) -> Span {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or("", request_id_str);
    let span = info_span!(
        "request",
        method = %request.method(),
        route = route_of(request),
        request_id,
        mode = field::Empty,
        status = field::Empty,
        latency_ms = field::Empty,
        trace_id = field::Empty,
    );
    let traceparent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    crate::telemetry::continue_trace(&span, traceparent);
    span
}

/// The one log line per request, in its span.
fn log_finished<B>(response: &axum::http::Response<B>, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    span.record("latency_ms", crate::telemetry::millis(latency));
    info!("request finished");
}

/// A panic in a handler is a bug, but it must still answer (500, problem+json) and be logged.
fn answer_panic(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or_default();
    Error::Internal(format!("handler panicked: {message}").into()).into_response()
}

/// Ours, on every answer: the request's sample in the per-mode metrics, and `Server-Timing`.
async fn observe(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = route_of(&request).to_owned();
    let mut response = next.run(request).await;
    let total = started.elapsed();

    let mode = response
        .extensions()
        .get::<DeliveryMode>()
        .map_or("", |mode| mode.as_str());
    ctx.delivery.observe_request(
        method.as_str(),
        &route,
        mode,
        response.status().as_u16(),
        total,
    );

    let mut timing = response
        .extensions_mut()
        .remove::<ServerTiming>()
        .unwrap_or_default();
    timing.0.push(("total", total));
    let header = timing
        .0
        .iter()
        .map(|(name, d)| format!("{name};dur={:.1}", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(value) = HeaderValue::from_str(&header) {
        response.headers_mut().insert(SERVER_TIMING, value);
    }
    response
}

/// `axum::Json`, but its rejections become our problem+json errors (415, 400, 422, 413).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
        Ok(JsonBody(value))
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode};
    use tokio_util::{sync::CancellationToken, task::TaskTracker};
    use tower_service::Service;

    use super::*;
    use crate::{config::Settings, mail::Mailer, metrics::Metrics, secret::TokenKey, store::Store};

    /// A real delivery core on a temporary database; its SMTP server is never reached.
    async fn context(dir: &std::path::Path) -> (ApiContext, CancellationToken) {
        let mut settings = Settings::defaults();
        settings.database.url = format!("sqlite://{}?mode=rwc", dir.join("db").display());
        let store = Store::open(&settings.database).await.unwrap();
        store.migrate().await.unwrap();
        let mailer = Mailer::new(&settings.smtp, settings.mail_from()).unwrap();
        let shutdown = CancellationToken::new();
        let delivery = Delivery::start(
            &settings,
            store,
            mailer,
            TokenKey::new(&"k".repeat(32)),
            Arc::new(Metrics::new()),
            shutdown.clone(),
            TaskTracker::new(),
        );
        let ctx = ApiContext {
            delivery,
            default_mode: DeliveryMode::Sync,
            client_limit: ClientLimit::new(0, None),
            timeouts: RequestTimeouts {
                body_read: Duration::from_secs(10),
                request: Duration::from_secs(10),
            },
        };
        (ctx, shutdown)
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_problem_json_and_still_observed() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, shutdown) = context(dir.path()).await;
        async fn panics() -> &'static str {
            panic!("boom")
        }
        let panics = Router::new().route("/panic", get(panics));
        let mut app = with_layers(panics, ctx);

        let request = Request::get("/panic")
            .header("host", "localhost")
            .header("x-request-id", "trace-1")
            .body(Body::empty())
            .unwrap();
        let response = app.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.headers()["x-request-id"], "trace-1");
        assert!(
            response.headers()["server-timing"]
                .to_str()
                .unwrap()
                .starts_with("total;dur="),
            "{:?}",
            response.headers()
        );
        shutdown.cancel();
    }
}
