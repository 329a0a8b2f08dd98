//! `docs/configuration.md` is generated from the binaries' own flag definitions (clap), so
//! it cannot drift: this test regenerates it and fails when the file differs. Run with
//! `PIVOT_UPDATE_DOCS=1` to rewrite it after changing a flag. It covers
//! `pivot-control-plane`, `pivot-proxy` and `pivotctl` (global flags, then every
//! subcommand with its arguments).

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
    table(out, cmd.get_arguments().filter(|a| a.get_long().is_some()));
    out.push('\n');
}

/// A table of arguments: flags by long name, positionals (uppercase) first.
fn table<'a>(out: &mut String, args: impl Iterator<Item = &'a clap::Arg>) {
    let _ = writeln!(out, "| flag | environment | default | meaning |");
    let _ = writeln!(out, "|---|---|---|---|");
    let mut args: Vec<&clap::Arg> = args
        .filter(|a| !["help", "version"].contains(&a.get_id().as_str()))
        .collect();
    args.sort_by_key(|a| (a.get_long().is_some(), a.get_long()));
    for a in args {
        let name = match a.get_long() {
            Some(long) => {
                let value = if a.get_action().takes_values() {
                    a.get_value_names()
                        .and_then(|v| v.first())
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                let short = a.get_short().map(|c| format!("-{c}, ")).unwrap_or_default();
                format!("{short}--{long}{value}")
            }
            None => a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| a.get_id().as_str().to_uppercase()),
        };
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
        let _ = writeln!(out, "| `{name}`{repeat} | {env} | {default} | {help} |");
    }
}

/// `pivotctl`: the global flags, then one heading per subcommand (nested ones as
/// `pivotctl rules set`) with its arguments.
fn cli_section(out: &mut String, title: &str, cmd: &clap::Command) {
    let _ = writeln!(out, "## `{title}`\n");
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    let _ = writeln!(out, "Global flags (before or after the subcommand):\n");
    table(out, cmd.get_arguments().filter(|a| a.is_global_set()));
    out.push('\n');
    let mut stack: Vec<(String, &clap::Command)> = cmd
        .get_subcommands()
        .filter(|c| c.get_name() != "help")
        .map(|c| (format!("{title} {}", c.get_name()), c))
        .collect();
    stack.reverse();
    while let Some((path, c)) = stack.pop() {
        let _ = writeln!(out, "### `{path}`\n");
        if let Some(about) = c.get_long_about().or_else(|| c.get_about()) {
            let _ = writeln!(out, "{}\n", about.to_string().replace('\n', " "));
        }
        let own: Vec<&clap::Arg> = c
            .get_arguments()
            .filter(|a| !a.is_global_set() && !["help", "version"].contains(&a.get_id().as_str()))
            .collect();
        if !own.is_empty() {
            table(out, own.into_iter());
            out.push('\n');
        }
        let mut subs: Vec<(String, &clap::Command)> = c
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .map(|s| (format!("{path} {}", s.get_name()), s))
            .collect();
        subs.reverse();
        stack.extend(subs);
    }
}

/// The variables `pivotctl` reads itself rather than through a flag (secrets that must
/// not appear in argv), found in its source, with the subcommands whose help names them.
fn secrets_from_env(out: &mut String, cmd: &clap::Command) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pivotctl/src/main.rs");
    let text = std::fs::read_to_string(&src).expect("reading pivotctl/src/main.rs");
    let mut names: Vec<&str> = text
        .split("env::var(\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### `pivotctl`: secrets from the environment\n\n\
         Read by `pivotctl` itself, never from a flag (argv is visible to other users).\n"
    );
    let _ = writeln!(out, "| environment | read by |");
    let _ = writeln!(out, "|---|---|");
    let mut all = Vec::new();
    let mut stack: Vec<(String, &clap::Command)> = vec![("pivotctl".into(), cmd)];
    while let Some((path, c)) = stack.pop() {
        let help = c
            .get_long_about()
            .or_else(|| c.get_about())
            .map(|h| h.to_string());
        let args: String = c
            .get_arguments()
            .filter_map(|a| a.get_help().map(|h| h.to_string()))
            .collect();
        all.push((path.clone(), format!("{} {args}", help.unwrap_or_default())));
        stack.extend(
            c.get_subcommands()
                .filter(|s| s.get_name() != "help")
                .map(|s| (format!("{path} {}", s.get_name()), s)),
        );
    }
    for name in names {
        let mut users: Vec<String> = all
            .iter()
            .filter(|(_, help)| help.contains(name))
            .map(|(path, _)| format!("`{path}`"))
            .collect();
        users.sort();
        assert!(
            !users.is_empty(),
            "pivotctl reads {name}, but no subcommand's help mentions it"
        );
        let _ = writeln!(out, "| `{name}` | {} |", users.join(", "));
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
    let mut ctl = pivotctl::cli::Cli::command();
    // Global flags are propagated to the subcommands only when clap builds the command.
    ctl.build();
    cli_section(&mut out, "pivotctl", &ctl);
    secrets_from_env(&mut out, &ctl);
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
