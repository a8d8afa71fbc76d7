//! A mail catcher: a small SMTP server, inside the process, that accepts every message and keeps
//! count. `confirmd demo` sends its confirmation emails here, so that the comparison of the two
//! modes runs on a fresh machine with no mail catcher installed; tests and benches can use it
//! the same way.
//!
//! It speaks the part of RFC 5321 an SMTP client needs to deliver: `EHLO`/`HELO` (advertising
//! `8BITMIME`, `SMTPUTF8` and `SIZE`; no `AUTH`, no `STARTTLS`, no `PIPELINING`), `MAIL FROM`,
//! `RCPT TO`, `DATA` (dot-unstuffed, ended by `<CRLF>.<CRLF>`), `RSET`, `NOOP` and `QUIT`. Commands
//! out of order are answered `503`, commands it knows but does not offer `502`, anything else
//! `500`. A connection carries any number of messages (lettre and confirmd's pool reuse theirs),
//! and any number of connections are served at once.
//!
//! **Latency.** Local catchers answer in about a millisecond; a real provider, over TLS and after
//! scanning the message, takes 100 ms or more per email. [`Catcher::start`] takes a latency to
//! play that provider: it is added before the reply to the end of `DATA`, because that is where
//! real servers spend their time (the commands before it are answered at once) and it is the
//! reply a sender waits for before it may call the email sent. The production SMTP path has no
//! such knob: the delay exists only here.
//!
//! **Memory.** It keeps the count of messages accepted and only the last [`KEPT`] of them (all
//! of them if [`Config::keep_all`] asks, as tests do), and refuses a message over
//! [`MAX_MESSAGE`] bytes, so it can run under any load without growing.
//!
//! **Faults.** The integration tests use the same catcher to see how a sender copes with a
//! server that fails: [`Catcher::set_behaviour`] makes it slow, refuse (`4xx`, `5xx`), drop the
//! connection mid-`DATA` or never answer (see [`Behaviour`]). It also counts connections
//! ([`Catcher::connections`], [`Catcher::most_connections_at_once`]), which shows whether a
//! sender pools them.

use std::{
    collections::VecDeque,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpListener, TcpSocket, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How many of the latest messages [`Catcher::recent`] returns; older ones are only counted.
pub const KEPT: usize = 16;

/// The largest message accepted, in bytes (advertised as `SIZE`). A confirmation email is a few
/// kilobytes.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// The longest line read, command or message text, before the connection is closed: RFC 5321
/// allows 1000 bytes; this is generous and still bounded.
const MAX_LINE: usize = 8 * 1024;

/// Recipients of one message beyond which `RCPT TO` is answered `452`, as RFC 5321 allows.
const MAX_RECIPIENTS: usize = 100;

/// How long [`Catcher::start_with`] keeps retrying a fixed port that a catcher just dropped may
/// still hold.
const BIND_PATIENCE: Duration = Duration::from_secs(2);

/// What the catcher does with the next transaction. It is read when it matters (at `EHLO`, at
/// `RCPT TO`, at the start and at the end of the `DATA` body), so a change also reaches
/// connections a client keeps open in its pool.
#[derive(Clone, Debug, Default)]
pub enum Behaviour {
    /// `250` to everything; the message is kept at the end of `DATA`.
    #[default]
    Accept,
    /// Like `Accept`, but waits this long (on top of the latency) before keeping the message
    /// and answering `250`.
    Delay(Duration),
    /// `451 4.3.0` at the end of `DATA`; the message is not kept.
    RejectTransient,
    /// `550 5.1.1` to `RCPT TO`: the mailbox does not exist.
    RejectPermanent,
    /// `554 5.7.1` at the end of `DATA`: refused by policy, whoever the recipient.
    RejectPolicy,
    /// Closes the connection, without answering, once the client starts sending the body.
    DropDuringData,
    /// Reads the body, then never answers; the connection stays open until the catcher is
    /// dropped or stopped.
    Hang,
    /// Like `Accept`, but `EHLO` does not announce `SMTPUTF8`, as many servers still do not: a
    /// client must not send it an address that is not ASCII.
    NoSmtpUtf8,
}

/// How to start a catcher; [`Catcher::start`] is the demo's: a free port, one latency, the
/// last [`KEPT`] messages.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The port of 127.0.0.1 to listen on; 0 for a free one.
    pub port: u16,
    /// Added before the reply to every message's end (see the module docs).
    pub latency: Duration,
    /// Keep every message, not only the last [`KEPT`]: for a test, which reads them all.
    pub keep_all: bool,
}

