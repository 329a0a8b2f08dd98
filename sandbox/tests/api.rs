//! The admin REST API against the whole local stack: what the router tests in
//! `control-plane/src/http/tests.rs` cannot show without real Redis, Sentinels and a
//! proxy. A rule and a policy set over HTTP reach the proxy (a real client sees them, the
//! proxy's ACK shows in `/api/v1/proxies`), the live stream carries the change, a planned
//! failover started over HTTP moves the master (topology, events, stream), and a service a
//! connected proxy serves cannot be deleted without `force`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{connect, wait_until};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// The REST API with a token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text}"))?
        };
        Ok((status, v))
    }

    /// Calls and checks the status.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Result<Value> {
        let (got, v) = self.call(method.clone(), path, body).await?;
        ensure!(
            got == status,
            "{method} {path}: {got} (expected {status}): {v}"
        );
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.expect(Method::GET, path, None, StatusCode::OK).await
    }

    /// Opens the live stream.
    async fn stream(&self) -> Result<Stream> {
        let resp = self
            .http
            .get(format!("{}/api/v1/events/stream", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        ensure!(resp.status() == StatusCode::OK, "stream: {}", resp.status());
        Ok(Stream {
            resp,
            buf: String::new(),
        })
    }
}

/// Server-Sent Events from `/api/v1/events/stream`.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

/// A predicate on a stream message `(name, data)`.
type Want<'a> = &'a dyn Fn(&str, &Value) -> bool;

impl Stream {
    /// The next message `(name, data)` for which `want` holds, within `timeout`.
    async fn next(&mut self, timeout: Duration, want: Want<'_>) -> Result<(String, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let name = raw.lines().find_map(|l| l.strip_prefix("event: "));
                let data: String = raw
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if let Some(name) = name {
                    let v: Value = serde_json::from_str(&data)?;
                    if want(name, &v) {
                        return Ok((name.to_string(), v));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => bail!("no matching message within {timeout:?}"),
                Ok(chunk) => match chunk? {
                    Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes)?),
                    None => bail!("the stream ended"),
                },
            }
        }
    }

    /// The next message for which `want` holds.
    async fn until(
        &mut self,
        timeout: Duration,
        want: impl Fn(&str, &Value) -> bool,
    ) -> Result<Value> {
        Ok(self.next(timeout, &want).await?.1)
    }

    /// One message for each of `wants`, in whatever order they come, within `timeout`.
    async fn all(&mut self, timeout: Duration, wants: &[Want<'_>]) -> Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut found: Vec<Option<Value>> = vec![None; wants.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let missing: Vec<usize> = (0..wants.len()).filter(|i| found[*i].is_none()).collect();
            let (name, v) = self
                .next(left, &|name, v| missing.iter().any(|i| wants[*i](name, v)))
                .await
                .with_context(|| format!("waiting for messages {missing:?}"))?;
            if let Some(i) = missing.iter().find(|i| wants[**i](&name, &v)) {
                found[*i] = Some(v);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_drives_the_fleet() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let svc = stack.topology.master_name().to_string();
    let master = stack.topology.node(0).addr().to_string();
    let api = Api {
        base: stack.http_url()?,
        token: stack.admin_token().to_string(),
        http: reqwest::Client::new(),
    };

    // The topology the Sentinels report.
    let topo = api.get(&format!("/api/v1/services/{svc}/topology")).await?;
    assert_eq!(topo["decided"], true, "{topo}");
    assert_eq!(topo["master"], master.as_str(), "{topo}");
    assert!(
        !topo["replicas"].as_array().context("replicas")?.is_empty(),
        "{topo}"
    );
    assert!(
        topo["sentinels"]
            .as_array()
            .context("sentinels")?
            .iter()
            .all(|s| s["reachable"] == true),
        "{topo}"
    );

    // A viewer token reads, and cannot change.
    let viewer = api
        .expect(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "watcher", "role": "viewer"})),
            StatusCode::CREATED,
        )
        .await?;
    let viewer = Api {
        base: api.base.clone(),
        token: viewer["token"].as_str().context("token")?.to_string(),
        http: reqwest::Client::new(),
    };
    viewer.get("/api/v1/services").await?;
    viewer
        .expect(
            Method::PUT,
            &format!("/api/v1/services/{svc}/rules/keys"),
            Some(json!({"target": "deny"})),
            StatusCode::FORBIDDEN,
        )
        .await?;

    let mut stream = viewer.stream().await?;
    stream
        .until(T, |name, v| {
            name == "topology" && v["service"] == svc.as_str()
        })
        .await?;

    // A rule over HTTP: the proxy applies it, ACKs it, and a client sees it.
    let mut client = connect(&stack.proxies[0].client(), T).await?;
    let _: Vec<String> = client.keys("*").await?;
    let started = Instant::now();
    let rule = api
        .expect(
            Method::PUT,
            &format!("/api/v1/services/{svc}/rules/keys"),
            Some(json!({"target": "deny"})),
            StatusCode::CREATED,
        )
        .await?;
    let version = rule["version"].as_u64().context("version")?;
    stack.proxies[0]
        .wait_for_version_above(version - 1, T)
        .await?;
    eprintln!(
        "rule applied by the proxy {:?} after the PUT",
        started.elapsed()
    );
    let denied: redis::RedisResult<Vec<String>> = client.keys("*").await;
    let err = denied.err().context("KEYS should be denied")?;
    assert!(err.to_string().contains("denied"), "{err}");
    wait_until("the proxy's ACK in /api/v1/proxies", T, || async {
        let v = api.get("/api/v1/proxies").await.ok()?;
        let p = &v["proxies"][0];
        (p["connected"] == true && p["acked_version"].as_u64()? >= version && p["behind"] == false)
            .then_some(())
    })
    .await?;
    // The audit row is written inline, the event by the store's writer, the proxy's ACK
    // comes from the proxy: any order.
    let got = stream
        .all(
            T,
            &[
                &|name, v| name == "event" && v["kind"] == "config-changed",
                &|name, _| name == "audit",
                &|name, v| name == "proxy" && v["acked_version"].as_u64() >= Some(version),
            ],
        )
        .await?;
    assert_eq!(got[0]["service"], svc.as_str());
    assert_eq!(got[1]["action"], "rule.put");
    assert_eq!(got[1]["actor"], "token:bootstrap");

    // A policy over HTTP.
    let changed = api
        .expect(
            Method::PATCH,
            &format!("/api/v1/services/{svc}/policy"),
            Some(json!({"read_policy": "master-only"})),
            StatusCode::OK,
        )
        .await?;
    let version = changed["version"].as_u64().context("version")?;
    stack.proxies[0]
        .wait_for_version_above(version - 1, T)
        .await?;
    assert_eq!(
        api.get(&format!("/api/v1/services/{svc}")).await?["policy"]["read_policy"],
        "master-only"
    );

    // A planned failover over HTTP.
    let _: () = client.set("before-failover", "1").await?;
    let report = api
        .expect(
            Method::POST,
            &format!("/api/v1/services/{svc}/failover"),
            None,
            StatusCode::OK,
        )
        .await?;
    eprintln!("failover over HTTP: {report}");
    assert_eq!(report["old_master"], master.as_str());
    let new_master = report["new_master"]
        .as_str()
        .context("new_master")?
        .to_string();
    assert_ne!(new_master, master);
    let topo = api.get(&format!("/api/v1/services/{svc}/topology")).await?;
    assert_eq!(topo["master"], new_master.as_str(), "{topo}");
    stream
        .all(
            T,
            &[
                &|name, v| name == "topology" && v["topology"]["master"] == new_master.as_str(),
                &|name, v| name == "event" && v["kind"] == "failover-finished",
            ],
        )
        .await?;
    let events = api
        .get(&format!(
            "/api/v1/events?service={svc}&kind=failover-started,failover-finished"
        ))
        .await?;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["failover-finished", "failover-started"], "{events}");
    // Writes go on, to the new master.
    wait_until("a write through the proxy after the failover", T, || {
        let mut client = client.clone();
        async move { client.set::<_, _, ()>("after-failover", "1").await.ok() }
    })
    .await?;
    let v: Option<String> = client.get("before-failover").await?;
    assert_eq!(v.as_deref(), Some("1"));

    // The proxy serves the service: no deletion without force.
    let conflict = api
        .expect(
            Method::DELETE,
            &format!("/api/v1/services/{svc}"),
            None,
            StatusCode::CONFLICT,
        )
        .await?;
    assert!(
        conflict["error"]
            .as_str()
            .unwrap_or_default()
            .contains("force"),
        "{conflict}"
    );
    api.expect(
        Method::DELETE,
        &format!("/api/v1/services/{svc}?force=true"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await?;
    api.expect(
        Method::GET,
        &format!("/api/v1/services/{svc}"),
        None,
        StatusCode::NOT_FOUND,
    )
    .await?;
    stack.shutdown().await
}
