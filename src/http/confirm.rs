//! `/confirm`: the link in the email, and the button that confirms.
//!
//! Mail security scanners (Outlook Safe Links and its kin) open every link in an email before the
//! reader does. If opening the link confirmed the address, a scanner would confirm addresses
//! that nobody read. So the link only *looks*: `GET /confirm?token=…` (and `HEAD`, which axum
//! answers from the same route without a body) shows a page with one button, and changes
//! nothing. The button POSTs the token back, and only `POST /confirm` confirms. Scanners follow
//! links; they do not submit forms.
//!
//! Both routes answer HTML for a browser and JSON to a client that asks for it
//! (`Accept: application/json`, or a JSON body without `Accept: text/html`). Neither shows whose
//! link it is: a used link says "already confirmed", without the address or the user's id, so a
//! link found in a forwarded email or a log tells its finder nothing.

use axum::{
    Json,
    extract::{Form, FromRequest, Query, Request, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use minijinja::context;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiContext, Error, JsonBody, error::Problem};
use crate::{delivery::LinkState, domain::ConfirmationToken, templates};

pub(super) fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(open_link, confirm))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConfirmParams {
    /// The token from the email's link: 32 bytes as 43 characters of unpadded base64url (the
    /// last one carries 4 bits, hence its shorter alphabet).
    #[param(required = true, pattern = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")]
    token: Option<String>,
}

/// The token from the link, POSTed back by the page's button (as a form) or by an API client
/// (as JSON).
#[derive(Deserialize, ToSchema)]
struct ConfirmRequest {
    /// The token from the email's link: 32 bytes as 43 characters of unpadded base64url.
    #[schema(value_type = String, required = true, pattern = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")]
    token: Option<String>,
}

/// Where a link stands. It names neither the address nor the user.
#[derive(Serialize, ToSchema)]
struct LinkStatus {
    /// `pending`: the link is valid and waits for `POST /confirm`; `confirmed`: the address is
    /// confirmed (by this request or an earlier one).
    #[schema(value_type = String, required = true, pattern = "^(pending|confirmed)$", example = "confirmed")]
    status: &'static str,
    /// True when the address had been confirmed before this request: using a link twice is not
    /// an error.
    already_confirmed: bool,
}

/// What a valid token's link leads to, or why it leads nowhere.
enum Outcome {
    /// GET on a valid, unused link: the page with the button.
    Ask(ConfirmationToken),
    /// Confirmed: by this request (`already` false) or before it.
    Confirmed {
        already: bool,
    },
    Expired,
    Unknown,
    /// No token, or not one of ours in shape.
    Malformed(String),
}

/// The link in the email: shows a page with a button that confirms; confirms nothing itself.
#[utoipa::path(
    get,
    path = "/confirm",
    params(ConfirmParams),
    responses(
        (status = OK, description = "the link is valid: the page with the button that POSTs the token (HTML), or its state (JSON); nothing is confirmed", content(
            (LinkStatus = "application/json"),
            (String = "text/html"),
        ), headers(("cache-control" = String, description = "no-store"))),
        (status = BAD_REQUEST, description = "the token is missing or malformed", content(
            (Problem = "application/problem+json"),
            (String = "text/html"),
        )),
        (status = NOT_FOUND, description = "unknown token", content(
            (Problem = "application/problem+json"),
            (String = "text/html"),
        )),
        (status = GONE, description = "the link has expired; signing up again sends a new one", content(
            (Problem = "application/problem+json"),
            (String = "text/html"),
        )),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn open_link(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    params: Result<Query<ConfirmParams>, QueryRejection>,
) -> Result<Response, Error> {
    let json = wants_json(&headers, false);
    let token = match params {
        Ok(Query(params)) => params.token,
        Err(rejection) => return Ok(respond(Outcome::Malformed(rejection.body_text()), json)),
    };
    let outcome = match parse(token) {
        Ok(token) => look_up(&ctx, token, false).await?,
        Err(malformed) => malformed,
    };
    Ok(respond(outcome, json))
}

/// Confirms the address a link was sent to: what the page's button does.
#[utoipa::path(
    post,
    path = "/confirm",
    request_body(content(
        (ConfirmRequest = "application/x-www-form-urlencoded"),
        (ConfirmRequest = "application/json"),
    )),
    responses(
        (status = OK, description = "confirmed now, or already", content(
            (LinkStatus = "application/json"),
            (String = "text/html"),
        ), headers(("cache-control" = String, description = "no-store"))),
        (status = BAD_REQUEST, description = "the token is missing or malformed, or the body does not parse", content(
            (Problem = "application/problem+json"),
            (String = "text/html"),
        )),
        (status = NOT_FOUND, description = "unknown token", content(
            (Problem = "application/problem+json"),
            (String = "text/html"),
        )),
        (status = GONE, description = "the link has expired; signing up again sends a new one", content(
            (Problem = "application/problem+json"),
            (String = "text/html"),
        )),
        (status = PAYLOAD_TOO_LARGE, description = "the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = UNSUPPORTED_MEDIA_TYPE, description = "the body is neither a form nor JSON", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "the JSON body does not have the expected shape", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "the database is unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn confirm(State(ctx): State<ApiContext>, request: Request) -> Result<Response, Error> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let sent_json = content_type.starts_with("application/json");
    let json = wants_json(request.headers(), sent_json);
    let token = if sent_json {
        let JsonBody(body) = JsonBody::<ConfirmRequest>::from_request(request, &()).await?;
        body.token
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        match Form::<ConfirmRequest>::from_request(request, &()).await {
            Ok(Form(body)) => body.token,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Error::PayloadTooLarge(format!(
                    "The body is larger than {} bytes.",
                    super::BODY_LIMIT
                )));
            }
            Err(rejection) => {
                return Ok(respond(Outcome::Malformed(rejection.body_text()), json));
            }
        }
    } else {
        return Err(Error::UnsupportedMediaType(
            "Send the token as a form (application/x-www-form-urlencoded) or as JSON.".into(),
        ));
    };
    let outcome = match parse(token) {
        Ok(token) => look_up(&ctx, token, true).await?,
        Err(malformed) => malformed,
    };
    Ok(respond(outcome, json))
}

