//! The web admin UI end to end, in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, started here on an ephemeral loopback port) against the whole local
//! stack (1 master, 2 replicas, 3 Sentinels, the control plane, one proxy).
//!
//! Through the UI's forms it logs in, changes the service's read policy to `master-only`
//! and adds the rule `flushall → deny`; a real Redis client connected to the proxy then
//! sees both applied (GETs stop reaching the replicas, `FLUSHALL` gets the proxy's deny
//! error) and `GET /api/v1/proxies` shows the proxy's ACKed config version go up. It fails
//! the service over with the button and its confirmation dialog, and waits for the
//! timeline to name the new master the API reports. A rule added through the API appears on
//! the open page (live updates). It creates a viewer token on the tokens page, checks that
//! a viewer gets no change controls, and that deleting that token sends the browser back to
//! the login page with a message.
//!
//! A screenshot of every page is saved under `target/ui-screenshots/` at the workspace
//! root (1280 px wide, plus pages at phone width, 390 px).
//!
//! Without `chromedriver` the test is skipped with a message, unless
//! `PIVOT_REQUIRE_CLIENT_TESTS` is set (CI sets it after installing Debian's `chromium` and
//! `chromium-driver`): then it fails.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{connect, wait_until};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use pivot_sandbox::{Stack, StackOptions};
use serde_json::{Value, json};

/// The stack's first admin token (what `PIVOT_ADMIN_TOKEN` would set).
const ADMIN_TOKEN: &str = "pvt_ui-test-admin-token-not-a-secret-2f1c9a7e";
/// Longest wait for anything the page shows after an action.
const UI_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for a planned failover to report.
const FAILOVER_WAIT: Duration = Duration::from_secs(40);
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

fn required() -> bool {
    std::env::var_os("PIVOT_REQUIRE_CLIENT_TESTS").is_some()
}

/// `chromedriver` on PATH (Debian: /usr/bin/chromedriver from `chromium-driver`).
fn find_chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromedriver"))
        .find(|p| p.is_file())
}

/// The Chromium binary chromedriver should start, when it is in a known place.
fn find_chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `target/ui-screenshots` next to the workspace's Cargo.toml (whatever CARGO_TARGET_DIR).
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
}

/// A free loopback port (bound, read, released: chromedriver takes it right after).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

/// A running chromedriver. It runs in its own process group, which the Chromium it starts
/// joins; dropping the guard kills that group (chromedriver's PID is the group id) and
/// reaps chromedriver, whether the test passed or not.
struct Chromedriver {
    child: Child,
    url: String,
    log: PathBuf,
    /// Chromedriver's log and Chromium's profile; removed after the processes died.
    dir: tempfile::TempDir,
}