/// A running catcher on a loopback port. Dropping it stops it too, without waiting; [`stop`]
/// waits for every connection to finish.
///
/// [`stop`]: Catcher::stop
pub struct Catcher {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    /// Cancelled to stop: the listener stops accepting, idle connections are told `421` and
    /// closed, a message whose end has arrived still gets its reply.
    shutdown: CancellationToken,
    /// Cancelled on drop: every connection is closed at once, mid-reply or not, as a server
    /// that goes away does.
    abort: CancellationToken,
    /// The accept loop and every connection, so that [`Catcher::stop`] can wait for them.
    tasks: TaskTracker,
}

/// One message the catcher accepted: the envelope, and the message as the client sent it (dot
/// stuffing undone, line endings kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The `MAIL FROM` address, without angle brackets; empty for the null sender `<>`.
    pub from: String,
    /// The `RCPT TO` addresses, in order.
    pub to: Vec<String>,
    /// Headers and body, exactly as received between `DATA` and the final `.`.
    pub data: Vec<u8>,
}

/// What arrived and how to answer, shared by the handle and every connection.
struct Inbox {
    state: Mutex<InboxState>,
    /// How many messages were accepted, for [`Catcher::wait_for`] to wait on.
    accepted: watch::Sender<usize>,
    keep_all: bool,
    behaviour: Mutex<Behaviour>,
    /// Connections accepted so far, open now, and the most that were ever open at once.
    connections: AtomicUsize,
    open: AtomicUsize,
    most_open: AtomicUsize,
}

#[derive(Default)]
struct InboxState {
    /// Every message accepted since the start.
    received: usize,
    /// The last [`KEPT`] of them (or all), oldest first.
    recent: VecDeque<Message>,
}

/// A mutex poisoned by a panic still holds usable data: a counter, a list, a behaviour.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        lock(&self.state)
    }

    fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }

    fn accept(&self, message: Message) {
        let mut state = self.lock();
        state.received += 1;
        if state.recent.len() == KEPT && !self.keep_all {
            state.recent.pop_front();
        }
        state.recent.push_back(message);
        // Still under the lock, so the count only ever grows.
        self.accepted.send_replace(state.received);
    }
}

impl Catcher {
    /// Listens on a free port of 127.0.0.1 and serves until stopped. Every message is answered
    /// `latency` after its end arrives (see the module docs).
    pub async fn start(latency: Duration) -> io::Result<Catcher> {
        Catcher::start_with(Config {
            latency,
            ..Config::default()
        })
        .await
    }

