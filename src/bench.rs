//! `confirmd bench`: the instrument for comparing the two delivery modes on a running service.
//!
//! For each mode in turn it sends `--requests` signups, each to a fresh address
//! (`bench-{run}-{mode}-{i}@example.com`; the run id is random, so runs never meet each other's
//! addresses or the resend limit), from `--concurrency` tasks that share one keep-alive HTTP
//! client and each take the next signup from a shared counter. It measures two things:
//!
//! - **Response latency**: from sending `POST /signups` to having read the whole answer, which
//!   is what the user waits for. This is where the modes differ by design: a sync response
//!   contains the SMTP exchange, a background one does not. Latencies go into an HDR histogram
//!   in microseconds (three significant digits), so p99 and max stay exact at any run length.
//! - **Signup → email sent**: for every acknowledged signup (201 or 202), the bench asks
//!   `GET /signups/{id}` until the service reports `delivery.sent_at`, and takes
//!   `sent_at - created_at`. Both come from the service's clock, in milliseconds, so the figure
//!   does not depend on this client or the network. It is what the mailbox waits for.
//!
//! How to read it: background mode should answer much sooner than sync, and deliver no sooner;
//! its signup → sent time is how long the outbox held the email (a queue builds up when signups
//! arrive faster than the workers send). With a local mail catcher both modes are fast; a real
//! provider's 100 ms or more per email lands in every sync response and in no background one.
//! Throughput is requests over wall time at the given concurrency, so it measures the service
//! and this client together, on one machine. Answers other than 201/202 are counted by status,
//! requests that got no answer as connection errors; neither stops the run, and only answered
//! requests have a latency.
//!
//! The bench is one client, so the service it drives must run without the per-client signup
//! limit (`CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE=0`); otherwise all but the first few signups
//! are 429s, and the report says so.

use std::{
    collections::{BTreeMap, VecDeque},
    io::IsTerminal,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{sync::mpsc, task::JoinSet};

use crate::{cli::BenchArgs, domain::DeliveryMode};

/// How long one request may take before it counts as a connection error: far beyond any
/// `smtp.timeout_ms` a sync signup can wait for, so only a stuck service reaches it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the `/healthz` check before the run may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon a signup whose email is not sent yet is asked about again.
const RECHECK_AFTER: Duration = Duration::from_millis(20);

/// The chart's x axis ends at 99.9%: three "nines" (see [`latency_curve`]).
const PLOTTED_NINES: f64 = 3.0;

/// Runs the benchmark described by `args` against the service at `args.url` and prints the
/// report (and draws the chart, if asked).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let results = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", results.text());
    }
    if let Some(path) = &args.plot {
        results.plot(path)?;
    }
    Ok(())
}

/// Measures the service at `args.url` as [`run`] does, and returns the figures instead of
/// printing them: `confirmd demo` runs it against the service it started. Of the output options
/// only `json` counts here, to keep progress bars off the terminal.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Results> {
    measure_live(args, None).await
}

/// One measurement as it is taken, for a caller that shows the run while it lasts (the demo's
/// page): the same figures the report is made of, one at a time.
#[derive(Clone, Copy, Debug)]
pub enum Sample {
    /// A signup was answered (any status) after this long.
    Answered {
        mode: DeliveryMode,
        latency: Duration,
    },
    /// The service reported a signup's email sent this many milliseconds after the signup.
    Sent { mode: DeliveryMode, ms: u64 },
}

