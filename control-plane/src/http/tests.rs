//! API tests against the router (`tower::ServiceExt::oneshot`, no socket), each with a
//! fresh store. What needs real Redis and Sentinels (failover, topology after a change,
//! deleting a service proxies serve) is in `sandbox/tests/api.rs`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{AppState, router, sse};
use crate::admin::{Actor, Admin};
use crate::auth::{Role, Tokens};
use crate::grpc::{ProxyInfo, ProxyRegistry};
use crate::metrics::Metrics;
use crate::state::{FleetState, Policy, State};
use crate::store::{Store, StoredService, spawn_writer};
use crate::topology::{NodeAddr, ReplicaState, Topology};
use crate::watchers::Watchers;

struct Harness {
    _dir: tempfile::TempDir,
    app: AppState,
    admin_token: String,
    viewer_token: String,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store
        .upsert_service(&crate::config::ServiceSpec {
            name: "svc".into(),
            sentinels: vec![NodeAddr::new("127.0.0.1", 1)],
        })
        .await
        .unwrap();
    // The writer task runs until its `Writer`s are dropped with the harness.
    let (writer, _task) = spawn_writer(store.clone(), CancellationToken::new());
    let metrics = Arc::new(Metrics::new());
    let services = vec![StoredService {
        name: "svc".into(),
        sentinels: vec![NodeAddr::new("127.0.0.1", 1)],
        policy: Policy::default(),
        backend_auth: None,
        users: Vec::new(),
    }];
    let state = State::new(store.clone(), writer, metrics.clone(), &services)
        .await
        .unwrap();
    // Never started: no watcher connects to a Sentinel in these tests.
    let watchers = Watchers::new(state.clone(), Duration::from_secs(1));
    let registry = Arc::new(ProxyRegistry::default());
    let admin = Admin::new(store.clone(), state, watchers, registry.clone());
    let tokens = Tokens::new(store);
    let (_, admin_token) = tokens.create("root", Role::Admin, "test").await.unwrap();
    let (_, viewer_token) = tokens.create("eyes", Role::Viewer, "test").await.unwrap();
    let app = AppState::new(admin, tokens, registry, metrics, CancellationToken::new());
    Harness {
        _dir: dir,
        app,
        admin_token: admin_token.expose().to_string(),
        viewer_token: viewer_token.expose().to_string(),
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts the status and, for errors, the shape `{"error", "field"?}`.
    #[track_caller]
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let json = self
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct == "application/json");
        if !json {
            assert!(!status.is_client_error(), "errors are JSON: {}", self.text);
            return Value::Null;
        }
        let v = self.json();
        if !status.is_success() {
            assert!(v["error"].is_string(), "{v}");
        }
        v
    }

    #[track_caller]
    fn expect_field(&self, status: StatusCode, field: &str) -> Value {
        let v = self.expect(status);
        assert_eq!(v["field"], field, "{v}");
        v
    }
}