fn parse(token: Option<String>) -> Result<ConfirmationToken, Outcome> {
    let token = token.ok_or_else(|| Outcome::Malformed("The link has no token.".into()))?;
    ConfirmationToken::parse(&token).map_err(|e| Outcome::Malformed(e.to_string()))
}

/// Where the link stands, by the core's rules (see `crate::delivery::LinkState`); with
/// `confirm`, a valid unused link confirms its address.
async fn look_up(
    ctx: &ApiContext,
    token: ConfirmationToken,
    confirm: bool,
) -> Result<Outcome, Error> {
    let state = if confirm {
        ctx.delivery.confirm(&token).await?
    } else {
        ctx.delivery.link_status(&token).await?
    };
    Ok(match state {
        LinkState::Pending => Outcome::Ask(token),
        LinkState::Confirmed { already } => Outcome::Confirmed { already },
        LinkState::Expired => Outcome::Expired,
        LinkState::Unknown => Outcome::Unknown,
    })
}

/// The answer: a page, JSON, or a problem. Never cached: the page holds the token.
fn respond(outcome: Outcome, json: bool) -> Response {
    let mut response = if json {
        match outcome {
            Outcome::Ask(_) => Json(LinkStatus {
                status: "pending",
                already_confirmed: false,
            })
            .into_response(),
            Outcome::Confirmed { already } => Json(LinkStatus {
                status: "confirmed",
                already_confirmed: already,
            })
            .into_response(),
            Outcome::Expired => Error::Gone(EXPIRED.into()).into_response(),
            Outcome::Unknown => Error::NotFound(UNKNOWN.into()).into_response(),
            Outcome::Malformed(detail) => Error::BadRequest(detail).into_response(),
        }
    } else {
        page(outcome)
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page's URL holds the token: no other site learns it from a Referer.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

const EXPIRED: &str = "This link has expired; sign up again to get a new one.";
const UNKNOWN: &str = "This link is unknown.";

fn page(outcome: Outcome) -> Response {
    let (status, title, message, token) = match &outcome {
        Outcome::Ask(token) => (
            StatusCode::OK,
            "Confirm your email address",
            "Press the button to confirm the address this link was sent to.",
            Some(token.expose()),
        ),
        Outcome::Confirmed { already: false } => (
            StatusCode::OK,
            "Email address confirmed",
            "Thank you! Your email address is confirmed.",
            None,
        ),
        Outcome::Confirmed { already: true } => (
            StatusCode::OK,
            "Already confirmed",
            "This email address was already confirmed. There is nothing more to do.",
            None,
        ),
        Outcome::Expired => (
            StatusCode::GONE,
            "This link has expired",
            "Links are valid for a limited time. Sign up again with the same address to get a new one.",
            None,
        ),
        Outcome::Unknown => (
            StatusCode::NOT_FOUND,
            "This link is not valid",
            "It may be mistyped or cut short. Open the link in the email again, or sign up again to get a new one.",
            None,
        ),
        Outcome::Malformed(_) => (
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "It is incomplete or mistyped. Copy the whole link from the email into your browser.",
            None,
        ),
    };
    // An expired or unknown link leads to the signup page (`GET /`, beside `/confirm`), where a
    // new one is a form away.
    let new_link = matches!(outcome, Outcome::Expired | Outcome::Unknown);
    match templates::render(
        "confirm_page.html",
        context! { title, heading => title, message, token, new_link },
    ) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => Error::Internal(e.into()).into_response(),
    }
}

/// JSON when the client asks for it, or sent JSON and does not ask for HTML; HTML otherwise,
/// since the usual client here is a browser that opened the link.
fn wants_json(headers: &HeaderMap, sent_json: bool) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accept.contains("application/json") || (sent_json && !accept.contains("text/html"))
}
