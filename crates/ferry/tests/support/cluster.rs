//! A test cluster for integration tests: `scripts/testnet.sh` hosts (network namespace + CPU
//! cgroup + a `ferry daemon` of the binary under test), and migrations on it.
//!
//! - [`Cluster::up`]: brings a cluster up (one at a time per test binary: the bridge and
//!   namespace names are fixed); `Drop` takes it down and, if the test failed, prints the tail of
//!   every daemon's log.
//! - [`Cluster::spawn`]: starts a program on a host (its output in a regular file).
//! - [`Cluster::migrate`]: `ferry migrate --json` run on a host, the report parsed.
//! - [`Moved`]: a migrated process, which is the destination daemon's child: waited for by
//!   polling /proc, its exit status read from the daemon's log.
//! - [`migrate_scenario`]: "run uninterrupted; run on n1, migrate mid-run along a route; the
//!   output must be byte-identical and the exit status the same".

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::*;

/// The five migration algorithms, as `ferry migrate --algorithm` spells them.
pub const ALGORITHMS: [&str; 5] = [
    "total-copy",
    "pre-copy",
    "demand-paging",
    "file-server",
    "freeze-free",
];

/// Where the test cluster keeps its run dir (apart from a cluster people bring up by hand).
const RUN_DIR: &str = "/run/ferry-tests";

static ONE_CLUSTER: Mutex<()> = Mutex::new(());

pub struct Cluster {
    nodes: usize,
    _one: MutexGuard<'static, ()>,
}

fn testnet_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(repo_root().join("scripts/testnet.sh"));
    cmd.args(args)
        .env("FERRY", ferry_bin())
        .env("FERRY_RUN", RUN_DIR)
        .stdin(std::process::Stdio::null());
    cmd
}

