//! Output for people (aligned columns, like `kubectl get`) and for scripts (`--json`: one
//! JSON document, or one per line when following a stream).
//!
//! Everything goes through [`Out`], which turns a closed pipe (`pivotctl events | head`)
//! into a quiet exit instead of a panic or an error message.

use std::io::{self, Write};

use serde::Serialize;

/// Standard output, with broken-pipe handling.
#[derive(Debug)]
pub struct Out {
    json: bool,
}

/// Writing stopped because the reader went away; not an error worth reporting.
#[derive(Debug)]
pub struct PipeClosed;

impl Out {
    /// JSON (`true`) or tables.
    pub fn new(json: bool) -> Out {
        Out { json }
    }

    /// True when printing JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Writes `text` as is.
    pub fn text(&self, text: &str) -> Result<(), PipeClosed> {
        let mut stdout = io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => Ok(()),
            Err(_) => Err(PipeClosed),
        }
    }

    /// Writes `value` as pretty JSON (a document) or as one line (`line`, for streams).
    pub fn value<T: Serialize + ?Sized>(&self, value: &T, line: bool) -> Result<(), PipeClosed> {
        let text = if line {
            serde_json::to_string(value)
        } else {
            serde_json::to_string_pretty(value)
        };
        // Our own types always serialise (no maps with non-string keys).
        let text = text.unwrap_or_else(|e| format!("{{\"error\": \"cannot encode: {e}\"}}"));
        self.text(&format!("{text}\n"))
    }
}

/// Aligned columns with a header row.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra ones dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text: columns separated by three spaces, the last one unpadded.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut l = String::new();
            for (i, c) in cells.take(n).enumerate() {
                l.push_str(c);
                if i + 1 < n {
                    let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                    l.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut self.headers.iter().copied());
        for r in &self.rows {
            let mut cells = r.iter().map(String::as_str).chain(std::iter::repeat(""));
            line(&mut cells);
        }
        out
    }
}

/// `key: value` lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{k}:{:pad$} {v}\n", "", pad = w - k.len()));
    }
    out
}

/// `-` for an empty cell.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let mut t = Table::new(&["NAME", "MASTER", "NOTE"]);
        t.row(vec!["cache".into(), "127.0.0.1:6379".into(), "x".into()]);
        t.row(vec!["sessions-eu".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "NAME          MASTER           NOTE\n\
             cache         127.0.0.1:6379   x\n\
             sessions-eu   -\n"
        );
    }

    #[test]
    fn fields_align() {
        assert_eq!(
            fields(&[("master", "a".into()), ("epoch", "3".into())]),
            "master: a\nepoch:  3\n"
        );
    }
}
