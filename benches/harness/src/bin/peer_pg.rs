//! `peer_pg`: confirmd's outbox against apalis + apalis-postgres 1.0 on one PostgreSQL server,
//! with one instance and with several sharing a database.
//!
//! As `peer` does for SQLite: for each kind of job (one that does nothing, one that sends the
//! confirmation email), each number of instances (`--instances`, 1 and 3) and each queue
//! (confirmd; apalis-postgres as its README's basic worker and as its pubsub worker), on a fresh
//! database each time:
//!
//! - **pick-up latency under a trickle**: every instance's workers are started and left idle,
//!   then `--trickle` jobs are enqueued one every `--every-ms`, on the instances in turn.
//!   Latency runs from the return of the enqueue call (the job is committed) to the moment a
//!   worker of any instance starts on it (see `peer`).
//! - **drain rate from a backlog**: `--backlog` jobs are enqueued with no worker running
//!   (confirmd: `Store::create_signup`; apalis: one `push_bulk`), then every instance's workers
//!   start and the clock runs until the database counts every job done.
//!
//! Instances run in this one process: each has its own pool, its own workers and its own
//! listener (confirmd: its `Delivery` with its sweeper; apalis: its worker), and they meet only
//! in the database, as processes would. They share this process's two cores, which separate
//! processes on this machine would share too.
//!
//! Below the table: confirmd's no-op drain per core of this machine (shared with PostgreSQL),
//! beside River's published figure.

use std::{sync::Arc, time::Duration};

use clap::{Parser, ValueEnum};
use confirmd::mail::Mailer;
use confirmd_benches::{
    SmtpAddr,
    apalis_peer::JobContext,
    apalis_postgres_peer::{Listening, PgPeer},
    outbox::{Outbox, OutboxSettings},
    per_second,
    pickup::{Latencies, PickupClock},
    postgres::DEFAULT_SERVER,
    settings, warm_up,
};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};

/// River's figure: about 46,000 no-op jobs per second on an 8-core laptop, PostgreSQL included.
const RIVER_JOBS_PER_S: f64 = 46_000.0;
const RIVER_CORES: f64 = 8.0;

#[derive(Debug, Parser)]
#[command(
    about = "confirmd's outbox against apalis + apalis-postgres 1.0: pick-up latency and drain rate, one and several instances"
)]
struct Args {
    /// The PostgreSQL server; every measurement creates a database of its own there and drops it.
    #[arg(long, default_value = DEFAULT_SERVER, value_name = "URL")]
    postgres: String,
    /// The SMTP catcher, for jobs that send.
    #[arg(long, default_value = "127.0.0.1:1025", value_name = "HOST:PORT")]
    smtp: SmtpAddr,
    /// confirmd's `worker.concurrency` per instance; apalis runs as many jobs at once per instance.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Numbers of instances sharing one database.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    instances: Vec<usize>,
    /// Jobs enqueued one by one for the latency measurement.
    #[arg(long, default_value_t = 2000)]
    trickle: usize,
    /// Milliseconds between two enqueues of the trickle.
    #[arg(long, default_value_t = 5.0)]
    every_ms: f64,
    /// Jobs enqueued before the workers start, for the drain rate.
    #[arg(long, default_value_t = 10000)]
    backlog: usize,
    /// confirmd's `worker.queue_capacity` (its default is 1024).
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// apalis-postgres set-ups to measure.
    #[arg(long, value_delimiter = ',', default_value = "defaults,pubsub")]
    apalis: Vec<Listening>,
    /// Kinds of job to measure.
    #[arg(long, value_delimiter = ',', default_value = "noop,email")]
    jobs: Vec<JobKind>,
    /// How long workers are left idle after they start and before the trickle.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Emails sent through confirmd's Mailer before the first job that sends, and not measured.
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
    Apalis(Listening),
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Confirmd => "confirmd",
            System::Apalis(listening) => listening.describe(),
        }
    }
}

