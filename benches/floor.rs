//! The floor: how many signups per second can *any* handler on this stack write, and does
//! confirmd's background mode reach it, with its workers idle and with them sending?
//!
//! The floor is the least a signup endpoint can do on axum + sqlx + SQLite: parse the JSON body
//! and run one `INSERT` into `users`, on the same connection settings as confirmd
//! ([`sqlite::connect_options`]: WAL, `synchronous = NORMAL`, one writer connection) and the same
//! schema. confirmd's background signup does more: it reads the address, writes the user, the
//! token and the outbox row in one transaction, hands the row to the workers, and those workers
//! send the emails to a real SMTP catcher while the load runs.
//!
//! Both servers run as their own release processes, side by side, and `wrk` drives each in turn
//! with the same number of connections, alternating over several rounds so that a noisy moment
//! cannot favour one of them; before each round, confirmd's workers finish sending the emails of
//! the last one, so that neither server runs while the other is measured. Every request carries
//! a new address. At the end the peak resident
//! memory (`VmHWM`) of both processes is read from `/proc`.
//!
//! With `--postgres URL` both run on that PostgreSQL server instead, each on a fresh database
//! that is dropped at the end: the floor's `INSERT` on a pool of as many connections as
//! confirmd's (`database.max_connections`), and confirmd as it runs when instances share a
//! database.
//!
//! ```text
//! cargo bench --bench floor -- [--connections 32] [--seconds 10] [--rounds 3] [--smtp HOST:PORT] [--idle-workers]
//!                              [--postgres postgres://postgres@127.0.0.1:5432/postgres]
//! ```
//!
//! Needs `wrk` (`apt-get install wrk`). confirmd's emails go to the mail catcher at `--smtp`
//! (maildev, MailHog), or by default to confirmd's own in-process catcher ([`Catcher`]), run
//! here in the driver, which costs the machine least. With `--idle-workers` that catcher holds
//! every email for an hour: the workers take their first emails and wait, the rest stay queued,
//! and the rounds measure what a signup costs (the transaction and the hand-off) without the
//! sending that, on two cores, otherwise shares the CPU with it.

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use clap::{Parser, Subcommand};
use confirmd::{
    Settings,
    catcher::Catcher,
    store::{Engine, Store, sqlite},
};
use serde::Deserialize;
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::SqlitePoolOptions,
};

/// The secret confirmd derives its links with on PostgreSQL, where there is no folder of a
/// database file to generate one in.
const TOKEN_SECRET: &str = "confirmd-floor-bench-token-secret-0123456789";

/// Issues the requests: a new address for every one, from a per-run tag, the wrk thread and a
/// counter; and prints the figures in one line the driver parses.
const WRK_SCRIPT: &str = r#"
next_thread = 0
function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end
function init(args)
  tag = args[1]
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  counter = counter + 1
  local body = string.format('{"email":"%s.%d.%d@example.com","name":"Floor Bench"}', tag, thread_id, counter)
  return wrk.format(nil, nil, nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    match &options.internal {
        Some(Internal::ServeFloor { database }) => serve_floor(database),
        None => compare(&options),
    }
}

