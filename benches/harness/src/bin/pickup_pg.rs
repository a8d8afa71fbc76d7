//! `pickup_pg`: a signup committed on one instance, sent by another, on one PostgreSQL database.
//!
//! Instance A is a `Store` with no workers: it only writes background signups with
//! `Store::create_signup`, as `POST /signups` does, one every `--every-ms`. Instance B is a whole
//! delivery core (its own pool, listener, sweeper and `--workers` workers) on the same database.
//! Latency runs from the return of A's `create_signup` (the signup is committed) to the moment a
//! worker of B starts on the email (its transport's `send`, which sends nothing: the job is
//! claim, build, mark sent).
//!
//! Two ways for B to learn of A's signups:
//!
//! - **notifications on**: as confirmd runs. A's signup statement ends with `pg_notify`, whose
//!   payload counts the emails it wrote (one here), and B's listener offers its workers as many
//!   of the rows due next.
//! - **notifications off**: only B's sweeper finds the rows, every `worker.sweep_interval_ms`
//!   (`--sweep-interval-ms`, confirmd's default 2000). confirmd has no switch for this, and
//!   needs none; here A's sessions put a schema of the benchmark's ahead of `pg_catalog` in their
//!   `search_path`, whose `pg_notify(text, text)` does nothing, so A's unchanged statement
//!   notifies no one. A listener of the benchmark's own on confirmd's channel counts what is
//!   sent: the run fails if any notification arrives while they are meant to be off, or if
//!   fewer than one per signup arrive while they are on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use confirmd::store::postgres::CHANNEL;
use confirmd_benches::{
    outbox::{Outbox, OutboxSettings},
    pickup::{Latencies, PickupClock},
    postgres::DEFAULT_SERVER,
};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, PgConnection, postgres::PgListener};
use tokio::time::MissedTickBehavior;

/// The schema whose `pg_notify` does nothing, for instance A's sessions when notifications are off.
const SILENT_SCHEMA: &str = "confirmd_bench_silent";

