//! `confirmd demo --serve`: the demo's service and mail catcher kept running, with the page at
//! `GET /` and, beside the service's own routes, what only the demo has:
//!
//! - `GET /demo`: what the demo offers and its bounds. The page asks it first; the service alone
//!   answers 404, so the page of a production build shows neither the race nor the inbox.
//! - `GET /demo/race?requests=N&concurrency=C&smtp_latency_ms=L`: races the two modes through
//!   [`bench::measure_live`], the code `confirmd bench` measures with, from this process to the
//!   service over loopback, so the browser's per-host connection limit bends nothing. The answer
//!   is a stream of server-sent events: `progress` (each mode's percentiles so far, a few times a
//!   second), then `done` (the bench's report, its text, and the demo's plain reading) or
//!   `failed`. One race at a time (409 while one runs); bad inputs are 422 problem+json.
//! - `GET /demo/inbox`: the emails the catcher received, newest first, parsed as a mail client
//!   would (subject, from, to, the text and HTML parts, the confirmation link).
//! - `POST /demo/outage?ms=M`: the catcher answers `451` (try again later) for M milliseconds, so
//!   that the page can show a background email retried, then sent.
//!
//! These routes sit outside the service's layers: they are tooling on loopback, and a race's
//! event stream must outlive `server.request_timeout_ms`.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, anyhow};
use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::Stream;
use hdrhistogram::Histogram;
use mailparse::MailHeaderMap;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{body_of, confirmation_link, ms, reading};
use crate::{
    Application,
    bench::{self, Percentiles, Sample},
    catcher::{Behaviour, Catcher},
    cli::{BenchArgs, DemoArgs},
    domain::DeliveryMode,
    http::Error,
};

/// The most SMTP latency a race may ask for. The service's SMTP timeout and leases are sized
/// for it when it starts (see `demo_settings`), so no latency the page can set is a failure.
pub(super) const MAX_SMTP_LATENCY: Duration = Duration::from_secs(2);

/// Signups per mode a race may send: enough for stable percentiles, few enough to finish while
/// someone watches.
const MAX_REQUESTS: u64 = 1000;

/// Signups in flight at once in a race.
const MAX_CONCURRENCY: u64 = 64;

/// The longest outage `POST /demo/outage` stages.
const MAX_OUTAGE: Duration = Duration::from_secs(30);

