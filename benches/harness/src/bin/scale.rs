//! `scale`: does the drain grow with the number of confirmd instances on one PostgreSQL database?
//!
//! For each number of instances N (`--instances`, 1, 2 and 3), on a fresh database:
//!
//! 1. `--emails` background signups are written with confirmd's own `Store::create_signup`
//!    (user, token and queued email, one transaction each), while nothing sends.
//! 2. N processes of the real binary, `confirmd serve`, start on that database, each with
//!    `--workers` workers and as many SMTP connections, all sending to one mail catcher that
//!    answers every email after `--latency-ms` (150), as a real provider takes about that long.
//! 3. The clock runs until the database counts every email `sent`.
//!
//! With the sender's wait dominating, one instance delivers at most `workers / latency` emails
//! per second (4 / 0.15 s ≈ 27); N instances should deliver N times that, each claiming rows the
//! others skip. Two rates are shown: from the processes' start (start-up included), and the
//! steady rate from the catcher's first email to its last, which the target is judged on.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use confirmd_benches::{
    SmtpAddr,
    outbox::{Outbox, OutboxSettings},
    per_second,
    postgres::{DEFAULT_SERVER, TOKEN_SECRET},
};
use confirmd_catcher::Catcher;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(about = "Drain rate of 1, 2 and 3 confirmd processes sharing one PostgreSQL database")]
struct Args {
    /// The PostgreSQL server; each measurement creates a database of its own there and drops it.
    #[arg(long, default_value = DEFAULT_SERVER, value_name = "URL")]
    postgres: String,
    /// The `confirmd` binary to run (default: the one beside this program, from
    /// `cargo build [--release] --bin confirmd`).
    #[arg(long, value_name = "PATH")]
    confirmd: Option<PathBuf>,
    /// Numbers of instances to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    instances: Vec<usize>,
    /// Emails in the backlog, for each number of instances.
    #[arg(long, default_value_t = 2000)]
    emails: usize,
    /// `worker.concurrency` and `smtp.pool_size` of each instance (confirmd's default is 4).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// How long the catcher takes to answer each email.
    #[arg(long, default_value_t = 150)]
    latency_ms: u64,
    /// Longest one drain may take before the run fails.
    #[arg(long, default_value_t = 600)]
    deadline_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    instances: usize,
    /// From the processes' start to the last email `sent`.
    wall_seconds: f64,
    wall_emails_per_s: f64,
    /// From the catcher's first email to its last.
    steady_emails_per_s: f64,
    /// `steady_emails_per_s` over N × the one-instance figure.
    scaling: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    emails: usize,
    workers: usize,
    latency_ms: u64,
    /// `workers / latency`: what one instance could reach if nothing but the catcher took time.
    ceiling_per_instance: f64,
    rows: Vec<Row>,
}