/// Drive confirmd's background signups and the bare floor server with wrk, side by side.
#[derive(Parser)]
#[command(bin_name = "cargo bench --bench floor --")]
struct Options {
    /// wrk's open connections to each server.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Length of each measured wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds per server, alternating between them; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A running mail catcher; without one, the driver starts its own.
    #[arg(long, value_name = "HOST:PORT")]
    smtp: Option<SocketAddr>,
    /// Make the driver's catcher hold every email for an hour, so that confirmd's workers sit
    /// idle and the rounds measure the signup path and the hand-off alone.
    #[arg(long, conflicts_with = "smtp")]
    idle_workers: bool,
    /// A PostgreSQL server (any database URL of it): run both servers on it, each on a fresh
    /// database, dropped at the end, instead of on SQLite files.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// `cargo bench` passes this to every benchmark.
    #[arg(long, hide = true)]
    bench: bool,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// What the driver runs itself as.
#[derive(Subcommand)]
enum Internal {
    /// The floor server, in a process of its own.
    #[command(hide = true)]
    ServeFloor { database: String },
}

// ------------------------------------------------------------------------------------------------
// The floor server.

#[derive(Deserialize)]
struct SignupRequest {
    email: String,
    name: Option<String>,
}

/// Serves `POST /signups` as one `INSERT`, and prints its port on the first line of stdout.
#[tokio::main]
async fn serve_floor(database: &str) -> anyhow::Result<()> {
    // The schema comes from confirmd's own migrations; the pool from its own settings.
    let store = Store::connect(database, 1).await?;
    store.migrate().await?;
    store.close().await;
    let app = if Engine::of(database) == Some(Engine::Postgres) {
        // As many connections as confirmd's one PostgreSQL pool has by default.
        let pool = PgPoolOptions::new()
            .max_connections(Settings::defaults().database.max_connections)
            .connect(database)
            .await?;
        Router::new()
            .route("/signups", post(insert_user_postgres))
            .with_state(pool)
    } else {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(sqlite::connect_options(database)?)
            .await?;
        Router::new()
            .route("/signups", post(insert_user))
            .with_state(pool)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}

async fn insert_user(
    State(pool): State<SqlitePool>,
    Json(body): Json<SignupRequest>,
) -> (StatusCode, Json<serde_json::Value>) {
    let id = uuid::Uuid::now_v7().to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, name, status, created_at) VALUES (?1, ?2, ?3, 'pending', ?4)",
    )
    .bind(&id)
    .bind(&body.email)
    .bind(&body.name)
    .bind(now)
    .execute(&pool)
    .await;
    match inserted {
        Ok(_) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        ),
    }
}

async fn insert_user_postgres(
    State(pool): State<PgPool>,
    Json(body): Json<SignupRequest>,
) -> (StatusCode, Json<serde_json::Value>) {
    let id = uuid::Uuid::now_v7();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, name, status, created_at) VALUES ($1, $2, $3, 'pending', $4)",
    )
    .bind(id)
    .bind(&body.email)
    .bind(&body.name)
    .bind(now)
    .execute(&pool)
    .await;
    match inserted {
        Ok(_) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "id": id.to_string() })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// The driver.

/// The two servers' databases: SQLite files in the run's folder, or two fresh databases on a
/// PostgreSQL server, dropped by [`Databases::drop_all`].
struct Databases {
    floor: String,
    confirmd: String,
    /// The server's URL and the databases to drop there.
    postgres: Option<(String, Vec<String>)>,
}

