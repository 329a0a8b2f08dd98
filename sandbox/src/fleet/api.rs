//! The REST calls the benchmarks make (docs/api.md): a command rule or read policy change,
//! and the control plane's view of its proxies.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

/// A client of the control plane's `/api/v1` with a bearer token.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// `GET /api/v1/proxies`, the fields the bench reads.
#[derive(Debug, Deserialize)]
pub struct Proxies {
    /// The control plane's current config version.
    pub version: u64,
    /// Every proxy it has seen.
    pub proxies: Vec<Proxy>,
}

/// One proxy in [`Proxies`].
#[derive(Debug, Deserialize)]
pub struct Proxy {
    /// Its id.
    pub proxy_id: String,
    /// It has an open stream.
    pub connected: bool,
    /// The last version it ACKed.
    pub acked_version: Option<u64>,
}

/// `{rule, version}` or `{policy, version}`: the config version that carries a change.
#[derive(Debug, Deserialize)]
struct Changed {
    version: u64,
}

impl Api {
    /// A client for the control plane at `base` (`http://host:port`).
    pub fn new(base: String, token: String) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("HTTP client")?;
        Ok(Api { http, base, token })
    }

    /// `PUT /api/v1/services/{service}/rules/{command}` with `{target}`; returns the
    /// config version that carries the change.
    pub async fn put_rule(&self, service: &str, command: &str, target: &str) -> Result<u64> {
        let url = format!("{}/api/v1/services/{service}/rules/{command}", self.base);
        self.change(self.http.put(&url), &url, json!({ "target": target }))
            .await
    }

    /// `PATCH /api/v1/services/{service}/policy` with `{read_policy}` (`master-only`,
    /// `replicas` or `all`); returns the config version that carries the change.
    pub async fn set_read_policy(&self, service: &str, read_policy: &str) -> Result<u64> {
        let url = format!("{}/api/v1/services/{service}/policy", self.base);
        self.change(
            self.http.patch(&url),
            &url,
            json!({ "read_policy": read_policy }),
        )
        .await
    }

    /// Sends a change and returns the version its response names.
    async fn change(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        body: serde_json::Value,
    ) -> Result<u64> {
        let response = request
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{url}: sending {body}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{url}: reading the response"))?;
        if !status.is_success() {
            bail!("{url} ({body}): {status}: {text}");
        }
        let changed: Changed = serde_json::from_str(&text)
            .with_context(|| format!("{url}: unexpected response {text}"))?;
        Ok(changed.version)
    }

    /// `GET /api/v1/proxies`.
    pub async fn proxies(&self) -> Result<Proxies> {
        let url = format!("{}/api/v1/proxies", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("GET {url}: {status}: {body}");
        }
        response
            .json()
            .await
            .with_context(|| format!("GET {url}: decoding the response"))
    }

    /// How many proxies whose id starts with `prefix` are connected and have ACKed
    /// `version` or a later one, according to the control plane.
    pub async fn acked(&self, prefix: &str, version: u64) -> Result<usize> {
        Ok(self
            .proxies()
            .await?
            .proxies
            .iter()
            .filter(|p| {
                p.proxy_id.starts_with(prefix)
                    && p.connected
                    && p.acked_version.is_some_and(|v| v >= version)
            })
            .count())
    }
}
