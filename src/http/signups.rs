//! `POST /signups` and `GET /signups/{id}`.

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tracing::Span;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiContext, Error, JsonBody, RequestId, ServerTiming, client_limit::WithinClientLimit,
    error::Problem,
};
use crate::{
    clock,
    delivery::SignupReceipt,
    domain::{DeliveryMode, SubscriberEmail, SubscriberName},
};

pub(super) fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(show))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SignupParams {
    /// How to send the confirmation email; `async` is another name for `background`.
    /// Defaults to `delivery.default_mode`.
    #[param(value_type = Option<ModeParam>, inline)]
    mode: Option<String>,
}

/// The values `mode` accepts (parsed by hand, so that an unknown one is a clear 422).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum ModeParam {
    Sync,
    Background,
    Async,
}

#[derive(Deserialize, ToSchema)]
struct SignupRequest {
    /// Trimmed; the domain is lower-cased. Unique regardless of case.
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    email: String,
    /// Optional display name, used in the greeting; no control characters.
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
        example = "Ada Lovelace"
    )]
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct SignupResponse {
    id: String,
    email: String,
    /// Always `pending` here: the user confirms through the link in the email.
    #[schema(example = "pending")]
    status: &'static str,
    delivery: DeliverySummary,
}

#[derive(Serialize, ToSchema)]
struct DeliverySummary {
    /// `sync` or `background`.
    #[schema(example = "background")]
    mode: &'static str,
    /// `sent` (sync) or `queued` (background) as the request leaves it.
    #[schema(example = "queued")]
    state: &'static str,
}

/// Sign up, and send the confirmation email inline (`sync`) or from the outbox (`background`).
#[utoipa::path(
    post,
    path = "/signups",
    params(SignupParams),
    request_body(content = SignupRequest, content_type = "application/json"),
    responses(
        (status = CREATED, description = "sync: the SMTP server accepted the email", body = SignupResponse,
         headers(("location" = String, description = "/signups/{id}"))),
        (status = ACCEPTED, description = "background: the signup and its email are committed", body = SignupResponse,
         headers(("location" = String, description = "/signups/{id}"))),
        (status = BAD_REQUEST, description = "malformed JSON or query string", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "the address is already confirmed", body = Problem, content_type = "application/problem+json"),
        (status = PAYLOAD_TOO_LARGE, description = "the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = UNSUPPORTED_MEDIA_TYPE, description = "the body is not sent as application/json", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "invalid email, name or mode; or (sync) the mail server refused the address",
         body = Problem, content_type = "application/problem+json"),
        (status = REQUEST_TIMEOUT, description = "the body did not arrive within `server.body_read_timeout_ms`", body = Problem, content_type = "application/problem+json"),
        (status = TOO_MANY_REQUESTS, description = "this client sent more than `signup.per_client_per_minute` signups in the last minute, or this pending address was sent an email less than `signup.resend_interval_s` ago",
         body = Problem, content_type = "application/problem+json", headers(("retry-after" = u64, description = "seconds"))),
        (status = BAD_GATEWAY, description = "sync: SMTP failed; the signup is stored and its email queued", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable, (background) `worker.max_backlog` emails already wait, or the request took longer than `server.request_timeout_ms`",
         body = Problem, content_type = "application/problem+json", headers(("retry-after" = u64, description = "seconds"))),
        (status = GATEWAY_TIMEOUT, description = "sync: SMTP timed out; the signup is stored and its email queued", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create(
    State(ctx): State<ApiContext>,
    _: WithinClientLimit,
    Extension(RequestId(request_id)): Extension<RequestId>,
    params: Result<Query<SignupParams>, QueryRejection>,
    JsonBody(body): JsonBody<SignupRequest>,
) -> Result<Response, Error> {
    let Query(params) = params?;
    let mode = match params.mode.as_deref() {
        None => ctx.default_mode,
        Some(mode) => mode.parse::<DeliveryMode>()?,
    };
    Span::current().record("mode", mode.as_str());
    let mut response = match sign_up(&ctx, body, mode, &request_id).await {
        Ok(receipt) => created(receipt),
        Err(error) => error.into_response(),
    };
    // For the request metrics, which count each mode apart, errors included.
    response.extensions_mut().insert(mode);
    Ok(response)
}

async fn sign_up(
    ctx: &ApiContext,
    body: SignupRequest,
    mode: DeliveryMode,
    request_id: &str,
) -> Result<SignupReceipt, Error> {
    let email = SubscriberEmail::parse(&body.email)?;
    let name = body
        .name
        .as_deref()
        .map(SubscriberName::parse)
        .transpose()?
        .flatten();
    Ok(ctx
        .delivery
        .signup(&email, name.as_ref(), mode, Some(request_id))
        .await?)
}

fn created(receipt: SignupReceipt) -> Response {
    let status = match receipt.mode {
        DeliveryMode::Sync => StatusCode::CREATED,
        DeliveryMode::Background => StatusCode::ACCEPTED,
    };
    let mut timing = vec![("db", receipt.db_time)];
    timing.extend(receipt.smtp_time.map(|t| ("smtp", t)));
    let location = format!("/signups/{}", receipt.user_id);
    let body = SignupResponse {
        id: receipt.user_id,
        email: receipt.email,
        status: "pending",
        delivery: DeliverySummary {
            mode: receipt.mode.as_str(),
            state: receipt.state,
        },
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.extensions_mut().insert(ServerTiming(timing));
    response
}

#[derive(Serialize, ToSchema)]
struct SignupDetails {
    id: String,
    email: String,
    name: Option<String>,
    /// `pending` or `confirmed`.
    #[schema(example = "pending")]
    status: String,
    /// RFC 3339.
    created_at: String,
    confirmed_at: Option<String>,
    delivery: DeliveryDetails,
}

/// The signup's latest email.
#[derive(Serialize, ToSchema)]
struct DeliveryDetails {
    /// `sync` or `background`.
    mode: String,
    /// `queued`, `sending`, `sent`, `failed` or `superseded`.
    state: String,
    attempts: i64,
    /// When the next attempt is due, while the email waits in the queue: the retry schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    last_error: Option<String>,
    sent_at: Option<String>,
}

/// A signup, with the state of its latest confirmation email.
#[utoipa::path(
    get,
    path = "/signups/{id}",
    params(("id" = String, Path, description = "The id returned by POST /signups")),
    responses(
        (status = OK, body = SignupDetails),
        (status = NOT_FOUND, description = "no signup has this id", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(ctx): State<ApiContext>,
    Path(id): Path<String>,
) -> Result<Json<SignupDetails>, Error> {
    let view = ctx
        .delivery
        .store()
        .signup(&id)
        .await?
        .ok_or_else(|| Error::NotFound("There is no signup with this id.".into()))?;
    let next_attempt_at = (view.state == "queued").then(|| clock::rfc3339(view.next_attempt_at));
    Ok(Json(SignupDetails {
        id: view.id,
        email: view.email,
        name: view.name,
        status: view.status,
        created_at: clock::rfc3339(view.created_at),
        confirmed_at: view.confirmed_at.map(clock::rfc3339),
        delivery: DeliveryDetails {
            mode: view.mode,
            state: view.state,
            attempts: view.attempts,
            next_attempt_at,
            last_error: view.last_error,
            sent_at: view.sent_at.map(clock::rfc3339),
        },
    }))
}
