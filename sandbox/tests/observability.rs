//! The Grafana dashboard (`deploy/grafana/pivot.json`) and the alert rules
//! (`deploy/prometheus/rules.yml`) only query metrics the binaries really export: this
//! test scrapes `/metrics` of a running control plane and proxy (real Redis and
//! Sentinels behind them, a few commands through the proxy) and fails on any metric name
//! the files use that the binary of its `job` does not serve, on a `by (...)` label a
//! metric with samples does not carry, and on an alert without a runbook entry in
//! `docs/operations.md`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::connect;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const PROXY_JOB: &str = "pivot-proxy";
const CONTROL_PLANE_JOB: &str = "pivot-control-plane";

/// What one binary serves: every sample name (a counter `x` as `x_total`, a histogram
/// as `x_bucket`, `x_sum`, `x_count`) with the label names seen on its samples.
#[derive(Debug, Default)]
struct Exported(BTreeMap<String, BTreeSet<String>>);

impl Exported {
    /// Parses OpenMetrics text: `# TYPE` lines name the families (families with no
    /// sample yet count), sample lines give the labels.
    fn parse(text: &str) -> Result<Exported> {
        let mut names = BTreeMap::<String, BTreeSet<String>>::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').context("a TYPE line")?;
                let samples: &[&str] = match kind {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "info" => &["_info"],
                    "gauge" | "unknown" => &[""],
                    other => bail!("metric {name}: unexpected type {other}"),
                };
                for suffix in samples {
                    names.entry(format!("{name}{suffix}")).or_default();
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let name_end = line.find(['{', ' ']).context("a sample line")?;
                let name = &line[..name_end];
                let labels = names
                    .get_mut(name)
                    .with_context(|| format!("sample {name} without a TYPE line"))?;
                if line[name_end..].starts_with('{') {
                    let end = line.find('}').context("closing brace")?;
                    for pair in line[name_end + 1..end].split(',') {
                        if let Some((label, _)) = pair.split_once('=') {
                            labels.insert(label.trim().to_string());
                        }
                    }
                }
            }
        }
        ensure!(!names.is_empty(), "no metrics in:\n{text}");
        Ok(Exported(names))
    }
}

/// One metric reference in a query: `pivot_x{job="...",...}`.
#[derive(Debug)]
struct Reference {
    name: String,
    job: Option<String>,
}

/// Every `pivot_*` metric (and `up`) a PromQL expression names, with its `job` matcher.
fn references(expr: &str) -> Vec<Reference> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let bytes: Vec<(usize, char)> = expr.char_indices().collect();
    let mut i = 0;
    while i < bytes.len() {
        let (at, c) = bytes[i];
        let starts_word = i == 0 || !is_ident(bytes[i - 1].1);
        if starts_word && is_ident(c) {
            let end = expr[at..]
                .find(|c: char| !is_ident(c))
                .map_or(expr.len(), |n| at + n);
            let word = &expr[at..end];
            if word.starts_with("pivot_") || (word == "up" && expr[end..].starts_with('{')) {
                let job = expr[end..]
                    .strip_prefix('{')
                    .and_then(|m| m.split_once('}'))
                    .and_then(|(matchers, _)| {
                        matchers.split(',').find_map(|m| {
                            m.trim()
                                .strip_prefix("job=\"")
                                .and_then(|v| v.strip_suffix('"'))
                                .map(str::to_string)
                        })
                    });
                out.push(Reference {
                    name: word.to_string(),
                    job,
                });
            }
            i += expr[at..end].chars().count();
        } else {
            i += 1;
        }
    }
    out
}

/// Label names in `by (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(n) = rest.find("by (") {
        rest = &rest[n + 4..];
        if let Some(end) = rest.find(')') {
            out.extend(rest[..end].split(',').map(|l| l.trim().to_string()));
        }
    }
    out
}

/// The problems with one expression, given what each job exports.
fn check_expr(where_: &str, expr: &str, jobs: &BTreeMap<&str, Exported>) -> Vec<String> {
    let mut problems = Vec::new();
    let refs = references(expr);
    for r in &refs {
        let Some(job) = &r.job else {
            problems.push(format!(
                "{where_}: `{}` has no job matcher (the control plane and the proxies both \
                 export pivot_proxy_* names)",
                r.name
            ));
            continue;
        };
        let Some(exported) = jobs.get(job.as_str()) else {
            problems.push(format!("{where_}: unknown job `{job}`"));
            continue;
        };
        if r.name != "up" && !exported.0.contains_key(&r.name) {
            problems.push(format!("{where_}: `{}` is not exported by {job}", r.name));
        }
    }
    // Grouping labels: each must be on one of the expression's metrics, when that metric
    // has samples to tell (Prometheus adds `instance` and `job`; `le` is the buckets').
    for label in grouping_labels(expr) {
        if ["instance", "job", "le"].contains(&label.as_str()) {
            continue;
        }
        let seen: Vec<&BTreeSet<String>> = refs
            .iter()
            .filter_map(|r| jobs.get(r.job.as_deref()?)?.0.get(&r.name))
            .filter(|labels| !labels.is_empty())
            .collect();
        if !seen.is_empty() && !seen.iter().any(|labels| labels.contains(&label)) {
            problems.push(format!(
                "{where_}: grouped by `{label}`, which none of its metrics carries"
            ));
        }
    }
    problems
}

