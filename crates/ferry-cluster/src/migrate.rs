//! Migration requests from the local CLI: who may ask, which process, which targets.

use std::sync::Arc;

use ferry_migrate::Algorithm;
use ferry_migrate::source::{MigrateError, Target, Update, migrate_out};
use ferry_sys::Pid;
use tokio::sync::mpsc;
use tracing::warn;

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
                    Update::Frozen | Update::Committed { .. } => continue,
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
    let result = move_process(&shared, pid, targets, algorithm, tag, utx).await;
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

/// Migrates `pid` with its message links (every migration of this daemon goes through here).
/// Links freeze with the process (freeze-free: they do not) and follow it as soon as it runs
/// at the destination; the final report carries their figures.
pub async fn move_process(
    shared: &Arc<Shared>,
    pid: i32,
    targets: Vec<Target>,
    algorithm: Algorithm,
    tag: Option<String>,
    updates: mpsc::UnboundedSender<Update>,
) -> Result<ferry_migrate::MigrationReport, MigrateError> {
    let links = shared.messages.links_of(pid);
    if links.is_empty() {
        return migrate_out(
            Arc::clone(&shared.source),
            pid,
            targets,
            algorithm,
            tag,
            Vec::new(),
            updates,
        )
        .await;
    }
    let ids: Vec<_> = links.iter().map(|(id, _)| id.clone()).collect();
    let fds = links.into_iter().map(|(_, fd)| fd).collect();
    // Deliveries still reach the links while the process is captured: they travel in the
    // link state, so the connection may end without closing them.
    shared.messages.begin_move(&ids, false);
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let watcher = {
        let messages = Arc::clone(&shared.messages);
        let ids = ids.clone();
        tokio::spawn(async move {
            let mut moved: Option<Moving> = None;
            while let Some(mut u) = rx.recv().await {
                match &mut u {
                    Update::Frozen if algorithm != Algorithm::FreezeFree => {
                        messages.begin_move(&ids, true);
                    }
                    // The process starts there: its links follow now, while both daemons
                    // wait for each other (the quietest moment of a migration).
                    Update::Committed { to } => {
                        // A target told to start the process that then did not (the source
                        // tries the next): the links come back from it first.
                        if let Some(earlier) = moved.take()
                            && let Some(from) = earlier.destination().await
                        {
                            messages.call_back(&ids, &from).await;
                        }
                        let (messages, ids, to) = (Arc::clone(&messages), ids.clone(), to.clone());
                        moved = Some(Moving::Going(tokio::spawn(async move {
                            let figures = messages.move_links(ids, to.clone()).await;
                            (to, figures)
                        })));
                    }
                    // The report that the process runs says how its links moved.
                    Update::Running(report) => {
                        moved = match moved.take() {
                            Some(Moving::Going(mut task)) => {
                                Some(match tokio::time::timeout(LINK_WAIT, &mut task).await {
                                    Ok(Ok(done)) => {
                                        report.links = Some(done.1.clone());
                                        Moving::Done(done)
                                    }
                                    Ok(Err(_)) => Moving::Lost,
                                    // Still going (the new host is slow to take them): the
                                    // final report waits for them.
                                    Err(_) => Moving::Going(task),
                                })
                            }
                            other => other,
                        };
                    }
                    _ => {}
                }
                let _ = updates.send(u);
            }
            moved
        })
    };
    let result = migrate_out(
        Arc::clone(&shared.source),
        pid,
        targets,
        algorithm,
        tag,
        fds,
        tx,
    )
    .await;
    let moved = watcher.await.ok().flatten();
    match (result, moved) {
        (Ok(mut report), Some(Moving::Done((_, figures)))) => {
            report.links = Some(figures);
            Ok(report)
        }
        (Ok(mut report), Some(Moving::Going(task))) => {
            report.links = task.await.ok().map(|(_, f)| f);
            Ok(report)
        }
        (Ok(report), _) => {
            warn!(pid, "migrated, but moving its links failed");
            Ok(report)
        }
        (Err(e), Some(moving)) => {
            // The process stays here after all: its links come back (it reconnects to them).
            if let Some(to) = moving.destination().await {
                shared.messages.call_back(&ids, &to).await;
            }
            shared.messages.cancel_move(&ids);
            Err(e)
        }
        (Err(e), None) => {
            shared.messages.cancel_move(&ids);
            Err(e)
        }
    }
}

/// How long the running notice waits for the links to follow.
const LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The links of a migrated process: moved (to that node), on their way, or lost (the task
/// moving them failed).
enum Moving {
    Done((String, ferry_migrate::report::LinkFigures)),
    Going(tokio::task::JoinHandle<(String, ferry_migrate::report::LinkFigures)>),
    Lost,
}

impl Moving {
    /// Where the links went (once they got there).
    async fn destination(self) -> Option<String> {
        match self {
            Moving::Done((to, _)) => Some(to),
            Moving::Going(task) => task.await.ok().map(|(to, _)| to),
            Moving::Lost => None,
        }
    }
}
