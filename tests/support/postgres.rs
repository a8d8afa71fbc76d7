//! PostgreSQL for the tests: a fresh database per test on the server that
//! `CONFIRMD_TEST_POSTGRES_URL` names (`postgres://postgres@127.0.0.1:5432/postgres` in CI),
//! dropped when the test is done with it ([`TestDatabase`]); and, for a test that stops and
//! restarts PostgreSQL under the service, a server of the test's own ([`PrivateServer`]), so
//! that no other test running beside it loses its database.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tempfile::TempDir;
use tokio::time::Instant;

/// The variable that names the server, and turns the PostgreSQL runs on (see build.rs).
pub const URL_VARIABLE: &str = "CONFIRMD_TEST_POSTGRES_URL";

/// How long a server of the test's own may take to start.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Is there a server to test against? `false` (after saying so on stderr, which a test shows
/// with `--nocapture`) when [`URL_VARIABLE`] is unset, so the caller can skip.
pub fn available(test: &str) -> bool {
    let set = std::env::var(URL_VARIABLE).is_ok_and(|url| !url.is_empty());
    if !set {
        eprintln!("skipped {test}: it needs PostgreSQL, and {URL_VARIABLE} is not set");
    }
    set
}

/// A database of its own for one test: `confirmd_test_<random>`, empty, not migrated.
pub struct TestDatabase {
    /// Where the app connects.
    pub url: String,
    name: String,
    server: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let server = std::env::var(URL_VARIABLE)
            .unwrap_or_else(|_| panic!("{URL_VARIABLE} names the PostgreSQL server for the tests"));
        let name = format!("confirmd_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {server} ({URL_VARIABLE}): {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = match server.rsplit_once('/') {
            Some((base, _)) if base.contains("://") && !base.ends_with('/') => {
                format!("{base}/{name}")
            }
            _ => panic!("{URL_VARIABLE} must name a database: postgres://user@host:port/postgres"),
        };
        TestDatabase { url, name, server }
    }
}

impl Drop for TestDatabase {
    /// Drops the database on a thread of its own (a test's runtime may be shutting down),
    /// closing whatever connections the app left open; a failure leaves only a stray database.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropped.join();
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
            port: free_port(),
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

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`: every process ends at
    /// once, what sits in the WAL buffers is lost, and the next start recovers from the WAL).
    pub fn crash(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
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

/// A port nobody listens on (this module is also included alone, by tests/store.rs, so it has
/// its own copy of the kit's one-liner).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("the OS hands out a free port")
        .port()
}
