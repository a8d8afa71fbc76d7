//! A tiny SMTP server that accepts every message, for `confirmd demo`: the comparison runs on a
//! fresh machine with no mail catcher installed.
//!
//! `latency` is added before the final `250` of each message, the answer the client waits for.
//! Local catchers answer in about a millisecond, real providers over TLS in 100 ms or more; with
//! a realistic latency the demo shows the difference the modes make where it matters. The
//! production SMTP path has no such knob: this exists only in the demo.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// The catcher: listens until dropped, keeps the last message it received.
pub struct Catcher {
    address: SocketAddr,
    received: Arc<Mutex<Received>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Received {
    count: u64,
    last: Option<String>,
}

impl Catcher {
    /// Listens on a free loopback port.
    pub async fn start(latency: Duration) -> std::io::Result<Catcher> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, latency, shared.clone()));
                // Reap finished connections as we go, so the set does not grow with every one.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Catcher {
            address,
            received,
            server,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// How many messages were accepted so far.
    pub fn count(&self) -> u64 {
        self.received.lock().expect("catcher lock").count
    }

    /// The last message accepted, as received (headers and encoded body).
    pub fn last_message(&self) -> Option<String> {
        self.received.lock().expect("catcher lock").last.clone()
    }
}

impl Drop for Catcher {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

/// One SMTP session: enough of RFC 5321 for lettre (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
async fn serve(stream: TcpStream, latency: Duration, received: Arc<Mutex<Received>>) {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    if writer.write_all(b"220 confirmd-demo ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-confirmd-demo\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
            "DATA" => {
                if writer.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut message = String::new();
                loop {
                    match lines.next_line().await {
                        Ok(Some(line)) if line == "." => break,
                        Ok(Some(line)) => {
                            message.push_str(line.strip_prefix('.').unwrap_or(&line));
                            message.push_str("\r\n");
                        }
                        _ => return,
                    }
                }
                tokio::time::sleep(latency).await;
                {
                    let mut received = received.lock().expect("catcher lock");
                    received.count += 1;
                    received.last = Some(message);
                }
                b"250 OK: queued\r\n"
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 command not implemented\r\n",
        };
        if writer.write_all(reply).await.is_err() {
            return;
        }
    }
}
