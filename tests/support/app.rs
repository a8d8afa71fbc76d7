//! The real application started inside the test process, on the port its settings name
//! (`127.0.0.1:0` for any free one), until the test stops it.

use std::time::Duration;

use confirmd::{Application, Settings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long an orderly stop may take.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// A running confirmd inside this process.
pub struct InProcessApp {
    /// `http://127.0.0.1:PORT`, where it listens.
    pub address: String,
    /// The settings it runs with, validated.
    pub settings: Settings,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl InProcessApp {
    /// Validates `settings`, builds the app and serves it on a task of its own.
    pub async fn start(settings: Settings) -> InProcessApp {
        let settings = settings.validated().expect("test settings are valid");
        let app = Application::build(settings.clone())
            .await
            .expect("the app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.shutdown_token();
        let server =
            tokio::spawn(async move { app.run_until_stopped().await.expect("the app runs") });
        InProcessApp {
            address,
            settings,
            shutdown,
            server,
        }
    }

    /// Shuts the app down gracefully and waits until it has stopped; panics if its run failed
    /// or it does not stop in time.
    pub async fn stop(self) -> Settings {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_PATIENCE, self.server)
            .await
            .expect("the app stops within its deadline")
            .expect("the app's run ends without a panic");
        self.settings
    }
}