/// [`measure`], also sending each [`Sample`] to `samples` as it is taken. A receiver that went
/// away stops nothing: the run goes on to its report.
pub async fn measure_live(
    args: &BenchArgs,
    samples: Option<mpsc::UnboundedSender<Sample>>,
) -> anyhow::Result<Results> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|error| anyhow!("cannot build the HTTP client: {}", root_cause(&error)))?;
    check_reachable(&client, &args.url).await?;

    let bench = Bench {
        client,
        url: Arc::from(args.url.as_str()),
        run_id: run_id(),
        requests: args.requests,
        concurrency: args.concurrency,
        delivery_timeout: Duration::from_secs(args.delivery_timeout_s),
        show_progress: !args.json && std::io::stderr().is_terminal(),
        samples,
    };
    let mut modes = Vec::with_capacity(args.modes.len());
    let mut latencies = Vec::with_capacity(args.modes.len());
    for &mode in &args.modes {
        let signups = bench.send_signups(mode).await?;
        let deliveries = bench.wait_for_delivery(mode, &signups.ids).await?;
        modes.push(ModeReport::new(mode, &signups, &deliveries));
        latencies.push((mode, signups.latency_us));
    }

    Ok(Results {
        report: Report {
            url: args.url.clone(),
            requests: args.requests,
            concurrency: args.concurrency,
            modes,
        },
        latencies,
    })
}

/// What one run measured: the report, which serializes as `--json` prints it, and each mode's
/// latency histogram, which the chart is drawn from.
#[derive(Serialize)]
pub struct Results {
    #[serde(flatten)]
    report: Report,
    #[serde(skip)]
    latencies: Vec<(DeliveryMode, Histogram<u64>)>,
}

impl Results {
    /// The report as tables, one per mode.
    pub fn text(&self) -> String {
        self.report.text()
    }

    /// Draws each mode's response latency by percentile to an SVG file at `path`.
    pub fn plot(&self, path: &Path) -> anyhow::Result<()> {
        plot(path, &self.latencies).map_err(|error| {
            anyhow!(
                "cannot draw the chart to {}: {}",
                path.display(),
                root_cause(error.as_ref())
            )
        })
    }

    /// Each mode's figures, in the order they were measured.
    pub(crate) fn modes(&self) -> &[ModeReport] {
        &self.report.modes
    }
}

/// Asks `GET /healthz` once, so that a wrong URL is one clear line instead of N errors.
async fn check_reachable(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let problem = match client
        .get(format!("{url}/healthz"))
        .timeout(HEALTH_TIMEOUT)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => return Ok(()),
        Ok(response) => format!("GET /healthz answered {}", response.status()),
        Err(error) => root_cause(&error),
    };
    Err(anyhow!("cannot reach confirmd at {url}: {problem}"))
}

/// The innermost error: "Connection refused (os error 111)" rather than reqwest's "error
/// sending request for url (...)", so that the message fits on one line and says what happened.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Eight hex digits, so that this run's addresses are new to the service.
fn run_id() -> String {
    let random = getrandom::u32().unwrap_or_else(|_| {
        // No OS randomness: the clock is unique enough for one run's addresses.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
    });
    format!("{random:08x}")
}

/// One run's settings, shared by its modes.
struct Bench {
    /// One client for every request: its pool keeps the connections alive, as a real front end
    /// or load balancer would, so the figures are the service's and not TCP handshakes.
    client: reqwest::Client,
    /// The service's base URL, without a trailing slash.
    url: Arc<str>,
    run_id: String,
    requests: u64,
    concurrency: u64,
    delivery_timeout: Duration,
    show_progress: bool,
    /// Where each measurement also goes as it is taken, if anyone watches the run live.
    samples: Option<mpsc::UnboundedSender<Sample>>,
}

/// What sending one mode's signups observed.
struct Signups {
    /// Answered requests' latency, in microseconds.
    latency_us: Histogram<u64>,
    /// From the first request sent to the last answer.
    wall: Duration,
    /// Answers by HTTP status.
    statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer: refused, reset, timed out.
    connection_errors: u64,
    /// The ids of acknowledged signups (201 or 202), whose email the service owes.
    ids: Vec<String>,
}

impl Signups {
    fn new() -> Signups {
        Signups {
            latency_us: histogram(),
            wall: Duration::ZERO,
            statuses: BTreeMap::new(),
            connection_errors: 0,
            ids: Vec::new(),
        }
    }

    fn merge(&mut self, other: Signups) {
        // Both are auto-resizing histograms of the same precision, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.connection_errors += other.connection_errors;
        self.ids.extend(other.ids);
    }
}

