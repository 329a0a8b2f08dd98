//! `pivot-control-plane`: load the config (flags, environment, `--config` file), start
//! tracing, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use pivot_control_plane::Config;
use pivot_control_plane::config::LogFormat;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // A bad flag or file prints clap's message and usage and exits with status 2.
    let config = Config::load().unwrap_or_else(|e| e.exit());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    if let Err(e) = config.validate() {
        eprintln!("pivot-control-plane: {e}");
        return ExitCode::from(2);
    }
    if let Some(path) = &config.config_file {
        // The path only: the file may hold secrets.
        tracing::info!(file = %path.display(), "configuration file read");
    }

    // Cancelled on the first SIGINT/SIGTERM; `run` then drains and returns.
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        signal_token.cancel();
    });

    match pivot_control_plane::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "control plane failed");
            eprintln!("pivot-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
