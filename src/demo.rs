//! `confirmd demo`: the whole comparison of the two delivery modes in one command, on a machine
//! with nothing else installed.
//!
//! It starts a [`Catcher`] (an SMTP server in this process, which can answer as slowly as a
//! remote provider: `--smtp-latency`), then the service itself, built from the usual settings
//! with these changes: it listens on a free loopback port, which is also its `app.base_url` so
//! that the links in the emails lead back to it; its database lives in a temporary folder that
//! is removed at the end; it sends to the catcher, without TLS or authentication; and it has as
//! many delivery workers and pooled SMTP connections as the bench has clients, so that each mode
//! may have as many emails at the mail server at a time. Then:
//!
//! 1. [`bench::measure`] sends `--requests` signups in each mode, sync first, and waits until
//!    the service reports every email sent;
//! 2. the last email the catcher received is opened and its confirmation link followed as a
//!    person does: opening the link must confirm nothing (so a mail scanner cannot), pressing
//!    the page's button (`POST /confirm`) confirms, and the link must then say `confirmed`;
//! 3. the service stops as it does on SIGTERM, then the catcher, and the database is removed
//!    (also after a failure or Ctrl-C);
//! 4. it reports: the bench's tables, what the catcher received, the link, and what the figures
//!    mean in plain words, each sentence computed from them.
//!
//! A failure is one line (the error and its causes, joined by `: `), after the same shutdown.
//!
//! `--serve` keeps the service and the catcher running instead, and serves the page with the
//! race and the inbox until Ctrl-C or SIGTERM: see `demo/serve.rs`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context, anyhow, ensure};
use mailparse::ParsedMail;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::warn;

mod serve;

use crate::{
    Application, Settings,
    bench::{self, ModeReport, Results},
    catcher::Catcher,
    cli::{BenchArgs, DemoArgs},
    config::SmtpTls,
    domain::DeliveryMode,
};

/// How long a send may take on top of the catcher's deliberate latency before it counts as
/// failed: the latency is the demo's point, not a fault, so it must never reach the timeout.
const SMTP_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// How long following the link and looking the signup up may take.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo described by `args`; `settings` are the service's usual ones, before the
/// demo's changes (see the module docs).
pub async fn run(args: DemoArgs, settings: Settings) -> anyhow::Result<()> {
    // One line, whatever went wrong: the causes follow the error on it.
    demo(args, settings)
        .await
        .map_err(|error| anyhow!("{error:#}"))
}

