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
//! It prints emails per second for each and confirmd's ratio to each baseline.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use confirmd::mail::Mailer;
use confirmd_benches::{
    SmtpAddr, confirmation,
    outbox::{Outbox, OutboxSettings},
    per_second, settings,
};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, transport::smtp::PoolConfig};
use serde::Serialize;
use tokio::task::JoinSet;

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
    /// Longest a sender may take before the run fails.
    #[arg(long, default_value_t = 600)]
    deadline_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    smtp: String,
    emails: usize,
    concurrency: usize,
    queue_capacity: usize,
    lettre_pool: Rate,
    confirmd_mailer: Rate,
    confirmd_outbox: Rate,
    /// confirmd outbox ÷ lettre pool.
    ratio_to_lettre_pool: f64,
    /// confirmd outbox ÷ confirmd Mailer.
    ratio_to_confirmd_mailer: f64,
}

#[derive(Debug, Serialize)]
struct Rate {
    seconds: f64,
    emails_per_s: f64,
}

impl Rate {
    fn new(emails: usize, took: Duration) -> Rate {
        Rate {
            seconds: took.as_secs_f64(),
            emails_per_s: per_second(emails, took),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.emails > 0 && args.concurrency > 0,
        "--emails and --concurrency must be at least 1"
    );
    let deadline = Duration::from_secs(args.deadline_s);
    let progress = |what: &str| {
        if !args.json {
            eprintln!("drain: {what}");
        }
    };
    let settings = settings(&args.smtp, args.concurrency)?;
    // Builds every message, for every sender; the transport it would send through goes unused.
    let builder = Mailer::new(&settings.smtp, settings.mail_from())?;

    progress("lettre's pooled AsyncSmtpTransport");
    let lettre = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&args.smtp.host)
        .port(args.smtp.port)
        .pool_config(PoolConfig::new().max_size(args.concurrency as u32))
        .build();
    let took = send_concurrently(args.emails, args.concurrency, deadline, {
        let builder = builder.clone();
        move |i| {
            let (builder, lettre) = (builder.clone(), lettre.clone());
            async move {
                lettre.send(confirmation(&builder, i)?).await?;
                Ok(())
            }
        }
    })
    .await
    .context("lettre's pooled transport")?;
    let lettre_pool = Rate::new(args.emails, took);

    progress("confirmd's Mailer, no database");
    let mailer = Mailer::new(&settings.smtp, settings.mail_from())?;
    let took = send_concurrently(args.emails, args.concurrency, deadline, move |i| {
        let mailer = mailer.clone();
        async move {
            mailer.send(confirmation(&mailer, i)?).await?;
            Ok(())
        }
    })
    .await
    .context("confirmd's Mailer")?;
    let confirmd_mailer = Rate::new(args.emails, took);

    progress("confirmd's outbox: seeding the backlog");
    let mut outbox = Outbox::create(&OutboxSettings {
        smtp: args.smtp.clone(),
        workers: args.concurrency,
        queue_capacity: args.queue_capacity,
    })
    .await?;
    outbox.seed(args.emails).await?;
    progress("confirmd's outbox: workers draining");
    let mailer = outbox.smtp_mailer()?;
    let started = Instant::now();
    outbox.start(mailer);
    outbox.wait_sent(args.emails, deadline).await?;
    let confirmd_outbox = Rate::new(args.emails, started.elapsed());
    outbox.stop().await;

    let report = Report {
        smtp: args.smtp.to_string(),
        emails: args.emails,
        concurrency: args.concurrency,
        queue_capacity: args.queue_capacity,
        ratio_to_lettre_pool: confirmd_outbox.emails_per_s / lettre_pool.emails_per_s,
        ratio_to_confirmd_mailer: confirmd_outbox.emails_per_s / confirmd_mailer.emails_per_s,
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

/// Sends emails `0..emails` from `concurrency` tasks, each taking the next number from a shared
/// counter; returns the time from the first task's start to the last email's acceptance.
async fn send_concurrently<F, Fut>(
    emails: usize,
    concurrency: usize,
    deadline: Duration,
    send: F,
) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (next, send) = (next.clone(), send.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= emails {
                    return Ok::<_, anyhow::Error>(());
                }
                send(i).await.with_context(|| format!("email {i}"))?;
            }
        });
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(deadline, all)
        .await
        .with_context(|| format!("not done within {deadline:?}"))??;
    Ok(started.elapsed())
}

fn print_table(report: &Report) {
    println!(
        "drain: {} emails per sender, concurrency {}, SMTP catcher {}, confirmd worker.queue_capacity {}",
        report.emails, report.concurrency, report.smtp, report.queue_capacity
    );
    println!();
    println!(
        "  {:<46} {:>10} {:>9} {:>16}",
        "sender", "emails/s", "seconds", "confirmd ratio"
    );
    let rows = [
        (
            "lettre AsyncSmtpTransport, pooled",
            &report.lettre_pool,
            Some(report.ratio_to_lettre_pool),
        ),
        (
            "confirmd Mailer (NODELAY pool), no database",
            &report.confirmd_mailer,
            Some(report.ratio_to_confirmd_mailer),
        ),
        (
            "confirmd outbox workers, from a backlog",
            &report.confirmd_outbox,
            None,
        ),
    ];
    for (name, rate, ratio) in rows {
        let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0));
        println!(
            "  {:<46} {:>10.0} {:>9.2} {:>16}",
            name, rate.emails_per_s, rate.seconds, ratio
        );
    }
    println!();
    for (baseline, ratio) in [
        ("lettre's pooled transport", report.ratio_to_lettre_pool),
        ("confirmd's Mailer alone", report.ratio_to_confirmd_mailer),
    ] {
        let verdict = if ratio >= 0.9 { "at or above" } else { "BELOW" };
        println!(
            "  confirmd's outbox drains at {:.0}% of {baseline}: {verdict} the 90% target",
            ratio * 100.0
        );
    }
}
