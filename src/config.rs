//! Typed settings, layered the way operators expect:
//!
//! 1. `config/default.toml`, compiled into the binary, so `confirmd` runs from any directory;
//! 2. `default.toml` and then `<CONFIRMD_ENV>.toml` (`local` unless set) from the config folder
//!    (`./config` or `--config DIR`), when present;
//! 3. environment variables `CONFIRMD_<SECTION>__<KEY>`, e.g. `CONFIRMD_SMTP__PORT=1025`.
//!
//! Everything is checked here, at start-up: a bad value stops the process with a message that
//! names its key, instead of surfacing as a strange failure on the first signup.

use std::{path::Path, time::Duration};

use axum::http::HeaderName;
use config::{Config, Environment, File, FileFormat};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::DeliveryMode;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub smtp: SmtpSettings,
    pub mail: MailSettings,
    pub app: AppSettings,
    pub delivery: DeliverySettings,
    pub signup: SignupSettings,
    pub worker: WorkerSettings,
    pub token: TokenSettings,
    pub retention: RetentionSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// `host:port` to listen on; port 0 picks a free port (the tests do).
    pub listen: String,
    /// The longest a client may take to send a request head, from the connection's opening or
    /// from the end of the previous response: also the keep-alive idle timeout.
    pub header_read_timeout_ms: u64,
    /// The longest a request body may take to arrive once its head has.
    pub body_read_timeout_ms: u64,
    /// The longest from a request's head to its answer; longer than `smtp.timeout_ms`, so a
    /// sync send that keeps to its own timeout is always answered.
    pub request_timeout_ms: u64,
    /// The most connections open at once; at the cap a new one closes the oldest without a
    /// request in flight. 0 derives it from the open-file limit.
    pub max_connections: usize,
    /// A header set by a trusted reverse proxy with the client's address (`x-forwarded-for`,
    /// `x-real-ip`); empty to use the TCP peer's address, which a client cannot forge.
    pub client_ip_header: String,
}