impl Databases {
    fn create(
        dir: &Path,
        postgres: Option<&str>,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Databases> {
        let Some(server) = postgres else {
            let file = |name: &str| format!("sqlite://{}?mode=rwc", dir.join(name).display());
            return Ok(Databases {
                floor: file("floor.db"),
                confirmd: file("confirmd.db"),
                postgres: None,
            });
        };
        let names: Vec<String> = ["floor", "confirmd"]
            .iter()
            .map(|which| format!("confirmd_bench_{which}_{}", std::process::id()))
            .collect();
        let options = PgConnectOptions::from_str(server)?;
        runtime.block_on(async {
            let mut admin = options
                .connect()
                .await
                .with_context(|| format!("no PostgreSQL server answers at {server}"))?;
            for name in &names {
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await?;
            }
            admin.close().await?;
            Ok::<_, anyhow::Error>(())
        })?;
        let url = |name: &str| options.clone().database(name).to_url_lossy().to_string();
        Ok(Databases {
            floor: url(&names[0]),
            confirmd: url(&names[1]),
            postgres: Some((server.to_owned(), names)),
        })
    }

    fn engine(&self) -> &'static str {
        if self.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    /// Drops the PostgreSQL databases (the servers must have stopped).
    fn drop_all(self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let Some((server, names)) = self.postgres else {
            return Ok(());
        };
        runtime.block_on(async {
            let mut admin = PgConnectOptions::from_str(&server)?.connect().await?;
            for name in &names {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
            }
            admin.close().await?;
            Ok(())
        })
    }
}

/// One server under test: its process and where to send signups.
struct Target {
    name: &'static str,
    child: Child,
    url: String,
    runs: Vec<WrkRun>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct WrkRun {
    requests: u64,
    seconds: f64,
    non_2xx: u64,
    socket_errors: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl WrkRun {
    /// Successful (2xx) requests per second: a refusal is not a signup.
    fn per_second(&self) -> f64 {
        self.requests.saturating_sub(self.non_2xx) as f64 / self.seconds
    }
}

fn compare(options: &Options) -> anyhow::Result<()> {
    Command::new("wrk")
        .arg("--version")
        .output()
        .context("wrk is not installed (apt-get install wrk)")?;
    // The catcher, if it is ours, runs on a runtime of its own while wrk runs.
    let runtime = tokio::runtime::Runtime::new()?;
    let (smtp, catcher) = match options.smtp {
        Some(smtp) => {
            TcpStream::connect_timeout(&smtp, Duration::from_secs(2))
                .with_context(|| format!("no SMTP catcher at {smtp}"))?;
            (smtp, None)
        }
        None => {
            let latency = if options.idle_workers {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            };
            let catcher = runtime.block_on(Catcher::start(latency))?;
            (catcher.addr(), Some(catcher))
        }
    };
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("signup.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let databases = Databases::create(dir.path(), options.postgres.as_deref(), &runtime)?;
    let floor = start_floor(&databases.floor)?;
    let confirmd = start_confirmd(dir.path(), &databases.confirmd, smtp, options.idle_workers)?;
    let mut targets = [floor, confirmd];

    println!(
        "wrk -t2 -c{} -d{}s, {} rounds, alternating; warm-up 2 s each; both on {}",
        options.connections,
        options.seconds,
        options.rounds,
        databases.engine()
    );
    let metrics = targets[1]
        .url
        .replace("/signups?mode=background", "/metrics");
    for target in &mut targets {
        run_wrk(&script, &target.url, options.connections, 2, "warmup")?;
    }
    for round in 0..options.rounds {
        for target in &mut targets {
            // confirmd's workers go on sending the emails of its last round: let them finish,
            // so that neither server is measured while the other still works.
            if !options.idle_workers {
                wait_for_empty_outbox(&metrics)?;
            }
            let tag = format!("r{round}");
            let run = run_wrk(
                &script,
                &target.url,
                options.connections,
                options.seconds,
                &tag,
            )?;
            println!(
                "  round {round} {:<22} {:>8.0} 2xx/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {}  socket errors {}",
                target.name,
                run.per_second(),
                run.p50_ms,
                run.p99_ms,
                run.non_2xx,
                run.socket_errors
            );
            target.runs.push(run);
        }
    }

    println!();
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "", "2xx/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-2xx", "peak RSS"
    );
    let mut medians = Vec::new();
    for target in &targets {
        let median = median_run(&target.runs);
        let rss = peak_rss_kib(target.child.id())?;
        println!(
            "{:<22} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>6.1} MiB",
            target.name,
            median.per_second(),
            median.p50_ms,
            median.p90_ms,
            median.p99_ms,
            median.max_ms,
            target.runs.iter().map(|r| r.non_2xx).sum::<u64>(),
            rss as f64 / 1024.0
        );
        medians.push(median.per_second());
    }
    println!(
        "\nconfirmd background / floor: {:.2}x (median round of each)",
        medians[1] / medians[0]
    );
    if let Some(catcher) = catcher {
        println!(
            "emails received by the catcher while this ran: {}",
            catcher.received()
        );
        // A catcher holding emails for an hour would wait that long to stop gracefully.
        if !options.idle_workers {
            runtime.block_on(catcher.stop());
        }
    }
    drop(targets);
    databases.drop_all(&runtime)
}

/// The round with the median throughput (its latency figures come with it).
fn median_run(runs: &[WrkRun]) -> WrkRun {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    sorted[sorted.len() / 2]
}

fn start_floor(database: &str) -> anyhow::Result<Target> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve-floor", database])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the floor server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the floor's stdout")?).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("the floor server printed {line:?}, not its port"))?;
    Ok(Target {
        name: "floor (1 INSERT)",
        child,
        url: format!("http://127.0.0.1:{port}/signups"),
        runs: Vec::new(),
    })
}

