//! `pivot-proxy`: parse the configuration, start logging, run until SIGINT/SIGTERM.

use clap::Parser;
use pivot_proxy::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    // The control path (config stream, admin HTTP) is light: one thread. The data path runs
    // on the proxy's own worker threads.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pivot-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = rt.block_on(async {
        tokio::spawn(on_signals(shutdown.clone()));
        pivot_proxy::run(config, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pivot-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The first SIGINT or SIGTERM starts the shutdown (`--shutdown-delay`, then
/// `--shutdown-grace`); a second one ends the process at once, for an operator who will
/// not wait for the clients.
async fn on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot listen for SIGINT and SIGTERM: either ends the proxy without draining"
        );
        return;
    };
    for first in [true, false] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if first {
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting without waiting for client connections");
            std::process::exit(1);
        }
    }
}
