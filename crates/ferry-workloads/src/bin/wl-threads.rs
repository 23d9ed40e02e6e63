//! `wl-threads`: a process with two Rust std threads.
//!
//! Usage: `wl-threads [SECONDS]` (default 3).
//!
//! Output (stdout): `wl-threads start`, `ready` once the second thread runs, then, after that
//! thread has slept SECONDS and been joined, `joined` and `done`. Exit status 0.
//!
//! Checkpointed at `ready`, the main thread is in `join` (a futex wait on the other thread's
//! id, which the kernel clears when that thread exits) and the other in `nanosleep`: the
//! restored copy must still print `joined` and `done`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

fn run() -> Result<(), String> {
    let secs: u64 = match std::env::args().nth(1) {
        None => 3,
        Some(s) => s
            .parse()
            .map_err(|_| format!("usage: wl-threads [SECONDS] (bad number {s:?})"))?,
    };
    let mut out = std::io::stdout().lock();
    let mut say = |line: &str| -> Result<(), String> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("write to stdout failed: {e}"))
    };

    say("wl-threads start")?;
    let (started_tx, started_rx) = mpsc::channel();
    let sleeper = std::thread::spawn(move || {
        // The receiver waits for this; if it is gone there is nobody to tell.
        let _ = started_tx.send(());
        std::thread::sleep(Duration::from_secs(secs));
    });
    started_rx
        .recv()
        .map_err(|_| "the second thread never started".to_string())?;
    say("ready")?;
    sleeper
        .join()
        .map_err(|_| "the second thread panicked".to_string())?;
    say("joined")?;
    say("done")
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wl-threads: {e}");
            ExitCode::from(91)
        }
    }
}
