//! The proxy's per-request work without sockets: what a client's read costs before and
//! after it meets the network. Regressions here show without a cluster; the end-to-end cost
//! (syscalls, task wake-ups, Redis) is measured by `pivot-bench` (docs/performance.md).
//!
//! `cargo bench -p pivot-proxy --bench hot_path`
//!
//! - `scan`: finding frame boundaries, command name and first argument in a read buffer
//!   (requests) and in a backend's reply buffer;
//! - `lookup`: classifying a command with the command table of a real Redis 7.0.15
//!   (`benches/data/command-redis-7.0.15.resp`, its `COMMAND` reply);
//! - `route`: choosing master or replica;
//! - `request`: the three together for every request of one read of 16 pipelined `SET`s
//!   or `GET`s (`redis-benchmark -P 16 -d 64`), including splitting each frame off the
//!   buffer as `Bytes`, as the connection does;
//! - `deliver`: a backend connection handing one client's 16 replies to its inbox, and the
//!   client's writer taking them;
//! - `count`: the metrics of 16 requests.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pivot_proxy::clients::Registry;
use pivot_proxy::command::{Class, CommandTable, LastLookup};
use pivot_proxy::inbox::{Replies, Ticket};
use pivot_proxy::metrics::{CommandRun, LatencyRun, Metrics, Target};
use pivot_proxy::resp::{Mode, Scanner};
use pivot_proxy::routing::{ClientState, NodeAddr, ReadPolicy, ReplicaRoute, RoutingTable, route};

const COMMAND_REPLY: &[u8] = include_bytes!("data/command-redis-7.0.15.resp");

fn commands() -> CommandTable {
    let value = redis::parse_redis_value(COMMAND_REPLY).unwrap();
    let table = CommandTable::from_command_reply(&value).unwrap();
    assert!(
        table.len() > 200,
        "the fixture holds Redis 7's command table"
    );
    table
}

fn routing(read_policy: ReadPolicy) -> RoutingTable {
    let mut t = RoutingTable::empty("bench");
    t.version = 1;
    t.master = Some(NodeAddr::new("127.0.0.1", 6379));
    for port in [6380, 6381] {
        let addr = NodeAddr::new("127.0.0.1", port);
        t.replicas.push(ReplicaRoute {
            addr: addr.clone(),
            healthy: true,
        });
        t.readable.push(addr);
    }
    t.read_policy = read_policy;
    t
}

/// `redis-benchmark -d 64` requests.
fn set_request() -> Vec<u8> {
    let value = "x".repeat(64);
    format!(
        "*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n${}\r\n{value}\r\n",
        value.len()
    )
    .into_bytes()
}

fn get_request() -> Vec<u8> {
    b"*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n".to_vec()
}

fn pipeline(one: &[u8], n: usize) -> Vec<u8> {
    one.repeat(n)
}

fn scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    for (name, one) in [("set", set_request()), ("get", get_request())] {
        let buf = pipeline(&one, 16);
        g.throughput(Throughput::Elements(16));
        g.bench_function(format!("request_{name}_x16"), |b| {
            b.iter(|| {
                let mut scanner = Scanner::new(Mode::Request, 512 << 20);
                let mut rest = black_box(&buf[..]);
                let mut n = 0;
                while let Some(f) = scanner.scan(rest).unwrap() {
                    black_box(f.name(rest));
                    rest = &rest[f.len..];
                    n += 1;
                }
                assert_eq!(n, 16);
            })
        });
    }
    let value = "x".repeat(64);
    for (name, one) in [
        ("ok", b"+OK\r\n".to_vec()),
        ("bulk64", format!("$64\r\n{value}\r\n").into_bytes()),
    ] {
        let buf = pipeline(&one, 16);
        g.throughput(Throughput::Elements(16));
        g.bench_function(format!("reply_{name}_x16"), |b| {
            b.iter(|| {
                let mut scanner = Scanner::new(Mode::Reply, 1 << 30);
                let mut rest = black_box(&buf[..]);
                while let Some(f) = scanner.scan(rest).unwrap() {
                    rest = &rest[f.len..];
                }
                assert!(rest.is_empty());
            })
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let table = commands();
    let mut g = c.benchmark_group("lookup");
    for (name, cmd, arg1) in [
        ("set", &b"SET"[..], Some(&b"key:__rand_int__"[..])),
        ("get_lowercase", b"get", Some(b"key:__rand_int__")),
        ("client_setname", b"CLIENT", Some(b"SETNAME")),
        ("unknown", b"NOSUCHCOMMAND", None),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(table.lookup(black_box(cmd), black_box(arg1))))
        });
    }
    // What a connection pays for a command it sent last time too.
    let mut last = LastLookup::default();
    g.bench_function("set_again", |b| {
        b.iter(|| black_box(table.lookup_cached(&mut last, black_box(b"SET"), None)))
    });
    g.finish();
}