/// What the service reported about the emails of one mode's acknowledged signups.
struct Deliveries {
    /// Signup → SMTP accepted, in milliseconds (the resolution of the service's timestamps).
    sent_ms: Histogram<u64>,
    /// Emails not reported sent within `--delivery-timeout-s`, or that failed for good.
    not_delivered: u64,
}

impl Deliveries {
    fn new() -> Deliveries {
        Deliveries {
            sent_ms: histogram(),
            not_delivered: 0,
        }
    }
}

/// An empty auto-resizing histogram with three significant digits: any value can be recorded,
/// to within 0.1%.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a supported precision")
}

/// Records `value`, growing the histogram as needed (`saturating_record` would not: it clamps
/// every value to the histogram's current, tiny, range).
pub(crate) fn record(histogram: &mut Histogram<u64>, value: u64) {
    if histogram.record(value).is_err() {
        // Only past i64::MAX / 2, far beyond any latency.
        histogram.saturating_record(value);
    }
}

/// The part of `POST /signups`'s answer the bench needs.
#[derive(Deserialize)]
struct Acknowledged {
    id: String,
}

/// The part of `GET /signups/{id}`'s answer the bench needs.
#[derive(Deserialize)]
struct SignupDetails {
    created_at: String,
    delivery: DeliveryDetails,
}

#[derive(Deserialize)]
struct DeliveryDetails {
    state: String,
    sent_at: Option<String>,
}

/// Where one signup's email stands, as far as the bench is concerned.
enum Email {
    /// Accepted by the SMTP server this many milliseconds after the signup.
    Sent(u64),
    /// Queued or being sent, or the service did not say: ask again later.
    Waiting,
    /// Failed for good (or replaced): it will not be sent unless someone retries it.
    GivenUp,
}

impl Bench {
    /// Sends `requests` signups in `mode` from `concurrency` tasks.
    async fn send_signups(&self, mode: DeliveryMode) -> anyhow::Result<Signups> {
        let progress = self.progress_bar(self.requests, mode, "signups");
        let next = Arc::new(AtomicU64::new(0));
        let endpoint: Arc<str> = Arc::from(format!("{}/signups?mode={mode}", self.url));
        let addresses: Arc<str> = Arc::from(format!("bench-{}-{mode}", self.run_id));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..self.concurrency.min(self.requests) {
            let (client, next, requests) = (self.client.clone(), Arc::clone(&next), self.requests);
            let (endpoint, addresses) = (Arc::clone(&endpoint), Arc::clone(&addresses));
            let (progress, samples) = (progress.clone(), self.samples.clone());
            tasks.spawn(async move {
                let mut seen = Signups::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return seen;
                    }
                    let body =
                        serde_json::json!({ "email": format!("{addresses}-{i}@example.com") });
                    let sent = Instant::now();
                    match post(&client, &endpoint, &body).await {
                        Ok((status, id)) => {
                            let latency = sent.elapsed();
                            record(&mut seen.latency_us, micros(latency));
                            if let Some(samples) = &samples {
                                let _ = samples.send(Sample::Answered { mode, latency });
                            }
                            *seen.statuses.entry(status).or_default() += 1;
                            seen.ids.extend(id);
                        }
                        Err(_) => seen.connection_errors += 1,
                    }
                    progress.inc(1);
                }
            });
        }
        let mut signups = Signups::new();
        while let Some(task) = tasks.join_next().await {
            signups.merge(task?);
        }
        signups.wall = started.elapsed();
        progress.finish_and_clear();
        Ok(signups)
    }

    /// Asks the service about each signup's email until it is sent, it failed for good, or
    /// `delivery_timeout` passed. `concurrency` tasks share one queue of signups: one whose email
    /// is still waiting goes to the back, due again [`RECHECK_AFTER`] later, so every signup is
    /// looked at in turn and none is asked about faster than that.
    async fn wait_for_delivery(
        &self,
        mode: DeliveryMode,
        ids: &[String],
    ) -> anyhow::Result<Deliveries> {
        let progress = self.progress_bar(ids.len() as u64, mode, "emails sent");
        let now = Instant::now();
        // None: a timeout too long to represent, which is as good as none.
        let deadline = now.checked_add(self.delivery_timeout);
        let queue: Arc<Mutex<VecDeque<(String, Instant)>>> =
            Arc::new(Mutex::new(ids.iter().map(|id| (id.clone(), now)).collect()));
        let mut tasks = JoinSet::new();
        for _ in 0..self.concurrency.min(ids.len() as u64) {
            let (client, url, queue) = (
                self.client.clone(),
                Arc::clone(&self.url),
                Arc::clone(&queue),
            );
            let (progress, samples) = (progress.clone(), self.samples.clone());
            tasks.spawn(async move {
                let mut seen = Deliveries::new();
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front();
                    let Some((id, due)) = next else {
                        return seen;
                    };
                    tokio::time::sleep_until(due.into()).await;
                    match email_state(&client, &url, &id).await {
                        Email::Sent(ms) => {
                            record(&mut seen.sent_ms, ms);
                            if let Some(samples) = &samples {
                                let _ = samples.send(Sample::Sent { mode, ms });
                            }
                        }
                        Email::Waiting if deadline.is_none_or(|d| Instant::now() < d) => {
                            queue
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push_back((id, Instant::now() + RECHECK_AFTER));
                            continue;
                        }
                        Email::Waiting | Email::GivenUp => seen.not_delivered += 1,
                    }
                    progress.inc(1);
                }
            });
        }
        let mut deliveries = Deliveries::new();
        while let Some(task) = tasks.join_next().await {
            let seen = task?;
            let _ = deliveries.sent_ms.add(&seen.sent_ms);
            deliveries.not_delivered += seen.not_delivered;
        }
        progress.finish_and_clear();
        Ok(deliveries)
    }

    /// A bar on stderr while a phase runs; hidden for `--json` and when stderr is not a
    /// terminal, where it would only be noise in a log.
    fn progress_bar(&self, len: u64, mode: DeliveryMode, phase: &'static str) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template(
            "{prefix:>10} {msg:<11} [{bar:40}] {pos}/{len} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(mode.as_str())
            .with_message(phase)
    }
}

