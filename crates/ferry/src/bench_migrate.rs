//! `ferry bench migrate`: every algorithm × resident size × write rate × link, between two
//! hosts of a test cluster (`scripts/testnet.sh`, brought up and down by the benchmark).
//!
//! Each cell starts `ferry bench hold-memory` on n1 (SIZE of written memory, rewritten at RATE
//! MiB/s), migrates it to n2 with `ferry migrate --json` (waiting for the residual dependency to
//! end), then has the moved process verify every byte; the cell's figures are medians of the
//! runs. The link's raw TCP throughput (n1 → n2, one connection, `bench tcp-source` into
//! `bench tcp-sink`) is measured in the same run, for each link setting, as the limit the
//! page-moving figures are compared with.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use crate::cli::BenchMigrateArgs;

/// Where the benchmark's cluster keeps its run dir.
const RUN_DIR: &str = "/run/ferry-bench";
/// The TCP port of the throughput sink on n2.
pub(crate) const SINK: &str = "10.77.0.2:7199";

/// The hidden `bench tcp-sink`: accepts connections and discards what they send.
pub fn tcp_sink(listen: SocketAddr) -> Result<ExitCode> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut buf = vec![0u8; 1 << 20];
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        // The source waits for this byte: every byte it sent has been received.
        let _ = conn.write_all(b"k");
    }
    Ok(ExitCode::SUCCESS)
}

/// The hidden `bench tcp-source`: sends MIB MiB over one connection and prints MB/s.
pub fn tcp_source(connect: SocketAddr, mib: u64) -> Result<ExitCode> {
    let chunk = vec![0x5au8; 1 << 20];
    let mut conn =
        TcpStream::connect(connect).with_context(|| format!("connecting to {connect}"))?;
    let t = Instant::now();
    for _ in 0..mib {
        conn.write_all(&chunk).context("sending")?;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack).context("waiting for the sink")?;
    let secs = t.elapsed().as_secs_f64();
    println!("{:.1}", (mib << 20) as f64 / secs / 1e6);
    Ok(ExitCode::SUCCESS)
}

/// The test cluster, taken down on drop.
pub(crate) struct Cluster {
    testnet: PathBuf,
    ferry: PathBuf,
}

