//! The SMTP server the tests send to: the demo's mail catcher ([`confirmd_catcher`]), keeping
//! every message, with what a test reads from it on top: the mail parsed as MIME (subject,
//! headers, text and html parts, the confirmation link), and a wait with a deadline that says
//! what did arrive. It fails on demand (see [`Behaviour`]) so tests can see how the service
//! copes.

use std::time::Duration;

use confirmd_catcher::{Catcher, Config};
use mailparse::{MailHeaderMap, ParsedMail};

pub use confirmd_catcher::Behaviour;

/// One message the server accepted: the envelope and the message exactly as received (after
/// dot-unstuffing).
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub raw: String,
}

impl ReceivedMail {
    /// The decoded Subject header.
    pub fn subject(&self) -> String {
        self.parsed()
            .headers
            .get_first_value("Subject")
            .unwrap_or_else(|| panic!("received mail has no Subject header:\n{}", self.raw))
    }

    /// The first `name` header, decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.parsed().headers.get_first_value(name)
    }

    /// The decoded text/plain part.
    pub fn text_body(&self) -> String {
        self.body_of("text/plain")
    }

    /// The decoded text/html part.
    pub fn html_body(&self) -> String {
        self.body_of("text/html")
    }

    /// The first http(s) URL in the text part that contains `/confirm?token=`, up to the first
    /// whitespace.
    pub fn confirmation_link(&self) -> String {
        let text = self.text_body();
        match super::links::confirmation_link_in(&text) {
            Some(link) => link.to_owned(),
            None => panic!(
                "no http(s) URL containing \"/confirm?token=\" in the text/plain part of the \
                 mail to {:?}; text/plain part:\n{text}",
                self.to
            ),
        }
    }

    fn parsed(&self) -> ParsedMail<'_> {
        mailparse::parse_mail(self.raw.as_bytes())
            .unwrap_or_else(|e| panic!("received mail does not parse as MIME ({e}):\n{}", self.raw))
    }

    fn body_of(&self, mimetype: &str) -> String {
        let parsed = self.parsed();
        let part = find_part(&parsed, mimetype)
            .unwrap_or_else(|| panic!("received mail has no {mimetype} part:\n{}", self.raw));
        part.get_body()
            .unwrap_or_else(|e| panic!("cannot decode the {mimetype} part ({e}):\n{}", self.raw))
    }
}

/// Depth-first search for the first part of the given MIME type (lettre nests text and html
/// inside multipart/alternative, possibly inside multipart/mixed).
fn find_part<'m, 'a>(part: &'m ParsedMail<'a>, mimetype: &str) -> Option<&'m ParsedMail<'a>> {
    if part.ctype.mimetype.eq_ignore_ascii_case(mimetype) {
        return Some(part);
    }
    part.subparts.iter().find_map(|p| find_part(p, mimetype))
}

/// The running server. Dropping it stops the listener and closes every open connection.
pub struct SmtpServer {
    catcher: Catcher,
}

impl SmtpServer {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> SmtpServer {
        Self::start_on(0).await
    }

    /// Listens on 127.0.0.1:`port`, e.g. to bring SMTP back where the app was told it is.
    /// Retries for a while if the port is still held by a server that was just dropped.
    pub async fn start_on(port: u16) -> SmtpServer {
        let config = Config {
            port,
            keep_all: true,
            ..Config::default()
        };
        let catcher = Catcher::start_with(config)
            .await
            .unwrap_or_else(|e| panic!("test SMTP server cannot listen on port {port}: {e}"));
        SmtpServer { catcher }
    }

    pub fn port(&self) -> u16 {
        self.catcher.addr().port()
    }

    /// Applies from the next EHLO / RCPT TO / DATA on, also on connections already open.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.catcher.set_behaviour(b);
    }

    /// Every message accepted so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.catcher
            .recent()
            .into_iter()
            .map(|message| ReceivedMail {
                from: message.from,
                to: message.to,
                raw: String::from_utf8_lossy(&message.data).into_owned(),
            })
            .collect()
    }

    /// Waits until at least `count` messages were accepted and returns all of them; panics,
    /// saying how many arrived, if that takes longer than `within`.
    pub async fn wait_for_mail(&self, count: usize, within: Duration) -> Vec<ReceivedMail> {
        let reached = self.catcher.wait_for(count, within).await;
        let mail = self.received();
        if !reached {
            let summary: Vec<_> = mail.iter().map(|m| (&m.from, &m.to)).collect();
            panic!(
                "expected at least {count} mail(s) within {within:?}, but {} arrived \
                 (from, to): {summary:?}",
                mail.len()
            );
        }
        mail
    }

    /// TCP connections accepted so far (shows whether the client pools connections).
    pub fn connections(&self) -> usize {
        self.catcher.connections()
    }

    /// The most TCP connections that were open at the same time, from accept until the server
    /// saw the client close (or closed it).
    pub fn most_connections_at_once(&self) -> usize {
        self.catcher.most_connections_at_once()
    }
}
