//! A pool of open SMTP connections whose sockets have Nagle's algorithm turned off.
//!
//! Why not lettre's own pooled transport: it cannot set `TCP_NODELAY`, and lettre writes the end
//! of a message (`\r\n.\r\n`) as a second small write right after the body. With Nagle's algorithm
//! on, the kernel holds that second write until the body's segment is acknowledged, and the
//! server, which has nothing to say until it sees the end of the message, delays that ACK by up to
//! 40 ms (delayed ACK). Every email paid that 40 ms: 47 ms per email to a catcher on the same
//! machine, where a plain client on one connection needs under 2 ms. With `TCP_NODELAY` each
//! write goes out at once.
//!
//! The pool keeps at most `max_idle` connections for reuse. It opens a new one only when none is
//! idle, for a sender that holds one of the [`Mailer`](super::Mailer)'s `smtp.pool_size` permits:
//! a connection is either in a permit holder's hands or idle, so at most `smtp.pool_size` are open
//! at any moment. A connection that failed is dropped, never reused; one that sat idle for
//! a while is checked with `NOOP` before it is trusted again.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lettre::{
    address::Envelope,
    transport::smtp::{
        Error,
        authentication::{Credentials, DEFAULT_MECHANISMS},
        client::{AsyncSmtpConnection, TlsParameters},
        extension::ClientId,
    },
};
use tokio::net::TcpStream;

use crate::config::SmtpTls;

/// A connection idle longer than this is checked with `NOOP` before it is used: servers close
/// idle connections, and a send on a closed one would fail for nothing.
const TRUST_IDLE_FOR: Duration = Duration::from_secs(5);

pub(super) struct SmtpPool {
    host: String,
    port: u16,
    tls: SmtpTls,
    tls_parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

pub(super) struct PoolSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    pub max_idle: usize,
}

impl SmtpPool {
    pub(super) fn new(settings: PoolSettings) -> Result<SmtpPool, Error> {
        let tls_parameters = match settings.tls {
            SmtpTls::None => None,
            SmtpTls::Starttls | SmtpTls::Tls => Some(TlsParameters::new(settings.host.clone())?),
        };
        Ok(SmtpPool {
            host: settings.host,
            port: settings.port,
            tls: settings.tls,
            tls_parameters,
            credentials: settings.credentials,
            hello: ClientId::default(),
            connect_timeout: settings.connect_timeout,
            max_idle: settings.max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one message on a pooled connection, or a new one.
    pub(super) async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), PoolError> {
        let mut connection = self.checkout().await?;
        match connection.send(envelope, message).await {
            Ok(_) => {
                self.checkin(connection);
                Ok(())
            }
            Err(error) => {
                // After an error the session's state is unknown: never reuse the connection.
                connection.abort().await;
                Err(error.into())
            }
        }
    }

    /// Does the server answer? A `NOOP` on a pooled connection, or a new connection (greeting and
    /// EHLO) when none is idle; a connection that answered is kept for the next send. Like a send,
    /// it runs under a permit, so it never opens a connection beyond `smtp.pool_size`.
    pub(super) async fn ping(&self) -> bool {
        let Ok(mut connection) = self.checkout().await else {
            return false;
        };
        if connection.test_connected().await {
            self.checkin(connection);
            true
        } else {
            connection.abort().await;
            false
        }
    }

    async fn checkout(&self) -> Result<AsyncSmtpConnection, PoolError> {
        loop {
            let candidate = self.idle.lock().expect("pool lock").pop();
            let Some((mut connection, idle_since)) = candidate else {
                return self.connect().await;
            };
            if connection.has_broken() {
                continue;
            }
            if idle_since.elapsed() > TRUST_IDLE_FOR && !connection.test_connected().await {
                connection.abort().await;
                continue;
            }
            return Ok(connection);
        }
    }

    fn checkin(&self, connection: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < self.max_idle {
            idle.push((connection, Instant::now()));
        }
        // Beyond max_idle the connection is dropped, which closes the socket.
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, PoolError> {
        let address = (self.host.as_str(), self.port);
        let mut connection = match self.tls {
            // Implicit TLS: lettre's connector does the handshake before the greeting. Its socket
            // keeps Nagle on, so this mode still pays the stall described above.
            SmtpTls::Tls => {
                AsyncSmtpConnection::connect_tokio1(
                    address,
                    Some(self.connect_timeout),
                    &self.hello,
                    self.tls_parameters.clone(),
                    None,
                )
                .await?
            }
            SmtpTls::None | SmtpTls::Starttls => {
                let stream =
                    tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
                        .await
                        .map_err(|_| PoolError::ConnectTimeout(self.connect_timeout))?
                        .map_err(PoolError::Connect)?;
                stream.set_nodelay(true).map_err(PoolError::Connect)?;
                let mut connection =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                        .await?;
                if let (SmtpTls::Starttls, Some(parameters)) = (self.tls, &self.tls_parameters) {
                    connection.starttls(parameters.clone(), &self.hello).await?;
                }
                connection
            }
        };
        if let Some(credentials) = &self.credentials {
            connection.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(connection)
    }
}

/// Why a send through the pool failed: before an SMTP session existed, or within one.
#[derive(Debug, thiserror::Error)]
pub(super) enum PoolError {
    #[error("cannot connect to the SMTP server: {0}")]
    Connect(std::io::Error),
    #[error("connecting to the SMTP server timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Smtp(#[from] Error),
}
