//! The real `confirmd` binary as a child process: what a crash (SIGKILL), an orderly stop
//! (SIGTERM) and a restart on the same database look like from outside, which an app started
//! inside the test process cannot show.
//!
//! A [`ServiceHome`] is a temporary folder that outlives the processes started in it: it holds
//! the database, so a second [`ServiceProcess`] started there finds what the first one left, and
//! the log of every run, so a failing test can show them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tempfile::TempDir;
use tokio::time::Instant;

pub use super::free_port;

/// How long a fresh process may take to open and migrate its database and answer `/healthz`.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// How many lines of each run's log a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// The folder a service runs in: its database, its (absent) config folder and its logs.
pub struct ServiceHome {
    dir: TempDir,
    /// A PostgreSQL database every run uses instead of the SQLite file in the folder.
    postgres: Option<String>,
    /// Settings every run gets, as `CONFIRMD_*` variables, on top of the ones for the folder.
    env: Vec<(String, String)>,
    /// How many processes were started here, to give each its own log file.
    runs: usize,
    /// The open-file limit, soft and hard, that every run starts under; `None` inherits ours.
    file_limit: Option<u64>,
}

impl ServiceHome {
    /// A fresh folder; `env` are `CONFIRMD_<SECTION>__<KEY>` settings for every run in it.
    pub fn new<K, V>(env: impl IntoIterator<Item = (K, V)>) -> ServiceHome
    where
        K: Into<String>,
        V: Into<String>,
    {
        ServiceHome {
            dir: tempfile::tempdir().expect("a temporary folder"),
            postgres: None,
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            runs: 0,
            file_limit: None,
        }
    }

    /// Every run starts with `limit` as both its soft and hard open-file limit, so that the
    /// service cannot raise it: the 1,024 of a default Linux login, for instance.
    pub fn with_file_limit(mut self, limit: u64) -> ServiceHome {
        self.file_limit = Some(limit);
        self
    }

    /// Every run uses the PostgreSQL database at `url` (several runs at once: several
    /// instances on one database) instead of a SQLite file in the folder.
    pub fn on_postgres(mut self, url: &str) -> ServiceHome {
        self.postgres = Some(url.to_owned());
        self
    }

    pub fn database_url(&self) -> String {
        if let Some(url) = &self.postgres {
            return url.clone();
        }
        format!(
            "sqlite://{}?mode=rwc",
            self.dir.path().join("confirmd.db").display()
        )
    }