#[derive(Debug, Parser)]
#[command(
    about = "Cross-instance pick-up on PostgreSQL: signup on instance A, send by instance B, with and without notifications"
)]
struct Args {
    /// The PostgreSQL server; each measurement creates a database of its own there and drops it.
    #[arg(long, default_value = DEFAULT_SERVER, value_name = "URL")]
    postgres: String,
    /// Signups written on instance A.
    #[arg(long, default_value_t = 1000)]
    trickle: usize,
    /// Milliseconds between two signups.
    #[arg(long, default_value_t = 10.0)]
    every_ms: f64,
    /// Instance B's `worker.concurrency` (confirmd's default is 4).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Instance B's `worker.sweep_interval_ms` (confirmd's default is 2000).
    #[arg(long, default_value_t = 2000)]
    sweep_interval_ms: u64,
    /// Which ways to measure.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    notifications: Vec<Notifications>,
    /// How long B's workers are left idle after they start and before the trickle.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Longest a measurement may wait for its jobs before the run fails.
    #[arg(long, default_value_t = 300)]
    deadline_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Notifications {
    On,
    Off,
}

#[derive(Debug, Serialize)]
struct Row {
    notifications: Notifications,
    pickup: Latencies,
    /// Notifications on confirmd's channel while the signups were written.
    notifications_heard: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    trickle: usize,
    every_ms: f64,
    workers: usize,
    sweep_interval_ms: u64,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.trickle > 0 && args.workers > 0 && args.sweep_interval_ms > 0,
        "--trickle, --workers and --sweep-interval-ms must be at least 1"
    );
    let mut rows = Vec::new();
    for &notifications in &args.notifications {
        if !args.json {
            eprintln!("pickup_pg: notifications {notifications:?}");
        }
        rows.push(measure(notifications, &args).await?);
    }
    let report = Report {
        trickle: args.trickle,
        every_ms: args.every_ms,
        workers: args.workers,
        sweep_interval_ms: args.sweep_interval_ms,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(notifications: Notifications, args: &Args) -> anyhow::Result<Row> {
    let deadline = Duration::from_secs(args.deadline_s);
    // B: the instance that sends. Its SMTP address is never dialled: its transport sends nothing.
    let mut b = Outbox::create(&OutboxSettings {
        smtp: "127.0.0.1:1".parse().map_err(anyhow::Error::msg)?,
        workers: args.workers,
        queue_capacity: 1024,
        postgres: Some(args.postgres.clone()),
    })
    .await?;
    b.set_sweep_interval(Duration::from_millis(args.sweep_interval_ms));
    let a_url = match notifications {
        Notifications::On => b.url().to_owned(),
        Notifications::Off => silence_notifications(b.url()).await?,
    };
    let a = b.join(&a_url).await?;

    let heard = Arc::new(AtomicUsize::new(0));
    let mut listener = PgListener::connect(b.url()).await?;
    listener.listen(CHANNEL).await?;
    let counting = tokio::spawn({
        let heard = heard.clone();
        async move {
            while listener.recv().await.is_ok() {
                heard.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let clock = PickupClock::new(args.trickle);
    let mailer = b.observed_mailer(clock.clone(), false)?;
    b.start(mailer);
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(args.every_ms / 1e3));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for i in 0..args.trickle {
        ticks.tick().await;
        a.write_signup(i).await?;
        clock.enqueued(i);
    }
    clock.wait_picked(args.trickle, deadline).await?;
    b.wait_sent(args.trickle, deadline).await?;
    counting.abort();
    let heard = heard.load(Ordering::Relaxed);
    a.stop().await?;
    b.stop().await?;
    match notifications {
        Notifications::On if heard < args.trickle => {
            bail!("{heard} notifications for {} signups", args.trickle)
        }
        Notifications::Off if heard > 0 => {
            bail!("{heard} notifications arrived while they were meant to be off")
        }
        _ => {}
    }
    Ok(Row {
        notifications,
        pickup: clock.latencies(),
        notifications_heard: heard,
    })
}

/// Adds to the database at `url` a schema whose `pg_notify(text, text)` does nothing, and
/// returns a URL whose sessions find it before `pg_catalog`'s.
async fn silence_notifications(url: &str) -> anyhow::Result<String> {
    let mut connection = PgConnection::connect(url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {SILENT_SCHEMA};
         CREATE FUNCTION {SILENT_SCHEMA}.pg_notify(text, text) RETURNS void
             LANGUAGE plpgsql AS $$ BEGIN END $$;"
    )))
    .execute(&mut connection)
    .await
    .context("cannot create the silent pg_notify")?;
    connection.close().await?;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{url}{separator}options[search_path]={SILENT_SCHEMA},pg_catalog,public"
    ))
}

fn print_table(report: &Report) {
    println!(
        "pickup_pg: {} background signups on instance A (a Store, no workers), one every {} ms; instance B: {} workers, sweep interval {} ms",
        report.trickle, report.every_ms, report.workers, report.sweep_interval_ms
    );
    println!();
    println!(
        "  {:<14} {:>12} {:>12} {:>12} {:>6} {:>14}",
        "notifications", "pick-up p50", "p99", "max", "early", "notifications"
    );
    for row in &report.rows {
        println!(
            "  {:<14} {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>6} {:>14}",
            format!("{:?}", row.notifications).to_lowercase(),
            row.pickup.p50_ms,
            row.pickup.p99_ms,
            row.pickup.max_ms,
            row.pickup.early,
            row.notifications_heard
        );
    }
    if let Some(on) = report
        .rows
        .iter()
        .find(|r| r.notifications == Notifications::On)
    {
        let verdict = if on.pickup.p50_ms <= 5.0 {
            "meets"
        } else {
            "MISSES"
        };
        println!();
        println!(
            "  with notifications, p50 {:.2} ms: {verdict} the 5 ms target",
            on.pickup.p50_ms
        );
    }
}
