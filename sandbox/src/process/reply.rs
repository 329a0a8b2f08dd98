//! Reading loosely typed Redis replies: `INFO` text, `ROLE` and `SENTINEL MASTER`.

use std::collections::HashMap;

use redis::Value;

/// A scalar reply as text (bulk, simple, verbatim or integer).
pub(crate) fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".to_string()),
        _ => None,
    }
}

/// `INFO` output as `field -> value` (section headers and blank lines skipped).
pub(crate) fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// A key/value reply (RESP2 flat array or RESP3 map), e.g. `SENTINEL MASTER`.
pub(crate) fn as_map(value: &Value) -> Option<HashMap<String, String>> {
    match value {
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks_exact(2)
            .map(|pair| Some((as_string(&pair[0])?, as_string(&pair[1])?)))
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(key, value)| Some((as_string(key)?, as_string(value)?)))
            .collect(),
        _ => None,
    }
}

/// The `ROLE` reply of a node or Sentinel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Master,
    Replica {
        master_host: String,
        master_port: u16,
        /// `connect`, `connecting`, `sync` or `connected` (link up).
        state: String,
    },
    Sentinel,
}

impl Role {
    /// The first element of the reply, as Redis spells it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica { .. } => "slave",
            Role::Sentinel => "sentinel",
        }
    }
}

pub(crate) fn parse_role(value: &Value) -> Option<Role> {
    let Value::Array(items) = value else {
        return None;
    };
    match as_string(items.first()?)?.as_str() {
        "master" => Some(Role::Master),
        "sentinel" => Some(Role::Sentinel),
        "slave" | "replica" => Some(Role::Replica {
            master_host: as_string(items.get(1)?)?,
            master_port: as_string(items.get(2)?)?.parse().ok()?,
            state: as_string(items.get(3)?)?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn info_fields() {
        let info = parse_info("# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n\r\n");
        assert_eq!(info.get("role").map(String::as_str), Some("slave"));
        assert_eq!(
            info.get("master_link_status").map(String::as_str),
            Some("up")
        );
        assert_eq!(info.len(), 2);
    }

    #[test]
    fn role_replies() {
        let replica = Value::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Value::Int(7000),
            bulk("connected"),
            Value::Int(42),
        ]);
        assert_eq!(
            parse_role(&replica),
            Some(Role::Replica {
                master_host: "127.0.0.1".into(),
                master_port: 7000,
                state: "connected".into()
            })
        );
        let master = Value::Array(vec![bulk("master"), Value::Int(0), Value::Array(vec![])]);
        assert_eq!(parse_role(&master), Some(Role::Master));
        assert_eq!(parse_role(&Value::Nil), None);
    }

    #[test]
    fn flat_array_map() {
        let reply = Value::Array(vec![
            bulk("num-slaves"),
            bulk("2"),
            bulk("flags"),
            bulk("master"),
        ]);
        let map = as_map(&reply).expect("even array");
        assert_eq!(map.get("num-slaves").map(String::as_str), Some("2"));
        assert!(as_map(&Value::Array(vec![bulk("odd")])).is_none());
    }
}
