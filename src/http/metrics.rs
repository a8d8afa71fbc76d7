//! `GET /metrics`: Prometheus text exposition (see `crate::metrics` for what is measured).

use axum::{
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiContext, Error, error::Problem};
use crate::metrics::CONTENT_TYPE;

pub(super) fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Request latencies by route and mode, emails sent/retried/failed, SMTP send and queue-wait
/// times, and outbox rows by state, in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = OK, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn metrics(State(ctx): State<ApiContext>) -> Result<Response, Error> {
    let body = ctx.delivery.metrics_text().await?;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
