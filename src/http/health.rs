//! `GET /healthz` (the process is up, and what the background check last saw of SMTP) and
//! `GET /readyz` (it can take signups). SMTP is reported, never part of readiness: during an
//! SMTP outage signups are still stored and their emails wait in the outbox, so an instance must
//! stay in its load balancer. Neither probe talks to SMTP on its request path.

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
    /// Whether the SMTP server answered the last background check (`smtp.check_interval_ms`):
    /// `up`, `down`, or `unknown` before the first check has answered. Detail only: the
    /// process is healthy either way.
    #[schema(example = "up")]
    smtp: &'static str,
}

#[derive(Serialize, ToSchema)]
struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    #[schema(example = "ok")]
    database: &'static str,
}

/// The process is up and serving HTTP; `smtp` is what the background check last saw.
#[utoipa::path(get, path = "/healthz", responses((status = OK, body = Health)))]
async fn healthz(State(ctx): State<ApiContext>) -> Json<Health> {
    Json(Health {
        status: "ok",
        smtp: ctx.delivery.smtp_status().as_str(),
    })
}

/// Ready when the database can take signups (it answers a query, it is the file that was opened,
/// and writes meet no storage fault such as a full disk or a lock held elsewhere) and the internal
/// tasks (the signup writer, the delivery workers, the sweeper) are running. Not SMTP: see the
/// module docs.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = OK, body = Ready),
        (status = SERVICE_UNAVAILABLE, description = "the database cannot take signups, or an internal task is down", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Ready>, Error> {
    let readiness = ctx.delivery.readiness().await;
    let mut failing = Vec::new();
    if !readiness.database_answers {
        failing.push("the database does not answer");
    } else if !readiness.database_writable {
        // Why (full, locked, read-only, file deleted) is in the log, once, when it started.
        failing.push("the database cannot take signups");
    }
    if readiness.task_restarting {
        failing.push("an internal task is restarting after a panic");
    }
    if readiness.is_ready() {
        Ok(Json(Ready {
            status: "ready",
            database: "ok",
        }))
    } else {
        Err(Error::NotReady(failing.join("; ")))
    }
}
