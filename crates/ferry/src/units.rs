//! Human units and the JSON shape of reports.

use std::path::Path;
use std::time::Duration;

use ferry_checkpoint::{CheckpointReport, RestoreReport};
use serde_json::{Value, json};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn checkpoint_json(r: &CheckpointReport, dir: &Path) -> Value {
    json!({
        "pid": r.pid,
        "dir": dir.display().to_string(),
        "left_running": r.leave_running,
        "total_ms": ms(r.total),
        "freeze_ms": ms(r.freeze),
        "memory_copy_ms": ms(r.memory_copy),
        "memory_bytes": r.memory_bytes,
        "mappings": r.mappings,
        "page_runs": r.page_runs,
        "fds": r.fds,
        "injected_calls": r.injected_calls,
        "interrupted": r.interrupted,
        "pagemap_scan": r.pagemap_scan,
    })
}

pub fn restore_json(r: &RestoreReport, pid: i32) -> Value {
    json!({
        "pid": pid,
        "old_pid": r.old_pid,
        "total_ms": ms(r.total),
        "load_ms": ms(r.load),
        "memory_copy_ms": ms(r.memory_copy),
        "memory_bytes": r.memory_bytes,
        "mappings": r.mappings,
        "injected_calls": r.injected_calls,
        "privileged_opens": r.privileged_opens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(Duration::from_micros(1500)), "1.50 ms");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(ms(Duration::from_micros(1234)), 1.234);
    }
}