    /// Starts `confirmd serve` on a free port and waits until `/healthz` answers.
    pub async fn start(&mut self) -> ServiceProcess {
        self.runs += 1;
        let log_path = self
            .dir
            .path()
            .join(format!("confirmd-run{}.log", self.runs));
        let log = File::create(&log_path).expect("the log file can be created");
        let port = free_port();
        let address = format!("http://127.0.0.1:{port}");
        let mut command = super::binary::confirmd();
        // A config folder that does not exist: the repository's ./config/local.toml must not
        // change what the test asked for.
        command
            .arg("--config")
            .arg(self.dir.path().join("no-config"))
            .arg("serve");
        if let Some(limit) = self.file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit(2) runs, which is async-signal-safe
            // and touches no memory of the parent's.
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let child = command
            .env("RUST_LOG", "info")
            .env("CONFIRMD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("CONFIRMD_APP__BASE_URL", &address)
            .env("CONFIRMD_DATABASE__URL", self.database_url())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file handle can be shared"))
            .stderr(log)
            .spawn()
            .expect("the confirmd binary starts");
        let mut service = ServiceProcess {
            child,
            address,
            log_path,
            exited: None,
        };
        service.wait_until_healthy().await;
        service
    }

    /// The `email_outbox` rows by state, read straight from the database (the child may be
    /// running, killed or stopped).
    pub async fn outbox_states(&self) -> BTreeMap<String, i64> {
        const SQL: &str = "SELECT state, COUNT(*) FROM email_outbox GROUP BY state";
        let db = self.open_database().await;
        let rows: Vec<(String, i64)> = match &db {
            Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
            Database::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        }
        .expect("the outbox can be read");
        db.close().await;
        rows.into_iter().collect()
    }

    /// How many `email_outbox` rows of this mode are in this state.
    pub async fn outbox_count(&self, mode: &str, state: &str) -> i64 {
        let db = self.open_database().await;
        let count = match &db {
            Database::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM email_outbox WHERE mode = ?1 AND state = ?2",
                )
                .bind(mode)
                .bind(state)
                .fetch_one(pool)
                .await
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM email_outbox WHERE mode = $1 AND state = $2",
                )
                .bind(mode)
                .bind(state)
                .fetch_one(pool)
                .await
            }
        }
        .expect("the outbox can be read");
        db.close().await;
        count
    }

    /// One number from the database, e.g. `SELECT MIN(attempts) FROM email_outbox`.
    pub async fn query_number(&self, sql: &'static str) -> i64 {
        let db = self.open_database().await;
        let number = match &db {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect("the query runs");
        db.close().await;
        number
    }

    /// Every file of the database as it is on disk right now (the file itself and its `-wal`,
    /// `-shm` and `-journal` companions, those that exist), by name: what a copy of the
    /// database would hold.
    pub fn database_files(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.dir.path())
            .expect("the home folder can be listed")
            .map(|entry| entry.expect("a readable folder entry").path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("confirmd.db"))
            })
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (
                    name,
                    std::fs::read(&path).expect("a database file can be read"),
                )
            })
            .collect()
    }

    /// The path of a file in the home folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// One connection to the database, for one question; closed when dropped.
    async fn open_database(&self) -> Database {
        if let Some(url) = &self.postgres {
            let db = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .expect("the PostgreSQL database answers");
            return Database::Postgres(db);
        }
        let options = SqliteConnectOptions::from_str(&self.database_url())
            .expect("a valid database URL")
            // What the service uses; setting it again is a no-op, and it keeps this reader from
            // changing the journal of a database the child has open.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        Database::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .expect("the database opens"),
        )
    }
}

/// The service's database, opened beside it.
enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Database {
    async fn close(self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

/// One running (or finished) `confirmd serve`. Dropping it kills the process if it still runs;
/// dropping it while the test panics prints the end of its log.
pub struct ServiceProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`, where it listens.
    pub address: String,
    log_path: PathBuf,
    /// Set once the process is known to have exited, so `Drop` does not kill a recycled pid.
    exited: Option<ExitStatus>,
}

impl ServiceProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log of this run so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls `GET /healthz` until it answers 200; panics with the log if the process exits or
    /// does not answer in time.
    async fn wait_until_healthy(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", self.address);
        let deadline = Instant::now() + STARTUP_PATIENCE;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "confirmd exited ({status}) before answering /healthz; its log:\n{}",
                    self.log()
                );
            }
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if matches!(&answer, Ok(response) if response.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "confirmd did not answer {url} within {STARTUP_PATIENCE:?} (last: {answer:?}); \
                 its log:\n{}",
                self.log()
            );
        }
    }

    /// The peak resident set size so far (`VmHWM`), in KiB. Read it before the process ends.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is alive and /proc is mounted");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM line in /proc/{}/status", self.pid()))
    }

    /// SIGKILL: a crash, with no chance to finish anything. Returns once the process is gone.
    pub fn kill_9(&mut self) {
        // std's `Child::kill` sends SIGKILL on Unix.
        self.child.kill().expect("SIGKILL can be sent");
        self.exited = Some(self.child.wait().expect("the killed process can be reaped"));
    }

    /// SIGTERM: asks for an orderly stop. Returns at once; see [`ServiceProcess::wait_exit`].
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit and returns its status; panics with the log if it is still
    /// running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "confirmd (pid {}) still runs {within:?} after being asked to stop; its log:\n{}",
                self.pid(),
                self.log()
            );
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("the child can be polled");
        }
        self.exited
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- last {} of {} lines of {}:\n{}",
                tail.len(),
                lines.len(),
                self.log_path.display(),
                tail.join("\n")
            );
        }
    }
}