    /// Listens as `config` says and serves until stopped. A fixed port still held by a catcher
    /// that was just dropped is retried for a while.
    pub async fn start_with(config: Config) -> io::Result<Catcher> {
        let listener = bind(config.port).await?;
        let addr = listener.local_addr()?;
        let catcher = Catcher {
            addr,
            inbox: Arc::new(Inbox {
                state: Mutex::default(),
                accepted: watch::Sender::new(0),
                keep_all: config.keep_all,
                behaviour: Mutex::default(),
                connections: AtomicUsize::new(0),
                open: AtomicUsize::new(0),
                most_open: AtomicUsize::new(0),
            }),
            shutdown: CancellationToken::new(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        catcher.tasks.spawn(accept_loop(
            listener,
            Arc::clone(&catcher.inbox),
            config.latency,
            catcher.shutdown.clone(),
            catcher.abort.clone(),
            catcher.tasks.clone(),
        ));
        Ok(catcher)
    }

    /// Applies from the next `EHLO`, `RCPT TO` or `DATA` on, also on connections already open.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.inbox.behaviour) = behaviour;
    }

    /// Waits until at least `count` messages were accepted, for at most `within`; whether they
    /// were.
    pub async fn wait_for(&self, count: usize, within: Duration) -> bool {
        let mut accepted = self.inbox.accepted.subscribe();
        matches!(
            tokio::time::timeout(within, accepted.wait_for(|n| *n >= count)).await,
            Ok(Ok(_))
        )
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inbox.connections.load(Ordering::SeqCst)
    }

    /// The most TCP connections that were open at the same time, from accept until the client
    /// closed (or the catcher did).
    pub fn most_connections_at_once(&self) -> usize {
        self.inbox.most_open.load(Ordering::SeqCst)
    }

    /// Where it listens, for an SMTP client's host and port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many messages were accepted so far. A message is counted before its `250` is sent, so
    /// once a client has its answer, the count includes it.
    pub fn received(&self) -> usize {
        self.inbox.lock().received
    }

    /// The last messages accepted (at most [`KEPT`], unless [`Config::keep_all`]), oldest first.
    pub fn recent(&self) -> Vec<Message> {
        self.inbox.lock().recent.iter().cloned().collect()
    }

    /// Stops gracefully: no new connections; each connection finishes the message whose end it
    /// has received (and answers it), idle ones are told `421` and closed; returns when all
    /// are done.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Catcher {
    fn drop(&mut self) {
        // A server that goes away: no new connections, and the open ones closed at once.
        self.shutdown.cancel();
        self.abort.cancel();
    }
}

async fn bind(port: u16) -> io::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + BIND_PATIENCE;
    loop {
        let bound = TcpSocket::new_v4().and_then(|socket| {
            // Connections of a previous catcher on this port may linger in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        });
        match bound {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bound => return bound,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inbox: Arc<Inbox>,
    latency: Duration,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                inbox.connections.fetch_add(1, Ordering::SeqCst);
                let open = inbox.open.fetch_add(1, Ordering::SeqCst) + 1;
                inbox.most_open.fetch_max(open, Ordering::SeqCst);
                let session = Session::new(stream, Arc::clone(&inbox), latency, shutdown.clone());
                let inbox = Arc::clone(&inbox);
                let abort = abort.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        // A client that goes away mid-session is its own business.
                        _ = session.run() => {}
                        // Dropping the session closes its socket.
                        () = abort.cancelled() => {}
                    }
                    inbox.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            // Out of file descriptors, say: back off rather than spin on the error.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// One line as read from the client.
enum Line {
    /// A complete line, line ending included.
    Complete,
    /// The client closed the connection (mid-line or not).
    Closed,
    /// Longer than [`MAX_LINE`].
    TooLong,
}

/// How a `DATA` body ended.
enum Body {
    Complete(Vec<u8>),
    /// Over [`MAX_MESSAGE`]: read to its end and discarded.
    TooBig,
    /// The client went away, or the catcher is stopping.
    Abandoned,
    /// [`Behaviour::DropDuringData`]: close without answering.
    Dropped,
    TooLong,
}

/// One SMTP connection: the greeting, then commands until `QUIT`, the client leaves, or the
/// catcher stops.
struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    inbox: Arc<Inbox>,
    latency: Duration,
    shutdown: CancellationToken,
    /// The line being read, reused.
    line: Vec<u8>,
    /// `EHLO` or `HELO` was said: a client must introduce itself before `MAIL`.
    greeted: bool,
    /// The open transaction's `MAIL FROM`; `None` between transactions.
    from: Option<String>,
    to: Vec<String>,
}

impl Session {
    fn new(
        stream: TcpStream,
        inbox: Arc<Inbox>,
        latency: Duration,
        shutdown: CancellationToken,
    ) -> Session {
        // Replies are small writes that the client waits for: send each at once (see
        // src/mail/pool.rs for what Nagle's algorithm costs otherwise).
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Session {
            reader: BufReader::new(reader),
            writer,
            inbox,
            latency,
            shutdown,
            line: Vec::new(),
            greeted: false,
            from: None,
            to: Vec::new(),
        }
    }

    async fn run(mut self) -> io::Result<()> {
        self.reply("220 confirmd-catcher ESMTP ready").await?;
        let shutdown = self.shutdown.clone();
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => None,
                read = self.read_line() => Some(read?),
            };
            let Some(read) = read else {
                return self.reply("421 4.3.2 the catcher is stopping").await;
            };
            match read {
                Line::Complete => {}
                Line::Closed => return Ok(()),
                Line::TooLong => return self.reply("500 5.5.2 line too long").await,
            }
            let text = String::from_utf8_lossy(&self.line);
            let command = text.trim_end_matches(['\r', '\n']).to_owned();
            let (verb, argument) = command.split_once(' ').unwrap_or((&command, ""));
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    self.greet();
                    let smtputf8 = match self.inbox.behaviour() {
                        Behaviour::NoSmtpUtf8 => "",
                        _ => "250-SMTPUTF8\r\n",
                    };
                    let reply = format!(
                        "250-confirmd-catcher\r\n250-8BITMIME\r\n{smtputf8}250 SIZE {MAX_MESSAGE}"
                    );
                    self.reply(&reply).await?;
                }
                "HELO" => {
                    self.greet();
                    self.reply("250 confirmd-catcher").await?;
                }
                "MAIL" => self.mail(argument).await?,
                "RCPT" => self.rcpt(argument).await?,
                "DATA" => {
                    if !self.data().await? {
                        return Ok(());
                    }
                }
                "RSET" => {
                    self.end_transaction();
                    self.reply("250 2.0.0 OK").await?;
                }
                "NOOP" => self.reply("250 2.0.0 OK").await?,
                "QUIT" => return self.reply("221 2.0.0 bye").await,
                "HELP" | "VRFY" | "EXPN" | "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "TURN" => {
                    self.reply("502 5.5.1 command not implemented").await?;
                }
                _ => self.reply("500 5.5.2 command not recognized").await?,
            }
        }
    }

    fn greet(&mut self) {
        self.greeted = true;
        self.end_transaction();
    }

    fn end_transaction(&mut self) {
        self.from = None;
        self.to.clear();
    }

    async fn mail(&mut self, argument: &str) -> io::Result<()> {
        if !self.greeted {
            return self.reply("503 5.5.1 say EHLO first").await;
        }
        if self.from.is_some() {
            return self.reply("503 5.5.1 a transaction is already open").await;
        }
        match path_after(argument, "FROM:") {
            Some(from) => {
                self.from = Some(from);
                self.reply("250 2.1.0 OK").await
            }
            None => self.reply("501 5.5.4 syntax: MAIL FROM:<address>").await,
        }
    }

    async fn rcpt(&mut self, argument: &str) -> io::Result<()> {
        if self.from.is_none() {
            return self.reply("503 5.5.1 MAIL FROM first").await;
        }
        if let Behaviour::RejectPermanent = self.inbox.behaviour() {
            return self.reply("550 5.1.1 mailbox unavailable").await;
        }
        if self.to.len() == MAX_RECIPIENTS {
            return self.reply("452 4.5.3 too many recipients").await;
        }
        match path_after(argument, "TO:") {
            Some(to) => {
                self.to.push(to);
                self.reply("250 2.1.5 OK").await
            }
            None => self.reply("501 5.5.4 syntax: RCPT TO:<address>").await,
        }
    }

    /// Receives one message and answers it. False when the connection is done for.
    async fn data(&mut self) -> io::Result<bool> {
        if self.to.is_empty() {
            self.reply("503 5.5.1 RCPT TO first").await?;
            return Ok(true);
        }
        self.reply("354 end data with <CR><LF>.<CR><LF>").await?;
        let body = self.read_body().await?;
        let from = self.from.take().unwrap_or_default();
        let to = std::mem::take(&mut self.to);
        match body {
            Body::Complete(data) => {
                let extra = match self.inbox.behaviour() {
                    Behaviour::Accept | Behaviour::RejectPermanent | Behaviour::NoSmtpUtf8 => {
                        Duration::ZERO
                    }
                    Behaviour::Delay(delay) => delay,
                    Behaviour::RejectTransient => {
                        self.reply("451 4.3.0 temporary failure, try again later")
                            .await?;
                        return Ok(true);
                    }
                    Behaviour::RejectPolicy => {
                        self.reply("554 5.7.1 message refused by policy").await?;
                        return Ok(true);
                    }
                    Behaviour::DropDuringData => return Ok(false),
                    Behaviour::Hang => {
                        self.shutdown.cancelled().await;
                        return Ok(false);
                    }
                };
                // Where a real provider spends its time; see the module docs.
                tokio::time::sleep(self.latency + extra).await;
                self.inbox.accept(Message { from, to, data });
                self.reply("250 2.0.0 OK: queued").await?;
                Ok(true)
            }
            Body::TooBig => {
                self.reply("552 5.3.4 message too big").await?;
                Ok(true)
            }
            Body::Abandoned | Body::Dropped => Ok(false),
            Body::TooLong => {
                self.reply("500 5.5.2 line too long").await?;
                Ok(false)
            }
        }
    }

    /// Reads a message up to the line `.`, undoing dot-stuffing. Stopping the catcher abandons
    /// a message whose end has not arrived: the client was not answered, so it still owns it.
    async fn read_body(&mut self) -> io::Result<Body> {
        let mut data = Vec::new();
        let mut too_big = false;
        let mut first = true;
        let shutdown = self.shutdown.clone();
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => return Ok(Body::Abandoned),
                read = self.read_line() => read?,
            };
            match read {
                Line::Complete => {}
                Line::Closed => return Ok(Body::Abandoned),
                Line::TooLong => return Ok(Body::TooLong),
            }
            if std::mem::take(&mut first)
                && matches!(self.inbox.behaviour(), Behaviour::DropDuringData)
            {
                return Ok(Body::Dropped);
            }
            if self.line == b".\r\n" || self.line == b".\n" {
                return Ok(if too_big {
                    Body::TooBig
                } else {
                    Body::Complete(data)
                });
            }
            let unstuffed = self.line.strip_prefix(b".").unwrap_or(&self.line);
            too_big = too_big || data.len() + unstuffed.len() > MAX_MESSAGE;
            if !too_big {
                data.extend_from_slice(unstuffed);
            }
        }
    }

    /// Reads one line into `self.line`, at most [`MAX_LINE`] bytes of it.
    async fn read_line(&mut self) -> io::Result<Line> {
        self.line.clear();
        let limit = MAX_LINE as u64;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .await?;
        Ok(if self.line.ends_with(b"\n") {
            Line::Complete
        } else if read == MAX_LINE {
            Line::TooLong
        } else {
            Line::Closed
        })
    }

    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.writer
            .write_all(format!("{text}\r\n").as_bytes())
            .await
    }
}

