//! Prometheus metrics, served at `GET /metrics`.
//!
//! Each application owns its own registry (no process-wide globals), so the tests can run
//! several applications in one process and each counts only its own work. What is measured:
//!
//! - `confirmd_http_request_duration_seconds{method, route, mode, status}`: every request;
//! - `confirmd_emails_total{outcome}`: send attempts that ended `sent`, `retried` or `failed`;
//! - `confirmd_smtp_send_duration_seconds`: one SMTP send, connection included;
//! - `confirmd_queue_wait_seconds`: background mode, from the commit to a worker picking it up;
//! - `confirmd_signup_group_size`: for each signup, how many were committed in its transaction
//!   (see the group-commit writer in `store`);
//! - `confirmd_outbox_emails{state}`: queued, sending and failed outbox rows, counted when
//!   scraped off indexes that hold only them, so a scrape costs the same at any table size. Sent
//!   and superseded rows are not counted: sends are counted as they happen
//!   (`confirmd_emails_total`), and the rows are pruned after `retention.sent_days`;
//! - `confirmd_pruned_rows_total{what}`: rows the pruner deleted: `sent_emails` (sent and
//!   superseded), `failed_emails`, `pending_signups` (users, their tokens and emails going with
//!   them), `expired_tokens` (of confirmed users);
//! - `confirmd_smtp_up`: 1 if the SMTP server answered the last background check, 0 if not (and
//!   until the first check has answered).
//! - `confirmd_trace_spans_dropped_total`: spans not exported because the trace collector was
//!   down or slow (see `crate::telemetry`); process-wide, as the exporter is.
//! - `confirmd_task_restarts_total{task}`: internal tasks (writer, worker, sweeper, pruner, SMTP
//!   check)
//!   restarted after a panic (see `crate::supervise`).

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

use crate::{
    store::{ActiveCounts, Prune},
    supervise::Tasks,
};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Metrics {
    registry: Registry,
    http_requests: HistogramVec,
    emails: IntCounterVec,
    smtp_send: HistogramVec,
    queue_wait: HistogramVec,
    signup_group: Histogram,
    outbox: IntGaugeVec,
    pruned: IntCounterVec,
    smtp_up: IntGauge,
}

/// How an attempt to send one email ended, for `confirmd_emails_total`.
#[derive(Debug, Clone, Copy)]
pub enum EmailOutcome {
    Sent,
    Retried,
    Failed,
}

impl Metrics {
    pub fn new() -> Metrics {
        // 100 µs to ~26 s by factors of 2: local catchers answer in a millisecond, real
        // providers in hundreds, timeouts in seconds.
        let buckets = exponential_buckets(0.0001, 2.0, 19).expect("valid buckets");
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.clone()),
                labels,
            )
            .expect("valid histogram")
        };
        let metrics = Metrics {
            registry: Registry::new(),
            http_requests: histogram(
                "confirmd_http_request_duration_seconds",
                "HTTP requests by route, delivery mode and status",
                &["method", "route", "mode", "status"],
            ),
            emails: IntCounterVec::new(
                Opts::new("confirmd_emails_total", "Email send attempts by outcome"),
                &["outcome"],
            )
            .expect("valid counter"),
            smtp_send: histogram(
                "confirmd_smtp_send_duration_seconds",
                "Time for one SMTP send, connection included",
                &[],
            ),
            queue_wait: histogram(
                "confirmd_queue_wait_seconds",
                "Background mode: from the signup's commit to a worker picking the email up",
                &[],
            ),
            signup_group: Histogram::with_opts(
                HistogramOpts::new(
                    "confirmd_signup_group_size",
                    "Signups committed in the same transaction as this one, itself included",
                )
                .buckets(exponential_buckets(1.0, 2.0, 7).expect("valid buckets")),
            )
            .expect("valid histogram"),
            outbox: IntGaugeVec::new(
                Opts::new(
                    "confirmd_outbox_emails",
                    "Outbox rows waiting or kept for operators, by state: queued, sending, failed",
                ),
                &["state"],
            )
            .expect("valid gauge"),
            pruned: IntCounterVec::new(
                Opts::new(
                    "confirmd_pruned_rows_total",
                    "Rows deleted by the pruner, by what they were",
                ),
                &["what"],
            )
            .expect("valid counter"),
            smtp_up: IntGauge::new(
                "confirmd_smtp_up",
                "1 if the SMTP server answered the last background check, else 0",
            )
            .expect("valid gauge"),
        };
        for collector in [
            Box::new(metrics.http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.emails.clone()),
            Box::new(metrics.smtp_send.clone()),
            Box::new(metrics.queue_wait.clone()),
            Box::new(metrics.signup_group.clone()),
            Box::new(metrics.outbox.clone()),
            Box::new(metrics.pruned.clone()),
            Box::new(metrics.smtp_up.clone()),
            Box::new(crate::telemetry::spans_dropped()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("unique metric names");
        }
        // Zero lines for every outcome, so a dashboard sees 0 rather than no data.
        for outcome in ["sent", "retried", "failed"] {
            metrics.emails.with_label_values(&[outcome]);
        }
        for what in Prune::LABELS {
            metrics.pruned.with_label_values(&[what]);
        }
        metrics
    }

    /// Adds `confirmd_task_restarts_total`, counted by the supervisor of `tasks`.
    pub fn with_task_restarts(self, tasks: &Tasks) -> Metrics {
        self.registry
            .register(Box::new(tasks.restarts_counter()))
            .expect("unique metric names");
        for task in ["writer", "worker", "sweeper", "pruner"] {
            tasks.restarts_counter().with_label_values(&[task]);
        }
        self
    }

    pub fn observe_request(
        &self,
        method: &str,
        route: &str,
        mode: &str,
        status: u16,
        took: Duration,
    ) {
        // Clients choose the method: anything unusual shares one label, or each made-up method
        // would add a series that lives as long as the process.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "other",
        };
        self.http_requests
            .with_label_values(&[method, route, mode, &status.to_string()])
            .observe(took.as_secs_f64());
    }

    pub fn observe_send(&self, took: Duration, outcome: EmailOutcome) {
        self.smtp_send
            .with_label_values(&[] as &[&str])
            .observe(took.as_secs_f64());
        let outcome = match outcome {
            EmailOutcome::Sent => "sent",
            EmailOutcome::Retried => "retried",
            EmailOutcome::Failed => "failed",
        };
        self.emails.with_label_values(&[outcome]).inc();
    }

    pub fn observe_queue_wait(&self, waited: Duration) {
        self.queue_wait
            .with_label_values(&[] as &[&str])
            .observe(waited.as_secs_f64());
    }

    pub fn set_smtp_up(&self, up: bool) {
        self.smtp_up.set(i64::from(up));
    }

    pub fn observe_signup_group(&self, size: usize) {
        self.signup_group.observe(size as f64);
    }

    /// Counts rows the pruner deleted.
    pub fn observe_pruned(&self, what: Prune, rows: u64) {
        self.pruned.with_label_values(&[what.label()]).inc_by(rows);
    }

    /// The text exposition, with the outbox gauges set from `counts`.
    pub fn render(&self, counts: &ActiveCounts) -> String {
        for (state, value) in [
            ("queued", counts.queued),
            ("sending", counts.sending),
            ("failed", counts.failed),
        ] {
            self.outbox.with_label_values(&[state]).set(value);
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail on valid metrics");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
