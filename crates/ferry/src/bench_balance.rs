//! `ferry bench balance`: the load-sharing experiment. Three test hosts with equal CPU quotas;
//! a seeded mix of CPU-bound jobs of unequal length, all submitted at n1; the makespan with no
//! balancing, with each placement policy, and with automatic migration, against the ideal
//! (total CPU work / total CPU capacity), with the messages and migrations each needed. Every
//! job's output is checked against the value its work must produce.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use ferry_cluster::control::NodeRow;
use ferry_cluster::jobs::JobInfo;
use serde_json::json;

use crate::bench_migrate::{Cluster, median_f};
use crate::cli::BenchBalanceArgs;

const LCG_A: u64 = 6364136223846793005;
const LCG_C: u64 = 1442695040888963407;
const STEPS_PER_UNIT: u64 = 1_000_000;
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// none: every job at n1; bidding, drafting, hybrid: placement by `ferry run --policy`; auto*:
/// every job at n1, then automatic migration with that policy choosing targets.
const CONFIGS: [&str; 7] = [
    "none",
    "bidding",
    "drafting",
    "hybrid",
    "auto",
    "auto-drafting",
    "auto-hybrid",
];

/// The job: `units` million LCG steps, each through `black_box` so that it is real work.
pub fn spin(units: u64) -> Result<ExitCode> {
    let mut x: u64 = 1;
    for _ in 0..units * STEPS_PER_UNIT {
        x = std::hint::black_box(x.wrapping_mul(LCG_A).wrapping_add(LCG_C));
    }
    println!("{x:016x}");
    Ok(ExitCode::SUCCESS)
}

/// What `spin(units)` prints, computed in O(log n) by composing the affine step.
fn spin_result(units: u64) -> String {
    let (mut a, mut c) = (LCG_A, LCG_C); // the step applied 2^k times
    let (mut ra, mut rc) = (1u64, 0u64); // the steps so far
    let mut n = units * STEPS_PER_UNIT;
    while n > 0 {
        if n & 1 == 1 {
            // r := step ∘ r
            ra = a.wrapping_mul(ra);
            rc = a.wrapping_mul(rc).wrapping_add(c);
        }
        c = a.wrapping_mul(c).wrapping_add(c);
        a = a.wrapping_mul(a);
        n >>= 1;
    }
    // Applied to the start value 1: ra * 1 + rc.
    format!("{:016x}", ra.wrapping_add(rc))
}

/// Units one CPU does per second (one run of the job outside the cluster).
fn calibrate(ferry: &Path) -> Result<f64> {
    let units = 400;
    let t = Instant::now();
    let out = std::process::Command::new(ferry)
        .args(["bench", "spin", "--units", &units.to_string()])
        .output()
        .context("running the calibration job")?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != spin_result(units) {
        bail!("the calibration job failed or printed a wrong value");
    }
    Ok(units as f64 / t.elapsed().as_secs_f64())
}

