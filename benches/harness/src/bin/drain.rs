//! `drain`: how fast confirmd's outbox workers empty a backlog, against raw senders.
//!
//! In one run, against one SMTP catcher, at one concurrency, every sender delivers the same
//! number of confirmation emails built by confirmd's `Mailer::confirmation`:
//!
//! 1. **lettre pool**: lettre's own `AsyncSmtpTransport` (`builder_dangerous`, a pool of
//!    `concurrency` connections), with `concurrency` tasks sending. What a team would write
//!    without confirmd.
//! 2. **confirmd Mailer**: confirmd's transport (its pool of `TCP_NODELAY` connections) used
//!    directly by `concurrency` tasks, with no database. The strict baseline: the difference
//!    between this and (3) is the outbox's own cost.
//! 3. **confirmd outbox**: the emails are first queued in a fresh outbox through confirmd's own
//!    `Store::create_signup`, with no worker running; then the worker pool starts
//!    (`worker.concurrency` = `smtp.pool_size` = `concurrency`), and the clock runs from that
//!    start until the outbox table says every email is `sent`.
//!
//! The three run `--rounds` times, odd rounds in reverse order. It prints the median emails per
//! second of each and confirmd's ratio to each baseline (median to median).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use confirmd::mail::Mailer;
use confirmd_benches::{
    SmtpAddr, confirmation,
    outbox::{Outbox, OutboxSettings},
    per_second,
    pickup::PickupClock,
    send_concurrently, settings, warm_up,
};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, transport::smtp::PoolConfig};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(about = "Drain rate of confirmd's outbox workers against raw pooled SMTP senders")]
struct Args {
    /// The SMTP catcher.
    #[arg(long, default_value = "127.0.0.1:1025", value_name = "HOST:PORT")]
    smtp: SmtpAddr,
    /// Emails each sender delivers.
    #[arg(long, default_value_t = 5000)]
    emails: usize,
    /// Sending tasks, SMTP connections and confirmd workers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// confirmd's `worker.queue_capacity` (its default is 1024).
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// Rounds of the three senders; odd rounds run them in reverse order, so that a catcher that
    /// slows as it fills up (or a neighbour's build) weighs on each alike. Rates are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Emails sent through confirmd's Mailer before the first round and not measured: a catcher
    /// just started answers its first emails slowly, and that would count against whichever
    /// sender comes first.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Longest one sender may take before the run fails.
    #[arg(long, default_value_t = 600)]
    deadline_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The three senders, in the order of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    LettrePool,
    ConfirmdMailer,
    ConfirmdOutbox,
}

const SENDERS: [Sender; 3] = [
    Sender::LettrePool,
    Sender::ConfirmdMailer,
    Sender::ConfirmdOutbox,
];

