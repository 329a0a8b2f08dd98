//! Config files for sandbox nodes and Sentinels.
//!
//! Everything binds to 127.0.0.1 only and nothing persists: a sandbox node's data dies with
//! its directory.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Settings of one `redis-server` node.
#[derive(Clone, Debug)]
pub(crate) struct RedisConfig<'a> {
    pub(crate) port: u16,
    pub(crate) dir: &'a Path,
    /// `replicaof` target; `None` for a master.
    pub(crate) replica_of: Option<SocketAddr>,
    /// Appended verbatim, so they override the defaults above them.
    pub(crate) extra: &'a [String],
}

/// Settings of one Sentinel.
#[derive(Clone, Debug)]
pub(crate) struct SentinelConfig<'a> {
    pub(crate) port: u16,
    pub(crate) dir: &'a Path,
    pub(crate) master_name: &'a str,
    pub(crate) master: SocketAddr,
    pub(crate) quorum: u32,
    pub(crate) down_after: Duration,
    pub(crate) failover_timeout: Duration,
}

impl RedisConfig<'_> {
    pub(crate) fn render(&self) -> String {
        let mut out = common(self.port, self.dir);
        out.push_str("save \"\"\nappendonly no\nenable-debug-command yes\n");
        // Redis 7 syncs replicas diskless after a 5 s delay by default; tests can't wait.
        out.push_str("repl-diskless-sync-delay 0\n");
        if let Some(master) = self.replica_of {
            let _ = writeln!(out, "replicaof {} {}", master.ip(), master.port());
        }
        for line in self.extra {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

impl SentinelConfig<'_> {
    pub(crate) fn render(&self) -> String {
        let mut out = common(self.port, self.dir);
        let name = self.master_name;
        let _ = writeln!(
            out,
            "sentinel monitor {name} {} {} {}",
            self.master.ip(),
            self.master.port(),
            self.quorum
        );
        let _ = writeln!(
            out,
            "sentinel down-after-milliseconds {name} {}",
            self.down_after.as_millis()
        );
        let _ = writeln!(
            out,
            "sentinel failover-timeout {name} {}",
            self.failover_timeout.as_millis()
        );
        let _ = writeln!(out, "sentinel parallel-syncs {name} 1");
        out
    }
}

/// Lines shared by nodes and Sentinels. Logs go to stdout, which the spawner redirects
/// into the node's log file.
fn common(port: u16, dir: &Path) -> String {
    format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
         logfile \"\"\ndir {}\n",
        quote(&dir.to_string_lossy())
    )
}

/// Quotes a value for the Redis config parser (`sdssplitargs`).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_config_has_replicaof_and_extras_last() {
        let extra = vec!["maxmemory 10mb".to_string()];
        let text = RedisConfig {
            port: 7001,
            dir: Path::new("/tmp/a b"),
            replica_of: Some(SocketAddr::from(([127, 0, 0, 1], 7000))),
            extra: &extra,
        }
        .render();
        assert!(text.starts_with("port 7001\nbind 127.0.0.1\n"));
        assert!(text.contains("dir \"/tmp/a b\"\n"));
        assert!(text.contains("replicaof 127.0.0.1 7000\n"));
        assert!(text.ends_with("maxmemory 10mb\n"));
    }

    #[test]
    fn sentinel_config_monitors_the_master() {
        let text = SentinelConfig {
            port: 26379,
            dir: Path::new("/tmp/s"),
            master_name: "mymaster",
            master: SocketAddr::from(([127, 0, 0, 1], 7000)),
            quorum: 2,
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(3000),
        }
        .render();
        assert!(text.contains("sentinel monitor mymaster 127.0.0.1 7000 2\n"));
        assert!(text.contains("sentinel down-after-milliseconds mymaster 1000\n"));
        assert!(text.contains("sentinel failover-timeout mymaster 3000\n"));
        assert!(text.contains("sentinel parallel-syncs mymaster 1\n"));
    }

    #[test]
    fn quote_escapes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
