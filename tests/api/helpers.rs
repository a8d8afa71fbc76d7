use std::{future::Future, time::Duration};

use confirmd::Settings;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sqlx::{FromRow, PgPool, SqlitePool, postgres::PgRow, sqlite::SqliteRow};
use tempfile::TempDir;

use super::BACKEND;
use crate::smtp::{ReceivedMail, SmtpServer};
pub use crate::support::links::token_of;
use crate::support::{app::InProcessApp, free_port, postgres::TestDatabase};

/// The database engine a copy of the suite runs on (tests/api/main.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each copy of the suite constructs its own variant only
pub enum Backend {
    /// A file in the test's temporary folder.
    Sqlite,
    /// A fresh database on the server `CONFIRMD_TEST_POSTGRES_URL` names.
    Postgres,
}

/// Where a test app keeps its data: a temporary folder (its SQLite file, its token secret), and
/// for PostgreSQL a database of its own, dropped with it.
struct Storage {
    dir: TempDir,
    postgres: Option<TestDatabase>,
}

impl Storage {
    async fn new() -> Storage {
        Storage {
            dir: tempfile::tempdir().unwrap(),
            postgres: match BACKEND {
                Backend::Sqlite => None,
                Backend::Postgres => Some(TestDatabase::create().await),
            },
        }
    }

    fn database_url(&self) -> String {
        match &self.postgres {
            Some(database) => database.url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.dir.path().join("confirmd.db").display()
            ),
        }
    }
}

/// The test's own connection to the app's database, for what the API does not show. SQL is
/// written once for both engines: no parameters (values the test chose are written into it).
pub enum TestDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl TestDb {
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            TestDb::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            TestDb::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every row `sql` returns, as a tuple.
    pub async fn rows<T>(&self, sql: &str) -> Vec<T>
    where
        T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            TestDb::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
            TestDb::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        }
        .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn close(self) {
        match self {
            TestDb::Sqlite(pool) => pool.close().await,
            TestDb::Postgres(pool) => pool.close().await,
        }
    }
}

/// Where the links in test emails point; tests swap it for the app's real address.
pub const BASE_URL: &str = "http://confirmd.test";

/// How long a test waits for something that should happen promptly (an email, a state change).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running confirmd, its database and the SMTP server it sends to (if up).
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    smtp_port: u16,
    smtp: Option<SmtpServer>,
    storage: Storage,
    running: InProcessApp,
}

/// Settings for a test: fast retries and sweeps, so that faults heal within a test's patience.
fn test_settings(storage: &Storage, smtp_port: u16) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".into();
    settings.database.url = storage.database_url();
    // Beside the SQLite file anyway; a PostgreSQL database has no folder to keep it in.
    settings.token.secret_file = storage
        .dir
        .path()
        .join("confirmd.secret")
        .display()
        .to_string();
    settings.smtp.port = smtp_port;
    settings.smtp.timeout_ms = 2_000;
    settings.app.base_url = BASE_URL.into();
    // Tests sign the same address up in quick succession; tests/api/abuse.rs sets its own.
    settings.signup.resend_interval_s = 0;
    // Every test is one client sending many signups; the tests of the limit turn it back on.
    settings.signup.per_client_per_minute = 0;
    settings.worker.retry_base_ms = 50;
    settings.worker.retry_max_ms = 200;
    settings.worker.sweep_interval_ms = 100;
    settings.worker.lease_ms = 3_000;
    settings.worker.shutdown_timeout_ms = 5_000;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The app with a working SMTP server, after `tweak` adjusts its settings.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let smtp = SmtpServer::start().await;
    let storage = Storage::new().await;
    let mut settings = test_settings(&storage, smtp.port());
    tweak(&mut settings);
    launch(settings, storage, smtp.port(), Some(smtp)).await
}

/// The app with SMTP down: nothing listens on the port it is given until the test calls
/// [`TestApp::start_smtp`].
pub async fn spawn_app_without_smtp(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let port = free_port();
    let storage = Storage::new().await;
    let mut settings = test_settings(&storage, port);
    tweak(&mut settings);
    launch(settings, storage, port, None).await
}

