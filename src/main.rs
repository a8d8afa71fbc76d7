use anyhow::Context;
use clap::Parser;
use confirmd::{
    Application, Settings,
    cli::{Cli, Command},
    store::Store,
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config)?;
    telemetry::init(settings.telemetry.format);

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(settings).await?;
            let shutdown = app.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown signal received; draining");
                shutdown.cancel();
            });
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let store = Store::connect(&settings.database.url, 1)
                .await
                .with_context(|| {
                    format!("cannot open the database at {}", settings.database.url)
                })?;
            store
                .migrate()
                .await
                .context("cannot migrate the database")?;
            store.close().await;
            tracing::info!(database = %settings.database.url, "migrations applied");
            Ok(())
        }
    }
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