fn start_confirmd(
    dir: &Path,
    database: &str,
    smtp: SocketAddr,
    idle_workers: bool,
) -> anyhow::Result<Target> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(env!("CARGO_BIN_EXE_confirmd"))
        .arg("serve")
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("CONFIRMD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CONFIRMD_DATABASE__URL", database)
        .env("CONFIRMD_TOKEN__SECRET", TOKEN_SECRET)
        .env("CONFIRMD_SMTP__HOST", smtp.ip().to_string())
        .env("CONFIRMD_SMTP__PORT", smtp.port().to_string())
        .env("CONFIRMD_DELIVERY__DEFAULT_MODE", "background")
        // Signups outpace any catcher's intake here, so the queue grows through the run; the
        // default cap would turn the last rounds into 503s (back-pressure, measured elsewhere)
        // instead of measuring the signup path.
        .env("CONFIRMD_WORKER__MAX_BACKLOG", "10000000")
        // wrk is one client: the per-client signup limit would answer nearly all of it 429.
        .env("CONFIRMD_SIGNUP__PER_CLIENT_PER_MINUTE", "0")
        // With --idle-workers the catcher holds each email for an hour: no send may time out.
        .envs(
            idle_workers
                .then_some([
                    ("CONFIRMD_SMTP__TIMEOUT_MS", "7200000"),
                    ("CONFIRMD_WORKER__LEASE_MS", "7300000"),
                    ("CONFIRMD_WORKER__SHUTDOWN_TIMEOUT_MS", "7250000"),
                    ("CONFIRMD_SERVER__REQUEST_TIMEOUT_MS", "7250000"),
                ])
                .into_iter()
                .flatten(),
        )
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start confirmd")?;
    // The listener is bound only after the database is migrated: a connection means ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("confirmd did not listen on port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Target {
        name: "confirmd background",
        child,
        url: format!("http://127.0.0.1:{port}/signups?mode=background"),
        runs: Vec::new(),
    })
}

fn run_wrk(
    script: &Path,
    url: &str,
    connections: u32,
    seconds: u32,
    tag: &str,
) -> anyhow::Result<WrkRun> {
    let output = Command::new("wrk")
        .arg("-t2")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(url)
        .arg("--")
        .arg(tag)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("wrk printed no result: {stdout}"))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(WrkRun {
        requests: n[0],
        seconds: n[1] as f64 / 1e6,
        non_2xx: n[2],
        socket_errors: n[3],
        p50_ms: ms(n[4]),
        p90_ms: ms(n[5]),
        p99_ms: ms(n[6]),
        max_ms: ms(n[7]),
    })
}

/// Polls confirmd's `/metrics` until no email is queued or being sent.
fn wait_for_empty_outbox(metrics_url: &str) -> anyhow::Result<()> {
    let address = metrics_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .context("a plain-HTTP metrics URL")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut stream = TcpStream::connect(address)?;
        std::io::Write::write_all(
            &mut stream,
            format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes(),
        )?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        let waiting: f64 = body
            .lines()
            .filter(|l| {
                l.starts_with("confirmd_outbox_emails{state=\"queued\"}")
                    || l.starts_with("confirmd_outbox_emails{state=\"sending\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if waiting == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("confirmd still had {waiting} emails to send after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Peak resident set size of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut status = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))?.read_to_string(&mut status)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}
