//! `POST /signups` and `GET /signups/{id}`.
//!
//! Both say nothing about anyone else. `POST /signups` answers a new, a pending and a confirmed
//! address with the same status, the same body and about the same delay (see
//! [`crate::delivery`]): what the address receives differs, the answer does not. Its id names the
//! signup *request*, a time-ordered random UUID, never the user; `GET /signups/{id}` then shows only what that
//! request's sender knows already: its own email's mode, state and times. No name, no account
//! status, no SMTP error text: operators read those with `confirmd outbox` and in the logs.

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tracing::Span;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiContext, Error, JsonBody, RequestId, ServerTiming, client_limit::WithinClientLimit,
    error::Problem, request_id_str,
};
use crate::{
    clock,
    delivery::SignupReceipt,
    domain::{DeliveryMode, SubscriberEmail, SubscriberName},
    store::OutboxState,
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
    /// Trimmed; the domain is IDNA-normalised and mailed in its ASCII (punycode) form. Quoted
    /// local parts and IP-address domains cannot be sent and are refused. One user per
    /// mailbox: compared regardless of case (Unicode too) and of the domain's spelling.
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    email: String,
    /// Optional display name, kept for the application: no email shows it, and it becomes the
    /// account's name only when the link sent for this signup is confirmed. No control
    /// characters, and none of the invisible ones that change how text reads (bidi controls,
    /// line and paragraph separators, zero-width characters).
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200B-\\u200F\\u2028-\\u202E\\u2060\\u2066-\\u2069\\uFEFF]*$",
        example = "Ada Lovelace"
    )]
    name: Option<String>,
}

/// The same for every address: new, pending or already confirmed.
#[derive(Serialize, ToSchema)]
struct SignupResponse {
    /// This signup request's id (a time-ordered random UUID), for `GET /signups/{id}`. Not the user's.
    #[schema(example = "5b0d3f52-8f0c-4b6e-9d51-2a7c0c1e9f3a")]
    id: String,
    /// The address as parsed.
    email: String,
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

/// Sign up, and send the email inline (`sync`) or from the outbox (`background`).
///
/// The answer is the same whether the address is new, pending or confirmed: a new or pending
/// address is sent a confirmation link, a confirmed one a short "you already have an account"
/// notice, and an address that was sent an email less than `signup.resend_interval_s` ago is
/// sent nothing, without telling the requester.
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
        (status = PAYLOAD_TOO_LARGE, description = "the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = UNSUPPORTED_MEDIA_TYPE, description = "the body is not sent as application/json", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "invalid email, name or mode; or (sync) the mail server refused the address",
         body = Problem, content_type = "application/problem+json"),
        (status = REQUEST_TIMEOUT, description = "the body did not arrive within `server.body_read_timeout_ms`", body = Problem, content_type = "application/problem+json"),
        (status = TOO_MANY_REQUESTS, description = "this client sent more than `signup.per_client_per_minute` signups in the last minute (never about the address)",
         body = Problem, content_type = "application/problem+json", headers(("retry-after" = u64, description = "seconds"))),
        (status = BAD_GATEWAY, description = "sync: SMTP failed; the signup is stored and its email queued", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable, `worker.max_backlog` emails already wait to be sent, (sync) every SMTP connection stayed busy for `smtp.acquire_timeout_ms`, or the request took longer than `server.request_timeout_ms`",
         body = Problem, content_type = "application/problem+json", headers(("retry-after" = u64, description = "seconds"))),
        (status = GATEWAY_TIMEOUT, description = "sync: SMTP timed out; the signup is stored and its email queued", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create(
    State(ctx): State<ApiContext>,
    _: WithinClientLimit,
    Extension(request_id): Extension<RequestId>,
    params: Result<Query<SignupParams>, QueryRejection>,
    JsonBody(body): JsonBody<SignupRequest>,
) -> Result<Response, Error> {
    let Query(params) = params?;
    let mode = match params.mode.as_deref() {
        None => ctx.default_mode,
        Some(mode) => mode.parse::<DeliveryMode>()?,
    };
    Span::current().record("mode", mode.as_str());
    let mut response = match sign_up(&ctx, body, mode, request_id_str(&request_id)).await {
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
    let location = format!("/signups/{}", receipt.signup_id);
    let body = SignupResponse {
        id: receipt.signup_id,
        email: receipt.email,
        delivery: DeliverySummary {
            mode: receipt.mode.as_str(),
            state: receipt.state.as_str(),
        },
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.extensions_mut().insert(ServerTiming(timing));
    response
}

/// A signup request as its sender may see it: its own email, nothing about the account.
#[derive(Serialize, ToSchema)]
struct SignupDetails {
    id: String,
    /// RFC 3339: when the request was made.
    created_at: String,
    delivery: DeliveryDetails,
}

/// The request's email.
#[derive(Serialize, ToSchema)]
struct DeliveryDetails {
    /// `sync` or `background`.
    mode: &'static str,
    /// `queued`, `sending`, `sent` or `failed`.
    state: &'static str,
    attempts: i64,
    /// When the next attempt is due, while the email waits in the queue: the retry schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    sent_at: Option<String>,
}

/// A signup request, with the state of its email.
#[utoipa::path(
    get,
    path = "/signups/{id}",
    params(("id" = String, Path, description = "The id returned by POST /signups")),
    responses(
        (status = OK, body = SignupDetails),
        (status = BAD_REQUEST, description = "the id is not valid UTF-8 once percent-decoded", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "no signup request has this id", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(ctx): State<ApiContext>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SignupDetails>, Error> {
    let Path(id) = id?;
    let view = ctx
        .delivery
        .show(&id)
        .await?
        .ok_or_else(|| Error::NotFound("There is no signup with this id.".into()))?;
    // Only a queued email has a next attempt: the others are being sent, or done.
    let next_attempt_at = match view.state {
        OutboxState::Queued => Some(clock::rfc3339(view.next_attempt_at)),
        OutboxState::Sending
        | OutboxState::Sent
        | OutboxState::Failed
        | OutboxState::Superseded => None,
    };
    Ok(Json(SignupDetails {
        id: view.id,
        created_at: clock::rfc3339(view.created_at),
        delivery: DeliveryDetails {
            mode: view.mode.as_str(),
            state: view.state.as_str(),
            attempts: view.attempts,
            next_attempt_at,
            sent_at: view.sent_at.map(clock::rfc3339),
        },
    }))
}
