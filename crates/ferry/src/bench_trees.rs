//! `ferry bench trees`: process trees started as `ferry run` jobs on n1 of a test cluster
//! (`scripts/testnet.sh`, brought up and down by the benchmark) and moved to n2 mid-run with
//! every algorithm: a shell pipeline, `make -j2`, python3's multiprocessing pool, SysV shared
//! memory between a process and its child, a unix server and its client. Each moved tree
//! must finish with the output of an uninterrupted run, byte for byte; the figures are the
//! medians of the runs. The link's raw TCP throughput, measured in the same run, gives the
//! time the bytes that crossed would take at the link's limit.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use crate::bench_migrate::{Cluster, SINK, alive, median_f, prepare, repeat, wait_for};
use crate::cli::BenchTreesArgs;

/// One kind of tree: how to start it, and when it is in the middle of its work.
struct Tree {
    name: &'static str,
    /// `sh -c` script; `$1` is the run's directory, `$2` the argument below.
    script: &'static str,
    arg: String,
    mid_run: fn(pid: i32, out: &Path) -> bool,
}

/// The trees by name; inputs are generated into `work`, programs taken from `workloads`.
fn trees(names: &[String], work: &Path, workloads: &Path) -> Result<Vec<Tree>> {
    let python = |file: &str| -> Result<String> {
        let path = workloads.join("python").join(file);
        if !path.is_file() {
            bail!(
                "{} not found: run from the repository, or pass --workloads DIR",
                path.display()
            );
        }
        Ok(fs::canonicalize(&path)?.to_string_lossy().into_owned())
    };
    let mut list = Vec::new();
    for name in names {
        list.push(match name.as_str() {
            "pipeline" => {
                let input = work.join("input");
                ferry_workloads::write_repeated_block_file(&input, 64)
                    .context("writing the pipeline's input")?;
                Tree {
                    name: "pipeline",
                    script: "cat \"$2\" | gzip -n -1 | sha256sum; echo \"pipeline done\"",
                    arg: input.to_string_lossy().into_owned(),
                    // Once all three run and data flows.
                    mid_run: |pid, _| {
                        descendants(pid).len() >= 3 && {
                            std::thread::sleep(Duration::from_millis(300));
                            true
                        }
                    },
                }
            }
            "make" => {
                let src = work.join("src");
                ferry_workloads::write_c_project(&src).context("writing the C project")?;
                Tree {
                    name: "make",
                    script: "cd \"$1\" && cp \"$2\"/* . && make -s -j2 && ./prog && echo \"build done\"",
                    arg: src.to_string_lossy().into_owned(),
                    // While two compilers run.
                    mid_run: |pid, _| {
                        descendants(pid)
                            .into_iter()
                            .filter(|p| {
                                fs::read_to_string(format!("/proc/{p}/comm"))
                                    .is_ok_and(|c| c.trim() == "cc1")
                            })
                            .count()
                            >= 2
                    },
                }
            }
            "pool" => Tree {
                name: "pool",
                script: "cd \"$1\" && python3 \"$2\"",
                arg: python("pool.py")?,
                // After its eighth result.
                mid_run: |_, out| printed_line_starting(out, "8 "),
            },
            "sysv" => Tree {
                name: "sysv",
                script: "cd \"$1\" && python3 \"$2\"",
                arg: python("sysv_tree.py")?,
                mid_run: |_, out| printed_line_starting(out, "ready"),
            },
            "unix-server" => Tree {
                name: "unix-server",
                script: "cd \"$1\" && python3 \"$2\"",
                arg: python("unix_server_tree.py")?,
                mid_run: |_, out| printed_line_starting(out, "ready"),
            },
            other => bail!("no tree {other:?}: pipeline, make, pool, sysv, unix-server"),
        });
    }
    Ok(list)
}

/// Whether a line of the file at `out` starts with `prefix`.
fn printed_line_starting(out: &Path, prefix: &str) -> bool {
    fs::read(out).is_ok_and(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .any(|l| l.starts_with(prefix))
    })
}

