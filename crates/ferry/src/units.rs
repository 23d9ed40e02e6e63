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

/// `2026-11-24 18:25:07 UTC` from milliseconds since the epoch.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
        "children": children_json(&r.children),
    })
}

/// The descendants of a process tree: `[{"pid": N, "zombie": bool}]`.
pub fn children_json(children: &[(i32, bool)]) -> Value {
    children
        .iter()
        .map(|&(pid, zombie)| json!({"pid": pid, "zombie": zombie}))
        .collect()
}

pub fn restore_json(r: &RestoreReport, pid: i32, children: &[(i32, bool)]) -> Value {
    json!({
        "pid": pid,
        "old_pid": r.old_pid,
        "children": children_json(children),
        "threads": r.threads.iter().map(|&(old, new)| json!({"old_tid": old, "tid": new})).collect::<Vec<_>>(),
        "total_ms": ms(r.total),
        "load_ms": ms(r.load),
        "memory_copy_ms": ms(r.memory_copy),
        "memory_bytes": r.memory_bytes,
        "mappings": r.mappings,
        "injected_calls": r.injected_calls,
        "round_trips": r.round_trips,
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
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_550_784_925), "2026-11-24 20:06:24 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
