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
//!   from the limit by default; see [`file_limit`]). When the cap is reached the server stops
//!   *accepting* until a connection closes, as Go's `netutil.LimitListener` and mini-redis do,
//!   rather than accepting and closing at once. A waiting client sits in the kernel's listen
//!   backlog, which costs this process no descriptor; as soon as a stalled connection is shed
//!   the next one is accepted and served. Accept-and-close would turn a flood of stalled
//!   clients into refusals for every normal client instead of a wait of at most one timeout.
//! - The body-read and per-request timeouts and the `Host` check are middleware in the router
//!   (`http::limits`), where they can answer problem+json.
//!
//! Every connection gets the peer's address as axum's [`ConnectInfo`], for the per-client
//! signup limit. Shutdown is the application's one [`CancellationToken`]: accepting stops,
//! requests in flight finish, and every connection without one closes at once, including those
//! still sending a head, so stalled clients do not hold the process for a header timeout. The
//! future returns when every connection is gone, and the caller bounds that wait with the
//! shutdown deadline.

use std::{convert::Infallible, io, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use http_body_util::BodyExt;
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

/// A connection's request counter when no request is in flight: the connection task's clone
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

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);

    loop {
        // Take a slot first: while every slot is in use, new clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
            () = shutdown.cancelled() => break,
        };
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
        // Responses are written whole; waiting for more to send (Nagle) only adds latency.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // Counts, through its clones, the requests on this connection that were read and whose
        // response is not yet fully written: one clone each, beside the two held by this loop's
        // task and by the service. While there is none, shutdown can close the connection
        // without losing a request.
        let in_flight = Arc::new(());
        let service = {
            let in_flight = Arc::clone(&in_flight);
            service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let guard = Arc::clone(&in_flight);
                let response = router.clone().call(request);
                async move {
                    let response = response.await?;
                    // The guard lives as long as the body, which hyper drops once written.
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &guard;
                            frame
                        }))
                    }))
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // Held for the connection's whole life: dropping it frees the slot.
            let _permit = permit;
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = shutdown.cancelled() => {
                    if Arc::strong_count(&in_flight) == IDLE_CLONES {
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
