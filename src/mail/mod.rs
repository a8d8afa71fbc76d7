//! The confirmation email and the SMTP transport that sends it.
//!
//! [`Mailer`] builds messages with lettre and hands them to a [`Transport`]. In production that
//! is [`SmtpTransport`]: lettre's SMTP client over a pool of open connections ([`pool`]), so
//! that consecutive emails skip the TCP and SMTP handshakes. Errors are sorted into what the
//! delivery code must decide on: worth retrying ([`SendError::Transient`], [`SendError::Timeout`])
//! or not ([`SendError::Permanent`], a 5xx from the server).

mod pool;
mod transport;

use std::{sync::Arc, time::Duration};

use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

pub use self::transport::{SmtpTransport, Transport};
use crate::config::SmtpSettings;

const SUBJECT: &str = "Confirm your email address";

/// Builds the confirmation email and sends it through one transport. Cheap to clone: clones
/// share the transport (and so its pool of SMTP connections).
#[derive(Clone)]
pub struct Mailer {
    transport: Arc<dyn Transport>,
    from: Mailbox,
    /// Bounds a whole send, connection included, so a server that stops answering (or trickles
    /// bytes) cannot hold a worker or a sync request forever.
    timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("the SMTP server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("SMTP failure: {0}")]
    Transient(String),
    /// The server refused the recipient for good: the address, not the service, is the problem.
    #[error("the SMTP server refused the address: {0}")]
    RecipientRefused(String),
    #[error("the SMTP server rejected the email: {0}")]
    Permanent(String),
    /// No message could be built for this recipient: the address is at fault, and no server was
    /// asked. Validation refuses such addresses first; this is the second line of defence.
    #[error("cannot build an email to this address: {0}")]
    Unbuildable(String),
}

impl SendError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Transient(_) | SendError::Timeout(_))
    }

    /// Sorts a permanent (5xx) rejection: about the recipient's address (enhanced status 5.1.x,
    /// or without one, 501/550/551/553 as servers answer a bad RCPT TO), or about anything else
    /// (policy, authentication, content), which is the operator's to fix.
    fn permanent(error: &lettre::transport::smtp::Error) -> SendError {
        let text = describe(error);
        let enhanced = text.split_whitespace().find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && parts[0] == "5"
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
        let recipient = match enhanced {
            Some(code) => code.starts_with("5.1."),
            None => matches!(error.status().map(u16::from), Some(501 | 550 | 551 | 553)),
        };
        if recipient {
            SendError::RecipientRefused(text)
        } else {
            SendError::Permanent(text)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid SMTP settings: {0}")]
    Settings(#[from] lettre::transport::smtp::Error),
    #[error("cannot build the email: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("invalid recipient {0:?}")]
    Recipient(String),
    #[error("cannot render the email: {0}")]
    Template(#[from] minijinja::Error),
}

/// The confirmation email for one signup, before it becomes a MIME message.
///
/// It carries no text the requester chose: whoever signs up may type anyone's address, so the
/// name they give (kept for the application) appears neither in the greeting nor in the `To:`
/// header, and the email cannot carry their message to a stranger.
pub struct ConfirmationEmail<'a> {
    /// Unique to this email (its outbox id): every attempt to send it carries the same
    /// Message-ID, so a receiver can tell a resend after a lost `250` from a new email.
    pub id: i64,
    pub to_address: &'a str,
    pub link: &'a str,
}

impl Mailer {
    /// The production mailer: SMTP as `settings` say.
    pub fn new(settings: &SmtpSettings, from: Mailbox) -> Result<Mailer, MailError> {
        let transport = SmtpTransport::new(settings)?;
        Ok(Mailer::with_transport(
            Arc::new(transport),
            from,
            settings.timeout(),
        ))
    }

    /// A mailer that sends through `transport`, each send bounded by `timeout`.
    pub fn with_transport(
        transport: Arc<dyn Transport>,
        from: Mailbox,
        timeout: Duration,
    ) -> Mailer {
        Mailer {
            transport,
            from,
            timeout,
        }
    }

    /// Builds the multipart (text + HTML) confirmation message.
    pub fn confirmation(&self, email: &ConfirmationEmail<'_>) -> Result<Message, MailError> {
        let address = email
            .to_address
            .parse()
            .map_err(|_| MailError::Recipient(email.to_address.to_owned()))?;
        let to = Mailbox::new(None, address);
        let context = minijinja::context! { link => email.link };
        let text = crate::templates::render("confirmation.txt", context.clone())?;
        let html = crate::templates::render("confirmation.html", context)?;
        let message_id = format!("<confirmd.{}@{}>", email.id, self.from.email.domain());
        Ok(Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(SUBJECT)
            .message_id(Some(message_id))
            .multipart(MultiPart::alternative_plain_html(text, html))?)
    }

    /// Sends one message, within the configured timeout.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        let bytes = message.formatted();
        let sending = self.transport.send(message.envelope(), &bytes);
        match tokio::time::timeout(self.timeout, sending).await {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(result) => result,
        }
    }

    /// Does the mail server answer? Over SMTP: opens a connection and says EHLO; for `/readyz`.
    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(self.timeout, self.transport.ping()).await,
            Ok(true)
        )
    }
}

