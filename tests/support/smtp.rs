//! A small SMTP server that runs inside the test process: it receives the service's email so
//! tests can read it, and fails on demand (see [`Behaviour`]) so tests can see how the service
//! copes. It speaks just enough ESMTP for lettre's client, without TLS, AUTH or PIPELINING.

// Each integration test binary uses a different subset of this module.
#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mailparse::{MailHeaderMap, ParsedMail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How long [`SmtpServer::start_on`] keeps retrying a port that is still held by a server that
/// was just dropped (its task may not have been cancelled yet).
const BIND_PATIENCE: Duration = Duration::from_secs(2);

/// What the server does with the next transaction. It is read when it matters (at RCPT TO, at
/// the start and at the end of the DATA body), so a change also reaches connections that lettre
/// keeps open in its pool.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 250 to everything; the message is stored at the end of DATA.
    Accept,
    /// Like `Accept`, but waits this long before storing the message and answering 250.
    Delay(Duration),
    /// `451 4.3.0` at the end of DATA; the message is not stored.
    RejectTransient,
    /// `550 5.1.1` to RCPT TO: the mailbox does not exist.
    RejectPermanent,
    /// `554 5.7.1` at the end of DATA: refused by policy, whoever the recipient.
    RejectPolicy,
    /// Closes the socket, without answering, once the client starts sending the DATA body.
    DropDuringData,
    /// Reads the DATA body, then never answers; the connection stays open until the server
    /// is dropped.
    Hang,
    /// Like `Accept`, but `EHLO` does not announce SMTPUTF8, as many servers still do not: a
    /// client must not send it an address that is not ASCII. Read at `EHLO`.
    NoSmtpUtf8,
}

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

/// State shared by the handle and every connection task.
struct Shared {
    behaviour: Mutex<Behaviour>,
    mail: Mutex<Vec<ReceivedMail>>,
    /// How many messages were accepted; lets `wait_for_mail` sleep until there are enough.
    accepted: watch::Sender<usize>,
    connections: AtomicUsize,
    /// Connections open right now, and the most that were ever open at once.
    open: AtomicUsize,
    most_open: AtomicUsize,
}

impl Shared {
    fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }

    fn store(&self, mail: ReceivedMail) {
        let mut all = lock(&self.mail);
        all.push(mail);
        // Still under the lock, so the count only ever grows.
        self.accepted.send_replace(all.len());
    }
}

/// A mutex poisoned by a panicking test thread still holds usable data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running server. Dropping it stops the listener and closes every open connection.
pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    /// Owns the listener and, through a `JoinSet`, every connection task: aborting it ends all.
    acceptor: JoinHandle<()>,
}

impl SmtpServer {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> SmtpServer {
        Self::start_on(0).await
    }

    /// Listens on 127.0.0.1:`port`, e.g. to bring SMTP back where the app was told it is.
    /// Retries for a while if the port is still held by a server that was just dropped.
    pub async fn start_on(port: u16) -> SmtpServer {
        let listener = bind(port).await;
        let port = listener
            .local_addr()
            .expect("the SMTP listener has a local address")
            .port();
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::Accept),
            mail: Mutex::new(Vec::new()),
            accepted: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
        });
        let acceptor = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        SmtpServer {
            port,
            shared,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Applies from the next RCPT TO / DATA on, also on connections already open.
    pub fn set_behaviour(&self, b: Behaviour) {
        *lock(&self.shared.behaviour) = b;
    }

    /// Every message accepted so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedMail> {
        lock(&self.shared.mail).clone()
    }

    /// Waits until at least `count` messages were accepted and returns all of them; panics,
    /// saying how many arrived, if that takes longer than `within`.
    pub async fn wait_for_mail(&self, count: usize, within: Duration) -> Vec<ReceivedMail> {
        let mut accepted = self.shared.accepted.subscribe();
        // The watch guard returned by `wait_for` must be gone before `received()` takes the mail
        // lock (`store` takes them in the other order), hence the bool.
        let reached = matches!(
            tokio::time::timeout(within, accepted.wait_for(|n| *n >= count)).await,
            Ok(Ok(_))
        );
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
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most TCP connections that were open at the same time, from accept until the server
    /// saw the client close (or closed it).
    pub fn most_connections_at_once(&self) -> usize {
        self.shared.most_open.load(Ordering::SeqCst)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // Cancelling the acceptor drops the listener and its JoinSet, which aborts every
        // connection task and so closes their sockets.
        self.acceptor.abort();
    }
}