/// One `confirmd serve`, killed when dropped.
struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.emails > 1 && args.workers > 0 && args.instances.iter().all(|&n| n > 0),
        "--emails must be at least 2, --workers and --instances at least 1"
    );
    let binary = match &args.confirmd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's folder")?
            .join("confirmd"),
    };
    anyhow::ensure!(
        binary.is_file(),
        "no confirmd binary at {}: build it first (cargo build [--release] --bin confirmd) or pass --confirmd",
        binary.display()
    );
    let mut rows: Vec<Row> = Vec::new();
    for &instances in &args.instances {
        if !args.json {
            eprintln!(
                "scale: {instances} instance(s), {} emails in the backlog",
                args.emails
            );
        }
        let (wall, steady) = measure(&binary, instances, &args).await?;
        let steady_emails_per_s = per_second(args.emails - 1, steady);
        let one = rows.iter().find(|r| r.instances == 1);
        rows.push(Row {
            instances,
            wall_seconds: wall.as_secs_f64(),
            wall_emails_per_s: per_second(args.emails, wall),
            steady_emails_per_s,
            scaling: one
                .map(|one| steady_emails_per_s / (instances as f64 * one.steady_emails_per_s)),
        });
    }
    let report = Report {
        emails: args.emails,
        workers: args.workers,
        latency_ms: args.latency_ms,
        ceiling_per_instance: args.workers as f64 / (args.latency_ms as f64 / 1e3),
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Drains a backlog with `instances` processes: the time from their start to the last email
/// `sent`, and from the catcher's first email to its last.
async fn measure(
    binary: &Path,
    instances: usize,
    args: &Args,
) -> anyhow::Result<(Duration, Duration)> {
    let deadline = Duration::from_secs(args.deadline_s);
    let catcher = Catcher::start(Duration::from_millis(args.latency_ms)).await?;
    let smtp = SmtpAddr {
        host: catcher.addr().ip().to_string(),
        port: catcher.addr().port(),
    };
    let outbox = Outbox::create(&OutboxSettings {
        smtp: smtp.clone(),
        workers: args.workers,
        queue_capacity: 1024,
        postgres: Some(args.postgres.clone()),
    })
    .await?;
    outbox.seed(args.emails).await?;

    let started = Instant::now();
    let mut running = Vec::with_capacity(instances);
    for _ in 0..instances {
        running.push(spawn(binary, outbox.url(), &smtp, args.workers)?);
    }
    let mut first = None;
    while catcher.received() < args.emails {
        if first.is_none() && catcher.received() > 0 {
            first = Some(Instant::now());
        }
        for instance in &mut running {
            if let Some(status) = instance.0.try_wait()? {
                bail!("a confirmd instance exited early: {status}");
            }
        }
        if started.elapsed() > deadline {
            bail!(
                "{} of {} emails received within {deadline:?}",
                catcher.received(),
                args.emails
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = Instant::now();
    outbox.wait_sent(args.emails, deadline).await?;
    let wall = started.elapsed();
    drop(running);
    outbox.stop().await?;
    catcher.stop().await;
    let first = first.context("the catcher's first email went unseen")?;
    Ok((wall, last - first))
}

/// Starts `confirmd serve` on the database at `url`, sending to `smtp` with `workers` workers.
fn spawn(binary: &Path, url: &str, smtp: &SmtpAddr, workers: usize) -> anyhow::Result<Instance> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(binary)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .env("CONFIRMD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CONFIRMD_DATABASE__URL", url)
        .env("CONFIRMD_SMTP__HOST", &smtp.host)
        .env("CONFIRMD_SMTP__PORT", smtp.port.to_string())
        .env("CONFIRMD_SMTP__POOL_SIZE", workers.to_string())
        .env("CONFIRMD_WORKER__CONCURRENCY", workers.to_string())
        // The seeded links were derived with this secret: the instances must share it.
        .env("CONFIRMD_TOKEN__SECRET", TOKEN_SECRET)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(Instance(child))
}

fn print_table(report: &Report) {
    println!(
        "scale: {} queued emails drained by N `confirmd serve` processes on one PostgreSQL database; {} workers each; the catcher answers after {} ms (ceiling {:.1} emails/s per instance)",
        report.emails, report.workers, report.latency_ms, report.ceiling_per_instance
    );
    println!();
    println!(
        "  {:>9} {:>12} {:>18} {:>18} {:>22}",
        "instances", "wall s", "emails/s (wall)", "emails/s (steady)", "steady / (N x one)"
    );
    for row in &report.rows {
        println!(
            "  {:>9} {:>12.2} {:>18.1} {:>18.1} {:>22}",
            row.instances,
            row.wall_seconds,
            row.wall_emails_per_s,
            row.steady_emails_per_s,
            row.scaling
                .map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0))
        );
    }
    println!();
    for row in report.rows.iter().filter(|r| r.instances > 1) {
        if let Some(scaling) = row.scaling {
            let verdict = if scaling >= 0.9 { "meets" } else { "MISSES" };
            println!(
                "  {} instances drain at {:.1}% of {} x one instance: {verdict} the 90% target",
                row.instances,
                scaling * 100.0,
                row.instances
            );
        }
    }
}
