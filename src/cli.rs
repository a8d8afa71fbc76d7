//! The command line: `confirmd [serve]`, `confirmd migrate`, `confirmd outbox`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// confirmd: sign users up and send their confirmation email inline (sync) or from a durable
/// background outbox, to measure the difference.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
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
    /// Put failed emails back in the queue, due now and with a fresh set of `worker.max_attempts`
    /// attempts. A running service sends them at its next sweep. Only failed emails of addresses
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