/// Sends one signup and reads the whole answer: its status, and the signup's id if it was
/// acknowledged (201 or 202).
async fn post(
    client: &reqwest::Client,
    endpoint: &str,
    body: &serde_json::Value,
) -> reqwest::Result<(u16, Option<String>)> {
    let response = client.post(endpoint).json(body).send().await?;
    let status = response.status().as_u16();
    let answer = response.bytes().await?;
    let id = matches!(status, 201 | 202)
        .then(|| serde_json::from_slice::<Acknowledged>(&answer).ok())
        .flatten()
        .map(|ack| ack.id);
    Ok((status, id))
}

/// Looks up one signup's email once.
async fn email_state(client: &reqwest::Client, url: &str, id: &str) -> Email {
    let details = match client.get(format!("{url}/signups/{id}")).send().await {
        Ok(response) if response.status().is_success() => response.json::<SignupDetails>().await,
        // A transient failure is another reason to look again, until the deadline.
        _ => return Email::Waiting,
    };
    let Ok(details) = details else {
        return Email::Waiting;
    };
    match details.delivery.sent_at {
        Some(sent_at) => match (parse_time(&details.created_at), parse_time(&sent_at)) {
            (Some(created), Some(sent)) => {
                let ms = (sent - created).whole_milliseconds();
                Email::Sent(u64::try_from(ms).unwrap_or(0))
            }
            _ => Email::GivenUp,
        },
        None if matches!(details.delivery.state.as_str(), "queued" | "sending") => Email::Waiting,
        None => Email::GivenUp,
    }
}

