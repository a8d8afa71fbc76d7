//! Logs and spans through `tracing`: human-readable by default, one JSON object per line with
//! `telemetry.format = "json"`. `RUST_LOG` filters as usual; without it, the caller's default
//! applies (`info`, or `warn` for `confirmd demo`, whose report would drown in request logs).

use std::{io::IsTerminal, time::Duration};

use tracing_subscriber::{
    EnvFilter,
    fmt::{format::FmtSpan, writer::BoxMakeWriter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::LogFormat;

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
/// `"info"`). Call once, from `main`; tests may call it too (a second call is ignored).
pub fn init(format: LogFormat, output: LogOutput, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
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
    let _ = match format {
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
}

/// A duration as milliseconds rounded to 0.01 ms: the unit every latency field is logged in.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
