//! How busy this host is: run-queue length (runnable tasks) and CPU capacity.
//!
//! On a real machine the run queue is machine-wide (`procs_running` of `/proc/stat`). On a test
//! host, which shares one kernel with the others, it is the number of runnable threads of the
//! host's cgroup, and its capacity is the cgroup's CPU quota.

use std::path::Path;
use std::time::Duration;

use crate::{Pid, Result, SysError};

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| SysError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn parse_err(path: &Path, detail: impl Into<String>) -> SysError {
    SysError::Parse {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Runnable tasks of the whole machine, not counting the thread that asks.
pub fn machine_run_queue() -> Result<u32> {
    let path = Path::new("/proc/stat");
    let text = read(path)?;
    let n: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("procs_running "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| parse_err(path, "no procs_running line"))?;
    Ok(n.saturating_sub(1))
}

/// The state letter of thread `tid` of `pid` (`R`, `S`, `D`, …), if it still exists.
fn thread_state(pid: &str, tid: &str) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // "tid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Runnable threads of the processes in cgroup `dir` (its `cgroup.procs`), except this
/// process's own.
pub fn cgroup_run_queue(dir: &Path) -> Result<u32> {
    let procs = dir.join("cgroup.procs");
    let text = read(&procs)?;
    let me = crate::host::self_pid().as_raw().to_string();
    let mut running = 0;
    for pid in text.lines().map(str::trim).filter(|p| !p.is_empty()) {
        if pid == me {
            continue;
        }
        // A process may end between the two reads: it simply does not count.
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let tid = task.file_name();
            if thread_state(pid, &tid.to_string_lossy()) == Some('R') {
                running += 1;
            }
        }
    }
    Ok(running)
}

/// CPUs the processes of cgroup `dir` may use: its CFS quota (v1 `cpu.cfs_quota_us` /
/// `cpu.cfs_period_us`, v2 `cpu.max`), or `None` when it has no limit.
pub fn cgroup_cpu_quota(dir: &Path) -> Result<Option<f64>> {
    let v2 = dir.join("cpu.max");
    if v2.exists() {
        let text = read(&v2)?;
        let mut parts = text.split_whitespace();
        let (quota, period) = (parts.next(), parts.next());
        return match (quota, period.and_then(|p| p.parse::<f64>().ok())) {
            (Some("max"), _) => Ok(None),
            (Some(q), Some(p)) if p > 0.0 => q
                .parse::<f64>()
                .map(|q| Some(q / p))
                .map_err(|e| parse_err(&v2, e.to_string())),
            _ => Err(parse_err(&v2, format!("unexpected {text:?}"))),
        };
    }
    let qpath = dir.join("cpu.cfs_quota_us");
    let quota: i64 = read(&qpath)?
        .trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| parse_err(&qpath, e.to_string()))?;
    if quota < 0 {
        return Ok(None);
    }
    let ppath = dir.join("cpu.cfs_period_us");
    let period: i64 = read(&ppath)?
        .trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| parse_err(&ppath, e.to_string()))?;
    if period <= 0 {
        return Err(parse_err(&ppath, format!("period {period}")));
    }
    Ok(Some(quota as f64 / period as f64))
}

/// CPUs this process may run on (its affinity mask).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU time (user + system) of a process, from its `/proc/PID/stat`.
pub fn cpu_time(stat: &crate::proc::Stat) -> Duration {
    let ticks = procfs::ticks_per_second().max(1);
    Duration::from_millis((stat.utime + stat.stime) * 1000 / ticks)
}

/// CPU time (user + system) process `pid` used, and whether it is runnable now (state R).
pub fn cpu_usage(pid: Pid) -> Result<(Duration, bool)> {
    let stat = crate::proc::stat(pid)?;
    Ok((cpu_time(&stat), stat.state == 'R'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn machine_run_queue_reads() {
        // Only that it parses: the figure depends on the machine.
        machine_run_queue().unwrap();
    }

    #[test]
    fn spinning_thread_is_runnable() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let spinner = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let me = crate::host::self_pid().as_raw().to_string();
        let running = std::fs::read_dir(format!("/proc/{me}/task"))
            .unwrap()
            .flatten()
            .filter(|t| thread_state(&me, &t.file_name().to_string_lossy()) == Some('R'))
            .count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        // The spinner, and the thread reading.
        assert!(running >= 2, "{running} runnable threads");
    }

    #[test]
    fn quota_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(cgroup_cpu_quota(dir.path()).unwrap(), Some(0.5));
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cgroup_cpu_quota(dir.path()).unwrap(), None);
        let v1 = tempfile::tempdir().unwrap();
        std::fs::write(v1.path().join("cpu.cfs_quota_us"), "150000\n").unwrap();
        std::fs::write(v1.path().join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cgroup_cpu_quota(v1.path()).unwrap(), Some(1.5));
        std::fs::write(v1.path().join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(cgroup_cpu_quota(v1.path()).unwrap(), None);
        assert!(cgroup_cpu_quota(Path::new("/nonexistent")).is_err());
    }
}