fn parse_time(rfc3339: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(rfc3339, &Rfc3339).ok()
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The whole run, as `--json` prints it.
#[derive(Serialize)]
struct Report {
    url: String,
    /// Signups sent in each mode.
    requests: u64,
    concurrency: u64,
    modes: Vec<ModeReport>,
}

/// One mode's figures. Latencies are in milliseconds.
#[derive(Serialize)]
pub(crate) struct ModeReport {
    pub(crate) mode: &'static str,
    pub(crate) requests: u64,
    pub(crate) wall_s: f64,
    /// Requests per second of wall time.
    pub(crate) throughput: f64,
    /// Response latency; null if no request was answered.
    pub(crate) latency_ms: Option<Percentiles>,
    /// Answers by HTTP status, successes included.
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) connection_errors: u64,
    /// Signups answered 201/202: the emails the service owes.
    pub(crate) acknowledged: u64,
    /// Of those, emails the service reported sent within `--delivery-timeout-s`.
    pub(crate) delivered: u64,
    /// The others: still waiting at the deadline, or failed for good.
    pub(crate) not_delivered: u64,
    /// Signup → SMTP accepted, by the service's clock; null if no email was delivered.
    pub(crate) delivery_ms: Option<Percentiles>,
}

#[derive(Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    /// Reads a histogram recorded in `units_per_ms` (1000 for microseconds, 1 for milliseconds).
    pub(crate) fn of(histogram: &Histogram<u64>, units_per_ms: f64) -> Option<Percentiles> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |value: u64| round(value as f64 / units_per_ms, 3);
        Some(Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        })
    }
}

impl ModeReport {
    fn new(mode: DeliveryMode, signups: &Signups, deliveries: &Deliveries) -> ModeReport {
        let requests = signups.statuses.values().sum::<u64>() + signups.connection_errors;
        let wall_s = signups.wall.as_secs_f64();
        ModeReport {
            mode: mode.as_str(),
            requests,
            wall_s: round(wall_s, 3),
            throughput: round(requests as f64 / wall_s.max(1e-9), 1),
            latency_ms: Percentiles::of(&signups.latency_us, 1000.0),
            statuses: signups.statuses.clone(),
            connection_errors: signups.connection_errors,
            acknowledged: signups.ids.len() as u64,
            delivered: deliveries.sent_ms.len(),
            not_delivered: deliveries.not_delivered,
            delivery_ms: Percentiles::of(&deliveries.sent_ms, 1.0),
        }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

impl Report {
    /// One small table per mode, with the same columns, so that they read one above the other.
    fn text(&self) -> String {
        use std::fmt::Write as _;

        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} signups per mode, {} at a time, against {}",
            self.requests, self.concurrency, self.url
        );
        for mode in &self.modes {
            let _ = writeln!(
                out,
                "\n{}: {} requests in {:.2} s, {:.0} req/s",
                mode.mode, mode.requests, mode.wall_s, mode.throughput
            );
            let _ = writeln!(
                out,
                "  {:<15} {:>9} {:>9} {:>9} {:>9}",
                "", "p50 ms", "p90 ms", "p99 ms", "max ms"
            );
            let row = |label: &str, p: &Option<Percentiles>, decimals: usize, note: &str| match p {
                Some(p) => format!(
                    "  {label:<15} {:>9.decimals$} {:>9.decimals$} {:>9.decimals$} {:>9.decimals$}{note}\n",
                    p.p50, p.p90, p.p99, p.max
                ),
                None => format!("  {label:<15} {:>9}{note}\n", "-"),
            };
            out += &row("response", &mode.latency_ms, 2, "");
            let sent = format!("   {} of {} sent", mode.delivered, mode.acknowledged);
            out += &row("signup → sent", &mode.delivery_ms, 0, &sent);
            let mut statuses: Vec<String> = mode
                .statuses
                .iter()
                .map(|(status, count)| format!("{status} × {count}"))
                .collect();
            if mode.connection_errors > 0 {
                statuses.push(format!("connection error × {}", mode.connection_errors));
            }
            let _ = writeln!(out, "  {:<15} {}", "statuses", statuses.join(", "));
            if mode.statuses.contains_key(&429) {
                let _ = writeln!(
                    out,
                    "  {:<15} 429s: the service limits signups per client; run it with \
                     CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE=0 to measure the signup path",
                    ""
                );
            }
        }
        out
    }
}