impl ServerSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// The parsed `client_ip_header`, `None` when empty.
    pub fn client_ip_header(&self) -> Option<HeaderName> {
        let name = self.client_ip_header.trim();
        (!name.is_empty()).then(|| name.parse().expect("validated at load"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` (the default: one process, one file) or
    /// `postgres://user:password@host:port/database` (any number of instances on one database).
    pub url: String,
    /// Connections for reads. Writes always go through one connection: SQLite has one writer.
    /// On PostgreSQL, the size of the one pool every statement shares.
    pub max_connections: u32,
    /// The largest the database file may grow, in MiB; 0 for no cap but the disk's. At the cap,
    /// signups are refused with 503 (reads go on) until rows are deleted or the cap is raised.
    /// SQLite only: a PostgreSQL server manages its own space.
    pub max_size_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP, for local catchers such as MailHog and maildev.
    None,
    /// Plain connect, then upgrade with STARTTLS (submission port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Empty means no authentication.
    pub username: String,
    /// A `SecretString`, so that `Debug` (and so any log of the settings) prints it redacted.
    pub password: SecretString,
    /// The longest one send may take, connection included, before it counts as failed.
    pub timeout_ms: u64,
    /// How many SMTP connections may be open at once, in use or idle for reuse.
    pub pool_size: u32,
    /// How long a sync signup waits for one of the `pool_size` connections to be free before it
    /// is answered 503 (its email then goes to the workers).
    pub acquire_timeout_ms: u64,
    /// How often a background task checks that the SMTP server answers (`/healthz`, the
    /// `confirmd_smtp_up` gauge). Never part of readiness.
    pub check_interval_ms: u64,
}

impl SmtpSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
    pub fn check_interval(&self) -> Duration {
        Duration::from_millis(self.check_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    /// `Name <address>` or a bare address.
    pub from: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// Public origin of the service, used to build the link in the email.
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// The mode of a `POST /signups` that names none.
    pub default_mode: DeliveryMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupSettings {
    /// The least time between two emails to one pending address.
    pub resend_interval_s: u64,
    /// Signups one client address may make per minute, all at once or spread out; 0 for no
    /// limit (benchmarks and load tests).
    pub per_client_per_minute: u32,
}

impl SignupSettings {
    pub fn resend_interval(&self) -> Duration {
        Duration::from_secs(self.resend_interval_s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub queue_capacity: usize,
    /// 0: retry until the link would have expired; see [`WorkerSettings::max_attempts`].
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub sweep_interval_ms: u64,
    pub lease_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub max_backlog: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub ttl_hours: u64,
    /// The server secret tokens are derived from (see `secret.rs`); empty means read it from
    /// `secret_file`. A `SecretString`, so that `Debug` prints it redacted.
    pub secret: SecretString,
    /// Where the secret is kept when `secret` is empty; empty means `confirmd.secret` next to the
    /// database file.
    pub secret_file: String,
    /// Write a new random secret to the secret file when there is none. Off in production, where
    /// a secret that appears by itself on an ephemeral disk would change at every deploy and
    /// differ between instances.
    pub generate_secret: bool,
}

/// How long the outbox keeps what it no longer needs, and how the pruner deletes it (see
/// `delivery::pruner`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Sent and superseded emails are deleted this many days after they were written; 0 keeps
    /// them forever.
    pub sent_days: u64,
    /// Failed emails are kept this long for operators to read and requeue, and so is the
    /// pending signup they belong to; 0 keeps them forever.
    pub failed_days: u64,
    /// How often the pruner looks for rows to delete.
    pub interval_s: u64,
    /// Most rows one prune statement deletes: the longest it holds SQLite's write lock.
    pub batch_size: u32,
    /// The pause between two batches, in which signups take the write lock.
    pub batch_pause_ms: u64,
}

impl RetentionSettings {
    /// The age after which sent and superseded emails go, if they go at all.
    pub fn sent_age(&self) -> Option<Duration> {
        (self.sent_days > 0).then(|| Duration::from_secs(self.sent_days.saturating_mul(DAY_S)))
    }
    /// The age after which failed emails go, if they go at all.
    pub fn failed_age(&self) -> Option<Duration> {
        (self.failed_days > 0).then(|| Duration::from_secs(self.failed_days.saturating_mul(DAY_S)))
    }
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_s)
    }
    pub fn batch_pause(&self) -> Duration {
        Duration::from_millis(self.batch_pause_ms)
    }
}

const DAY_S: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    /// Where traces go, over OTLP/HTTP with protobuf (`http://collector:4318`; the exporter adds
    /// `/v1/traces`). Empty: traces stay log lines and nothing is exported.
    pub otlp_endpoint: String,
    /// `service.name` on every exported span: what a trace viewer lists the service as.
    pub service_name: String,
    /// The share of new traces kept, from 0.0 to 1.0. A request that arrives with a
    /// `traceparent` follows its caller's sampling decision instead.
    pub sampling_ratio: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Settings {
    /// Defaults, then the files in `dir` (if it exists), then `CONFIRMD_*` variables.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        let environment = std::env::var("CONFIRMD_ENV").unwrap_or_else(|_| "local".to_owned());
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false))
            .add_source(File::from(dir.join(format!("{environment}.toml"))).required(false))
            .add_source(
                Environment::with_prefix("CONFIRMD")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validated()
    }

    /// The compiled-in defaults alone: what the tests start from.
    pub fn defaults() -> Settings {
        Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .and_then(Config::try_deserialize)
            .expect("config/default.toml is valid")
    }

    /// Checks what types alone cannot, and normalizes `app.base_url`.
    pub fn validated(mut self) -> Result<Settings, ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        self.mail
            .from
            .parse::<Mailbox>()
            .map_err(|e| invalid("mail.from", format!("is not a valid mailbox: {e}")))?;
        let base = self.app.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || base.contains(char::is_whitespace)
        {
            return Err(invalid(
                "app.base_url",
                "must be an http:// or https:// URL",
            ));
        }
        self.app.base_url = base.to_owned();
        if self.smtp.host.trim().is_empty() {
            return Err(invalid("smtp.host", "must not be empty"));
        }
        if self.smtp.username.is_empty() != self.smtp.password.expose_secret().is_empty() {
            return Err(invalid(
                "smtp.password",
                "must be set together with smtp.username",
            ));
        }
        let positive: [(&'static str, u64); 15] = [
            ("retention.interval_s", self.retention.interval_s),
            ("retention.batch_size", self.retention.batch_size.into()),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("smtp.timeout_ms", self.smtp.timeout_ms),
            ("smtp.check_interval_ms", self.smtp.check_interval_ms),
            ("smtp.pool_size", self.smtp.pool_size.into()),
            (
                "database.max_connections",
                self.database.max_connections.into(),
            ),
            ("worker.concurrency", self.worker.concurrency as u64),
            ("worker.queue_capacity", self.worker.queue_capacity as u64),
            ("worker.retry_base_ms", self.worker.retry_base_ms),
            ("worker.sweep_interval_ms", self.worker.sweep_interval_ms),
            ("token.ttl_hours", self.token.ttl_hours),
            ("worker.max_backlog", self.worker.max_backlog),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        if self.worker.retry_max_ms < self.worker.retry_base_ms {
            return Err(invalid(
                "worker.retry_max_ms",
                "must be at least worker.retry_base_ms",
            ));
        }
        if Duration::from_millis(self.worker.retry_max_ms) >= self.token.ttl() {
            return Err(invalid(
                "worker.retry_max_ms",
                "must be shorter than token.ttl_hours, or an email could fail for good at its first \
                 failure, its first retry falling after its link's expiry",
            ));
        }
        if self.worker.lease_ms <= self.smtp.timeout_ms {
            return Err(invalid(
                "worker.lease_ms",
                "must be longer than smtp.timeout_ms, or a slow send could be taken over and sent twice",
            ));
        }
        // A sync signup's row is claimed before it waits for a connection, then sent.
        if self.worker.lease_ms <= self.smtp.timeout_ms + self.smtp.acquire_timeout_ms {
            return Err(invalid(
                "worker.lease_ms",
                "must be longer than smtp.timeout_ms + smtp.acquire_timeout_ms, or a sync send \
                 that waited for a connection could be taken over and sent twice",
            ));
        }
        if self.worker.shutdown_timeout_ms <= self.smtp.timeout_ms {
            return Err(invalid(
                "worker.shutdown_timeout_ms",
                "must be longer than smtp.timeout_ms, or shutdown could cut a send in the middle",
            ));
        }
        let secret = self.token.secret.expose_secret().trim();
        if !secret.is_empty() && secret.len() < crate::secret::MIN_SECRET_LEN {
            return Err(invalid(
                "token.secret",
                format!(
                    "must be at least {} characters",
                    crate::secret::MIN_SECRET_LEN
                ),
            ));
        }
        if self.server.request_timeout_ms <= self.smtp.timeout_ms + self.smtp.acquire_timeout_ms {
            return Err(invalid(
                "server.request_timeout_ms",
                "must be longer than smtp.timeout_ms + smtp.acquire_timeout_ms, or a sync signup whose email is on its way would be answered 503",
            ));
        }
        let header = self.server.client_ip_header.trim();
        if !header.is_empty() && header.parse::<HeaderName>().is_err() {
            return Err(invalid(
                "server.client_ip_header",
                "must be a header name such as x-forwarded-for, or empty",
            ));
        }
        let endpoint = self.telemetry.otlp_endpoint.trim();
        if !endpoint.is_empty() && !endpoint.starts_with("http://") {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// URL such as http://127.0.0.1:4318, or empty: the exporter \
                 speaks plain HTTP, to a collector beside the service",
            ));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return Err(invalid(
                "telemetry.sampling_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        if self.token.ttl_hours > 24 * 365 {
            return Err(invalid("token.ttl_hours", "must be at most a year"));
        }
        // The resend interval is read off the last email to an address: a sent row must outlive
        // it, or an address could be mailed again as soon as its last email was pruned. Keeping
        // the row as long as its link lives keeps `GET /signups/{id}` answering while the link
        // can still be clicked.
        let retention = &self.retention;
        if retention.sent_days > 0
            && (retention.sent_days.saturating_mul(DAY_S)
                < self.signup.resend_interval_s.saturating_mul(10)
                || retention.sent_days.saturating_mul(24) < self.token.ttl_hours)
        {
            return Err(invalid(
                "retention.sent_days",
                "must be 0 (keep forever), or at least token.ttl_hours and ten times \
                 signup.resend_interval_s: the resend interval is read off the last email sent",
            ));
        }
        if retention.failed_days > 0 && retention.failed_days < retention.sent_days {
            return Err(invalid(
                "retention.failed_days",
                "must be 0 (keep forever), or at least retention.sent_days: failed emails are \
                 kept for operators at least as long as sent ones",
            ));
        }
        if retention.sent_days > 36_500 || retention.failed_days > 36_500 {
            return Err(invalid(
                "retention.sent_days",
                "must be at most 36500 days (use 0 to keep rows forever)",
            ));
        }
        if retention.batch_size > 10_000 {
            return Err(invalid(
                "retention.batch_size",
                "must be at most 10000, so that one batch never holds the write lock for long",
            ));
        }
        if crate::store::Engine::of(&self.database.url).is_none() {
            return Err(invalid(
                "database.url",
                "must be a sqlite:// or postgres:// URL",
            ));
        }
        Ok(self)
    }

    pub fn mail_from(&self) -> Mailbox {
        self.mail.from.parse().expect("validated at load")
    }
}

impl WorkerSettings {
    /// The attempt limit, if the operator set one; without one an email is retried until its
    /// link would have expired.
    pub fn max_attempts(&self) -> Option<u32> {
        (self.max_attempts > 0).then_some(self.max_attempts)
    }
    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl TokenSettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_hours * 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_defaults_are_valid_and_fit_a_local_mailhog() {
        let settings = Settings::defaults().validated().unwrap();
        assert_eq!(settings.smtp.host, "127.0.0.1");
        assert_eq!(settings.smtp.port, 1025);
        assert_eq!(settings.server.listen, "127.0.0.1:3000");
        assert_eq!(settings.delivery.default_mode, DeliveryMode::Background);
        assert_eq!(settings.worker.concurrency, 4);
    }

    #[test]
    fn trace_export_is_off_by_default_and_its_keys_are_checked() {
        let settings = Settings::defaults().validated().unwrap();
        assert_eq!(settings.telemetry.otlp_endpoint, "");
        assert_eq!(settings.telemetry.service_name, "confirmd");
        assert_eq!(settings.telemetry.sampling_ratio, 1.0);

        let refused = |change: fn(&mut TelemetrySettings)| {
            let mut settings = Settings::defaults();
            change(&mut settings.telemetry);
            settings.validated().unwrap_err().to_string()
        };
        let err = refused(|t| t.otlp_endpoint = "https://collector:4318".into());
        assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
        let err = refused(|t| t.sampling_ratio = 1.5);
        assert!(err.contains("telemetry.sampling_ratio"), "{err}");
        let err = refused(|t| t.service_name = " ".into());
        assert!(err.contains("telemetry.service_name"), "{err}");
    }

    #[test]
    fn retention_outlives_the_resend_interval_and_the_link_and_failed_rows_outlive_sent_ones() {
        let settings = Settings::defaults().validated().unwrap();
        assert_eq!(
            settings.retention.sent_age(),
            Some(Duration::from_secs(3 * 86_400))
        );
        assert_eq!(
            settings.retention.failed_age(),
            Some(Duration::from_secs(30 * 86_400))
        );

        let checked = |change: fn(&mut Settings)| {
            let mut settings = Settings::defaults();
            change(&mut settings);
            settings.validated().map(|_| ()).map_err(|e| e.to_string())
        };
        // 0 keeps rows forever.
        checked(|s| (s.retention.sent_days, s.retention.failed_days) = (0, 0)).unwrap();
        checked(|s| s.retention.sent_days = 0).unwrap();
        let err = checked(|s| s.signup.resend_interval_s = 86_400).unwrap_err();
        assert!(err.contains("retention.sent_days"), "{err}");
        let err = checked(|s| s.token.ttl_hours = 96).unwrap_err();
        assert!(err.contains("retention.sent_days"), "{err}");
        let err = checked(|s| s.retention.failed_days = 2).unwrap_err();
        assert!(err.contains("retention.failed_days"), "{err}");
        let err = checked(|s| s.retention.batch_size = 0).unwrap_err();
        assert!(err.contains("retention.batch_size"), "{err}");
        let err = checked(|s| s.retention.interval_s = 0).unwrap_err();
        assert!(err.contains("retention.interval_s"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let mut settings = Settings::defaults();
        settings.mail.from = "not a mailbox".into();
        let err = settings.validated().unwrap_err().to_string();
        assert!(err.contains("mail.from"), "{err}");

        let mut settings = Settings::defaults();
        settings.database.url = "mysql://localhost/confirmd".into();
        let err = settings.validated().unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
        for url in [
            "postgres://postgres@127.0.0.1:5432/confirmd",
            "sqlite::memory:",
        ] {
            let mut settings = Settings::defaults();
            settings.database.url = url.into();
            assert!(settings.validated().is_ok(), "{url}");
        }

        let mut settings = Settings::defaults();
        settings.worker.concurrency = 0;
        assert!(
            settings
                .validated()
                .unwrap_err()
                .to_string()
                .contains("worker.concurrency")
        );

        let mut settings = Settings::defaults();
        settings.worker.shutdown_timeout_ms = settings.smtp.timeout_ms;
        assert!(
            settings
                .validated()
                .unwrap_err()
                .to_string()
                .contains("worker.shutdown_timeout_ms")
        );

        let mut settings = Settings::defaults();
        settings.worker.retry_max_ms = settings.token.ttl_hours * 3_600_000;
        let err = settings.validated().unwrap_err().to_string();
        assert!(err.contains("worker.retry_max_ms"), "{err}");

        let mut settings = Settings::defaults();
        settings.worker.lease_ms = settings.smtp.timeout_ms + settings.smtp.acquire_timeout_ms;
        let err = settings.validated().unwrap_err().to_string();
        assert!(err.contains("smtp.acquire_timeout_ms"), "{err}");

        let mut settings = Settings::defaults();
        settings.worker.lease_ms = settings.smtp.timeout_ms;
        assert!(
            settings
                .validated()
                .unwrap_err()
                .to_string()
                .contains("worker.lease_ms")
        );

        let mut settings = Settings::defaults();
        settings.server.request_timeout_ms = settings.smtp.timeout_ms;
        assert!(
            settings
                .validated()
                .unwrap_err()
                .to_string()
                .contains("server.request_timeout_ms")
        );

        let mut settings = Settings::defaults();
        settings.server.client_ip_header = "x forwarded for".into();
        assert!(
            settings
                .validated()
                .unwrap_err()
                .to_string()
                .contains("server.client_ip_header")
        );
    }

    #[test]
    fn a_short_token_secret_is_refused_and_is_never_printed() {
        let mut settings = Settings::defaults();
        settings.token.secret = "too short".into();
        let err = settings.validated().unwrap_err().to_string();
        assert!(err.contains("token.secret"), "{err}");

        let mut settings = Settings::defaults();
        settings.token.secret = "a-long-enough-secret-of-32-chars".into();
        let settings = settings.validated().unwrap();
        assert!(!format!("{settings:?}").contains("a-long-enough"));
    }

    #[test]
    fn the_smtp_password_is_never_printed() {
        let mut settings = Settings::defaults();
        settings.smtp.username = "postmaster".into();
        settings.smtp.password = "hunter2-smtp-password".into();
        let settings = settings.validated().unwrap();
        let printed = format!("{settings:?}");
        assert!(printed.contains("postmaster"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn files_layer_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), "[smtp]\nport = 2525\n").unwrap();
        let settings = Settings::load(dir.path()).unwrap();
        assert_eq!(settings.smtp.port, 2525);
        assert_eq!(settings.smtp.host, "127.0.0.1");

        std::fs::write(
            dir.path().join("default.toml"),
            "[smtp]\nport = \"twenty\"\n",
        )
        .unwrap();
        let err = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("smtp.port"), "{err}");
    }
}
