//! PostgreSQL for the tests: a fresh database per test on the server that
//! `CONFIRMD_TEST_POSTGRES_URL` names ([`TestDatabase`]), and, for a test that stops and restarts
//! PostgreSQL under the service, a server of the test's own ([`PrivateServer`]), so that no other
//! test running beside it loses its database.
//!
//! Without the variable there is no PostgreSQL to test against: [`server_url`] says so, and the
//! tests that need one say that they skipped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tempfile::TempDir;
use tokio::time::Instant;

/// The variable that names a PostgreSQL server the tests may create databases on, as a URL to
/// any database of it: `postgres://postgres@127.0.0.1:5432/postgres` on the CI machine.
pub const SERVER_URL_VAR: &str = "CONFIRMD_TEST_POSTGRES_URL";

/// How long a server of the test's own may take to start.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// The server named by [`SERVER_URL_VAR`]; `None` (after saying so on stderr, which a test shows
/// with `--nocapture`) when the variable is unset, so the caller can skip.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var(SERVER_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped {test}: it needs PostgreSQL, and {SERVER_URL_VAR} is not set");
            None
        }
    }
}

/// A database of its own for one test, created empty on a server and dropped by
/// [`TestDatabase::drop`] (a failing test leaves it, to be looked at).
pub struct TestDatabase {
    /// The URL confirmd is given: the server's, with this database's name as its path.
    pub url: String,
    name: String,
    server: String,
}

impl TestDatabase {
    /// Creates a database with a name no other test of any run uses.
    pub async fn create(server: &str) -> TestDatabase {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "confirmd_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            uuid::Uuid::now_v7().simple()
        );
        let mut admin = PgConnection::connect(server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {SERVER_URL_VAR}={server}: {e}"));
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("the test database can be created");
        admin.close().await.ok();
        let mut url = reqwest::Url::parse(server).expect("a PostgreSQL URL");
        url.set_path(&format!("/{name}"));
        TestDatabase {
            url: url.to_string(),
            name,
            server: server.to_owned(),
        }
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop(self) {
        let mut admin = PgConnection::connect(&self.server)
            .await
            .expect("the server still answers");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("the test database can be dropped");
        admin.close().await.ok();
    }
}

/// A PostgreSQL server of the test's own, in a temporary folder, on a free port of 127.0.0.1,
/// with trust authentication for the user `postgres`. Stopped (fast) when dropped.
pub struct PrivateServer {
    /// Holds the data folder; removed after the server stops.
    _dir: TempDir,
    data: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl PrivateServer {
    /// Creates and starts a server; `None` (after saying so) when this machine has no
    /// PostgreSQL server programs.
    pub async fn start(test: &str) -> Option<PrivateServer> {
        let Some(bin) = server_programs() else {
            eprintln!("skipped {test}: no PostgreSQL server programs (initdb, pg_ctl) here");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary folder");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("the data folder can be made");
        // PostgreSQL refuses to run as root: as root, the folder goes to the `postgres` user and
        // every program runs as that user.
        if running_as_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("the temporary folder can be opened to the postgres user");
            let owner = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data)
                .status()
                .expect("chown runs");
            assert!(
                owner.success(),
                "cannot give {} to postgres",
                data.display()
            );
        }
        let server = PrivateServer {
            _dir: dir,
            data,
            bin,
            port: super::free_port(),
        };
        server.run(
            "initdb",
            &["--auth=trust", "--username=postgres", "--no-sync", "-D"],
            &[server.data.as_os_str()],
        );
        server.start_again().await;
        Some(server)
    }

    /// A URL to `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server the way an operator's restart does (`pg_ctl stop -m fast`: every
    /// session is ended, the server shuts down cleanly).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// Starts the (stopped) server and waits until it takes connections.
    pub async fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-o",
            &options,
            "-l",
            log.to_str().expect("a UTF-8 path"),
        ]);
        let deadline = Instant::now() + STARTUP_PATIENCE;
        let url = self.url("postgres");
        while PgConnection::connect(&url).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the test's PostgreSQL did not take connections within {STARTUP_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates an empty database on this server and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut admin = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("the test's PostgreSQL answers");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("the database can be created");
        admin.close().await.ok();
        self.url(name)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data.to_str().expect("a UTF-8 path");
        let mut all = vec!["-D", data];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all, &[]);
    }

    /// Runs one of the server programs (as `postgres` when we are root) and panics with its
    /// output if it fails.
    fn run(&self, program: &str, args: &[&str], more: &[&std::ffi::OsStr]) {
        let path = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .args(more)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{} does not run: {e}", path.display()));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let path = self.bin.join("pg_ctl");
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D", &data, "stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The folder of PostgreSQL's server programs: Debian keeps them out of PATH, under
/// /usr/lib/postgresql/<version>/bin (the newest version wins); elsewhere they are on PATH.
fn server_programs() -> Option<PathBuf> {
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("pg_ctl").exists() && dir.join("initdb").exists())
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
