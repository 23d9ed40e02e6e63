//! Message links end to end on the test cluster (real daemons, real processes, real sockets):
//! two processes ping-pong while either migrates with every algorithm and along several hops,
//! a burst keeps its order while its receiver moves, a refused migration leaves the links
//! working, a daemon restart loses nothing, and a C program speaks the same API.
//!
//! One cluster at a time (shared with the other cluster tests); each test brings its own up.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{ALGORITHMS, Cluster, Moved};
use support::*;

fn wait_file(cluster: &Cluster, path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}\n{}",
            path.display(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ferry bench WORKLOAD ARGS` on NODE, in DIR.
fn start(cluster: &Cluster, node: &str, dir: &Path, label: &str, args: &[&str]) -> Proc {
    let launch = Launch::new(label, ferry_bin(), dir)
        .arg("bench")
        .args(args)
        .cwd(dir)
        .stderr_to_stdout();
    cluster.spawn(node, &launch)
}

/// Reads the pinger's summary once it stopped: (sent, echoed, lost, duplicated, reordered).
fn stop_ping(cluster: &Cluster, dir: &Path) -> Value {
    std::fs::write(dir.join("stop"), b"").expect("writing the stop file");
    wait_file(cluster, &dir.join("summary.json"), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(100));
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary"))
        .expect("summary JSON")
}

fn assert_clean(cluster: &Cluster, summary: &Value) {
    for key in ["lost", "duplicated", "reordered"] {
        assert_eq!(
            summary[key].as_u64(),
            Some(0),
            "{key} messages: {summary}\n{}",
            cluster.logs()
        );
    }
    assert_eq!(summary["sent"], summary["echoed"], "{summary}");
    assert!(
        summary["sent"].as_u64().unwrap_or(0) > 100,
        "too few messages to mean anything: {summary}"
    );
}

/// Waits until the pinger has had N more echoes (it writes its count every 64).
fn wait_for_more_echoes(cluster: &Cluster, dir: &Path, n: u64) {
    let echoed = || {
        std::fs::read_to_string(dir.join("echoed"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let target = echoed() + n;
    let deadline = Instant::now() + Duration::from_secs(30);
    while echoed() < target {
        assert!(
            Instant::now() < deadline,
            "messages stopped flowing: {} echoes, waiting for {target}\n{}",
            echoed(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An echo (endpoint "echo") on ECHO_AT and a pinger (endpoint "ping") on PING_AT, messages
/// flowing: (echo, pinger, the pinger's directory).
fn ping_pong(
    cluster: &Cluster,
    scratch: &Scratch,
    echo_at: &str,
    ping_at: &str,
) -> (Proc, Proc, std::path::PathBuf) {
    let (echo_dir, ping_dir) = (scratch.subdir("echo"), scratch.subdir("ping"));
    let echo = start(
        cluster,
        echo_at,
        &echo_dir,
        "echo",
        &["msg-echo", "--name", "echo"],
    );
    wait_file(cluster, &echo_dir.join("ready"), Duration::from_secs(10));
    let ping = start(
        cluster,
        ping_at,
        &ping_dir,
        "ping",
        &["msg-ping", "--name", "ping", "--to", "echo"],
    );
    wait_file(cluster, &ping_dir.join("ready"), Duration::from_secs(15));
    (echo, ping, ping_dir)
}

fn link_figures(report: &Value) -> &Value {
    let links = &report["links"];
    assert_eq!(links["links"].as_u64(), Some(1), "no link moved: {report}");
    assert!(
        links["message_freeze_ms"].as_f64().is_some(),
        "no message freeze time: {report}"
    );
    links
}

#[test]
fn ping_pong_loses_nothing_while_either_end_migrates_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &["--cpu-quota", "max"]);
    let scratch = Scratch::new("messages-pingpong");
    let (echo, ping, ping_dir) = ping_pong(&cluster, &scratch, "n1", "n3");

    // The echo moves along a route with every algorithm: n1 → n2 → n3 (next to its peer)
    // → n1 → n2 → n1. The pinger's link cache lags behind by several hops.
    let route = ["n2", "n3", "n1", "n2", "n1"];
    let (mut at, mut pid) = ("n1".to_string(), echo.raw_pid());
    let mut moved: Vec<Moved> = Vec::new();
    for (algorithm, to) in ALGORITHMS.iter().zip(route) {
        wait_for_more_echoes(&cluster, &ping_dir, 50);
        let (m, report) = cluster.migrate_ok(&at, pid, to, algorithm, &[]);
        link_figures(&report);
        at = m.node.clone();
        pid = m.pid;
        moved.push(m);
    }
    // Now the sender moves, twice, while it sends.
    let (mut ping_at, mut ping_pid) = ("n3".to_string(), ping.raw_pid());
    for (algorithm, to) in [("freeze-free", "n2"), ("total-copy", "n3")] {
        wait_for_more_echoes(&cluster, &ping_dir, 50);
        let (m, report) = cluster.migrate_ok(&ping_at, ping_pid, to, algorithm, &[]);
        link_figures(&report);
        ping_at = m.node.clone();
        ping_pid = m.pid;
        moved.push(m);
    }
    wait_for_more_echoes(&cluster, &ping_dir, 50);
    let summary = stop_ping(&cluster, &ping_dir);
    assert_clean(&cluster, &summary);
    // Both end normally: the echo on its "stop", the pinger after it.
    let last_echo = moved.iter().find(|m| m.pid == pid).expect("the echo");
    assert_eq!(
        last_echo.wait(&cluster, Duration::from_secs(20)),
        "Exited(0)"
    );
    let last_ping = moved.last().expect("the pinger");
    assert_eq!(
        last_ping.wait(&cluster, Duration::from_secs(20)),
        "Exited(0)"
    );
}

#[test]
fn a_burst_arrives_in_order_while_its_receiver_moves_twice() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &["--cpu-quota", "max"]);
    let scratch = Scratch::new("messages-burst");
    let (sink_dir, burst_dir) = (scratch.subdir("sink"), scratch.subdir("burst"));
    let count = "20000";
    let sink = start(
        &cluster,
        "n1",
        &sink_dir,
        "sink",
        &["msg-sink", "--name", "sink", "--count", count],
    );
    wait_file(&cluster, &sink_dir.join("ready"), Duration::from_secs(10));
    let _burst = start(
        &cluster,
        "n2",
        &burst_dir,
        "burst",
        &[
            "msg-burst",
            "--name",
            "burst",
            "--to",
            "sink",
            "--count",
            count,
        ],
    );
    wait_file(
        &cluster,
        &burst_dir.join("started"),
        Duration::from_secs(15),
    );
    let (m1, r1) = cluster.migrate_ok("n1", sink.raw_pid(), "n3", "freeze-free", &[]);
    link_figures(&r1);
    let (m2, r2) = cluster.migrate_ok("n3", m1.pid, "n1", "pre-copy", &[]);
    link_figures(&r2);
    wait_file(
        &cluster,
        &sink_dir.join("result.json"),
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(100));
    let result: Value =
        serde_json::from_slice(&std::fs::read(sink_dir.join("result.json")).expect("result"))
            .expect("result JSON");
    assert_eq!(result["received"].as_u64(), Some(20000), "{result}");
    for key in ["duplicated", "missing", "reordered"] {
        assert_eq!(result[key].as_u64(), Some(0), "{key}: {result}");
    }
    assert_eq!(m2.wait(&cluster, Duration::from_secs(20)), "Exited(0)");
}

#[test]
fn a_refused_migration_and_a_daemon_restart_leave_the_links_working() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(2, &["--cpu-quota", "max"]);
    let scratch = Scratch::new("messages-refused");
    let (echo, _ping, ping_dir) = ping_pong(&cluster, &scratch, "n1", "n2");

    // n2 drains: it refuses the echo; the echo stays on n1 with its link.
    let bin = ferry_bin();
    cluster.testnet_ok(&["exec", "n2", "--", &bin.to_string_lossy(), "drain", "n2"]);
    let refused = cluster
        .migrate("n1", echo.raw_pid(), "n2", "freeze-free", &[])
        .expect_err("a draining node took a process");
    assert!(refused.contains("draining"), "{refused}");
    wait_for_more_echoes(&cluster, &ping_dir, 50);

    // Both daemons restart (SIGTERM: they keep their links on disk) while messages flow.
    for node in ["n1", "n2"] {
        cluster.testnet_ok(&["kill", node, "--term"]);
        std::thread::sleep(Duration::from_millis(300));
        cluster.testnet_ok(&["start", node]);
    }
    wait_for_more_echoes(&cluster, &ping_dir, 50);
    cluster.testnet_ok(&[
        "exec",
        "n2",
        "--",
        &bin.to_string_lossy(),
        "drain",
        "n2",
        "--undo",
    ]);
    let (m, report) = cluster.migrate_ok("n1", echo.raw_pid(), "n2", "freeze-free", &[]);
    link_figures(&report);
    wait_for_more_echoes(&cluster, &ping_dir, 50);
    let summary = stop_ping(&cluster, &ping_dir);
    assert_clean(&cluster, &summary);
    assert_eq!(m.wait(&cluster, Duration::from_secs(20)), "Exited(0)");
}

/// `crates/ferry-msg-c/examples/echo.c` built against the header and `libferrymsg.so` of this
/// build (a dev-dependency: cargo builds it into `deps/` next to the test executables).
fn c_echo() -> std::path::PathBuf {
    let lib_dir = ferry_bin()
        .parent()
        .expect("the ferry binary has a directory")
        .join("deps");
    assert!(
        lib_dir.join("libferrymsg.so").is_file(),
        "no libferrymsg.so in {}",
        lib_dir.display()
    );
    let crate_dir = repo_root().join("crates/ferry-msg-c");
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferry-msg-c-echo");
    let out = std::process::Command::new("gcc")
        .current_dir(&crate_dir)
        .args([
            "-std=c99",
            "-Wall",
            "-Werror",
            "-I",
            "include",
            "examples/echo.c",
            "-o",
        ])
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lferrymsg")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .expect("running gcc");
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn a_c_program_speaks_the_same_api_and_keeps_talking_while_it_migrates() {
    if !needs_root() {
        return;
    }
    let echo_bin = c_echo();
    let cluster = Cluster::up(2, &["--cpu-quota", "max"]);
    let scratch = Scratch::new("messages-c");
    let count = "20000";
    let echo = cluster.spawn(
        "n1",
        &Launch::new("c-echo", &echo_bin, scratch.path())
            .args(["cecho", count])
            .stderr_to_stdout(),
    );
    let mut ping = cluster.spawn(
        "n2",
        &Launch::new("c-ping", &echo_bin, scratch.path())
            .args(["--ping", "cping", "cecho", count])
            .stderr_to_stdout(),
    );
    // A name is unique in the cluster: a second "cecho" on the other host is refused.
    let bin = echo_bin.to_string_lossy();
    let dup = cluster.testnet(&["exec", "n2", "--", &bin, "cecho", "1"]);
    assert_eq!(dup.status.code(), Some(1), "{dup:?}");
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let (m1, r1) = cluster.migrate_ok("n1", echo.raw_pid(), "n2", "freeze-free", &[]);
    link_figures(&r1);
    std::thread::sleep(Duration::from_millis(200));
    let (m2, r2) = cluster.migrate_ok("n2", m1.pid, "n1", "total-copy", &[]);
    link_figures(&r2);
    let status = ping.wait(Duration::from_secs(120));
    assert_eq!(
        status,
        Exit::Code(0),
        "the C pinger failed: {}\n{}",
        ping.output(),
        cluster.logs()
    );
    assert_eq!(m2.wait(&cluster, Duration::from_secs(20)), "Exited(0)");
}
