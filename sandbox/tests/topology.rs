//! Real `redis-server` and Sentinel processes: start-up, replication, failover, restart.

use std::time::{Duration, Instant};

use pivot_sandbox::{SandboxError, Topology, TopologyOptions};
use redis::AsyncCommands as _;

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn default_topology_replicates_and_sentinels_agree() {
    let started = Instant::now();
    let topology = Topology::start(TopologyOptions::default())
        .await
        .expect("topology starts");
    eprintln!("start() took {:?}", started.elapsed());

    assert_eq!(topology.nodes().len(), 3);
    assert_eq!(topology.sentinels().len(), 3);
    assert_eq!(topology.sentinel_addrs().len(), 3);
    assert_eq!(topology.master_name(), "mymaster");
    let master = topology.node(0);
    assert_eq!(master.role().await.expect("ROLE"), "master");
    assert!(master.addr().ip().is_loopback());
    assert_eq!(
        topology.node_by_addr(master.addr()).map(|n| n.port()),
        Some(master.port())
    );

    let mut conn = master.connection().await.expect("connect to master");
    let () = conn.set("greeting", "hello").await.expect("SET");

    for replica in &topology.nodes()[1..] {
        assert_eq!(replica.role().await.expect("ROLE"), "slave");
        let mut conn = replica.connection().await.expect("connect to replica");
        eventually(
            "the value on a replica",
            Duration::from_secs(5),
            async || {
                let value: Option<String> = conn.get("greeting").await.expect("GET");
                value.as_deref() == Some("hello")
            },
        )
        .await;
    }

    assert_eq!(
        topology.sentinel_master().await.expect("sentinel master"),
        master.addr()
    );
}

#[tokio::test]
async fn paused_master_is_replaced_and_rejoins_as_replica() {
    let topology = Topology::start(TopologyOptions::default())
        .await
        .expect("topology starts");
    let old = topology.node(0).addr();

    topology.node(0).pause().expect("SIGSTOP");
    let paused = Instant::now();
    let new = topology
        .wait_for_new_master(old, Duration::from_secs(10))
        .await
        .expect("Sentinels elect a new master");
    eprintln!(
        "new master {new} named {:?} after SIGSTOP",
        paused.elapsed()
    );
    assert_ne!(new, old);
    assert!(
        topology.nodes()[1..].iter().any(|n| n.addr() == new),
        "{new} is one of the replicas"
    );

    topology.node(0).resume().expect("SIGCONT");
    let resumed = Instant::now();
    topology
        .wait_for_replica_of(old, new, Duration::from_secs(20))
        .await
        .expect("old master becomes a replica of the new one");
    eprintln!(
        "old master replica of {new} {:?} after SIGCONT",
        resumed.elapsed()
    );
    assert_eq!(topology.node(0).role().await.expect("ROLE"), "slave");
}

#[tokio::test]
async fn killed_replica_restarts_on_its_port_and_resyncs() {
    let topology = Topology::start(TopologyOptions::default())
        .await
        .expect("topology starts");
    let replica = topology.node(1);
    let port = replica.port();
    let old_pid = replica.pid().expect("running");

    replica.kill().expect("SIGKILL");
    assert_eq!(replica.pid(), None);
    assert!(replica.connection().await.is_err(), "killed node refuses");
    assert!(replica.pause().is_err(), "no process to signal");

    let restarted = Instant::now();
    replica.restart().await.expect("restart");
    assert_eq!(replica.port(), port);
    assert_ne!(replica.pid(), Some(old_pid));
    let mut conn = replica.connection().await.expect("connect");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");

    topology
        .wait_for_replica_of(
            replica.addr(),
            topology.node(0).addr(),
            Duration::from_secs(10),
        )
        .await
        .expect("replica link up again");
    let info = replica.info("replication").await.expect("INFO");
    assert_eq!(
        info.get("master_link_status").map(String::as_str),
        Some("up")
    );
    eprintln!(
        "replica back in sync {:?} after restart",
        restarted.elapsed()
    );
}

#[tokio::test]
async fn missing_binary_is_a_clear_error() {
    let options = TopologyOptions {
        redis_server_bin: Some("/nonexistent/pivot/redis-server".into()),
        ..TopologyOptions::default()
    };
    let err = Topology::start(options)
        .await
        .expect_err("a missing binary cannot start");
    assert!(
        matches!(err, SandboxError::BinaryNotFound { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("apt-get install redis-server redis-sentinel"),
        "{message}"
    );
    assert!(message.contains("REDIS_SERVER_BIN"), "{message}");
    assert!(
        message.contains("/nonexistent/pivot/redis-server"),
        "{message}"
    );
}

#[tokio::test]
async fn start_failure_quotes_the_log() {
    let options = TopologyOptions {
        replicas: 0,
        sentinels: 0,
        extra_redis_config: vec!["no-such-directive yes".into()],
        ..TopologyOptions::default()
    };
    let err = Topology::start(options)
        .await
        .expect_err("a bad config line cannot start");
    assert!(matches!(err, SandboxError::StartFailed { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("no-such-directive"), "{message}");
}
