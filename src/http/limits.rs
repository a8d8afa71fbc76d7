//! Per-request limits, as router middleware inside the request span and
//! [`observe`](super::observe), so that each refusal is a problem+json answer logged and counted
//! like any other:
//!
//! - [`require_host`]: HTTP/1.1 requires a `Host` header (RFC 9112 §3.2); hyper does not
//!   check, so a request without one is answered 400 here.
//! - [`time_limit`]: the whole request, body read included, must be answered within
//!   `server.request_timeout_ms`, or it gets 503 with `Retry-After`. Cutting the handler short
//!   is safe: a sync send runs as its own tracked task and records its outcome whether or not
//!   anyone still waits for it, and the timeout is longer than `smtp.timeout_ms`, so a send that
//!   keeps to its own timeout is never cut.
//! - [`read_body_within`]: the body must arrive within `server.body_read_timeout_ms`, or the
//!   request gets 408 and the connection is closed. Bodies are at most
//!   [`BODY_LIMIT`](super::BODY_LIMIT) bytes, so they are read here, whole, before the handler
//!   runs; the handler then parses bytes already in memory.
//!
//! The request head has its own timeout in the server ([`super::server`]): a client that never
//! finishes its head never reaches the router.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, Version, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{BODY_LIMIT, Error};

/// The timeouts the router enforces, from `server.*`.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeouts {
    /// The longest the body may take to arrive, from the end of the head.
    pub body_read: Duration,
    /// The longest from the end of the head to the response.
    pub request: Duration,
}

pub(super) async fn require_host(request: Request, next: Next) -> Response {
    if request.version() == Version::HTTP_11 && !request.headers().contains_key(header::HOST) {
        return Error::BadRequest("An HTTP/1.1 request must carry a Host header.".into())
            .into_response();
    }
    next.run(request).await
}

pub(super) async fn time_limit(
    State(timeouts): State<RequestTimeouts>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeouts.request, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                timeout_ms = timeouts.request.as_millis() as u64,
                "request timed out"
            );
            Error::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: format!(
                    "The request was not answered within {} s; anything it started goes on \
                     without it. Try again shortly.",
                    timeouts.request.as_secs_f64()
                ),
                retry_after: Duration::from_secs(1),
            }
            .into_response()
        }
    }
}

pub(super) async fn read_body_within(
    State(timeouts): State<RequestTimeouts>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, BODY_LIMIT).collect();
    let bytes = match tokio::time::timeout(timeouts.body_read, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            return Error::PayloadTooLarge(format!("The body is larger than {BODY_LIMIT} bytes."))
                .into_response();
        }
        Ok(Err(error)) => {
            return Error::BadRequest(format!("The body could not be read: {error}."))
                .into_response();
        }
        Err(_) => {
            let mut response = Error::RequestTimeout(format!(
                "The body did not arrive within {} s.",
                timeouts.body_read.as_secs_f64()
            ))
            .into_response();
            // The rest of the body may still be on its way: this connection cannot carry
            // another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::{Router, middleware, routing::get};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::http::server::{self, ServerLimits};

    /// `router` with the limits' layers, served by the real server on a free port.
    async fn serve(router: Router, timeouts: RequestTimeouts) -> (SocketAddr, CancellationToken) {
        let router = router
            .layer(middleware::from_fn_with_state(timeouts, read_body_within))
            .layer(middleware::from_fn_with_state(timeouts, time_limit))
            .layer(middleware::from_fn(require_host));
        let listener = server::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 16,
        };
        tokio::spawn(server::serve(listener, router, limits, shutdown.clone()));
        (address, shutdown)
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_is_answered_503_with_retry_after_and_its_work_goes_on() {
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel();
        let finished_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(finished_tx)));
        let router = Router::new().route(
            "/slow",
            get(move || {
                let finished_tx = finished_tx.lock().unwrap().take();
                async move {
                    // Work that must not be cut short runs as its own task, as a sync send does.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        let _ = finished_tx.unwrap().send(());
                    })
                    .await
                    .unwrap();
                    "done"
                }
            }),
        );
        let timeouts = RequestTimeouts {
            body_read: Duration::from_secs(10),
            request: Duration::from_millis(200),
        };
        let (address, shutdown) = serve(router, timeouts).await;

        let response = reqwest::get(format!("http://{address}/slow"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        // The handler was dropped at the timeout; the task it started still finished.
        tokio::time::timeout(Duration::from_secs(10), finished_rx)
            .await
            .expect("the spawned work finished")
            .unwrap();
        shutdown.cancel();
    }
}
