//! `--config FILE`: a TOML file that sets flags, read through clap itself so that the file
//! and the flags cannot drift apart.
//!
//! The file's keys are the long flag names (`http-listen = "127.0.0.1:8080"`); a repeatable
//! flag takes an array (`service = ["mymaster=10.0.0.1:26379"]`), an on/off flag a
//! boolean. Nothing here knows any particular flag: the keys, which flags repeat, and which
//! hold secrets (`hide_env_values`) all come from introspecting the clap [`Command`], so a
//! flag added to [`Config`](super::Config) is a valid key at once.
//!
//! Precedence per flag: command line, then environment variable, then file, then default.
//! The command line and the environment are parsed first; [`ArgMatches::value_source`]
//! tells which flags they left unset, and the file's values for exactly those are handed to
//! clap as `--flag=value` arguments in a second parse, so that every flag's own value
//! parser (addresses, durations, `NAME=...` specs, enums) validates file values too. An
//! error about such a value is then reported with the file, line and key instead of a flag
//! the operator never typed; the value itself is left out for flags that hold secrets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Parser};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Largest config file read (a config file is a few KiB; this bounds a mistaken path).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Parses `args` (the first one is the binary name) and the environment as
/// [`Parser::try_parse_from`] does, then fills every flag given neither on the command line
/// nor in the environment from the TOML file named by the argument with id `file_arg` (the
/// `--config` flag), if given.
pub fn parse<C: Parser>(args: Vec<OsString>, file_arg: &str) -> Result<C, clap::Error> {
    // First pass: what the command line and the environment say. Required flags may come
    // from the file, so none is required yet; the second pass checks them.
    let mut lenient = C::command().mut_args(|a| a.required(false));
    let first = match lenient.try_get_matches_from_mut(&args) {
        Ok(m) => m,
        // `--help`, `--version`, or a bad flag: exactly what clap alone reports.
        Err(e) => return Err(C::command().try_get_matches_from(&args).err().unwrap_or(e)),
    };
    let mut cmd = C::command();
    let flag = cmd
        .get_arguments()
        .find(|a| a.get_id() == file_arg)
        .and_then(Arg::get_long)
        .map_or_else(|| file_arg.to_string(), |l| format!("--{l}"));
    let path = first
        .try_get_one::<PathBuf>(file_arg)
        .map_err(|e| cmd.error(ErrorKind::InvalidValue, format!("{flag}: {e}")))?
        .cloned();
    let Some(path) = path else {
        let matches = cmd.try_get_matches_from_mut(&args)?;
        return C::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd));
    };
    let text = read(&path)
        .map_err(|e| cmd.error(ErrorKind::Io, format!("{flag} {}: {e}", path.display())))?;
    let file = FileArgs::from_toml(&cmd, &first, file_arg, &path, &text)
        .map_err(|e| cmd.error(e.kind, e.message))?;

    // Each file value alone through its flag's parser first, so that an error is pinned to
    // its line whatever the parser's error says (a custom parser's may name no flag).
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| cmd.get_name().into());
    for (g, arg) in file.given.iter().zip(&file.argv) {
        if let Err(e) = lenient.try_get_matches_from_mut([bin.clone(), arg.clone()]) {
            return Err(file.explain_value(&mut cmd, g, &e));
        }
    }

    // Second pass: the file's flags first (after the binary name), then the real ones; a
    // file flag is never one the command line or the environment set, so order is moot.
    let mut merged = Vec::with_capacity(args.len() + file.argv.len() + 1);
    merged.push(bin);
    merged.extend(file.argv.iter().cloned());
    merged.extend(args.iter().skip(1).cloned());
    let matches = cmd
        .try_get_matches_from_mut(merged)
        .map_err(|e| file.explain(&mut cmd, e))?;
    C::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