/// How often a race reports its figures so far.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Serves the page until Ctrl-C or SIGTERM, then stops the service as SIGTERM does, then the
/// catcher, and removes the database.
pub(super) async fn run(
    app: Application,
    catcher: Catcher,
    database: TempDir,
    url: String,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    catcher.set_behaviour(answer_after(args.smtp_latency));
    let shutdown = app.shutdown_token();
    let catcher = Arc::new(catcher);
    let demo = Demo(Arc::new(Inner {
        url: url.clone(),
        catcher: Arc::clone(&catcher),
        workers: args.concurrency,
        smtp: Mutex::new(Smtp {
            latency: args.smtp_latency,
            outage: None,
        }),
        racing: AtomicBool::new(false),
        shutdown: shutdown.clone(),
    }));
    let app = app.with_routes(router(demo));
    let mut service = tokio::spawn(app.run_until_stopped());
    println!(
        "confirmd demo: a mail catcher on {} answers each email {};\n\
         confirmd runs with {} delivery workers and a temporary database.\n\n\
         The page: {url}/\n\n\
         Ctrl-C stops it.",
        catcher.addr(),
        latency_in_words(args.smtp_latency),
        args.concurrency,
    );

    let stopped = tokio::select! {
        () = stop_signal() => {
            shutdown.cancel();
            service.await
        }
        // The service stopped by itself: say why, after the same cleanup.
        stopped = &mut service => stopped,
    };
    // The router, and with it every other handle on the catcher, is gone with the service.
    match Arc::try_unwrap(catcher) {
        Ok(catcher) => catcher.stop().await,
        Err(catcher) => drop(catcher),
    }
    if let Err(error) = database.close() {
        warn!(%error, "cannot remove the demo's temporary database");
    }
    match stopped {
        Ok(result) => result.context("confirmd stopped with an error"),
        Err(error) => Err(anyhow!("confirmd stopped abnormally: {error}")),
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// "at once", or "after 150 ms".
fn latency_in_words(latency: Duration) -> String {
    match latency {
        Duration::ZERO => "at once".to_owned(),
        latency => format!("after {}", ms(latency.as_secs_f64() * 1000.0)),
    }
}

/// The catcher's behaviour for a latency: it was started without one, so that races can
/// change it.
fn answer_after(latency: Duration) -> Behaviour {
    match latency {
        Duration::ZERO => Behaviour::Accept,
        latency => Behaviour::Delay(latency),
    }
}

/// What the demo's routes share.
#[derive(Clone)]
struct Demo(Arc<Inner>);

struct Inner {
    /// The service's own address, which races are sent to.
    url: String,
    catcher: Arc<Catcher>,
    /// The service's delivery workers (`--concurrency`), for the plain reading.
    workers: u64,
    smtp: Mutex<Smtp>,
    /// Set while a race runs: a second one would measure the first.
    racing: AtomicBool,
    /// The service's shutdown: a race in progress stops with it.
    shutdown: CancellationToken,
}

/// How the catcher answers, as the page last set it.
struct Smtp {
    latency: Duration,
    /// An outage the page staged: it ends when this token is cancelled or its time is up.
    outage: Option<CancellationToken>,
}

impl Demo {
    fn smtp(&self) -> std::sync::MutexGuard<'_, Smtp> {
        self.0.smtp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the latency; an outage in progress keeps answering 451 until it ends.
    fn set_latency(&self, latency: Duration) {
        let mut smtp = self.smtp();
        smtp.latency = latency;
        if smtp.outage.is_none() {
            self.0.catcher.set_behaviour(answer_after(latency));
        }
    }
}

fn router(demo: Demo) -> Router {
    Router::new()
        .route("/demo", get(offer))
        .route("/demo/race", get(race))
        .route("/demo/inbox", get(inbox))
        .route("/demo/outage", post(outage))
        .with_state(demo)
}

/// What the page may offer, and the bounds of its inputs.
#[derive(Serialize)]
struct Offer {
    smtp_latency_ms: u64,
    workers: u64,
    max_requests: u64,
    max_concurrency: u64,
    max_smtp_latency_ms: u64,
    max_outage_ms: u64,
}

async fn offer(State(demo): State<Demo>) -> Json<Offer> {
    Json(Offer {
        smtp_latency_ms: demo.smtp().latency.as_millis() as u64,
        workers: demo.0.workers,
        max_requests: MAX_REQUESTS,
        max_concurrency: MAX_CONCURRENCY,
        max_smtp_latency_ms: MAX_SMTP_LATENCY.as_millis() as u64,
        max_outage_ms: MAX_OUTAGE.as_millis() as u64,
    })
}

#[derive(Deserialize)]
struct RaceParams {
    requests: Option<u64>,
    concurrency: Option<u64>,
    smtp_latency_ms: Option<u64>,
}

/// A race's inputs, each within its bound.
struct RaceInputs {
    requests: u64,
    concurrency: u64,
    smtp_latency: Duration,
}

impl RaceInputs {
    fn parse(params: RaceParams, current_latency: Duration) -> Result<RaceInputs, Error> {
        let within = |name: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(value)
            } else {
                Err(Error::Unprocessable(format!(
                    "{name} must be between {low} and {high}; it is {value}."
                )))
            }
        };
        let latency_ms = match params.smtp_latency_ms {
            Some(ms) => within(
                "smtp_latency_ms",
                ms,
                0,
                MAX_SMTP_LATENCY.as_millis() as u64,
            )?,
            None => current_latency.as_millis() as u64,
        };
        Ok(RaceInputs {
            requests: within("requests", params.requests.unwrap_or(50), 1, MAX_REQUESTS)?,
            concurrency: within(
                "concurrency",
                params.concurrency.unwrap_or(10),
                1,
                MAX_CONCURRENCY,
            )?,
            smtp_latency: Duration::from_millis(latency_ms),
        })
    }
}

/// Clears the busy flag when the race ends, however it ends.
struct Racing(Demo);

impl Drop for Racing {
    fn drop(&mut self) {
        self.0.0.racing.store(false, Ordering::SeqCst);
    }
}