/// The address in `FROM:<a@b> SIZE=1` or `TO:<a@b>` (after `prefix`, in any case), without the
/// angle brackets; `None` if the argument does not start with `prefix`.
fn path_after(argument: &str, prefix: &str) -> Option<String> {
    let head = argument.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let path = argument[prefix.len()..].trim_start();
    let path = path.split(' ').next().unwrap_or_default();
    Some(
        path.strip_prefix('<')
            .and_then(|p| p.strip_suffix('>'))
            .unwrap_or(path)
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use lettre::{
        AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
        address::Envelope,
        message::Mailbox,
        transport::smtp::{client::AsyncSmtpConnection, extension::ClientId},
    };
    use tokio::{io::AsyncBufReadExt, task::JoinSet};

    use super::*;

    /// lettre's plain-SMTP transport, one connection per message.
    fn transport(catcher: &Catcher) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(catcher.addr().ip().to_string())
            .port(catcher.addr().port())
            .build()
    }

    /// One lettre connection, kept open across messages (as confirmd's pool keeps its own).
    async fn connect(catcher: &Catcher) -> AsyncSmtpConnection {
        let addr = catcher.addr();
        AsyncSmtpConnection::connect_tokio1(
            (addr.ip(), addr.port()),
            None,
            &ClientId::default(),
            None,
            None,
        )
        .await
        .unwrap()
    }

    fn envelope(to: &str) -> Envelope {
        Envelope::new(
            Some("sender@example.com".parse().unwrap()),
            vec![to.parse().unwrap()],
        )
        .unwrap()
    }

    fn message(to: &str, body: &str) -> lettre::Message {
        lettre::Message::builder()
            .from("Sender <sender@example.com>".parse::<Mailbox>().unwrap())
            .to(to.parse::<Mailbox>().unwrap())
            .subject("Grüße from the catcher test")
            .body(body.to_owned())
            .unwrap()
    }

    #[tokio::test]
    async fn a_message_sent_by_lettre_arrives_intact_with_its_envelope() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let email = message(
            "Ann <ann@example.com>",
            "Hello Ann,\nthis is the body: ünïcödé.\n",
        );

        transport(&catcher).send(email.clone()).await.unwrap();

        assert_eq!(catcher.received(), 1);
        let received = catcher.recent();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].from, "sender@example.com");
        assert_eq!(received[0].to, ["ann@example.com"]);
        // lettre ends the message with the terminator's CRLF; the message itself is unchanged.
        let sent = email.formatted();
        assert_eq!(
            received[0].data.trim_ascii_end(),
            sent.trim_ascii_end(),
            "received:\n{}",
            String::from_utf8_lossy(&received[0].data)
        );
    }

    #[tokio::test]
    async fn lines_that_start_with_a_dot_come_back_unstuffed() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let data = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nbetween\r\n.";
        let mut connection = connect(&catcher).await;

        connection
            .send(&envelope("dots@example.com"), data)
            .await
            .unwrap();

        let received = catcher.recent();
        // Only the terminator's CRLF is added: it ends the last line.
        let mut expected = data.to_vec();
        expected.extend_from_slice(b"\r\n");
        assert_eq!(
            String::from_utf8_lossy(&received[0].data),
            String::from_utf8_lossy(&expected)
        );
    }

    #[tokio::test]
    async fn one_connection_carries_several_messages_and_resets_between_them() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let mut connection = connect(&catcher).await;

        for i in 0..3 {
            let to = format!("user{i}@example.com");
            let data = format!("Subject: number {i}\r\n\r\nbody {i}\r\n");
            connection
                .send(&envelope(&to), data.as_bytes())
                .await
                .unwrap();
            assert!(connection.test_connected().await, "NOOP after message {i}");
        }
        connection.quit().await.unwrap();

        assert_eq!(catcher.received(), 3);
        let recipients: Vec<Vec<String>> = catcher.recent().into_iter().map(|m| m.to).collect();
        assert_eq!(
            recipients,
            [
                ["user0@example.com"],
                ["user1@example.com"],
                ["user2@example.com"]
            ]
        );
    }

    #[tokio::test]
    async fn concurrent_connections_are_all_counted_and_only_the_latest_kept() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let transport = transport(&catcher);
        let total = KEPT + 8;

        let mut sends = JoinSet::new();
        for i in 0..total {
            let transport = transport.clone();
            sends.spawn(async move {
                transport
                    .send(message(&format!("user{i}@example.com"), "hi"))
                    .await
            });
        }
        while let Some(sent) = sends.join_next().await {
            sent.unwrap().unwrap();
        }

        assert_eq!(catcher.received(), total);
        assert_eq!(catcher.recent().len(), KEPT);
    }

    #[tokio::test]
    async fn the_end_of_data_is_answered_no_sooner_than_the_latency() {
        let latency = Duration::from_millis(200);
        let catcher = Catcher::start(latency).await.unwrap();

        let started = Instant::now();
        transport(&catcher)
            .send(message("slow@example.com", "hi"))
            .await
            .unwrap();

        // A lower bound only: a sleep never ends early, however busy the machine.
        assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
        assert_eq!(catcher.received(), 1);
    }

    /// A raw client, to see the replies a polite client never provokes.
    struct Raw {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Raw {
        async fn connect(catcher: &Catcher) -> Raw {
            let (reader, writer) = TcpStream::connect(catcher.addr())
                .await
                .unwrap()
                .into_split();
            let mut raw = Raw {
                reader: BufReader::new(reader),
                writer,
            };
            assert!(raw.reply().await.starts_with("220 "));
            raw
        }

        /// The last line of the next reply (multi-line replies have `-` after the code).
        async fn reply(&mut self) -> String {
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).await.unwrap();
                if line.is_empty() || line.as_bytes().get(3) != Some(&b'-') {
                    return line.trim_end().to_owned();
                }
            }
        }

        async fn say(&mut self, command: &str) -> String {
            self.writer
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            self.reply().await
        }
    }

    #[tokio::test]
    async fn commands_out_of_order_or_unknown_are_refused_with_their_codes() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let mut client = Raw::connect(&catcher).await;

        for (command, code) in [
            ("MAIL FROM:<a@example.com>", "503"),
            ("EHLO client.example", "250"),
            ("RCPT TO:<b@example.com>", "503"),
            ("DATA", "503"),
            ("MAIL <a@example.com>", "501"),
            ("MAIL FROM:<a@example.com>", "250"),
            ("MAIL FROM:<a@example.com>", "503"),
            ("DATA", "503"),
            ("RSET", "250"),
            ("NOOP", "250"),
            ("VRFY someone", "502"),
            ("STARTTLS", "502"),
            ("FROB", "500"),
            ("QUIT", "221"),
        ] {
            let reply = client.say(command).await;
            assert!(reply.starts_with(code), "{command} → {reply}");
        }
        assert_eq!(catcher.received(), 0);
    }

    /// The tests' fault knob reaches a connection that is already open, at the command it
    /// names, and a dropped catcher closes the connection at once, as a server that goes away.
    #[tokio::test]
    async fn the_behaviour_applies_to_open_connections_and_drop_closes_them() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let mut client = Raw::connect(&catcher).await;
        assert!(client.say("EHLO client.example").await.starts_with("250"));
        assert!(
            client
                .say("MAIL FROM:<a@example.com>")
                .await
                .starts_with("250")
        );

        catcher.set_behaviour(Behaviour::RejectPermanent);
        let refused = client.say("RCPT TO:<b@example.com>").await;
        assert!(refused.starts_with("550 5.1.1"), "{refused}");
        catcher.set_behaviour(Behaviour::Accept);
        assert!(
            client
                .say("RCPT TO:<b@example.com>")
                .await
                .starts_with("250")
        );
        assert!(client.say("DATA").await.starts_with("354"));
        catcher.set_behaviour(Behaviour::RejectPolicy);
        let refused = client.say("Subject: hi\r\n\r\nbody\r\n.").await;
        assert!(refused.starts_with("554 5.7.1"), "{refused}");
        assert_eq!(catcher.received(), 0);
        assert_eq!(
            (catcher.connections(), catcher.most_connections_at_once()),
            (1, 1)
        );

        catcher.set_behaviour(Behaviour::Hang);
        assert!(
            client
                .say("MAIL FROM:<a@example.com>")
                .await
                .starts_with("250")
        );
        assert!(
            client
                .say("RCPT TO:<b@example.com>")
                .await
                .starts_with("250")
        );
        assert!(client.say("DATA").await.starts_with("354"));
        client
            .writer
            .write_all(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            .await
            .unwrap();
        drop(catcher);
        // No answer to the hung message: the connection ends instead.
        let closed = tokio::time::timeout(Duration::from_secs(5), client.reply())
            .await
            .expect("a dropped catcher closes its connections");
        assert_eq!(closed, "");
    }

    #[tokio::test]
    async fn stop_closes_idle_connections_with_421_and_waits_for_them() {
        let catcher = Catcher::start(Duration::ZERO).await.unwrap();
        let addr = catcher.addr();
        let mut client = Raw::connect(&catcher).await;
        assert!(client.say("EHLO client.example").await.starts_with("250"));

        tokio::time::timeout(Duration::from_secs(10), catcher.stop())
            .await
            .expect("stop returns once its connections are closed");

        assert!(client.reply().await.starts_with("421"));
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens any more"
        );
    }

    #[test]
    fn the_path_is_read_without_brackets_or_parameters() {
        assert_eq!(
            path_after("FROM:<a@b.c> SIZE=10", "FROM:").as_deref(),
            Some("a@b.c")
        );
        assert_eq!(path_after("to: <x@y.z>", "TO:").as_deref(), Some("x@y.z"));
        assert_eq!(path_after("FROM:<>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_after("<a@b.c>", "FROM:"), None);
    }
}
