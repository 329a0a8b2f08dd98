//! Watching a demoted master for writes it should not get.
//!
//! Which node a proxy sent a write to is not visible to its client, but the node itself can
//! tell: `MONITOR` on the old master lists every command it executes, with its server
//! timestamp and the client's address. A write on a workload key that the old master
//! executes after the promoted replica answered `ROLE` as master went to a stale master,
//! unless it came over the replication link from the new master (the old master
//! replicates from it once Sentinel has converted it).
//!
//! `MONITOR` only sees commands executed after it is registered. Commands a frozen master
//! had already received execute the moment it resumes, before a `MONITOR` connection
//! opened after `SIGCONT` can register; the runner finds those by reading, right after
//! `SIGCONT`, every key a client issued since the freeze.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::workload::KEY_PREFIX;

/// Most writes one watch keeps (a proxy writing to the wrong node at full speed for the
/// whole ~10 s before Sentinel demotes it stays under this).
const MAX_RECORDED: usize = 1_000_000;
/// Longest `MONITOR` line read (a workload command is well under 200 bytes).
const MAX_LINE: usize = 64 * 1024;

/// A write on a workload key that a watched node executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitoredWrite {
    /// Server time (µs since the Unix epoch) of the command.
    pub at_unix_us: u64,
    /// The client that sent it, as the node saw it (`ip:port`).
    pub peer: String,
    /// Command name, uppercase.
    pub command: String,
    /// Its key.
    pub key: String,
}

/// A running `MONITOR` of one node.
#[derive(Debug)]
pub struct MonitorWatch {
    stop: CancellationToken,
    task: JoinHandle<Result<Vec<MonitoredWrite>>>,
}

impl MonitorWatch {
    /// Connects to `addr`, sends `MONITOR` and returns once the node confirmed it: every
    /// command the node executes from now on is seen.
    pub async fn start(addr: SocketAddr, connect_timeout: Duration) -> Result<MonitorWatch> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} for MONITOR timed out"))?
            .with_context(|| format!("connecting to {addr} for MONITOR"))?;
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(b"MONITOR\r\n")
            .await
            .context("sending MONITOR")?;
        let mut line = String::new();
        tokio::time::timeout(connect_timeout, reader.read_line(&mut line))
            .await
            .with_context(|| format!("{addr} did not answer MONITOR"))?
            .context("reading MONITOR's reply")?;
        if line.trim_end() != "+OK" {
            bail!("{addr} answered MONITOR with {:?}", line.trim_end());
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(read_writes(reader, stop.clone()));
        Ok(MonitorWatch { stop, task })
    }

    /// Stops watching; returns the writes seen.
    pub async fn finish(self) -> Result<Vec<MonitoredWrite>> {
        self.stop.cancel();
        self.task.await.context("MONITOR task")?
    }
}

/// Reads `MONITOR` lines until `stop` (or the connection closes), keeping workload writes.
async fn read_writes(
    mut reader: BufReader<TcpStream>,
    stop: CancellationToken,
) -> Result<Vec<MonitoredWrite>> {
    let mut writes = Vec::new();
    let mut line = String::new();
    // Bounded: each iteration consumes a line, and the loop ends on stop, EOF or the cap.
    while writes.len() < MAX_RECORDED {
        line.clear();
        let read = tokio::select! {
            r = reader.read_line(&mut line) => r.context("reading MONITOR output")?,
            () = stop.cancelled() => break,
        };
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            continue;
        }
        if let Some(w) = parse_line(line.trim_end()).and_then(|l| l.into_workload_write()) {
            writes.push(w);
        }
    }
    Ok(writes)
}

/// One parsed `MONITOR` line.
#[derive(Debug, PartialEq, Eq)]
struct MonitorLine {
    at_unix_us: u64,
    peer: String,
    args: Vec<String>,
}