async fn launch(
    settings: Settings,
    storage: Storage,
    smtp_port: u16,
    smtp: Option<SmtpServer>,
) -> TestApp {
    let running = InProcessApp::start(settings).await;
    TestApp {
        address: running.address.clone(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        settings: running.settings.clone(),
        smtp_port,
        smtp,
        storage,
        running,
    }
}

impl TestApp {
    /// The SMTP server; panics if the test took it down.
    pub fn smtp(&self) -> &SmtpServer {
        self.smtp.as_ref().expect("SMTP is down in this test")
    }

    /// Brings SMTP up on the port the app was configured with.
    pub async fn start_smtp(&mut self) {
        assert!(self.smtp.is_none(), "SMTP is already up");
        self.smtp = Some(SmtpServer::start_on(self.smtp_port).await);
    }

    pub async fn post_signup(&self, body: &str, mode: Option<&str>) -> Response {
        let url = match mode {
            Some(mode) => format!("{}/signups?mode={mode}", self.address),
            None => format!("{}/signups", self.address),
        };
        self.client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Signs `email` up in `mode` and returns the response.
    pub async fn signup(&self, email: &str, mode: &str) -> Response {
        self.post_signup(
            &serde_json::json!({ "email": email }).to_string(),
            Some(mode),
        )
        .await
    }

    /// Signs `email` up, asserts the expected success status, returns the signup id.
    pub async fn signup_ok(&self, email: &str, mode: &str) -> String {
        let response = self.signup(email, mode).await;
        let expected = if mode == "sync" {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        };
        assert_eq!(
            response.status(),
            expected,
            "{}",
            response.text().await.unwrap()
        );
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    pub async fn signup_details(&self, id: &str) -> Value {
        let response = self.get(&format!("/signups/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Polls `GET /signups/{id}` until its delivery state is `state`, and returns the details.
    pub async fn wait_for_delivery_state(&self, id: &str, state: &str) -> Value {
        poll(PATIENCE, || async {
            let details = self.signup_details(id).await;
            if details["delivery"]["state"] == state {
                Ok(details)
            } else {
                Err(details)
            }
        })
        .await
        .unwrap_or_else(|last| panic!("delivery never reached {state:?}; last seen: {last:#}"))
    }

    /// The emails received so far for `to`, oldest first.
    pub fn mail_to(&self, to: &str) -> Vec<ReceivedMail> {
        self.smtp()
            .received()
            .into_iter()
            .filter(|mail| mail.to.iter().any(|rcpt| rcpt.eq_ignore_ascii_case(to)))
            .collect()
    }

    /// Waits until an email to `to` has arrived and returns the confirmation link in the latest
    /// one, pointed at this app.
    pub async fn confirmation_link(&self, to: &str) -> String {
        let mail = poll(PATIENCE, || async { self.mail_to(to).pop().ok_or(()) })
            .await
            .unwrap_or_else(|()| panic!("no email to {to} arrived"));
        self.local_link(&mail.confirmation_link())
    }

    /// Turns a link from an email (which points at [`BASE_URL`]) into one for this app.
    pub fn local_link(&self, link: &str) -> String {
        let path = link
            .strip_prefix(BASE_URL)
            .unwrap_or_else(|| panic!("the link {link} does not start with app.base_url"));
        format!("{}{path}", self.address)
    }

    /// What an API client does with a link: POSTs its token to `/confirm` as JSON.
    pub async fn confirm(&self, link: &str) -> Response {
        self.client
            .post(format!("{}/confirm", self.address))
            .header("accept", "application/json")
            .json(&serde_json::json!({ "token": token_of(link) }))
            .send()
            .await
            .unwrap()
    }

    /// What a person does with a link: opens it in a browser, then presses the page's one
    /// button, which submits its form. Returns the answer to the form.
    pub async fn press_the_button(&self, link: &str) -> Response {
        let page = self.client.get(link).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        let form = page
            .split("<form")
            .nth(1)
            .unwrap_or_else(|| panic!("the page has no form: {page}"));
        assert!(form.contains(r#"method="post""#), "{form}");
        let attribute = |name: &str| {
            let start = form.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            form[start..].split('"').next().unwrap().to_owned()
        };
        // The form's action is relative to the page, `/confirm`.
        assert_eq!(attribute("action"), "confirm");
        assert!(form.contains(r#"name="token""#), "{form}");
        self.client
            .post(format!("{}/confirm", self.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}", attribute("value")))
            .send()
            .await
            .unwrap()
    }

    /// The status of every user, from the database: what confirming changes.
    pub async fn user_statuses(&self) -> Vec<String> {
        let db = self.db().await;
        let statuses: Vec<(String,)> = db.rows("SELECT status FROM users ORDER BY id").await;
        db.close().await;
        statuses.into_iter().map(|(status,)| status).collect()
    }

    /// Connects to the app's database directly, for what the API does not show (row counts,
    /// and moving a token's expiry into the past).
    pub async fn db(&self) -> TestDb {
        connect(&self.settings.database.url).await
    }

    /// The database file itself, for tests that break it (SQLite only).
    #[allow(dead_code)] // the PostgreSQL copy has no file to break
    pub fn db_path(&self) -> std::path::PathBuf {
        assert_eq!(
            BACKEND,
            Backend::Sqlite,
            "a PostgreSQL database has no file"
        );
        self.storage.dir.path().join("confirmd.db")
    }

    pub async fn count(&self, table: &str) -> i64 {
        let db = self.db().await;
        let n: Vec<(i64,)> = db.rows(&format!("SELECT COUNT(*) FROM {table}")).await;
        db.close().await;
        n[0].0
    }

    /// The account of `email` as the database has it: `(status, name)`. The API shows it to
    /// nobody (a requester sees only its own request's delivery); the tests read it here.
    pub async fn account(&self, email: &str) -> Option<(String, Option<String>)> {
        let db = self.db().await;
        let row = db
            .rows(&format!(
                "SELECT status, name FROM users WHERE email = {}",
                quoted(email)
            ))
            .await
            .pop();
        db.close().await;
        row
    }

    /// The last SMTP error of a signup request's email, as an operator reads it (`confirmd
    /// outbox`, the logs): the requester is never shown it.
    pub async fn last_error(&self, signup_id: &str) -> Option<String> {
        let db = self.db().await;
        let error: Vec<(Option<String>,)> = db
            .rows(&format!(
                "SELECT last_error FROM email_outbox WHERE signup_id = {}",
                quoted(signup_id)
            ))
            .await;
        db.close().await;
        error[0].0.clone()
    }

    /// Moves every token's expiry a second into the past, as 24 hours of waiting would. The
    /// pruner keeps a link that expired this recently (for `retention.sent_days`), so the link
    /// still says it expired, whenever the pruner's pass runs.
    pub async fn expire_tokens(&self) {
        let just_now = unix_ms() - 1000;
        let db = self.db().await;
        db.execute(&format!(
            "UPDATE confirmation_tokens SET expires_at = {just_now}"
        ))
        .await;
        db.close().await;
    }

    /// Shuts the app down gracefully and waits until it has stopped.
    pub async fn stop(self) -> StoppedApp {
        self.running.stop().await;
        StoppedApp {
            settings: self.settings,
            smtp_port: self.smtp_port,
            smtp: self.smtp,
            storage: self.storage,
        }
    }
}

/// An app that was stopped: its database and SMTP server, ready for a restart.
pub struct StoppedApp {
    pub settings: Settings,
    smtp_port: u16,
    pub smtp: Option<SmtpServer>,
    storage: Storage,
}

impl StoppedApp {
    pub async fn restart(self) -> TestApp {
        let mut settings = self.settings;
        settings.server.listen = "127.0.0.1:0".into();
        launch(settings, self.storage, self.smtp_port, self.smtp).await
    }

    /// Connects to the stopped app's database.
    pub async fn db(&self) -> TestDb {
        connect(&self.settings.database.url).await
    }
}

async fn connect(url: &str) -> TestDb {
    match BACKEND {
        Backend::Sqlite => TestDb::Sqlite(SqlitePool::connect(url).await.unwrap()),
        Backend::Postgres => TestDb::Postgres(PgPool::connect(url).await.unwrap()),
    }
}

/// `text` as an SQL string literal.
pub fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Calls `probe` until it returns `Ok`, or `within` passes and the last `Err` is returned: the
/// way tests wait for something asynchronous, instead of sleeping and hoping.
pub async fn poll<T, E, F, Fut>(within: Duration, mut probe: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        match probe().await {
            Ok(value) => return Ok(value),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => {}
        }
    }
}

/// [`poll`] for a plain condition: true if it became true within the time.
pub async fn poll_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(within, || {
        let check = check();
        async move { if check.await { Ok(()) } else { Err(()) } }
    })
    .await
    .is_ok()
}

/// Asserts an `application/problem+json` answer with this status, and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    let answered = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    // Read before asserting, so that a wrong answer is shown whole: a 503 says why in its body.
    let text = response.text().await.unwrap();
    assert_eq!(answered, status, "answered {text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    assert!(
        !body["detail"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    body
}

/// The wall clock as the app stores times: milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
