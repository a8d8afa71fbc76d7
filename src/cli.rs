//! The command line: `confirmd [serve]`, `confirmd migrate`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
}
