//! Proxy credentials: the control plane's `--proxy-token`s and mutual TLS on its gRPC
//! listener, with certificates made here (rcgen). A proxy with a client certificate from
//! the CA and a right token subscribes; one without a certificate, with a certificate from
//! another CA, trusting another CA, or with a wrong or no token is refused. A proxy
//! refused after a token rotation keeps serving its last table and subscribes again once
//! its token is accepted.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{connect, wait_until};
use pivot_control_plane::grpc::ProxyRegistry;
use pivot_proxy::metrics::ControlPlaneFailure;
use pivot_sandbox::stack::{
    ControlPlaneHandle, ProxyHandle, spawn_control_plane, start_proxy_with,
};
use pivot_sandbox::{Stack, StackOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "proxy-token-one-0123456789";
const OTHER_TOKEN: &str = "proxy-token-two-0123456789";
/// The name in the control plane's certificate (not the endpoint's host: the proxies
/// use `--control-plane-tls-server-name`).
const SERVER_NAME: &str = "pivot-cp.test";

/// A CA that signs certificates, written as PEM files in `dir`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem())?;
        Ok(Ca {
            issuer,
            dir: dir.to_path_buf(),
        })
    }

    fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// A certificate for `name` (server: with `name` as its DNS name), as `name.pem` and
    /// `name.key`.
    fn issue(&self, name: &str, server: bool) -> Result<()> {
        let sans = if server {
            vec![name.to_string()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        std::fs::write(self.cert_path(name), cert.pem())?;
        std::fs::write(self.key_path(name), key.serialize_pem())?;
        Ok(())
    }
}

/// A proxy of `service` against `grpc` over TLS, trusting `ca`, with an optional client
/// certificate (`cert`, from `dir`) and token.
async fn tls_proxy(
    service: &str,
    id: &str,
    grpc: SocketAddr,
    ca: &Path,
    client: Option<(&Ca, &str)>,
    token: Option<&str>,
) -> Result<ProxyHandle> {
    let mut config = pivot_proxy::Config::for_service(service, &format!("https://{grpc}"));
    config.proxy_id = Some(id.into());
    config.control_plane_tls_ca = Some(ca.to_path_buf());
    config.control_plane_tls_server_name = Some(SERVER_NAME.into());
    if let Some((issuer, name)) = client {
        config.control_plane_tls_cert = Some(issuer.cert_path(name));
        config.control_plane_tls_key = Some(issuer.key_path(name));
    }
    config.control_plane_token = token
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    start_proxy_with(config).await
}

/// Waits until `proxy` has failed to subscribe at least `n` times with `kind`, then checks
/// that the control plane never registered it.
async fn refused(
    proxy: &ProxyHandle,
    kinds: &[ControlPlaneFailure],
    n: u64,
    registry: &ProxyRegistry,
) -> Result<()> {
    let id = proxy.shared.proxy_id.clone();
    wait_until(&format!("{id} to be refused {n} times"), T, || {
        let failed: u64 = kinds
            .iter()
            .map(|k| proxy.shared.metrics.control_plane_failures(*k))
            .sum();
        async move { (failed >= n).then_some(()) }
    })
    .await?;
    ensure!(
        registry.get(&id).is_none(),
        "{id} got a stream: {:?}",
        registry.get(&id)
    );
    ensure!(proxy.shared.table.load().version == 0, "{id} got a config");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_tokens_decide_who_subscribes() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let service = stack.topology.master_name().to_string();
    let pki = tempfile::tempdir()?;
    let ca = Ca::new(pki.path(), "pivot-ca")?;
    ca.issue(SERVER_NAME, true)?;
    ca.issue("proxy-1", false)?;
    let stranger = Ca::new(pki.path(), "other-ca")?;
    stranger.issue("proxy-x", false)?;
    stranger.issue("cp-x", true)?;

    // A control plane that requires both a client certificate from the CA and a token.
    let data = tempfile::tempdir()?;
    let mut config = stack.control_plane_config()?;
    config.data_dir = data.path().to_path_buf();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http_listen = any;
    config.grpc_listen = any;
    config.grpc_tls_cert = Some(ca.cert_path(SERVER_NAME));
    config.grpc_tls_key = Some(ca.key_path(SERVER_NAME));
    config.grpc_tls_client_ca = Some(ca.cert_path("pivot-ca"));
    config.proxy_tokens = vec![
        TOKEN.parse().map_err(anyhow::Error::msg)?,
        OTHER_TOKEN.parse().map_err(anyhow::Error::msg)?,
    ];
    let cp = spawn_control_plane(config).await?;
    let registry = cp.registry.clone();
    let ca_pem = ca.cert_path("pivot-ca");

    // Client certificate from the CA, and the second of the two tokens: subscribes.
    let good = tls_proxy(
        &service,
        "good",
        cp.grpc_addr,
        &ca_pem,
        Some((&ca, "proxy-1")),
        Some(OTHER_TOKEN),
    )
    .await?;
    good.wait_ready(T).await?;
    wait_until("the good proxy's stream", T, || {
        let ok = registry
            .get("good")
            .filter(|p| p.streams == 1 && p.acked_version.is_some());
        async move { ok }
    })
    .await?;
    let mut c = connect(&good.client(), T).await?;
    let () = c.set("tls:k", "v").await?;

    use ControlPlaneFailure::{Connect, Stream, Subscribe, Unauthenticated};
    // No client certificate: the handshake (or, with TLS 1.3, the first read) fails.
    let no_cert = tls_proxy(
        &service,
        "no-cert",
        cp.grpc_addr,
        &ca_pem,
        None,
        Some(TOKEN),
    )
    .await?;
    // A client certificate from another CA.
    let other_ca = tls_proxy(
        &service,
        "other-ca",
        cp.grpc_addr,
        &ca_pem,
        Some((&stranger, "proxy-x")),
        Some(TOKEN),
    )
    .await?;
    // Trusting another CA than the control plane's.
    let wrong_trust = tls_proxy(
        &service,
        "wrong-trust",
        cp.grpc_addr,
        &stranger.cert_path("other-ca"),
        Some((&ca, "proxy-1")),
        Some(TOKEN),
    )
    .await?;
    // Right certificate, wrong or no token: UNAUTHENTICATED.
    let wrong_token = tls_proxy(
        &service,
        "wrong-token",
        cp.grpc_addr,
        &ca_pem,
        Some((&ca, "proxy-1")),
        Some("not-the-token-0123456789"),
    )
    .await?;
    let no_token = tls_proxy(
        &service,
        "no-token",
        cp.grpc_addr,
        &ca_pem,
        Some((&ca, "proxy-1")),
        None,
    )
    .await?;

    refused(&no_cert, &[Connect, Subscribe, Stream], 2, &registry).await?;
    refused(&other_ca, &[Connect, Subscribe, Stream], 2, &registry).await?;
    refused(&wrong_trust, &[Connect], 2, &registry).await?;
    refused(&wrong_token, &[Unauthenticated], 2, &registry).await?;
    refused(&no_token, &[Unauthenticated], 2, &registry).await?;
    for p in [&no_cert, &other_ca, &wrong_trust] {
        ensure!(
            p.shared.metrics.control_plane_failures(Unauthenticated) == 0,
            "{}: a TLS refusal is not a token refusal",
            p.shared.proxy_id
        );
    }
    // The control plane counts the token refusals.
    let metrics = reqwest::get(format!("http://{}/metrics", cp.http_addr))
        .await?
        .text()
        .await?;
    let refusals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pivot_proxy_token_refusals_total "))
        .and_then(|n| n.trim().parse().ok())
        .context("pivot_proxy_token_refusals_total in /metrics")?;
    ensure!(refusals >= 4, "{refusals} token refusals counted");
    ensure!(
        !metrics.contains(TOKEN) && !metrics.contains("not-the-token"),
        "no token in /metrics"
    );
    // The good proxy served throughout.
    let v: String = c.get("tls:k").await?;
    assert_eq!(v, "v");

    for p in [good, no_cert, other_ca, wrong_trust, wrong_token, no_token] {
        p.stop().await?;
    }
    cp.stop().await?;
    stack.shutdown().await
}

/// Starts a control plane on `grpc` (port 0 the first time) with `tokens`, storing in `dir`.
async fn token_control_plane(
    stack: &Stack,
    dir: &Path,
    grpc: SocketAddr,
    tokens: &[&str],
) -> Result<ControlPlaneHandle> {
    let mut config = stack.control_plane_config()?;
    config.data_dir = dir.to_path_buf();
    config.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.grpc_listen = grpc;
    config.proxy_tokens = tokens
        .iter()
        .map(|t| t.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    spawn_control_plane(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_proxy_keeps_serving_and_comes_back_with_an_accepted_token() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let service = stack.topology.master_name().to_string();
    let data = tempfile::tempdir()?;
    let cp = token_control_plane(
        &stack,
        data.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &[TOKEN],
    )
    .await?;
    let grpc = cp.grpc_addr;
    let mut config = pivot_proxy::Config::for_service(&service, &format!("http://{grpc}"));
    config.proxy_id = Some("rotated".into());
    config.control_plane_token = Some(TOKEN.parse().map_err(anyhow::Error::msg)?);
    let proxy = start_proxy_with(config).await?;
    proxy.wait_ready(T).await?;
    let running = proxy.shared.base.load_full();
    let mut c = connect(&proxy.client(), T).await?;
    let () = c.set("rot:k", 1).await?;

    // The control plane comes back accepting only another token: this proxy is refused.
    cp.stop().await?;
    let cp = token_control_plane(&stack, data.path(), grpc, &[OTHER_TOKEN]).await?;
    let before = proxy
        .shared
        .metrics
        .control_plane_failures(ControlPlaneFailure::Unauthenticated);
    wait_until("the proxy to be refused twice", T, || {
        let n = proxy
            .shared
            .metrics
            .control_plane_failures(ControlPlaneFailure::Unauthenticated);
        async move { (n >= before + 2).then_some(()) }
    })
    .await?;
    // It serves on with its last table.
    for i in 0..50 {
        let () = c.set("rot:k", i).await?;
        let v: i64 = c.get("rot:k").await?;
        assert_eq!(v, i);
    }
    let now = proxy.shared.base.load_full();
    assert_eq!(now.config_version, running.config_version);
    assert_eq!(now.master, running.master);
    ensure!(cp.registry.get("rotated").is_none());

    // Both tokens accepted (a rotation in progress): it subscribes again by itself.
    cp.stop().await?;
    let cp = token_control_plane(&stack, data.path(), grpc, &[OTHER_TOKEN, TOKEN]).await?;
    wait_until("the proxy back on the control plane", T, || {
        let ok = cp
            .registry
            .get("rotated")
            .filter(|p| p.streams == 1 && p.acked_version.is_some());
        async move { ok }
    })
    .await?;
    let () = c.set("rot:k", "done").await?;

    proxy.stop().await?;
    cp.stop().await?;
    stack.shutdown().await
}
