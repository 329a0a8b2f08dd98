//! Client features that need connection state, through the proxy against real Redis:
//! transactions, blocking commands, SELECT, RESP3. Where Redis's own answer is the
//! reference, the same session runs against the master directly and through the proxy and
//! the raw replies must be identical: the corpus of such sessions is in `fidelity_corpus`.

mod common;
mod fidelity_corpus;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{connect, raw_exchange, wait_until};
use fidelity_corpus::SESSIONS;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// Encodes a command as RESP.
fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A raw RESP session: sends commands one at a time and returns each raw reply.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Result<Raw> {
        Ok(Raw {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Sends one command and reads its reply (one complete frame).
    async fn call(&mut self, args: &[&str]) -> Result<String> {
        self.stream.write_all(&cmd(args)).await?;
        self.reply().await
    }

    async fn reply(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.frame().await?).into_owned())
    }

    /// The next complete frame, raw.
    async fn frame(&mut self) -> Result<Vec<u8>> {
        let deadline = Instant::now() + T;
        loop {
            let mut scanner =
                pivot_proxy::resp::Scanner::new(pivot_proxy::resp::Mode::Reply, 1 << 30);
            if let Some(f) = scanner.scan(&self.buf)? {
                return Ok(self.buf.drain(..f.len).collect());
            }
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .context("no reply in time")??;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The subscriptions a session holds (and its protocol), to know how many frames a command
/// brings: an (un)subscribe command one per channel named, or one per subscription dropped
/// (at least one); anything else one, except a RESP3 subscriber's `PUBLISH` to its own
/// channel (the message, then the reply).
#[derive(Default)]
struct Subscriptions {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
    shard_channels: BTreeSet<String>,
    resp3: bool,
}

impl Subscriptions {
    fn frames(&mut self, args: &[&str]) -> usize {
        let name = args[0].to_ascii_uppercase();
        let names = args[1..].iter().map(|a| a.to_string());
        let set = match name.as_str() {
            "SUBSCRIBE" | "UNSUBSCRIBE" => &mut self.channels,
            "PSUBSCRIBE" | "PUNSUBSCRIBE" => &mut self.patterns,
            "SSUBSCRIBE" | "SUNSUBSCRIBE" => &mut self.shard_channels,
            "RESET" => {
                *self = Subscriptions::default();
                return 1;
            }
            "HELLO" => {
                match args.get(1).copied() {
                    Some("3") => self.resp3 = true,
                    Some("2") => self.resp3 = false,
                    _ => {}
                }
                return 1;
            }
            "PUBLISH" if self.resp3 && self.channels.contains(args[1]) => return 2,
            _ => return 1,
        };
        if !name.contains("UNSUB") {
            set.extend(names);
            args.len().saturating_sub(1).max(1)
        } else if args.len() == 1 {
            std::mem::take(set).len().max(1)
        } else {
            for n in names {
                set.remove(&n);
            }
            args.len() - 1
        }
    }
}

/// `HELLO`'s reply with its `id` (the proxy's own client id, a documented difference)
/// masked.
fn mask_hello_id(reply: &[u8]) -> Vec<u8> {
    const ID: &[u8] = b"$2\r\nid\r\n:";
    let Some(at) = reply.windows(ID.len()).position(|w| w == ID) else {
        return reply.to_vec();
    };
    let digits = at + ID.len();
    let end = digits
        + reply[digits..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    [&reply[..digits], b"<id>", &reply[end..]].concat()
}

/// Runs `session` (commands with `{p}` standing for a key prefix) against `addr`: the raw
/// reply frames of each command, concatenated.
async fn run_session(addr: SocketAddr, prefix: &str, session: &[&[&str]]) -> Result<Vec<Vec<u8>>> {
    let mut raw = Raw::connect(addr).await?;
    let mut subscriptions = Subscriptions::default();
    let mut out = Vec::new();
    for (i, c) in session.iter().enumerate() {
        let args: Vec<String> = c.iter().map(|a| a.replace("{p}", prefix)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        raw.stream.write_all(&cmd(&args)).await?;
        let mut reply = Vec::new();
        for _ in 0..subscriptions.frames(&args) {
            let frame = raw
                .frame()
                .await
                .with_context(|| format!("command {i} ({c:?})"))?;
            reply.extend_from_slice(&frame);
        }
        if args[0].eq_ignore_ascii_case("HELLO") {
            reply = mask_hello_id(&reply);
        }
        out.push(reply);
    }
    Ok(out)
}

/// Back to a blank master between runs: no keys in any database, no scripts or functions,
/// and no subscriber left from the previous run (its connection closes asynchronously; the
/// Sentinels' own subscriptions stay).
async fn blank_master(m: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Result<()> {
    for c in [
        &["FLUSHALL"][..],
        &["SCRIPT", "FLUSH"],
        &["FUNCTION", "FLUSH"],
    ] {
        let _: () = redis::cmd(c[0]).arg(&c[1..]).query_async(m).await?;
    }
    wait_until("no subscriber left on the master", T, || {
        let mut m = m.clone();
        let pattern = format!("{prefix}*");
        async move {
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg(&pattern)
                .query_async(&mut m)
                .await
                .ok()?;
            let shard: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .arg(&pattern)
                .query_async(&mut m)
                .await
                .ok()?;
            let patterns: i64 = redis::cmd("PUBSUB")
                .arg("NUMPAT")
                .query_async(&mut m)
                .await
                .ok()?;
            (channels.is_empty() && shard.is_empty() && patterns == 0).then_some(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_match_redis_byte_for_byte() -> Result<()> {
    common::init_tracing();
    // The corpus cannot silently shrink.
    let commands: usize = SESSIONS.iter().map(|(_, s)| s.len()).sum();
    assert!(commands >= 300, "the corpus has {commands} commands");
    let stack = Stack::start(StackOptions {
        read_policy: Some(pivot_control_plane::ReadPolicy::MasterOnly),
        ..StackOptions::default()
    })
    .await?;
    let master = stack.topology.node(0).addr();
    let proxy = stack.proxies[0].addr;
    let mut m = stack.topology.node(0).connection().await?;
    let started = Instant::now();
    let mut differences = Vec::new();
    for (family, session) in SESSIONS {
        // The same keys from a blank master each time, so that the replies compare.
        blank_master(&mut m, "t:").await?;
        let direct = run_session(master, "t:", session)
            .await
            .with_context(|| format!("{family}: directly"))?;
        blank_master(&mut m, "t:").await?;
        let proxied = run_session(proxy, "t:", session)
            .await
            .with_context(|| format!("{family}: through the proxy"))?;
        for ((c, d), p) in session.iter().zip(&direct).zip(&proxied) {
            if d != p {
                differences.push(format!(
                    "{family}: {c:?}\n  direct:  {:?}\n  proxied: {:?}",
                    String::from_utf8_lossy(d),
                    String::from_utf8_lossy(p)
                ));
            }
        }
    }
    eprintln!(
        "{commands} commands in {} sessions, each run twice, in {:?}",
        SESSIONS.len(),
        started.elapsed()
    );
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_detects_a_conflicting_write_and_connections_are_reused() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let mut a = Raw::connect(proxy.addr).await?;
    let mut b = connect(&proxy.client(), T).await?;
    let _: () = b.set("w", "0").await?;

    assert_eq!(a.call(&["WATCH", "w"]).await?, "+OK\r\n");
    assert_eq!(a.call(&["GET", "w"]).await?, "$1\r\n0\r\n");
    let _: () = b.set("w", "other").await?;
    assert_eq!(a.call(&["MULTI"]).await?, "+OK\r\n");
    assert_eq!(a.call(&["SET", "w", "mine"]).await?, "+QUEUED\r\n");
    assert_eq!(
        a.call(&["EXEC"]).await?,
        "*-1\r\n",
        "the watched key changed"
    );
    assert_eq!(b.get::<_, String>("w").await?, "other");
    // Without a conflict it commits.
    assert_eq!(a.call(&["WATCH", "w"]).await?, "+OK\r\n");
    assert_eq!(a.call(&["MULTI"]).await?, "+OK\r\n");
    assert_eq!(a.call(&["SET", "w", "mine"]).await?, "+QUEUED\r\n");
    assert_eq!(a.call(&["EXEC"]).await?, "*1\r\n+OK\r\n");
    assert_eq!(b.get::<_, String>("w").await?, "mine");

    // A command the proxy cannot queue aborts the transaction as Redis would.
    assert_eq!(a.call(&["MULTI"]).await?, "+OK\r\n");
    assert!(
        a.call(&["SELECT", "1"])
            .await?
            .starts_with("-ERR pivot: 'select' is not supported inside MULTI")
    );
    assert_eq!(a.call(&["SET", "w", "lost"]).await?, "+QUEUED\r\n");
    assert!(a.call(&["EXEC"]).await?.starts_with("-EXECABORT"));
    assert_eq!(b.get::<_, String>("w").await?, "mine");

    // Transactions on fresh client connections reuse dedicated connections: the master
    // sees a handful of connections, not one per transaction.
    let master = stack.topology.node(0);
    let before = connected_clients(master).await?;
    for i in 0..40 {
        let mut c = Raw::connect(proxy.addr).await?;
        c.call(&["MULTI"]).await?;
        c.call(&["INCR", "tx:count"]).await?;
        assert!(
            c.call(&["EXEC"]).await?.starts_with("*1\r\n:"),
            "transaction {i}"
        );
    }
    let after = connected_clients(master).await?;
    assert!(
        after <= before + 2,
        "master connections {before} -> {after}"
    );
    assert_eq!(b.get::<_, i64>("tx:count").await?, 40);
    stack.shutdown().await
}

async fn connected_clients(node: &pivot_sandbox::RedisNode) -> Result<u64> {
    node.info("clients")
        .await?
        .get("connected_clients")
        .and_then(|v| v.parse().ok())
        .context("connected_clients")
}

async fn blocked_clients(node: &pivot_sandbox::RedisNode) -> Result<u64> {
    node.info("clients")
        .await?
        .get("blocked_clients")
        .and_then(|v| v.parse().ok())
        .context("blocked_clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_wake_dont_block_others_and_cancel_on_disconnect() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let master = stack.topology.node(0);

    // A blocked pop is woken by another client's push through the same proxy.
    let waiter = {
        let client = proxy.client();
        tokio::spawn(async move {
            let mut c = connect(&client, Duration::from_secs(30)).await?;
            let r: Option<(String, String)> = c.blpop("jobs", 0.0).await?;
            anyhow::Ok(r)
        })
    };
    wait_until("the pop to block on the master", T, || async {
        (blocked_clients(master).await.ok()? == 1).then_some(())
    })
    .await?;
    // Meanwhile every other client is served at once (no head-of-line blocking).
    let mut other = connect(&proxy.client(), T).await?;
    let started = Instant::now();
    for i in 0..200 {
        let _: () = other.set(format!("hol:{i}"), i).await?;
        let _: i64 = other.get(format!("hol:{i}")).await?;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "400 commands took {took:?} beside a blocked pop"
    );
    let _: () = other.rpush("jobs", "job-1").await?;
    let got = tokio::time::timeout(T, waiter).await???;
    assert_eq!(got, Some(("jobs".to_string(), "job-1".to_string())));

    // A timeout is honoured.
    let started = Instant::now();
    let r: Option<(String, String)> = other.blpop("empty", 0.3).await?;
    assert_eq!(r, None);
    assert!(started.elapsed() >= Duration::from_millis(290));

    // A client that disconnects while blocked is no longer blocked on Redis, so it takes
    // nothing from the queue.
    {
        let mut s = TcpStream::connect(proxy.addr).await?;
        s.write_all(&cmd(&["BLPOP", "gone", "0"])).await?;
        wait_until("the pop to block", T, || async {
            (blocked_clients(master).await.ok()? == 1).then_some(())
        })
        .await?;
    }
    wait_until("the abandoned pop to be cancelled", T, || async {
        (blocked_clients(master).await.ok()? == 0).then_some(())
    })
    .await?;
    let _: () = other.rpush("gone", "kept").await?;
    assert_eq!(other.llen::<_, i64>("gone").await?, 1);

    // XREAD BLOCK (a read: served by a replica) wakes on an XADD through the proxy.
    let reader = {
        let client = proxy.client();
        tokio::spawn(async move {
            let mut c = connect(&client, Duration::from_secs(30)).await?;
            let v: redis::Value = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(10_000)
                .arg("STREAMS")
                .arg("events")
                .arg("$")
                .query_async(&mut c)
                .await?;
            anyhow::Ok(v)
        })
    };
    wait_until("the XREAD to block on a replica", T, || async {
        for n in &stack.topology.nodes()[1..] {
            if blocked_clients(n).await.ok()? == 1 {
                return Some(());
            }
        }
        None
    })
    .await?;
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("k")
        .arg("v")
        .query_async(&mut other)
        .await?;
    let v = tokio::time::timeout(T, reader).await???;
    assert!(format!("{v:?}").contains("events"), "{v:?}");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_databases_and_resp3() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let master = stack.topology.node(0);
    let mut c = Raw::connect(proxy.addr).await?;

    assert_eq!(c.call(&["SELECT", "2"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["SET", "k", "in-two"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["GET", "k"]).await?, "$6\r\nin-two\r\n");
    let mut m = master.connection().await?;
    let _: () = redis::cmd("SELECT").arg(2).query_async(&mut m).await?;
    assert_eq!(m.get::<_, String>("k").await?, "in-two");
    let _: () = redis::cmd("SELECT").arg(0).query_async(&mut m).await?;
    assert_eq!(m.get::<_, Option<String>>("k").await?, None);
    // Database commands work as on Redis.
    assert_eq!(c.call(&["COPY", "k", "k2", "DB", "5"]).await?, ":1\r\n");
    assert_eq!(c.call(&["MOVE", "k", "3"]).await?, ":1\r\n");
    assert_eq!(c.call(&["SWAPDB", "3", "4"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["SELECT", "4"]).await?, "+OK\r\n");
    assert_eq!(c.call(&["GET", "k"]).await?, "$6\r\nin-two\r\n");
    assert_eq!(
        c.call(&["SELECT", "16"]).await?,
        "-ERR DB index is out of range\r\n"
    );
    assert_eq!(
        c.call(&["SELECT", "x"]).await?,
        "-ERR value is not an integer or out of range\r\n"
    );
    // A transaction in a selected database runs there.
    assert_eq!(c.call(&["MULTI"]).await?, "+OK\r\n");
    c.call(&["SET", "tx", "db4"]).await?;
    assert_eq!(c.call(&["EXEC"]).await?, "*1\r\n+OK\r\n");
    let _: () = redis::cmd("SELECT").arg(4).query_async(&mut m).await?;
    assert_eq!(m.get::<_, String>("tx").await?, "db4");

    // RESP3: HELLO 3 answers a map, and replies come in RESP3 from then on.
    let mut r = Raw::connect(proxy.addr).await?;
    let hello = r.call(&["HELLO", "3"]).await?;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("proto\r\n:3\r\n"), "{hello}");
    assert!(hello.contains("7.0"), "the master's version: {hello}");
    assert_eq!(r.call(&["HSET", "h", "f", "v"]).await?, ":1\r\n");
    assert_eq!(
        r.call(&["HGETALL", "h"]).await?,
        "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(r.call(&["GET", "missing"]).await?, "_\r\n");
    assert_eq!(r.call(&["CLIENT", "GETNAME"]).await?, "_\r\n");
    // Back to RESP2.
    assert!(r.call(&["HELLO", "2"]).await?.starts_with("*14\r\n"));
    assert_eq!(r.call(&["GET", "missing"]).await?, "$-1\r\n");
    assert_eq!(
        r.call(&["HGETALL", "h"]).await?,
        "*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    // RESET returns to a fresh connection's state.
    r.call(&["HELLO", "3"]).await?;
    r.call(&["SELECT", "4"]).await?;
    assert_eq!(r.call(&["RESET"]).await?, "+RESET\r\n");
    assert_eq!(r.call(&["GET", "tx"]).await?, "$-1\r\n");

    // A bad protocol version is refused as Redis refuses it.
    let out = raw_exchange(proxy.addr, &cmd(&["HELLO", "4"]), 10).await?;
    assert!(
        String::from_utf8_lossy(&out).starts_with("-NOPROTO"),
        "{out:?}"
    );
    stack.shutdown().await
}

impl Raw {
    /// Sends one command and reads `n` reply frames, concatenated.
    async fn call_n(&mut self, args: &[&str], n: usize) -> Result<String> {
        self.stream.write_all(&cmd(args)).await?;
        let mut out = String::new();
        for _ in 0..n {
            out.push_str(&self.reply().await?);
        }
        Ok(out)
    }
}

/// Subscriber-mode replies, directly and through the proxy: (command, frames it brings).
const PUBSUB_SESSION: &[(&[&str], usize)] = &[
    (&["SUBSCRIBE", "a", "b"], 2),
    (&["PSUBSCRIBE", "n.*"], 1),
    (&["PING"], 1),
    (&["PING", "hello"], 1),
    (&["GET", "k"], 1),
    (&["SUBSCRIBE", "a"], 1),
    (&["UNSUBSCRIBE", "b", "zzz"], 2),
    (&["UNSUBSCRIBE"], 1),
    (&["PUNSUBSCRIBE"], 1),
    // Out of subscriber mode: ordinary commands again.
    (&["PING"], 1),
    (&["SET", "k", "v"], 1),
    (&["GET", "k"], 1),
    (&["UNSUBSCRIBE", "x", "y"], 2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_matches_redis_and_delivers_messages_from_a_replica() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let master = stack.topology.node(0);

    // The replies of a subscriber session, byte for byte as Redis sends them.
    let mut m = master.connection().await?;
    let mut direct = Raw::connect(master.addr()).await?;
    let mut proxied = Raw::connect(proxy.addr).await?;
    for (args, frames) in PUBSUB_SESSION {
        let _: () = redis::cmd("DEL").arg("k").query_async(&mut m).await?;
        let d = direct.call_n(args, *frames).await?;
        let _: () = redis::cmd("DEL").arg("k").query_async(&mut m).await?;
        let p = proxied.call_n(args, *frames).await?;
        assert_eq!(d, p, "{args:?}");
    }
    drop(direct);

    // A subscriber is served by a replica; messages published through the proxy (on the
    // master) reach it, for channels and patterns alike.
    let mut sub = Raw::connect(proxy.addr).await?;
    sub.call_n(&["SUBSCRIBE", "news"], 1).await?;
    sub.call_n(&["PSUBSCRIBE", "alerts.*"], 1).await?;
    let served_by_replica = wait_until("the subscription on a replica", T, || async {
        for n in &stack.topology.nodes()[1..] {
            let mut c = n.connection().await.ok()?;
            let v: Vec<redis::Value> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("news")
                .query_async(&mut c)
                .await
                .ok()?;
            if redis::from_redis_value_ref::<i64>(v.get(1)?).ok()? == 1 {
                return Some(n.addr());
            }
        }
        None
    })
    .await?;
    let mut publisher = connect(&proxy.client(), T).await?;
    // Replication carries the publish to the replica: wait until it counts a receiver.
    wait_until("a receiver for the publish", T, || {
        let mut p = publisher.clone();
        async move { (p.publish::<_, _, i64>("news", "warm-up").await.ok()? >= 0).then_some(()) }
    })
    .await?;
    assert_eq!(
        sub.reply().await?,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$7\r\nwarm-up\r\n"
    );
    let _: i64 = publisher.publish("alerts.disk", "full").await?;
    assert_eq!(
        sub.reply().await?,
        "*4\r\n$8\r\npmessage\r\n$8\r\nalerts.*\r\n$11\r\nalerts.disk\r\n$4\r\nfull\r\n"
    );
    // Many messages, and a PING in between, all arrive, in order.
    for i in 0..200 {
        let _: i64 = publisher.publish("news", format!("n{i}")).await?;
    }
    for i in 0..200 {
        let m = sub.reply().await?;
        assert!(
            m.ends_with(&format!(
                "$4\r\nnews\r\n${}\r\nn{i}\r\n",
                format!("n{i}").len()
            )),
            "{m}"
        );
    }
    assert_eq!(
        sub.call_n(&["PING"], 1).await?,
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    );
    eprintln!("subscriber served by replica {served_by_replica}");

    // RESP3: subscriptions are pushes, and other commands work while subscribed.
    let mut r3 = Raw::connect(proxy.addr).await?;
    r3.call(&["HELLO", "3"]).await?;
    assert_eq!(
        r3.call_n(&["SUBSCRIBE", "r3"], 1).await?,
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nr3\r\n:1\r\n"
    );
    assert_eq!(r3.call(&["SET", "r3k", "v"]).await?, "+OK\r\n");
    assert_eq!(r3.call(&["GET", "r3k"]).await?, "$1\r\nv\r\n");
    wait_until("a receiver for r3", T, || {
        let mut p = publisher.clone();
        async move { (p.publish::<_, _, i64>("r3", "first").await.ok()? >= 0).then_some(()) }
    })
    .await?;
    assert_eq!(
        r3.reply().await?,
        ">3\r\n$7\r\nmessage\r\n$2\r\nr3\r\n$5\r\nfirst\r\n"
    );

    // A subscriber that disconnects is gone from Redis too.
    drop(sub);
    wait_until("the subscription to end", T, || async {
        let mut c = stack
            .topology
            .node_by_addr(served_by_replica)?
            .connection()
            .await
            .ok()?;
        let v: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("news")
            .query_async(&mut c)
            .await
            .ok()?;
        (redis::from_redis_value_ref::<i64>(v.get(1)?).ok()? == 0).then_some(())
    })
    .await?;
    stack.shutdown().await
}

async fn script_exists(node: &pivot_sandbox::RedisNode, sha: &str) -> Result<bool> {
    let mut c = node.connection().await?;
    let v: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha)
        .query_async(&mut c)
        .await?;
    Ok(v.first() == Some(&1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reach_every_node_and_noscript_falls_back_to_the_master() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let master = stack.topology.node(0);
    let mut m = master.connection().await?;
    let _: () = m.set("sk", "value").await?;

    // SCRIPT LOAD through the proxy loads it on every node.
    let mut c = connect(&proxy.client(), T).await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1])")
        .query_async(&mut c)
        .await?;
    for n in stack.topology.nodes() {
        wait_until("the script on every node", T, || async {
            script_exists(n, &sha).await.ok()?.then_some(())
        })
        .await?;
    }
    // EVALSHA_RO on fresh connections runs on the replicas (the key has replicated).
    for n in &stack.topology.nodes()[1..] {
        let mut r = n.connection().await?;
        wait_until("the key on the replica", T, || {
            let mut r = r.clone();
            async move { (r.get::<_, Option<String>>("sk").await.ok()?.is_some()).then_some(()) }
        })
        .await?;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut r)
            .await?;
    }
    let evalsha_ro = |sha: String| {
        let client = proxy.client();
        async move {
            let mut fresh = connect(&client, T).await?;
            let v: String = redis::cmd("EVALSHA_RO")
                .arg(&sha)
                .arg(1)
                .arg("sk")
                .query_async(&mut fresh)
                .await?;
            anyhow::Ok(v)
        }
    };
    for _ in 0..4 {
        assert_eq!(evalsha_ro(sha.clone()).await?, "value");
    }
    let mut on_replicas = 0;
    for n in &stack.topology.nodes()[1..] {
        on_replicas += common::calls(n, "evalsha_ro").await?;
    }
    assert_eq!(on_replicas, 4, "EVALSHA_RO served by the replicas");

    // A script loaded on the master alone: the replica answers NOSCRIPT (nothing ran), and
    // the proxy runs it on the master instead.
    let only_master: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("if string.find(redis.call('INFO', 'replication'), 'role:master') then return 'from master' else return 'from replica' end")
        .query_async(&mut m)
        .await?;
    for _ in 0..4 {
        let mut fresh = connect(&proxy.client(), T).await?;
        let v: String = redis::cmd("EVALSHA_RO")
            .arg(&only_master)
            .arg(0)
            .query_async(&mut fresh)
            .await?;
        assert_eq!(v, "from master");
    }

    // SCRIPT FLUSH through the proxy flushes every node.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await?;
    for n in stack.topology.nodes() {
        wait_until("the script gone from every node", T, || async {
            (!script_exists(n, &sha).await.ok()?).then_some(())
        })
        .await?;
    }
    let err = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(0)
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("noscript"), "{err}");
    stack.shutdown().await
}

/// Nodes where only the `pivot` ACL user may use strings and lists: a proxy path that
/// forgot to authenticate fails with NOPERM.
fn acl_topology() -> pivot_sandbox::TopologyOptions {
    pivot_sandbox::TopologyOptions {
        extra_redis_config: vec![
            "user default on nopass ~* &* +@all -@string -@list".into(),
            "user pivot on >s3cret ~* &* +@all".into(),
        ],
        ..pivot_sandbox::TopologyOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_connection_authenticates_with_the_service_credentials() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        topology: acl_topology(),
        backend_auth: Some("pivot:s3cret".parse().map_err(anyhow::Error::msg)?),
        ..StackOptions::default()
    })
    .await?;
    let proxy = &stack.proxies[0];
    // Shared connections, master and replica.
    let mut c = Raw::connect(proxy.addr).await?;
    assert_eq!(c.call(&["SET", "k", "v"]).await?, "+OK\r\n");
    let mut fresh = Raw::connect(proxy.addr).await?;
    wait_until("the replica read", T, || async {
        let mut f = Raw::connect(proxy.addr).await.ok()?;
        (f.call(&["GET", "k"]).await.ok()? == "$1\r\nv\r\n").then_some(())
    })
    .await?;
    // Another database and RESP3: other pools, same credentials.
    assert_eq!(fresh.call(&["SELECT", "3"]).await?, "+OK\r\n");
    assert_eq!(fresh.call(&["SET", "k3", "v"]).await?, "+OK\r\n");
    fresh.call(&["HELLO", "3"]).await?;
    assert_eq!(fresh.call(&["GET", "k3"]).await?, "$1\r\nv\r\n");
    // Dedicated connections: a transaction and a blocking pop.
    assert_eq!(c.call(&["MULTI"]).await?, "+OK\r\n");
    c.call(&["LPUSH", "q", "x"]).await?;
    assert_eq!(c.call(&["EXEC"]).await?, "*1\r\n:1\r\n");
    assert_eq!(
        c.call(&["BLPOP", "q", "1"]).await?,
        "*2\r\n$1\r\nq\r\n$1\r\nx\r\n"
    );
    // A subscriber connection.
    let mut sub = Raw::connect(proxy.addr).await?;
    assert_eq!(
        sub.call_n(&["SUBSCRIBE", "ch"], 1).await?,
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    // Redis sees the proxy's connections as the `pivot` user.
    let mut pivot_conns = 0;
    for n in stack.topology.nodes() {
        let mut conn = n.connection().await?;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await?;
        pivot_conns += list.lines().filter(|l| l.contains(" user=pivot ")).count();
    }
    assert!(pivot_conns >= 4, "{pivot_conns} connections as user pivot");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_backend_credentials_fail_with_a_clear_error() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        topology: acl_topology(),
        backend_auth: Some("pivot:wrong".parse().map_err(anyhow::Error::msg)?),
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let cp = stack.control_plane.as_ref().context("running")?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = pivot_sandbox::stack::start_proxy("mymaster", cp.grpc_addr, any, any).await?;
    // It gets its config, but cannot load the command table: not ready.
    wait_until("a config with a master", T, || async {
        proxy.shared.table.load().master.is_some().then_some(())
    })
    .await?;
    assert_eq!(
        common::http_status(&format!("http://{}/readyz", proxy.admin_addr)).await?,
        503
    );
    let mut c = Raw::connect(proxy.addr).await?;
    let r = c.call(&["SET", "k", "v"]).await?;
    assert!(r.contains("handshake refused: WRONGPASS"), "{r}");
    proxy.stop().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_kill_and_connection_limits() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let mut me = Raw::connect(proxy.addr).await?;
    me.call(&["CLIENT", "SETNAME", "admin"]).await?;
    me.call(&["SELECT", "2"]).await?;
    let mut victim = Raw::connect(proxy.addr).await?;
    let victim_id = victim.call(&["CLIENT", "ID"]).await?;
    let victim_id = victim_id.trim_start_matches(':').trim().to_string();
    let mut subscriber = Raw::connect(proxy.addr).await?;
    subscriber.call_n(&["SUBSCRIBE", "x"], 1).await?;

    // CLIENT LIST shows the proxy's clients with their state.
    let list = me.call(&["CLIENT", "LIST"]).await?;
    assert!(
        list.contains(" name=admin ") && list.contains(" db=2 "),
        "{list}"
    );
    assert!(list.contains(&format!("id={victim_id} ")), "{list}");
    assert!(
        list.contains(" flags=P ") && list.contains(" sub=1 "),
        "{list}"
    );
    let pubsub = me.call(&["CLIENT", "LIST", "TYPE", "pubsub"]).await?;
    assert_eq!(pubsub.matches("id=").count(), 1, "{pubsub}");
    let info = me.call(&["CLIENT", "INFO"]).await?;
    assert!(
        info.contains(" name=admin ") && info.matches("id=").count() == 1,
        "{info}"
    );

    // CLIENT KILL closes the client it names, and counts.
    assert_eq!(
        me.call(&["CLIENT", "KILL", "ID", &victim_id]).await?,
        ":1\r\n"
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(T, victim.stream.read(&mut buf)).await??;
    assert_eq!(n, 0, "the killed client's connection is closed");
    assert_eq!(
        me.call(&["CLIENT", "KILL", "ADDR", "10.0.0.1:1"]).await?,
        ":0\r\n"
    );
    assert_eq!(
        me.call(&["CLIENT", "KILL", "10.0.0.1:1"]).await?,
        "-ERR No such client\r\n"
    );
    // SKIPME yes (the default) spares the caller.
    assert_eq!(
        me.call(&["CLIENT", "KILL", "TYPE", "normal"]).await?,
        ":0\r\n"
    );
    assert_eq!(me.call(&["PING"]).await?, "+PONG\r\n");

    // --max-clients and --client-idle-timeout.
    let cp = stack.control_plane.as_ref().context("running")?;
    let mut config =
        pivot_proxy::Config::for_service("mymaster", &format!("http://{}", cp.grpc_addr));
    config.max_clients = 2;
    config.client_idle_timeout = Duration::from_millis(300);
    let limited = pivot_sandbox::stack::start_proxy_with(config).await?;
    limited.wait_ready(T).await?;
    let mut a = Raw::connect(limited.addr).await?;
    let mut b = Raw::connect(limited.addr).await?;
    assert_eq!(a.call(&["PING"]).await?, "+PONG\r\n");
    assert_eq!(b.call(&["PING"]).await?, "+PONG\r\n");
    let third = raw_exchange(limited.addr, &cmd(&["PING"]), 64).await?;
    assert_eq!(third, b"-ERR max number of clients reached\r\n");
    // A client blocked longer than the idle timeout is not idle; one that sends nothing
    // is closed.
    let started = Instant::now();
    assert_eq!(b.call(&["BLPOP", "nothing", "0.6"]).await?, "*-1\r\n");
    assert_eq!(b.call(&["PING"]).await?, "+PONG\r\n");
    let n = tokio::time::timeout(T, a.stream.read(&mut buf)).await??;
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    limited.stop().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_writes_pins_the_connections_reads_to_the_master() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    for n in stack.topology.nodes() {
        common::reset_stats(n).await?;
    }
    let mut c = Raw::connect(stack.proxies[0].addr).await?;
    // EVAL carries no write flag on Redis 7.0, but the script writes.
    let r = c
        .call(&[
            "EVAL",
            "return redis.call('SET', KEYS[1], ARGV[1])",
            "1",
            "k",
            "v",
        ])
        .await?;
    assert_eq!(r, "+OK\r\n");
    for _ in 0..5 {
        assert_eq!(c.call(&["GET", "k"]).await?, "$1\r\nv\r\n");
    }
    assert_eq!(common::calls(stack.topology.node(0), "get").await?, 5);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_continues_on_the_replica_that_returned_its_cursor() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut m = stack.topology.node(0).connection().await?;
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("scan:{i}"), i).ignore();
    }
    let _: () = pipe.query_async(&mut m).await?;
    for n in &stack.topology.nodes()[1..] {
        let r = n.connection().await?;
        wait_until("keys replicated", T, || {
            let mut r = r.clone();
            async move { (r.get::<_, Option<i64>>("scan:499").await.ok()?.is_some()).then_some(()) }
        })
        .await?;
        common::reset_stats(n).await?;
    }
    // A full SCAN through the proxy (read-only connection: replicas) sees every key once...
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let mut cursor = 0u64;
    let mut seen = std::collections::HashSet::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(50)
            .query_async(&mut c)
            .await?;
        seen.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 500);
    // ...and every call of it ran on the same replica.
    let r1 = common::calls(stack.topology.node(1), "scan").await?;
    let r2 = common::calls(stack.topology.node(2), "scan").await?;
    assert!(
        r1 == 0 || r2 == 0,
        "scan calls split over replicas: {r1} / {r2}"
    );
    assert!(r1 + r2 > 1);
    stack.shutdown().await
}
