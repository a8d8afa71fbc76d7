//! One error type for every route, answered as `application/problem+json` (RFC 9457).
//!
//! Handlers return `Result<_, http::Error>` and use `?`; this is the only place that decides a
//! status code. Server-side causes are logged here with their source chain and never shown to the
//! client, whose `detail` says what to do instead.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    delivery::SignupError,
    domain::{EmailError, MalformedToken, NameError, UnknownMode},
    mail::SendError,
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    /// 408: the client took too long to send its request.
    #[error("{0}")]
    RequestTimeout(String),
    /// 429 or 503 with `Retry-After`: come back later, nothing is wrong with the request.
    #[error("{detail}")]
    RetryLater {
        status: StatusCode,
        detail: String,
        retry_after: std::time::Duration,
    },
    /// Sync mode only: the send failed after the signup was stored (`id`): 502 or 504 when the
    /// mail server failed, 422 when it refused the address.
    #[error("{detail}")]
    Smtp {
        status: StatusCode,
        detail: String,
        id: String,
    },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("the database is unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// When a client refused because the database is unavailable is told to come back.
const UNAVAILABLE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// The RFC 9457 body of every error. `type` is `about:blank` (RFC 9457 §4.2.1): the status and
/// title say it all, and we do not host pages of error documentation.
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub(super) struct Problem<'a> {
    #[schema(example = "about:blank")]
    r#type: &'static str,
    /// The status code's reason phrase.
    #[schema(example = "Unprocessable Entity")]
    title: &'a str,
    #[schema(example = 422)]
    status: u16,
    /// What went wrong, in words meant for the client.
    #[schema(example = "email is not a valid address: invalid email address")]
    detail: String,
    /// The signup the error is about, when one was stored (sync mode with SMTP down).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Gone(_) => StatusCode::GONE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::RetryLater { status, .. } => *status,
            Error::Smtp { status, .. } => *status,
            Error::NotReady(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Error::Unavailable(e) => {
                tracing::error!(error = %ErrorChain(e), "database unavailable")
            }
            Error::Internal(e) => {
                tracing::error!(error = %ErrorChain(e.as_ref()), "internal error")
            }
            Error::Smtp { detail, .. } => tracing::warn!(%detail, "sync send failed"),
            _ => {}
        }
        let detail = match &self {
            Error::Unavailable(_) => "The database is unavailable; try again shortly.".to_owned(),
            Error::Internal(_) => {
                "Something went wrong on our side; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        let id = match &self {
            Error::Smtp { id, .. } => Some(id.as_str()),
            _ => None,
        };
        let problem = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            id,
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match &self {
            Error::RetryLater { retry_after, .. } => Some(*retry_after),
            // A storage fault (disk full, the lock held elsewhere) usually clears in seconds,
            // and the writer notices within a second when it does.
            Error::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            // Whole seconds, rounded up: never tell a client to come back before it may.
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        // For 405, axum adds an `Allow` header naming the route's real methods.
        response
    }
}

/// Formats an error with its whole `source()` chain, for the log.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Error::UnsupportedMediaType(
                "Send the body as JSON with `Content-Type: application/json`.".into(),
            ),
            JsonRejection::JsonDataError(_) => Error::Unprocessable(detail),
            JsonRejection::JsonSyntaxError(_) => Error::BadRequest(detail),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge(
                format!("The body is larger than {} bytes.", super::BODY_LIMIT),
            ),
            _ => Error::BadRequest(detail),
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Error::BadRequest(rejection.body_text())
    }
}

/// A path segment that is not what the route takes (say, bytes that are not UTF-8 once
/// percent-decoded): axum would answer a plain-text 400, and every error here is problem+json.
impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        Error::BadRequest(rejection.body_text())
    }
}

impl From<EmailError> for Error {
    fn from(e: EmailError) -> Self {
        Error::Unprocessable(e.to_string())
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Error::Unprocessable(e.to_string())
    }
}

impl From<UnknownMode> for Error {
    fn from(e: UnknownMode) -> Self {
        Error::Unprocessable(e.to_string())
    }
}

impl From<MalformedToken> for Error {
    fn from(e: MalformedToken) -> Self {
        Error::BadRequest(e.to_string())
    }
}

impl From<StoreError> for Error {
    /// Through [`SignupError`], so each store outcome maps to one status in one place.
    fn from(e: StoreError) -> Self {
        SignupError::from(e).into()
    }
}

impl From<SignupError> for Error {
    fn from(e: SignupError) -> Self {
        match e {
            SignupError::SendFailed {
                receipt,
                error,
                will_retry,
            } => {
                let status = match error {
                    // About the input, never the service: a 4xx, even in sync mode.
                    SendError::RecipientRefused(_) | SendError::Unbuildable(_) => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    SendError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    SendError::Transient(_) | SendError::Rejected(_) => StatusCode::BAD_GATEWAY,
                };
                let detail = match (&error, will_retry) {
                    (SendError::RecipientRefused(_), _) => format!(
                        "The mail server refused this address ({error}); no email will be sent to it."
                    ),
                    (SendError::Unbuildable(_), _) => format!(
                        "This address cannot be written into an email ({error}); no email will be sent to it."
                    ),
                    (_, true) => format!(
                        "The signup is saved, but its confirmation email could not be sent now ({error}); it has been queued and will be retried."
                    ),
                    (_, false) => format!(
                        "The signup is saved, but its confirmation email could not be sent ({error}); it will not be retried."
                    ),
                };
                Error::Smtp {
                    status,
                    detail,
                    id: receipt.signup_id,
                }
            }
            SignupError::Backlogged { retry_after } => Error::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: "Too many emails are waiting to be sent; try again shortly.".into(),
                retry_after,
            },
            SignupError::SmtpBusy {
                receipt,
                retry_after,
            } => Error::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: format!(
                    "The signup is saved (id {}), but every connection to the mail server is busy; its confirmation email is queued and will be sent shortly. See /signups/{}.",
                    receipt.signup_id, receipt.signup_id
                ),
                retry_after,
            },
            // A row the code cannot read is a bug or a hand edit, not an outage.
            SignupError::Store(StoreError::UnknownState(e)) => Error::Internal(e.into()),
            SignupError::Store(e) => Error::Unavailable(e),
            SignupError::Internal(e) => Error::Internal(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::SignupReceipt;
    use crate::domain::DeliveryMode;

    /// Sync mode never answers 5xx for something about the input: a message that cannot be
    /// built for the address is the address's fault.
    #[test]
    fn an_email_that_cannot_be_built_is_a_422_not_a_502() {
        let error = SignupError::SendFailed {
            receipt: SignupReceipt {
                signup_id: "u".into(),
                email: "ann@example.com".into(),
                mode: DeliveryMode::Sync,
                state: crate::store::OutboxState::Failed,
                db_time: std::time::Duration::ZERO,
                smtp_time: None,
            },
            error: SendError::Unbuildable("missing destination address".into()),
            will_retry: false,
        };
        let response = Error::from(error).into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
