//! `ferry bench`: figures, not tests.
//!
//! `bench checkpoint` starts a process holding N MiB of written memory and T threads (this
//! binary's hidden `bench hold-memory`), checkpoints it with `--leave-running` semantics (so that the freeze
//! time is the real one of a live checkpoint), ends it, restores the image, has the restored
//! process verify every byte of its memory, and repeats. It reports medians.
//!
//! Each run also measures, right before it, the physical limits of the two directions on this
//! machine: writing N MiB into a fresh tmpfs file (what a checkpoint must at least do), and
//! filling N MiB of fresh anonymous memory (what a restore must at least do). A virtual
//! machine's first touch of memory is far slower than a `memcpy` of warm memory (which is
//! reported too), so the ratios are taken against the fresh-page limits.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use ferry_checkpoint::{CheckpointOptions, Pid};
use ferry_sys::host;
use serde_json::json;

use crate::cli::{BenchCheckpointArgs, BenchCommand};
use crate::units::{bytes, ms};

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Checkpoint(args) => bench_checkpoint(args),
        BenchCommand::Migrate(args) => crate::bench_migrate::bench_migrate(args),
        BenchCommand::Trees(args) => crate::bench_trees::bench_trees(args),
        BenchCommand::Balance(args) => crate::bench_balance::bench_balance(args),
        BenchCommand::Messages(args) => crate::bench_messages::bench_messages(args),
        BenchCommand::MsgEcho { name } => crate::bench_messages::msg_echo(&name),
        BenchCommand::MsgPing { name, to, size } => {
            crate::bench_messages::msg_ping(&name, &to, size)
        }
        BenchCommand::MsgBurst { name, to, count } => {
            crate::bench_messages::msg_burst(&name, &to, count)
        }
        BenchCommand::MsgSink { name, count } => crate::bench_messages::msg_sink(&name, count),
        BenchCommand::Spin { units } => crate::bench_balance::spin(units),
        BenchCommand::HoldMemory {
            mib,
            dirty_mib_s,
            threads,
        } => hold_memory(mib, dirty_mib_s, threads),
        BenchCommand::TcpSink { listen } => crate::bench_migrate::tcp_sink(listen),
        BenchCommand::TcpSource { connect, mib } => crate::bench_migrate::tcp_source(connect, mib),
    }
}

/// A size in MiB from "64M", "1G" or a plain number of MiB.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1024),
        Some('M' | 'm') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("size {s:?}: expected e.g. 64M or 1G"))?;
    Ok(n * mult)
}

const PATTERN_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

