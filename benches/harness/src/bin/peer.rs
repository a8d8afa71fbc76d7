//! `peer`: confirmd's outbox against apalis + apalis-sqlite 1.0, in one run.
//!
//! For each kind of job (one that does nothing, one that sends the confirmation email to the
//! catcher) and each queue (confirmd; apalis with its defaults; apalis with the README's hooked
//! set-up, see `apalis_peer::Polling`), on a fresh SQLite file each time:
//!
//! - **pick-up latency under a trickle**: the workers are started and left to go idle, then
//!   `--trickle` jobs are enqueued one every `--every-ms`. Latency runs from the moment the
//!   producer's enqueue call returned (the job is committed) to the moment a worker starts on
//!   it: for apalis, the handler's first line; for confirmd, the transport's `send`, which a
//!   worker calls once it has claimed the row and built the email. p50, p99 and max.
//! - **drain rate from a backlog**: `--backlog` jobs are enqueued with no worker running
//!   (confirmd: `Store::create_signup`, as a background signup writes them; apalis: one
//!   `push_bulk`), then the workers start and the clock runs until the database says every job
//!   is done (confirmd: `sent` in the outbox; apalis: `Done` in `Jobs`). Jobs per second.
//!
//! The work per job is not identical, and the difference is confirmd's to carry: its enqueue is a
//! whole signup (user, token and outbox row in one transaction) where apalis inserts one row,
//! and its "no-op" job still claims the row, builds the MIME message and marks it sent.

use std::{sync::Arc, time::Duration};

use clap::{Parser, ValueEnum};
use confirmd::mail::Mailer;
use confirmd_benches::{
    SmtpAddr,
    apalis_peer::{JobContext, Peer, Polling},
    outbox::{Outbox, OutboxSettings},
    per_second,
    pickup::{Latencies, PickupClock},
    settings, warm_up,
};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};

#[derive(Debug, Parser)]
#[command(
    about = "confirmd's outbox against apalis + apalis-sqlite 1.0: pick-up latency and drain rate"
)]
struct Args {
    /// The SMTP catcher, for jobs that send.
    #[arg(long, default_value = "127.0.0.1:1025", value_name = "HOST:PORT")]
    smtp: SmtpAddr,
    /// confirmd's `worker.concurrency`; apalis runs as many jobs at once.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Jobs enqueued one by one for the latency measurement.
    #[arg(long, default_value_t = 2000)]
    trickle: usize,
    /// Milliseconds between two enqueues of the trickle.
    #[arg(long, default_value_t = 5.0)]
    every_ms: f64,
    /// Jobs enqueued before the workers start, for the drain rate.
    #[arg(long, default_value_t = 5000)]
    backlog: usize,
    /// confirmd's `worker.queue_capacity` (its default is 1024).
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// apalis set-ups to measure.
    #[arg(long, value_delimiter = ',', default_value = "defaults,hooked")]
    apalis: Vec<Polling>,
    /// Kinds of job to measure.
    #[arg(long, value_delimiter = ',', default_value = "noop,email")]
    jobs: Vec<JobKind>,
    /// How long workers are left idle after they start and before the trickle.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Emails sent through confirmd's Mailer before the first job that sends, and not measured:
    /// a catcher just started answers its first emails slowly, and that would count against
    /// whichever queue meets it first.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Longest a measurement may wait for its jobs before the run fails.
    #[arg(long, default_value_t = 300)]
    deadline_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum JobKind {
    /// The job does nothing.
    Noop,
    /// The job sends the confirmation email to the catcher.
    Email,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum System {
    Confirmd,
    Apalis(Polling),
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Confirmd => "confirmd",
            System::Apalis(polling) => polling.describe(),
        }
    }
}

/// One queue under test, on its own fresh database. Both are boxed: each is hundreds of bytes.
enum Subject {
    Confirmd(Box<Outbox>),
    Apalis(Box<Peer>),
}

