//! The HTTP server: health, readiness, Prometheus metrics, the read-only REST API
//! (`/api/v1/...`) and the embedded web page. Errors are JSON `{"error": "..."}` and
//! never carry internal details (those go to the log).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::grpc::ProxyRegistry;
use crate::metrics::Metrics;
use crate::state::{ServiceState, State};
use crate::store::{Store, from_unix_ms};

/// The admin page, embedded at build time.
const INDEX_HTML: &str = include_str!("../../web/index.html");
/// Default and maximum `limit` of `/api/v1/events`.
const EVENTS_DEFAULT_LIMIT: u32 = 50;
const EVENTS_MAX_LIMIT: u32 = 1000;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Fleet state.
    pub state: Arc<State>,
    /// Proxies seen.
    pub registry: Arc<ProxyRegistry>,
    /// The store (events).
    pub store: Store,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

/// Errors a handler can return; the message is what the client sees.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 404.
    NotFound(String),
    /// 500; the detail is logged, the client sees a generic message.
    Internal(crate::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "HTTP request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// The router with every route.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/topology", get(topology))
        .route("/api/v1/proxies", get(proxies))
        .route("/api/v1/events", get(events))
        .fallback(not_found)
        .with_state(app)
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(AxumState(app): AxumState<AppState>) -> Response {
    // The store is open by construction (the server starts after it).
    let snapshot = app.state.current();
    let waiting: Vec<&str> = snapshot
        .services
        .values()
        .filter(|s| !s.decided)
        .map(|s| s.name.as_str())
        .collect();
    if waiting.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": format!("waiting for the first topology decision of: {}", waiting.join(", ")),
            })),
        )
            .into_response()
    }
}

async fn metrics(AxumState(app): AxumState<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

fn service_json(s: &ServiceState) -> Value {
    let t = &s.topology;
    json!({
        "name": s.name,
        "decided": s.decided,
        "master": t.master.as_ref().map(ToString::to_string),
        "master_reason": t.master_reason,
        "config_epoch": t.config_epoch,
        "changed_version": t.changed_version,
        "changed_at": t.changed_at.map(time),
        "replicas": t.replicas.iter().map(|r| json!({
            "addr": r.addr.to_string(),
            "healthy": r.healthy,
            "lag_bytes": r.lag_bytes,
            "link_down_ms": r.link_down_ms,
            "reason": r.reason,
        })).collect::<Vec<_>>(),
        "sentinels": t.sentinels.iter().map(|x| json!({
            "addr": x.addr.to_string(),
            "configured": x.configured,
            "reachable": x.reachable,
        })).collect::<Vec<_>>(),
        "policy": s.policy,
    })
}

async fn topology(AxumState(app): AxumState<AppState>) -> Json<Value> {
    let snapshot = app.state.current();
    Json(json!({
        "version": snapshot.version,
        "services": snapshot.services.values().map(service_json).collect::<Vec<_>>(),
    }))
}

async fn proxies(AxumState(app): AxumState<AppState>) -> Json<Value> {
    let list: Vec<Value> = app
        .registry
        .list()
        .into_iter()
        .map(|p| {
            json!({
                "proxy_id": p.proxy_id,
                "listen_addr": p.listen_addr,
                "build_version": p.build_version,
                "services": p.services,
                "connected": p.streams > 0,
                "acked_version": p.acked_version,
                "last_nack": p.last_nack,
                "last_nack_version": p.last_nack_version,
                "last_seen": time(p.last_seen),
            })
        })
        .collect();
    Json(json!({ "version": app.state.current().version, "proxies": list }))
}

/// Query of `/api/v1/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    service: Option<String>,
    limit: Option<String>,
}