impl Chromedriver {
    async fn start(binary: &Path) -> Result<Chromedriver> {
        let dir = tempfile::tempdir().context("temporary dir for the browser")?;
        let log = dir.path().join("chromedriver.log");
        let port = free_port()?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(binary)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?
        };
        let driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            dir,
        };
        let status = format!("{}/status", driver.url);
        wait_until("chromedriver to answer /status", UI_WAIT, || {
            let status = status.clone();
            async move {
                let v: Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await?;
        Ok(driver)
    }

    /// The last lines of chromedriver's log, for a failure message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // The group is chromedriver and the browser it started.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin REST API, with a bearer token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Waits until `GET /proxies` shows the proxy `id` with `flag` true.
    async fn wait_proxy(&self, id: &str, flag: &str) -> Result<()> {
        wait_until(&format!("proxy {id} to be {flag}"), UI_WAIT, || async {
            let doc = self.get("/proxies").await.ok()?;
            doc["proxies"]
                .as_array()?
                .iter()
                .any(|p| p["proxy_id"] == id && p[flag] == true)
                .then_some(())
        })
        .await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.with_context(|| format!("GET {url}"))?;
        ensure!(status.is_success(), "GET {url}: {status}: {body}");
        Ok(body)
    }

    /// A change: `method path` with a JSON `body` (none when null); fails unless 2xx.
    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Result<()> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        ensure!(
            status.is_success(),
            "{method} {url}: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// The ACKed config version of the proxy listening on `addr`.
    async fn acked_version(&self, addr: SocketAddr) -> Result<u64> {
        let v = self.get("/proxies").await?;
        let proxies = v["proxies"].as_array().context("proxies list")?;
        let p = proxies
            .iter()
            .find(|p| p["listen_addr"].as_str() == Some(addr.to_string().as_str()))
            .with_context(|| format!("no proxy listening on {addr} in {v}"))?;
        p["acked_version"]
            .as_u64()
            .with_context(|| format!("proxy on {addr} has no ACKed version: {p}"))
    }

    /// Waits until the proxy on `addr` has ACKed a version above `after`; returns it.
    async fn wait_acked_above(&self, addr: SocketAddr, after: u64) -> Result<u64> {
        wait_until(
            &format!("the proxy to ACK a version above {after}"),
            UI_WAIT,
            || async move { self.acked_version(addr).await.ok().filter(|v| *v > after) },
        )
        .await
    }

    async fn master(&self, service: &str) -> Result<Option<String>> {
        let t = self.get(&format!("/services/{service}/topology")).await?;
        Ok(t["master"].as_str().map(str::to_string))
    }
}

/// The browser, on the UI.
struct Ui {
    client: Client,
    base: String,
    shots: PathBuf,
    /// axe-core's source, when installed (`npm ci` in sandbox/tests/clients).
    axe: Option<String>,
}

/// axe-core (npm, pinned in sandbox/tests/clients/package-lock.json): the accessibility
/// rules every page is checked against.
fn axe_source() -> Result<Option<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(src) => Ok(Some(src)),
        Err(e) if required() => Err(anyhow::anyhow!(
            "{}: {e} (run `npm ci` in sandbox/tests/clients)",
            path.display()
        )),
        Err(_) => {
            eprintln!(
                "axe-core not installed: skipping the accessibility checks (npm ci in sandbox/tests/clients)"
            );
            Ok(None)
        }
    }
}

impl Ui {
    async fn open(&self, route: &str) -> Result<()> {
        self.client
            .goto(&format!("{}/{route}", self.base))
            .await
            .with_context(|| format!("opening {route}"))
    }

    /// The first element matching `css`, waiting for it to appear.
    async fn wait_css(&self, css: &str) -> Result<Element> {
        self.wait_css_for(css, UI_WAIT).await
    }

