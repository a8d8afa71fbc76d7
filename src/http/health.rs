//! `GET /healthz` (the process is up) and `GET /readyz` (its dependencies answer).

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use super::{ApiContext, Error};

pub(super) fn router() -> Router<ApiContext> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers a query and the SMTP server answers EHLO. Checked together,
/// so a slow SMTP server costs one timeout, not two.
async fn readyz(State(ctx): State<ApiContext>) -> Result<Json<Value>, Error> {
    let delivery = &ctx.delivery;
    let (database, smtp) = tokio::join!(delivery.store().ping(), delivery.mailer().ping());
    let mut failing = Vec::new();
    if database.is_err() {
        failing.push("the database does not answer");
    }
    if !smtp {
        failing.push("the SMTP server does not answer");
    }
    if failing.is_empty() {
        Ok(Json(
            json!({ "status": "ready", "database": "ok", "smtp": "ok" }),
        ))
    } else {
        Err(Error::NotReady(failing.join("; ")))
    }
}
