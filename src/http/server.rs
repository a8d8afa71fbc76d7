//! The HTTP server: accepts TCP connections and runs each through hyper's HTTP/1.1 state machine
//! into the axum [`Router`], with the limits that keep one slow or idle client from holding what
//! every other client needs.
//!
//! `axum::serve` has none of these: a connection that sends nothing, or one header byte every
//! ten seconds, stays open for as long as its client likes, and about a thousand such
//! connections exhaust the process's file descriptors (`accept error: Too many open files`), so
//! that no normal client gets in. Here:
//!
//! - **The request head must arrive within `server.header_read_timeout_ms`** (hyper's
//!   `header_read_timeout`). Hyper starts that clock when the connection opens and again each
//!   time a kept-alive connection goes idle after a response, so the same timeout is also the
//!   keep-alive idle timeout: an idle connection is closed once it has waited that long for its
//!   next request. A client trickling its head byte by byte is cut off the same way.
//! - **Open connections are capped** below the file limit (`server.max_connections`, derived
//!   from the limit by default; see [`file_limit`]). When every slot is taken, the next
//!   connection is accepted and the *oldest connection without a request in flight* (idle
//!   between requests, or still sending its head) is closed to make room. Only when every
//!   connection is busy with a request does the newcomer wait for one to finish, and those after
//!   it wait in the kernel's listen backlog, which costs this process no descriptor. So a flood
//!   of stalled connections evicts itself, and a normal client, whose head arrives at once, is
//!   served at once. The alternatives were worse for it: closing the newcomer refuses every
//!   normal client during a flood, and not accepting until a slot frees (Go's
//!   `netutil.LimitListener`, mini-redis) made it wait for a stalled connection's header
//!   timeout, 9.9 s in the test. Closing a connection without a request in flight loses nothing
//!   the server had begun.
//! - The body-read and per-request timeouts and the `Host` check are middleware in the router
//!   (`http::limits`), where they can answer problem+json.
//!
//! HTTP/1.1 only: `axum::serve` also answered cleartext HTTP/2 (h2c) to clients that open with
//! its preface. None of this project's clients, benchmarks or tests do, and behind a
//! TLS-terminating proxy it is the proxy that speaks HTTP/2 to browsers.
//!
//! Every connection gets the peer's address as axum's [`ConnectInfo`], for the per-client
//! signup limit. Shutdown is the application's one [`CancellationToken`]: accepting stops,
//! requests in flight finish, and every connection without one closes at once, including those
//! still sending a head, so stalled clients do not hold the process for a header timeout. The
//! future returns when every connection is gone, and the caller bounds that wait with the
//! shutdown deadline.

use std::{
    collections::VecDeque,
    convert::Infallible,
    io,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    extract::ConnectInfo,
};
use hyper::body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_service::Service;
use tracing::{debug, warn};

/// How many connections the kernel may hold for us, completed but not yet accepted: the
/// waiting room while every slot is taken. std's and mio's 128 would turn a burst of more than
/// 128 waiting clients into dropped SYNs and slow retries; the kernel caps it at
/// `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `listen` (`host:port`) with a listen backlog of [`LISTEN_BACKLOG`].
pub async fn bind(listen: &str) -> io::Result<TcpListener> {
    let address = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "no address"))?;
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and mio do: a restart can bind again while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A connection's request counter when no request is in flight: the [`OpenConnection`]'s clone
/// and the service's.
const IDLE_CLONES: usize = 2;

/// What [`serve`] needs to know beyond the router.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// The longest a client may take to send a request head, counted from the connection's
    /// opening or from the end of the previous response on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
}

/// After an accept error (the process ran out of descriptors despite the cap, or the kernel
/// dropped a half-open connection), wait this long before trying again, so a persistent error
/// does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// While every slot stays taken, say so in the log at most this often.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What the accept loop keeps of each open connection, to shed it when every slot is taken.
struct OpenConnection {
    /// Cloned once per request on this connection that was read and whose response is not yet
    /// fully written, beside the clones held here and by the service ([`IDLE_CLONES`]).
    in_flight: Arc<()>,
    /// Cancelled to close the connection: at once if no request is in flight, else after it.
    close: CancellationToken,
}

impl OpenConnection {
    fn is_idle(&self) -> bool {
        Arc::strong_count(&self.in_flight) == IDLE_CLONES
    }
}

/// Open connections, oldest first; closed ones are dropped lazily.
#[derive(Default)]
struct OpenConnections(VecDeque<Weak<OpenConnection>>);

impl OpenConnections {
    fn push(&mut self, connection: &Arc<OpenConnection>, cap: usize) {
        self.0.push_back(Arc::downgrade(connection));
        if self.0.len() > 2 * cap {
            self.0.retain(|c| c.strong_count() > 0);
        }
    }

