//! `GET /healthz` (the process is up) and `GET /readyz` (its dependencies answer).

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiContext, Error, error::Problem};

pub(super) fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Serialize, ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    #[schema(example = "ok")]
    database: &'static str,
    #[schema(example = "ok")]
    smtp: &'static str,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", responses((status = OK, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the database can take signups (it answers a query, it is the file that was opened,
/// and writes meet no storage fault such as a full disk or a lock held elsewhere), the internal
/// tasks (the signup writer, the delivery workers, the sweeper) are running, and the SMTP server
/// answers EHLO. Checked together, so a slow SMTP server costs one timeout, not two.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = OK, body = Ready),
        (status = SERVICE_UNAVAILABLE, description = "the database cannot take signups, an internal task is down, or the SMTP server does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Ready>, Error> {
    let delivery = &ctx.delivery;
    let (database, smtp) = tokio::join!(delivery.store().ping(), delivery.mailer().ping());
    let mut failing = Vec::new();
    if database.is_err() {
        failing.push("the database does not answer");
    } else if delivery.store().writable().is_err() {
        // Why (full, locked, read-only, file deleted) is in the log, once, when it started.
        failing.push("the database cannot take signups");
    }
    if !delivery.store().tasks().down().is_empty() {
        failing.push("an internal task is restarting after a panic");
    }
    if !smtp {
        failing.push("the SMTP server does not answer");
    }
    if failing.is_empty() {
        Ok(Json(Ready {
            status: "ready",
            database: "ok",
            smtp: "ok",
        }))
    } else {
        Err(Error::NotReady(failing.join("; ")))
    }
}