fn fill(buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let v = (i as u64).wrapping_mul(PATTERN_SEED).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn verify(buf: &[u8]) -> bool {
    buf.chunks(8).enumerate().all(|(i, chunk)| {
        let v = (i as u64).wrapping_mul(PATTERN_SEED).to_le_bytes();
        chunk == &v[..chunk.len()]
    })
}

/// The benchmarks' workload: writes `mib` MiB, starts `threads - 1` more threads that each
/// fill 64 KiB of their own and wait, says "ready" (a file in the cwd), then waits, rewriting
/// `dirty_mib_s` MiB/s of its pages with the same content (pages dirtied at a set rate, the
/// content still checkable); when `verify` appears every thread checks its bytes and the
/// process exits 0 (intact) or 1.
fn hold_memory(mib: u64, dirty_mib_s: u64, threads: usize) -> Result<ExitCode> {
    let mut buf = vec![0u8; (mib as usize) << 20];
    fill(&mut buf);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let helpers: Vec<std::thread::JoinHandle<bool>> = (1..threads.max(1))
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut own = vec![0u8; 64 << 10];
                fill(&mut own);
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                verify(&own)
            })
        })
        .collect();
    let helpers_intact = move || {
        stop.store(true, std::sync::atomic::Ordering::Release);
        helpers.into_iter().all(|h| h.join().unwrap_or(false))
    };
    fs::write("ready", b"ready\n").context("writing the ready file")?;
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = ((dirty_mib_s << 20) / 100) as usize;
    let mut at = 0usize;
    loop {
        if Path::new("verify").exists() {
            return Ok(if helpers_intact() && verify(&buf) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if per_tick > 0 && !buf.is_empty() {
            let t = Instant::now();
            let mut left = per_tick;
            while left > 0 {
                at %= buf.len();
                let n = left.min(buf.len() - at);
                // Same content, written again: the pages are dirty, the pattern intact.
                fill_at(&mut buf[at..at + n], at);
                at += n;
                left -= n;
            }
            std::thread::sleep(TICK.saturating_sub(t.elapsed()));
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `fill` of the part of a buffer that starts at byte `offset` (a multiple of 8).
fn fill_at(part: &mut [u8], offset: usize) {
    for (i, chunk) in part.chunks_mut(8).enumerate() {
        let v = ((offset / 8 + i) as u64)
            .wrapping_mul(PATTERN_SEED)
            .to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

struct Run {
    tmpfs_limit: f64,
    memory_limit: f64,
    checkpoint: Duration,
    freeze: Duration,
    ckpt_copy: Duration,
    restore: Duration,
    restore_copy: Duration,
    image_bytes: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    if d.is_zero() {
        return 0.0;
    }
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Writes `mib` MiB into a new file in `dir` with 1 MiB `write`s from a warm buffer: the rate
/// at which this machine can fill fresh page-cache (tmpfs) pages.
fn tmpfs_write_limit(dir: &Path, mib: u64) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("limit.tmp");
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = fs::File::create(&path).context("measuring the tmpfs write limit")?;
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let d = t.elapsed();
    drop(f);
    fs::remove_file(&path)?;
    Ok(gbps(mib << 20, d))
}

/// Fills `mib` MiB of freshly allocated anonymous memory from a warm buffer: the rate at
/// which this machine can hand out and fill new pages.
fn fresh_memory_limit(mib: u64) -> f64 {
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut v: Vec<u8> = Vec::with_capacity((mib as usize) << 20);
    for _ in 0..mib {
        v.extend_from_slice(&chunk);
    }
    let d = t.elapsed();
    std::hint::black_box(&v);
    gbps(mib << 20, d)
}

/// memcpy of `mib` MiB, median of 3: the copy bandwidth of this machine right now.
fn memcpy_bandwidth(mib: u64) -> f64 {
    let n = (mib.min(1024) as usize) << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault the pages in first
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        times.push(t.elapsed());
        std::hint::black_box(&dst);
    }
    gbps(n as u64, median(times))
}

pub(crate) fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    while !path.exists() {
        if t.elapsed() > timeout {
            bail!("timed out waiting for {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Starting `threads - 1` threads that wait, and joining them, median of 3: what the
/// threads of a process cost to make on this machine without ferry.
fn native_threads(threads: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let handles: Vec<_> = (1..threads.max(1))
            .map(|_| {
                let rx = std::sync::Arc::clone(&rx);
                std::thread::spawn(move || rx.lock().map(|r| r.recv().is_err()).unwrap_or(false))
            })
            .collect();
        drop(tx);
        for h in handles {
            let _ = h.join();
        }
        times.push(t.elapsed());
    }
    median(times)
}

fn one_run(exe: &Path, mib: u64, threads: usize, work: &Path) -> Result<Run> {
    let _ = fs::remove_dir_all(work);
    let wd = work.join("wd");
    let image = work.join("image");
    fs::create_dir_all(&wd)?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "hold-memory", "--mib", &mib.to_string()])
        .args(["--threads", &threads.to_string()])
        .current_dir(&wd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ferry_sys::spawn::isolate(&mut cmd, None);
    let mut child = cmd.spawn().context("starting the workload")?;
    let pid = Pid::from_raw(child.id() as i32);
    let result = (|| -> Result<Run> {
        wait_for(&wd.join("ready"), Duration::from_secs(120))?;
        let tmpfs_limit = tmpfs_write_limit(work, mib)?;
        let memory_limit = fresh_memory_limit(mib);
        let ck = ferry_checkpoint::checkpoint(
            pid,
            &image,
            CheckpointOptions {
                leave_running: true,
            },
        )?;
        let _ = child.kill();
        let _ = child.wait();
        let restored = ferry_checkpoint::restore(&image)?;
        fs::write(wd.join("verify"), b"")?;
        let status = host::wait_child(restored.pid)?;
        if status.shell_code() != 0 {
            bail!("the restored process found its memory corrupted ({status:?})");
        }
        Ok(Run {
            tmpfs_limit,
            memory_limit,
            checkpoint: ck.total,
            freeze: ck.freeze,
            ckpt_copy: ck.memory_copy,
            restore: restored.report.total,
            restore_copy: restored.report.memory_copy,
            image_bytes: ck.memory_bytes,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_dir_all(work);
    result
}

fn bench_checkpoint(args: BenchCheckpointArgs) -> Result<ExitCode> {
    if !host::is_root() {
        bail!("the benchmark restores processes and needs root");
    }
    let exe = std::env::current_exe().context("locating the ferry binary")?;
    let sizes: Vec<u64> = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_>>()?;
    if args.threads.iter().any(|&t| !(1..=1024).contains(&t)) {
        bail!("--threads: each count must be 1 to 1024");
    }
    let mut rows = Vec::new();
    for (&mib, &threads) in sizes
        .iter()
        .flat_map(|m| args.threads.iter().map(move |t| (m, t)))
    {
        let limit = memcpy_bandwidth(mib);
        let native = native_threads(threads);
        let mut runs = Vec::new();
        for i in 0..args.runs.max(1) {
            let work: PathBuf = args.dir.join(format!("{mib}M-{threads}T-{i}"));
            let r = one_run(&exe, mib, threads, &work)
                .with_context(|| format!("{mib} MiB, {threads} threads, run {}", i + 1))?;
            eprintln!(
                "  {mib} MiB, {threads} threads, run {}: checkpoint {:.1} ms (freeze {:.1} ms), \
                 restore {:.1} ms",
                i + 1,
                ms(r.checkpoint),
                ms(r.freeze),
                ms(r.restore)
            );
            runs.push(r);
        }
        let image_bytes = runs.iter().map(|r| r.image_bytes).max().unwrap_or(0);
        let ck = median(runs.iter().map(|r| r.checkpoint).collect());
        let fr = median(runs.iter().map(|r| r.freeze).collect());
        let ckc = median(runs.iter().map(|r| r.ckpt_copy).collect());
        let rs = median(runs.iter().map(|r| r.restore).collect());
        let rsc = median(runs.iter().map(|r| r.restore_copy).collect());
        let fmedian = |v: Vec<f64>| -> f64 {
            let mut v = v;
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let tmpfs_limit = fmedian(runs.iter().map(|r| r.tmpfs_limit).collect());
        let memory_limit = fmedian(runs.iter().map(|r| r.memory_limit).collect());
        rows.push(json!({
            "resident_mib": mib,
            "threads": threads,
            "native_threads_ms": ms(native),
            "image_bytes": image_bytes,
            "runs": runs.len(),
            "checkpoint_ms": ms(ck),
            "freeze_ms": ms(fr),
            "checkpoint_copy_ms": ms(ckc),
            "restore_ms": ms(rs),
            "restore_copy_ms": ms(rsc),
            "checkpoint_gbps": gbps(image_bytes, ck),
            "restore_gbps": gbps(image_bytes, rs),
            "memcpy_gbps": limit,
            "tmpfs_write_limit_gbps": tmpfs_limit,
            "fresh_memory_limit_gbps": memory_limit,
            "checkpoint_vs_limit": gbps(image_bytes, ck) / tmpfs_limit,
            "restore_vs_limit": gbps(image_bytes, rs) / memory_limit,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "resident",
        "threads",
        "checkpoint",
        "freeze",
        "restore",
        "ckpt GB/s",
        "tmpfs limit",
        "ckpt/limit",
        "restore GB/s",
        "memory limit",
        "restore/limit",
        "memcpy (warm)",
    ]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    for r in &rows {
        t.add_row(vec![
            bytes(r["resident_mib"].as_u64().unwrap_or(0) << 20),
            format!(
                "{} (native {:.2} ms)",
                r["threads"].as_u64().unwrap_or(1),
                f(r, "native_threads_ms")
            ),
            format!("{:.1} ms", f(r, "checkpoint_ms")),
            format!("{:.1} ms", f(r, "freeze_ms")),
            format!("{:.1} ms", f(r, "restore_ms")),
            format!("{:.2}", f(r, "checkpoint_gbps")),
            format!("{:.2}", f(r, "tmpfs_write_limit_gbps")),
            format!("{:.2}", f(r, "checkpoint_vs_limit")),
            format!("{:.2}", f(r, "restore_gbps")),
            format!("{:.2}", f(r, "fresh_memory_limit_gbps")),
            format!("{:.2}", f(r, "restore_vs_limit")),
            format!("{:.1}", f(r, "memcpy_gbps")),
        ]);
    }
    println!(
        "checkpoint/restore, image on {} (medians of {} runs; GB = 10^9 bytes; limits measured \
         in the same runs: fresh tmpfs pages written, fresh anonymous pages filled; native: \
         starting and joining the other threads without ferry)\n{t}",
        args.dir.display(),
        args.runs
    );
    Ok(ExitCode::SUCCESS)
}
