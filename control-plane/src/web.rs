//! The web admin UI's files, embedded in the binary at build time (no Node, no files to
//! deploy next to it). `http` serves them at `/` and `/assets/{file}`.

/// An embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// The embedded file at `path`, relative to `web/` (`"index.html"`, `"app.js"`,
/// `"style.css"`); `None` if there is no such file.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body): (&'static str, &'static [u8]) = match path {
        "index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../web/index.html"),
        ),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_embedded() {
        let index = asset("index.html");
        assert!(
            index.is_some_and(|a| a.content_type.starts_with("text/html")
                && a.body.starts_with(b"<!doctype html>"))
        );
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }
}