/// lettre's `Display` is terse ("permanent error (550)"): walk the source chain for the server's
/// own words, which are what an operator reading `last_error` needs.
fn describe(error: &lettre::transport::smtp::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn mailer() -> Mailer {
        let settings = Settings::defaults();
        Mailer::new(&settings.smtp, settings.mail_from()).unwrap()
    }

    /// Builds the message, sends nothing; the transport's pool needs a runtime to exist.
    #[tokio::test]
    async fn the_link_is_in_both_parts_and_escaped_in_html() {
        let link = "http://127.0.0.1:3000/confirm?token=abc&x=\"><script>";
        let message = mailer()
            .confirmation(&ConfirmationEmail {
                id: 7,
                to_address: "ann@example.com",
                link,
            })
            .unwrap();
        let raw = message.formatted();
        assert!(
            String::from_utf8_lossy(&raw).contains("Message-ID: <confirmd.7@confirmd.localhost>"),
            "a stable Message-ID"
        );
        assert!(
            String::from_utf8_lossy(&raw).contains("To: ann@example.com"),
            "no display name"
        );
        let parsed = mailparse::parse_mail(&raw).unwrap();
        assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
        let text = parsed.subparts[0].get_body().unwrap();
        let html = parsed.subparts[1].get_body().unwrap();
        assert!(text.contains(link), "{text}");
        assert_eq!(text.lines().next(), Some("Hi,"), "no name in the greeting");
        let escaped = "http://127.0.0.1:3000/confirm?token=abc&amp;x=&quot;&gt;&lt;script&gt;";
        assert!(html.contains(&format!("href=\"{escaped}\"")), "{html}");
        assert!(!html.contains("<script>"), "unescaped link in {html}");
    }

    /// A transport that keeps what it is given, or never answers.
    #[derive(Default)]
    struct Recording {
        stalls: bool,
        sent: std::sync::Mutex<Vec<(Vec<String>, Vec<u8>)>>,
    }

    impl Transport for Recording {
        fn send<'a>(
            &'a self,
            envelope: &'a lettre::address::Envelope,
            message: &'a [u8],
        ) -> futures_util::future::BoxFuture<'a, Result<(), SendError>> {
            let to = envelope.to().iter().map(ToString::to_string).collect();
            self.sent.lock().unwrap().push((to, message.to_vec()));
            if self.stalls {
                Box::pin(std::future::pending())
            } else {
                Box::pin(async { Ok(()) })
            }
        }

        fn ping(&self) -> futures_util::future::BoxFuture<'_, bool> {
            Box::pin(async { true })
        }
    }

    fn email(id: i64) -> ConfirmationEmail<'static> {
        ConfirmationEmail {
            id,
            to_address: "ann@example.com",
            link: "http://127.0.0.1:3000/confirm?token=abc",
        }
    }

    #[tokio::test]
    async fn a_supplied_transport_gets_the_formatted_message_and_its_envelope() {
        let transport = Arc::new(Recording::default());
        let settings = Settings::defaults();
        let mailer = Mailer::with_transport(
            transport.clone(),
            settings.mail_from(),
            Duration::from_secs(1),
        );
        let message = mailer.confirmation(&email(42)).unwrap();
        mailer.send(message).await.unwrap();
        assert!(mailer.ping().await);

        let sent = transport.sent.lock().unwrap();
        let [(to, bytes)] = sent.as_slice() else {
            panic!("one send expected, got {}", sent.len());
        };
        assert_eq!(to, &["ann@example.com"]);
        assert!(
            String::from_utf8_lossy(bytes).contains("Message-ID: <confirmd.42@confirmd.localhost>")
        );
    }

    #[tokio::test]
    async fn a_transport_that_never_answers_times_out_as_a_retryable_error() {
        let transport = Arc::new(Recording {
            stalls: true,
            ..Recording::default()
        });
        let timeout = Duration::from_millis(50);
        let mailer = Mailer::with_transport(transport, Settings::defaults().mail_from(), timeout);
        let message = mailer.confirmation(&email(1)).unwrap();
        let error = mailer.send(message).await.unwrap_err();
        assert!(
            matches!(error, SendError::Timeout(t) if t == timeout),
            "{error}"
        );
        assert!(error.is_retryable());
    }
}
