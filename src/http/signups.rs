//! `POST /signups` and `GET /signups/{id}`.

use axum::{
    Extension, Json, Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tracing::Span;

use super::{ApiContext, Error, JsonBody, RequestId, ServerTiming};
use crate::{
    clock,
    delivery::SignupReceipt,
    domain::{DeliveryMode, SubscriberEmail, SubscriberName},
};

pub(super) fn router() -> Router<ApiContext> {
    Router::new()
        .route("/signups", post(create))
        .route("/signups/{id}", get(show))
}

#[derive(Deserialize)]
struct SignupParams {
    mode: Option<String>,
}

#[derive(Deserialize)]
struct SignupRequest {
    email: String,
    name: Option<String>,
}

#[derive(Serialize)]
struct SignupResponse {
    id: String,
    email: String,
    status: &'static str,
    delivery: DeliverySummary,
}

#[derive(Serialize)]
struct DeliverySummary {
    mode: &'static str,
    state: &'static str,
}

async fn create(
    State(ctx): State<ApiContext>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    params: Result<Query<SignupParams>, QueryRejection>,
    JsonBody(body): JsonBody<SignupRequest>,
) -> Result<Response, Error> {
    let Query(params) = params?;
    let mode = match params.mode.as_deref() {
        None | Some("") => ctx.default_mode,
        Some(mode) => mode.parse::<DeliveryMode>()?,
    };
    Span::current().record("mode", mode.as_str());
    let email = SubscriberEmail::parse(&body.email)?;
    let name = body
        .name
        .as_deref()
        .map(SubscriberName::parse)
        .transpose()?
        .flatten();

    let receipt = ctx
        .delivery
        .signup(&email, name.as_ref(), mode, Some(&request_id))
        .await?;
    Ok(created(receipt))
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

#[derive(Serialize)]
struct SignupDetails {
    id: String,
    email: String,
    name: Option<String>,
    status: String,
    created_at: String,
    confirmed_at: Option<String>,
    delivery: DeliveryDetails,
}

#[derive(Serialize)]
struct DeliveryDetails {
    mode: String,
    state: String,
    attempts: i64,
    /// When the next attempt is due, while the email waits in the queue: the retry schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    last_error: Option<String>,
    sent_at: Option<String>,
}

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
