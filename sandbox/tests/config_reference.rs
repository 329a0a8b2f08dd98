//! `docs/configuration.md` is generated from the binaries' own flag definitions (clap), so
//! it cannot drift: this test regenerates it and fails when the file differs. Run with
//! `PIVOT_UPDATE_DOCS=1` to rewrite it after changing a flag.

use std::fmt::Write as _;
use std::path::Path;

use clap::CommandFactory;

/// One binary's section: every flag with its environment variable, TOML key (control
/// plane), default and help.
fn section(out: &mut String, title: &str, cmd: &clap::Command, toml: bool) {
    let _ = writeln!(out, "## `{title}`\n");
    if let Some(about) = cmd.get_about() {
        let _ = writeln!(out, "{about}\n");
    }
    if toml {
        let _ = writeln!(
            out,
            "Every flag can also be set in the `--config` TOML file under its long name \
             (`http-listen = \"127.0.0.1:8080\"`; repeatable flags as arrays). Precedence: \
             flag, then environment variable, then file, then default. \
             [`examples/control-plane.toml`](../examples/control-plane.toml) lists them all.\n"
        );
    }
    let _ = writeln!(out, "| flag | environment | default | meaning |");
    let _ = writeln!(out, "|---|---|---|---|");
    let mut args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !["help", "version"].contains(&a.get_id().as_str()))
        .collect();
    args.sort_by_key(|a| a.get_long());
    for a in args {
        let long = a.get_long().unwrap_or_default();
        let value = a
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        let env = a
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "-".into());
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().to_string())
            .collect();
        let default = if defaults.is_empty() {
            "-".to_string()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let help = a
            .get_long_help()
            .or_else(|| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        let values: Vec<String> = a
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        let help = if values.is_empty() {
            help
        } else {
            format!("{help} (one of {})", values.join(", "))
        };
        let repeat = if matches!(a.get_action(), clap::ArgAction::Append) {
            " (repeatable)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| `--{long}{value}`{repeat} | {env} | {default} | {help} |"
        );
    }
    out.push('\n');
}

fn generate() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the binaries' flag definitions by `sandbox/tests/config_reference.rs` \
         (`PIVOT_UPDATE_DOCS=1 cargo test -p pivot-sandbox --test config_reference` rewrites \
         it); the test fails when a flag changes without this file. `--help` on each binary \
         shows the same text.\n\n",
    );
    section(
        &mut out,
        "pivot-control-plane",
        &pivot_control_plane::Config::command(),
        true,
    );
    section(
        &mut out,
        "pivot-proxy",
        &pivot_proxy::Config::command(),
        false,
    );
    out
}

#[test]
fn the_configuration_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let expected = generate();
    if std::env::var_os("PIVOT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &expected).expect("writing docs/configuration.md");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == expected,
        "docs/configuration.md is stale: a flag changed. Regenerate it with\n  \
         PIVOT_UPDATE_DOCS=1 cargo test -p pivot-sandbox --test config_reference"
    );
}
