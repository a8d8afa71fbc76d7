//! How exported spans reach the collector: an HTTP/1.1 POST per batch, over the hyper the server
//! already links, run on the service's own tokio runtime.
//!
//! The SDK's batch processor exports from a thread of its own that has no runtime, and blocks it
//! on each export; hyper needs a runtime, so each request is spawned onto the service's and the
//! batch thread waits for its answer. One connection per batch (every few seconds at most) is
//! cheaper than a pool to keep, and a collector that went away and came back costs nothing to
//! reconnect to. Plain HTTP only: the collector is expected beside the service (a sidecar or
//! an agent on the host), which is where the configuration check sends an `https://` endpoint.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::{
    header::{HOST, HeaderValue},
    http::uri::PathAndQuery,
};
use hyper_util::rt::TokioIo;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tokio::{net::TcpStream, runtime::Handle};

/// The client the OTLP exporter is given.
#[derive(Debug)]
pub(super) struct Collector {
    /// The service's runtime, where the requests run.
    runtime: Handle,
    /// The longest one export may take, connection included.
    timeout: Duration,
}

impl Collector {
    /// Runs its requests on the runtime of the caller, which must be inside one.
    pub(super) fn on_current_runtime(timeout: Duration) -> Collector {
        Collector {
            runtime: Handle::current(),
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let timeout = self.timeout;
        self.runtime
            .spawn(async move { tokio::time::timeout(timeout, post(request)).await? })
            .await?
    }
}

/// One request on a connection of its own.
async fn post(mut request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let authority = request
        .uri()
        .authority()
        .ok_or("the collector's endpoint has no host")?
        .clone();
    let stream = TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80))).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    // HTTP/1.1 wants the origin form and a `Host`, which hyper's connection leaves to us.
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = path.into();
    request
        .headers_mut()
        .insert(HOST, HeaderValue::from_str(authority.as_str())?);
    let response = sender.send_request(request.map(Full::new)).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