/// Every descendant of `pid` (one pass over `/proc`).
fn descendants(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let parent = fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok())
            });
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map_or(&[][..], Vec::as_slice) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// One migration's figures.
struct Sample {
    latency_ms: f64,
    freeze_ms: f64,
    excision_ms: f64,
    insertion_ms: f64,
    total_ms: f64,
    processes: u64,
    moved_bytes: u64,
    same: bool,
}

/// The output of the tree run where it is, uninterrupted.
fn reference(tree: &Tree, work: &Path) -> Result<Vec<u8>> {
    let dir = work.join(format!("reference-{}", tree.name));
    fs::create_dir_all(&dir)?;
    let out = dir.join("out");
    let file = fs::File::create(&out)?;
    let status = Command::new("sh")
        .args(["-c", tree.script, "sh"])
        .arg(&dir)
        .arg(&tree.arg)
        .stdin(Stdio::null())
        .stderr(file.try_clone()?)
        .stdout(file)
        .status()
        .context("running the reference")?;
    if !status.success() {
        bail!("the reference run of {} failed: {status}", tree.name);
    }
    Ok(fs::read(&out)?)
}

fn one_run(
    cluster: &Cluster,
    work: &Path,
    tree: &Tree,
    algorithm: &str,
    reference: &[u8],
) -> Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", tree.name))
        .tempdir_in(work)
        .context("a run directory")?;
    let out = dir.path().join("out");
    let (dir_s, out_s) = (
        dir.path().to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    let ferry = cluster.ferry().to_string_lossy().into_owned();
    let started = cluster.run(&[
        "exec",
        "n1",
        "--",
        &ferry,
        "run",
        "--on",
        "n1",
        "--json",
        "--stdout",
        &out_s,
        "--stderr",
        &out_s,
        "--",
        "sh",
        "-c",
        tree.script,
        "sh",
        &dir_s,
        &tree.arg,
    ])?;
    let job: Value = serde_json::from_slice(&started.stdout).context("ferry run's JSON")?;
    let pid = job["pid"].as_i64().context("ferry run printed no pid")? as i32;
    let kill = |pid: i32| {
        let _ = ferry_sys::host::send_signal(ferry_sys::Pid::from_raw(pid), 9);
    };
    if wait_for("the tree to get to work", Duration::from_secs(120), || {
        (tree.mid_run)(pid, &out) || !alive(pid)
    })
    .is_err()
        || !alive(pid)
    {
        kill(pid);
        bail!("the tree never got to work (pid {pid})");
    }
    let r = cluster.migrate(pid, algorithm, "60")?;
    let new_pid = r["new_pid"].as_i64().unwrap_or(0) as i32;
    if wait_for("the moved tree to finish", Duration::from_secs(300), || {
        !alive(new_pid)
    })
    .is_err()
    {
        kill(new_pid);
        bail!("the moved tree did not finish (pid {new_pid} at n2)");
    }
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    Ok(Sample {
        latency_ms: f("latency_ms"),
        freeze_ms: f("freeze_ms"),
        excision_ms: f("excision_ms"),
        insertion_ms: f("insertion_ms"),
        total_ms: f("total_ms"),
        processes: u("processes"),
        moved_bytes: u("page_bytes") + u("resent_bytes") + u("state_bytes"),
        same: fs::read(&out).is_ok_and(|b| b == reference),
    })
}

/// One tree × algorithm.
struct Cell {
    tree: &'static str,
    algorithm: String,
    samples: Vec<Sample>,
    failures: Vec<String>,
}

impl Cell {
    fn median(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median_f(self.samples.iter().map(f).collect())
    }
}