    async fn wait_css_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        match self
            .client
            .wait()
            .at_most(timeout)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => Ok(e),
            Err(e) => bail!(
                "`{css}` did not appear within {timeout:?} ({e}); the page shows:\n{}",
                self.page_text().await
            ),
        }
    }

    /// Runs `script` (a function body) every 50 ms until it returns a non-null,
    /// non-false value; returns that value.
    async fn wait_js(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.client.execute(script, vec![]).await?;
            if !v.is_null() && v != Value::Bool(false) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; the page shows:\n{}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text (for failure messages).
    async fn page_text(&self) -> String {
        match self
            .client
            .execute("return document.body.innerText.slice(0, 3000);", vec![])
            .await
        {
            Ok(Value::String(s)) => s,
            other => format!("<no page text: {other:?}>"),
        }
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.wait_css(css)
            .await?
            .click()
            .await
            .with_context(|| format!("clicking `{css}`"))
    }

    async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.wait_css(css).await?;
        e.clear().await?;
        e.send_keys(text)
            .await
            .with_context(|| format!("typing into `{css}`"))
    }

    async fn set_size(&self, (w, h): (u32, u32)) -> Result<()> {
        self.client.set_window_size(w, h).await?;
        Ok(())
    }

    /// True when the page is no wider than the window (no horizontal page scroll).
    async fn fits_width(&self) -> Result<(bool, Value)> {
        let v = self
            .client
            .execute(
                "const d = document.documentElement; return [d.scrollWidth, d.clientWidth];",
                vec![],
            )
            .await?;
        let fits = v[0]
            .as_u64()
            .zip(v[1].as_u64())
            .is_some_and(|(s, c)| s <= c);
        Ok((fits, v))
    }

    /// A full-page screenshot `<name>.png`: the window grows until the viewport holds the
    /// whole page (at most 8000 px), and shrinks back after.
    async fn shot(&self, name: &str, size: (u32, u32)) -> Result<()> {
        self.accessible(name).await?;
        let mut height = size.1;
        for _ in 0..3 {
            let v = self
                .client
                .execute(
                    "return [window.innerHeight, document.documentElement.scrollHeight];",
                    vec![],
                )
                .await?;
            let (inner, page) = (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0));
            if inner >= page || height >= 8000 {
                break;
            }
            let missing = u32::try_from(page - inner).unwrap_or(8000);
            height = height.saturating_add(missing).min(8000);
            self.set_size((size.0, height)).await?;
        }
        self.client
            .execute("window.scrollTo(0, 0);", vec![])
            .await?;
        let png = self.client.screenshot().await?;
        self.set_size(size).await?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Runs axe-core's WCAG 2 A/AA rules on the page as it is; any violation fails the
    /// test with the rule, its impact and the elements.
    async fn accessible(&self, page: &str) -> Result<()> {
        let Some(axe) = &self.axe else {
            return Ok(());
        };
        self.client
            .execute(&format!("{axe}\nreturn typeof axe;"), vec![])
            .await
            .context("loading axe-core")?;
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
                   .then(r => done({ passes: r.passes.length, violations: r.violations.map(v => ({
                       id: v.id, impact: v.impact,
                       nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')) })) }))
                   .catch(e => done({ passes: 0, violations: [{ id: 'axe-error', impact: String(e), nodes: [] }] }));",
                vec![],
            )
            .await
            .context("running axe-core")?;
        let violations = &found["violations"];
        if violations.as_array().is_none_or(|v| !v.is_empty()) {
            bail!("accessibility violations on the {page} page: {violations}");
        }
        let passes = found["passes"].as_u64().unwrap_or(0);
        ensure!(
            passes > 0,
            "axe-core checked nothing on the {page} page: {found}"
        );
        eprintln!("{page}: axe-core, {passes} WCAG 2.1 A/AA rules passed, no violation");
        Ok(())
    }

    async fn login(&self, token: &str) -> Result<()> {
        self.wait_css("#login-form").await?;
        self.fill("#login-token", token).await?;
        self.click("#login-submit").await?;
        self.wait_css("#topbar:not([hidden]) #whoami strong")
            .await?;
        Ok(())
    }
}

/// Sum over `nodes` of `INFO commandstats` `cmdstat_get` calls.
async fn get_calls(nodes: &[&pivot_sandbox::RedisNode]) -> Result<u64> {
    let mut total = 0;
    for node in nodes {
        let stats = node.info("commandstats").await?;
        total += stats
            .get("cmdstat_get")
            .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("calls=")))
            .map(str::parse::<u64>)
            .transpose()?
            .unwrap_or(0);
    }
    Ok(total)
}

/// `n` GETs through the proxy.
async fn gets(conn: &mut redis::aio::MultiplexedConnection, n: usize) -> Result<()> {
    for _ in 0..n {
        let _: Option<String> = redis::cmd("GET").arg("ui:key").query_async(conn).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ui_changes_policy_and_rules_and_fails_over() -> Result<()> {
    common::init_tracing();
    let Some(driver_bin) = find_chromedriver() else {
        if required() {
            bail!("chromedriver is not installed, and PIVOT_REQUIRE_CLIENT_TESTS is set");
        }
        eprintln!(
            "SKIPPED: chromedriver is not installed (Debian: apt-get install chromium chromium-driver); CI runs this test"
        );
        return Ok(());
    };
    let started = Instant::now();
    let stack = Stack::start(StackOptions {
        admin_token: Some(ADMIN_TOKEN.to_string()),
        ..StackOptions::default()
    })
    .await?;
    let driver = Chromedriver::start(&driver_bin).await?;

    let mut chrome = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            format!("--user-data-dir={}", driver.dir.path().join("profile").display()),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
        ],
    });
    if let Some(bin) = find_chromium() {
        chrome["binary"] = json!(bin);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), chrome);
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .with_context(|| {
            format!(
                "starting Chromium; chromedriver log:\n{}",
                driver.log_tail()
            )
        })?;

    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).with_context(|| format!("creating {}", shots.display()))?;
    let ui = Ui {
        client,
        base: stack.http_url()?,
        shots,
        axe: axe_source()?,
    };
    let outcome = flow(&ui, &stack).await;
    // The browser goes first (also after a failure), then chromedriver, then the stack.
    let closed = ui.client.close().await;
    drop(driver);
    stack.shutdown().await?;
    outcome?;
    closed?;
    eprintln!("UI test took {:?}", started.elapsed());
    Ok(())
}

