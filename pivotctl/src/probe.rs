//! `pivotctl probe URL`: one HTTP GET with a deadline, for health checks where there is no
//! shell and no curl (the container image is distroless). The answer's status decides the
//! exit code: 2xx healthy, anything else not.

use std::fmt;
use std::time::Duration;

use http::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a probe got no status at all.
#[derive(Debug)]
pub enum ProbeError {
    /// Not an `http://HOST[:PORT]/PATH` URL (the probe speaks plain HTTP/1.1 only: it
    /// checks local listeners).
    BadUrl(String),
    /// Connection refused, reset, or not HTTP.
    Unreachable(String),
    /// No answer within the deadline.
    Timeout(Duration),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::BadUrl(why) => write!(f, "{why}"),
            ProbeError::Unreachable(why) => write!(f, "no answer: {why}"),
            ProbeError::Timeout(t) => {
                write!(f, "no answer within {}", humantime::format_duration(*t))
            }
        }
    }
}

impl std::error::Error for ProbeError {}

/// Parses and checks a probe URL.
pub fn parse_url(url: &str) -> Result<Uri, ProbeError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| ProbeError::BadUrl(format!("`{url}` is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ProbeError::BadUrl(format!(
            "`{url}`: expected http://HOST[:PORT]/PATH"
        )));
    }
    Ok(uri)
}

/// GETs `url` and returns the answer's status; connecting, sending and reading the
/// status line all count against `timeout`. The body is not read.
pub async fn get(url: &str, timeout: Duration) -> Result<StatusCode, ProbeError> {
    let uri = parse_url(url)?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    let client: Client<_, String> = Client::builder(TokioExecutor::new()).build(connector);
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Err(_) => Err(ProbeError::Timeout(timeout)),
        Ok(Err(e)) => {
            // The legacy client's error says "client error (Connect)"; the cause is in
            // its source chain.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            Err(ProbeError::Unreachable(why))
        }
        Ok(Ok(response)) => Ok(response.status()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(parse_url("http://127.0.0.1:9121/readyz").is_ok());
        assert!(parse_url("http://localhost/healthz").is_ok());
        for bad in [
            "https://127.0.0.1/healthz",
            "127.0.0.1:8080",
            "/readyz",
            "http://",
        ] {
            assert!(
                matches!(parse_url(bad), Err(ProbeError::BadUrl(_))),
                "{bad} accepted"
            );
        }
    }
}
