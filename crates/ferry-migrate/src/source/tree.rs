//! The source side of a process tree's migration: one flow per process, one freeze, one
//! commit.
//!
//! ```text
//!  root:  Offer ─▶ Accept                    (the offer covers the whole tree)
//!  a flow per process living now (Member) [pre-copy: its rounds, while the tree runs]
//!  freeze the whole tree (its members are final now); a flow for each process that
//!  appeared since (a flow whose process ended, or whose pid was reused, is dropped)
//!  every State (the root's with the manifest) ─▶ then every flow's first pages
//!  every Ready ─▶ stop all, Commit on the root's flow ─▶ Started on every flow
//!  [lazy algorithms: every flow served at once] ─▶ kill the tree here
//! ```
//!
//! Before the commit any failure resumes the whole tree here; after it, the tree is never
//! resumed here on ferry's own (as for one process).

use std::sync::Arc;
use std::time::Instant;

use ferry_checkpoint::tree::{ExcisedTree, excise_tree};
use ferry_sys::proc;
use tokio::task::JoinSet;

use super::*;

/// The frozen tree, on its own thread.
type FrozenTree = Pinned<ExcisedTree>;

/// One process of the tree as it is frozen: its pid here, image and page runs.
struct Member {
    pid: i32,
    image: Arc<ProcessImage>,
    segments: Arc<Vec<Segment>>,
}

impl Run {
    /// The run that moves process `pid` of this tree on a flow of its own. Its progress is
    /// not reported (the root's is).
    fn member_run(&self, pid: i32) -> Run {
        let (updates, _) = mpsc::unbounded_channel();
        Run {
            id: format!("{}-p{pid}", self.id),
            pid,
            updates,
            links: Vec::new(),
            ..self.clone_light()
        }
    }

