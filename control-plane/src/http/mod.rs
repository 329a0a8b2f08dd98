//! The HTTP server: the admin REST API under `/api/v1` (docs/api.md), its OpenAPI
//! document, the live event stream, the embedded web UI, and `/healthz`, `/readyz`,
//! `/metrics`.
//!
//! - [`api`]: the REST handlers; [`sse`]: `GET /api/v1/events/stream`.
//! - [`model`]: the JSON shapes and their conversions; [`openapi`]: the document.
//! - [`extract`]: body, query and path extractors whose errors name the field, and
//!   bearer-token authentication; [`error`]: the one error type.
//!
//! Every `/api/v1` route but the OpenAPI document is behind [`extract::authenticate`].
//! Every response carries `X-Content-Type-Options: nosniff`; API responses are not
//! cached (`Cache-Control: no-store`: some carry a token); the UI's HTML gets a
//! Content-Security-Policy that allows only its own files.

pub mod api;
pub mod error;
pub mod extract;
pub mod model;
pub mod openapi;
pub mod sse;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::auth::Tokens;
use crate::grpc::ProxyRegistry;
use crate::metrics::Metrics;
use crate::state::State as FleetStateOwner;
use crate::web;
use error::ApiError;
use model::Status;

/// Content-Security-Policy of the UI's HTML: its own scripts, styles and API only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Shared state of the handlers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Fleet state.
    pub state: Arc<FleetStateOwner>,
    /// Configuration changes and queries.
    pub admin: Admin,
    /// API tokens.
    pub tokens: Tokens,
    /// Proxies seen.
    pub registry: Arc<ProxyRegistry>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the control plane shuts down: ends the event streams, which would
    /// otherwise hold the server's graceful shutdown open.
    pub shutdown: CancellationToken,
    /// Permits for concurrent event streams ([`sse::MAX_STREAMS`]).
    pub streams: Arc<Semaphore>,
}

impl AppState {
    /// State for the handlers; event streams end when `shutdown` is cancelled.
    pub fn new(
        admin: Admin,
        tokens: Tokens,
        registry: Arc<ProxyRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> AppState {
        AppState {
            state: admin.state().clone(),
            admin,
            tokens,
            registry,
            metrics,
            shutdown,
            streams: Arc::new(Semaphore::new(sse::MAX_STREAMS)),
        }
    }
}

/// The router with every route.
pub fn router(app: AppState) -> Router {
    let (api, _) = api::routes().split_for_parts();
    let api = api.route_layer(middleware::from_fn_with_state(
        app.clone(),
        extract::authenticate,
    ));
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(openapi::PATH, openapi::handler())
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::map_response(common_headers))
        .with_state(app)
}

async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Serves an embedded file with an `ETag` (revalidated on every use: the file names are
/// not content-hashed, so a long max-age would serve an old UI after an upgrade).
fn serve(asset: web::Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(asset.body)[..12]));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if asset.content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

async fn index(request: HeaderMap) -> Response {
    match web::asset("index.html") {
        Some(a) => serve(a, &request),
        None => ApiError::not_found("the web UI is not embedded").into_response(),
    }
}

async fn asset(extract::ApiPath(file): extract::ApiPath<String>, request: HeaderMap) -> Response {
    match web::asset(&file) {
        Some(a) => serve(a, &request),
        None => ApiError::not_found(format!("no asset `{file}`")).into_response(),
    }
}

async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

async fn readyz(State(app): State<AppState>) -> Response {
    // The store is open by construction (the server starts after it).
    let snapshot = app.state.current();
    let waiting: Vec<&str> = snapshot
        .services
        .values()
        .filter(|s| !s.decided)
        .map(|s| s.name.as_str())
        .collect();
    if waiting.is_empty() {
        Json(Status {
            status: "ready".into(),
        })
        .into_response()
    } else {
        ApiError::unavailable(format!(
            "waiting for the first topology decision of: {}",
            waiting.join(", ")
        ))
        .into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