async fn events(
    AxumState(app): AxumState<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|_| ApiError::BadRequest("invalid query string".into()))?;
    let limit = match q.limit.as_deref() {
        None | Some("") => EVENTS_DEFAULT_LIMIT,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=EVENTS_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit must be an integer from 1 to {EVENTS_MAX_LIMIT}"
                )));
            }
        },
    };
    let service = q.service.filter(|s| !s.is_empty());
    if let Some(s) = &service
        && !app.state.current().services.contains_key(s)
    {
        return Err(ApiError::NotFound(format!("unknown service `{s}`")));
    }
    let rows = app
        .store
        .recent_events(service.as_deref(), limit)
        .await
        .map_err(ApiError::Internal)?;
    let events: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            let details: Value = serde_json::from_str(&e.details).unwrap_or(Value::Null);
            json!({
                "id": e.id,
                "service": e.service,
                "version": e.version,
                "kind": e.kind,
                "old_master": e.old_master,
                "new_master": e.new_master,
                "reason": e.reason,
                "details": details,
                "at": time(from_unix_ms(e.at)),
            })
        })
        .collect();
    Ok(Json(json!({ "events": events })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{StoredService, spawn_writer};
    use crate::topology::{NodeAddr, Topology};
    use axum::body::Body;
    use axum::http::Request;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    async fn app() -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (writer, _t) = spawn_writer(store.clone(), CancellationToken::new());
        let metrics = Arc::new(Metrics::new());
        let services = vec![StoredService {
            name: "svc".into(),
            sentinels: vec![NodeAddr::new("127.0.0.1", 1)],
            policy: crate::state::Policy::default(),
            backend_auth: None,
            users: Vec::new(),
        }];
        let state = State::new(store.clone(), writer, metrics.clone(), &services)
            .await
            .unwrap();
        let app = AppState {
            state,
            registry: Arc::new(ProxyRegistry::default()),
            store,
            metrics,
        };
        (dir, app)
    }

    async fn get(app: &AppState, uri: &str) -> (StatusCode, String) {
        let resp = router(app.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn decide(app: &AppState) {
        let t = Topology {
            master: Some(NodeAddr::new("127.0.0.1", 7000)),
            ..Topology::default()
        };
        app.state.apply("svc", t).await.unwrap();
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let (_d, app) = app().await;
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("svc"), "{body}");
        decide(&app).await;
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn topology_and_metrics() {
        let (_d, app) = app().await;
        decide(&app).await;
        let (status, body) = get(&app, "/api/v1/topology").await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["services"][0]["master"], "127.0.0.1:7000");
        assert_eq!(v["services"][0]["policy"]["read_policy"], "replicas");
        assert!(v["version"].as_u64().unwrap() >= 1);
        let (status, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("pivot_service_master_known{service=\"svc\"} 1"),
            "{body}"
        );
        assert!(body.contains("pivot_config_version"), "{body}");
    }

    #[tokio::test]
    async fn events_route() {
        let (_d, app) = app().await;
        decide(&app).await;
        // The event row is written asynchronously.
        let mut found = false;
        for _ in 0..100 {
            let (status, body) = get(&app, "/api/v1/events?service=svc&limit=5").await;
            assert_eq!(status, StatusCode::OK);
            let v: Value = serde_json::from_str(&body).unwrap();
            if let Some(e) = v["events"].as_array().and_then(|a| a.first()) {
                assert_eq!(e["kind"], "initial");
                assert_eq!(e["new_master"], "127.0.0.1:7000");
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(found);
        let (status, body) = get(&app, "/api/v1/events?limit=abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"error\""));
        let (status, _) = get(&app, "/api/v1/events?limit=0").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = get(&app, "/api/v1/events?service=nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("unknown service"));
    }

    #[tokio::test]
    async fn index_proxies_and_404() {
        let (_d, app) = app().await;
        let (status, body) = get(&app, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<html"));
        let (status, body) = get(&app, "/api/v1/proxies").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"proxies\":[]"), "{body}");
        let (status, body) = get(&app, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, r#"{"error":"no such route"}"#);
    }
}
