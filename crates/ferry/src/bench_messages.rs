//! `ferry bench messages`: two processes ping-pong messages without pause while the echoing
//! one migrates back and forth between two test hosts, with every algorithm; then, with
//! `--soak N`, N freeze-free migrations in a row. Reports per algorithm the message freeze
//! time (from the migration reports), the freeze time, the extra delay of the slowest round
//! trip of each migration against the round trips before any migration, and the messages lost,
//! duplicated or out of order (the pinger checks every reply).
//!
//! Also the two workloads (hidden subcommands): `msg-echo` answers every message to its
//! sender; `msg-ping` sends numbered messages one at a time and waits for each echo.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_msg::{Endpoint, MsgError, Wait};
use serde_json::{Value, json};

use crate::bench_migrate::{Cluster, median_f};
use crate::cli::BenchMessagesArgs;

/// Echoes every message back to its sender until it receives `stop`.
pub fn msg_echo(name: &str) -> Result<ExitCode> {
    let mut ep = Endpoint::open(Some(name)).context("opening the endpoint")?;
    fs::write("ready", ep.id().to_string()).context("writing the ready file")?;
    loop {
        let Some(m) = ep.recv(Wait::Forever).context("receiving")? else {
            continue;
        };
        if m.data == b"stop" {
            return Ok(ExitCode::SUCCESS);
        }
        ep.send(&m.from.to_string(), &m.data).context("answering")?;
    }
}

/// What the pinger found; written to `summary.json` when it stops.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PingSummary {
    pub sent: u64,
    pub echoed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

/// Sends message 1, 2, 3… to `to`, each once its predecessor came back, until the file `stop`
/// appears; records every round trip (`rtt.bin`: send time in ns since the epoch and round
/// trip in µs, little endian u64 + u32) and checks that the echoes come back in order, once.
pub fn msg_ping(name: &str, to: &str, size: usize) -> Result<ExitCode> {
    let mut ep = Endpoint::open(Some(name)).context("opening the endpoint")?;
    let waited = Instant::now();
    // The echo may not be up yet.
    loop {
        match ep.send(to, &0u64.to_le_bytes()) {
            Ok(()) => break,
            Err(MsgError::NoSuchName(_)) if waited.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("the first message"),
        }
    }
    let mut summary = PingSummary::default();
    let first = ep
        .recv(Wait::For(Duration::from_secs(10)))
        .context("the first echo")?;
    if first.is_none() {
        bail!("no echo from {to} within 10 s");
    }
    fs::write("ready", b"ready\n").context("writing the ready file")?;
    let mut samples: Vec<u8> = Vec::new();
    let mut payload = vec![0u8; size.max(8)];
    let mut next: u64 = 1;
    let mut expect: u64 = 1;
    while !Path::new("stop").exists() {
        for _ in 0..64 {
            payload[..8].copy_from_slice(&next.to_le_bytes());
            let sent_at = std::time::SystemTime::now();
            let t = Instant::now();
            ep.send(to, &payload).context("sending")?;
            summary.sent += 1;
            next += 1;
            // Wait for this message's echo; anything else is a duplicate or out of order.
            loop {
                let Some(m) = ep
                    .recv(Wait::For(Duration::from_secs(60)))
                    .context("receiving")?
                else {
                    summary.lost += next - expect;
                    eprintln!("no echo within 60 s (message {})", next - 1);
                    fs::write("rtt.bin", &samples).context("writing rtt.bin")?;
                    fs::write("summary.json", serde_json::to_vec(&summary)?)
                        .context("writing the summary")?;
                    return Ok(ExitCode::from(1));
                };
                let got = number(&m.data);
                if got < expect {
                    summary.duplicated += 1;
                    continue;
                }
                if got > expect {
                    summary.reordered += 1;
                    summary.lost += got - expect;
                }
                summary.echoed += 1;
                expect = got + 1;
                if got == next - 1 {
                    break;
                }
            }
            let rtt = t.elapsed().as_micros() as u32;
            let at = sent_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            samples.extend_from_slice(&at.to_le_bytes());
            samples.extend_from_slice(&rtt.to_le_bytes());
        }
        // Progress, for whoever waits for messages to flow.
        fs::write("echoed", summary.echoed.to_string()).context("writing the echoed file")?;
    }
    fs::write("rtt.bin", &samples).context("writing rtt.bin")?;
    fs::write("summary.json", serde_json::to_vec(&summary)?).context("writing the summary")?;
    ep.send(to, b"stop").context("stopping the echo")?;
    Ok(ExitCode::SUCCESS)
}

