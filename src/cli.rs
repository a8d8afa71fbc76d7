//! The command line: `confirmd [serve]`, `confirmd migrate`, `confirmd outbox`, and with the
//! default `tools` feature `confirmd bench` and `confirmd demo`. A build without it
//! (`--no-default-features`, the production image) has no such commands: clap refuses them as
//! unknown, and `--help` says where they went.
//! The operator's `confirmd outbox` runs in [`outbox`].

pub mod outbox;

use std::path::PathBuf;
#[cfg(feature = "tools")]
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[cfg(feature = "tools")]
use crate::domain::DeliveryMode;

/// confirmd: sign users up and send their confirmation email inline (sync) or from a durable
/// background outbox, to measure the difference.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
#[cfg_attr(
    not(feature = "tools"),
    command(
        after_help = "This build has no `bench` or `demo` command: they come with the \
        default `tools` feature, which a production build (--no-default-features) leaves out."
    )
)]
pub struct Cli {
    /// Folder with `default.toml` and `<CONFIRMD_ENV>.toml` to layer over the built-in defaults.
    /// Environment variables `CONFIRMD_<SECTION>__<KEY>` override both.
    #[arg(long, global = true, value_name = "DIR", default_value = "config")]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service, its delivery workers and the sweeper (the default). Stops gracefully
    /// on SIGTERM or Ctrl-C.
    Serve,
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate,
    /// Show the email outbox (counts by state, the oldest waiting email, failed emails and why),
    /// or put failed emails back in the queue. Works on the database; no running service needed.
    Outbox(OutboxArgs),
    /// Measure a running service: send signups in each mode, then print response latency
    /// percentiles, throughput, statuses and the time from signup to email sent.
    #[cfg(feature = "tools")]
    Bench(BenchArgs),
    /// The whole comparison in one command, with nothing else to install: start a mail catcher
    /// and the service in this process (temporary database), bench both modes, follow one
    /// confirmation link, print what it means, and clean up. With --serve, keep both running and
    /// serve the page instead.
    #[cfg(feature = "tools")]
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// Print one JSON object instead of text, for scripts and monitoring.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<OutboxCommand>,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Counts by state, how long the oldest queued email has waited, and the failed emails with
    /// their last error (the default).
    Status,
    /// Put failed emails back in the queue, due now, their attempts counted from zero. A running
    /// service sends them at its next sweep; one that fails again is retried while its link's
    /// lifetime (`token.ttl_hours` from the signup) lasts, so an older one gets one attempt. Only failed emails of addresses
    /// still pending are touched; any other id is reported and left alone (exit status 2).
    Retry {
        /// Outbox ids, as `confirmd outbox` lists them.
        #[arg(required_unless_present = "failed")]
        ids: Vec<i64>,
        /// Every failed email instead of a list of ids.
        #[arg(long, conflicts_with = "ids")]
        failed: bool,
    },
}

#[cfg(feature = "tools")]
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Where the service to measure listens (plain HTTP, as `confirmd serve` does).
    #[arg(long, default_value = "http://127.0.0.1:3000", value_parser = http_url)]
    pub url: String,

    /// Signups to send in each mode, each to a fresh address.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub requests: u64,

    /// Requests in flight at once: this many clients, each sending its next signup as soon as
    /// the previous one is answered.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub concurrency: u64,

    /// The modes to measure, in this order; `async` is another name for `background`.
    #[arg(long, value_delimiter = ',', default_value = "sync,background")]
    pub modes: Vec<DeliveryMode>,

    /// Print one JSON object instead of tables (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Also draw each mode's response latency by percentile to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// How long to wait, after each mode's signups, for the service to report their emails sent.
    /// Emails still unsent then are counted as not delivered.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub delivery_timeout_s: u64,
}

#[cfg(feature = "tools")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Signups to send in each mode, each to a fresh address.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub requests: u64,

    /// Requests in flight at once. The service also gets this many delivery workers, so that
    /// both modes send up to this many emails at a time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,

    /// How long the mail catcher takes to accept each email, as a remote provider would (they
    /// take 100 ms or more; local catchers a millisecond). Such as 150ms, 1.5s or 0; at most 60s.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = smtp_latency)]
    pub smtp_latency: Duration,

    /// Print one JSON object instead of tables (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Also draw each mode's response latency by percentile to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Instead of running the comparison once, keep the service and the mail catcher running
    /// and serve the page (at the address printed): sign up, race the two modes, read the
    /// inbox. Ctrl-C or SIGTERM stops it.
    #[arg(long, conflicts_with_all = ["json", "plot", "requests"])]
    pub serve: bool,

    /// With --serve: the loopback port to serve on; 0 picks a free one.
    #[arg(long, default_value_t = 0, requires = "serve")]
    pub port: u16,
}

/// A count of one or more.
#[cfg(feature = "tools")]
fn at_least_one(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// A duration as `humantime` reads it (`150ms`, `1.5s`, `0`), at most a minute, since every
/// sync request waits this long.
#[cfg(feature = "tools")]
fn smtp_latency(value: &str) -> Result<Duration, String> {
    let latency = humantime::parse_duration(value.trim())
        .map_err(|error| format!("{error}: expected a duration such as 150ms, 1.5s or 0"))?;
    if latency > Duration::from_secs(60) {
        return Err("must be at most 60s: every sync request waits this long".into());
    }
    Ok(latency)
}

/// An `http://` base URL, without a trailing slash so that paths can be appended.
#[cfg(feature = "tools")]
fn http_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .ok_or("expected an http:// URL, such as http://127.0.0.1:3000")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(all(test, feature = "tools"))]
mod tests {
    use super::*;

    #[test]
    fn smtp_latency_reads_milliseconds_seconds_and_zero() {
        for (text, expected) in [
            ("0", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("150ms", Duration::from_millis(150)),
            ("1s", Duration::from_secs(1)),
            ("1.5s", Duration::from_millis(1500)),
            ("60s", Duration::from_secs(60)),
            // humantime's unit for minutes: the cap, not the unit, is what refuses `2m`.
            ("1m", Duration::from_secs(60)),
        ] {
            assert_eq!(smtp_latency(text), Ok(expected), "{text}");
        }
        for text in [
            "soon", "150", "-1s", "1e3ms", "ms", ".s", "infs", "1.2.3s", "61s", "2m",
        ] {
            assert!(smtp_latency(text).is_err(), "{text} should be refused");
        }
    }
}
