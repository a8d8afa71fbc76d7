use std::{future::Future, time::Duration};

use confirmd::Settings;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::smtp::{ReceivedMail, SmtpServer};
pub use crate::support::links::token_of;
use crate::support::{app::InProcessApp, free_port};

/// Where the links in test emails point; tests swap it for the app's real address.
pub const BASE_URL: &str = "http://confirmd.test";

/// How long a test waits for something that should happen promptly (an email, a state change).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running confirmd, its database folder and the SMTP server it sends to (if up).
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    smtp_port: u16,
    smtp: Option<SmtpServer>,
    db_dir: TempDir,
    running: InProcessApp,
}

/// Settings for a test: fast retries and sweeps, so that faults heal within a test's patience.
fn test_settings(db_dir: &TempDir, smtp_port: u16) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".into();
    settings.database.url = format!(
        "sqlite://{}?mode=rwc",
        db_dir.path().join("confirmd.db").display()
    );
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
    let db_dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&db_dir, smtp.port());
    tweak(&mut settings);
    launch(settings, db_dir, smtp.port(), Some(smtp)).await
}

/// The app with SMTP down: nothing listens on the port it is given until the test calls
/// [`TestApp::start_smtp`].
pub async fn spawn_app_without_smtp(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let port = free_port();
    let db_dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&db_dir, port);
    tweak(&mut settings);
    launch(settings, db_dir, port, None).await
}

async fn launch(
    settings: Settings,
    db_dir: TempDir,
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
        db_dir,
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
        let statuses = sqlx::query_scalar("SELECT status FROM users ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        statuses
    }

    /// Opens the database file directly, for what the API does not show (row counts, and
    /// moving a token's expiry into the past).
    pub async fn db(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&self.settings.database.url)
            .await
            .unwrap()
    }

    /// The database file itself, for tests that break it.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.db_dir.path().join("confirmd.db")
    }

    pub async fn count(&self, table: &str) -> i64 {
        let db = self.db().await;
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&db)
                .await
                .unwrap();
        db.close().await;
        n
    }

    /// The account of `email` as the database has it: `(status, name)`. The API shows it to
    /// nobody (a requester sees only its own request's delivery); the tests read it here.
    pub async fn account(&self, email: &str) -> Option<(String, Option<String>)> {
        let db = self.db().await;
        let row = sqlx::query_as("SELECT status, name FROM users WHERE email = ?1")
            .bind(email)
            .fetch_optional(&db)
            .await
            .unwrap();
        db.close().await;
        row
    }

    /// The last SMTP error of a signup request's email, as an operator reads it (`confirmd
    /// outbox`, the logs): the requester is never shown it.
    pub async fn last_error(&self, signup_id: &str) -> Option<String> {
        let db = self.db().await;
        let error = sqlx::query_scalar("SELECT last_error FROM email_outbox WHERE signup_id = ?1")
            .bind(signup_id)
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        error
    }

    /// Moves every token's expiry into the past, as 24 hours of waiting would.
    pub async fn expire_tokens(&self) {
        let db = self.db().await;
        sqlx::query("UPDATE confirmation_tokens SET expires_at = 0")
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
    }

    /// Shuts the app down gracefully and waits until it has stopped.
    pub async fn stop(self) -> StoppedApp {
        self.running.stop().await;
        StoppedApp {
            settings: self.settings,
            smtp_port: self.smtp_port,
            smtp: self.smtp,
            db_dir: self.db_dir,
        }
    }
}

/// An app that was stopped: its database and SMTP server, ready for a restart.
pub struct StoppedApp {
    pub settings: Settings,
    smtp_port: u16,
    pub smtp: Option<SmtpServer>,
    db_dir: TempDir,
}

impl StoppedApp {
    pub async fn restart(self) -> TestApp {
        let mut settings = self.settings;
        settings.server.listen = "127.0.0.1:0".into();
        launch(settings, self.db_dir, self.smtp_port, self.smtp).await
    }
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
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
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
