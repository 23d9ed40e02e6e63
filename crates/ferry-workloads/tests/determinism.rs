//! The Rust workloads are deterministic and behave as documented.
//!
//! Besides checking that, this test target makes `cargo test --workspace` build the workload
//! binaries into the target directory, where ferry's integration tests look for them.

use std::process::Command;

fn run(exe: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {exe}: {e}"));
    assert!(
        out.stderr.is_empty(),
        "{exe} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().expect("workload killed by a signal");
    (
        code,
        String::from_utf8(out.stdout).expect("non-UTF-8 output"),
    )
}

#[test]
fn wl_compute_is_deterministic() {
    let exe = env!("CARGO_BIN_EXE_wl-compute");
    let (code, first) = run(exe, &["5", "200000"]);
    assert_eq!(code, 0);
    let (_, second) = run(exe, &["5", "200000"]);
    assert_eq!(first, second);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"wl-compute start steps=5 rounds=200000")
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("step ")).count(), 5);
    assert!(lines.iter().any(|l| l.starts_with("result ")));
    assert_eq!(lines.last(), Some(&"done"));
}

#[test]
fn wl_compute_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_wl-compute"))
        .arg("many")
        .output()
        .expect("running wl-compute");
    assert_eq!(out.status.code(), Some(91));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn wl_threads_runs_two_threads_and_finishes() {
    let (code, out) = run(env!("CARGO_BIN_EXE_wl-threads"), &["0"]);
    assert_eq!(code, 0);
    assert_eq!(out, "wl-threads start\nready\njoined\ndone\n");
}
