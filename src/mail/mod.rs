//! The confirmation email and the SMTP transport that sends it.
//!
//! [`Mailer`] builds messages with lettre and hands them to a [`Transport`]. In production that
//! is [`SmtpTransport`]: lettre's SMTP client over a pool of open connections ([`pool`]), so
//! that consecutive emails skip the TCP and SMTP handshakes. Errors are sorted into what the
//! delivery code must decide on: worth retrying ([`SendError::Transient`], [`SendError::Timeout`])
//! or not ([`SendError::Permanent`], a 5xx from the server).

mod notice;
mod pool;
mod transport;

use std::{sync::Arc, time::Duration};

use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

pub use self::transport::{SmtpTransport, Transport};
use crate::config::SmtpSettings;

const TEXT_TEMPLATE: &str = include_str!("confirmation.txt");
const HTML_TEMPLATE: &str = include_str!("confirmation.html");
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
}

/// The confirmation email for one signup, before it becomes a MIME message.
pub struct ConfirmationEmail<'a> {
    /// Unique to this email (its outbox id): every attempt to send it carries the same
    /// Message-ID, so a receiver can tell a resend after a lost `250` from a new email.
    pub id: i64,
    pub to_address: &'a str,
    pub to_name: Option<&'a str>,
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
        let to = Mailbox::new(email.to_name.map(str::to_owned), address);
        let greeting_text = match email.to_name {
            Some(name) => format!("Hi {name},"),
            None => "Hi,".to_owned(),
        };
        let greeting_html = match email.to_name {
            Some(name) => format!("Hi {},", escape_html(name)),
            None => "Hi,".to_owned(),
        };
        let text = TEXT_TEMPLATE
            .replace("{{greeting}}", &greeting_text)
            .replace("{{link}}", email.link);
        let html = HTML_TEMPLATE
            .replace("{{greeting}}", &greeting_html)
            .replace("{{link}}", &escape_html(email.link));
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

/// The five characters that matter in HTML text and attribute values.
pub(crate) fn escape_html(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
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
    async fn the_name_is_escaped_in_html_and_the_link_is_in_both_parts() {
        let link = "http://127.0.0.1:3000/confirm?token=abc";
        let message = mailer()
            .confirmation(&ConfirmationEmail {
                id: 7,
                to_address: "ann@example.com",
                to_name: Some("<script>alert(1)</script> & co"),
                link,
            })
            .unwrap();
        let raw = message.formatted();
        assert!(
            String::from_utf8_lossy(&raw).contains("Message-ID: <confirmd.7@confirmd.localhost>"),
            "a stable Message-ID"
        );
        let parsed = mailparse::parse_mail(&raw).unwrap();
        assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
        let text = parsed.subparts[0].get_body().unwrap();
        let html = parsed.subparts[1].get_body().unwrap();
        assert!(text.contains(link), "{text}");
        assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
        assert!(!html.contains("<script>"), "unescaped name in {html}");
        assert!(
            html.contains("Hi &lt;script&gt;alert(1)&lt;/script&gt; &amp; co,"),
            "{html}"
        );
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
            to_name: None,
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
