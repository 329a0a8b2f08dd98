//! Command classification from Redis's own metadata.
//!
//! The proxy does not keep a hand-written list of which commands write: it reads `COMMAND`
//! from the master (at start and after every failover, since a new master may run another
//! version or other modules) and classifies each command and subcommand by its flags. Only
//! what flags cannot express is named here: commands the proxy answers itself and commands
//! that need connection state a multiplexed backend connection cannot share.
//!
//! Lookups are case-insensitive and allocation-free: the name is lowercased into a stack
//! buffer and looked up as a byte slice, with foldhash rather than SipHash (a third of the
//! cost of a lookup; the table's keys come from Redis, clients only look them up, so there
//! is nothing to flood). A connection remembers its last lookup ([`LastLookup`]): clients
//! send the same few commands again and again, and comparing a few bytes costs less than
//! lowercasing and hashing them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::fast::RandomState;

use redis::Value;

/// How a command may be routed, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Modifies data (`write`, `may_replicate`): master only.
    Write,
    /// Reads data (`readonly`): the read pool.
    Read,
    /// Touches no keyspace data (`INFO`, `TIME`, `COMMAND`, ...): the read pool.
    Neutral,
    /// Administrative or server-level (`admin`, or `noscript` without data access, such as
    /// `SCRIPT LOAD` or `ROLE`): master.
    Admin,
    /// Pub/Sub (`pubsub`) without data access: `PUBSUB CHANNELS` and the like (master, where
    /// messages are published); the subscription commands are [`Special::Subscribe`].
    PubSub,
    /// Not in the master's command table: master, as Redis would reject or run it there.
    Unknown,
}

impl Class {
    /// Label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Write => "write",
            Class::Read => "read",
            Class::Neutral => "neutral",
            Class::Admin => "admin",
            Class::PubSub => "pubsub",
            Class::Unknown => "unknown",
        }
    }

    /// Every class, for pre-registering metrics.
    pub const ALL: [Class; 6] = [
        Class::Write,
        Class::Read,
        Class::Neutral,
        Class::Admin,
        Class::PubSub,
        Class::Unknown,
    ];

    /// The class, and whether the command may block the connection (`blocking`).
    fn from_flags<'a>(flags: impl IntoIterator<Item = &'a str>) -> (Class, bool) {
        let (mut write, mut read, mut admin, mut blocking, mut pubsub, mut noscript) =
            (false, false, false, false, false, false);
        for f in flags {
            match f {
                "write" | "may_replicate" => write = true,
                "readonly" => read = true,
                "admin" => admin = true,
                "blocking" => blocking = true,
                "pubsub" => pubsub = true,
                "noscript" => noscript = true,
                _ => {}
            }
        }
        // Order matters: PUBLISH is `pubsub` and `may_replicate`, a write to the master.
        let class = if write {
            Class::Write
        } else if pubsub {
            Class::PubSub
        } else if read {
            Class::Read
        } else if admin || noscript {
            Class::Admin
        } else {
            Class::Neutral
        };
        (class, blocking)
    }
}