impl Subject {
    async fn create(system: System, args: &Args) -> anyhow::Result<Subject> {
        Ok(match system {
            System::Confirmd => Subject::Confirmd(Box::new(
                Outbox::create(&OutboxSettings {
                    smtp: args.smtp.clone(),
                    workers: args.workers,
                    queue_capacity: args.queue_capacity,
                    postgres: None,
                })
                .await?,
            )),
            System::Apalis(polling) => Subject::Apalis(Box::new(Peer::create(polling).await?)),
        })
    }

    async fn seed(&mut self, jobs: usize) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(outbox) => outbox.seed(jobs).await,
            Subject::Apalis(peer) => peer.seed(jobs).await,
        }
    }

    fn start(&mut self, job: JobKind, clock: Arc<PickupClock>, args: &Args) -> anyhow::Result<()> {
        let sends = job == JobKind::Email;
        match self {
            Subject::Confirmd(outbox) => {
                let mailer = outbox.observed_mailer(clock, sends)?;
                outbox.start(mailer);
            }
            Subject::Apalis(peer) => {
                let mailer = if sends {
                    let settings = settings(&args.smtp, args.workers)?;
                    Some(Mailer::new(&settings.smtp, settings.mail_from())?)
                } else {
                    None
                };
                peer.start(args.workers, JobContext { clock, mailer });
            }
        }
        Ok(())
    }

    async fn enqueue(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(outbox) => outbox.enqueue(i).await,
            Subject::Apalis(peer) => peer.enqueue(i).await,
        }
    }

    async fn wait_done(&self, jobs: usize, deadline: Duration) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(outbox) => outbox.wait_sent(jobs, deadline).await,
            Subject::Apalis(peer) => peer.wait_done(jobs, deadline).await,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(outbox) => outbox.stop().await,
            Subject::Apalis(peer) => peer.stop().await,
        }
    }
}

