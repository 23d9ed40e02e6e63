//! `wl-compute`: a CPU-bound, deterministic Rust workload for ferry's tests.
//!
//! Usage: `wl-compute [STEPS [ROUNDS]]` (defaults: 40 steps of 20,000,000 rounds).
//!
//! Output (stdout, one line per write):
//!
//! ```text
//! wl-compute start steps=STEPS rounds=ROUNDS
//! step I: state=XXXXXXXXXXXXXXXX live=N sum=XXXXXXXXXXXXXXXX      I = 0..STEPS-1
//! result XXXXXXXXXXXXXXXX
//! done
//! ```
//!
//! Exit status 0; a failed write to stdout is reported on stderr with exit status 91.
//!
//! Each step runs ROUNDS rounds of a 64-bit mixing function entirely in user space (no
//! system calls), so a checkpoint almost always freezes the process between two instructions
//! of ordinary code rather than inside a system call: every general purpose register and the
//! flags must come back exactly. Every 64th round also inserts into or removes from a
//! `BTreeMap` (heap churn through Rust's allocator). Nothing printed depends on time, pids or
//! addresses. Marker for tests: `step 3:`. About 4 s in a debug build on a current x86_64
//! core; pass fewer ROUNDS for less.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn arg(args: &[String], i: usize, default: u64) -> Result<u64, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("usage: wl-compute [STEPS [ROUNDS]] (bad number {s:?})")),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let steps = arg(&args, 1, 40)?;
    let rounds = arg(&args, 2, 20_000_000)?;
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| -> Result<(), String> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("write to stdout failed: {e}"))
    };

    say(format!("wl-compute start steps={steps} rounds={rounds}"))?;
    let mut state: u64 = 0x0123_4567_89ab_cdef;
    let mut map: BTreeMap<u64, u64> = BTreeMap::new();
    for step in 0..steps {
        for round in 0..rounds {
            state = mix(state ^ round).rotate_left((round % 63) as u32 + 1) ^ step;
            if round % 64 == 0 {
                let key = state % 4096;
                if state & (1 << 40) == 0 {
                    *map.entry(key).or_insert(0) ^= state;
                } else {
                    map.remove(&key);
                }
            }
        }
        let sum = map.values().fold(0u64, |acc, v| mix(acc ^ v));
        say(format!(
            "step {step}: state={state:016x} live={} sum={sum:016x}",
            map.len()
        ))?;
    }
    say(format!("result {:016x}", mix(state)))?;
    say("done".to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wl-compute: {e}");
            ExitCode::from(91)
        }
    }
}
