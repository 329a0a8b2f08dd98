//! A process the bench starts and owns: its output goes to a log file, and dropping it
//! kills it (`SIGKILL`, then reaps it), so an error or Ctrl-C leaves nothing behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// An owned, running (or exited) child process.
#[derive(Debug)]
pub(crate) struct OwnedChild {
    name: String,
    child: Child,
    log_path: PathBuf,
    /// Set once `try_wait` has reaped it: its PID may then belong to another process.
    reaped: bool,
}

impl OwnedChild {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `log_path`.
    pub(crate) fn spawn(name: &str, mut command: Command, log_path: &Path) -> Result<OwnedChild> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating the log file handle")?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        tracing::info!(name, pid = child.id(), "started");
        Ok(OwnedChild {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            reaped: false,
        })
    }

    /// Its PID, as long as it has not exited (then the PID may be another process's).
    pub(crate) fn pid(&mut self) -> Result<u32> {
        if self.exited()? {
            anyhow::bail!(
                "{} has exited; its output ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(self.child.id())
    }

    /// True once it has exited; reaps it.
    pub(crate) fn exited(&mut self) -> Result<bool> {
        if !self.reaped {
            self.reaped = self
                .child
                .try_wait()
                .with_context(|| format!("polling {}", self.name))?
                .is_some();
        }
        Ok(self.reaped)
    }

    /// The last lines of its output.
    pub(crate) fn log_tail(&self) -> String {
        match std::fs::read_to_string(&self.log_path) {
            Ok(s) => {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if !self.reaped && matches!(self.child.try_wait(), Ok(None)) {
            // Our own unreaped child: the PID cannot have been reused.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
