//! The real `pivot-control-plane` binary configured by `--config FILE`: the file's values
//! reach the store, the environment and the command line win over the file, secrets from
//! the file work and never show up in the output, and a bad value stops the start with an
//! error naming the file, line and key.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::closed_port;
use pivot_control_plane::state::Target;
use pivot_control_plane::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);
const BACKEND_SECRET: &str = "backend-s3cret-from-the-file";
const USER_SECRET: &str = "user-t0ken-from-the-file";

/// The binary, with no `PIVOT_*` variable from the test's environment.
fn control_plane() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pivot-control-plane"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PIVOT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("control-plane.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Reads JSON log lines until the "control plane running" one; returns it and everything
/// read so far.
async fn wait_running(child: &mut Child) -> (serde_json::Value, String) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log-format = \"json\" from the file: {e}: {line}"));
            if v["fields"]["message"] == "control plane running" {
                return v;
            }
        }
        panic!("the control plane exited before running:\n{seen}");
    })
    .await;
    let running = found.unwrap_or_else(|_| panic!("not running within {WAIT:?}:\n{seen}"));
    // Keep draining, so that the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (running, seen)
}

#[tokio::test]
async fn the_binary_runs_from_a_file_with_flags_and_environment_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Held for the whole test: a file value that won over the flag or the environment
    // would fail the start on it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap();
    let sentinel = closed_port();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
data-dir = "{data}"
http-listen = "{busy}"
grpc-listen = "{busy}"
service = ["mymaster={sentinel}"]
rule = ["mymaster=flushall:deny", "mymaster=config|set:deny"]
backend-auth = ["mymaster=pivot:{BACKEND_SECRET}"]
proxy-user = ["mymaster=app:{USER_SECRET}"]
sentinel-poll-interval = "200ms"
log-format = "json"
"#,
            data = data_dir.display(),
        ),
    );
    let mut child = control_plane()
        // The environment wins over the file...
        .env("PIVOT_GRPC_LISTEN", "127.0.0.1:0")
        // ...and the command line over the environment.
        .env("PIVOT_HTTP_LISTEN", busy.to_string())
        .args(["--http-listen", "127.0.0.1:0"])
        .env("PIVOT_CONFIG", &config)
        .spawn()
        .unwrap();
    let (running, mut output) = wait_running(&mut child).await;
    for server in ["http", "grpc"] {
        let addr: std::net::SocketAddr =
            running["fields"][server].as_str().unwrap().parse().unwrap();
        assert_ne!(addr, busy, "{server}: {running}");
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{running}");
    }

    // SIGTERM (to the child this test started), then a clean exit.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    output.push_str(&stderr);
    assert!(status.success(), "{status}: {output}");
    assert!(
        output.contains("configuration file read") && output.contains(&config),
        "{output}"
    );
    assert!(
        !output.contains(BACKEND_SECRET) && !output.contains(USER_SECRET),
        "a secret from the file was printed:\n{output}"
    );

    // What the file said is in the store.
    let store = Store::open(&data_dir).await.unwrap();
    let services = store.services().await.unwrap();
    let svc = services.iter().find(|s| s.name == "mymaster").unwrap();
    assert_eq!(svc.sentinels[0].to_string(), sentinel);
    let rules: Vec<(&str, Target)> = svc
        .policy
        .rules
        .iter()
        .map(|r| (r.command.as_str(), r.target))
        .collect();
    assert_eq!(
        rules,
        [("flushall", Target::Deny), ("config|set", Target::Deny)]
    );
    let auth = svc.backend_auth.as_ref().unwrap();
    assert_eq!(auth.username.as_deref(), Some("pivot"));
    assert_eq!(auth.password, BACKEND_SECRET);
    let user = svc.users.iter().find(|u| u.name == "app").unwrap();
    assert!(pivot_proto::password::verify(
        &user.salt,
        &user.hash,
        USER_SECRET.as_bytes()
    ));
    store.close().await;
}

#[tokio::test]
async fn a_bad_value_in_the_file_stops_the_start_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "data-dir = \"{}\"\nhttp-listen = \"127.0.0.1:0\"\nbackend-auth = [\"mymaster=pivot:\"]\n",
            dir.path().join("data").display()
        ),
    );
    let out = tokio::time::timeout(
        WAIT,
        control_plane()
            .args(["--config", &config])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{config}:3: `backend-auth`: invalid value (value hidden)"
        )),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing starts on a bad config"
    );
}