/// One queue under test: its instances on one fresh database, the first of which created it.
enum Subject {
    Confirmd(Vec<Outbox>),
    Apalis(Vec<PgPeer>),
}

impl Subject {
    async fn create(system: System, instances: usize, args: &Args) -> anyhow::Result<Subject> {
        Ok(match system {
            System::Confirmd => {
                let first = Outbox::create(&OutboxSettings {
                    smtp: args.smtp.clone(),
                    workers: args.workers,
                    queue_capacity: args.queue_capacity,
                    postgres: Some(args.postgres.clone()),
                })
                .await?;
                let mut all = Vec::with_capacity(instances);
                for _ in 1..instances {
                    all.push(first.join(first.url()).await?);
                }
                all.insert(0, first);
                Subject::Confirmd(all)
            }
            System::Apalis(listening) => {
                let first = PgPeer::create(&args.postgres, listening).await?;
                let mut all = Vec::with_capacity(instances);
                for n in 1..instances {
                    all.push(first.join(n).await?);
                }
                all.insert(0, first);
                Subject::Apalis(all)
            }
        })
    }

    async fn seed(&mut self, jobs: usize) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(all) => all[0].seed(jobs).await,
            Subject::Apalis(all) => all[0].seed(jobs).await,
        }
    }

    fn start(&mut self, job: JobKind, clock: Arc<PickupClock>, args: &Args) -> anyhow::Result<()> {
        let sends = job == JobKind::Email;
        match self {
            Subject::Confirmd(all) => {
                for outbox in all {
                    let mailer = outbox.observed_mailer(clock.clone(), sends)?;
                    outbox.start(mailer);
                }
            }
            Subject::Apalis(all) => {
                for peer in all {
                    let mailer = if sends {
                        let settings = settings(&args.smtp, args.workers)?;
                        Some(Mailer::new(&settings.smtp, settings.mail_from())?)
                    } else {
                        None
                    };
                    let context = JobContext {
                        clock: clock.clone(),
                        mailer,
                    };
                    peer.start(args.workers, context);
                }
            }
        }
        Ok(())
    }

    /// Enqueues job `i` on instance `i mod instances`: signups arrive at every instance.
    async fn enqueue(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(all) => {
                let n = all.len();
                all[i % n].enqueue(i).await
            }
            Subject::Apalis(all) => {
                let n = all.len();
                all[i % n].enqueue(i).await
            }
        }
    }

    async fn wait_done(&self, jobs: usize, deadline: Duration) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(all) => all[0].wait_sent(jobs, deadline).await,
            Subject::Apalis(all) => all[0].wait_done(jobs, deadline).await,
        }
    }

    /// Stops every instance, the one that owns the database last.
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Subject::Confirmd(all) => {
                for outbox in all.into_iter().rev() {
                    outbox.stop().await?;
                }
            }
            Subject::Apalis(all) => {
                for peer in all.into_iter().rev() {
                    peer.stop().await?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct Row {
    job: JobKind,
    instances: usize,
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
    /// Cores of this machine, shared by the benchmark, PostgreSQL and the catcher.
    cores: usize,
    rows: Vec<Row>,
    /// confirmd's no-op drain, one instance, per core of this machine.
    confirmd_noop_jobs_per_s_per_core: Option<f64>,
    river_jobs_per_s_per_core: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.workers > 0 && args.trickle > 0 && args.backlog > 0,
        "--workers, --trickle and --backlog must be at least 1"
    );
    anyhow::ensure!(
        args.instances.iter().all(|&n| n > 0),
        "--instances must be at least 1"
    );
    let systems: Vec<System> = std::iter::once(System::Confirmd)
        .chain(args.apalis.iter().copied().map(System::Apalis))
        .collect();
    let mut rows = Vec::new();
    for &job in &args.jobs {
        if job == JobKind::Email {
            if !args.json {
                eprintln!(
                    "peer_pg: warming the catcher up with {} emails",
                    args.warmup
                );
            }
            let deadline = Duration::from_secs(args.deadline_s);
            warm_up(&args.smtp, args.warmup, args.workers, deadline).await?;
        }
        for &instances in &args.instances {
            for &system in &systems {
                if !args.json {
                    eprintln!("peer_pg: {} x{instances} / {job:?}: trickle", system.name());
                }
                let pickup = trickle(system, instances, job, &args).await?;
                if !args.json {
                    eprintln!("peer_pg: {} x{instances} / {job:?}: drain", system.name());
                }
                let took = drain(system, instances, job, &args).await?;
                rows.push(Row {
                    job,
                    instances,
                    system,
                    pickup,
                    drain_seconds: took.as_secs_f64(),
                    drain_jobs_per_s: per_second(args.backlog, took),
                });
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let confirmd_noop_jobs_per_s_per_core = rows
        .iter()
        .find(|r| r.job == JobKind::Noop && r.instances == 1 && r.system == System::Confirmd)
        .map(|r| r.drain_jobs_per_s / cores as f64);
    let report = Report {
        smtp: args.smtp.to_string(),
        workers: args.workers,
        trickle: args.trickle,
        every_ms: args.every_ms,
        backlog: args.backlog,
        queue_capacity: args.queue_capacity,
        warmup: args.warmup,
        cores,
        rows,
        confirmd_noop_jobs_per_s_per_core,
        river_jobs_per_s_per_core: RIVER_JOBS_PER_S / RIVER_CORES,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Pick-up latency of `args.trickle` jobs enqueued one every `args.every_ms` to idle workers.
async fn trickle(
    system: System,
    instances: usize,
    job: JobKind,
    args: &Args,
) -> anyhow::Result<Latencies> {
    let deadline = Duration::from_secs(args.deadline_s);
    let clock = PickupClock::new(args.trickle);
    let mut subject = Subject::create(system, instances, args).await?;
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
async fn drain(
    system: System,
    instances: usize,
    job: JobKind,
    args: &Args,
) -> anyhow::Result<Duration> {
    let deadline = Duration::from_secs(args.deadline_s);
    let clock = PickupClock::new(args.backlog);
    let mut subject = Subject::create(system, instances, args).await?;
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
        "peer_pg: confirmd vs apalis 1.0 + apalis-postgres 1.0 on one PostgreSQL server, {} workers per instance",
        report.workers
    );
    println!(
        "trickle: {} jobs, one every {} ms, to idle workers, enqueued on the instances in turn; backlog: {} jobs; confirmd worker.queue_capacity {}",
        report.trickle, report.every_ms, report.backlog, report.queue_capacity
    );
    println!(
        "SMTP catcher {}, warmed up with {} emails before the first job that sends",
        report.smtp, report.warmup
    );
    println!();
    println!(
        "  {:<6} {:>4} {:<16} {:>12} {:>12} {:>12} {:>6} {:>14}",
        "job", "inst", "queue", "pick-up p50", "p99", "max", "early", "drain jobs/s"
    );
    for row in &report.rows {
        println!(
            "  {:<6} {:>4} {:<16} {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>6} {:>14.0}",
            job_name(row.job),
            row.instances,
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
        for apalis in report.rows.iter().filter(|r| {
            r.job == confirmd.job
                && r.instances == confirmd.instances
                && r.system != confirmd.system
        }) {
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
                "  {:<6} x{} vs {:<16} {}",
                job_name(confirmd.job),
                confirmd.instances,
                apalis.system.name(),
                verdicts.join(", ")
            );
        }
    }
    if let Some(per_core) = report.confirmd_noop_jobs_per_s_per_core {
        let verdict = if per_core >= report.river_jobs_per_s_per_core {
            "at or above"
        } else {
            "BELOW"
        };
        println!();
        println!(
            "  no-op drain per core: confirmd {per_core:.0} jobs/s per core (one instance, {} cores shared with PostgreSQL); River {:.0} (46,000 on 8 cores): {verdict} River's rate",
            report.cores, report.river_jobs_per_s_per_core
        );
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
