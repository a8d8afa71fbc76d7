//! How a finished message reaches a mail server: the [`Transport`] seam and its one production
//! implementation, [`SmtpTransport`].
//!
//! [`Mailer`](super::Mailer) builds the message and bounds each send with its timeout; a
//! transport only moves bytes and says how it went. The seam exists so that a caller can supply
//! another transport: the benchmarks use one that does nothing (to measure the outbox alone) and
//! one that notes when a worker hands it an email before passing it to SMTP.

use std::time::Duration;

use futures_util::future::BoxFuture;
use lettre::{address::Envelope, transport::smtp::authentication::Credentials};
use secrecy::ExposeSecret;

use super::{
    MailError, SendError, describe,
    pool::{PoolError, PoolSettings, SmtpPool},
};
use crate::config::SmtpSettings;

/// Moves one formatted message to a mail server.
pub trait Transport: Send + Sync + 'static {
    /// Sends `message` (RFC 5322 bytes) to the envelope's recipients. Errors are already sorted
    /// for the delivery code: retryable or not, the address's fault or the server's.
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Does the server answer? For the background SMTP check behind `/healthz`.
    fn ping(&self) -> BoxFuture<'_, bool>;
}

/// SMTP through a pool of open connections with `TCP_NODELAY` set (see [`super::pool`]).
pub struct SmtpTransport {
    pool: SmtpPool,
    /// Reported in [`SendError::Timeout`] when the connection or the server timed out.
    timeout: Duration,
}

impl SmtpTransport {
    pub fn new(settings: &SmtpSettings) -> Result<SmtpTransport, MailError> {
        let credentials = (!settings.username.is_empty()).then(|| {
            Credentials::new(
                settings.username.clone(),
                settings.password.expose_secret().to_owned(),
            )
        });
        let pool = SmtpPool::new(PoolSettings {
            host: settings.host.clone(),
            port: settings.port,
            tls: settings.tls,
            credentials,
            connect_timeout: settings.timeout(),
            max_idle: settings.pool_size as usize,
        })?;
        Ok(SmtpTransport {
            pool,
            timeout: settings.timeout(),
        })
    }
}

impl Transport for SmtpTransport {
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            match self.pool.send(envelope, message).await {
                Ok(()) => Ok(()),
                Err(PoolError::ConnectTimeout(_)) => Err(SendError::Timeout(self.timeout)),
                Err(PoolError::Connect(e)) => {
                    Err(SendError::Transient(format!("cannot connect: {e}")))
                }
                Err(PoolError::Smtp(e)) if e.is_timeout() => Err(SendError::Timeout(self.timeout)),
                Err(PoolError::Smtp(e)) if e.is_permanent() => Err(SendError::permanent(&e)),
                // lettre will not offer an internationalised address (`ünï@x`) to a server that
                // does not announce SMTPUTF8 (RFC 6531), and asks nothing: this server cannot
                // take this address, and trying again will not change that.
                Err(PoolError::Smtp(e))
                    if e.is_client()
                        && envelope.to().iter().any(|to| !to.to_string().is_ascii()) =>
                {
                    Err(SendError::RecipientRefused(format!(
                        "{}; the address is not ASCII and the server does not accept SMTPUTF8",
                        describe(&e)
                    )))
                }
                Err(PoolError::Smtp(e)) => Err(SendError::Transient(describe(&e))),
            }
        })
    }

    fn ping(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.pool.ping())
    }
}
