//! `ferry migrate`: asks the local daemon to move a process, shows progress, prints the
//! metrics table (or JSON).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use ferry_cluster::control::{Event, FailureKind, Request};
use ferry_migrate::{Algorithm, MigrationReport};
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit::Code;
use crate::units::bytes;

/// What to do after an event.
pub enum Next {
    Continue,
    /// Keep reading, but give up after this long without the connection closing.
    ContinueFor(Duration),
    Stop,
}

/// Sends `request` to the daemon at `socket` and hands each event to `on_event` until the
/// daemon closes the connection (or `on_event` says stop, or its deadline passes).
pub fn exchange(
    socket: &Path,
    request: &Request,
    mut on_event: impl FnMut(Event) -> Result<Next>,
) -> Result<()> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the ferry daemon at {} (is `ferry daemon` running? --socket or \
             FERRY_SOCKET name another one)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("sending the request to the daemon")?;
    let reader_stream = stream.try_clone().context("reading the daemon's answer")?;
    let mut deadline: Option<Instant> = None;
    let mut lines = BufReader::new(reader_stream).lines();
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            stream
                .set_read_timeout(Some(left))
                .context("reading the daemon's answer")?;
        }
        let line = match lines.next() {
            None => return Ok(()),
            Some(Ok(l)) => l,
            Some(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(());
            }
            Some(Err(e)) => return Err(e).context("reading the daemon's answer"),
        };
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .with_context(|| format!("the daemon answered something unexpected: {line}"))?;
        match on_event(event)? {
            Next::Continue => {}
            Next::ContinueFor(d) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + d);
                }
            }
            Next::Stop => return Ok(()),
        }
    }
}

/// A failure the daemon reported, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RemoteFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl RemoteFailure {
    pub fn code(&self) -> Code {
        match self.kind {
            FailureKind::NotMigratable => Code::NotMigratable,
            _ => Code::Error,
        }
    }
}

pub fn migrate(
    socket: &Path,
    pid: i32,
    to: Vec<String>,
    algorithm: Algorithm,
    json: bool,
    wait: f64,
) -> Result<ExitCode> {
    let request = Request::Migrate { pid, to, algorithm };
    let bar = if json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg:<28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let mut report = None;
    let mut failure = None;
    let wait = Duration::from_secs_f64(wait.max(0.0));
    exchange(socket, &request, |event| {
        Ok(match event {
            Event::Progress { phase, done, total } => {
                bar.set_message(phase);
                bar.set_length(total);
                bar.set_position(done);
                Next::Continue
            }
            Event::Migrated { report: r } => {
                // The first report comes when the process runs there; the final one when the
                // residual dependency ended.
                let done = r.residual_ms.is_some();
                report = Some(r);
                if done {
                    Next::Stop
                } else {
                    Next::ContinueFor(wait)
                }
            }
            Event::Failed { kind, message } => {
                failure = Some(RemoteFailure { kind, message });
                Next::Stop
            }
            _ => Next::Continue,
        })
    })?;
    bar.finish_and_clear();
    if let Some(f) = failure {
        return Err(f.into());
    }
    let Some(report) = report else {
        bail!("the daemon closed the connection without a result");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", table(&[report]));
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// The metrics of one or more migrations, one column per migration.
pub fn table(reports: &[MigrationReport]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let mut header = vec!["".to_string()];
    header.extend(reports.iter().map(|r| {
        r.algorithm
            .map(|a| a.name().to_string())
            .unwrap_or_default()
    }));
    t.set_header(header);
    let row = |name: &str, f: &dyn Fn(&MigrationReport) -> String| {
        let mut cells = vec![name.to_string()];
        cells.extend(reports.iter().map(f));
        cells
    };
    t.add_row(row("route", &|r| format!("{} → {}", r.from, r.to)));
    t.add_row(row("pid", &|r| format!("{} → {}", r.pid, r.new_pid)));
    t.add_row(row("ids", &|r| {
        if r.ids_kept {
            "kept (pid 1 of its own PID namespace, and every id in it)".into()
        } else {
            "new pid and thread ids (not in a PID namespace of its own)".into()
        }
    }));
    if reports.iter().any(|r| r.processes > 1) {
        t.add_row(row("processes", &|r| match r.processes {
            0 | 1 => "1".into(),
            n => format!("{n} (the process and its descendants, with their pids)"),
        }));
    }
    if reports.iter().any(|r| r.threads > 1) {
        t.add_row(row("threads", &|r| r.threads.to_string()));
    }
    t.add_row(row("migration latency", &|r| ms(r.latency_ms)));
    t.add_row(row("freeze time", &|r| ms(r.freeze_ms)));
    t.add_row(row("excision time", &|r| ms(r.excision_ms)));
    t.add_row(row("insertion time", &|r| ms(r.insertion_ms)));
    t.add_row(row("residual dependency", &|r| {
        r.residual_ms
            .map(ms)
            .unwrap_or_else(|| "ongoing (the daemon logs its end)".into())
    }));
    t.add_row(row("total time", &|r| {
        r.total_ms.map(ms).unwrap_or_else(|| "ongoing".into())
    }));
    t.add_row(row("state sent", &|r| bytes(r.state_bytes)));
    t.add_row(row("pages sent", &|r| bytes(r.page_bytes)));
    t.add_row(row("pages resent", &|r| bytes(r.resent_bytes)));
    t.add_row(row("to page store", &|r| bytes(r.store_bytes)));
    t.add_row(row("pre-copy rounds", &|r| r.precopy_rounds.to_string()));
    t.add_row(row("remote page faults", &|r| {
        r.remote_faults.count.to_string()
    }));
    t.add_row(row("fault service (median/p99)", &|r| {
        if r.remote_faults.count == 0 {
            "-".into()
        } else {
            format!(
                "{} / {}",
                ms(r.remote_faults.median_ms),
                ms(r.remote_faults.p99_ms)
            )
        }
    }));
    t.add_row(row("faults from the store", &|r| {
        r.store_faults.to_string()
    }));
    if reports.iter().any(|r| r.links.is_some()) {
        t.add_row(row("message links", &|r| {
            r.links.as_ref().map_or("-".into(), |l| l.links.to_string())
        }));
        t.add_row(row("message freeze time", &|r| {
            r.links
                .as_ref()
                .map_or("-".into(), |l| ms(l.message_freeze_ms))
        }));
        t.add_row(row("messages held (max delay)", &|r| {
            r.links.as_ref().map_or("-".into(), |l| {
                format!("{} ({})", l.held, ms(l.held_max_ms))
            })
        }));
    }
    t.add_row(row("refused by", &|r| {
        if r.rejected.is_empty() {
            "-".into()
        } else {
            r.rejected
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    }));
    t
}
