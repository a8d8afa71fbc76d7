use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use confirmd::{
    Application, Settings,
    cli::{Cli, Command, OutboxCommand, outbox},
    store::{self, Store},
    telemetry::{self, LogOutput},
};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config)?;
    let (logs, default_filter) = match cli.command {
        // The service runs inside the demo: only its warnings, not a line per request.
        #[cfg(feature = "tools")]
        Some(Command::Demo(_)) => (LogOutput::Stderr, "warn"),
        #[cfg(feature = "tools")]
        Some(Command::Bench(_)) => (LogOutput::Stderr, "info"),
        Some(Command::Outbox(_)) => (LogOutput::Stderr, "info"),
        _ => (LogOutput::Stdout, "info"),
    };
    let traces = telemetry::init(&settings.telemetry, logs, default_filter)?;
    let outcome = run(cli.command, settings).await;
    traces.shutdown();
    outcome
}

async fn run(command: Option<Command>, settings: Settings) -> anyhow::Result<ExitCode> {
    match command.unwrap_or(Command::Serve) {
        Command::Serve => {
            survive_file_size_limit();
            let app = Application::build(settings).await?;
            let shutdown = app.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown signal received; draining");
                shutdown.cancel();
            });
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = open_store(&settings).await?;
            store.close().await;
            tracing::info!(database = %store::shown_url(&settings.database.url), "migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox(args) => {
            // Never report on an empty database made at a mistyped path.
            let url = &settings.database.url;
            anyhow::ensure!(
                Store::exists(url).await?,
                "no database at {}: point database.url (CONFIRMD_DATABASE__URL) at the service's",
                store::shown_url(url)
            );
            let store = open_store(&settings).await?;
            let command = args.command.unwrap_or(OutboxCommand::Status);
            let outcome = outbox::run(&store, command, args.json).await;
            store.close().await;
            outcome
        }
        #[cfg(feature = "tools")]
        Command::Bench(args) => {
            confirmd::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "tools")]
        Command::Demo(args) => {
            confirmd::demo::run(args, settings).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The database, migrated, without the service around it.
async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = &settings.database.url;
    let store = Store::connect(url, 1)
        .await
        .with_context(|| format!("cannot open the database at {}", store::shown_url(url)))?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// A file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) must fail the write that crosses it,
/// not kill the process, which is what SIGXFSZ does by default. Caught, the write fails with
/// EFBIG: SQLite reports a disk I/O error, signups get 503 while it lasts, and the service takes
/// them again once the limit is raised, like a disk that fills up and is freed. (tokio keeps the
/// handler installed for the life of the process; the signal itself needs no answer.)
fn survive_file_size_limit() {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        const SIGXFSZ: i32 = 25;
        let caught =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ));
        if let Err(error) = caught {
            tracing::warn!(%error, "cannot catch SIGXFSZ; a file-size limit would kill the process");
        }
    }
}
