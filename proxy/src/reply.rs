//! Replies the proxy writes itself (errors, `PING`, `HELLO`, `CLIENT ID`, ...), encoded with
//! redis-protocol. Backend replies are never re-encoded: their bytes are forwarded as read.

use bytes::{Bytes, BytesMut};
use redis_protocol::bytes_utils::Str;
use redis_protocol::resp2::encode::extend_encode;
use redis_protocol::resp2::types::BytesFrame;

/// Encodes one frame.
pub fn encode(frame: &BytesFrame) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    // Encoding into a growable buffer only fails on frames we never build (none here).
    if extend_encode(&mut buf, frame, false).is_err() {
        return Bytes::from_static(b"-ERR pivot: internal error encoding a reply\r\n");
    }
    buf.freeze()
}

/// `+OK`.
pub fn ok() -> Bytes {
    Bytes::from_static(b"+OK\r\n")
}

/// A simple string.
pub fn simple(s: &'static str) -> Bytes {
    encode(&BytesFrame::SimpleString(Bytes::from_static(s.as_bytes())))
}

/// An error line. `msg` starts with the error code (`ERR ...`, `NOPROTO ...`); CR and LF are
/// replaced so that an error can never break the framing.
pub fn error(msg: &str) -> Bytes {
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    encode(&BytesFrame::Error(Str::from(clean)))
}

/// A bulk string.
pub fn bulk(b: &[u8]) -> Bytes {
    encode(&BytesFrame::BulkString(Bytes::copy_from_slice(b)))
}

/// The null reply: RESP2's null bulk string, or RESP3's null.
pub fn null(resp3: bool) -> Bytes {
    if resp3 {
        Bytes::from_static(b"_\r\n")
    } else {
        Bytes::from_static(b"$-1\r\n")
    }
}

/// A map of bulk-string keys to pre-encoded values: a RESP3 map, or for RESP2 the flat
/// array Redis sends instead.
pub fn map(pairs: &[(&str, Bytes)], resp3: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    let header = if resp3 {
        format!("%{}\r\n", pairs.len())
    } else {
        format!("*{}\r\n", pairs.len() * 2)
    };
    out.extend_from_slice(header.as_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&bulk(k.as_bytes()));
        out.extend_from_slice(v);
    }
    out.freeze()
}

/// An integer.
pub fn int(i: i64) -> Bytes {
    encode(&BytesFrame::Integer(i))
}

/// An array.
pub fn array(items: Vec<BytesFrame>) -> Bytes {
    encode(&BytesFrame::Array(items))
}

/// `-ERR wrong number of arguments for 'cmd' command`, as Redis words it.
pub fn wrong_args(cmd: &[u8]) -> Bytes {
    error(&format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(cmd).to_ascii_lowercase()
    ))
}

/// `INFO`'s reply (a bulk string, or a RESP3 verbatim string) with `section` appended as
/// one more section. `None` when `reply` is not such a string (an error, say).
pub fn append_info_section(reply: &[u8], section: &[u8]) -> Option<Bytes> {
    let kind = *reply.first()?;
    if kind != b'$' && kind != b'=' {
        return None;
    }
    let header_end = memchr::memchr(b'\n', reply)?;
    let len: usize = std::str::from_utf8(reply.get(1..header_end.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    let body = reply.get(header_end + 1..header_end + 1 + len)?;
    // Verbatim strings start with their format (`txt:`), which stays.
    let empty = if kind == b'=' { len <= 4 } else { len == 0 };
    let sep: &[u8] = match () {
        () if empty => b"",
        () if body.ends_with(b"\r\n") => b"\r\n",
        () => b"\r\n\r\n",
    };
    let new_len = len + sep.len() + section.len();
    let mut out = Vec::with_capacity(new_len + 16);
    out.push(kind);
    out.extend_from_slice(new_len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(sep);
    out.extend_from_slice(section);
    out.extend_from_slice(b"\r\n");
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_gets_a_section() {
        let section = b"# Proxy\r\na:1\r\n";
        assert_eq!(
            &append_info_section(b"$15\r\n# Server\r\nx:1\r\n\r\n", section).unwrap()[..],
            b"$31\r\n# Server\r\nx:1\r\n\r\n# Proxy\r\na:1\r\n\r\n"
        );
        // An unknown section alone: Redis answers an empty string.
        assert_eq!(
            &append_info_section(b"$0\r\n\r\n", section).unwrap()[..],
            b"$14\r\n# Proxy\r\na:1\r\n\r\n"
        );
        assert_eq!(
            &append_info_section(b"=19\r\ntxt:# Server\r\nx:1\r\n\r\n", section).unwrap()[..],
            b"=35\r\ntxt:# Server\r\nx:1\r\n\r\n# Proxy\r\na:1\r\n\r\n"
        );
        assert!(append_info_section(b"-ERR no\r\n", section).is_none());
        assert!(append_info_section(b"$99\r\nshort\r\n", section).is_none());
    }

    #[test]
    fn encodings() {
        assert_eq!(&ok()[..], b"+OK\r\n");
        assert_eq!(&simple("PONG")[..], b"+PONG\r\n");
        assert_eq!(&error("ERR bad\r\nthing")[..], b"-ERR bad  thing\r\n");
        assert_eq!(&bulk(b"hi")[..], b"$2\r\nhi\r\n");
        assert_eq!(&null(false)[..], b"$-1\r\n");
        assert_eq!(&null(true)[..], b"_\r\n");
        let pairs = [("proto", int(3)), ("modules", array(vec![]))];
        assert_eq!(
            &map(&pairs, true)[..],
            b"%2\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n"
        );
        assert_eq!(&map(&pairs, false)[..4], b"*4\r\n");
        assert_eq!(&int(-7)[..], b":-7\r\n");
        assert_eq!(
            &array(vec![BytesFrame::Integer(1), BytesFrame::Null])[..],
            b"*2\r\n:1\r\n$-1\r\n"
        );
        assert_eq!(
            &wrong_args(b"PING")[..],
            b"-ERR wrong number of arguments for 'ping' command\r\n"
        );
    }
}
