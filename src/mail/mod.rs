//! The confirmation email and the SMTP transport that sends it.
//!
//! [`Mailer`] builds messages with lettre and hands them to a [`Transport`]. In production that
//! is [`SmtpTransport`]: lettre's SMTP client over a pool of open connections ([`pool`]), so
//! that consecutive emails skip the TCP and SMTP handshakes. At most `smtp.pool_size`
//! connections are in use at once: every send holds a [`ConnectionPermit`], and a sender without
//! one waits (a worker as long as it takes, a sync request a bounded time), so a burst of
//! signups never opens more connections than a provider may allow. Errors are sorted into what the
//! delivery code must decide on: a fault of the server or of our account, worth retrying
//! ([`SendError::Transient`], [`SendError::Timeout`], [`SendError::Rejected`]), or a fault of
//! this one email, which no retry can fix ([`SendError::RecipientRefused`]: 550 5.1.1 and kin).

mod notice;
mod pool;
mod transport;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// One permit per SMTP connection that may be in use: `smtp.pool_size`. The pool can only
    /// open a connection for a sender holding a permit, and keeps no more idle ones than there
    /// are permits, so this bounds the connections open at any moment.
    connections: Arc<Semaphore>,
    /// Senders waiting for a permit right now (see [`Mailer::awaited`]).
    waiting: Arc<AtomicUsize>,
}

/// The right to use one SMTP connection, from [`Mailer::connection`]; given back when dropped.
/// A worker takes it before it claims an email, so that waiting for a connection never eats into
/// the claim's lease.
pub struct ConnectionPermit(#[allow(dead_code)] OwnedSemaphorePermit);

/// Counts one sender as waiting for a connection until dropped (its permit came, or a sync
/// request gave up waiting).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("the SMTP server did not answer within {0:?}")]
    Timeout(Duration),
    /// No SMTP session (connection refused or reset), or a 4xx: the server says "try later".
    #[error("SMTP failure: {0}")]
    Transient(String),
    /// The server refused the recipient for good: the address, not the service, is the problem.
    #[error("the SMTP server refused the address: {0}")]
    RecipientRefused(String),
    /// A 5xx that is not about the address: relay denied (554 5.7.1), authentication required or
    /// refused (530, 535), a policy or a quota of our account. Permanent in the server's words,
    /// but no other address would get through either, and it heals when the operator fixes the
    /// account or the provider lifts the block: retried like an outage.
    #[error("the SMTP server rejected the email: {0}")]
    Rejected(String),
    /// No message could be built for this recipient: the address is at fault, and no server was
    /// asked. Validation refuses such addresses first; this is the second line of defence.
    #[error("cannot build an email to this address: {0}")]
    Unbuildable(String),
}

impl SendError {
    /// Everything but a fault of this one email: a refused address, or a message that cannot be
    /// built. Faults of the server or of our account are retried until the link would expire.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            SendError::RecipientRefused(_) | SendError::Unbuildable(_)
        )
    }

    /// Sorts a permanent (5xx) rejection: about the recipient's address, or about anything else.
    fn permanent(error: &lettre::transport::smtp::Error) -> SendError {
        let text = describe(error);
        if is_about_the_address(error.status().map(u16::from), &text) {
            SendError::RecipientRefused(text)
        } else {
            SendError::Rejected(text)
        }
    }
}