impl MonitorLine {
    fn into_workload_write(self) -> Option<MonitoredWrite> {
        let mut args = self.args.into_iter();
        let command = args.next()?.to_ascii_uppercase();
        let key = args.next()?;
        let writes = matches!(
            command.as_str(),
            "SET" | "INCR" | "INCRBY" | "DEL" | "SETEX" | "PSETEX" | "GETSET" | "SETNX"
        );
        (writes && key.starts_with(KEY_PREFIX)).then_some(MonitoredWrite {
            at_unix_us: self.at_unix_us,
            peer: self.peer,
            command,
            key,
        })
    }
}

/// Parses `+1700000000.123456 [0 127.0.0.1:54321] "SET" "k" "v"`.
fn parse_line(line: &str) -> Option<MonitorLine> {
    let rest = line.strip_prefix('+')?;
    let (stamp, rest) = rest.split_once(' ')?;
    let (secs, micros) = stamp.split_once('.')?;
    let at_unix_us = secs
        .parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(micros.parse::<u64>().ok()?)?;
    let rest = rest.strip_prefix('[')?;
    let (client, rest) = rest.split_once(']')?;
    // `db addr`; the address is `ip:port`, `lua` or `unix:path`.
    let peer = client.split_once(' ').map(|(_, a)| a)?.to_string();
    Some(MonitorLine {
        at_unix_us,
        peer,
        args: parse_quoted(rest)?,
    })
}

/// Redis's `sdscatrepr` quoting: `"..."` words with `\\`, `\"`, `\n`, `\r`, `\t`, `\a`,
/// `\b` and `\xHH` escapes.
fn parse_quoted(mut s: &str) -> Option<Vec<String>> {
    let mut args = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return Some(args);
        }
        s = s.strip_prefix('"')?;
        let mut bytes = Vec::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => {
                    let (_, e) = chars.next()?;
                    match e {
                        'n' => bytes.push(b'\n'),
                        'r' => bytes.push(b'\r'),
                        't' => bytes.push(b'\t'),
                        'a' => bytes.push(7),
                        'b' => bytes.push(8),
                        'x' => {
                            let (_, h) = chars.next()?;
                            let (_, l) = chars.next()?;
                            let hex: String = [h, l].iter().collect();
                            bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                        }
                        other => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                other => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                }
            }
        };
        args.push(String::from_utf8_lossy(&bytes).into_owned());
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_monitor_lines() {
        let l = parse_line(r#"+1700000000.123456 [0 127.0.0.1:54321] "SET" "chaos:3:17" "c3:s17""#)
            .expect("parses");
        assert_eq!(l.at_unix_us, 1_700_000_000_123_456);
        assert_eq!(l.peer, "127.0.0.1:54321");
        assert_eq!(l.args, ["SET", "chaos:3:17", "c3:s17"]);
        let w = l.into_workload_write().expect("a workload write");
        assert_eq!((w.command.as_str(), w.key.as_str()), ("SET", "chaos:3:17"));

        let l = parse_line(r#"+1.000002 [0 lua] "incr" "chaos:ctr:1""#).expect("parses");
        assert_eq!(l.peer, "lua");
        assert_eq!(l.at_unix_us, 1_000_002);
        assert!(l.into_workload_write().is_some());
    }

    #[test]
    fn unquotes_escapes() {
        assert_eq!(
            parse_quoted(r#""a\"b" "\x41\n" "" "\\""#).expect("parses"),
            ["a\"b", "A\n", "", "\\"]
        );
        assert!(parse_quoted(r#""unterminated"#).is_none());
    }

    #[test]
    fn ignores_reads_other_keys_and_garbage() {
        let read = parse_line(r#"+1.0 [0 127.0.0.1:1] "GET" "chaos:1:1""#).expect("parses");
        assert!(read.into_workload_write().is_none());
        let other = parse_line(r#"+1.0 [0 127.0.0.1:1] "SET" "x" "1""#).expect("parses");
        assert!(other.into_workload_write().is_none());
        let ping = parse_line(r#"+1.0 [0 127.0.0.1:1] "PING""#).expect("parses");
        assert!(ping.into_workload_write().is_none());
        assert!(parse_line("-ERR nope").is_none());
        assert!(parse_line("+OK").is_none());
    }
}