impl Harness {
    fn router(&self) -> Router {
        router(self.app.clone())
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            text: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(&self.admin_token.clone()), None)
            .await
    }

    async fn as_admin(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.call(method, uri, Some(&self.admin_token.clone()), body)
            .await
    }

    async fn as_viewer(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.call(method, uri, Some(&self.viewer_token.clone()), body)
            .await
    }

    /// Makes `svc` decided with a master and one replica.
    async fn decide(&self) {
        let t = Topology {
            master: Some(NodeAddr::new("127.0.0.1", 7000)),
            replicas: vec![ReplicaState {
                addr: NodeAddr::new("127.0.0.1", 7001),
                healthy: true,
                lag_bytes: Some(0),
                link_down_ms: 0,
                reason: String::new(),
            }],
            ..Topology::default()
        };
        self.app.state.apply("svc", t).await.unwrap();
    }

    /// Waits until `GET uri` satisfies `done` (rows are written asynchronously).
    async fn wait_for(&self, uri: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.get(uri).await.expect(StatusCode::OK);
            if done(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every documented operation, with its path parameters filled in.
fn documented_operations() -> Vec<(Method, String)> {
    let doc = serde_json::to_value(super::openapi::document()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{name}", "svc")
            .replace("{command}", "get")
            .replace("{user}", "alice")
            .replace("{id}", "1");
        for m in item.as_object().unwrap().keys() {
            ops.push((
                Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                uri.clone(),
            ));
        }
    }
    ops
}

#[tokio::test]
async fn every_route_needs_a_token_and_every_change_an_admin() {
    let h = harness().await;
    let ops = documented_operations();
    assert!(ops.len() >= 25, "{ops:?}");
    for (method, uri) in &ops {
        let is_doc = uri == super::openapi::PATH;
        let r = h.call(method.clone(), uri, None, Some(json!({}))).await;
        if is_doc {
            r.expect(StatusCode::OK);
            continue;
        }
        r.expect(StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers[header::WWW_AUTHENTICATE],
            r#"Bearer realm="pivot""#,
            "{method} {uri}"
        );
        let r = h
            .call(
                method.clone(),
                uri,
                Some("pvt_not-a-token"),
                Some(json!({})),
            )
            .await;
        r.expect(StatusCode::UNAUTHORIZED);
        assert!(
            r.headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{method} {uri}"
        );
        let admin_only = *method != Method::GET || uri.starts_with("/api/v1/tokens");
        if admin_only {
            let r = h.as_viewer(method.clone(), uri, Some(json!({}))).await;
            r.expect(StatusCode::FORBIDDEN);
            assert!(
                r.json()["error"].as_str().unwrap().contains("admin"),
                "{}",
                r.text
            );
        }
    }
    // A scheme other than Bearer is no token.
    let r = h
        .send(
            Request::get("/api/v1/whoami")
                .header(header::AUTHORIZATION, format!("Basic {}", h.admin_token))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    r.expect(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn whoami_names_the_token() {
    let h = harness().await;
    let v = h.get("/api/v1/whoami").await.expect(StatusCode::OK);
    assert_eq!(v, json!({"name": "root", "role": "admin"}));
    let v = h
        .as_viewer(Method::GET, "/api/v1/whoami", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v, json!({"name": "eyes", "role": "viewer"}));
}

#[tokio::test]
async fn services_crud() {
    let h = harness().await;
    let v = h.get("/api/v1/services").await.expect(StatusCode::OK);
    assert_eq!(v["services"][0]["name"], "svc");
    assert_eq!(v["services"][0]["sentinels"], json!(["127.0.0.1:1"]));
    assert_eq!(v["services"][0]["backend_auth"], Value::Null);
    assert_eq!(v["services"][0]["topology"]["decided"], false);
    h.get("/api/v1/services/nope")
        .await
        .expect(StatusCode::NOT_FOUND);

    let new = json!({
        "name": "orders",
        "sentinels": ["127.0.0.1:2", "127.0.0.1:3"],
        "backend_auth": {"username": "pivot", "password": "pw"},
        "policy": {"read_policy": "master-only", "consistency": "strong", "write_ack": "replicas(1)",
                   "rules": [{"command": "FLUSHALL", "target": "deny"}], "failover_hold": "3s"},
    });
    let v = h
        .as_admin(Method::POST, "/api/v1/services", Some(new.clone()))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["name"], "orders");
    assert_eq!(
        v["backend_auth"],
        json!({"username": "pivot", "password_set": true})
    );
    assert_eq!(v["policy"]["read_policy"], "master-only");
    assert_eq!(v["policy"]["write_ack"], "replicas(1)");
    assert_eq!(v["policy"]["failover_hold"], "3s");
    assert_eq!(
        v["policy"]["rules"],
        json!([{"command": "flushall", "target": "deny"}])
    );
    assert!(v["config_version"].as_u64().unwrap() > 0);
    h.as_admin(Method::POST, "/api/v1/services", Some(new.clone()))
        .await
        .expect(StatusCode::CONFLICT);
    h.get("/api/v1/services/orders")
        .await
        .expect(StatusCode::OK);

    // 400s name the field.
    for (body, field) in [
        (json!({"sentinels": ["h:1"]}), "name"),
        (
            json!({"name": "x", "sentinels": ["h:1", "nope"]}),
            "sentinels[1]",
        ),
        (json!({"name": "x", "sentinels": []}), "sentinels"),
        (
            json!({"name": "x", "sentinels": ["h:1", "h:1"]}),
            "sentinels[1]",
        ),
        (json!({"name": "a b", "sentinels": ["h:1"]}), "name"),
        (
            json!({"name": "x", "sentinels": ["h:1"], "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "x", "sentinels": ["h:1"], "backend_auth": {"password": ""}}),
            "backend_auth.password",
        ),
        (
            json!({"name": "x", "sentinels": ["h:1"], "policy": {"read_policy": "all", "consistency": "strong", "write_ack": "master", "rules": [{"command": "get", "target": "up"}]}}),
            "policy.rules[0].target",
        ),
        (
            json!({"name": "x", "sentinels": ["h:1"], "policy": {"read_policy": "all", "consistency": "strong", "write_ack": "master", "rules": [{"command": "get", "target": "any"}, {"command": "GET", "target": "master"}]}}),
            "policy.rules[1].command",
        ),
        (
            json!({"name": "x", "sentinels": ["h:1"], "policy": {"read_policy": "all", "consistency": "strong"}}),
            "policy.write_ack",
        ),
        (json!({"name": 5, "sentinels": ["h:1"]}), "name"),
    ] {
        h.as_admin(Method::POST, "/api/v1/services", Some(body))
            .await
            .expect_field(StatusCode::BAD_REQUEST, field);
    }

    // PATCH: Sentinels, credentials set and removed.
    let v = h
        .as_admin(
            Method::PATCH,
            "/api/v1/services/orders",
            Some(json!({"sentinels": ["127.0.0.1:4"], "backend_auth": {"password": "pw2"}})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["sentinels"], json!(["127.0.0.1:4"]));
    assert_eq!(
        v["backend_auth"],
        json!({"username": null, "password_set": true})
    );
    let v = h
        .as_admin(
            Method::PATCH,
            "/api/v1/services/orders",
            Some(json!({"backend_auth": null})),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["backend_auth"], Value::Null);
    assert_eq!(v["sentinels"], json!(["127.0.0.1:4"]));
    h.as_admin(
        Method::PATCH,
        "/api/v1/services/orders",
        Some(json!({"sentinels": null})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "sentinels");
    h.as_admin(
        Method::PATCH,
        "/api/v1/services/orders",
        Some(json!({"sentinels": ["x"]})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "sentinels[0]");
    h.as_admin(Method::PATCH, "/api/v1/services/nope", Some(json!({})))
        .await
        .expect(StatusCode::NOT_FOUND);

    // DELETE.
    h.as_admin(Method::DELETE, "/api/v1/services/orders?force=maybe", None)
        .await
        .expect_field(StatusCode::BAD_REQUEST, "force");
    h.as_admin(Method::DELETE, "/api/v1/services/orders?colour=red", None)
        .await
        .expect(StatusCode::BAD_REQUEST);
    h.as_admin(Method::DELETE, "/api/v1/services/orders", None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.as_admin(Method::DELETE, "/api/v1/services/orders", None)
        .await
        .expect(StatusCode::NOT_FOUND);
    h.get("/api/v1/services/orders")
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn topology_routes() {
    let h = harness().await;
    let v = h
        .get("/api/v1/services/svc/topology")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["decided"], false);
    assert_eq!(v["master"], Value::Null);
    h.decide().await;
    let v = h
        .get("/api/v1/services/svc/topology")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["decided"], true);
    assert_eq!(v["master"], "127.0.0.1:7000");
    assert_eq!(v["replicas"][0]["addr"], "127.0.0.1:7001");
    assert_eq!(v["replicas"][0]["healthy"], true);
    assert!(v["changed_at"].as_str().unwrap().ends_with('Z'));
    let version = v["changed_version"].as_u64().unwrap();
    let v = h.get("/api/v1/topology").await.expect(StatusCode::OK);
    assert_eq!(v["version"], version);
    assert_eq!(v["services"][0]["name"], "svc");
    assert_eq!(v["services"][0]["master"], "127.0.0.1:7000");
    h.get("/api/v1/services/nope/topology")
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn policy_put_and_patch() {
    let h = harness().await;
    let v = h
        .get("/api/v1/services/svc/policy")
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        v,
        json!({"read_policy": "replicas", "consistency": "read-your-writes", "rules": [],
               "max_replica_lag": null, "write_ack": "master", "failover_hold": null})
    );
    let put = json!({"read_policy": "all", "consistency": "eventual", "write_ack": "replicas(2)",
                     "rules": [{"command": "keys", "target": "deny"}], "max_replica_lag": 1024,
                     "failover_hold": "1500ms"});
    let v = h
        .as_admin(
            Method::PUT,
            "/api/v1/services/svc/policy",
            Some(put.clone()),
        )
        .await
        .expect(StatusCode::OK);
    let v1 = v["version"].as_u64().unwrap();
    assert_eq!(v["policy"]["failover_hold"], "1s 500ms");
    assert_eq!(v["policy"]["max_replica_lag"], 1024);
    // The same policy again: no new version, the one that carries it.
    let v = h
        .as_admin(Method::PUT, "/api/v1/services/svc/policy", Some(put))
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["version"], v1);
    // PATCH changes what it names; null clears.
    let v = h
        .as_admin(
            Method::PATCH,
            "/api/v1/services/svc/policy",
            Some(json!({"read_policy": "master-only", "failover_hold": null})),
        )
        .await
        .expect(StatusCode::OK);
    assert!(v["version"].as_u64().unwrap() > v1);
    assert_eq!(v["policy"]["read_policy"], "master-only");
    assert_eq!(v["policy"]["consistency"], "eventual");
    assert_eq!(v["policy"]["failover_hold"], Value::Null);
    assert_eq!(
        v["policy"]["rules"],
        json!([{"command": "keys", "target": "deny"}])
    );
    let svc = h.get("/api/v1/services/svc").await.expect(StatusCode::OK);
    assert_eq!(svc["policy"], v["policy"]);
    assert_eq!(svc["config_version"], v["version"]);

    for (method, body, field) in [
        (
            Method::PUT,
            json!({"read_policy": "all", "consistency": "eventual"}),
            "write_ack",
        ),
        (
            Method::PUT,
            json!({"read_policy": "some", "consistency": "eventual", "write_ack": "master"}),
            "read_policy",
        ),
        (
            Method::PUT,
            json!({"read_policy": "all", "consistency": "eventual", "write_ack": "master", "failover_hold": "11m"}),
            "failover_hold",
        ),
        (
            Method::PATCH,
            json!({"write_ack": "replicas(65)"}),
            "write_ack",
        ),
        (
            Method::PATCH,
            json!({"max_replica_lag": "lots"}),
            "max_replica_lag",
        ),
        (
            Method::PATCH,
            json!({"rules": [{"command": "a|b|c", "target": "any"}]}),
            "rules[0].command",
        ),
        (
            Method::PATCH,
            json!({"rules": [{"command": "get", "target": "any"}, {"command": "get", "target": "deny"}]}),
            "rules[1].command",
        ),
        (Method::PATCH, json!({"consistency": null}), "consistency"),
        (Method::PATCH, json!({"extra": true}), "extra"),
    ] {
        h.as_admin(method, "/api/v1/services/svc/policy", Some(body))
            .await
            .expect_field(StatusCode::BAD_REQUEST, field);
    }
    h.as_admin(
        Method::PATCH,
        "/api/v1/services/nope/policy",
        Some(json!({})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    h.get("/api/v1/services/nope/policy")
        .await
        .expect(StatusCode::NOT_FOUND);
    // The change is an event.
    h.wait_for("/api/v1/events?service=svc&kind=config-changed", |v| {
        !v["events"].as_array().unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn rules_crud() {
    let h = harness().await;
    let v = h
        .as_admin(
            Method::PUT,
            "/api/v1/services/svc/rules/FLUSHALL",
            Some(json!({"target": "deny"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["rule"], json!({"command": "flushall", "target": "deny"}));
    let version = v["version"].as_u64().unwrap();
    let v = h
        .as_admin(
            Method::PUT,
            "/api/v1/services/svc/rules/flushall",
            Some(json!({"target": "master"})),
        )
        .await
        .expect(StatusCode::OK);
    assert!(v["version"].as_u64().unwrap() > version);
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/rules/script%7Cload",
        Some(json!({"target": "master"})),
    )
    .await
    .expect(StatusCode::CREATED);
    let v = h
        .get("/api/v1/services/svc/rules")
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        v["rules"],
        json!([{"command": "flushall", "target": "master"}, {"command": "script|load", "target": "master"}])
    );
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/rules/a%7Cb%7Cc",
        Some(json!({"target": "deny"})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "command");
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/rules/get",
        Some(json!({"target": "nowhere"})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "target");
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/rules/get",
        Some(json!({})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "target");
    h.as_admin(
        Method::PUT,
        "/api/v1/services/nope/rules/get",
        Some(json!({"target": "any"})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    h.as_admin(Method::DELETE, "/api/v1/services/svc/rules/FlushAll", None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.as_admin(Method::DELETE, "/api/v1/services/svc/rules/flushall", None)
        .await
        .expect(StatusCode::NOT_FOUND);
    h.as_admin(Method::DELETE, "/api/v1/services/nope/rules/flushall", None)
        .await
        .expect(StatusCode::NOT_FOUND);
    h.get("/api/v1/services/nope/rules")
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn users_crud() {
    let h = harness().await;
    let v = h
        .as_admin(
            Method::PUT,
            "/api/v1/services/svc/users/alice",
            Some(json!({"password": "pw1"})),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(v["name"], "alice");
    let v1 = v["version"].as_u64().unwrap();
    let v = h
        .as_admin(
            Method::PUT,
            "/api/v1/services/svc/users/alice",
            Some(json!({"password": "pw2"})),
        )
        .await
        .expect(StatusCode::OK);
    assert!(v["version"].as_u64().unwrap() > v1);
    let v = h
        .get("/api/v1/services/svc/users")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v, json!({"users": [{"name": "alice"}]}));
    assert_eq!(
        h.get("/api/v1/services/svc").await.expect(StatusCode::OK)["users"],
        json!(["alice"])
    );
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/users/bad%20name",
        Some(json!({"password": "pw"})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "user");
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/users/bob",
        Some(json!({"password": ""})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "password");
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/users/bob",
        Some(json!({"pass": "x"})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "pass");
    h.as_admin(
        Method::PUT,
        "/api/v1/services/nope/users/bob",
        Some(json!({"password": "x"})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    h.as_admin(Method::DELETE, "/api/v1/services/svc/users/alice", None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.as_admin(Method::DELETE, "/api/v1/services/svc/users/alice", None)
        .await
        .expect(StatusCode::NOT_FOUND);
    h.get("/api/v1/services/nope/users")
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failover_preconditions() {
    let h = harness().await;
    h.as_admin(Method::POST, "/api/v1/services/nope/failover", None)
        .await
        .expect(StatusCode::NOT_FOUND);
    // No master yet.
    let v = h
        .as_admin(Method::POST, "/api/v1/services/svc/failover", None)
        .await
        .expect(StatusCode::CONFLICT);
    assert!(v["error"].as_str().unwrap().contains("no master"), "{v}");
}

#[tokio::test]
async fn events_paging_and_filters() {
    let h = harness().await;
    h.decide().await;
    for i in 0..5 {
        h.as_admin(
            Method::PUT,
            &format!("/api/v1/services/svc/rules/cmd{i}"),
            Some(json!({"target": "deny"})),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    // initial + 5 config changes, written asynchronously.
    h.wait_for("/api/v1/events?limit=1000", |v| {
        v["events"].as_array().unwrap().len() >= 6
    })
    .await;
    let page = h.get("/api/v1/events?limit=4").await.expect(StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(page["next_before"], ids[3]);
    let next = h
        .get(&format!("/api/v1/events?limit=4&before={}", ids[3]))
        .await
        .expect(StatusCode::OK);
    let rest = next["events"].as_array().unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|e| e["id"].as_i64().unwrap() < ids[3]));
    assert_eq!(next["next_before"], Value::Null);
    let initial = h
        .get("/api/v1/events?service=svc&kind=initial,replica-health")
        .await
        .expect(StatusCode::OK);
    let initial = initial["events"].as_array().unwrap();
    assert_eq!(initial.len(), 1);
    assert_eq!(initial[0]["kind"], "initial");
    assert_eq!(initial[0]["new_master"], "127.0.0.1:7000");
    assert!(initial[0]["details"].is_object());
    let none = h
        .get("/api/v1/events?service=other")
        .await
        .expect(StatusCode::OK);
    assert_eq!(none["events"], json!([]));
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("before=", "before"),
        ("before=-3", "before"),
        ("before=x", "before"),
        ("kind=Master_Changed", "kind"),
        ("kind=a,,b", "kind"),
    ] {
        h.get(&format!("/api/v1/events?{query}"))
            .await
            .expect_field(StatusCode::BAD_REQUEST, field);
    }
    h.get("/api/v1/events?colour=red")
        .await
        .expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn audit_log_records_api_changes_by_token() {
    let h = harness().await;
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/rules/keys",
        Some(json!({"target": "deny"})),
    )
    .await
    .expect(StatusCode::CREATED);
    h.as_admin(
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await
    .expect(StatusCode::CREATED);
    let v = h
        .get("/api/v1/audit?actor=token:root")
        .await
        .expect(StatusCode::OK);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[0]["action"], "token.create");
    assert_eq!(entries[0]["target"], "ci");
    assert_eq!(entries[0]["after"], json!({"name": "ci", "role": "viewer"}));
    assert_eq!(entries[1]["action"], "rule.put");
    assert_eq!(entries[1]["service"], "svc");
    assert_eq!(
        entries[1]["after"],
        json!({"command": "keys", "target": "deny"})
    );
    assert!(entries[1]["at"].as_str().unwrap().ends_with('Z'));
    let v = h
        .get("/api/v1/audit?service=svc&limit=1")
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["next_before"], v["entries"][0]["id"]);
    h.get("/api/v1/audit?limit=0")
        .await
        .expect_field(StatusCode::BAD_REQUEST, "limit");
}

#[tokio::test]
async fn tokens_lifecycle() {
    let h = harness().await;
    let v = h.get("/api/v1/tokens").await.expect(StatusCode::OK);
    let names: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "eyes"]);
    assert!(!v.to_string().contains(&h.admin_token));
    let created = h
        .as_admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ops", "role": "admin"})),
        )
        .await
        .expect(StatusCode::CREATED);
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pvt_"));
    let v = h
        .call(Method::GET, "/api/v1/whoami", Some(&token), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(v["name"], "ops");
    h.as_admin(
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "ops", "role": "viewer"})),
    )
    .await
    .expect(StatusCode::CONFLICT);
    h.as_admin(
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "a b", "role": "viewer"})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "name");
    h.as_admin(
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "x", "role": "god"})),
    )
    .await
    .expect_field(StatusCode::BAD_REQUEST, "role");
    // The new token is used at once: its `last_used_at` is written.
    h.wait_for("/api/v1/tokens", |v| {
        v["tokens"][2]["last_used_at"].is_string()
    })
    .await;

    // Deleting: effective at once; the last admin token stays.
    let id = created["id"].as_i64().unwrap();
    h.as_admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.call(Method::GET, "/api/v1/whoami", Some(&token), None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    h.as_admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    h.as_admin(Method::DELETE, "/api/v1/tokens/x", None)
        .await
        .expect_field(StatusCode::BAD_REQUEST, "id");
    let root = h.get("/api/v1/tokens").await.expect(StatusCode::OK)["tokens"][0]["id"]
        .as_i64()
        .unwrap();
    h.as_admin(Method::DELETE, &format!("/api/v1/tokens/{root}"), None)
        .await
        .expect(StatusCode::CONFLICT);
}

#[tokio::test]
async fn bodies_are_bounded_and_json() {
    let h = harness().await;
    let big = json!({"password": "x".repeat(super::extract::BODY_LIMIT + 1)});
    h.as_admin(Method::PUT, "/api/v1/services/svc/users/alice", Some(big))
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);
    let r = h
        .send(
            Request::put("/api/v1/services/svc/users/alice")
                .header(header::AUTHORIZATION, format!("Bearer {}", h.admin_token))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(r#"{"password":"x"}"#))
                .unwrap(),
        )
        .await;
    r.expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = h
        .send(
            Request::put("/api/v1/services/svc/users/alice")
                .header(header::AUTHORIZATION, format!("Bearer {}", h.admin_token))
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(Body::from(r#"{"password":"#))
                .unwrap(),
        )
        .await;
    let v = r.expect(StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().starts_with("invalid JSON"),
        "{v}"
    );
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

#[tokio::test]
async fn ui_assets_and_unknown_routes() {
    let h = harness().await;
    let r = h.call(Method::GET, "/", None, None).await;
    r.expect(StatusCode::OK);
    assert!(r.text.contains("<html"));
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-cache");
    let etag = r.headers[header::ETAG].to_str().unwrap().to_string();
    let r = h
        .send(
            Request::get("/")
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.text.is_empty());
    let r = h.call(Method::GET, "/assets/index.html", None, None).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.headers[header::ETAG], etag.as_str());
    h.call(Method::GET, "/assets/nope.js", None, None)
        .await
        .expect(StatusCode::NOT_FOUND);
    h.call(Method::GET, "/assets/..%2FCargo.toml", None, None)
        .await
        .expect(StatusCode::NOT_FOUND);
    let r = h.call(Method::GET, "/nope", None, None).await;
    assert_eq!(
        r.expect(StatusCode::NOT_FOUND),
        json!({"error": "no such route"})
    );
    h.get("/api/v1/nope").await.expect(StatusCode::NOT_FOUND);
    h.call(Method::POST, "/healthz", None, None)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED);
    let r = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    let doc = r.expect(StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn health_readiness_metrics() {
    let h = harness().await;
    h.call(Method::GET, "/healthz", None, None)
        .await
        .expect(StatusCode::OK);
    let v = h
        .call(Method::GET, "/readyz", None, None)
        .await
        .expect(StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].as_str().unwrap().contains("svc"));
    h.decide().await;
    h.call(Method::GET, "/readyz", None, None)
        .await
        .expect(StatusCode::OK);
    let r = h.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text
            .contains("pivot_service_master_known{service=\"svc\"} 1"),
        "{}",
        r.text
    );
}

#[test]
fn a_proxy_is_behind_until_it_acks_the_change_of_its_services() {
    let mut fleet = FleetState {
        version: 12,
        ..FleetState::default()
    };
    let mut svc = crate::state::ServiceState {
        name: "svc".into(),
        sentinels: Vec::new(),
        topology: Topology {
            changed_version: 7,
            ..Topology::default()
        },
        policy: Policy::default(),
        backend_auth: None,
        users: Vec::new(),
        config_version: 10,
        decided: true,
    };
    fleet.services.insert("svc".into(), svc.clone());
    svc.name = "other".into();
    svc.config_version = 12;
    fleet.services.insert("other".into(), svc);
    let mut p = ProxyInfo {
        services: vec!["svc".into()],
        streams: 1,
        acked_version: Some(9),
        ..ProxyInfo::new("p", std::time::SystemTime::now())
    };
    let view = |p: &ProxyInfo| super::model::ProxyView::new(p, &fleet);
    assert!(view(&p).behind);
    p.acked_version = Some(10);
    assert!(
        !view(&p).behind,
        "a change of another service does not count"
    );
    p.acked_version = None;
    assert!(view(&p).behind);
    p.services.push("gone".into());
    p.acked_version = Some(10);
    assert!(!view(&p).behind, "unknown services are ignored");
}

// ---------------------------------------------------------------------------------------
// Event stream.

/// Reads SSE messages from a response body.
struct SseReader {
    body: axum::body::BodyDataStream,
    buf: String,
}

impl SseReader {
    async fn open(h: &Harness) -> SseReader {
        let resp = h
            .router()
            .oneshot(
                Request::get("/api/v1/events/stream")
                    .header(header::AUTHORIZATION, format!("Bearer {}", h.viewer_token))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        SseReader {
            body: resp.into_body().into_data_stream(),
            buf: String::new(),
        }
    }

    /// The next message (name, data); `None` when the stream ended or `timeout` passed.
    async fn next(&mut self, timeout: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in raw.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk: Option<Result<Bytes, axum::Error>> =
                tokio::time::timeout_at(deadline, self.body.next())
                    .await
                    .ok()?;
            self.buf
                .push_str(std::str::from_utf8(&chunk?.unwrap()).unwrap());
        }
    }

    /// The next message named `name`, skipping others.
    async fn next_named(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (n, v) = self.next(left).await?;
            if n == name {
                return Some(v);
            }
        }
    }
}

#[tokio::test]
async fn stream_sends_topology_events_and_audit() {
    let h = harness().await;
    h.decide().await;
    let mut s = SseReader::open(&h).await;
    let (name, v) = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(name, "topology");
    assert_eq!(v["service"], "svc");
    assert_eq!(v["topology"]["master"], "127.0.0.1:7000");
    h.as_admin(
        Method::PATCH,
        "/api/v1/services/svc/policy",
        Some(json!({"read_policy": "all"})),
    )
    .await
    .expect(StatusCode::OK);
    // The audit row is written inline, the event by the store's writer: either may come
    // first, and the `initial` event of `decide` may still be on its way.
    let (mut event, mut audit) = (None, None);
    while event.is_none() || audit.is_none() {
        let (name, v) = s.next(Duration::from_secs(5)).await.unwrap();
        match name.as_str() {
            "event" if v["kind"] == "config-changed" => event = Some(v),
            "audit" => audit = Some(v),
            _ => {}
        }
    }
    let (event, audit) = (event.unwrap(), audit.unwrap());
    assert_eq!(event["service"], "svc");
    assert_eq!(audit["action"], "policy.set");
    assert_eq!(audit["actor"], "token:root");
    assert_eq!(audit["after"]["read_policy"], "all");

    // A new master: a topology message with it.
    let mut t = h.app.state.current().services["svc"].topology.clone();
    t.master = Some(NodeAddr::new("127.0.0.1", 7001));
    t.replicas.clear();
    t.config_epoch = 1;
    h.app.state.apply("svc", t).await.unwrap();
    let v = s
        .next_named("topology", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(v["topology"]["master"], "127.0.0.1:7001");
    assert_eq!(v["version"], h.app.state.current().version);

    // Shutdown ends the stream.
    h.app.shutdown.cancel();
    assert!(s.next(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn stream_coalesces_topology_per_service() {
    let h = harness().await;
    h.decide().await;
    let mut s = SseReader::open(&h).await;
    s.next_named("topology", Duration::from_secs(5))
        .await
        .unwrap();
    // 30 lag updates 10 ms apart (300 ms): without coalescing, 30 messages.
    let start = tokio::time::Instant::now();
    for lag in 1..=30u64 {
        let mut t = h.app.state.current().services["svc"].topology.clone();
        t.replicas[0].lag_bytes = Some(lag);
        h.app.state.apply("svc", t).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = Vec::new();
    while let Some(v) = s.next_named("topology", Duration::from_millis(600)).await {
        seen.push((
            tokio::time::Instant::now(),
            v["topology"]["replicas"][0]["lag_bytes"].as_u64().unwrap(),
        ));
        if seen.last().is_some_and(|(_, lag)| *lag == 30) {
            break;
        }
    }
    assert_eq!(seen.last().map(|(_, lag)| *lag), Some(30), "{seen:?}");
    let elapsed = start.elapsed();
    let allowed = (elapsed.as_millis() / sse::COALESCE.as_millis()) as usize + 1;
    assert!(
        seen.len() <= allowed,
        "{} messages in {elapsed:?}: {seen:?}",
        seen.len()
    );
    assert!(seen.len() < 10, "{seen:?}");
}

#[tokio::test]
async fn stream_resyncs_a_client_that_fell_behind() {
    let h = harness().await;
    let mut s = SseReader::open(&h).await;
    s.next_named("topology", Duration::from_secs(5))
        .await
        .unwrap();
    // More rows than the live broadcast keeps, while the client reads nothing.
    let actor = Actor::new("test");
    for i in 0..1100 {
        h.app
            .admin
            .record(
                &actor,
                "test",
                None,
                &format!("t{i}"),
                Value::Null,
                Value::Null,
            )
            .await
            .unwrap();
    }
    let first = s.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.0, "resync", "{first:?}");
}

#[tokio::test]
async fn streams_are_capped() {
    let h = harness().await;
    let mut open = Vec::new();
    for _ in 0..sse::MAX_STREAMS {
        open.push(SseReader::open(&h).await);
    }
    let r = h
        .as_viewer(Method::GET, "/api/v1/events/stream", None)
        .await;
    r.expect(StatusCode::SERVICE_UNAVAILABLE);
    open.pop();
    // Dropping a stream frees its slot.
    let _again = SseReader::open(&h).await;
}

// ---------------------------------------------------------------------------------------
// Secrets.

#[tokio::test]
async fn secrets_are_never_returned() {
    // (That they are not logged either is `tests/secrets.rs`: it needs a process-wide
    // subscriber.)
    let h = harness().await;
    let backend = "BACKEND-secret-4711";
    let user_pw = "USER-secret-0815";
    h.as_admin(
        Method::POST,
        "/api/v1/services",
        Some(json!({"name": "s2", "sentinels": ["127.0.0.1:9"],
                    "backend_auth": {"username": "u", "password": backend}})),
    )
    .await
    .expect(StatusCode::CREATED);
    h.as_admin(
        Method::PATCH,
        "/api/v1/services/svc",
        Some(json!({"backend_auth": {"password": backend}})),
    )
    .await
    .expect(StatusCode::OK);
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/users/app",
        Some(json!({"password": user_pw})),
    )
    .await
    .expect(StatusCode::CREATED);
    h.as_admin(
        Method::PUT,
        "/api/v1/services/svc/users/app",
        Some(json!({"password": "x"})),
    )
    .await
    .expect(StatusCode::OK);
    let created = h
        .as_admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "t", "role": "viewer"})),
        )
        .await
        .expect(StatusCode::CREATED);
    let token = created["token"].as_str().unwrap().to_string();
    // Errors that echo input must not echo a secret either.
    h.as_admin(
        Method::PATCH,
        "/api/v1/services/svc",
        Some(json!({"backend_auth": {"password": backend, "user": "x"}})),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);

    let mut seen = String::new();
    for uri in [
        "/api/v1/services",
        "/api/v1/services/svc",
        "/api/v1/services/s2",
        "/api/v1/services/svc/users",
        "/api/v1/audit?limit=1000",
        "/api/v1/events?limit=1000",
        "/api/v1/tokens",
        "/api/v1/topology",
    ] {
        seen.push_str(&h.get(uri).await.expect(StatusCode::OK).to_string());
    }
    let mut stream = SseReader::open(&h).await;
    while let Some((_, v)) = stream.next(Duration::from_millis(300)).await {
        seen.push_str(&v.to_string());
    }
    for secret in [
        backend,
        user_pw,
        token.as_str(),
        h.admin_token.as_str(),
        h.viewer_token.as_str(),
    ] {
        assert!(!seen.contains(secret), "{secret} in a response: {seen}");
    }
    assert!(
        seen.contains("<redacted>"),
        "the audit log shows a redacted password: {seen}"
    );
}