/// `GET /demo/race`: see the module docs.
async fn race(
    State(demo): State<Demo>,
    params: Result<Query<RaceParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    let Query(params) = params?;
    let inputs = RaceInputs::parse(params, demo.smtp().latency)?;
    if demo.0.racing.swap(true, Ordering::SeqCst) {
        return Err(Error::Conflict(
            "A race is running; wait for its end before starting another.".into(),
        ));
    }
    let racing = Racing(demo.clone());
    demo.set_latency(inputs.smtp_latency);
    let (events, stream) = mpsc::channel(16);
    tokio::spawn(async move {
        run_race(&racing.0, &inputs, &events).await;
        drop(racing);
    });
    let stream = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.recv().await?;
        Some((Ok(event), stream))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Runs the bench in both modes and sends its figures to `events` as they come, then the
/// summary. A page that went away stops nothing: the race runs to its end, alone.
async fn run_race(demo: &Demo, inputs: &RaceInputs, events: &mpsc::Sender<Event>) {
    // As `confirmd demo` allows: the workers send `requests` emails `workers` at a time.
    let sending = inputs.smtp_latency.as_secs_f64() * inputs.requests as f64
        / demo.0.workers.min(inputs.concurrency) as f64;
    let args = BenchArgs {
        url: demo.0.url.clone(),
        requests: inputs.requests,
        concurrency: inputs.concurrency,
        modes: vec![DeliveryMode::Sync, DeliveryMode::Background],
        // Keeps the bench's progress bars off the terminal.
        json: true,
        plot: None,
        delivery_timeout_s: 60 + (2.0 * sending).ceil() as u64,
    };
    let (samples, mut taken) = mpsc::unbounded_channel();
    let measure = bench::measure_live(&args, Some(samples));
    tokio::pin!(measure);
    let mut tally = Tally::new(inputs.requests);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let outcome = loop {
        tokio::select! {
            outcome = &mut measure => break outcome,
            Some(sample) = taken.recv() => tally.add(sample),
            _ = tick.tick() => {
                if tally.changed {
                    send(events, "progress", &tally.progress()).await;
                    tally.changed = false;
                }
            }
            () = demo.0.shutdown.cancelled() => break Err(anyhow!("the demo is stopping")),
        }
    };
    while let Ok(sample) = taken.try_recv() {
        tally.add(sample);
    }
    send(events, "progress", &tally.progress()).await;
    match outcome {
        Ok(results) => {
            let done = Done {
                report: &results,
                smtp_latency_ms: inputs.smtp_latency.as_millis() as u64,
                workers: demo.0.workers,
                text: results.text(),
                reading: reading(results.modes(), inputs.smtp_latency, demo.0.workers),
            };
            send(events, "done", &done).await;
        }
        Err(error) => {
            let failed = Failed {
                detail: format!("{error:#}"),
            };
            send(events, "failed", &failed).await;
        }
    }
}

/// Sends one event; a page that went away is no error.
async fn send(events: &mpsc::Sender<Event>, name: &str, data: &impl Serialize) {
    match Event::default().event(name).json_data(data) {
        Ok(event) => {
            let _ = events.send(event).await;
        }
        Err(error) => warn!(%error, "cannot encode a race event"),
    }
}

/// The end of a race: what `confirmd demo` prints, as data.
#[derive(Serialize)]
struct Done<'a> {
    report: &'a bench::Results,
    smtp_latency_ms: u64,
    workers: u64,
    /// The bench's tables, as `confirmd bench` prints them.
    text: String,
    /// What the figures mean, as `confirmd demo` says it.
    reading: Vec<String>,
}

#[derive(Serialize)]
struct Failed {
    detail: String,
}

/// Each mode's figures so far.
struct Tally {
    requests: u64,
    modes: [ModeTally; 2],
    /// Whether a sample arrived since the last report.
    changed: bool,
}

struct ModeTally {
    mode: DeliveryMode,
    /// Response latency, in microseconds.
    latency_us: Histogram<u64>,
    /// Signup → sent, in milliseconds.
    sent_ms: Histogram<u64>,
}

impl Tally {
    fn new(requests: u64) -> Tally {
        let mode = |mode| ModeTally {
            mode,
            latency_us: bench::histogram(),
            sent_ms: bench::histogram(),
        };
        Tally {
            requests,
            modes: [mode(DeliveryMode::Sync), mode(DeliveryMode::Background)],
            changed: false,
        }
    }

    fn add(&mut self, sample: Sample) {
        let of = |mode| match mode {
            DeliveryMode::Sync => 0,
            DeliveryMode::Background => 1,
        };
        match sample {
            Sample::Answered { mode, latency } => {
                bench::record(&mut self.modes[of(mode)].latency_us, bench::micros(latency));
            }
            Sample::Sent { mode, ms } => bench::record(&mut self.modes[of(mode)].sent_ms, ms),
        }
        self.changed = true;
    }