async fn bind(port: u16) -> TcpListener {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + BIND_PATIENCE;
    loop {
        match try_bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("test SMTP server cannot listen on {addr}: {e}"),
        }
    }
}

fn try_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Connections of a previous server on this port may linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.most_open.fetch_max(open, Ordering::SeqCst);
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        // A client that goes away mid-session is not the server's problem.
                        let _ = serve(stream, Arc::clone(&shared)).await;
                        shared.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow for the whole test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How a DATA body ended.
enum Body {
    Complete(String),
    /// `DropDuringData`: close without answering.
    Drop,
    /// The client closed the connection.
    Eof,
}

/// One SMTP session.
async fn serve(stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();

    reply(&mut writer, "220 localhost ESMTP test").await?;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end_matches(['\r', '\n']);
        let verb = command
            .split(|c: char| c.is_whitespace() || c == ':')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                (from, to) = (None, Vec::new());
                let greeting = match shared.behaviour() {
                    Behaviour::NoSmtpUtf8 => "250-localhost\r\n250 8BITMIME",
                    _ => "250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8",
                };
                reply(&mut writer, greeting).await?;
            }
            "HELO" => {
                (from, to) = (None, Vec::new());
                reply(&mut writer, "250 localhost").await?;
            }
            "MAIL" => {
                (from, to) = (Some(path_of(command)), Vec::new());
                reply(&mut writer, "250 2.1.0 OK").await?;
            }
            "RCPT" => {
                if let Behaviour::RejectPermanent = shared.behaviour() {
                    reply(&mut writer, "550 5.1.1 mailbox unavailable").await?;
                } else {
                    to.push(path_of(command));
                    reply(&mut writer, "250 2.1.5 OK").await?;
                }
            }
            "DATA" if to.is_empty() => {
                reply(&mut writer, "554 5.5.1 no valid recipients").await?;
            }
            "DATA" => {
                reply(&mut writer, "354 end data with <CR><LF>.<CR><LF>").await?;
                let raw = match read_body(&mut reader, &shared).await? {
                    Body::Complete(raw) => raw,
                    Body::Drop | Body::Eof => return Ok(()),
                };
                let mail = ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    raw,
                };
                match shared.behaviour() {
                    Behaviour::Accept | Behaviour::RejectPermanent | Behaviour::NoSmtpUtf8 => {
                        shared.store(mail);
                        reply(&mut writer, "250 2.0.0 OK: queued").await?;
                    }
                    Behaviour::Delay(delay) => {
                        tokio::time::sleep(delay).await;
                        shared.store(mail);
                        reply(&mut writer, "250 2.0.0 OK: queued").await?;
                    }
                    Behaviour::RejectTransient => {
                        reply(&mut writer, "451 4.3.0 temporary failure, try again later").await?;
                    }
                    Behaviour::RejectPolicy => {
                        reply(&mut writer, "554 5.7.1 message refused by policy").await?;
                    }
                    Behaviour::DropDuringData => return Ok(()),
                    Behaviour::Hang => std::future::pending::<()>().await,
                }
            }
            "RSET" => {
                (from, to) = (None, Vec::new());
                reply(&mut writer, "250 2.0.0 OK").await?;
            }
            "NOOP" => reply(&mut writer, "250 2.0.0 OK").await?,
            "QUIT" => {
                reply(&mut writer, "221 2.0.0 bye").await?;
                return Ok(());
            }
            _ => reply(&mut writer, "502 5.5.2 command not recognized").await?,
        }
    }
}

/// Reads a DATA body up to the line ".", undoing dot-stuffing.
async fn read_body(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    shared: &Shared,
) -> io::Result<Body> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(Body::Eof);
        }
        if first {
            first = false;
            if let Behaviour::DropDuringData = shared.behaviour() {
                return Ok(Body::Drop);
            }
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(Body::Complete(String::from_utf8_lossy(&body).into_owned()));
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
        body.extend_from_slice(unstuffed);
    }
}

/// The address in `MAIL FROM:<a@b> ...` or `RCPT TO:<a@b>`, without the angle brackets.
fn path_of(command: &str) -> String {
    let argument = command.split_once(':').map_or("", |(_, rest)| rest).trim();
    match (argument.find('<'), argument.find('>')) {
        (Some(open), Some(close)) if open < close => argument[open + 1..close].to_owned(),
        _ => argument.split(' ').next().unwrap_or_default().to_owned(),
    }
}

async fn reply(writer: &mut OwnedWriteHalf, text: &str) -> io::Result<()> {
    writer.write_all(format!("{text}\r\n").as_bytes()).await?;
    writer.flush().await
}
