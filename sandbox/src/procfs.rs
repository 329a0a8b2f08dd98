//! What `/proc` says about a process the sandbox or a benchmark started: CPU time, resident
//! memory and context switches, summed over its threads.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// CPU time (user + system) the process's threads have used so far: the sum of their
/// `/proc/PID/task/TID/schedstat` run times (nanoseconds, unlike the clock ticks of
/// `/proc/PID/stat`; threads that have exited are not counted, which is fine for the
/// differences over a few seconds that callers take of processes whose threads live as
/// long as they do).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let mut total = 0u64;
    for task in tasks(pid)? {
        // A thread may exit between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .context("malformed /proc/PID/task/TID/schedstat")?;
    }
    Ok(Duration::from_nanos(total))
}

/// Resident memory (`VmRSS`) of the process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    field_kib(&status, "VmRSS:").with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Context switches (voluntary and not) of every thread of the process so far.
/// `/proc/PID/status` counts only the main thread's, hence the sum over tasks.
pub fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0u64;
    for task in tasks(pid)? {
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v
                    .trim()
                    .parse::<u64>()
                    .context("malformed context switch count in /proc/PID/task/TID/status")?;
            }
        }
    }
    Ok(total)
}

fn tasks(pid: u32) -> Result<Vec<std::path::PathBuf>> {
    let dir = format!("/proc/{pid}/task");
    Ok(std::fs::read_dir(Path::new(&dir))
        .with_context(|| format!("listing {dir}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect())
}

fn field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn own_process_has_cpu_memory_and_switches() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        // Spin a little so the run time is not zero.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(5) {}
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
        assert!(context_switches(pid).unwrap() > 0);
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tx\nVmRSS:\t   1234 kB\nThreads:\t1\n";
        assert_eq!(field_kib(status, "VmRSS:"), Some(1234));
        assert_eq!(field_kib(status, "VmHWM:"), None);
    }
}