    fn progress(&self) -> Progress {
        Progress {
            requests: self.requests,
            modes: self
                .modes
                .iter()
                .map(|mode| ModeProgress {
                    mode: mode.mode.as_str(),
                    answered: mode.latency_us.len(),
                    latency_ms: Percentiles::of(&mode.latency_us, 1000.0),
                    sent: mode.sent_ms.len(),
                    delivery_ms: Percentiles::of(&mode.sent_ms, 1.0),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct Progress {
    requests: u64,
    modes: Vec<ModeProgress>,
}

#[derive(Serialize)]
struct ModeProgress {
    mode: &'static str,
    answered: u64,
    latency_ms: Option<Percentiles>,
    sent: u64,
    delivery_ms: Option<Percentiles>,
}

/// The catcher's inbox, newest first.
#[derive(Serialize)]
struct Inbox {
    /// Every email received since the start; only the last few are kept.
    received: usize,
    emails: Vec<ReceivedEmail>,
}

/// One email as a mail client shows it. Every field is the email's own text: the page shows
/// it as text, and the HTML part only in a sandboxed frame.
#[derive(Serialize)]
struct ReceivedEmail {
    /// Its place among all the emails received, from 1.
    number: usize,
    from: String,
    to: Vec<String>,
    subject: Option<String>,
    date: Option<String>,
    text: Option<String>,
    html: Option<String>,
    /// The confirmation link in its text, if it has one.
    link: Option<String>,
}

async fn inbox(State(demo): State<Demo>) -> Json<Inbox> {
    let catcher = &demo.0.catcher;
    let recent = catcher.recent();
    let received = catcher.received().max(recent.len());
    let first = received.saturating_sub(recent.len()) + 1;
    let mut emails: Vec<ReceivedEmail> = recent
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let parsed = mailparse::parse_mail(&message.data).ok();
            let header = |name| parsed.as_ref()?.headers.get_first_value(name);
            let text = parsed.as_ref().and_then(|m| body_of(m, "text/plain"));
            ReceivedEmail {
                number: first + i,
                from: message.from,
                to: message.to,
                subject: header("Subject"),
                date: header("Date"),
                link: text
                    .as_deref()
                    .and_then(confirmation_link)
                    .map(str::to_owned),
                html: parsed.as_ref().and_then(|m| body_of(m, "text/html")),
                text,
            }
        })
        .collect();
    emails.reverse();
    Json(Inbox { received, emails })
}

#[derive(Deserialize)]
struct OutageParams {
    ms: Option<u64>,
}

/// `POST /demo/outage?ms=M`: see the module docs.
async fn outage(
    State(demo): State<Demo>,
    params: Result<Query<OutageParams>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(params) = params?;
    let ms = params.ms.unwrap_or(3000);
    let longest = MAX_OUTAGE.as_millis() as u64;
    if !(1..=longest).contains(&ms) {
        return Err(Error::Unprocessable(format!(
            "ms must be between 1 and {longest}; it is {ms}."
        )));
    }
    let ends = CancellationToken::new();
    {
        let mut smtp = demo.smtp();
        if let Some(earlier) = smtp.outage.replace(ends.clone()) {
            earlier.cancel();
        }
        demo.0.catcher.set_behaviour(Behaviour::RejectTransient);
    }
    let duration = Duration::from_millis(ms);
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            // A later outage replaced this one: it restores the latency when it ends.
            () = ends.cancelled() => return,
        }
        let mut smtp = demo.smtp();
        smtp.outage = None;
        demo.0.catcher.set_behaviour(answer_after(smtp.latency));
    });
    Ok(Json(serde_json::json!({ "outage_ms": ms })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(requests: u64, concurrency: u64, latency_ms: u64) -> RaceParams {
        RaceParams {
            requests: Some(requests),
            concurrency: Some(concurrency),
            smtp_latency_ms: Some(latency_ms),
        }
    }

    #[test]
    fn race_inputs_are_refused_outside_their_bounds_and_default_inside_them() {
        let current = Duration::from_millis(150);
        for refused in [
            params(0, 10, 0),
            params(MAX_REQUESTS + 1, 10, 0),
            params(50, 0, 0),
            params(50, MAX_CONCURRENCY + 1, 0),
            params(50, 10, MAX_SMTP_LATENCY.as_millis() as u64 + 1),
        ] {
            assert!(RaceInputs::parse(refused, current).is_err());
        }
        let defaults = RaceParams {
            requests: None,
            concurrency: None,
            smtp_latency_ms: None,
        };
        let inputs = RaceInputs::parse(defaults, current).unwrap();
        assert_eq!(
            (inputs.requests, inputs.concurrency, inputs.smtp_latency),
            (50, 10, current)
        );
    }
}