async fn flow(ui: &Ui, stack: &Stack) -> Result<()> {
    let service = stack.topology.master_name().to_string();
    let proxy_addr = stack.proxies[0].addr;
    let api = Api {
        base: stack.http_url()?,
        token: ADMIN_TOKEN.to_string(),
        http: reqwest::Client::new(),
    };

    // ---- Log in.
    ui.set_size(DESKTOP).await?;
    ui.open("").await?;
    ui.wait_css("#login-token").await?;
    ui.shot("login", DESKTOP).await?;
    ui.login(ADMIN_TOKEN).await?;
    let role = ui.wait_css("#whoami .role").await?.text().await?;
    ensure!(role.eq_ignore_ascii_case("admin"), "logged in as {role:?}");

    // ---- Overview: the service with its master, as the API has it.
    let master = api.master(&service).await?.context("no master")?;
    let card = format!("[data-testid=service-card][data-service=\"{service}\"]");
    ui.wait_js(
        "the overview to show the master",
        &format!(
            "const m = document.querySelector('{card} [data-testid=overview-master]'); return m && m.textContent === '{master}';"
        ),
        UI_WAIT,
    )
    .await?;
    ui.wait_css(&format!("{card} tr[data-replica]")).await?;
    ui.shot("overview", DESKTOP).await?;

    // ---- Service page.
    ui.click(&format!("{card} h2 a")).await?;
    ui.wait_css("#policy-form").await?;
    ui.wait_css("[data-testid=topo-master]").await?;

    // The observable for the read policy: with the default policy, GETs through the proxy
    // reach the replicas (checked, so that the check below can fail).
    let master_node = stack
        .topology
        .node_by_addr(master.parse()?)
        .context("master node")?;
    let replicas: Vec<_> = stack
        .topology
        .nodes()
        .iter()
        .filter(|n| n.addr() != master_node.addr())
        .collect();
    // Writes and reads on separate connections: under read-your-writes a connection that
    // wrote reads from the master.
    let mut writer = connect(&stack.proxies[0].client(), Duration::from_secs(5)).await?;
    let mut conn = connect(&stack.proxies[0].client(), Duration::from_secs(5)).await?;
    let _: () = redis::cmd("SET")
        .arg("ui:key")
        .arg("v")
        .query_async(&mut writer)
        .await?;
    let policy_before = api.get(&format!("/services/{service}/policy")).await?;
    ensure!(
        policy_before["read_policy"] != "master-only",
        "the test needs a read policy other than master-only first: {policy_before}"
    );
    let deadline = Instant::now() + UI_WAIT;
    loop {
        let before = get_calls(&replicas).await?;
        gets(&mut conn, 20).await?;
        if get_calls(&replicas).await? > before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "GETs through the proxy never reached a replica under {policy_before}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Read policy -> master-only, through the form.
    let acked_0 = api.acked_version(proxy_addr).await?;
    ui.wait_css("#policy-read_policy")
        .await?
        .select_by_value("master-only")
        .await?;
    ui.click("#policy-save").await?;
    ui.wait_js(
        "the policy form to report the save",
        "const s = document.querySelector('#policy-status'); return s && s.textContent.includes('Saved');",
        UI_WAIT,
    )
    .await?;
    let acked_1 = api.wait_acked_above(proxy_addr, acked_0).await?;
    let policy = api.get(&format!("/services/{service}/policy")).await?;
    ensure!(
        policy["read_policy"] == "master-only",
        "policy after the form: {policy}"
    );
    // The proxy applies it: GETs go to the master only.
    let (r0, m0) = (
        get_calls(&replicas).await?,
        get_calls(&[master_node]).await?,
    );
    gets(&mut conn, 200).await?;
    let (r1, m1) = (
        get_calls(&replicas).await?,
        get_calls(&[master_node]).await?,
    );
    ensure!(
        r1 == r0,
        "replicas served {} GETs under master-only",
        r1 - r0
    );
    ensure!(
        m1 - m0 >= 200,
        "the master served {} of 200 GETs under master-only",
        m1 - m0
    );

    // Rule flushall -> deny, through the form.
    ui.fill("#rule-command", "flushall").await?;
    ui.wait_css("#rule-target")
        .await?
        .select_by_value("deny")
        .await?;
    ui.click("#rule-add").await?;
    ui.wait_css("#rules-table tr[data-command=\"flushall\"]")
        .await?;
    let acked_2 = api.wait_acked_above(proxy_addr, acked_1).await?;
    let refused: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut writer).await;
    let err = match refused {
        Ok(()) => bail!("FLUSHALL went through the proxy despite the deny rule"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("is denied on service") && err.contains("flushall"),
        "FLUSHALL got {err:?}, not the proxy's deny error"
    );
    let still: Option<String> = redis::cmd("GET")
        .arg("ui:key")
        .query_async(&mut conn)
        .await?;
    ensure!(still.as_deref() == Some("v"), "the key is gone: {still:?}");
    ensure!(
        acked_0 < acked_1 && acked_1 < acked_2,
        "ACKed versions {acked_0} -> {acked_1} -> {acked_2}"
    );

    // ---- Fail over with the button and its confirmation dialog.
    let failover_button = ui.wait_css("#failover-button").await?;
    ensure!(
        failover_button.is_enabled().await?,
        "the failover button is disabled for an admin"
    );
    failover_button.click().await?;
    ui.wait_css("#confirm-dialog[open]").await?;
    ui.click("#confirm-ok").await?;
    // Disabled while it runs (the dialog closes asynchronously, so this waits a little;
    // the failover itself takes far longer than the 50 ms between checks).
    ui.wait_js(
        "the failover button to be disabled while the failover runs",
        "return document.querySelector('#failover-button').disabled \
           || !!document.querySelector('[data-testid=failover-result], [data-testid=failover-error]');",
        UI_WAIT,
    )
    .await?;
    let result = ui
        .wait_css_for(
            "[data-testid=failover-result], [data-testid=failover-error]",
            FAILOVER_WAIT,
        )
        .await?;
    let new_master = match result.attr("data-new-master").await? {
        Some(m) => m,
        None => bail!("the failover failed: {}", result.text().await?),
    };
    ensure!(new_master != master, "failover kept {master} as the master");
    let api_master = wait_until("the API to name the new master", UI_WAIT, || {
        let api = &api;
        let service = &service;
        let expected = &new_master;
        async move {
            api.master(service)
                .await
                .ok()
                .flatten()
                .filter(|m| m == expected)
        }
    })
    .await?;
    // The timeline shows it: a master change to the master the API reports.
    ui.wait_css(&format!(
        "#timeline-list li[data-kind=\"master-changed\"][data-new-master=\"{api_master}\"]"
    ))
    .await?;
    ui.wait_css("[data-testid=timeline-drawing] [data-kind=\"master-changed\"]")
        .await?;
    ui.wait_js(
        "the button to be usable again",
        "const b = document.querySelector('#failover-button'); return b && !b.disabled;",
        UI_WAIT,
    )
    .await?;
    // The drawing follows: the new master, and the old one back as its replica.
    ui.wait_css(&format!(
        "[data-testid=topo-master][data-key=\"{api_master}\"]"
    ))
    .await?;
    ui.wait_css(&format!(
        "[data-testid=topo-replica][data-key=\"{master}\"]"
    ))
    .await
    .context("the old master did not show as a replica in the topology drawing")?;
    // Live updates: the stream is up, and a change made elsewhere (here: the API) shows
    // on the open page without a reload.
    ui.wait_css("#conn[data-state=live]").await?;
    api.send(
        reqwest::Method::PUT,
        &format!("/services/{service}/rules/keys"),
        json!({ "target": "deny" }),
    )
    .await?;
    ui.wait_css("#rules-table tr[data-command=\"keys\"]")
        .await
        .context("a rule added through the API did not appear live")?;
    ui.shot("service", DESKTOP).await?;

    // ---- The other pages. The fleet shows a proxy that is shutting down (a second one,
    // stopped with a delay that outlasts the check) as draining.
    let stopping = {
        let cp = stack
            .control_plane
            .as_ref()
            .context("the control plane is running")?;
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut config =
            pivot_proxy::Config::for_service(&service, &format!("http://{}", cp.grpc_addr));
        config.listen = any;
        config.admin_listen = any;
        config.proxy_id = Some("ui-draining".into());
        config.shutdown_delay = Duration::from_secs(60);
        pivot_sandbox::stack::start_proxy_with(config).await?
    };
    api.wait_proxy("ui-draining", "connected").await?;
    stopping.begin_stop();
    api.wait_proxy("ui-draining", "draining").await?;
    ui.click("a[data-nav=proxies]").await?;
    ui.wait_js(
        "the proxies page to show the stopping proxy draining",
        "const r = document.querySelector('#proxies-table tr[data-proxy=\"ui-draining\"]'); const s = document.querySelector('#proxies-summary').textContent; return !!r && r.classList.contains('row-warn') && r.textContent.includes('draining') && s.includes('1 draining') && !s.includes('not current');",
        UI_WAIT,
    )
    .await?;
    ui.shot("proxies", DESKTOP).await?;

    ui.click("a[data-nav=events]").await?;
    ui.wait_css("#events-table tr[data-kind=\"master-changed\"]")
        .await?;
    ui.shot("events", DESKTOP).await?;

    ui.click("a[data-nav=audit]").await?;
    ui.wait_css("#audit-table tr[data-id]").await?;
    ui.shot("audit", DESKTOP).await?;

    // Tokens: create a viewer token (shown once) for the read-only check below.
    ui.click("a[data-nav=tokens]").await?;
    ui.wait_css("#tokens-table tr[data-token]").await?;
    ui.fill("#token-name", "ui-viewer").await?;
    ui.wait_css("#token-role")
        .await?
        .select_by_value("viewer")
        .await?;
    ui.click("#token-create").await?;
    let viewer_token = ui
        .wait_css("#token-value")
        .await?
        .prop("value")
        .await?
        .filter(|t| !t.is_empty())
        .context("no token shown")?;
    ui.wait_css("#tokens-table tr[data-token=\"ui-viewer\"]")
        .await?;
    ui.shot("tokens", DESKTOP).await?;

    // ---- Phone width: no horizontal page scroll on any page.
    ui.set_size(PHONE).await?;
    for (route, ready) in [
        ("#/", "[data-testid=service-card]"),
        ("#/proxies", "#proxies-table tr[data-proxy]"),
        ("#/events", "#events-table tr[data-kind]"),
        ("#/audit", "#audit-table tr[data-id]"),
        ("#/tokens", "#tokens-table tr[data-token]"),
        (
            &format!("#/services/{service}"),
            "[data-testid=topo-master]",
        ),
    ] {
        ui.open(route).await?;
        ui.wait_css(ready).await?;
        let (fits, widths) = ui.fits_width().await?;
        ensure!(
            fits,
            "{route} scrolls sideways at {} px: [scrollWidth, clientWidth] = {widths}",
            PHONE.0
        );
    }
    ui.wait_css("[data-testid=timeline-list] li[data-kind]")
        .await?;
    ui.shot("service-phone", PHONE).await?;
    ui.set_size(DESKTOP).await?;

    // ---- A viewer sees no change controls, and is told why.
    ui.click("#logout").await?;
    ui.login(&viewer_token).await?;
    ui.open(&format!("#/services/{service}")).await?;
    ui.wait_css("[data-testid=readonly-note]").await?;
    for control in [
        "#policy-save",
        "#rule-add",
        "#user-save",
        "#failover-button",
    ] {
        let enabled = ui.wait_css(control).await?.is_enabled().await?;
        ensure!(!enabled, "{control} is enabled for a viewer");
    }
    ui.shot("service-viewer", DESKTOP).await?;

    // A token deleted while in use: the next call gets 401 and the UI goes back to the
    // login page and says why.
    let tokens = api.get("/tokens").await?;
    let id = tokens["tokens"]
        .as_array()
        .and_then(|list| list.iter().find(|t| t["name"] == "ui-viewer"))
        .map(|t| t["id"].clone())
        .with_context(|| format!("no ui-viewer token in {tokens}"))?;
    let id = id.as_str().map_or_else(|| id.to_string(), str::to_string);
    api.send(
        reqwest::Method::DELETE,
        &format!("/tokens/{id}"),
        Value::Null,
    )
    .await?;
    ui.click("a[data-nav=proxies]").await?;
    ui.wait_js(
        "the login page to say the token was refused",
        "const m = document.querySelector('#login-message'); return !!m && m.textContent.includes('did not accept');",
        UI_WAIT,
    )
    .await?;
    Ok(())
}