/// Draws each mode's response latency against its percentile, on a "nines" axis so that the
/// tail gets as much room as the median.
fn plot(
    path: &Path,
    modes: &[(DeliveryMode, Histogram<u64>)],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Categorical colours that stay apart for the colour-blind (Okabe–Ito).
    const COLOURS: [RGBColor; 4] = [
        RGBColor(0xd5, 0x5e, 0x00),
        RGBColor(0x00, 0x72, 0xb2),
        RGBColor(0x00, 0x9e, 0x73),
        RGBColor(0xcc, 0x79, 0xa7),
    ];
    let curves: Vec<(&str, Vec<(f64, f64)>)> = modes
        .iter()
        .filter(|(_, histogram)| !histogram.is_empty())
        .map(|(mode, histogram)| (mode.as_str(), latency_curve(histogram)))
        .collect();
    if curves.is_empty() {
        return Err("no request was answered, so there is no latency to draw".into());
    }
    let ys = || {
        curves
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.1))
    };
    let low = ys().fold(f64::INFINITY, f64::min) * 0.8;
    let high = ys().fold(0.0, f64::max) * 1.25;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "confirmd bench: response latency by percentile",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0f64..PLOTTED_NINES,
            (low..high)
                .log_scale()
                .with_key_points(round_numbers(low, high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("response latency (ms, log scale)")
        // One label per nine: 0%, 90%, 99%, 99.9%.
        .x_labels(PLOTTED_NINES as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| trim_decimals(*y, 3))
        .draw()?;
    for (i, (mode, points)) in curves.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(mode)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// (nines, latency in ms) from the minimum (x = 0) to 99.9% (x = 3), where x nines is the
/// percentile 100 × (1 − 10^−x): 1 is 90%, 2 is 99%.
fn latency_curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    const STEPS: u32 = 300;
    (0..=STEPS)
        .map(|step| {
            let x = PLOTTED_NINES * f64::from(step) / f64::from(STEPS);
            let value_us = histogram.value_at_quantile(1.0 - 10f64.powf(-x));
            // A log axis has no zero.
            (x, (value_us as f64 / 1000.0).max(0.001))
        })
        .collect()
}

/// 1, 2 and 5 times the powers of ten between `low` and `high`: where a log axis reads best.
fn round_numbers(low: f64, high: f64) -> Vec<f64> {
    let mut decade = 10f64.powf(low.log10().floor());
    let mut points = Vec::new();
    while decade <= high {
        points.extend(
            [1.0, 2.0, 5.0]
                .map(|m| m * decade)
                .into_iter()
                .filter(|p| (low..=high).contains(p)),
        );
        decade *= 10.0;
    }
    points
}

/// The percentile at `x` nines, as an axis label: "90%", "99.9%".
fn percentile_label(x: f64) -> String {
    format!("{}%", trim_decimals(100.0 * (1.0 - 10f64.powf(-x)), 2))
}

/// `value` with at most `decimals` decimals and no trailing zeros.
fn trim_decimals(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_nine_on_the_x_axis_is_one_step_further_into_the_tail() {
        let labels: Vec<String> = (0..=3).map(|x| percentile_label(f64::from(x))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%"]);
    }

    #[test]
    fn the_latency_axis_is_marked_at_round_numbers() {
        assert_eq!(
            round_numbers(0.3, 60.0),
            [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        );
    }

    #[test]
    fn percentiles_convert_microseconds_to_milliseconds() {
        let mut histogram = histogram();
        for us in 1..=1000 {
            record(&mut histogram, us * 10);
        }
        let p = Percentiles::of(&histogram, 1000.0).unwrap();
        // Three significant digits: each figure within 0.1% of the exact one.
        for (got, exact) in [(p.p50, 5.0), (p.p90, 9.0), (p.p99, 9.9), (p.max, 10.0)] {
            assert!((got - exact).abs() <= exact / 1000.0, "{got} vs {exact}");
        }
        assert!(Percentiles::of(&super::histogram(), 1000.0).is_none());
    }
}