    /// Moves the tree whose root is `self.pid` (see the module doc).
    pub(super) async fn attempt_tree(
        &self,
        offer: &Offer,
        tl: &mut Timeline,
    ) -> Result<MigrationReport, Attempt> {
        let mut root = self.open(Hello::Offer(offer), tl).await?;

        // A flow for every process living now, opened while the tree runs (pre-copy: with
        // its rounds).
        if self.algorithm == Algorithm::PreCopy {
            root.precopy = Some(self.precopy(&mut root.pages, &mut root.report).await?);
        }
        let mut early: Vec<(Run, Flow, u64)> = Vec::new();
        for pid in ferry_checkpoint::mobility::descendants(Pid::from_raw(self.pid)) {
            let Ok(stat) = proc::stat(pid) else { continue };
            let run = self.member_run(pid.as_raw());
            let mut flow = run.open(Hello::Member { tree: &self.id }, tl).await?;
            if self.algorithm == Algorithm::PreCopy {
                match run.precopy(&mut flow.pages, &mut flow.report).await {
                    Ok(p) => flow.precopy = Some(p),
                    // Ended meanwhile, or not trackable: moved whole after the freeze.
                    Err(Attempt::Fatal(e)) => {
                        debug!(migration = %self.id, pid = pid.as_raw(), error = %e, "not pre-copied");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            early.push((run, flow, stat.starttime));
        }

        // Freeze the whole tree.
        self.progress("freezing", 0, 0);
        let freeze_at = Instant::now();
        let root_pid = Pid::from_raw(self.pid);
        let rules = MobilityOptions {
            own_write_protect: self.algorithm == Algorithm::PreCopy,
            links: self.links.clone(),
            ..MobilityOptions::default()
        };
        let platform = ferry_checkpoint::platform::host_platform()
            .map_err(|e| Attempt::Fatal(MigrateError::Failed(e.to_string())))?;
        let frozen: FrozenTree = Pinned::spawn("ferry-source", move || {
            excise_tree(root_pid, &rules, platform)
        })
        .await
        .map_err(|e| Attempt::Fatal(MigrateError::Failed(e.to_string())))?
        .map_err(|e| Attempt::Fatal(checkpoint_error(e)))?;
        let (tree, members, excision) = frozen
            .call(|t| {
                let t = t.as_ref().expect("excised");
                let members: Vec<Member> = t
                    .members
                    .iter()
                    .map(|m| Member {
                        pid: m.pid.as_raw(),
                        image: Arc::new(m.image.clone()),
                        segments: Arc::new(m.segments.clone()),
                    })
                    .collect();
                (t.tree.clone(), members, t.excision)
            })
            .await
            .map_err(|e| Attempt::Fatal(MigrateError::Failed(e.to_string())))?;
        root.report.excision_ms = ms(excision);
        let _ = self.updates.send(Update::Frozen);
        tl.mark("freeze + excise the tree");
        let pids: Vec<i32> = members.iter().map(|m| m.pid).collect();

        // A flow per living member: the one opened before if its process is the same, else
        // new. Until the commit, an error drops `frozen`: the whole tree resumes here.
        let mut flows: Vec<(Run, Flow)> = Vec::with_capacity(members.len());
        for m in &members[1..] {
            let same = proc::stat(Pid::from_raw(m.pid)).ok().map(|s| s.starttime);
            let precopied = early
                .iter()
                .position(|(run, _, start)| run.pid == m.pid && Some(*start) == same);
            match precopied {
                Some(i) => {
                    let (run, flow, _) = early.swap_remove(i);
                    flows.push((run, flow));
                }
                None => {
                    let run = self.member_run(m.pid);
                    let flow = run.open(Hello::Member { tree: &self.id }, tl).await?;
                    flows.push((run, flow));
                }
            }
        }
        // Processes that are not in the tree any more: their flows end.
        drop(early);
        flows.insert(0, (self.clone_light(), root));

        // Every state first (the destination builds the tree once it has them all), then
        // every flow's first pages.
        let mut eagers = Vec::with_capacity(members.len());
        for ((run, flow), m) in flows.iter_mut().zip(&members) {
            let eager = run.eager_pages(flow.precopy.as_mut(), &m.image, &m.segments)?;
            let manifest = (run.pid == self.pid).then(|| tree.clone());
            run.send_state(flow, &m.image, manifest, &eager, offer)
                .await?;
            eagers.push(Arc::new(eager));
        }
        for (((run, flow), m), eager) in flows.iter_mut().zip(&members).zip(&eagers) {
            run.send_eager(flow, eager, &m.segments).await?;
        }
        tl.mark("send states + first pages");
        for (run, flow) in flows.iter_mut() {
            run.await_ready(flow).await?;
        }
        tl.mark("destination ready");

        // Commit on the root's flow; every flow hears its process started.
        let (started, frozen) = self.commit_frozen(&mut flows[0].1, &pids, frozen).await?;
        // The destination started every process of the tree before the root's `Started`:
        // the tree runs there from here.
        tl.mark("commit → started");
        debug!(migration = %self.id, timeline = %tl, "source timeline (tree)");
        let mut root_report = flows[0].1.report.clone();
        root_report.processes = members.len() as u32;
        self.running(&mut root_report, started, freeze_at);
        flows[0].1.report = root_report;
        let mut failed = None;
        for (run, flow) in flows.iter_mut().skip(1) {
            match run
                .recv(&mut flow.ctl_rx, "the destination to start it")
                .await
            {
                Ok(ToSource::Started { pid }) => flow.report.new_pid = pid,
                other => {
                    let what = match other {
                        Ok(m) => format!("{m:?}"),
                        Err(Attempt::Rejected(why)) => why,
                        Err(Attempt::Fatal(e)) => e.to_string(),
                    };
                    failed = Some(format!(
                        "process {} of the tree did not start at {}: {what}",
                        run.pid, self.target.name
                    ));
                    break;
                }
            }
        }
        if let Some(why) = failed {
            // The tree runs there, or ran: never here again.
            error!(migration = %self.id, %why, "ending the frozen tree here");
            let _ = frozen.call(|t| t.take().map(ExcisedTree::kill)).await;
            return Err(Attempt::Fatal(MigrateError::Failed(why)));
        }
        // It never runs here again: the FIFOs it shares with its copy (by path) are the copy's.
        let released = frozen
            .call(|t| t.as_mut().map(ExcisedTree::release_fifos))
            .await;
        if let Ok(Some(Err(e))) = released {
            warn!(migration = %self.id, error = %e, "closing the frozen tree's FIFOs");
        }

        // Every flow's lazy phase at once: a process waits for its pages while another's
        // are served.
        let mut serving = JoinSet::new();
        for (((run, flow), m), eager) in flows.into_iter().zip(&members).zip(eagers) {
            let (segments, image) = (Arc::clone(&m.segments), Arc::clone(&m.image));
            serving.spawn(async move { run.after_start(flow, segments, eager, image).await });
        }
        let mut reports = Vec::new();
        let mut error = None;
        while let Some(done) = serving.join_next().await {
            match done {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(e)) => error = Some(e),
                Err(e) => error = Some(MigrateError::Failed(e.to_string())),
            }
        }
        // Nothing can be needed from here any more: release the tree.
        let _ = frozen.call(|t| t.take().map(ExcisedTree::kill)).await;
        if let Some(e) = error {
            return Err(Attempt::Fatal(e));
        }
        let mut report = merge_reports(self.pid, reports);
        report.total_ms = Some(ms(self.t0.elapsed()));
        info!(migration = %self.id, ?report, "tree migration complete");
        Ok(report)
    }
}

/// The tree's report: the root's, with bytes, threads and faults of every process.
fn merge_reports(root: i32, reports: Vec<MigrationReport>) -> MigrationReport {
    let (mut merged, others): (Vec<_>, Vec<_>) = reports.into_iter().partition(|r| r.pid == root);
    let mut out = merged.pop().unwrap_or_default();
    for r in others {
        out.threads += r.threads;
        out.state_bytes += r.state_bytes;
        out.page_bytes += r.page_bytes;
        out.resent_bytes += r.resent_bytes;
        out.store_bytes += r.store_bytes;
        out.store_faults += r.store_faults;
        out.precopy_rounds = out.precopy_rounds.max(r.precopy_rounds);
        out.residual_ms = match (out.residual_ms, r.residual_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // Fault latencies of the worst process (samples are not kept).
        let f = &mut out.remote_faults;
        f.count += r.remote_faults.count;
        f.median_ms = f.median_ms.max(r.remote_faults.median_ms);
        f.p99_ms = f.p99_ms.max(r.remote_faults.p99_ms);
        f.max_ms = f.max_ms.max(r.remote_faults.max_ms);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::FaultStats;

    #[test]
    fn a_trees_report_sums_its_processes() {
        let root = MigrationReport {
            pid: 10,
            processes: 3,
            threads: 4,
            page_bytes: 100,
            state_bytes: 7,
            residual_ms: Some(5.0),
            remote_faults: FaultStats {
                count: 2,
                median_ms: 0.5,
                p99_ms: 1.0,
                max_ms: 1.0,
            },
            ..MigrationReport::default()
        };
        let child = |pid, faults: u64, max_ms: f64| MigrationReport {
            pid,
            threads: 1,
            page_bytes: 10,
            state_bytes: 3,
            residual_ms: Some(9.0),
            remote_faults: FaultStats {
                count: faults,
                median_ms: 0.2,
                p99_ms: max_ms,
                max_ms,
            },
            ..MigrationReport::default()
        };
        let merged = merge_reports(10, vec![child(11, 3, 4.0), root, child(12, 0, 0.0)]);
        assert_eq!(merged.pid, 10);
        assert_eq!(merged.processes, 3);
        assert_eq!(merged.threads, 6);
        assert_eq!(merged.page_bytes, 120);
        assert_eq!(merged.state_bytes, 13);
        assert_eq!(merged.residual_ms, Some(9.0));
        assert_eq!(merged.remote_faults.count, 5);
        assert_eq!(merged.remote_faults.median_ms, 0.5);
        assert_eq!(merged.remote_faults.max_ms, 4.0);
    }
}