impl Cluster {
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.testnet);
        c.args(args)
            .env("FERRY", &self.ferry)
            .env("FERRY_RUN", RUN_DIR)
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Result<Output> {
        let out = self
            .cmd(args)
            .output()
            .with_context(|| format!("running {}", self.testnet.display()))?;
        if !out.status.success() {
            bail!(
                "testnet.sh {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    fn up(testnet: PathBuf, encrypt: bool) -> Result<Cluster> {
        let pages = if encrypt {
            "--encrypt-pages"
        } else {
            "--plain-pages"
        };
        Cluster::up_with(testnet, &["2", "--cpu-quota", "max", pages])
    }

    /// `testnet.sh up ARGS...` with this ferry binary.
    pub(crate) fn up_with(testnet: PathBuf, args: &[&str]) -> Result<Cluster> {
        let ferry = std::env::current_exe().context("finding this ferry binary")?;
        let c = Cluster { testnet, ferry };
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        c.run(&all)?;
        Ok(c)
    }

    pub(crate) fn ferry(&self) -> &Path {
        &self.ferry
    }

    /// Starts a program on NODE in DIR; its pid.
    pub(crate) fn spawn(&self, node: &str, dir: &Path, program: &[&str]) -> Result<i32> {
        let out_file = dir.join("out");
        let out_file = out_file.to_string_lossy();
        let mut args = vec!["exec", node, "--detach", "--out", &out_file, "--"];
        args.extend_from_slice(program);
        let out = self
            .cmd(&args)
            .current_dir(dir)
            .output()
            .with_context(|| format!("running {}", self.testnet.display()))?;
        if !out.status.success() {
            bail!("testnet exec: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("testnet exec printed no pid")
    }

    /// `ferry migrate PID --to n2 --algorithm ALGORITHM --json --wait WAIT` on n1: the report.
    /// A process that could not move is killed.
    pub(crate) fn migrate(&self, pid: i32, algorithm: &str, wait: &str) -> Result<Value> {
        let (ferry, pid_s) = (self.ferry.to_string_lossy().into_owned(), pid.to_string());
        let out = self
            .cmd(&[
                "exec",
                "n1",
                "--",
                &ferry,
                "migrate",
                &pid_s,
                "--to",
                "n2",
                "--algorithm",
                algorithm,
                "--json",
                "--wait",
                wait,
            ])
            .output()?;
        if !out.status.success() {
            let _ = ferry_sys::host::send_signal(ferry_sys::Pid::from_raw(pid), 9);
            bail!(
                "ferry migrate: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("the migration report")
    }

    fn log(&self, node: &str) -> String {
        fs::read_to_string(Path::new(RUN_DIR).join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Raw TCP throughput n1 → n2 (MB/s), median of 3.
    pub(crate) fn tcp_throughput(&self, mib: u64) -> Result<f64> {
        let ferry = self.ferry.to_string_lossy().into_owned();
        let mib = mib.to_string();
        let mut v = Vec::new();
        for _ in 0..3 {
            let out = self.run(&[
                "exec",
                "n1",
                "--",
                &ferry,
                "bench",
                "tcp-source",
                "--connect",
                SINK,
                "--mib",
                &mib,
            ])?;
            let mbs: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .context("tcp-source printed no figure")?;
            v.push(mbs);
        }
        Ok(median_f(v))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
    }
}

pub(crate) fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One migration's figures.
struct Sample {
    latency_ms: f64,
    freeze_ms: f64,
    total_ms: f64,
    moved_bytes: u64,
    verified: bool,
}

/// One cell of the matrix.
struct Cell {
    link: String,
    size_mib: u64,
    rate: u64,
    algorithm: String,
    samples: Vec<Sample>,
    failures: Vec<String>,
}

impl Cell {
    fn median(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median_f(self.samples.iter().map(f).collect())
    }
}

fn one_migration(
    cluster: &Cluster,
    work: &Path,
    size_mib: u64,
    rate: u64,
    algorithm: &str,
) -> Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(work)
        .context("a run directory")?;
    let ferry = cluster.ferry.to_string_lossy().into_owned();
    let (mib, rate_s) = (size_mib.to_string(), rate.to_string());
    let pid = cluster.spawn(
        "n1",
        dir.path(),
        &[
            &ferry,
            "bench",
            "hold-memory",
            "--mib",
            &mib,
            "--dirty-mib-s",
            &rate_s,
        ],
    )?;
    let ready = dir.path().join("ready");
    let started = wait_for(
        "the workload to fill its memory",
        Duration::from_secs(300),
        || ready.exists() || !alive(pid),
    );
    if started.is_err() || !alive(pid) {
        let _ = ferry_sys::host::send_signal(ferry_sys::Pid::from_raw(pid), 9);
        bail!("the workload did not start (pid {pid})");
    }
    if rate > 0 {
        // Steady state: pages are being rewritten when the migration begins.
        std::thread::sleep(Duration::from_millis(500));
    }
    // Demand paging depends on n1 until the process has touched every page, which this idle
    // workload only does when it verifies its memory: return once it runs at n2, verify, and
    // read the total time from n1's log. The others end their dependency on their own.
    let demand_paging = algorithm == "demand-paging";
    let r = cluster.migrate(pid, algorithm, if demand_paging { "0" } else { "600" })?;
    let new_pid = r["new_pid"].as_i64().unwrap_or(0) as i32;
    fs::write(dir.path().join("verify"), b"").context("asking for verification")?;
    let gone = wait_for(
        "the moved process to verify its memory",
        Duration::from_secs(300),
        || !alive(new_pid),
    );
    if gone.is_err() {
        let _ = ferry_sys::host::send_signal(ferry_sys::Pid::from_raw(new_pid), 9);
    }
    let needle = format!("migrated process ended pid={new_pid} status=Exited(0)");
    let mut verified = false;
    let _ = wait_for("the exit in n2's log", Duration::from_secs(5), || {
        verified = cluster.log("n2").contains(&needle);
        verified
    });
    let mut total_ms = r["total_ms"].as_f64();
    if demand_paging {
        let id = r["id"].as_str().unwrap_or("?").to_string();
        let _ = wait_for(
            "the end of the residual dependency",
            Duration::from_secs(60),
            || {
                total_ms = logged_total_ms(&cluster.log("n1"), &id);
                total_ms.is_some()
            },
        );
    }
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    Ok(Sample {
        latency_ms: f("latency_ms"),
        freeze_ms: f("freeze_ms"),
        total_ms: total_ms.unwrap_or(f64::NAN),
        moved_bytes: u("page_bytes") + u("resent_bytes") + u("state_bytes"),
        verified,
    })
}

/// `total_ms` of migration ID from the source daemon's "migration complete" log line.
fn logged_total_ms(log: &str, id: &str) -> Option<f64> {
    let key = format!("migration complete migration={id} ");
    let line = log.lines().rev().find(|l| l.contains(&key))?;
    let rest = &line[line.find("total_ms: Some(")? + "total_ms: Some(".len()..];
    rest[..rest.find(')')?].parse().ok()
}

fn size_label(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

/// Runs `one` `runs` times, showing `label` and the run's number: the samples, and what
/// made each failed run fail (printed too).
pub(crate) fn repeat<S>(
    label: &str,
    runs: usize,
    mut one: impl FnMut() -> Result<S>,
) -> (Vec<S>, Vec<String>) {
    let (mut samples, mut failures) = (Vec::new(), Vec::new());
    for run in 0..runs {
        eprint!("\r{label} run {}/{runs}   ", run + 1);
        match one() {
            Ok(s) => samples.push(s),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    eprintln!();
    for f in &failures {
        eprintln!("  failed: {f}");
    }
    (samples, failures)
}

/// What a benchmark on a test cluster checks first (root, its algorithms, the cluster
/// script), and its work directory.
pub(crate) fn prepare(
    bench: &str,
    algorithms: &[String],
    testnet: &Path,
) -> Result<tempfile::TempDir> {
    if !ferry_sys::host::is_root() {
        bail!("bench {bench} needs root: it creates a test cluster (network namespaces, cgroups)");
    }
    for a in algorithms {
        a.parse::<ferry_migrate::report::Algorithm>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if !testnet.is_file() {
        bail!(
            "{} not found: run from the repository, or pass --testnet PATH",
            testnet.display()
        );
    }
    tempfile::Builder::new()
        .prefix(&format!("ferry-bench-{bench}-"))
        .tempdir()
        .context("a work directory")
}

pub fn bench_migrate(args: BenchMigrateArgs) -> Result<ExitCode> {
    let sizes: Vec<u64> = args
        .sizes
        .iter()
        .map(|s| crate::bench::parse_size(s))
        .collect::<Result<_>>()?;
    let work = prepare("migrate", &args.algorithms, &args.testnet)?;
    eprintln!("bench migrate: bringing up a 2-host test cluster");
    let testnet = fs::canonicalize(&args.testnet)
        .with_context(|| format!("resolving {}", args.testnet.display()))?;
    let cluster = Cluster::up(testnet, args.encrypt_pages)?;
    let ferry = cluster.ferry.to_string_lossy().into_owned();
    let sink = cluster.spawn(
        "n2",
        work.path(),
        &[&ferry, "bench", "tcp-sink", "--listen", SINK],
    )?;
    std::thread::sleep(Duration::from_millis(200));

    let mut cells: Vec<Cell> = Vec::new();
    let mut limits: Vec<(String, f64)> = Vec::new();
    for link in &args.links {
        if link == "unshaped" {
            cluster.run(&["shape", "off"])?;
        } else {
            cluster.run(&["shape", link])?;
        }
        let tcp = cluster.tcp_throughput(if link == "unshaped" { 1024 } else { 256 })?;
        eprintln!("bench migrate: link {link}: raw TCP n1 -> n2 {tcp:.0} MB/s");
        limits.push((link.clone(), tcp));
        for &size in &sizes {
            for &rate in &args.dirty_rates {
                for algorithm in &args.algorithms {
                    let label = format!(
                        "bench migrate: {link} {} {rate} MiB/s {algorithm}",
                        size_label(size)
                    );
                    let (samples, failures) = repeat(&label, args.runs, || {
                        one_migration(&cluster, work.path(), size, rate, algorithm)
                    });
                    cells.push(Cell {
                        link: link.clone(),
                        size_mib: size,
                        rate,
                        algorithm: algorithm.clone(),
                        samples,
                        failures,
                    });
                }
            }
        }
    }
    let _ = ferry_sys::host::send_signal(ferry_sys::Pid::from_raw(sink), 9);
    let _ = cluster.run(&["shape", "off"]);
    drop(cluster);

    print_table(&cells, &limits, args.runs);
    if let Some(plot) = &args.plot {
        crate::plot::latency_and_total(plot, &cells_for_plot(&cells))?;
        eprintln!("bench migrate: plot written to {}", plot.display());
    }
    if let Some(path) = &args.json {
        let v = json!({
            "links": limits.iter().map(|(l, t)| json!({"link": l, "tcp_mb_s": t})).collect::<Vec<_>>(),
            "cells": cells.iter().map(|c| json!({
                "link": c.link, "size_mib": c.size_mib, "dirty_mib_s": c.rate,
                "algorithm": c.algorithm, "runs": c.samples.len(), "failures": c.failures,
                "latency_ms": c.median(|s| s.latency_ms), "freeze_ms": c.median(|s| s.freeze_ms),
                "total_ms": c.median(|s| s.total_ms),
                "verified": c.samples.iter().filter(|s| s.verified).count(),
            })).collect::<Vec<_>>(),
        });
        fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let bad = cells
        .iter()
        .any(|c| !c.failures.is_empty() || c.samples.iter().any(|s| !s.verified));
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(cells: &[Cell], limits: &[(String, f64)], runs: usize) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "link",
        "size",
        "dirtying",
        "algorithm",
        "latency ms",
        "freeze ms",
        "total ms",
        "copy MB/s",
        "of raw TCP",
        "verified",
    ]);
    for c in cells {
        let tcp = limits
            .iter()
            .find(|(l, _)| *l == c.link)
            .map_or(0.0, |(_, t)| *t);
        let (lat, frz, tot) = (
            c.median(|s| s.latency_ms),
            c.median(|s| s.freeze_ms),
            c.median(|s| s.total_ms),
        );
        // Copy rate of the eager algorithms: what crossed the link over the whole migration.
        // (Lazy algorithms move most pages after the process runs, partly through the store,
        // and their fault replies are not in the byte figures: no rate for them.)
        let eager = matches!(c.algorithm.as_str(), "total-copy" | "pre-copy");
        let mbs = c.median(|s| s.moved_bytes as f64 / (s.total_ms / 1e3).max(1e-9) / 1e6);
        let ok = c.samples.iter().filter(|s| s.verified).count();
        t.add_row(vec![
            c.link.clone(),
            size_label(c.size_mib),
            if c.rate == 0 {
                "idle".into()
            } else {
                format!("{} MiB/s", c.rate)
            },
            c.algorithm.clone(),
            format!("{lat:.1}"),
            format!("{frz:.1}"),
            format!("{tot:.1}"),
            if eager {
                format!("{mbs:.0}")
            } else {
                "-".into()
            },
            if tcp > 0.0 && eager {
                format!("{:.0}%", 100.0 * mbs / tcp)
            } else {
                "-".into()
            },
            format!("{ok}/{runs}"),
        ]);
    }
    println!("{t}");
    for (l, tcp) in limits {
        println!("raw TCP n1 -> n2, {l}: {tcp:.0} MB/s (median of 3, one connection)");
    }
    println!(
        "medians of {runs} runs; latency = request to running at n2; total = until no residual \
         dependency; copy MB/s (total-copy, pre-copy) = bytes moved (state + pages + resent) / total \
         time"
    );
}

fn cells_for_plot(cells: &[Cell]) -> Vec<crate::plot::Point> {
    cells
        .iter()
        .filter(|c| !c.samples.is_empty())
        .map(|c| crate::plot::Point {
            series: format!(
                "{} ({}, {})",
                c.algorithm,
                c.link,
                if c.rate == 0 {
                    "idle".to_string()
                } else {
                    format!("{} MiB/s", c.rate)
                }
            ),
            size_mib: c.size_mib,
            latency_ms: c.median(|s| s.latency_ms),
            total_ms: c.median(|s| s.total_ms),
        })
        .collect()
}