fn routes(c: &mut Criterion) {
    let commands = commands();
    let rr = AtomicUsize::new(0);
    let fresh = ClientState::default();
    let mut g = c.benchmark_group("route");
    for (name, policy, cmd) in [
        ("write", ReadPolicy::Replicas, &b"SET"[..]),
        ("read_replicas", ReadPolicy::Replicas, b"GET"),
        ("read_master_only", ReadPolicy::MasterOnly, b"GET"),
    ] {
        let table = routing(policy);
        let class = commands.lookup(cmd, None).class;
        g.bench_function(name, |b| {
            b.iter(|| black_box(route(&table, black_box(class), None, &fresh, &rr)))
        });
    }
    g.finish();
}

/// Scan, split off, look up and route every request of one read, as the connection does
/// before handing requests to backends.
fn request(c: &mut Criterion) {
    let commands = commands();
    let table = routing(ReadPolicy::Replicas);
    let rr = AtomicUsize::new(0);
    let fresh = ClientState::default();
    let mut g = c.benchmark_group("request");
    for (name, one) in [("set", set_request()), ("get", get_request())] {
        let read = pipeline(&one, 16);
        g.throughput(Throughput::Elements(16));
        g.bench_function(format!("{name}_x16"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&read[..]),
                |buf| {
                    let mut scanner = Scanner::new(Mode::Request, 512 << 20);
                    let mut last = LastLookup::default();
                    while let Some(info) = scanner.scan(buf).unwrap() {
                        let frame = buf.split_to(info.len).freeze();
                        let lookup = commands.lookup_cached(
                            &mut last,
                            info.name(&frame).unwrap_or_default(),
                            info.arg1(&frame),
                        );
                        black_box(route(&table, lookup.class, None, &fresh, &rr));
                        black_box(frame);
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// A backend connection handing the replies of one client's 16 pipelined requests to the
/// client's inbox (with the output-limit update and the `outstanding` decrement of each),
/// and the client's writer taking them.
fn deliver(c: &mut Criterion) {
    let registry = Registry::new(16, 0);
    let addr = "127.0.0.1:1".parse().unwrap();
    let client = registry.register(1, addr, addr).unwrap();
    let outstanding = AtomicUsize::new(0);
    let reply = Bytes::from_static(b"+OK\r\n");
    let mut replies = Replies::default();
    let mut g = c.benchmark_group("deliver");
    g.throughput(Throughput::Elements(16));
    g.bench_function("tickets_x16", |b| {
        b.iter(|| {
            let tickets: [Ticket; 16] = std::array::from_fn(|_| Ticket::take(&client));
            let first = tickets[0].seq();
            for t in tickets {
                outstanding.fetch_sub(1, Ordering::AcqRel);
                client.add_output(reply.len());
                t.deliver(Ok(reply.clone()));
            }
            for seq in first..first + 16 {
                black_box(replies.try_take(seq, &client.inbox).unwrap());
            }
        })
    });
    g.finish();
}

/// Counting the commands and latencies of one read of 16 requests: one atomic update each,
/// or one per run of equal observations ([`CommandRun`], [`LatencyRun`]).
fn count(c: &mut Criterion) {
    let metrics = Metrics::new();
    let d = Duration::from_micros(180);
    let mut g = c.benchmark_group("count");
    g.throughput(Throughput::Elements(16));
    g.bench_function("each_x16", |b| {
        b.iter(|| {
            for _ in 0..16 {
                metrics.command(black_box(Class::Read), Target::Master);
                metrics.latency(Target::Master, black_box(d), 1);
            }
        })
    });
    g.bench_function("runs_x16", |b| {
        b.iter(|| {
            let mut commands = CommandRun::commands(&metrics);
            let mut latency = LatencyRun::latencies(&metrics);
            for _ in 0..16 {
                commands.add((black_box(Class::Read), Target::Master));
                latency.add((Target::Master, black_box(d)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, scan, lookup, routes, request, deliver, count);
criterion_main!(benches);