/// Sends `count` numbered messages to `to` as fast as the daemon takes them, then writes
/// `sent`.
pub fn msg_burst(name: &str, to: &str, count: u64) -> Result<ExitCode> {
    let mut ep = Endpoint::open(Some(name)).context("opening the endpoint")?;
    let waited = Instant::now();
    let mut i = 1u64;
    while i <= count {
        match ep.send(to, &i.to_le_bytes()) {
            Ok(()) => i += 1,
            Err(MsgError::NoSuchName(_))
                if i == 1 && waited.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("sending message {i}")),
        }
        if i == count / 10 {
            fs::write("started", b"").context("writing the started file")?;
        }
    }
    fs::write("sent", count.to_string()).context("writing the sent file")?;
    Ok(ExitCode::SUCCESS)
}

/// Receives `count` messages and checks that they are 1, 2, 3… in order; writes
/// `result.json` (received, duplicated, missing, out of order).
pub fn msg_sink(name: &str, count: u64) -> Result<ExitCode> {
    let mut ep = Endpoint::open(Some(name)).context("opening the endpoint")?;
    fs::write("ready", ep.id().to_string()).context("writing the ready file")?;
    let (mut received, mut duplicated, mut missing, mut reordered) = (0u64, 0u64, 0u64, 0u64);
    let mut expect = 1u64;
    while expect <= count {
        let Some(m) = ep
            .recv(Wait::For(Duration::from_secs(60)))
            .context("receiving")?
        else {
            missing += count + 1 - expect;
            break;
        };
        let got = number(&m.data);
        received += 1;
        if got < expect {
            duplicated += 1;
        } else {
            if got > expect {
                reordered += 1;
                missing += got - expect;
            }
            expect = got + 1;
        }
    }
    let doc = json!({"received": received, "duplicated": duplicated, "missing": missing,
        "reordered": reordered});
    fs::write("result.json", doc.to_string()).context("writing result.json")?;
    Ok(ExitCode::SUCCESS)
}

/// The number a numbered message carries (its first 8 bytes, little endian; 0 if shorter).
fn number(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Round trips recorded by `msg-ping`: (send time ns since the epoch, µs).
fn read_rtts(path: &Path) -> Result<Vec<(u64, u32)>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes
        .chunks_exact(12)
        .filter_map(|c| {
            let at = u64::from_le_bytes(c[..8].try_into().ok()?);
            let us = u32::from_le_bytes(c[8..].try_into().ok()?);
            Some((at, us))
        })
        .collect())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One migration of the echo and what it did to the round trips.
struct Sample {
    freeze_ms: f64,
    message_freeze_ms: f64,
    start_ns: u64,
    end_ns: u64,
}