async fn demo(args: DemoArgs, settings: Settings) -> anyhow::Result<()> {
    // Served, the page changes the latency between races: the catcher then answers at once by
    // itself and waits as its behaviour says (see `serve`).
    let catcher = Catcher::start(if args.serve {
        Duration::ZERO
    } else {
        args.smtp_latency
    })
    .await
    .context("cannot start the mail catcher")?;
    let database = tempfile::Builder::new()
        .prefix("confirmd-demo-")
        .tempdir()
        .context("cannot create a temporary folder for the database")?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .await
        .with_context(|| format!("cannot listen on loopback port {}", args.port))?;
    let url = format!("http://{}", listener.local_addr()?);
    let settings = demo_settings(
        settings,
        &url,
        database.path(),
        catcher.addr(),
        // Served, a race may ask for any latency up to the page's bound.
        if args.serve {
            args.smtp_latency.max(serve::MAX_SMTP_LATENCY)
        } else {
            args.smtp_latency
        },
        args.concurrency,
    )?;
    let app = Application::build_on(settings, listener)
        .await
        .context("cannot start confirmd")?;
    if args.serve {
        return serve::run(app, catcher, database, url, &args).await;
    }
    let shutdown = app.shutdown_token();
    let service = tokio::spawn(app.run_until_stopped());
    if !args.json {
        println!(
            "confirmd demo: a mail catcher on {} answers each email {};\n\
             confirmd runs on {url} with {} delivery workers and a temporary database.\n",
            catcher.addr(),
            match args.smtp_latency {
                Duration::ZERO => "at once".to_owned(),
                latency => format!("after {}", ms(latency.as_secs_f64() * 1000.0)),
            },
            args.concurrency,
        );
    }

    let outcome = tokio::select! {
        outcome = exercise(&args, &url, &catcher) => outcome,
        // Ctrl-C stops the demo, but through the same shutdown: nothing is left behind.
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted by Ctrl-C")),
    };

    // The same shutdown whatever happened: the service drains, then the catcher stops.
    shutdown.cancel();
    let stopped = service.await;
    let emails_received = catcher.received();
    let catcher_addr = catcher.addr();
    catcher.stop().await;
    if let Err(error) = database.close() {
        warn!(%error, "cannot remove the demo's temporary database");
    }
    // A service that failed by itself is the cause of whatever the bench then saw.
    match stopped {
        Ok(result) => result.context("confirmd stopped with an error")?,
        Err(error) => return Err(anyhow!("confirmd stopped abnormally: {error}")),
    }
    let (results, link) = outcome?;

    if args.json {
        let report = JsonReport {
            bench: &results,
            smtp_latency_ms: args.smtp_latency.as_micros() as f64 / 1000.0,
            workers: args.concurrency,
            catcher: CatcherReport {
                address: catcher_addr,
                emails_received,
            },
            link: &link,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", results.text());
        let acknowledged: u64 = results.modes().iter().map(|m| m.acknowledged).sum();
        println!(
            "\nEmails: the mail catcher received {emails_received}, for {acknowledged} signups \
             acknowledged."
        );
        println!(
            "Link: followed {} in the email to {}: opening it confirmed nothing, its page's \
             button did, and the link now says \"confirmed\".",
            link.link, link.recipient
        );
        println!("\nWhat it means:");
        for line in reading(results.modes(), args.smtp_latency, args.concurrency) {
            println!("  {line}");
        }
    }
    if let Some(path) = &args.plot {
        results.plot(path)?;
        if !args.json {
            println!("\nChart: {}", path.display());
        }
    }
    Ok(())
}

/// The service's settings for the demo: `settings` with the changes the module docs list.
fn demo_settings(
    mut settings: Settings,
    url: &str,
    database: &Path,
    catcher: SocketAddr,
    smtp_latency: Duration,
    workers: u64,
) -> anyhow::Result<Settings> {
    settings.app.base_url = url.to_owned();
    settings.database.url = format!(
        "sqlite://{}?mode=rwc",
        database.join("confirmd.db").display()
    );
    settings.smtp.host = catcher.ip().to_string();
    settings.smtp.port = catcher.port();
    settings.smtp.tls = SmtpTls::None;
    settings.smtp.username.clear();
    settings.smtp.password = "".into();
    let workers = u32::try_from(workers).context("too many workers")?;
    settings.smtp.pool_size = workers;
    settings.worker.concurrency = workers as usize;
    // What must outlast a send (a worker's lease, the shutdown drain) outlasts the longer timeout.
    let least_timeout = smtp_latency + SMTP_TIMEOUT_MARGIN;
    settings.smtp.timeout_ms = settings
        .smtp
        .timeout_ms
        .max(least_timeout.as_millis() as u64);
    let outlast = settings.smtp.timeout_ms + 1_000;
    settings.worker.lease_ms = settings.worker.lease_ms.max(outlast);
    settings.worker.shutdown_timeout_ms = settings.worker.shutdown_timeout_ms.max(outlast);
    settings.server.request_timeout_ms = settings.server.request_timeout_ms.max(outlast);
    // The bench is one client sending hundreds of signups: the per-client limit is off.
    settings.signup.per_client_per_minute = 0;
    Ok(settings.validated()?)
}

/// The bench in both modes, then one confirmation link followed.
async fn exercise(
    args: &DemoArgs,
    url: &str,
    catcher: &Catcher,
) -> anyhow::Result<(Results, FollowedLink)> {
    // The workers send `requests` background emails `concurrency` at a time, each taking the
    // catcher's latency: allow twice that on top of the bench's usual minute.
    let sending = args.smtp_latency.as_secs_f64() * args.requests as f64 / args.concurrency as f64;
    let bench_args = BenchArgs {
        url: url.to_owned(),
        requests: args.requests,
        concurrency: args.concurrency,
        modes: vec![DeliveryMode::Sync, DeliveryMode::Background],
        json: args.json,
        plot: None,
        delivery_timeout_s: 60 + (2.0 * sending).ceil() as u64,
    };
    let results = bench::measure(&bench_args).await?;
    let link = follow_a_link(url, catcher).await?;
    Ok((results, link))
}

/// The link a user followed, as the demo reports it.
#[derive(Serialize)]
struct FollowedLink {
    /// The address the email was sent to.
    recipient: String,
    /// The link, its token left out: the output is for reading, not for clicking.
    link: String,
    /// Opening the link left the address pending, `POST /confirm` confirmed it, and the link
    /// then said `confirmed`; the demo fails otherwise.
    confirmed: bool,
}

/// What `/confirm` says of a link, in JSON: `pending` or `confirmed`.
#[derive(Deserialize)]
struct LinkStatus {
    status: String,
    already_confirmed: bool,
}

/// Takes the last email the catcher received and follows its confirmation link as a user
/// would: opens it (which must confirm nothing: mail scanners open links too), presses the
/// button (`POST /confirm` with the token), and opens the link again to see it confirmed.
async fn follow_a_link(url: &str, catcher: &Catcher) -> anyhow::Result<FollowedLink> {
    let email = catcher
        .recent()
        .pop()
        .context("no email reached the mail catcher, so there is no link to follow")?;
    let recipient = email.to.first().cloned().unwrap_or_default();
    let text = text_body(&email.data)
        .with_context(|| format!("the email to {recipient} has no text part"))?;
    let link = confirmation_link(&text)
        .with_context(|| format!("the email to {recipient} has no /confirm?token= link"))?;
    let shown = without_token(link);
    ensure!(
        link.starts_with(&format!("{url}/")),
        "the link in the email to {recipient} leads to {shown}, not to the demo's confirmd at {url}"
    );
    let token = link.split_once("token=").map_or("", |(_, token)| token);

    let client = reqwest::Client::builder()
        .timeout(LINK_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| {
            anyhow!(
                "cannot build the HTTP client: {}",
                bench::root_cause(&error)
            )
        })?;
    // reqwest's errors name the URL: keep the token out of them, as out of everything else.
    let failed =
        |what: &str, error: reqwest::Error| anyhow!("{what} failed: {}", bench::root_cause(&error));
    let open = || async {
        let response = client
            .get(link)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| failed("opening the link", error))?;
        let status = response.status();
        ensure!(
            status == reqwest::StatusCode::OK,
            "opening the link in the email to {recipient} answered {status}"
        );
        response
            .json::<LinkStatus>()
            .await
            .map_err(|error| failed("reading the answer to the link", error))
    };

    let opened = open().await?;
    ensure!(
        opened.status == "pending",
        "opening the link in the email to {recipient} found it {:?}, not \"pending\"",
        opened.status
    );
    let response = client
        .post(format!("{url}/confirm"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .map_err(|error| failed("POST /confirm", error))?;
    let status = response.status();
    ensure!(
        status == reqwest::StatusCode::OK,
        "POST /confirm with the token from the email to {recipient} answered {status}"
    );
    let confirmation: LinkStatus = response
        .json()
        .await
        .map_err(|error| failed("reading the answer to POST /confirm", error))?;
    ensure!(
        confirmation.status == "confirmed" && !confirmation.already_confirmed,
        "POST /confirm did not confirm the email to {recipient} now: {:?}, already confirmed: {}",
        confirmation.status,
        confirmation.already_confirmed
    );
    let reopened = open().await?;
    ensure!(
        reopened.status == "confirmed",
        "after its button was pressed, the link in the email to {recipient} says {:?}, not \"confirmed\"",
        reopened.status
    );
    Ok(FollowedLink {
        recipient,
        link: shown,
        confirmed: true,
    })
}

/// The decoded text of the first `text/plain` part of a received email (headers and body, as
/// received), with `\n` line endings. lettre picks the transfer encoding by content: a
/// confirmation link is longer than a 7-bit line may be, so the text part usually arrives
/// quoted-printable, with `=` written `=3D` and long lines folded by soft breaks, which
/// mailparse undoes.
fn text_body(raw: &[u8]) -> Option<String> {
    body_of(&mailparse::parse_mail(raw).ok()?, "text/plain")
}

/// The decoded body of the first part of `message` of type `mimetype`, with `\n` line endings.
fn body_of(message: &ParsedMail, mimetype: &str) -> Option<String> {
    fn part_of<'m, 'a>(part: &'m ParsedMail<'a>, mimetype: &str) -> Option<&'m ParsedMail<'a>> {
        if part.ctype.mimetype.eq_ignore_ascii_case(mimetype) {
            return Some(part);
        }
        part.subparts
            .iter()
            .find_map(|part| part_of(part, mimetype))
    }
    let body = part_of(message, mimetype)?.get_body().ok()?;
    Some(body.replace("\r\n", "\n"))
}

/// The first http(s) URL in `text` that contains `/confirm?token=`.
fn confirmation_link(text: &str) -> Option<&str> {
    text.split_whitespace().find(|word| {
        (word.starts_with("http://") || word.starts_with("https://"))
            && word.contains("/confirm?token=")
    })
}

/// `http://host/confirm?token=…`.
fn without_token(link: &str) -> String {
    match link.split_once("token=") {
        Some((before, _)) => format!("{before}token=…"),
        None => link.to_owned(),
    }
}

/// `--json`: the bench's report, with the demo's own facts beside it.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    bench: &'a Results,
    /// How long the catcher took to accept each email.
    smtp_latency_ms: f64,
    /// The service's delivery workers (and pooled SMTP connections): `--concurrency`.
    workers: u64,
    catcher: CatcherReport,
    link: &'a FollowedLink,
}

#[derive(Serialize)]
struct CatcherReport {
    address: SocketAddr,
    /// Messages the catcher accepted, from both modes.
    emails_received: usize,
}

/// What the figures mean, in plain words. Each sentence states measured figures; the causes it
/// gives are the modes' design, which the figures either bear out or, where they would not, the
/// sentence is left out.
fn reading(modes: &[ModeReport], smtp_latency: Duration, workers: u64) -> Vec<String> {
    let find = |name: &str| modes.iter().find(|mode| mode.mode == name);
    let (Some(sync), Some(background)) = (find("sync"), find("background")) else {
        return Vec::new();
    };
    let (Some(sync_latency), Some(background_latency)) = (&sync.latency_ms, &background.latency_ms)
    else {
        return vec!["A mode had no request answered, so there is nothing to compare.".into()];
    };
    let (sync_p50, background_p50) = (sync_latency.p50, background_latency.p50);
    let smtp = smtp_latency.as_secs_f64() * 1000.0;
    let mut lines = Vec::new();

    lines.push(if smtp > 0.0 && sync_p50 >= smtp {
        format!(
            "sync: p50 {}, of which {} is the mail server's answer: the request waits for SMTP.",
            ms(sync_p50),
            ms(smtp)
        )
    } else if smtp > 0.0 {
        format!("sync: p50 {}: the request waits for SMTP.", ms(sync_p50))
    } else {
        format!(
            "sync: p50 {}: the request waits for SMTP, and this mail catcher answers at once, \
             as local ones do.",
            ms(sync_p50)
        )
    });

    let ratio = sync_p50 / background_p50.max(1e-9);
    let compared = if ratio >= 10.0 {
        format!(", {ratio:.0}× sooner")
    } else if ratio >= 1.1 {
        format!(", {ratio:.1}× sooner")
    } else {
        String::new()
    };
    lines.push(format!(
        "background: p50 {}{compared}: the request does not wait for the mail server.",
        ms(background_p50)
    ));

    if let Some(delivery) = &background.delivery_ms {
        lines.push(format!(
            "Its emails still went out, {workers} at a time: {} after the signup at p50, {} at \
             worst.",
            ms(delivery.p50),
            ms(delivery.max)
        ));
        if delivery.p50 > background_p50 {
            lines.push("The wait moved from the user's request to the outbox.".into());
        }
    }
    for mode in [sync, background] {
        if mode.not_delivered > 0 {
            lines.push(format!(
                "{} of the {} {} emails were not sent in time (see the table).",
                mode.not_delivered, mode.acknowledged, mode.mode
            ));
        }
    }
    if smtp == 0.0 {
        lines.push(
            "Real providers take 100 ms or more per email: run with --smtp-latency 150ms to see \
             what that does to each mode."
                .into(),
        );
    }
    lines
}

/// Milliseconds as a person reads them, to three significant digits at most: `0.84 ms`,
/// `12.5 ms`, `150 ms`, `1.5 s`.
fn ms(value: f64) -> String {
    let (number, unit) = match value {
        v if v < 10.0 => (format!("{v:.2}"), "ms"),
        v if v < 100.0 => (format!("{v:.1}"), "ms"),
        v if v < 1000.0 => (format!("{v:.0}"), "ms"),
        v => (format!("{:.2}", v / 1000.0), "s"),
    };
    let number = if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        &number
    };
    format!("{number} {unit}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        bench::Percentiles,
        mail::{ConfirmationEmail, Mailer},
    };

    fn mode(name: &'static str, p50: f64, delivery_p50: f64, delivery_max: f64) -> ModeReport {
        let percentiles = |p50: f64, max: f64| Percentiles {
            p50,
            p90: max,
            p99: max,
            max,
        };
        ModeReport {
            mode: name,
            requests: 100,
            wall_s: 1.0,
            throughput: 100.0,
            latency_ms: Some(percentiles(p50, p50 * 2.0)),
            statuses: BTreeMap::new(),
            connection_errors: 0,
            acknowledged: 100,
            delivered: 100,
            not_delivered: 0,
            delivery_ms: Some(percentiles(delivery_p50, delivery_max)),
        }
    }

    #[test]
    fn the_reading_states_the_measured_figures() {
        let modes = [
            mode("sync", 153.2, 153.0, 160.0),
            mode("background", 1.91, 812.0, 1520.0),
        ];

        let lines = reading(&modes, Duration::from_millis(150), 10);

        assert_eq!(
            lines,
            [
                "sync: p50 153 ms, of which 150 ms is the mail server's answer: the request waits \
                 for SMTP.",
                "background: p50 1.91 ms, 80× sooner: the request does not wait for the mail \
                 server.",
                "Its emails still went out, 10 at a time: 812 ms after the signup at p50, 1.52 s \
                 at worst.",
                "The wait moved from the user's request to the outbox.",
            ]
        );
    }

    #[test]
    fn without_latency_the_reading_suggests_some_and_claims_no_speed_up_it_did_not_see() {
        let modes = [
            mode("sync", 1.0, 1.0, 2.0),
            mode("background", 1.02, 3.0, 9.0),
        ];

        let lines = reading(&modes, Duration::ZERO, 4);

        assert!(lines[0].starts_with("sync: p50 1 ms: "), "{lines:?}");
        assert!(
            lines[1].starts_with("background: p50 1.02 ms: "),
            "{lines:?}"
        );
        assert!(lines.last().unwrap().contains("--smtp-latency 150ms"));
    }

    #[test]
    fn milliseconds_read_without_trailing_zeros() {
        let shown: Vec<String> = [0.84, 4.3, 50.0, 153.2, 1500.0, 1520.0]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(
            shown,
            ["0.84 ms", "4.3 ms", "50 ms", "153 ms", "1.5 s", "1.52 s"]
        );
    }

    #[test]
    fn the_link_is_found_in_the_text_and_shown_without_its_token() {
        let text = "Hi,\n\nopen this link:\n\nhttp://127.0.0.1:4000/confirm?token=abc\n\n-- x\n";

        let link = confirmation_link(text).unwrap();

        assert_eq!(link, "http://127.0.0.1:4000/confirm?token=abc");
        assert_eq!(without_token(link), "http://127.0.0.1:4000/confirm?token=…");
        assert_eq!(confirmation_link("no link here"), None);
    }

    #[test]
    fn a_slow_catcher_gets_a_timeout_longer_than_its_latency_and_settings_that_validate() {
        let settings = demo_settings(
            Settings::defaults(),
            "http://127.0.0.1:4000",
            Path::new("/tmp/demo"),
            "127.0.0.1:2525".parse().unwrap(),
            Duration::from_secs(30),
            12,
        )
        .unwrap();

        assert!(settings.smtp.timeout_ms >= 35_000);
        assert_eq!(settings.app.base_url, "http://127.0.0.1:4000");
        assert_eq!(settings.smtp.port, 2525);
        assert_eq!(settings.worker.concurrency, 12);
    }

    /// The service's own confirmation email, as lettre formats it: the case that matters.
    #[tokio::test]
    async fn the_link_survives_the_encoding_lettre_chose() {
        let settings = Settings::defaults();
        let mailer = Mailer::new(&settings.smtp, settings.mail_from()).unwrap();
        let link =
            "http://127.0.0.1:40123/confirm?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let message = mailer
            .confirmation(&ConfirmationEmail {
                id: 1,
                to_address: "ann@example.com",
                link,
            })
            .unwrap();
        let raw = message.formatted();
        let shown = String::from_utf8_lossy(&raw);
        assert!(
            shown.contains("Content-Transfer-Encoding: quoted-printable") && !shown.contains(link),
            "the case this test is for: the link is encoded\n{shown}"
        );

        let text = text_body(&raw).expect("a text part");

        assert!(text.contains(&format!("\n{link}\n")), "{text}");
        assert!(text.starts_with("Hi,\n"), "{text}");
        assert_eq!(confirmation_link(&text), Some(link));
    }

    #[test]
    fn the_first_plain_text_part_is_read_whatever_its_encoding() {
        let message = "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
            preamble\r\n\
            --outer\r\n\
            Content-Type: text/html\r\n\r\n\
            <p>not this</p>\r\n\
            --outer\r\n\
            Content-Type: text/plain;\r\n charset=utf-8\r\n\
            Content-Transfer-Encoding: base64\r\n\r\n\
            aGVsbG8g\r\nd29ybGQ=\r\n\
            --outer--\r\n\
            epilogue\r\n";
        assert_eq!(
            text_body(message.as_bytes()).as_deref(),
            Some("hello world")
        );

        let single = "Subject: plain\r\n\r\nline one\r\nline two\r\n";
        assert_eq!(
            text_body(single.as_bytes()).as_deref(),
            Some("line one\nline two\n")
        );
        assert_eq!(text_body(b"Content-Type: text/html\r\n\r\n<p>x</p>"), None);
    }
}