/// `(where, expr)` of every dashboard target.
fn dashboard_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let dash: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("a target without expr")?;
            out.push((
                format!(
                    "dashboard panel {:?}",
                    panel["title"].as_str().unwrap_or("?")
                ),
                expr.to_string(),
            ));
        }
    }
    ensure!(!out.is_empty(), "no queries in {}", path.display());
    Ok(out)
}

/// `(alert name, expr)` of every rule. The file is plain YAML in the shape Prometheus
/// reads; an `expr: |` block runs until the next key of the rule.
fn alert_rules(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_block: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(block_indent) = in_block {
            if trimmed.is_empty() || indent > block_indent {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(trimmed);
                    last.1.push(' ');
                }
                continue;
            }
            in_block = None;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            let last = out.last_mut().context("expr before any alert")?;
            if expr.trim() == "|" {
                in_block = Some(indent);
            } else {
                last.1 = expr.to_string();
            }
        }
    }
    ensure!(!out.is_empty(), "no alerts in {}", path.display());
    for (name, expr) in &out {
        ensure!(!expr.trim().is_empty(), "alert {name} has no expr");
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() -> Result<()> {
    common::init_tracing();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stack = Stack::start(StackOptions::default()).await?;
    let cp = stack.control_plane.as_ref().context("control plane")?;
    let proxy = stack.proxies.first().context("a proxy")?;
    proxy.wait_ready(Duration::from_secs(10)).await?;

    // Some traffic, so that the labelled families have samples to check labels against.
    let mut c = connect(&proxy.client(), Duration::from_secs(5)).await?;
    let () = c.set("observability", "1").await?;
    let _: Option<String> = c.get("observability").await?;

    let scrape = |url: String| async move {
        let text = reqwest::get(&url)
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?
            .text()
            .await?;
        Exported::parse(&text).with_context(|| format!("parsing {url}"))
    };
    let mut jobs = BTreeMap::new();
    jobs.insert(
        PROXY_JOB,
        scrape(format!("http://{}/metrics", proxy.admin_addr)).await?,
    );
    jobs.insert(
        CONTROL_PLANE_JOB,
        scrape(format!("http://{}/metrics", cp.http_addr)).await?,
    );
    // The scrape itself is checked: known names are there, with their labels.
    let commands = jobs[PROXY_JOB].0.get("pivot_proxy_commands_total");
    ensure!(
        commands.is_some_and(|l| l.contains("class") && l.contains("target")),
        "pivot_proxy_commands_total{{class,target}} missing: {:?}",
        jobs[PROXY_JOB]
    );

    // The checker is not vacuous: a made-up name, a metric of the other binary, a missing
    // job and a label the metric lacks are all reported.
    for bad in [
        r#"rate(pivot_proxy_no_such_metric_total{job="pivot-proxy"}[1m])"#,
        r#"pivot_service_master_known{job="pivot-proxy"}"#,
        r#"pivot_proxy_client_connections"#,
        r#"sum by (service) (rate(pivot_proxy_commands_total{job="pivot-proxy"}[1m]))"#,
    ] {
        ensure!(
            !check_expr("self-check", bad, &jobs).is_empty(),
            "the checker accepted {bad}"
        );
    }

    let mut problems = Vec::new();
    let queries = dashboard_queries(&root.join("deploy/grafana/pivot.json"))?;
    for (where_, expr) in &queries {
        problems.extend(check_expr(where_, expr, &jobs));
    }
    let operations =
        std::fs::read_to_string(root.join("docs/operations.md")).context("docs/operations.md")?;
    let rules = alert_rules(&root.join("deploy/prometheus/rules.yml"))?;
    for (name, expr) in &rules {
        problems.extend(check_expr(&format!("alert {name}"), expr, &jobs));
        if !operations.contains(&format!("\n### {name}\n")) {
            problems.push(format!(
                "alert {name}: no `### {name}` runbook entry in docs/operations.md"
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    eprintln!(
        "{} dashboard queries and {} alerts checked against {} + {} exported names",
        queries.len(),
        rules.len(),
        jobs[PROXY_JOB].0.len(),
        jobs[CONTROL_PLANE_JOB].0.len()
    );
    stack.shutdown().await
}
