//! A trace collector for the tests: an OTLP/HTTP receiver on a free port of 127.0.0.1 that
//! decodes what the service exports (`POST /v1/traces`, protobuf) with `opentelemetry-proto`
//! and keeps it, raw bytes included, so a test can both follow a trace and search everything
//! that left the process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{Router, body::Bytes, extract::State, http::header, response::IntoResponse};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value,
    trace::v1::Span,
};
use prost::Message;
use tokio::time::Instant;

/// What the receiver got so far.
#[derive(Default)]
struct Received {
    /// Every request body, as sent.
    bodies: Vec<Bytes>,
    spans: Vec<ExportedSpan>,
}

/// One exported span, with the resource it came from.
#[derive(Clone, Debug)]
pub struct ExportedSpan {
    pub service_name: Option<String>,
    pub span: Span,
}

impl ExportedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// An attribute as text, whatever its type.
    pub fn attribute(&self, key: &str) -> Option<String> {
        let value = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(match value.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            Value::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
    }

    /// Whether `self` is `ancestor` or a descendant of it among `spans`.
    pub fn descends_from(&self, ancestor: &ExportedSpan, spans: &[ExportedSpan]) -> bool {
        let mut current = self.clone();
        loop {
            if current.trace_id() != ancestor.trace_id() {
                return false;
            }
            if current.span_id() == ancestor.span_id() {
                return true;
            }
            match spans.iter().find(|s| {
                s.trace_id() == current.trace_id() && s.span_id() == current.parent_span_id()
            }) {
                Some(parent) => current = parent.clone(),
                None => return false,
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The running receiver; dropping it stops it.
pub struct OtlpReceiver {
    port: u16,
    received: Arc<Mutex<Received>>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        OtlpReceiver {
            port,
            received,
            server,
        }
    }

    /// What `telemetry.otlp_endpoint` is set to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Every byte that was sent to the receiver, for searching.
    pub fn raw(&self) -> Vec<u8> {
        self.received.lock().unwrap().bodies.concat()
    }

    /// Waits until `done` holds for the spans received so far and returns them; panics, showing
    /// the spans' names, if that takes longer than `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&[ExportedSpan]) -> bool,
    ) -> Vec<ExportedSpan> {
        let deadline = Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the spans expected did not arrive within {within:?}; got: {:?}",
                spans
                    .iter()
                    .map(|s| (
                        s.name().to_owned(),
                        s.trace_id(),
                        s.span_id(),
                        s.parent_span_id()
                    ))
                    .collect::<Vec<_>>()
            );
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> impl IntoResponse {
    let request = ExportTraceServiceRequest::decode(body.clone())
        .expect("the exporter sends an ExportTraceServiceRequest in protobuf");
    let mut received = received.lock().unwrap();
    received.bodies.push(body);
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        });
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.spans.push(ExportedSpan {
                    service_name: service_name.clone(),
                    span,
                });
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}
