//! Connection-level features through the proxy against real Redis: proxy users and
//! `AUTH`, deny rules applied live, `CLIENT REPLY`/`NO-EVICT`, `CLIENT TRACKING`,
//! `MONITOR`, `WAIT` and `INFO`'s `# Proxy` section.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pivot_control_plane::{Actor, CommandRule, Target};
use pivot_sandbox::{Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A raw RESP connection: send commands, read whole reply frames.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        Ok(Conn {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    async fn send(&mut self, args: &[&str]) -> Result<()> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.stream.write_all(&cmd(&args)).await?;
        Ok(())
    }

    /// Sends one command and returns its reply frame.
    async fn call(&mut self, args: &[&str]) -> Result<String> {
        self.send(args).await?;
        self.frame(T).await
    }

    /// The next frame, within `timeout`.
    async fn frame(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut scanner =
                pivot_proxy::resp::Scanner::new(pivot_proxy::resp::Mode::Reply, 1 << 30);
            if let Some(f) = scanner.scan(&self.buf)? {
                let out: Vec<u8> = self.buf.drain(..f.len).collect();
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .context("no reply in time")??;
            ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when nothing arrives within `d` (the connection stays open).
    async fn silent_for(&mut self, d: Duration) -> Result<bool> {
        if !self.buf.is_empty() {
            return Ok(false);
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(d, self.stream.read(&mut chunk)).await {
            Err(_) => Ok(true),
            Ok(Ok(0)) => bail!("connection closed"),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(false)
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Waits until the proxy closes the connection (what is still sent is read and dropped).
    async fn closed_within(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => bail!("the connection was not closed within {timeout:?}"),
                Ok(Ok(0) | Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn service(stack: &Stack) -> String {
    stack.topology.master_name().to_string()
}

/// Waits until every proxy runs `version` (or a later one).
async fn applied(stack: &mut Stack, version: Option<u64>) -> Result<()> {
    let v = version.context("the change made no new config version")?;
    for p in &mut stack.proxies {
        p.wait_for_version_above(v - 1, T).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_users_authenticate_clients_and_are_stored_hashed() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions {
        proxy_users: vec![
            ("alice".into(), "alice-secret-1".into()),
            ("default".into(), "default-secret-2".into()),
        ],
        ..StackOptions::default()
    })
    .await?;
    let addr = stack.proxies[0].addr;
    let mut c = Conn::open(addr).await?;
    assert_eq!(
        c.call(&["GET", "k"]).await?,
        "-NOAUTH Authentication required.\r\n"
    );
    assert!(
        c.call(&["HELLO", "3"])
            .await?
            .starts_with("-NOAUTH HELLO must be called")
    );
    assert_eq!(
        c.call(&["PING"]).await?,
        "-NOAUTH Authentication required.\r\n"
    );
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(c.call(&["AUTH", "alice", "nope"]).await?, wrongpass);
    assert_eq!(c.call(&["AUTH", "bob", "alice-secret-1"]).await?, wrongpass);
    assert_eq!(c.call(&["AUTH", "alice-secret-1"]).await?, wrongpass);
    assert_eq!(
        c.call(&["AUTH", "alice", "alice-secret-1"]).await?,
        "+OK\r\n"
    );
    assert_eq!(c.call(&["SET", "k", "v"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["GET", "k"]).await?, "$1\r\nv\r\n");
    let info = c.call(&["CLIENT", "INFO"]).await?;
    assert!(info.contains(" user=alice "), "{info}");
    // `AUTH password` is the default user.
    assert_eq!(c.call(&["AUTH", "default-secret-2"]).await?, "+OK\r\n");
    assert!(
        c.call(&["CLIENT", "INFO"])
            .await?
            .contains(" user=default ")
    );
    // RESET goes back to the default user: unauthenticated, as users are configured.
    assert_eq!(c.call(&["RESET"]).await?, "+RESET\r\n");
    assert_eq!(
        c.call(&["GET", "k"]).await?,
        "-NOAUTH Authentication required.\r\n"
    );

    // HELLO with AUTH and SETNAME in one go.
    let hello = c
        .call(&[
            "HELLO",
            "3",
            "AUTH",
            "alice",
            "alice-secret-1",
            "SETNAME",
            "app",
        ])
        .await?;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await?, "$3\r\napp\r\n");
    let bad = c.call(&["HELLO", "3", "AUTH", "alice", "x"]).await?;
    assert_eq!(bad, wrongpass);

    // Before AUTH a client cannot make the proxy buffer a large request.
    let mut big = Conn::open(addr).await?;
    let value = "x".repeat(100 * 1024);
    big.send(&["SET", "big", &value]).await?;
    let e = big.frame(T).await?;
    assert!(e.starts_with("-ERR Protocol error"), "{e}");
    big.closed_within(T).await?;
    // ... which an authenticated one can.
    assert_eq!(c.call(&["SET", "big", &value]).await?, "+OK\r\n");

    // Deleting a user disconnects its clients; the other users' stay.
    let mut other = Conn::open(addr).await?;
    assert_eq!(other.call(&["AUTH", "default-secret-2"]).await?, "+OK\r\n");
    let admin = stack.admin()?;
    admin
        .delete_user(&Actor::config(), &service(&stack), "alice")
        .await?;
    c.closed_within(T).await?;
    let mut again = Conn::open(addr).await?;
    assert_eq!(
        again.call(&["AUTH", "alice", "alice-secret-1"]).await?,
        wrongpass
    );
    assert_eq!(other.call(&["PING"]).await?, "+PONG\r\n");
    assert!(stack.proxies[0].shared.metrics.auth_failures.get() >= 5);

    // A new password replaces the old one, live.
    let v = admin
        .put_user(&Actor::config(), &service(&stack), "default", "rotated-3")
        .await?
        .1;
    applied(&mut stack, v).await?;
    let mut rotated = Conn::open(addr).await?;
    assert_eq!(
        rotated.call(&["AUTH", "default-secret-2"]).await?,
        wrongpass
    );
    assert_eq!(rotated.call(&["AUTH", "rotated-3"]).await?, "+OK\r\n");

    // Only salted hashes are stored: no password appears in the database files.
    for entry in std::fs::read_dir(stack.data_dir())? {
        let bytes = std::fs::read(entry?.path())?;
        for secret in ["alice-secret-1", "default-secret-2", "rotated-3"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} stored in clear"
            );
        }
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_users_auth_behaves_as_redis_without_a_password() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut c = Conn::open(stack.proxies[0].addr).await?;
    assert_eq!(c.call(&["GET", "nokey"]).await?, "$-1\r\n");
    assert!(
        c.call(&["AUTH", "pw"])
            .await?
            .starts_with("-ERR AUTH <password> called without any password configured")
    );
    // The default user has no password: any password is accepted for it, as on Redis.
    assert_eq!(c.call(&["AUTH", "default", "anything"]).await?, "+OK\r\n");
    assert!(
        c.call(&["HELLO", "3", "AUTH", "default", "anything"])
            .await?
            .starts_with("%7\r\n")
    );
    assert!(
        c.call(&["AUTH", "someone", "pw"])
            .await?
            .starts_with("-WRONGPASS")
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_refuse_commands_and_change_live() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions {
        rules: vec![CommandRule::new("flushall", Target::Deny).map_err(anyhow::Error::msg)?],
        ..StackOptions::default()
    })
    .await?;
    let mut c = Conn::open(stack.proxies[0].addr).await?;
    let name = service(&stack);
    let denied =
        |cmd: &str| format!("-ERR pivot: '{cmd}' is denied on service '{name}' by a rule\r\n");
    assert_eq!(c.call(&["SET", "keep", "1"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["FLUSHALL"]).await?, denied("flushall"));
    assert_eq!(c.call(&["flushAll", "ASYNC"]).await?, denied("flushall"));
    // Inside MULTI a denied command aborts the transaction, as a refused command does.
    assert_eq!(c.call(&["MULTI"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["SET", "keep", "2"]).await?, "+QUEUED\r\n");
    assert_eq!(c.call(&["FLUSHALL"]).await?, denied("flushall"));
    assert!(c.call(&["EXEC"]).await?.starts_with("-EXECABORT"));
    assert_eq!(c.call(&["GET", "keep"]).await?, "$1\r\n1\r\n");
    assert!(
        c.call(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await?
            .starts_with("+OK")
    );

    // New rules, applied live: CONFIG SET denied, CONFIG GET not, FLUSHALL allowed again.
    let admin = stack.admin()?;
    let v = admin
        .set_rules(
            &Actor::config(),
            &service(&stack),
            vec![CommandRule::new("config|set", Target::Deny).map_err(anyhow::Error::msg)?],
        )
        .await?;
    applied(&mut stack, v).await?;
    assert_eq!(
        c.call(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await?,
        denied("config")
    );
    assert!(
        c.call(&["CONFIG", "GET", "maxmemory-policy"])
            .await?
            .starts_with("*2\r\n")
    );
    assert_eq!(c.call(&["FLUSHALL"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["GET", "keep"]).await?, "$-1\r\n");
    // Invalid rules are refused by the control plane.
    assert!(CommandRule::new("a b", Target::Deny).is_err());
    assert!(
        admin
            .set_rules(&Actor::config(), "no-such-service", vec![])
            .await
            .is_err()
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_no_evict_and_info() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut c = Conn::open(stack.proxies[0].addr).await?;
    // OFF: nothing until ON, whose OK is the next thing read.
    c.send(&["CLIENT", "REPLY", "OFF"]).await?;
    c.send(&["SET", "r", "1"]).await?;
    c.send(&["INCR", "r"]).await?;
    c.send(&["GET", "nokey"]).await?;
    c.send(&["NOSUCHCOMMAND"]).await?;
    assert!(c.silent_for(Duration::from_millis(300)).await?);
    assert_eq!(c.call(&["CLIENT", "REPLY", "ON"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["GET", "r"]).await?, "$1\r\n2\r\n");
    // SKIP: only the next command's reply is dropped.
    c.send(&["CLIENT", "REPLY", "SKIP"]).await?;
    c.send(&["INCR", "r"]).await?;
    assert_eq!(c.call(&["GET", "r"]).await?, "$1\r\n3\r\n");
    assert_eq!(
        c.call(&["CLIENT", "REPLY", "MAYBE"]).await?,
        "-ERR syntax error\r\n"
    );
    assert_eq!(c.call(&["CLIENT", "NO-EVICT", "on"]).await?, "+OK\r\n");
    let info = c.call(&["CLIENT", "INFO"]).await?;
    assert!(info.contains(" flags=e "), "{info}");
    assert_eq!(c.call(&["CLIENT", "NO-EVICT", "off"]).await?, "+OK\r\n");
    assert!(c.call(&["CLIENT", "INFO"]).await?.contains(" flags=N "));
    assert!(
        c.call(&["CLIENT", "NOPE"])
            .await?
            .starts_with("-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")
    );

    // INFO: the master's, plus a `# Proxy` section.
    let info = c.call(&["INFO"]).await?;
    assert!(info.contains("role:master\r\n"), "{info}");
    assert!(info.contains("\r\n\r\n# Proxy\r\npivot_version:"), "{info}");
    assert!(
        info.contains(&format!("service:{}\r\n", stack.topology.master_name())),
        "{info}"
    );
    assert!(info.contains("readable_replicas:2\r\n"), "{info}");
    let server = c.call(&["INFO", "server"]).await?;
    assert!(server.contains("redis_version:") && !server.contains("# Proxy"));
    let proxy = c.call(&["INFO", "proxy"]).await?;
    assert!(
        proxy.contains("# Proxy\r\n") && !proxy.contains("redis_version:"),
        "{proxy}"
    );
    // RESP3: a verbatim string, same content.
    assert!(c.call(&["HELLO", "3"]).await?.starts_with("%7"));
    let v = c.call(&["INFO"]).await?;
    assert!(v.starts_with('=') && v.contains("txt:# Server") && v.contains("# Proxy"));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_delivers_invalidations_on_a_dedicated_connection() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let addr = stack.proxies[0].addr;
    let mut writer = Conn::open(addr).await?;
    assert_eq!(writer.call(&["SET", "cached", "1"]).await?, "+OK\r\n");
    let mut c = Conn::open(addr).await?;
    assert!(c.call(&["HELLO", "3"]).await?.starts_with("%7"));
    assert_eq!(c.call(&["CLIENT", "TRACKING", "ON"]).await?, "+OK\r\n");
    let info = c.call(&["CLIENT", "TRACKINGINFO"]).await?;
    assert!(info.contains("$2\r\non\r\n"), "{info}");
    assert!(c.call(&["CLIENT", "INFO"]).await?.contains(" flags=t "));
    // Read it (tracked), then another client changes it: an invalidation push arrives.
    assert_eq!(c.call(&["GET", "cached"]).await?, "$1\r\n1\r\n");
    assert_eq!(writer.call(&["SET", "cached", "2"]).await?, "+OK\r\n");
    let push = c.frame(T).await?;
    assert_eq!(push, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$6\r\ncached\r\n");
    // Its own commands still answer, in order.
    assert_eq!(c.call(&["GET", "cached"]).await?, "$1\r\n2\r\n");
    assert_eq!(c.call(&["CLIENT", "TRACKING", "OFF"]).await?, "+OK\r\n");
    assert_eq!(writer.call(&["SET", "cached", "3"]).await?, "+OK\r\n");
    assert!(c.silent_for(Duration::from_millis(300)).await?);
    assert_eq!(c.call(&["GET", "cached"]).await?, "$1\r\n3\r\n");
    // REDIRECT would name a Redis client id the proxy's clients do not have.
    let e = c
        .call(&["CLIENT", "TRACKING", "ON", "REDIRECT", "5"])
        .await?;
    assert!(
        e.starts_with("-ERR pivot: CLIENT TRACKING with REDIRECT"),
        "{e}"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_the_masters_commands() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let addr = stack.proxies[0].addr;
    let mut m = Conn::open(addr).await?;
    assert_eq!(m.call(&["MONITOR"]).await?, "+OK\r\n");
    let mut c = Conn::open(addr).await?;
    assert_eq!(c.call(&["SET", "monitored-key", "1"]).await?, "+OK\r\n");
    let deadline = Instant::now() + T;
    loop {
        let line = m
            .frame(deadline.saturating_duration_since(Instant::now()))
            .await?;
        assert!(line.starts_with('+'), "{line}");
        if line.contains("\"SET\" \"monitored-key\" \"1\"") {
            break;
        }
    }
    assert!(
        m.call(&["GET", "x"])
            .await?
            .starts_with("-ERR pivot: 'get' in MONITOR mode")
    );
    assert!(
        stack.proxies[0]
            .shared
            .clients
            .list()
            .iter()
            .any(|cl| cl.line().contains("flags=O"))
    );
    assert_eq!(m.call(&["RESET"]).await?, "+RESET\r\n");
    assert_eq!(m.call(&["GET", "monitored-key"]).await?, "$1\r\n1\r\n");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_the_replicas_that_have_the_clients_writes() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut c = Conn::open(stack.proxies[0].addr).await?;
    assert_eq!(c.call(&["SET", "w", "1"]).await?, "+OK\r\n");
    // Both replicas acknowledge the write.
    assert_eq!(c.call(&["WAIT", "2", "5000"]).await?, ":2\r\n");
    // With one replica stopped, WAIT for two times out with the one that has it.
    stack.topology.node(2).pause()?;
    assert_eq!(c.call(&["SET", "w", "2"]).await?, "+OK\r\n");
    let started = Instant::now();
    assert_eq!(c.call(&["WAIT", "2", "300"]).await?, ":1\r\n");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    stack.topology.node(2).resume()?;
    assert_eq!(c.call(&["WAIT", "2", "5000"]).await?, ":2\r\n");
    assert_eq!(
        c.call(&["WAIT", "1"]).await?,
        "-ERR wrong number of arguments for 'wait' command\r\n"
    );
    stack.shutdown().await
}
