//! The web admin UI: the files of `web/` (plain HTML, CSS and ES modules, no build step),
//! embedded in the binary at compile time so that running the control plane needs nothing
//! else. The HTTP layer serves `index.html` at `/` and every file at `/assets/{file}`.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// `Content-Type` to serve it with.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of `web/`: (path relative to `web/`, content type, bytes). A unit test
/// checks that this list and the directory agree.
macro_rules! embed {
    ($($file:literal => $ty:expr),* $(,)?) => {
        &[$(($file, $ty, include_bytes!(concat!("../../web/", $file)))),*]
    };
}

const ASSETS: &[(&str, &str, &[u8])] = embed![
    "index.html" => HTML,
    "style.css" => CSS,
    "favicon.svg" => SVG,
    "app.js" => JS,
    "api.js" => JS,
    "dom.js" => JS,
    "eventfmt.js" => JS,
    "health.js" => JS,
    "live.js" => JS,
    "state.js" => JS,
    "timeline.js" => JS,
    "topology.js" => JS,
    "ui.js" => JS,
    "view-audit.js" => JS,
    "view-events.js" => JS,
    "view-overview.js" => JS,
    "view-proxies.js" => JS,
    "view-service.js" => JS,
    "view-tokens.js" => JS,
];

/// `path` relative to web/ ("index.html", "app.js", "style.css"); None if not embedded.
pub fn asset(path: &str) -> Option<Asset> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, content_type, body)| Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn web_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
    }

    /// A file added to web/ but not to the list would be a 404 in production only.
    #[test]
    fn every_file_of_web_is_embedded_and_nothing_else() {
        let on_disk: BTreeSet<String> = std::fs::read_dir(web_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let embedded: BTreeSet<String> = ASSETS.iter().map(|(n, _, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded);
        for (name, _, body) in ASSETS {
            assert_eq!(
                *body,
                std::fs::read(web_dir().join(name)).unwrap().as_slice(),
                "{name}"
            );
        }
    }

    /// Every `/assets/...` reference of the page and every relative `import` of a module
    /// names an embedded file.
    #[test]
    fn references_resolve() {
        let mut refs = Vec::new();
        for (name, _, body) in ASSETS {
            let text = std::str::from_utf8(body).unwrap();
            for piece in text.split("/assets/").skip(1) {
                let end = piece.find(['"', '\'', ')']).unwrap();
                refs.push((name.to_string(), piece[..end].to_string()));
            }
            if name.ends_with(".js") {
                for piece in text.split("from \"./").skip(1) {
                    let end = piece.find('"').unwrap();
                    refs.push((name.to_string(), piece[..end].to_string()));
                }
            }
        }
        assert!(refs.len() > 10, "{refs:?}");
        for (from, to) in refs {
            assert!(asset(&to).is_some(), "{from} refers to {to}, not embedded");
        }
    }

    #[test]
    fn lookup() {
        let index = asset("index.html").unwrap();
        assert_eq!(index.content_type, HTML);
        assert!(std::str::from_utf8(index.body).unwrap().contains("<html"));
        assert_eq!(asset("app.js").unwrap().content_type, JS);
        assert_eq!(asset("style.css").unwrap().content_type, CSS);
        assert!(asset("nope.js").is_none());
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }
}
