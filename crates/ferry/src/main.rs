//! `ferry`: the command-line front end.
//!
//! Parses arguments, runs one command, prints results (tables for people, JSON with `--json`)
//! and maps errors to the documented exit codes ([`exit::Code`]).

mod bench;
mod bench_balance;
mod bench_messages;
mod bench_migrate;
mod bench_trees;
mod cli;
mod cluster;
mod exit;
mod inspect;
mod plot;
mod remote;
mod units;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_checkpoint::{CheckpointOptions, Pid};
use ferry_sys::host;

use crate::cli::{Cli, Command};
use crate::exit::Code;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs every migration's outcome and figures: info is its quietest level.
    let floor = u8::from(matches!(cli.command, Command::Daemon(_)));
    init_logging(cli.verbose.max(floor));
    // A daemon must survive peers that hang up; a command printing into `head` need not.
    if !matches!(cli.command, Command::Daemon(_)) {
        ferry_sys::host::default_sigpipe();
    }
    match run(&cli.socket, cli.command) {
        Ok(code) => code,
        Err(err) => {
            let code = exit::classify(&err);
            eprintln!("ferry: {}", exit::render(&err));
            code.into()
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(socket: &Path, command: Command) -> Result<ExitCode> {
    match command {
        Command::Checkpoint {
            pid,
            dir,
            leave_running,
            json,
        } => checkpoint(pid, &dir, leave_running, json),
        Command::Restore { dir, detach, json } => restore(&dir, detach, json),
        Command::Inspect { dir, json } => inspect::run(&dir, json),
        Command::Bench(args) => bench::run(args),
        Command::Migrate {
            pid,
            to,
            algorithm,
            json,
            wait,
        } => remote::migrate(socket, pid, to, algorithm, json, wait),
        Command::Daemon(args) => daemon(args),
        Command::Run {
            on,
            policy,
            stdout,
            stderr,
            json,
            command,
        } => cluster::run(socket, command, on, policy, stdout, stderr, json),
        Command::Ps { json } => cluster::ps(socket, json),
        Command::Nodes { json } => cluster::nodes(socket, json),
        Command::Drain { node, undo } => cluster::drain(socket, node, !undo),
        Command::Owner { node, presence } => {
            cluster::owner(socket, node, presence == cli::Presence::Present)
        }
    }
}

fn checkpoint(pid: i32, dir: &Path, leave_running: bool, json: bool) -> Result<ExitCode> {
    // Ctrl-C must not cut ferry off while it holds the process half-inspected.
    let guard = host::defer_termination().context("preparing to checkpoint")?;
    let report =
        ferry_checkpoint::checkpoint(Pid::from_raw(pid), dir, CheckpointOptions { leave_running })?;
    drop(guard);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&units::checkpoint_json(&report, dir))?
        );
    } else {
        let with = match report.children.len() {
            0 => String::new(),
            1 => " and its child".to_string(),
            n => format!(" and {n} descendants"),
        };
        eprintln!(
            "ferry: checkpointed pid {}{with} into {}: {} in {} mappings, {} fds; frozen {}, total {}{}",
            report.pid,
            dir.display(),
            units::bytes(report.memory_bytes),
            report.mappings,
            report.fds,
            units::duration(report.freeze),
            units::duration(report.total),
            if report.leave_running {
                " (left running)"
            } else {
                " (ended)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(dir: &Path, detach: bool, json: bool) -> Result<ExitCode> {
    if !detach {
        // Before any thread exists, so that the relay thread alone receives these.
        host::route_termination_to_relay().context("preparing to wait for the process")?;
    }
    let restored = {
        let _guard = host::defer_termination().context("preparing to restore")?;
        ferry_checkpoint::restore(dir)?
    };
    let pid = restored.pid;
    if detach {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&units::restore_json(
                    &restored.report,
                    pid.as_raw(),
                    &restored.children
                ))?
            );
        } else {
            println!("{pid}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        eprintln!(
            "{}",
            serde_json::to_string(&units::restore_json(
                &restored.report,
                pid.as_raw(),
                &restored.children
            ))?
        );
    }
    let status = host::wait_child_relaying_signals(pid)
        .with_context(|| format!("waiting for restored pid {pid}"))?;
    Ok(ExitCode::from(status.shell_code().clamp(0, 255) as u8))
}

fn daemon(args: cli::DaemonArgs) -> Result<ExitCode> {
    use ferry_cluster::config::{Config, Overrides, Role, parse_peer};
    let role = match args.role.as_deref() {
        None => None,
        Some("normal") => Some(Role::Normal),
        Some("page-store") => Some(Role::PageStore),
        Some(other) => anyhow::bail!("--role {other}: use normal or page-store"),
    };
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<Result<Vec<_>, _>>()?;
    let config = Config::load(
        args.config.as_deref(),
        Overrides {
            node: args.node,
            listen: args.listen,
            socket: args.control_socket,
            secret_file: args.secret_file,
            state_dir: args.state_dir,
            page_store: args.page_store,
            plain_pages: args.plain_pages,
            role,
            group: args.group,
            policy: args.policy,
            auto_migrate: args.auto_migrate,
            peers,
        },
    )?;
    ferry_cluster::daemon::run(config)?;
    Ok(ExitCode::SUCCESS)
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}
