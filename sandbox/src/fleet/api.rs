//! The two REST calls the bench makes (docs/api.md): a command rule change, and the
//! control plane's view of its proxies.

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

#[derive(Debug, Deserialize)]
struct RuleChanged {
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
        let response = self
            .http
            .put(&url)
            .bearer_auth(&self.token)
            .json(&json!({ "target": target }))
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("PUT {url}: reading the response"))?;
        if !status.is_success() {
            bail!("PUT {url}: {status}: {body}");
        }
        let changed: RuleChanged = serde_json::from_str(&body)
            .with_context(|| format!("PUT {url}: unexpected response {body}"))?;
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
