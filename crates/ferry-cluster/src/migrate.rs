//! Migration requests from the local CLI: who may ask, which process, which targets.

use std::sync::Arc;

use ferry_migrate::Algorithm;
use ferry_migrate::source::{MigrateError, Target, Update, migrate_out};
use ferry_sys::Pid;
use tokio::sync::mpsc;

use crate::control::{Event, FailureKind};
use crate::daemon::Shared;

/// Why the caller may not move `pid` from this host, if so.
fn check_caller(shared: &Shared, caller_uid: u32, pid: i32) -> Result<(), (FailureKind, String)> {
    let p = Pid::from_raw(pid);
    let status = ferry_sys::proc::status(p)
        .map_err(|_| (FailureKind::Error, format!("no process with pid {pid}")))?;
    if caller_uid != 0 && status.ruid != caller_uid {
        return Err((
            FailureKind::PermissionDenied,
            format!(
                "permission denied: pid {pid} belongs to uid {}; only root or its owner may move it",
                status.ruid
            ),
        ));
    }
    // On a test cluster all hosts share one kernel: a host's processes are those in its
    // network namespace.
    let theirs = ferry_sys::proc::stat_link(p, "ns/net").map(|s| s.inode);
    let ours = ferry_sys::proc::stat_link(ferry_sys::host::self_pid(), "ns/net").map(|s| s.inode);
    if let (Ok(a), Ok(b)) = (theirs, ours)
        && a != b
    {
        return Err((
            FailureKind::Error,
            format!(
                "pid {pid} does not run on this host ({})",
                shared.config.node
            ),
        ));
    }
    Ok(())
}

pub async fn handle(
    shared: Arc<Shared>,
    caller_uid: u32,
    pid: i32,
    to: Vec<String>,
    algorithm: Algorithm,
    events: mpsc::Sender<Event>,
) {
    if let Err((kind, message)) = check_caller(&shared, caller_uid, pid) {
        let _ = events.send(Event::Failed { kind, message }).await;
        return;
    }
    let unknown: Vec<&String> = to
        .iter()
        .filter(|n| shared.config.peer(n).is_none())
        .collect();
    if !unknown.is_empty() {
        let _ = events
            .send(Event::Failed {
                kind: FailureKind::Error,
                message: format!(
                    "unknown node(s) {}: peers of {} are {}",
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    shared.config.node,
                    shared
                        .config
                        .peers
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .await;
        return;
    }
    // A process that still depends on another host for pages is made whole first.
    if let Err(e) = shared.dest.make_whole(pid).await {
        let _ = events
            .send(Event::Failed {
                kind: FailureKind::Error,
                message: format!("pid {pid} still depends on another host, which failed: {e}"),
            })
            .await;
        return;
    }
    let targets: Vec<Target> = to
        .iter()
        .filter_map(|n| shared.config.peer(n))
        .map(|p| Target {
            name: p.name.clone(),
            addr: p.addr,
        })
        .collect();
    let (utx, mut urx) = mpsc::unbounded_channel::<Update>();
    let forward = {
        let events = events.clone();
        tokio::spawn(async move {
            while let Some(u) = urx.recv().await {
                let e = match u {
                    Update::Progress { phase, done, total } => {
                        Event::Progress { phase, done, total }
                    }
                    Update::Running(report) => Event::Migrated { report: *report },
                };
                // The CLI may have gone; the migration goes on regardless.
                let _ = events.send(e).await;
            }
        })
    };
    // A job carries its record (id, CPU time, output files) to its new node.
    let tag = shared.jobs.begin_move(pid);
    let result = migrate_out(
        Arc::clone(&shared.source),
        pid,
        targets,
        algorithm,
        tag,
        utx,
    )
    .await;
    shared.jobs.end_move(pid, result.is_ok());
    let _ = forward.await;
    match result {
        Ok(report) => {
            shared.history.lock().await.push(report.clone());
            let _ = events.send(Event::Migrated { report }).await;
        }
        Err(e) => {
            let kind = match &e {
                MigrateError::NotMigratable(_) => FailureKind::NotMigratable,
                MigrateError::Rejected(_) => FailureKind::Rejected,
                MigrateError::PermissionDenied(_) => FailureKind::PermissionDenied,
                MigrateError::Failed(_) => FailureKind::Error,
            };
            let _ = events
                .send(Event::Failed {
                    kind,
                    message: e.to_string(),
                })
                .await;
        }
    }
}