/// Does a 5xx reply reject the recipient's address itself? By the enhanced status code when the
/// reply has one (RFC 3463): the destination address (5.1.1 bad mailbox, 5.1.2 bad domain,
/// 5.1.3 bad syntax, 5.1.4 ambiguous, 5.1.6 moved, 5.1.10 null MX) or its mailbox (5.2.1
/// disabled, 5.2.2 full). Not 5.1.0, which Postfix also uses for a refused *sender*, nor 5.1.7 and
/// 5.1.8, which are about our sender address: those are the operator's to fix, and retried.
/// Without an enhanced code, RFC 5321's mailbox replies to RCPT TO: 550, 551, 553, and 501, the
/// syntax error in the command's argument that servers such as maildev answer to an address they
/// cannot parse (schemathesis found a 254-character address retried as an outage for it).
fn is_about_the_address(status: Option<u16>, text: &str) -> bool {
    let enhanced = text.split_whitespace().find_map(|word| {
        let parts: Vec<&str> = word.split('.').collect();
        let numeric = parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        match parts[..] {
            ["5", subject, detail] if numeric => Some((subject, detail)),
            _ => None,
        }
    });
    match enhanced {
        Some(("1", detail)) => matches!(detail, "1" | "2" | "3" | "4" | "6" | "10"),
        Some(("2", detail)) => matches!(detail, "1" | "2"),
        Some(_) => false,
        None => matches!(status, Some(501 | 550 | 551 | 553)),
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
        Ok(
            Mailer::with_transport(Arc::new(transport), from, settings.timeout())
                .with_connection_limit(settings.pool_size as usize),
        )
    }

    /// A mailer that sends through `transport`, each send bounded by `timeout`, with no limit on
    /// concurrent sends (a supplied transport bounds its own resources).
    pub fn with_transport(
        transport: Arc<dyn Transport>,
        from: Mailbox,
        timeout: Duration,
    ) -> Mailer {
        Mailer {
            transport,
            from,
            timeout,
            connections: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            waiting: Arc::default(),
        }
    }

    /// At most `limit` sends (and so SMTP connections) at once.
    pub fn with_connection_limit(mut self, limit: usize) -> Mailer {
        self.connections = Arc::new(Semaphore::new(limit));
        self
    }

    /// Waits until a connection is free, however long that takes: for workers, which have
    /// nothing better to do.
    pub async fn connection(&self) -> ConnectionPermit {
        let _waiting = Waiting::on(&self.waiting);
        let permit = Arc::clone(&self.connections)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        ConnectionPermit(permit)
    }

    /// Is a sender waiting for a connection? A worker holding one keeps it for its next email
    /// only when none is, so a sync request never waits behind a whole backlog.
    pub fn awaited(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Waits at most `wait` for a free connection: for a sync request, which has a client
    /// waiting. `None` if every connection stayed busy.
    pub async fn connection_within(&self, wait: Duration) -> Option<ConnectionPermit> {
        tokio::time::timeout(wait, self.connection()).await.ok()
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

    /// Sends one message, within the configured timeout, once a connection is free.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        let permit = self.connection().await;
        self.send_on(&permit, message).await
    }

    /// Sends one message on the connection `_permit` stands for, within the configured timeout.
    pub async fn send_on(
        &self,
        _permit: &ConnectionPermit,
        message: Message,
    ) -> Result<(), SendError> {
        let bytes = message.formatted();
        let sending = self.transport.send(message.envelope(), &bytes);
        match tokio::time::timeout(self.timeout, sending).await {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(result) => result,
        }
    }

    /// Does the mail server answer? Over SMTP: opens a connection and says EHLO. The caller
    /// holds `_permit`, so the check too stays within `smtp.pool_size`.
    pub async fn ping(&self, _permit: &ConnectionPermit) -> bool {
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
        assert!(mailer.ping(&mailer.connection().await).await);

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

    /// A mail server that answers RCPT TO with `rcpt_reply` and everything else with success,
    /// for one connection: enough for lettre to produce the error a real server would cause.
    async fn server_answering_rcpt_with(rcpt_reply: &'static str) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            writer.write_all(b"220 scripted ESMTP\r\n").await.unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                    Some("RCPT") => rcpt_reply,
                    Some("QUIT") => "221 bye",
                    _ => "250 ok",
                };
                if writer
                    .write_all(format!("{reply}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        port
    }

    /// Real lettre errors from real replies, sorted: only a rejection of the address itself is
    /// final; a fault of the server or of our account is retried.
    #[tokio::test]
    async fn only_a_rejection_of_the_address_fails_for_good() {
        let cases = [
            ("550 5.1.1 <ann@example.com>: mailbox unavailable", false),
            ("553 5.1.3 bad recipient address syntax", false),
            ("550 5.1.2 bad destination system", false),
            ("556 5.1.10 recipient domain has a null MX", false),
            ("550 5.2.1 mailbox disabled", false),
            ("552 5.2.2 mailbox full", false),
            ("550 no such user here", false),
            ("501 Error: Bad recipient address syntax", false),
            ("554 5.7.1 <ann@example.com>: Relay access denied", true),
            ("530 5.7.0 authentication required", true),
            ("535 5.7.8 authentication credentials invalid", true),
            (
                "550 5.1.0 <no-reply@confirmd.localhost>: Sender address rejected",
                true,
            ),
            ("553 5.1.8 sender domain does not exist", true),
            ("550 5.7.26 unauthenticated email is not accepted", true),
            ("554 transaction failed", true),
            ("451 4.3.0 temporary failure", true),
            ("450 4.2.1 mailbox busy, try later", true),
        ];
        for (reply, retryable) in cases {
            let mut settings = Settings::defaults();
            settings.smtp.port = server_answering_rcpt_with(reply).await;
            let mailer = Mailer::new(&settings.smtp, settings.mail_from()).unwrap();
            let error = mailer
                .send(mailer.confirmation(&email(1)).unwrap())
                .await
                .unwrap_err();
            assert_eq!(error.is_retryable(), retryable, "{reply}: {error:?}");
            if !retryable {
                assert!(matches!(error, SendError::RecipientRefused(_)), "{error:?}");
            }
        }
    }

    #[tokio::test]
    async fn no_server_at_all_is_retried() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut settings = Settings::defaults();
        settings.smtp.port = port;
        let mailer = Mailer::new(&settings.smtp, settings.mail_from()).unwrap();
        let error = mailer
            .send(mailer.confirmation(&email(1)).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");
        assert!(error.is_retryable());
    }
}
