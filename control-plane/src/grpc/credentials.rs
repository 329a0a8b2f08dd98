//! Who may open a config stream: the proxy tokens (`--proxy-token`), checked on every
//! `StreamConfig` call before the stream starts, and the optional TLS of the gRPC listener
//! (`--grpc-tls-cert`, `--grpc-tls-key`, and `--grpc-tls-client-ca` to require client
//! certificates signed by that CA: mutual TLS).
//!
//! Tokens are kept as SHA-256 digests only. A presented token is hashed and compared with
//! every configured digest in constant time (no early exit, no short-circuit across
//! digests), so neither the comparison nor the number of tokens tells an attacker how
//! close a guess was. Several tokens are accepted at once, so that a token can be rotated
//! without a flag day: add the new one, move the proxies, remove the old one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::warn;

use crate::error::Error;
use crate::metrics::Metrics;

/// Shortest accepted token: long enough that guessing it over the network is hopeless
/// when it is random (`openssl rand -hex 32` makes a 64-character one).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest accepted token (a header value; this only bounds a mistake).
const MAX_TOKEN_LEN: usize = 4096;
/// How long a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A proxy token as configured (`--proxy-token`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyToken(String);

impl std::fmt::Debug for ProxyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyToken(<redacted>)")
    }
}

impl std::str::FromStr for ProxyToken {
    type Err = String;

    /// Printable ASCII without spaces (it travels as an HTTP/2 header value), at least
    /// [`MIN_TOKEN_LEN`] characters. The error never quotes the token.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_token(s)?;
        Ok(ProxyToken(s.to_string()))
    }
}

/// What a token must look like (shared with the proxy's flag through the docs, not code:
/// the proxy checks the same rules on `--control-plane-token`).
fn validate_token(s: &str) -> Result<(), String> {
    if s.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "a proxy token needs at least {MIN_TOKEN_LEN} characters (got {})",
            s.len()
        ));
    }
    if s.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "a proxy token has at most {MAX_TOKEN_LEN} characters"
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a proxy token is printable ASCII without spaces".into());
    }
    Ok(())
}

/// Parses `--proxy-token` without echoing it: clap's own error for a `FromStr` value
/// repeats the value, which here is a secret.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTokenParser;

impl clap::builder::TypedValueParser for ProxyTokenParser {
    type Value = ProxyToken;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<ProxyToken, clap::Error> {
        let invalid = |m: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --proxy-token / PIVOT_PROXY_TOKENS: {m}\n"),
            )
        };
        value
            .to_str()
            .ok_or_else(|| invalid("not valid UTF-8".into()))?
            .parse()
            .map_err(invalid)
    }
}

/// The digests of the accepted proxy tokens; empty: every proxy may subscribe.
#[derive(Clone, Default)]
pub struct ProxyTokens {
    digests: Arc<[[u8; 32]]>,
}

impl std::fmt::Debug for ProxyTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyTokens")
            .field("count", &self.digests.len())
            .finish()
    }
}

impl ProxyTokens {
    /// Keeps the digests of `tokens`, not the tokens.
    pub fn new(tokens: &[ProxyToken]) -> ProxyTokens {
        ProxyTokens {
            digests: tokens.iter().map(|t| digest(&t.0)).collect(),
        }
    }

