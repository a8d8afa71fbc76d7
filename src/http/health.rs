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

/// Ready when the database answers a query and the SMTP server answers EHLO. Checked together,
/// so a slow SMTP server costs one timeout, not two.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = OK, body = Ready),
        (status = SERVICE_UNAVAILABLE, description = "the database or the SMTP server does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Ready>, Error> {
    let delivery = &ctx.delivery;
    let mailer = delivery.mailer();
    let smtp = async {
        match mailer.try_connection() {
            Some(permit) => mailer.ping(&permit).await,
            // Every connection is in use: the server is taking emails.
            None => true,
        }
    };
    let (database, smtp) = tokio::join!(delivery.store().ping(), smtp);
    let mut failing = Vec::new();
    if database.is_err() {
        failing.push("the database does not answer");
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