fn read(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than a config file can be ({MAX_FILE_BYTES})",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// A problem with the file, before clap sees any of its values.
#[derive(Debug)]
struct FileError {
    kind: ErrorKind,
    message: String,
}

/// One value the file gives, and where.
#[derive(Debug)]
struct Given {
    /// The long flag name (the key).
    key: String,
    /// The value as clap gets it (`None`: a flag without a value, such as `--verbose`).
    value: Option<String>,
    /// 1-based line of the value in the file.
    line: usize,
    /// The flag holds a secret: errors never show its value.
    secret: bool,
    /// The flag's value delimiter: clap splits a value on it, and reports the piece.
    delimiter: Option<char>,
}

/// The file's values for the flags the command line and the environment left unset, as
/// `--flag=value` arguments, with where each came from.
#[derive(Debug)]
struct FileArgs {
    path: PathBuf,
    given: Vec<Given>,
    argv: Vec<OsString>,
}

impl FileArgs {
    fn from_toml(
        cmd: &Command,
        first: &ArgMatches,
        file_arg: &str,
        path: &Path,
        text: &str,
    ) -> Result<FileArgs, FileError> {
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);
        let err = |kind, line: usize, message: String| FileError {
            kind,
            message: format!("{}:{line}: {message}", path.display()),
        };
        let table = DeTable::parse(text).map_err(|e| {
            // The parser's own rendering quotes the offending line, which may hold a
            // secret: only its message and position are shown.
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            err(
                ErrorKind::InvalidValue,
                line,
                format!("not valid TOML: {}", e.message()),
            )
        })?;
        let mut entries: Vec<_> = table.get_ref().iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);

        let keys = settable(cmd, file_arg);
        let mut given = Vec::new();
        for (key, value) in entries {
            let (name, line) = (key.get_ref().as_ref(), at(key.span()));
            if cmd
                .get_arguments()
                .any(|a| a.get_id() == file_arg && a.get_long() == Some(name))
            {
                return Err(err(
                    ErrorKind::ArgumentConflict,
                    line,
                    format!("`{name}` cannot be set in the config file itself"),
                ));
            }
            let Some(arg) = keys.iter().find(|a| a.get_long() == Some(name)) else {
                return Err(err(ErrorKind::UnknownArgument, line, unknown(name, &keys)));
            };
            if matches!(
                first.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let values = values_of(arg, value).map_err(|m| {
                err(
                    ErrorKind::InvalidValue,
                    at(value.span()),
                    format!("`{name}`: {m}"),
                )
            })?;
            for (v, span) in values {
                given.push(Given {
                    key: name.to_string(),
                    value: v,
                    line: at(span),
                    secret: arg.is_hide_env_values_set(),
                    delimiter: arg.get_value_delimiter(),
                });
            }
        }
        let argv = given
            .iter()
            .map(|g| match &g.value {
                Some(v) => OsString::from(format!("--{}={v}", g.key)),
                None => OsString::from(format!("--{}", g.key)),
            })
            .collect();
        Ok(FileArgs {
            path: path.to_path_buf(),
            given,
            argv,
        })
    }

    /// Rewrites a clap error about a value from the file so that it names the file, line and
    /// key (and hides secrets); other errors pass through.
    fn explain(&self, cmd: &mut Command, e: clap::Error) -> clap::Error {
        let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
            return e;
        };
        // `--http-listen <ADDR>` -> `http-listen`.
        let key = flag
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_start_matches('-');
        let bad = match e.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(v)) => Some(v.as_str()),
            _ => None,
        };
        let mine = self.given.iter().filter(|g| g.key == key);
        match mine
            .clone()
            .find(|g| bad.is_some_and(|b| g.holds(b)))
            .or_else(|| mine.clone().next())
        {
            Some(g) => self.explain_value(cmd, g, &e),
            None => e,
        }
    }

    /// The error for value `g` from the file, which clap rejected with `e`: file, line, key,
    /// the value unless it is a secret, and the parser's reason (secrets cut out).
    fn explain_value(&self, cmd: &mut Command, g: &Given, e: &clap::Error) -> clap::Error {
        let bad = match e.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(v)) => Some(v.as_str()),
            _ => g.value.as_deref(),
        };
        let value = match bad {
            Some(_) if g.secret => " (value hidden)".to_string(),
            Some(b) => format!(" \"{}\"", b.escape_debug()),
            None => String::new(),
        };
        let reason = match (e.kind(), std::error::Error::source(e)) {
            (_, Some(source)) => source.to_string(),
            (ErrorKind::InvalidValue, None) => match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => {
                    format!("expected one of: {}", valid.join(", "))
                }
                _ => "not one of the possible values".to_string(),
            },
            // A parser's own `clap::Error`: its message, without clap's decoration.
            (_, None) => {
                let text = e.to_string();
                let text = text.strip_prefix("error: ").unwrap_or(&text);
                text.split("\n\n")
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            }
        };
        let reason = match (bad, &g.value) {
            (Some(b), Some(whole)) if g.secret => redact(&redact(&reason, b), whole),
            _ => reason,
        };
        cmd.error(
            e.kind(),
            format!(
                "{}:{}: `{}`: invalid value{value}: {reason}",
                self.path.display(),
                g.line,
                g.key
            ),
        )
    }
}

