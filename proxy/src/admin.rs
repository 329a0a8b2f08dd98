//! The proxy's admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::server::Shared;

/// The admin routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

/// Serves the admin routes until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        error!(error = %e, "admin listener failed");
    }
}

/// Ready once a config snapshot has been applied and the command table is loaded (without
/// it every command would be classified unknown and sent to the master, blocking ones
/// included), until a shutdown begins (see `--shutdown-delay`).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let table = shared.table.load();
    let reason = if *shared.draining.borrow() {
        Some("shutting down")
    } else if table.version == 0 {
        Some("no config received from the control plane yet")
    } else if shared.commands.load().is_empty() {
        Some("command table not loaded from the master yet")
    } else {
        None
    };
    if let Some(reason) = reason {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        Json(json!({"ready": true, "version": table.config_version})),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

/// The routing table as JSON, for operators and tests.
async fn status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let t = shared.table.load();
    Json(json!({
        "service": t.service,
        "version": t.config_version,
        "followed_sentinels": t.is_local(),
        "master": t.master.as_ref().map(ToString::to_string),
        "replicas": t.replicas.iter().map(|r| json!({"addr": r.addr.to_string(), "healthy": r.healthy})).collect::<Vec<_>>(),
        "read_policy": format!("{:?}", t.read_policy),
        "consistency": format!("{:?}", t.consistency),
        "commands_known": shared.commands.load().len(),
        "draining": *shared.draining.borrow(),
    }))
}