    /// Tokens are required.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether an `authorization` header value (`Bearer <token>`) names an accepted token.
    /// Always true when no token is configured.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        if !self.required() {
            return Ok(());
        }
        let token = authorization.and_then(bearer).ok_or(Refusal::Missing)?;
        let presented = digest_bytes(token);
        // Every digest is compared, whatever the outcome of the others.
        let found = self
            .digests
            .iter()
            .fold(0u8, |found, d| found | u8::from(ct_eq(d, &presented)));
        if found == 1 {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization: Bearer ...` metadata.
    Missing,
    /// A token that is not one of the configured ones.
    Wrong,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "no proxy token presented",
            Refusal::Wrong => "wrong proxy token",
        }
    }
}

/// The token in `Bearer <token>` (the scheme is case-insensitive, RFC 6750).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn digest(token: &str) -> [u8; 32] {
    digest_bytes(token.as_bytes())
}

fn digest_bytes(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `StreamConfig` interceptor: refuses a call without an accepted token with
/// `UNAUTHENTICATED` before any stream state exists. Logs the peer and why, never the
/// token.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    tokens: ProxyTokens,
    metrics: Arc<Metrics>,
}

impl TokenCheck {
    /// A check against `tokens` (a no-op when none is configured).
    pub fn new(tokens: ProxyTokens, metrics: Arc<Metrics>) -> TokenCheck {
        TokenCheck { tokens, metrics }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match self.tokens.accepts(header) {
            Ok(()) => Ok(request),
            Err(why) => {
                self.metrics.proxy_token_refusals.inc();
                warn!(peer = ?request.remote_addr(), reason = why.as_str(), "config stream refused");
                Err(Status::unauthenticated(format!(
                    "{}: the control plane requires a proxy token (proxy flag --control-plane-token)",
                    why.as_str()
                )))
            }
        }
    }
}

/// The gRPC listener's TLS files as configured.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Server certificate chain, PEM (`--grpc-tls-cert`).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (`--grpc-tls-key`).
    pub key: Option<PathBuf>,
    /// CA that signs the proxies' client certificates, PEM (`--grpc-tls-client-ca`).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Checks that the flags fit together (the files are read by [`server_config`](Self::server_config)).
    pub fn validate(&self) -> Result<(), Error> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(Error::Config(
                "--grpc-tls-cert needs --grpc-tls-key".into(),
            )),
            (None, Some(_)) => Err(Error::Config(
                "--grpc-tls-key needs --grpc-tls-cert".into(),
            )),
            (None, None) if self.client_ca.is_some() => Err(Error::Config(
                "--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key (client certificates are checked over TLS)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Reads the files and builds the server's TLS configuration; `None` without TLS. A
    /// missing or unreadable file, or PEM that rustls refuses, is a configuration error
    /// naming the flag.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, Error> {
        self.validate()?;
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(
            read_pem(cert, "--grpc-tls-cert")?,
            read_pem(key, "--grpc-tls-key")?,
        );
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            // Client certificates are then required (`client_auth_optional` is false).
            config =
                config.client_ca_root(Certificate::from_pem(read_pem(ca, "--grpc-tls-client-ca")?));
        }
        // Builds the acceptor now, so that a bad certificate or key fails the start
        // rather than every handshake.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| {
                Error::Config(format!(
                    "--grpc-tls-cert / --grpc-tls-key / --grpc-tls-client-ca: {}",
                    error_chain(&e)
                ))
            })?;
        Ok(Some(config))
    }
}

/// A PEM file's bytes; an error names the flag and the path.
fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Config(format!(
            "{flag} {}: not a PEM file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// An error and its sources, `: `-separated (tonic's own message is often just
/// "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tokens(list: &[&str]) -> ProxyTokens {
        ProxyTokens::new(&list.iter().map(|t| t.parse().unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn only_configured_tokens_are_accepted() {
        let t = tokens(&["first-token-0123456789", "second-token-0123456789"]);
        assert!(t.required());
        for ok in [
            "Bearer first-token-0123456789",
            "bearer second-token-0123456789",
            "BEARER  first-token-0123456789 ",
        ] {
            assert_eq!(t.accepts(Some(ok.as_bytes())), Ok(()), "{ok}");
        }
        assert_eq!(t.accepts(None), Err(Refusal::Missing));
        for missing in ["", "Bearer ", "Basic Zmlyc3Q=", "first-token-0123456789"] {
            assert_eq!(
                t.accepts(Some(missing.as_bytes())),
                Err(Refusal::Missing),
                "{missing}"
            );
        }
        for wrong in [
            "Bearer first-token-012345678",
            "Bearer first-token-0123456789x",
            "Bearer FIRST-TOKEN-0123456789",
        ] {
            assert_eq!(
                t.accepts(Some(wrong.as_bytes())),
                Err(Refusal::Wrong),
                "{wrong}"
            );
        }
        // None configured: anything goes.
        assert_eq!(ProxyTokens::default().accepts(None), Ok(()));
    }

    #[test]
    fn tokens_are_validated_and_never_shown() {
        assert!("short".parse::<ProxyToken>().is_err());
        assert!("with a space in it 0123".parse::<ProxyToken>().is_err());
        assert!("tab\tinside-0123456789".parse::<ProxyToken>().is_err());
        let t: ProxyToken = "s3cret-token-0123456789".parse().unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        let all = ProxyTokens::new(&[t]);
        assert!(!format!("{all:?}").contains("s3cret"));
        let e = "s3cret".parse::<ProxyToken>().unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn tls_flags_must_fit_together() {
        let p = |s: &str| Some(PathBuf::from(s));
        let cases = [
            (TlsFiles::default(), None),
            (
                TlsFiles {
                    cert: p("c.pem"),
                    ..TlsFiles::default()
                },
                Some("--grpc-tls-cert needs --grpc-tls-key"),
            ),
            (
                TlsFiles {
                    key: p("k.pem"),
                    ..TlsFiles::default()
                },
                Some("--grpc-tls-key needs --grpc-tls-cert"),
            ),
            (
                TlsFiles {
                    client_ca: p("ca.pem"),
                    ..TlsFiles::default()
                },
                Some("--grpc-tls-client-ca needs"),
            ),
        ];
        for (files, want) in cases {
            match (files.validate(), want) {
                (Ok(()), None) => {}
                (Err(Error::Config(m)), Some(w)) => assert!(m.contains(w), "{m}"),
                (got, want) => panic!("{files:?}: {got:?}, want {want:?}"),
            }
        }
        assert!(TlsFiles::default().server_config().unwrap().is_none());
    }

    #[test]
    fn tls_files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            cert: Some(dir.path().join("nope.pem")),
            key: Some(dir.path().join("nope.key")),
            client_ca: None,
        };
        let Err(Error::Config(m)) = missing.server_config() else {
            panic!("a missing file is an error")
        };
        assert!(
            m.starts_with("--grpc-tls-cert ") && m.contains("nope.pem"),
            "{m}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let files = TlsFiles {
            cert: Some(garbage.clone()),
            key: Some(garbage),
            client_ca: None,
        };
        let Err(Error::Config(m)) = files.server_config() else {
            panic!("garbage is an error")
        };
        assert!(m.contains("not a PEM file"), "{m}");

        // A well-formed certificate with a key that does not parse.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let bad_key = dir.path().join("bad.key");
        std::fs::write(
            &bad_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let files = TlsFiles {
            cert: Some(cert_path.clone()),
            key: Some(bad_key),
            client_ca: None,
        };
        assert!(matches!(files.server_config(), Err(Error::Config(_))));

        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let files = TlsFiles {
            cert: Some(cert_path.clone()),
            key: Some(key_path),
            client_ca: Some(cert_path),
        };
        assert!(files.server_config().unwrap().is_some());
    }
}
