//! Logs and spans through `tracing`: human-readable by default, one JSON object per line with
//! `telemetry.format = "json"`. `RUST_LOG` filters as usual; without it, the caller's default
//! applies (`info`, or `warn` for `confirmd demo`, whose report would drown in request logs).
//!
//! With `telemetry.otlp_endpoint` set, the same spans are also exported as OpenTelemetry traces
//! (OTLP/HTTP, protobuf) by `tracing-opentelemetry`: there is no second instrumentation. A
//! signup is one trace: the `request` span, its `db.transaction`, and a `delivery` span for each
//! attempt at its email with the `smtp.send` inside it. A background delivery joins the trace
//! through the `traceparent` its outbox row keeps (see [`crate::delivery`]). Request and delivery
//! spans carry a `trace_id` field, so every log line inside them names its trace.
//!
//! Export must never slow a request nor lose a signup: a finished span is handed to the SDK's
//! batch processor, which exports from a thread of its own, and a span that finds the queue full
//! is dropped and counted in `confirmd_trace_spans_dropped_total`.

use std::{
    io::IsTerminal,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span as SdkSpan,
        SpanData, SpanExporter, SpanProcessor,
    },
};
use prometheus::IntCounter;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    fmt::{format::FmtSpan, writer::BoxMakeWriter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::{LogFormat, TelemetrySettings};

mod collector;

/// Spans finished but not yet handed to the exporter, beyond which new ones are dropped: a
/// minute of a busy instance's signups while the collector is away, a few megabytes at most.
const QUEUE_CAPACITY: usize = 8192;
/// The longest one export may take before the batch is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last batch to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Spans dropped because the exporter fell behind. Process-wide, unlike the other metrics,
/// because the tracing subscriber that exports is: every application's registry shows it.
static SPANS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "confirmd_trace_spans_dropped_total",
        "Spans dropped unexported because the trace collector was down or slow",
    )
    .expect("valid counter")
});

/// `confirmd_trace_spans_dropped_total`, for an application's registry.
pub fn spans_dropped() -> IntCounter {
    SPANS_DROPPED.clone()
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// The service's logs: all it prints.
    Stdout,
    /// An operator command's logs, kept out of the report it prints on stdout, so that
    /// `confirmd outbox --json` stays one JSON object whatever `RUST_LOG` says.
    Stderr,
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else by `default_filter` (such as
/// `"info"`), exporting traces if `telemetry.otlp_endpoint` is set. Call once, from `main`;
/// tests may call it too (a second call is ignored). Call it inside the tokio runtime the
/// exporter is to send from; keep what it returns until the end, and shut it down then, so the
/// last spans are sent.
pub fn init(
    settings: &TelemetrySettings,
    output: LogOutput,
    default_filter: &str,
) -> anyhow::Result<Traces> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let provider = exporting(settings)?;
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("confirmd")));
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let (writer, terminal) = match output {
        LogOutput::Stdout => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ),
        LogOutput::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let _ = match settings.format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_span_events(FmtSpan::NONE)
                    .with_ansi(terminal),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .with_current_span(true)
                    .with_span_list(true),
            )
            .try_init(),
    };
    Ok(Traces { provider })
}

/// The trace exporter, if there is one: [`Traces::shutdown`] sends what is still batched.
#[must_use = "shut it down at the end, or the last spans are lost"]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Sends the spans still batched, waiting at most a couple of seconds for the collector.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(%error, "the last spans may not have been exported");
        }
    }
}

/// The tracer provider that exports to `telemetry.otlp_endpoint`, or `None` when it is empty.
fn exporting(settings: &TelemetrySettings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let endpoint = settings.otlp_endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(collector::Collector::on_current_runtime(EXPORT_TIMEOUT))
        .build()?;
    let pending = Arc::new(AtomicUsize::new(0));
    let batches = BatchSpanProcessor::new(
        Handed {
            exporter,
            pending: pending.clone(),
        },
        BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_CAPACITY)
            .build(),
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(CountDrops { batches, pending })
        // A caller that sent a `traceparent` decided for its whole trace, and a delivery follows
        // its signup's decision; only new traces are sampled here.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sampling_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.trim().to_owned())
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// The SDK's batch processor drops a span when its queue is full, but keeps the count to itself.
/// In front of it, this admits at most [`QUEUE_CAPACITY`] spans not yet handed to the exporter
/// (with the SDK's queue as large, so it never fills) and counts the ones it turns away.
#[derive(Debug)]
struct CountDrops {
    batches: BatchSpanProcessor,
    /// Spans admitted and not yet handed to the exporter; [`Handed`] counts them out.
    pending: Arc<AtomicUsize>,
}

impl SpanProcessor for CountDrops {
    fn on_start(&self, span: &mut SdkSpan, cx: &Context) {
        self.batches.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= QUEUE_CAPACITY {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            SPANS_DROPPED.inc();
            return;
        }
        self.batches.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.batches.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.batches.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.batches.set_resource(resource);
    }
}

/// The exporter, counting each batch out of [`CountDrops`]'s queue as it takes it.
#[derive(Debug)]
struct Handed<E> {
    exporter: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Handed<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.pending.fetch_sub(batch.len(), Ordering::AcqRel);
        self.exporter.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

/// Makes `span` a child of the caller's span named by a W3C `traceparent`; a missing or
/// malformed one leaves it where it is (a new trace), never an error. Then records the span's
/// `trace_id` field, so its log lines name the trace. Without export, there is no trace: nothing
/// to do.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let parent = TraceContextPropagator::new().extract(&Traceparent(traceparent));
        if parent.span().span_context().is_valid() {
            // Fails only when the span is disabled or exports nothing: then it has no trace.
            let _ = span.set_parent(parent);
        }
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
    }
}

/// The W3C `traceparent` of `span`, to carry its trace across the outbox; `None` when traces
/// are not exported.
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut written = None;
    TraceContextPropagator::new().inject_context(&context, &mut Written(&mut written));
    written
}

/// A lone `traceparent` as the propagator reads it; `tracestate` is not kept.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Where the propagator writes a `traceparent`.
struct Written<'a>(&'a mut Option<String>);

impl Injector for Written<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            *self.0 = Some(value);
        }
    }
}

/// A duration as milliseconds rounded to 0.01 ms: the unit every latency field is logged in.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