impl Given {
    /// Whether clap's `bad` value is this value (or, split on the delimiter, a piece of it).
    fn holds(&self, bad: &str) -> bool {
        match (&self.value, self.delimiter) {
            (Some(v), _) if v == bad => true,
            (Some(v), Some(d)) => v.split(d).any(|p| p == bad),
            _ => false,
        }
    }
}

/// Arguments the file may set: every argument with a long name, but the file's own and
/// clap's `--help`/`--version`.
fn settable<'c>(cmd: &'c Command, file_arg: &str) -> Vec<&'c Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_id() != file_arg && a.get_long().is_some())
        .filter(|a| {
            !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
        })
        .collect()
}

/// The error for an unknown key: the closest valid key, or all of them.
fn unknown(name: &str, keys: &[&Arg]) -> String {
    let longs = keys.iter().filter_map(|a| a.get_long());
    let closest = longs
        .clone()
        .map(|k| (strsim::jaro(name, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, k)) => format!("unknown key `{name}`; did you mean `{k}`?"),
        None => {
            let mut all: Vec<&str> = longs.collect();
            all.sort_unstable();
            format!(
                "unknown key `{name}`; the keys are the long flag names: {}",
                all.join(", ")
            )
        }
    }
}

/// One occurrence of a flag from the file: its value (`None` for an on/off flag) and the
/// byte range it came from.
type Occurrence = (Option<String>, std::ops::Range<usize>);

/// The clap arguments for one key's TOML value, one per occurrence.
fn values_of(arg: &Arg, value: &Spanned<DeValue<'_>>) -> Result<Vec<Occurrence>, String> {
    let span = value.span();
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value.get_ref() {
            DeValue::Boolean(b) => {
                // The flag's presence sets the non-default value; absent is the default.
                let on = *b == matches!(arg.get_action(), ArgAction::SetTrue);
                Ok(if on { vec![(None, span)] } else { vec![] })
            }
            other => Err(format!("expected true or false, found {}", kind(other))),
        },
        ArgAction::Count => match value.get_ref() {
            DeValue::Integer(i) => {
                let n = u8::from_str_radix(i.as_str(), i.radix())
                    .map_err(|_| "expected a count from 0 to 255".to_string())?;
                Ok(vec![(None, span); usize::from(n)])
            }
            other => Err(format!("expected a count, found {}", kind(other))),
        },
        ArgAction::Append => match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|item| {
                    scalar(item.get_ref())
                        .map(|s| (Some(s), item.span()))
                        .ok_or_else(|| {
                            format!(
                                "expected an array of strings or numbers, found {} in it",
                                kind(item.get_ref())
                            )
                        })
                })
                .collect(),
            // One value of a repeatable flag: as given once on the command line.
            other => scalar(other).map(|s| vec![(Some(s), span)]).ok_or_else(|| {
                format!(
                    "expected a string or an array of strings, found {}",
                    kind(other)
                )
            }),
        },
        _ => match value.get_ref() {
            DeValue::Array(_) => Err(format!(
                "takes one value, not an array (--{} is not repeatable)",
                arg.get_long().unwrap_or_default()
            )),
            other => scalar(other)
                .map(|s| vec![(Some(s), span)])
                .ok_or_else(|| format!("expected a string or a number, found {}", kind(other))),
        },
    }
}

/// A TOML scalar as the text of a flag value; `None` for arrays, tables and datetimes.
fn scalar(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n.to_string()),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => None,
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).map_or(1, |before| {
        before.bytes().filter(|&b| b == b'\n').count() + 1
    })
}