/// Commands whose meaning depends on connection state or that the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `PING`: answered by the proxy.
    Ping,
    /// `ECHO`: answered by the proxy.
    Echo,
    /// `QUIT`: `+OK`, then the proxy closes the connection.
    Quit,
    /// `HELLO`: protocol negotiation, answered by the proxy.
    Hello,
    /// `AUTH`: answered by the proxy.
    Auth,
    /// `SELECT`: per-connection database.
    Select,
    /// `CLIENT ...`: some subcommands are answered by the proxy.
    Client,
    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`.
    Transaction,
    /// `MONITOR`, `SYNC`, `PSYNC`, `REPLCONF`: connection takeover.
    Takeover,
    /// `RESET`: back to a fresh connection's state, answered by the proxy.
    Reset,
    /// `XREAD`/`XREADGROUP`: blocking only with a `BLOCK` argument.
    StreamRead,
    /// `WAIT`/`WAITAOF`: block until replicas acknowledge (not flagged `blocking`).
    Wait,
    /// `SUBSCRIBE` and friends: the connection enters Pub/Sub mode.
    Subscribe,
}

fn special(lower: &[u8]) -> Option<Special> {
    Some(match lower {
        b"ping" => Special::Ping,
        b"echo" => Special::Echo,
        b"quit" => Special::Quit,
        b"hello" => Special::Hello,
        b"auth" => Special::Auth,
        b"select" => Special::Select,
        b"client" => Special::Client,
        b"multi" | b"exec" | b"discard" | b"watch" | b"unwatch" => Special::Transaction,
        b"monitor" | b"sync" | b"psync" | b"replconf" => Special::Takeover,
        b"reset" => Special::Reset,
        b"wait" | b"waitaof" => Special::Wait,
        b"xread" | b"xreadgroup" => Special::StreamRead,
        b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
        | b"sunsubscribe" => Special::Subscribe,
        _ => return None,
    })
}

/// Longest command name looked up; longer names are unknown commands.
const MAX_NAME: usize = 64;

/// A name lowercased into a stack buffer.
pub struct Lower {
    buf: [u8; MAX_NAME],
    len: usize,
}

impl Lower {
    /// `None` when `name` is longer than any Redis command name.
    pub fn new(name: &[u8]) -> Option<Lower> {
        if name.len() > MAX_NAME {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        for (d, s) in buf.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        Some(Lower {
            buf,
            len: name.len(),
        })
    }

    /// The lowercased bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[derive(Debug, Clone, Default)]
struct Entry {
    class: Option<(Class, bool)>,
    /// `subcommand -> (class, blocking)`, for container commands (`CONFIG GET`, `SCRIPT LOAD`).
    subcommands: HashMap<Box<[u8]>, (Class, bool), RandomState>,
}

/// Result of looking a request up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Class from the flags.
    pub class: Class,
    /// The command may block its connection (`blocking` flag): it needs a dedicated one.
    pub blocking: bool,
    /// Set when the command needs the proxy's own handling.
    pub special: Option<Special>,
}

/// The command table of one Redis version, built from its `COMMAND` reply.
#[derive(Debug, Clone, Default)]
pub struct CommandTable {
    commands: HashMap<Box<[u8]>, Entry, RandomState>,
    /// Tells tables apart for [`LastLookup`] (0 for every empty table, which all answer
    /// alike).
    id: u64,
}

/// Numbers the tables built from `COMMAND` replies.
static TABLE_IDS: AtomicU64 = AtomicU64::new(1);

/// Longest name [`LastLookup`] remembers (every name a client repeats at high rate fits).
const LAST_NAME: usize = 16;

/// A connection's last lookup of a command without subcommands, whose class depends on its
/// name alone.
#[derive(Debug, Default)]
pub struct LastLookup {
    hit: Option<(u64, [u8; LAST_NAME], usize, Lookup)>,
}

impl CommandTable {
    /// An empty table: every command is [`Class::Unknown`] and goes to the master.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Number of commands known.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// True when no `COMMAND` reply has been loaded.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Builds the table from the reply to `COMMAND` (Redis 7 format: each entry is
    /// `[name, arity, flags, first, last, step, acl-categories, tips, key-specs, subcommands]`;
    /// Redis 6 entries have fewer elements and no subcommands).
    pub fn from_command_reply(reply: &Value) -> Result<Self, String> {
        let Value::Array(entries) = reply else {
            return Err("COMMAND reply is not an array".into());
        };
        let mut commands = HashMap::with_capacity_and_hasher(entries.len(), RandomState::default());
        for e in entries {
            let (name, class, subs) = parse_entry(e)?;
            let mut entry = Entry {
                class: Some(class),
                subcommands: HashMap::default(),
            };
            for s in subs {
                let (full, class, _) = parse_entry(s)?;
                // Subcommand names come as `container|sub`.
                let sub = match full.iter().position(|&b| b == b'|') {
                    Some(i) => full[i + 1..].to_vec(),
                    None => full,
                };
                entry.subcommands.insert(sub.into_boxed_slice(), class);
            }
            commands.insert(name.into_boxed_slice(), entry);
        }
        Ok(CommandTable {
            commands,
            id: TABLE_IDS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Classifies a request by its name and first argument (the subcommand of container
    /// commands), without allocating.
    pub fn lookup(&self, name: &[u8], arg1: Option<&[u8]>) -> Lookup {
        self.classify(name, arg1).0
    }

    /// [`CommandTable::lookup`], answered from `last` when the name is the one looked up
    /// last in this table (byte for byte) and its class does not depend on a subcommand.
    pub fn lookup_cached(&self, last: &mut LastLookup, name: &[u8], arg1: Option<&[u8]>) -> Lookup {
        if let Some((id, buf, len, lookup)) = &last.hit
            && *id == self.id
            && buf.get(..*len) == Some(name)
        {
            return *lookup;
        }
        let (lookup, by_name) = self.classify(name, arg1);
        if by_name && name.len() <= LAST_NAME {
            let mut buf = [0u8; LAST_NAME];
            buf[..name.len()].copy_from_slice(name);
            last.hit = Some((self.id, buf, name.len(), lookup));
        }
        lookup
    }

    /// The lookup, and whether it depends on the name alone (not on a subcommand).
    fn classify(&self, name: &[u8], arg1: Option<&[u8]>) -> (Lookup, bool) {
        let Some(lower) = Lower::new(name) else {
            let unknown = Lookup {
                class: Class::Unknown,
                blocking: false,
                special: None,
            };
            return (unknown, true);
        };
        let lower = lower.as_bytes();
        let special = special(lower);
        let mut by_name = true;
        let (class, blocking) = match self.commands.get(lower) {
            None => (Class::Unknown, false),
            Some(entry) => {
                let sub_class = if entry.subcommands.is_empty() {
                    None
                } else {
                    by_name = false;
                    arg1.and_then(Lower::new)
                        .and_then(|sub| entry.subcommands.get(sub.as_bytes()).copied())
                };
                sub_class.or(entry.class).unwrap_or((Class::Unknown, false))
            }
        };
        let lookup = Lookup {
            class,
            blocking,
            special,
        };
        (lookup, by_name)
    }
}

/// One `COMMAND` entry: lowercased name, (class, blocking), subcommand entries.
type ParsedEntry<'a> = (Vec<u8>, (Class, bool), &'a [Value]);

fn parse_entry(v: &Value) -> Result<ParsedEntry<'_>, String> {
    let Value::Array(fields) = v else {
        return Err("COMMAND entry is not an array".into());
    };
    let name = match fields.first() {
        Some(Value::BulkString(b)) => b.to_ascii_lowercase(),
        Some(Value::SimpleString(s)) => s.to_ascii_lowercase().into_bytes(),
        _ => return Err("COMMAND entry without a name".into()),
    };
    let flags: Vec<&str> = match fields.get(2) {
        Some(Value::Array(flags)) | Some(Value::Set(flags)) => flags
            .iter()
            .filter_map(|f| match f {
                Value::SimpleString(s) => Some(s.as_str()),
                Value::BulkString(b) => std::str::from_utf8(b).ok(),
                _ => None,
            })
            .collect(),
        _ => return Err("COMMAND entry without flags".into()),
    };
    let subs = match fields.get(9) {
        Some(Value::Array(subs)) => subs.as_slice(),
        _ => &[],
    };
    Ok((name, Class::from_flags(flags), subs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: &[&str], subs: Vec<Value>) -> Value {
        let mut v = vec![
            Value::BulkString(name.as_bytes().to_vec()),
            Value::Int(-1),
            Value::Array(
                flags
                    .iter()
                    .map(|f| Value::SimpleString((*f).to_string()))
                    .collect(),
            ),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ];
        v.push(Value::Array(subs));
        Value::Array(v)
    }

    /// The `COMMAND` reply of a real Redis 7.0.15 (also the hot-path benchmark's fixture).
    #[test]
    fn classifies_a_real_redis_7_command_table() {
        let reply = include_bytes!("../benches/data/command-redis-7.0.15.resp");
        let value = redis::parse_redis_value(reply).unwrap();
        let t = CommandTable::from_command_reply(&value).unwrap();
        assert!(t.len() > 200, "{} commands", t.len());
        let class = |name: &[u8], arg1: Option<&[u8]>| t.lookup(name, arg1).class;
        assert_eq!(class(b"SET", Some(b"k")), Class::Write);
        assert_eq!(class(b"get", Some(b"k")), Class::Read);
        // 7.0 flags PUBLISH `pubsub` without `may_replicate`: the master, as class PubSub.
        assert_eq!(class(b"PUBLISH", Some(b"c")), Class::PubSub);
        assert_eq!(class(b"INFO", None), Class::Neutral);
        assert_eq!(class(b"CONFIG", Some(b"SET")), Class::Admin);
        assert_eq!(class(b"OBJECT", Some(b"encoding")), Class::Read);
        assert_eq!(class(b"NOSUCHCOMMAND", None), Class::Unknown);
        let blpop = t.lookup(b"BLPOP", Some(b"k"));
        assert!(blpop.blocking);
        assert_eq!(
            t.lookup(b"CLIENT", Some(b"SETNAME")).special,
            Some(Special::Client)
        );
    }

    fn table() -> CommandTable {
        let reply = Value::Array(vec![
            entry("set", &["write", "denyoom"], vec![]),
            entry("get", &["readonly", "fast"], vec![]),
            entry("info", &["loading", "stale"], vec![]),
            entry("blmove", &["write", "denyoom", "blocking"], vec![]),
            entry(
                "publish",
                &["pubsub", "loading", "stale", "fast", "may_replicate"],
                vec![],
            ),
            entry(
                "subscribe",
                &["pubsub", "noscript", "loading", "stale"],
                vec![],
            ),
            entry(
                "eval",
                &["noscript", "stale", "skip_monitor", "may_replicate"],
                vec![],
            ),
            entry("eval_ro", &["noscript", "stale", "readonly"], vec![]),
            entry("xread", &["readonly", "blocking"], vec![]),
            entry(
                "config",
                &[],
                vec![
                    entry(
                        "config|get",
                        &["admin", "noscript", "loading", "stale"],
                        vec![],
                    ),
                    entry(
                        "config|set",
                        &["admin", "noscript", "loading", "stale"],
                        vec![],
                    ),
                ],
            ),
            entry(
                "script",
                &[],
                vec![
                    entry("script|load", &["noscript", "stale"], vec![]),
                    entry("script|flush", &["noscript", "may_replicate"], vec![]),
                ],
            ),
        ]);
        CommandTable::from_command_reply(&reply).unwrap()
    }

    #[test]
    fn classes_from_flags() {
        let t = table();
        type Case<'a> = (&'a [u8], Option<&'a [u8]>, Class, bool, Option<Special>);
        let cases: &[Case] = &[
            (b"SET", None, Class::Write, false, None),
            (b"get", None, Class::Read, false, None),
            (b"GeT", Some(b"k"), Class::Read, false, None),
            (b"INFO", Some(b"replication"), Class::Neutral, false, None),
            (b"BLMOVE", None, Class::Write, true, None),
            (b"PUBLISH", None, Class::Write, false, None),
            (
                b"SUBSCRIBE",
                None,
                Class::PubSub,
                false,
                Some(Special::Subscribe),
            ),
            (b"EVAL", None, Class::Write, false, None),
            (b"EVAL_RO", None, Class::Read, false, None),
            (b"CONFIG", Some(b"GET"), Class::Admin, false, None),
            (b"SCRIPT", Some(b"flush"), Class::Write, false, None),
            (b"SCRIPT", Some(b"load"), Class::Admin, false, None),
            (b"SCRIPT", Some(b"nosuch"), Class::Neutral, false, None),
            (b"EVAL_RO", None, Class::Read, false, None),
            (b"XREAD", None, Class::Read, true, Some(Special::StreamRead)),
            (b"NOSUCHCMD", None, Class::Unknown, false, None),
            (b"PING", None, Class::Unknown, false, Some(Special::Ping)),
            (
                b"multi",
                None,
                Class::Unknown,
                false,
                Some(Special::Transaction),
            ),
        ];
        for (name, arg1, class, blocking, special) in cases {
            let got = t.lookup(name, *arg1);
            assert_eq!(got.class, *class, "{}", String::from_utf8_lossy(name));
            assert_eq!(got.blocking, *blocking, "{}", String::from_utf8_lossy(name));
            assert_eq!(got.special, *special, "{}", String::from_utf8_lossy(name));
        }
        let long = vec![b'a'; 200];
        assert_eq!(t.lookup(&long, None).class, Class::Unknown);
        assert!(CommandTable::empty().is_empty());
        assert_eq!(
            CommandTable::empty().lookup(b"SET", None).class,
            Class::Unknown
        );
    }

    #[test]
    fn last_lookup_answers_what_lookup_would() {
        let t = table();
        let other = table();
        let mut last = LastLookup::default();
        // In an order that revisits names, switches tables, and mixes containers (whose
        // class depends on the subcommand) with plain commands.
        type Step<'a> = (&'a CommandTable, &'a [u8], Option<&'a [u8]>);
        let seq: &[Step] = &[
            (&t, b"GET", Some(b"k")),
            (&t, b"GET", Some(b"k")),
            (&t, b"get", None),
            (&t, b"SET", None),
            (&t, b"SCRIPT", Some(b"load")),
            (&t, b"SCRIPT", Some(b"flush")),
            (&t, b"SCRIPT", Some(b"flush")),
            (&t, b"CONFIG", Some(b"GET")),
            (&t, b"NOSUCHCMD", None),
            (&t, b"NOSUCHCMD", None),
            (&other, b"NOSUCHCMD", None),
            (&t, b"MULTI", None),
            (&t, b"MULTI", None),
            (&t, b"BLMOVE", None),
            (&other, b"BLMOVE", None),
            (&t, b"SUBSCRIBE", None),
            (&t, b"SUBSCRIBE", None),
        ];
        for (table, name, arg1) in seq {
            let got = table.lookup_cached(&mut last, name, *arg1);
            assert_eq!(
                got,
                table.lookup(name, *arg1),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // A name is remembered with its table: another table's answer is its own.
        let empty = CommandTable::empty();
        let mut last = LastLookup::default();
        assert_eq!(t.lookup_cached(&mut last, b"SET", None).class, Class::Write);
        assert_eq!(
            empty.lookup_cached(&mut last, b"SET", None).class,
            Class::Unknown
        );
        assert_eq!(t.lookup_cached(&mut last, b"SET", None).class, Class::Write);
    }

    #[test]
    fn rejects_malformed_replies() {
        assert!(CommandTable::from_command_reply(&Value::Int(1)).is_err());
        assert!(CommandTable::from_command_reply(&Value::Array(vec![Value::Int(1)])).is_err());
    }
}
