//! `GET /confirm?token=…`: the link in the email.

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

use super::{ApiContext, Error};
use crate::{clock, domain::ConfirmationToken, mail::escape_html};

pub(super) fn router() -> Router<ApiContext> {
    Router::new().route("/confirm", get(confirm))
}

#[derive(Deserialize)]
struct ConfirmParams {
    token: Option<String>,
}

#[derive(Serialize)]
struct Confirmed {
    id: String,
    email: String,
    status: &'static str,
    /// True when the link had been used before: opening it twice is not an error.
    already_confirmed: bool,
}

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
    let owner = store.token_owner(&token.hash()).await?.ok_or_else(|| {
        Error::NotFound("This link is unknown, or a newer one has replaced it.".into())
    })?;

    let already_confirmed = if owner.status == "confirmed" {
        true
    } else {
        if owner.expires_at < clock::now_ms() {
            return Err(Error::Gone(
                "This link has expired; sign up again to get a new one.".into(),
            ));
        }
        // Two clicks racing on one link: one confirms, the other finds it done. Both succeed.
        !store.confirm(&owner.user_id, clock::now_ms()).await?
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