/// The seeded job mix: CPU seconds per job.
fn job_mix(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

struct RunFigures {
    makespan_s: f64,
    messages: u64,
    migrations: u64,
    verified: usize,
    per_node: HashMap<String, usize>,
}

fn exec_json(cluster: &Cluster, node: &str, args: &[&str]) -> Result<serde_json::Value> {
    let ferry = cluster.ferry().to_string_lossy().into_owned();
    let mut all = vec!["exec", node, "--", ferry.as_str()];
    all.extend_from_slice(args);
    let out = cluster.run(&all)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "ferry {} printed no JSON: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn one_run(
    cluster: &Cluster,
    config: &str,
    units: &[u64],
    dir: &Path,
    timeout: Duration,
) -> Result<RunFigures> {
    let ferry = cluster.ferry().to_string_lossy().into_owned();
    let t0 = ferry_cluster::jobs::now_ms();
    let mut ids = Vec::new();
    for u in units {
        let u = u.to_string();
        let mut args = vec!["exec", "n1", "--", ferry.as_str(), "run", "--json"];
        match config {
            "none" | "auto" | "auto-drafting" | "auto-hybrid" => {
                args.extend_from_slice(&["--on", "n1"])
            }
            policy => args.extend_from_slice(&["--policy", policy]),
        }
        args.extend_from_slice(&["--", ferry.as_str(), "bench", "spin", "--units", &u]);
        let out = cluster
            .cmd(&args)
            .current_dir(dir)
            .output()
            .context("ferry run")?;
        if !out.status.success() {
            bail!("ferry run: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let job: JobInfo = serde_json::from_slice(&out.stdout).context("ferry run --json")?;
        ids.push(job.id);
    }
    let deadline = Instant::now() + timeout;
    let jobs: Vec<JobInfo> = loop {
        let all: Vec<JobInfo> =
            serde_json::from_value(exec_json(cluster, "n1", &["ps", "--json"])?)?;
        let mine: Vec<JobInfo> = all.into_iter().filter(|j| ids.contains(&j.id)).collect();
        if mine.len() == ids.len() && mine.iter().all(|j| j.ended_ms.is_some()) {
            break mine;
        }
        if Instant::now() > deadline {
            bail!("{config}: the jobs did not all end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let end = jobs.iter().filter_map(|j| j.ended_ms).max().unwrap_or(t0);
    let mut verified = 0;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (j, u) in jobs.iter().zip(units) {
        let out = std::fs::read_to_string(&j.stdout).unwrap_or_default();
        if j.exit_code == Some(0) && out.trim() == spin_result(*u) {
            verified += 1;
        }
        *per_node.entry(j.node.clone()).or_default() += 1;
    }
    let mut messages = 0;
    for node in NODES {
        let rows: Vec<NodeRow> =
            serde_json::from_value(exec_json(cluster, node, &["nodes", "--json"])?)?;
        if let Some(c) = rows.iter().find_map(|r| r.counters.clone()) {
            messages += c.messages;
        }
    }
    Ok(RunFigures {
        makespan_s: end.saturating_sub(t0) as f64 / 1000.0,
        messages,
        migrations: jobs.iter().map(|j| j.hops as u64).sum(),
        verified,
        per_node,
    })
}

pub fn bench_balance(args: BenchBalanceArgs) -> Result<ExitCode> {
    if !ferry_sys::host::is_root() {
        bail!("ferry bench balance needs root (it brings up a test cluster)");
    }
    if !args.testnet.is_file() {
        bail!(
            "{} not found: run from the repository, or pass --testnet PATH",
            args.testnet.display()
        );
    }
    let (lo, hi) = match args.cpu_seconds[..] {
        [lo, hi] if lo > 0.0 && hi >= lo => (lo, hi),
        _ => bail!("--cpu-seconds LO,HI: two positive numbers, LO <= HI"),
    };
    for c in &args.configs {
        if !CONFIGS.contains(&c.as_str()) {
            bail!(
                "--configs: unknown configuration {c:?} ({})",
                CONFIGS.join(", ")
            );
        }
    }
    let testnet = std::fs::canonicalize(&args.testnet)?;
    let ferry = std::env::current_exe()?;
    let rate = calibrate(&ferry)?;
    let cpu = job_mix(args.jobs, lo, hi, args.seed);
    let units: Vec<u64> = cpu
        .iter()
        .map(|s| (s * rate).round().max(1.0) as u64)
        .collect();
    let work: f64 = units.iter().map(|u| *u as f64 / rate).sum();
    let capacity = 3.0 * args.quota as f64 / 100.0;
    let ideal = work / capacity;
    eprintln!(
        "calibration: {rate:.0} units per CPU second; {} jobs, {work:.1} CPU s of work; 3 hosts x {}% = {capacity:.2} CPU; ideal makespan {ideal:.1} s",
        args.jobs, args.quota
    );
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-balance-")
        .tempdir_in("/tmp")?;
    let quota = args.quota.to_string();
    let timeout = Duration::from_secs_f64(work / (args.quota as f64 / 100.0) * 2.0 + 120.0);
    let mut rows = Vec::new();
    let mut all_json = Vec::new();
    for config in &args.configs {
        let mut up: Vec<&str> = vec!["3", "--cpu-quota", &quota, "--plain-pages"];
        match config.as_str() {
            "auto" => up.extend_from_slice(&["--auto-migrate", "--policy", "bidding"]),
            "auto-drafting" => up.extend_from_slice(&["--auto-migrate", "--policy", "drafting"]),
            "auto-hybrid" => {
                up.extend_from_slice(&["--auto-migrate", "--policy", "hybrid", "--groups", "a,a,b"])
            }
            "hybrid" => up.extend_from_slice(&["--groups", "a,a,b"]),
            _ => {}
        }
        let mut runs = Vec::new();
        for run in 0..args.runs {
            let cluster = Cluster::up_with(testnet.clone(), &up)?;
            // Let gossip settle: every node knows the others' figures.
            std::thread::sleep(Duration::from_secs(3));
            let rundir = dir.path().join(format!("{config}-{run}"));
            std::fs::create_dir_all(&rundir)?;
            let f = one_run(&cluster, config, &units, &rundir, timeout)?;
            eprintln!(
                "{config} run {}: makespan {:.1} s, {} messages, {} migrations, {}/{} verified, final nodes {:?}",
                run + 1,
                f.makespan_s,
                f.messages,
                f.migrations,
                f.verified,
                units.len(),
                f.per_node
            );
            all_json.push(json!({
                "config": config, "run": run, "makespan_s": f.makespan_s,
                "messages": f.messages, "migrations": f.migrations, "verified": f.verified,
                "jobs": units.len(), "ideal_s": ideal,
            }));
            runs.push(f);
            drop(cluster);
        }
        rows.push((config.clone(), runs));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "configuration",
        "makespan s",
        "of ideal",
        "messages",
        "migrations",
        "verified",
    ]);
    for (config, runs) in &rows {
        let m = median_f(runs.iter().map(|r| r.makespan_s).collect());
        let med_u = |f: &dyn Fn(&RunFigures) -> u64| {
            median_f(runs.iter().map(|r| f(r) as f64).collect()) as u64
        };
        let verified: usize = runs.iter().map(|r| r.verified).sum();
        t.add_row(vec![
            config.clone(),
            format!("{m:.1}"),
            format!("{:.2}x", m / ideal),
            med_u(&|r| r.messages).to_string(),
            med_u(&|r| r.migrations).to_string(),
            format!("{verified}/{}", runs.len() * units.len()),
        ]);
    }
    println!("{t}");
    println!(
        "ideal makespan {ideal:.1} s = {work:.1} CPU s / {capacity:.2} CPU ({} jobs of {lo}-{hi} CPU s, seed {}, 3 hosts at {}% of a CPU); medians of {} runs",
        args.jobs, args.seed, args.quota, args.runs
    );
    println!(
        "messages: load-sharing requests and answers between daemons (bids, claims, spawns); gossip (one exchange per node every 500 ms) not included"
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all_json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form_matches_the_loop() {
        for units in [0u64, 1, 3] {
            let mut x: u64 = 1;
            for _ in 0..units * STEPS_PER_UNIT {
                x = x.wrapping_mul(LCG_A).wrapping_add(LCG_C);
            }
            assert_eq!(format!("{x:016x}"), spin_result(units));
        }
    }

    #[test]
    fn job_mix_is_seeded_and_in_range() {
        let a = job_mix(12, 1.0, 6.0, 42);
        assert_eq!(a, job_mix(12, 1.0, 6.0, 42));
        assert_ne!(a, job_mix(12, 1.0, 6.0, 43));
        assert!(a.iter().all(|s| (1.0..=6.0).contains(s)));
    }
}