/// `reason` without the secret `value`, nor the part after its first `=` (`NAME=SECRET`
/// specs), should a value parser have quoted them.
fn redact(reason: &str, value: &str) -> String {
    let mut out = reason.to_string();
    let secret = value.split_once('=').map_or(value, |(_, s)| s);
    for s in [value, secret] {
        if !s.is_empty() {
            out = out.replace(s, "<hidden>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Flags of every kind the mechanism handles, none of them known to it.
    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long = "config")]
        file: Option<PathBuf>,
        /// Required: may come from the file.
        #[arg(long)]
        name: String,
        #[arg(long)]
        verbose: bool,
        #[arg(long, action = ArgAction::Count)]
        level: u8,
        #[arg(long, value_delimiter = ',')]
        tag: Vec<String>,
        #[arg(long, hide_env_values = true, value_parser = token)]
        token: Option<String>,
        #[arg(long, value_parser = RawParser)]
        raw: Option<u32>,
    }

    /// A parser that reports with its own `clap::Error`, naming no flag in its context.
    #[derive(Debug, Clone, Copy)]
    struct RawParser;

    impl clap::builder::TypedValueParser for RawParser {
        type Value = u32;

        fn parse_ref(
            &self,
            _cmd: &Command,
            _arg: Option<&Arg>,
            value: &std::ffi::OsStr,
        ) -> Result<u32, clap::Error> {
            value
                .to_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| clap::Error::raw(ErrorKind::ValueValidation, "not a count\n"))
        }
    }

    fn token(s: &str) -> Result<String, String> {
        if s.len() < 8 {
            return Err(format!("`{s}` is too short"));
        }
        Ok(s.to_string())
    }

    fn demo(toml: &str, args: &[&str]) -> Result<Demo, clap::Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv: Vec<OsString> = vec!["demo".into(), "--config".into(), path.into()];
        argv.extend(args.iter().map(OsString::from));
        parse(argv, "file")
    }

    #[test]
    fn any_kind_of_flag() {
        let d = demo(
            "name = \"n\"\nverbose = true\nlevel = 3\ntag = [\"a,b\", \"c\"]\ntoken = \"long-enough\"",
            &[],
        )
        .unwrap();
        assert_eq!(d.name, "n", "a required flag from the file");
        assert!(d.verbose);
        assert_eq!(d.level, 3);
        assert_eq!(
            d.tag,
            ["a", "b", "c"],
            "split on the delimiter, as clap does"
        );
        assert_eq!(d.token.as_deref(), Some("long-enough"));
        let d = demo("name = \"n\"\nverbose = false", &["--level", "--level"]).unwrap();
        assert!(!d.verbose);
        assert_eq!(d.level, 2, "the command line's");
        let d = demo("name = \"n\"\ntag = \"x\"", &["--tag", "y"]).unwrap();
        assert_eq!(d.tag, ["y"]);
    }

    #[test]
    fn errors() {
        let e = demo("verbose = true", &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument, "{e}");
        let e = demo("name = \"n\"\nverbose = \"yes\"", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains(":2: `verbose`: expected true or false, found a string"),
            "{e}"
        );
        let e = demo("name = \"n\"\nlevel = 300", &[]).unwrap_err();
        assert!(e.to_string().contains("`level`: expected a count"), "{e}");
        let e = demo(
            "name = \"n\"\ntag = [\"ok\", \"bad\", 1.5]\ntoken = \"short\"",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(":3: `token`: invalid value (value hidden)"),
            "{e}"
        );
        assert!(!e.to_string().contains("short"), "{e}");
        let e = demo("name = \"n\"\n\nraw = \"many\"", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains(":3: `raw`: invalid value \"many\": not a count"),
            "{e}"
        );
        assert_eq!(demo("name = \"n\"\nraw = 7", &[]).unwrap().raw, Some(7));
        let e = demo("name = \"n\"\nhelp = true", &[]).unwrap_err();
        assert!(e.to_string().contains("unknown key `help`"), "{e}");
        // A bad value on the command line is clap's own error, untouched.
        let e = demo("name = \"n\"", &["--token", "tiny"]).unwrap_err();
        assert!(e.to_string().contains("'--token <TOKEN>'"), "{e}");
    }
}
