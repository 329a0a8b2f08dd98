//! Finding the Redis binaries: explicit option, then environment variable, then `PATH`.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// Environment variable naming the `redis-server` binary to use.
pub const REDIS_SERVER_BIN_ENV: &str = "REDIS_SERVER_BIN";
/// Environment variable naming a `redis-sentinel` binary; without it Sentinels run as
/// `redis-server <conf> --sentinel`.
pub const REDIS_SENTINEL_BIN_ENV: &str = "REDIS_SENTINEL_BIN";

/// How to start a Sentinel.
#[derive(Clone, Debug)]
pub(crate) struct SentinelCommand {
    /// The program to run.
    pub(crate) program: PathBuf,
    /// Whether `--sentinel` must follow the config path (it must for `redis-server`).
    pub(crate) sentinel_flag: bool,
}

/// Resolves the `redis-server` binary: `explicit`, else `$REDIS_SERVER_BIN`, else `PATH`.
pub(crate) fn redis_server(explicit: Option<&Path>) -> Result<PathBuf, SandboxError> {
    if let Some(path) = explicit {
        return resolve(path.as_os_str(), "TopologyOptions::redis_server_bin");
    }
    if let Some(value) = std::env::var_os(REDIS_SERVER_BIN_ENV) {
        return resolve(&value, REDIS_SERVER_BIN_ENV);
    }
    resolve(OsStr::new("redis-server"), "PATH")
}

/// Resolves how to start Sentinels: `explicit`, else `$REDIS_SENTINEL_BIN`, else
/// `server --sentinel`.
pub(crate) fn redis_sentinel(
    explicit: Option<&Path>,
    server: &Path,
) -> Result<SentinelCommand, SandboxError> {
    let program = match (explicit, std::env::var_os(REDIS_SENTINEL_BIN_ENV)) {
        (Some(path), _) => Some(resolve(
            path.as_os_str(),
            "TopologyOptions::redis_sentinel_bin",
        )?),
        (None, Some(value)) => Some(resolve(&value, REDIS_SENTINEL_BIN_ENV)?),
        (None, None) => None,
    };
    Ok(match program {
        Some(program) => SentinelCommand {
            program,
            sentinel_flag: false,
        },
        None => SentinelCommand {
            program: server.to_path_buf(),
            sentinel_flag: true,
        },
    })
}

/// A name with a `/` must be an executable file; a bare name is searched in `PATH`.
fn resolve(name: &OsStr, source: &str) -> Result<PathBuf, SandboxError> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(SandboxError::BinaryNotFound {
                detail: format!(
                    "{} (from {source}) is not an executable file",
                    path.display()
                ),
            })
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| SandboxError::BinaryNotFound {
            detail: format!(
                "no executable {} in PATH ({})",
                path.display(),
                search.to_string_lossy()
            ),
        })
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_is_binary_not_found() {
        let err = redis_server(Some(Path::new("/nonexistent/redis-server")))
            .expect_err("missing binary must fail");
        let message = err.to_string();
        assert!(message.contains("apt-get install redis-server redis-sentinel"));
        assert!(message.contains("REDIS_SERVER_BIN"));
        assert!(message.contains("/nonexistent/redis-server"));
    }

    #[test]
    fn bare_name_is_searched_in_path() {
        // `sh` is on every PATH this crate runs under.
        let found = resolve(OsStr::new("sh"), "test").expect("sh is on PATH");
        assert!(found.is_absolute());
    }

    #[test]
    fn sentinel_defaults_to_server_with_flag() {
        let server = Path::new("/usr/bin/redis-server");
        // Only meaningful when the environment does not override it.
        if std::env::var_os(REDIS_SENTINEL_BIN_ENV).is_none() {
            let cmd = redis_sentinel(None, server).expect("no override");
            assert!(cmd.sentinel_flag);
            assert_eq!(cmd.program, server);
        }
    }
}
