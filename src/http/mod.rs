//! The HTTP layer: axum routes that parse requests into domain values, call the delivery core,
//! and turn its results into responses. One module per resource, each exporting `router()`.
//!
//! The routes are registered through `utoipa-axum`, so the OpenAPI document served at
//! `GET /openapi.json` is built from the same handlers and annotations as the router itself and
//! cannot drift from it.
//!
//! Every response, errors included, passes through [`observe`]: it gives the request an id
//! (`x-request-id`), runs it inside a `request` span, adds `Server-Timing`, and logs one line
//! with the method, route, mode, status and latency in milliseconds. Inside it, [`limits`]
//! refuses a request without `Host`, one whose body is too slow, and one not answered in time.
//!
//! [`server`] runs the router over TCP with hyper: the header timeout, the connection cap and
//! the client's address for [`client_limit`], the per-client signup bucket.

mod client_limit;
mod confirm;
mod error;
mod health;
mod limits;
mod metrics;
pub mod server;
mod signups;

use std::{
    panic::AssertUnwindSafe,
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
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use tracing::{Instrument, field, info, info_span};
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
    router
        .route(
            "/openapi.json",
            get(move || async move { Json(api.as_ref().clone()) }),
        )
        .fallback(|| async { Error::NotFound("There is nothing at this path.".into()) })
        .method_not_allowed_fallback(|| async {
            Error::MethodNotAllowed("This path does not accept that method.".into())
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outermost last: `observe` sees every answer, the limits' refusals included.
        .layer(middleware::from_fn_with_state(
            ctx.timeouts,
            limits::read_body_within,
        ))
        .layer(middleware::from_fn_with_state(
            ctx.timeouts,
            limits::time_limit,
        ))
        .layer(middleware::from_fn(limits::require_host))
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx)
}

/// The request's id, from a well-formed incoming `x-request-id` or freshly made.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Durations a handler measured, for the `Server-Timing` header; `total` is added by [`observe`].
#[derive(Clone, Debug, Default)]
pub struct ServerTiming(pub Vec<(&'static str, Duration)>);

async fn observe(State(ctx): State<ApiContext>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_valid_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = info_span!(
        "request",
        method = %method,
        route,
        request_id,
        mode = field::Empty,
        status = field::Empty,
        latency_ms = field::Empty,
    );
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));

    // A panic in a handler is a bug, but it must still answer (500, problem+json) and be logged
    // rather than drop the connection.
    let mut response = AssertUnwindSafe(next.run(request).instrument(span.clone()))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let _guard = span.enter();
            Error::Internal(format!("handler panicked: {message}").into()).into_response()
        });

    let total = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    span.record("latency_ms", crate::telemetry::millis(total));
    span.in_scope(|| info!("request finished"));
    let mode = response
        .extensions()
        .get::<DeliveryMode>()
        .map_or("", |mode| mode.as_str());
    ctx.delivery
        .observe_request(method.as_str(), &route, mode, status, total);

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
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&header) {
        headers.insert(SERVER_TIMING, value);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    response
}

/// Incoming ids are echoed into headers and logs, so only short, plain ones are kept.
fn is_valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
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