    /// Closes the oldest connection that has no request in flight (idle between requests, or
    /// still sending its head); false if every connection is busy.
    fn shed_oldest_idle(&mut self) -> bool {
        while self.0.front().is_some_and(|c| c.strong_count() == 0) {
            self.0.pop_front();
        }
        let oldest_idle = self
            .0
            .iter()
            .position(|c| c.upgrade().is_some_and(|c| c.is_idle()));
        match oldest_idle.and_then(|i| self.0.remove(i)?.upgrade()) {
            Some(connection) => {
                connection.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// A response body that counts its request as in flight until hyper has written it whole and
/// dropped it. It passes the body's size on, so that hyper still sends `Content-Length`.
struct InFlightBody {
    body: Body,
    _guard: Arc<()>,
}

impl HttpBody for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut open = OpenConnections::default();
    let mut warned_full_at = None::<Instant>;
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept error");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Every slot is taken: make room by closing the oldest connection that has no
                // request, or wait for one to finish if every connection is busy.
                let shed = open.shed_oldest_idle();
                if warned_full_at.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
                    warned_full_at = Some(Instant::now());
                    warn!(
                        max_connections = limits.max_connections,
                        shed_idle = shed,
                        "every connection slot is taken (server.max_connections)"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        };
        // Responses are written whole; waiting for more to send (Nagle) only adds latency.
        let _ = stream.set_nodelay(true);
        let record = Arc::new(OpenConnection {
            in_flight: Arc::new(()),
            close: shutdown.child_token(),
        });
        open.push(&record, limits.max_connections);
        let router = router.clone();
        let service = {
            let in_flight = Arc::clone(&record.in_flight);
            service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let guard = Arc::clone(&in_flight);
                let response = router.clone().call(request);
                async move {
                    let response = response.await?;
                    Ok::<_, Infallible>(response.map(|body| InFlightBody {
                        body,
                        _guard: guard,
                    }))
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            // Held for the connection's whole life: dropping it frees the slot.
            let _permit = permit;
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                // Shutdown, or shed to make room.
                () = record.close.cancelled() => {
                    if record.is_idle() {
                        // Idle, or still sending a head: no request is lost by closing now.
                        return;
                    }
                    // Closes the connection after the response in flight.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = outcome {
                // Header timeouts, resets and malformed requests: the client's doing, not ours.
                debug!(%peer, %error, "connection closed with an error");
            }
        });
    }

    drop(listener);
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_connection() -> (Arc<OpenConnection>, Arc<()>) {
        let record = Arc::new(OpenConnection {
            in_flight: Arc::new(()),
            close: CancellationToken::new(),
        });
        // The service's clone.
        let service = Arc::clone(&record.in_flight);
        (record, service)
    }

    #[test]
    fn shedding_closes_the_oldest_connection_without_a_request_and_spares_busy_ones() {
        let mut open = OpenConnections::default();
        let (closed, _s0) = open_connection();
        let (busy, _s1) = open_connection();
        let (idle_old, _s2) = open_connection();
        let (idle_new, _s3) = open_connection();
        for record in [&closed, &busy, &idle_old, &idle_new] {
            open.push(record, 16);
        }
        drop(closed);
        let request = Arc::clone(&busy.in_flight);

        assert!(open.shed_oldest_idle());
        assert!(idle_old.close.is_cancelled());
        assert!(!busy.close.is_cancelled() && !idle_new.close.is_cancelled());
        assert!(open.shed_oldest_idle());
        assert!(idle_new.close.is_cancelled());
        // Only the busy one is left.
        assert!(!open.shed_oldest_idle());
        assert!(!busy.close.is_cancelled());
        drop(request);
        assert!(open.shed_oldest_idle());
        assert!(busy.close.is_cancelled());
    }
}

/// The process's open-file limit: raised at start, and the default connection cap derived
/// from it.
pub mod file_limit {
    use tracing::warn;

    /// Descriptors kept back from the connection cap for everything else the process opens:
    /// the SQLite files of each pooled connection (database, WAL, shared memory), the SMTP
    /// pool, the listener, the runtime's own, logs. About 60 at the defaults; the rest is room.
    pub const RESERVED: u64 = 256;

    /// Raises the soft `RLIMIT_NOFILE` to the hard limit, as servers do (nginx's
    /// `worker_rlimit_nofile`, systemd's advice): the soft default of 1,024 is a relic of
    /// `select(2)`, which this process does not use. Returns the limit now in force.
    pub fn raise() -> u64 {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(error) => {
                let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
                warn!(%error, soft, "cannot raise the open-file limit; keeping it");
                soft
            }
        }
    }

    /// The default cap on open connections under a file limit of `limit`: all but
    /// [`RESERVED`] descriptors, and never more than half of a small limit.
    pub fn default_max_connections(limit: u64) -> usize {
        let cap = limit.saturating_sub(RESERVED).max(limit / 2).max(1);
        usize::try_from(cap).unwrap_or(usize::MAX)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_default_cap_leaves_room_below_the_file_limit() {
            assert_eq!(default_max_connections(1024), 768);
            assert_eq!(default_max_connections(65_536), 65_280);
            // A tiny limit still leaves half for the rest.
            assert_eq!(default_max_connections(300), 150);
            assert_eq!(default_max_connections(0), 1);
        }
    }
}