pub fn bench_trees(args: BenchTreesArgs) -> Result<ExitCode> {
    let work = prepare("trees", &args.algorithms, &args.testnet)?;
    let trees = trees(&args.trees, work.path(), &args.workloads)?;
    let mut references = Vec::new();
    for tree in &trees {
        references.push(reference(tree, work.path())?);
    }
    eprintln!("bench trees: bringing up a 2-host test cluster");
    let testnet = fs::canonicalize(&args.testnet)
        .with_context(|| format!("resolving {}", args.testnet.display()))?;
    let cluster = Cluster::up_with(testnet, &["2"])?;
    let ferry = cluster.ferry().to_string_lossy().into_owned();
    let sink = cluster.spawn(
        "n2",
        work.path(),
        &[&ferry, "bench", "tcp-sink", "--listen", SINK],
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let tcp = cluster.tcp_throughput(1024)?;
    eprintln!("bench trees: raw TCP n1 -> n2 {tcp:.0} MB/s");

    let mut cells = Vec::new();
    for (tree, reference) in trees.iter().zip(&references) {
        for algorithm in &args.algorithms {
            let label = format!("bench trees: {} {algorithm}", tree.name);
            let (samples, failures) = repeat(&label, args.runs, || {
                one_run(&cluster, work.path(), tree, algorithm, reference)
            });
            cells.push(Cell {
                tree: tree.name,
                algorithm: algorithm.clone(),
                samples,
                failures,
            });
        }
    }
    let _ = ferry_sys::host::send_signal(ferry_sys::Pid::from_raw(sink), 9);
    drop(cluster);

    print_table(&cells, tcp, args.runs);
    if let Some(path) = &args.json {
        let v = json!({
            "tcp_mb_s": tcp,
            "cells": cells.iter().map(|c| json!({
                "tree": c.tree, "algorithm": c.algorithm, "runs": c.samples.len(),
                "failures": c.failures,
                "latency_ms": c.median(|s| s.latency_ms), "freeze_ms": c.median(|s| s.freeze_ms),
                "excision_ms": c.median(|s| s.excision_ms),
                "insertion_ms": c.median(|s| s.insertion_ms), "total_ms": c.median(|s| s.total_ms),
                "moved_bytes": c.median(|s| s.moved_bytes as f64),
                "processes": c.samples.iter().map(|s| s.processes).collect::<Vec<_>>(),
                "byte_for_byte": c.samples.iter().filter(|s| s.same).count(),
            })).collect::<Vec<_>>(),
        });
        fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let bad = cells
        .iter()
        .any(|c| !c.failures.is_empty() || c.samples.iter().any(|s| !s.same));
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(cells: &[Cell], tcp: f64, runs: usize) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "tree",
        "algorithm",
        "processes",
        "latency ms",
        "freeze ms",
        "excision ms",
        "insertion ms",
        "total ms",
        "moved MB",
        "at raw TCP ms",
        "byte for byte",
    ]);
    for c in cells {
        let mut procs: Vec<u64> = c.samples.iter().map(|s| s.processes).collect();
        procs.sort_unstable();
        procs.dedup();
        let moved = c.median(|s| s.moved_bytes as f64);
        t.add_row(vec![
            c.tree.to_string(),
            c.algorithm.clone(),
            procs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("–"),
            format!("{:.0}", c.median(|s| s.latency_ms)),
            format!("{:.0}", c.median(|s| s.freeze_ms)),
            format!("{:.0}", c.median(|s| s.excision_ms)),
            format!("{:.0}", c.median(|s| s.insertion_ms)),
            format!("{:.0}", c.median(|s| s.total_ms)),
            format!("{:.1}", moved / 1e6),
            if tcp > 0.0 {
                format!("{:.1}", moved / 1e6 / tcp * 1e3)
            } else {
                "-".into()
            },
            format!("{}/{runs}", c.samples.iter().filter(|s| s.same).count()),
        ]);
    }
    println!("{t}");
    println!("raw TCP n1 -> n2: {tcp:.0} MB/s (median of 3, one connection)");
    println!(
        "medians of {runs} runs; latency = request to the tree running at n2; freeze = time the \
         tree did not run; total = until no residual dependency; moved = state + pages + resent \
         bytes (demand-paging and file-server fault replies not included); at raw TCP = the time \
         those bytes take at the link's raw TCP throughput"
    );
}