fn show(out: &Output) -> String {
    format!(
        "--- stdout:\n{}--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Cluster {
    /// `scripts/testnet.sh up NODES EXTRA...`, which must succeed.
    pub fn up(nodes: usize, extra: &[&str]) -> Cluster {
        let one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
        let n = nodes.to_string();
        let mut args = vec!["up", n.as_str()];
        args.extend_from_slice(extra);
        let out = testnet_cmd(&args)
            .output()
            .expect("running scripts/testnet.sh");
        assert!(
            out.status.success(),
            "scripts/testnet.sh {} failed ({})\n{}",
            args.join(" "),
            out.status,
            show(&out)
        );
        Cluster { nodes, _one: one }
    }

    /// `scripts/testnet.sh ARGS` (any outcome).
    pub fn testnet(&self, args: &[&str]) -> Output {
        testnet_cmd(args)
            .output()
            .expect("running scripts/testnet.sh")
    }

    /// `scripts/testnet.sh ARGS`, which must succeed.
    pub fn testnet_ok(&self, args: &[&str]) {
        let out = self.testnet(args);
        assert!(
            out.status.success(),
            "scripts/testnet.sh {} failed\n{}",
            args.join(" "),
            show(&out)
        );
    }

    pub fn log(&self, node: &str) -> String {
        fs::read_to_string(Path::new(RUN_DIR).join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.nodes)
            .map(|k| {
                let log = self.log(&format!("n{k}"));
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- n{k}.log (tail):\n{}\n", tail.join("\n"))
            })
            .collect()
    }

    /// The page store directory shared by the hosts (or kept by the page-store node).
    pub fn store_dir(&self) -> PathBuf {
        Path::new(RUN_DIR).join("store")
    }

    /// Starts `launch`'s program on NODE, in its directory, stdout and stderr into its stdout
    /// file. The process is an orphan reparented to the test process.
    pub fn spawn(&self, node: &str, launch: &Launch) -> Proc {
        let out = launch.stdout_path().to_string_lossy().into_owned();
        let mut cmd = testnet_cmd(&["exec", node, "--detach", "--out", &out, "--"]);
        cmd.arg(&launch.program).args(&launch.args);
        if let Some(cwd) = &launch.cwd {
            cmd.current_dir(cwd);
        }
        let run = cmd.output().expect("running scripts/testnet.sh exec");
        assert!(run.status.success(), "testnet exec failed\n{}", show(&run));
        let pid: i32 = String::from_utf8_lossy(&run.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("testnet exec printed no pid\n{}", show(&run)));
        // `exec --detach` returns once the process exists; give the shell time to hand it over.
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(pid).map(|s| s.ppid) != Some(std::process::id() as i32)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Proc::adopt(
            &launch.label,
            pid,
            Some(launch.stdout_path().to_owned()),
            None,
        )
    }

    /// `ferry migrate PID --to TO --algorithm ALGORITHM --json EXTRA...`, run on host FROM
    /// through its daemon. Ok(report) or Err(ferry's stderr and exit code).
    pub fn migrate(
        &self,
        from: &str,
        pid: i32,
        to: &str,
        algorithm: &str,
        extra: &[&str],
    ) -> Result<serde_json::Value, String> {
        let pid = pid.to_string();
        let bin = ferry_bin().to_string_lossy().into_owned();
        let mut args = vec![
            "exec",
            from,
            "--",
            bin.as_str(),
            "migrate",
            pid.as_str(),
            "--to",
            to,
            "--algorithm",
            algorithm,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = self.testnet(&args);
        if !out.status.success() {
            return Err(format!(
                "ferry migrate exited with {}\n{}",
                out.status,
                show(&out)
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("ferry migrate printed no JSON report ({e})\n{}", show(&out)))
    }

    /// Like [`Cluster::migrate`], which must succeed: the moved process.
    pub fn migrate_ok(
        &self,
        from: &str,
        pid: i32,
        to: &str,
        algorithm: &str,
        extra: &[&str],
    ) -> (Moved, serde_json::Value) {
        let report = self
            .migrate(from, pid, to, algorithm, extra)
            .unwrap_or_else(|e| {
                panic!(
                    "{algorithm} migration {from} -> {to} failed: {e}\n{}",
                    self.logs()
                )
            });
        let landed = report["to"].as_str().unwrap_or(to).to_string();
        let new_pid = report["new_pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no new_pid in the report: {report}"));
        (Moved::new(&landed, new_pid as i32), report)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // The whole logs outlive the cluster, for a closer look.
            let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-logs");
            let _ = fs::create_dir_all(&keep);
            for k in 1..=self.nodes {
                let _ = fs::copy(
                    Path::new(RUN_DIR).join(format!("n{k}.log")),
                    keep.join(format!("n{k}.log")),
                );
            }
            eprintln!("daemon logs kept in {}", keep.display());
        }
        let _ = testnet_cmd(&["down"]).output();
    }
}

/// A process that migrated to NODE: a child of that host's daemon, not of the test.
pub struct Moved {
    pub node: String,
    pub pid: i32,
    start_time: Option<u64>,
}

impl Moved {
    pub fn new(node: &str, pid: i32) -> Moved {
        Moved {
            node: node.to_string(),
            pid,
            start_time: proc_stat(pid).map(|s| s.start_time),
        }
    }

    /// Still this process (not exited, not a zombie, not a reused pid)?
    pub fn alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some(s) => Some(s.start_time) == self.start_time && s.state != 'Z' && s.state != 'X',
            None => false,
        }
    }

    /// Waits until the process is gone, then returns the status its daemon logged
    /// ("Exited(0)", "Signaled(9)", ...).
    pub fn wait(&self, cluster: &Cluster, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            assert!(
                Instant::now() < deadline,
                "pid {} on {} still runs after {timeout:?}\n{}",
                self.pid,
                self.node,
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let needle = format!("migrated process ended pid={} status=", self.pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = cluster.log(&self.node);
            if let Some(line) = log.lines().rev().find(|l| l.contains(&needle)) {
                let status = &line[line.find(&needle).map_or(0, |i| i + needle.len())..];
                return status.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{} logged no end for pid {}\n{}",
                self.node,
                self.pid,
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// The status a daemon logs for an exit like REFERENCE's.
pub fn logged_status(reference: Exit) -> String {
    match reference {
        Exit::Code(c) => format!("Exited({c})"),
        Exit::Signal(s) => format!("Signaled({s})"),
    }
}

/// Runs SCENARIO on n1 (its output in one file: the scenario must be `stderr_to_stdout`),
/// migrates it mid-run along ROUTE (e.g. ["n2", "n3", "n1"]) with ALGORITHM (EXTRA: more
/// `ferry migrate` arguments), waits for the end and compares with REFERENCE. Returns the
/// migration reports.
pub fn migrate_scenario(
    cluster: &Cluster,
    scratch: &Scratch,
    scenario: &Scenario,
    reference: &Reference,
    algorithm: &str,
    route: &[&str],
    extra: &[&str],
) -> Vec<serde_json::Value> {
    assert!(
        scenario.stderr_to_stdout,
        "migration scenarios keep stderr with stdout"
    );
    let run = format!("{algorithm}-{}", route.join("-"));
    let dir = scratch.subdir(&run);
    let launch = scenario.launch(&run, &dir);
    let mut proc = cluster.spawn("n1", &launch);
    scenario.wait_marker(&mut proc);
    std::thread::sleep(scenario.settle);
    let mut reports = Vec::new();
    let mut here = "n1".to_string();
    let mut pid = proc.raw_pid();
    // Every hop's process: an earlier one may still serve pages (frozen) while the next runs,
    // so none is killed before the end.
    let mut hops: Vec<Moved> = Vec::new();
    for to in route {
        let (m, report) = cluster.migrate_ok(&here, pid, to, algorithm, extra);
        // Started by the test, not by `ferry run`: no PID namespace of its own.
        assert_eq!(
            report["ids_kept"], false,
            "a process in the host's PID namespace gets new ids: {report}"
        );
        here = m.node.clone();
        pid = m.pid;
        hops.push(m);
        reports.push(report);
    }
    let moved = hops.last().expect("a route of at least one hop");
    if let Some(sig) = scenario.wake {
        let _ = kill(Pid::from_raw(moved.pid), sig);
    }
    let status = moved.wait(cluster, scenario.timeout);
    let output = proc.output_bytes();
    let context = format!(
        "{algorithm} along n1 -> {}\n--- reports:\n{}\n{}",
        route.join(" -> "),
        reports
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.logs()
    );
    assert_eq!(
        status,
        logged_status(reference.exit),
        "{}: the migrated process ended differently from the uninterrupted run\n--- output:\n{}\n{context}",
        scenario.label,
        String::from_utf8_lossy(&output)
    );
    assert_same(
        &format!("{}: output", scenario.label),
        &output,
        &reference.stdout,
        &context,
    );
    // The source copy was ended by its daemon: reap it.
    let _ = proc.wait_result(Duration::from_secs(10));
    reports
}
