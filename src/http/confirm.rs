//! `GET /confirm?token=…`: the link in the email.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, header},
    response::{Html, IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiContext, Error, error::Problem};
use crate::{clock, domain::ConfirmationToken, mail::escape_html};

pub(super) fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(confirm))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConfirmParams {
    /// The token from the email's link: 32 bytes as 43 characters of unpadded base64url (the
    /// last one carries 4 bits, hence its shorter alphabet).
    #[param(required = true, pattern = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")]
    token: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Confirmed {
    id: String,
    email: String,
    status: &'static str,
    /// True when the link had been used before: opening it twice is not an error.
    already_confirmed: bool,
}

/// The link in the email: confirms the signup. HTML for a browser, JSON for `Accept: application/json`.
#[utoipa::path(
    get,
    path = "/confirm",
    params(ConfirmParams),
    responses(
        (status = OK, description = "confirmed now, or already", content(
            (Confirmed = "application/json"),
            (String = "text/html"),
        )),
        (status = BAD_REQUEST, description = "the token is missing or malformed", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "unknown token", body = Problem, content_type = "application/problem+json"),
        (status = GONE, description = "the link has expired", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn confirm(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    params: Result<Query<ConfirmParams>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(params) = params?;
    let token = params
        .token
        .ok_or_else(|| Error::BadRequest("The link has no token.".into()))?;
    let token = ConfirmationToken::parse(&token)?;
    let store = ctx.delivery.store();
    let owner = store
        .token_owner(&token.hash())
        .await?
        .ok_or_else(|| Error::NotFound("This link is unknown.".into()))?;

    let already_confirmed = if owner.status == "confirmed" {
        true
    } else {
        if owner.expires_at < clock::now_ms() {
            return Err(Error::Gone(
                "This link has expired; sign up again to get a new one.".into(),
            ));
        }
        // Two clicks racing on one link: one confirms, the other finds it done. Both succeed.
        !store.confirm(&owner, clock::now_ms()).await?
    };
    let body = Confirmed {
        id: owner.user_id,
        email: owner.email,
        status: "confirmed",
        already_confirmed,
    };
    if wants_json(&headers) {
        return Ok(Json(body).into_response());
    }
    let message = if already_confirmed {
        "was already confirmed"
    } else {
        "is confirmed"
    };
    Ok(Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Email confirmed</title></head>\n\
         <body style=\"font-family: sans-serif\"><h1>Thank you!</h1><p>{} {message}.</p></body></html>\n",
        escape_html(&body.email)
    ))
    .into_response())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}
