//! `ferry run`, `ps`, `nodes`, `drain`, `owner`: load-sharing requests to the local daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use ferry_cluster::control::{Event, NodeRow, Request};
use ferry_cluster::jobs::JobInfo;
use ferry_cluster::placement::Policy;

use crate::remote::{Next, RemoteFailure, exchange};

/// Sends `request` and returns the daemon's single answer (a failure becomes an error).
fn ask(socket: &Path, request: &Request) -> Result<Event> {
    let mut answer = None;
    exchange(socket, request, |e| {
        answer = Some(e);
        Ok(Next::Stop)
    })?;
    match answer {
        Some(Event::Failed { kind, message }) => Err(RemoteFailure { kind, message }.into()),
        Some(e) => Ok(e),
        None => bail!("the daemon closed the connection without an answer"),
    }
}

fn absolute(p: PathBuf, cwd: &Path) -> String {
    if p.is_absolute() {
        p.display().to_string()
    } else {
        cwd.join(p).display().to_string()
    }
}

pub fn run(
    socket: &Path,
    argv: Vec<String>,
    on: Option<String>,
    policy: Option<Policy>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("the current directory")?;
    let request = Request::Run {
        argv,
        cwd: cwd.display().to_string(),
        env: std::env::vars().collect(),
        stdout: stdout.map(|p| absolute(p, &cwd)),
        stderr: stderr.map(|p| absolute(p, &cwd)),
        on,
        policy,
    };
    match ask(socket, &request)? {
        Event::Started { job, placement } => {
            if json {
                let mut v = serde_json::to_value(&job)?;
                v["placement"] = placement.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{} runs on {} as pid {} ({placement})\n  output: {}\n  errors: {}",
                    job.id, job.node, job.pid, job.stdout, job.stderr
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

pub fn jobs_table(jobs: &[JobInfo]) -> Table {
    let now = ferry_cluster::jobs::now_ms();
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "id", "node", "pid", "cpu", "age", "state", "moves", "mobility", "command",
    ]);
    for j in jobs {
        let end = j.ended_ms.unwrap_or(now);
        t.add_row(vec![
            j.id.clone(),
            j.node.clone(),
            j.pid.to_string(),
            duration_text(j.cpu_ms),
            duration_text(end.saturating_sub(j.started_ms)),
            j.state.clone(),
            j.hops.to_string(),
            match (&j.immobile, j.ended_ms) {
                (_, Some(_)) => "-".into(),
                (None, None) => "mobile".into(),
                (Some(why), None) => format!("immobile: {why}"),
            },
            j.command.replace('\n', " "),
        ]);
    }
    t
}

pub fn ps(socket: &Path, json: bool) -> Result<ExitCode> {
    match ask(socket, &Request::Ps)? {
        Event::Jobs { jobs } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no ferry-managed processes (start one with: ferry run -- CMD)");
            } else {
                println!("{}", jobs_table(&jobs));
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn nodes_table(nodes: &[NodeRow]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "node",
        "status",
        "age",
        "run queue",
        "now",
        "capacity",
        "load/cpu",
        "mem free",
        "jobs",
        "takes new",
        "group",
    ]);
    for n in nodes {
        let age = n
            .age_ms
            .map(|a| format!("{:.1}s", a as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        match &n.advert {
            Some(a) => {
                let takes = if a.accepting {
                    "yes".to_string()
                } else if a.draining {
                    "no: draining".into()
                } else if a.owner_present {
                    "no: owner present".into()
                } else {
                    format!("no: {}", a.role)
                };
                t.add_row(vec![
                    n.name.clone(),
                    n.status.clone(),
                    age,
                    format!("{:.2}", a.run_queue),
                    a.run_queue_now.to_string(),
                    format!("{:.2} CPU", a.capacity),
                    format!("{:.2}", a.run_queue / a.capacity.max(0.01)),
                    crate::units::bytes(a.mem_free),
                    a.jobs.to_string(),
                    takes,
                    if a.group.is_empty() {
                        "-".into()
                    } else {
                        a.group.clone()
                    },
                ]);
            }
            None => {
                t.add_row(vec![
                    n.name.clone(),
                    n.status.clone(),
                    age,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
    }
    t
}

pub fn nodes(socket: &Path, json: bool) -> Result<ExitCode> {
    match ask(socket, &Request::Nodes)? {
        Event::Nodes { nodes } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!("{}", nodes_table(&nodes));
                println!("age: time since this node first saw the figure (gossip)");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn done(event: Event) -> Result<ExitCode> {
    match event {
        Event::Done { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub fn drain(socket: &Path, node: String, on: bool) -> Result<ExitCode> {
    done(ask(socket, &Request::Drain { node, on })?)
}

pub fn owner(socket: &Path, node: String, present: bool) -> Result<ExitCode> {
    done(ask(socket, &Request::Owner { node, present })?)
}