#[derive(Debug, Serialize)]
struct Row {
    job: JobKind,
    system: System,
    pickup: Latencies,
    /// Seconds from the workers' start to the last job done.
    drain_seconds: f64,
    drain_jobs_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    smtp: String,
    workers: usize,
    trickle: usize,
    every_ms: f64,
    backlog: usize,
    queue_capacity: usize,
    warmup: usize,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.workers > 0 && args.trickle > 0 && args.backlog > 0,
        "--workers, --trickle and --backlog must be at least 1"
    );
    let systems: Vec<System> = std::iter::once(System::Confirmd)
        .chain(args.apalis.iter().copied().map(System::Apalis))
        .collect();
    let mut rows = Vec::new();
    for &job in &args.jobs {
        if job == JobKind::Email {
            if !args.json {
                eprintln!("peer: warming the catcher up with {} emails", args.warmup);
            }
            let deadline = Duration::from_secs(args.deadline_s);
            warm_up(&args.smtp, args.warmup, args.workers, deadline).await?;
        }
        for &system in &systems {
            if !args.json {
                eprintln!("peer: {} / {job:?}: trickle", system.name());
            }
            let pickup = trickle(system, job, &args).await?;
            if !args.json {
                eprintln!("peer: {} / {job:?}: drain", system.name());
            }
            let took = drain(system, job, &args).await?;
            rows.push(Row {
                job,
                system,
                pickup,
                drain_seconds: took.as_secs_f64(),
                drain_jobs_per_s: per_second(args.backlog, took),
            });
        }
    }
    let report = Report {
        smtp: args.smtp.to_string(),
        workers: args.workers,
        trickle: args.trickle,
        every_ms: args.every_ms,
        backlog: args.backlog,
        queue_capacity: args.queue_capacity,
        warmup: args.warmup,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Pick-up latency of `args.trickle` jobs enqueued one every `args.every_ms` to idle workers.
async fn trickle(system: System, job: JobKind, args: &Args) -> anyhow::Result<Latencies> {
    let deadline = Duration::from_secs(args.deadline_s);
    let clock = PickupClock::new(args.trickle);
    let mut subject = Subject::create(system, args).await?;
    subject.start(job, clock.clone(), args)?;
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;

    let mut ticks = tokio::time::interval(Duration::from_secs_f64(args.every_ms / 1e3));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for i in 0..args.trickle {
        ticks.tick().await;
        subject.enqueue(i).await?;
        clock.enqueued(i);
    }
    clock.wait_picked(args.trickle, deadline).await?;
    subject.wait_done(args.trickle, deadline).await?;
    subject.stop().await?;
    Ok(clock.latencies())
}

/// Time for workers started on a backlog of `args.backlog` jobs to finish them all.
async fn drain(system: System, job: JobKind, args: &Args) -> anyhow::Result<Duration> {
    let deadline = Duration::from_secs(args.deadline_s);
    let clock = PickupClock::new(args.backlog);
    let mut subject = Subject::create(system, args).await?;
    subject.seed(args.backlog).await?;
    let started = Instant::now();
    subject.start(job, clock.clone(), args)?;
    clock.wait_picked(args.backlog, deadline).await?;
    subject.wait_done(args.backlog, deadline).await?;
    let took = started.elapsed();
    subject.stop().await?;
    Ok(took)
}

fn print_table(report: &Report) {
    println!(
        "peer: confirmd vs apalis 1.0 + apalis-sqlite 1.0, {} workers each; SQLite WAL, synchronous=NORMAL, busy_timeout 5 s",
        report.workers
    );
    println!(
        "trickle: {} jobs, one every {} ms, to idle workers; backlog: {} jobs; confirmd worker.queue_capacity {}",
        report.trickle, report.every_ms, report.backlog, report.queue_capacity
    );
    println!(
        "SMTP catcher {}, warmed up with {} emails before the first job that sends",
        report.smtp, report.warmup
    );
    println!();
    println!(
        "  {:<6} {:<16} {:>12} {:>12} {:>12} {:>6} {:>14}",
        "job", "queue", "pick-up p50", "p99", "max", "early", "drain jobs/s"
    );
    for row in &report.rows {
        println!(
            "  {:<6} {:<16} {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>6} {:>14.0}",
            job_name(row.job),
            row.system.name(),
            row.pickup.p50_ms,
            row.pickup.p99_ms,
            row.pickup.max_ms,
            row.pickup.early,
            row.drain_jobs_per_s,
        );
    }
    println!();
    println!(
        "  confirmd against each apalis set-up (pick-up: lower is ahead; drain: higher is ahead)"
    );
    for confirmd in report.rows.iter().filter(|r| r.system == System::Confirmd) {
        for apalis in report
            .rows
            .iter()
            .filter(|r| r.job == confirmd.job && r.system != System::Confirmd)
        {
            let measures = [
                ("p50", confirmd.pickup.p50_ms, apalis.pickup.p50_ms, false),
                ("p99", confirmd.pickup.p99_ms, apalis.pickup.p99_ms, false),
                (
                    "drain",
                    confirmd.drain_jobs_per_s,
                    apalis.drain_jobs_per_s,
                    true,
                ),
            ];
            let verdicts: Vec<String> = measures
                .iter()
                .map(|&(name, ours, theirs, higher_is_better)| {
                    let ahead = if higher_is_better {
                        ours >= theirs
                    } else {
                        ours <= theirs
                    };
                    let word = if ahead { "ahead" } else { "BEHIND" };
                    format!("{name} {word} ({})", ratio(ours, theirs))
                })
                .collect();
            println!(
                "  {:<6} vs {:<16} {}",
                job_name(confirmd.job),
                apalis.system.name(),
                verdicts.join(", ")
            );
        }
    }
}

fn job_name(job: JobKind) -> &'static str {
    match job {
        JobKind::Noop => "no-op",
        JobKind::Email => "email",
    }
}

/// `ours` as a multiple of `theirs`, e.g. "0.01x".
fn ratio(ours: f64, theirs: f64) -> String {
    if theirs == 0.0 {
        return "n/a".to_owned();
    }
    let r = ours / theirs;
    if r < 0.1 {
        format!("{r:.3}x")
    } else {
        format!("{r:.2}x")
    }
}