impl Sender {
    fn name(self) -> &'static str {
        match self {
            Sender::LettrePool => "lettre AsyncSmtpTransport, pooled",
            Sender::ConfirmdMailer => "confirmd Mailer (NODELAY pool), no database",
            Sender::ConfirmdOutbox => "confirmd outbox workers, from a backlog",
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    smtp: String,
    emails: usize,
    concurrency: usize,
    queue_capacity: usize,
    rounds: usize,
    warmup: usize,
    lettre_pool: Rates,
    confirmd_mailer: Rates,
    confirmd_outbox: Rates,
    /// Median confirmd outbox ÷ median lettre pool.
    ratio_to_lettre_pool: f64,
    /// Median confirmd outbox ÷ median confirmd Mailer.
    ratio_to_confirmd_mailer: f64,
}

/// One sender's rounds.
#[derive(Debug, Default, Serialize)]
struct Rates {
    median_emails_per_s: f64,
    /// Emails per second of each round, in round order.
    rounds: Vec<f64>,
}

impl Rates {
    fn add(&mut self, emails: usize, took: Duration) {
        self.rounds.push(per_second(emails, took));
        let mut sorted = self.rounds.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        self.median_emails_per_s = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.emails > 0 && args.concurrency > 0 && args.rounds > 0,
        "--emails, --concurrency and --rounds must be at least 1"
    );
    if !args.json {
        eprintln!("drain: warming the catcher up with {} emails", args.warmup);
    }
    warm_up(
        &args.smtp,
        args.warmup,
        args.concurrency,
        deadline_of(&args),
    )
    .await?;
    let mut rates = [Rates::default(), Rates::default(), Rates::default()];
    for round in 0..args.rounds {
        let mut order = SENDERS;
        if round % 2 == 1 {
            order.reverse();
        }
        for sender in order {
            if !args.json {
                eprintln!(
                    "drain: round {} of {}: {}",
                    round + 1,
                    args.rounds,
                    sender.name()
                );
            }
            let took = measure(sender, &args)
                .await
                .with_context(|| sender.name())?;
            let slot = SENDERS.iter().position(|&s| s == sender).expect("a sender");
            rates[slot].add(args.emails, took);
        }
    }
    let [lettre_pool, confirmd_mailer, confirmd_outbox] = rates;
    let report = Report {
        smtp: args.smtp.to_string(),
        emails: args.emails,
        concurrency: args.concurrency,
        queue_capacity: args.queue_capacity,
        rounds: args.rounds,
        warmup: args.warmup,
        ratio_to_lettre_pool: confirmd_outbox.median_emails_per_s / lettre_pool.median_emails_per_s,
        ratio_to_confirmd_mailer: confirmd_outbox.median_emails_per_s
            / confirmd_mailer.median_emails_per_s,
        lettre_pool,
        confirmd_mailer,
        confirmd_outbox,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// How long `sender` takes to deliver `args.emails` emails.
async fn measure(sender: Sender, args: &Args) -> anyhow::Result<Duration> {
    let deadline = deadline_of(args);
    let settings = settings(&args.smtp, args.concurrency)?;
    match sender {
        Sender::LettrePool => {
            // confirmd's Mailer only builds the messages here; lettre sends them.
            let builder = Mailer::new(&settings.smtp, settings.mail_from())?;
            let lettre = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&args.smtp.host)
                .port(args.smtp.port)
                .pool_config(PoolConfig::new().max_size(args.concurrency as u32))
                .build();
            send_concurrently(args.emails, args.concurrency, deadline, move |i| {
                let (builder, lettre) = (builder.clone(), lettre.clone());
                async move {
                    lettre.send(confirmation(&builder, i)?).await?;
                    Ok(())
                }
            })
            .await
        }
        Sender::ConfirmdMailer => {
            let mailer = Mailer::new(&settings.smtp, settings.mail_from())?;
            send_concurrently(args.emails, args.concurrency, deadline, move |i| {
                let mailer = mailer.clone();
                async move {
                    mailer.send(confirmation(&mailer, i)?).await?;
                    Ok(())
                }
            })
            .await
        }
        Sender::ConfirmdOutbox => {
            let mut outbox = Outbox::create(&OutboxSettings {
                smtp: args.smtp.clone(),
                workers: args.concurrency,
                queue_capacity: args.queue_capacity,
                postgres: None,
            })
            .await?;
            outbox.seed(args.emails).await?;
            // SMTP as in production; the pick-up count only tells when to start asking the
            // database whether the last emails are `sent`.
            let clock = PickupClock::new(args.emails);
            let mailer = outbox.observed_mailer(clock.clone(), true)?;
            let started = Instant::now();
            outbox.start(mailer);
            clock.wait_picked(args.emails, deadline).await?;
            outbox.wait_sent(args.emails, deadline).await?;
            let took = started.elapsed();
            outbox.stop().await?;
            Ok(took)
        }
    }
}

fn deadline_of(args: &Args) -> Duration {
    Duration::from_secs(args.deadline_s)
}

fn print_table(report: &Report) {
    println!(
        "drain: {} emails per sender, concurrency {}, SMTP catcher {} (warmed up with {} emails), confirmd worker.queue_capacity {}",
        report.emails, report.concurrency, report.smtp, report.warmup, report.queue_capacity
    );
    println!(
        "{} round(s); emails/s is the median, the rounds' figures follow",
        report.rounds
    );
    println!();
    println!(
        "  {:<44} {:>9} {:>15}  rounds",
        "sender", "emails/s", "confirmd ratio"
    );
    let rows = [
        (
            Sender::LettrePool,
            &report.lettre_pool,
            Some(report.ratio_to_lettre_pool),
        ),
        (
            Sender::ConfirmdMailer,
            &report.confirmd_mailer,
            Some(report.ratio_to_confirmd_mailer),
        ),
        (Sender::ConfirmdOutbox, &report.confirmd_outbox, None),
    ];
    for (sender, rates, ratio) in rows {
        let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
        let rounds: Vec<String> = rates.rounds.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "  {:<44} {:>9.0} {:>15}  {}",
            sender.name(),
            rates.median_emails_per_s,
            ratio,
            rounds.join(" ")
        );
    }
    println!();
    for (baseline, ratio) in [
        ("lettre's pooled transport", report.ratio_to_lettre_pool),
        ("confirmd's Mailer alone", report.ratio_to_confirmd_mailer),
    ] {
        let verdict = if ratio >= 0.9 { "at or above" } else { "BELOW" };
        println!(
            "  confirmd's outbox drains at {:.1}% of {baseline}: {verdict} the 90% target",
            ratio * 100.0
        );
    }
}