pub fn bench_messages(args: BenchMessagesArgs) -> Result<ExitCode> {
    if !ferry_sys::host::is_root() {
        bail!("bench messages needs root: it creates a test cluster (network namespaces)");
    }
    if !args.testnet.is_file() {
        bail!(
            "{} not found: run from the repository, or pass --testnet PATH",
            args.testnet.display()
        );
    }
    for a in &args.algorithms {
        a.parse::<ferry_migrate::Algorithm>()
            .map_err(|e| anyhow::anyhow!("--algorithms: {e}"))?;
    }
    if args.runs == 0 && args.soak == 0 {
        bail!("--runs 0 and no --soak: nothing to measure");
    }
    let testnet = fs::canonicalize(&args.testnet)?;
    let cluster = Cluster::up_with(testnet, &["3", "--cpu-quota", "max", "--plain-pages"])?;
    let work = tempfile::tempdir().context("a work directory")?;
    let (echo_dir, ping_dir) = (work.path().join("echo"), work.path().join("ping"));
    fs::create_dir_all(&echo_dir)?;
    fs::create_dir_all(&ping_dir)?;
    let ferry = cluster.ferry().to_string_lossy().into_owned();
    let mut pid = cluster.spawn(
        "n1",
        &echo_dir,
        &[&ferry, "bench", "msg-echo", "--name", "bench-echo"],
    )?;
    crate::bench::wait_for(&echo_dir.join("ready"), Duration::from_secs(10))?;
    let size = args.size.to_string();
    cluster.spawn(
        "n3",
        &ping_dir,
        &[
            &ferry,
            "bench",
            "msg-ping",
            "--name",
            "bench-ping",
            "--to",
            "bench-echo",
            "--size",
            &size,
        ],
    )?;
    crate::bench::wait_for(&ping_dir.join("ready"), Duration::from_secs(15))?;
    // Round trips with nothing moving.
    std::thread::sleep(Duration::from_secs(2));
    let baseline_end = now_ns();
    let mut at = "n1";
    let mut results: Vec<(String, Vec<Sample>)> = Vec::new();
    let mut plan: Vec<(String, usize)> = args
        .algorithms
        .iter()
        .filter(|_| args.runs > 0)
        .map(|a| (a.clone(), args.runs))
        .collect();
    if args.soak > 0 {
        plan.push(("soak (freeze-free)".to_string(), args.soak));
    }
    for (label, runs) in &plan {
        let algorithm = label
            .strip_prefix("soak (")
            .map(|s| s.trim_end_matches(')'))
            .unwrap_or(label);
        let mut samples = Vec::new();
        for run in 0..*runs {
            eprint!("\rbench messages: {label} {}/{runs}   ", run + 1);
            let to = if at == "n1" { "n2" } else { "n1" };
            let start_ns = now_ns();
            let report = migrate(&cluster, &ferry, at, pid, to, algorithm)?;
            let end_ns = now_ns();
            pid = report["new_pid"].as_i64().unwrap_or(0) as i32;
            at = to;
            samples.push(Sample {
                freeze_ms: report["freeze_ms"].as_f64().unwrap_or(0.0),
                message_freeze_ms: report["links"]["message_freeze_ms"]
                    .as_f64()
                    .context("the report has no message figures")?,
                start_ns,
                end_ns,
            });
            // Let the round trips settle between migrations.
            std::thread::sleep(Duration::from_millis(args.pause_ms));
        }
        results.push((label.clone(), samples));
    }
    eprintln!();
    fs::write(ping_dir.join("stop"), b"").context("stopping the pinger")?;
    crate::bench::wait_for(&ping_dir.join("summary.json"), Duration::from_secs(90))?;
    // The pinger writes its figures just before it stops.
    std::thread::sleep(Duration::from_millis(200));
    let summary: PingSummary = serde_json::from_slice(&fs::read(ping_dir.join("summary.json"))?)
        .context("the pinger's summary")?;
    let rtts = read_rtts(&ping_dir.join("rtt.bin"))?;
    let base: Vec<f64> = rtts
        .iter()
        .filter(|(t, _)| *t < baseline_end)
        .map(|(_, us)| f64::from(*us) / 1e3)
        .collect();
    let base_ms = median_f(base.clone());
    let mut rows = Vec::new();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "algorithm",
        "migrations",
        "message freeze (ms)",
        "freeze (ms)",
        "extra delay (ms)",
    ]);
    for (label, samples) in &results {
        let extra: Vec<f64> = samples
            .iter()
            .map(|s| {
                rtts.iter()
                    .filter(|(t, _)| *t >= s.start_ns && *t <= s.end_ns)
                    .map(|(_, us)| f64::from(*us) / 1e3)
                    .fold(0.0, f64::max)
                    - base_ms
            })
            .map(|x| x.max(0.0))
            .collect();
        let mf: Vec<f64> = samples.iter().map(|s| s.message_freeze_ms).collect();
        let fr: Vec<f64> = samples.iter().map(|s| s.freeze_ms).collect();
        let mf_max = mf.iter().copied().fold(0.0, f64::max);
        let mf_p99 = percentile(&mf, 0.99);
        table.add_row([
            label.clone(),
            samples.len().to_string(),
            format!(
                "{:.3} (p99 {:.3}, max {:.3})",
                median_f(mf.clone()),
                mf_p99,
                mf_max
            ),
            format!("{:.1}", median_f(fr.clone())),
            format!("{:.2}", median_f(extra.clone())),
        ]);
        rows.push(json!({
            "algorithm": label, "migrations": samples.len(),
            "message_freeze_ms_median": median_f(mf), "message_freeze_ms_p99": mf_p99,
            "message_freeze_ms_max": mf_max,
            "freeze_ms_median": median_f(fr), "extra_delay_ms_median": median_f(extra),
        }));
    }
    println!("{table}");
    println!(
        "round trips: {} measured, {:.3} ms median before any migration ({} samples); \
         messages sent {}, echoed {}, lost {}, duplicated {}, out of order {}",
        rtts.len(),
        base_ms,
        base.len(),
        summary.sent,
        summary.echoed,
        summary.lost,
        summary.duplicated,
        summary.reordered
    );
    if let Some(path) = &args.json {
        let doc: Value = json!({
            "baseline_rtt_ms": base_ms, "rows": rows,
            "sent": summary.sent, "echoed": summary.echoed, "lost": summary.lost,
            "duplicated": summary.duplicated, "reordered": summary.reordered,
        });
        fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let clean = summary.lost == 0 && summary.duplicated == 0 && summary.reordered == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `q` quantile of `v` (nearest rank).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * q).ceil() as usize;
    v.get(rank.saturating_sub(1)).copied().unwrap_or(0.0)
}

/// `ferry migrate PID --to TO --algorithm A --json` on node `from`; the report.
fn migrate(
    cluster: &Cluster,
    ferry: &str,
    from: &str,
    pid: i32,
    to: &str,
    algorithm: &str,
) -> Result<Value> {
    let pid_s = pid.to_string();
    let out = cluster
        .cmd(&[
            "exec",
            from,
            "--",
            ferry,
            "migrate",
            &pid_s,
            "--to",
            to,
            "--algorithm",
            algorithm,
            "--json",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "ferry migrate ({algorithm}, {from} → {to}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("the migration report")
}
