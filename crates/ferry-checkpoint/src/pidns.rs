//! PID namespaces. A process that is the init (pid 1) of a PID namespace of its own (a job of
//! `ferry run`) is captured with the ids that namespace gives it, its threads and its tree,
//! and restored as the init of a new namespace, where those ids are free whatever the host
//! holds: its pids and thread ids come back exactly, also while the original still runs.
//!
//! Capture works with host ids throughout (ptrace, /proc); [`Localizer`] rewrites the images
//! once they are complete. An id outside the namespace (the init's parent, a session or group
//! led from outside) is 0, as the processes inside see it.

use std::collections::HashMap;

use ferry_image::{PidNamespace, ProcessImage, TreeImage};
use ferry_sys::{Pid, host, proc};

use crate::CheckpointError;
use crate::mobility::refuse;

/// How deep `pid` sits: the number of PID namespaces it is in, as this /proc shows them.
fn depth(pid: Pid) -> Result<usize, CheckpointError> {
    let status = proc::status(pid).map_err(CheckpointError::sys("reading status"))?;
    Ok(status.nspid.map_or(1, |ids| ids.len()))
}

/// Whether `pid` lives in a PID namespace below ferry's (a `ferry run` job's).
pub(crate) fn in_job(pid: Pid) -> Result<bool, CheckpointError> {
    Ok(depth(pid)? > depth(host::self_pid())?)
}

/// Checks that `pid` lives in ferry's PID namespace, or is the init of a namespace made in
/// it: a process deeper down, or one that is not its namespace's init, cannot get its ids
/// back (its namespace moves whole, from its init).
pub(crate) fn check(pid: Pid) -> Result<(), CheckpointError> {
    let ours = depth(host::self_pid())?;
    let status = proc::status(pid).map_err(CheckpointError::sys("reading status"))?;
    let ids = status.nspid.unwrap_or_default();
    match ids.len() {
        n if n <= ours => Ok(()),
        n if n == ours + 1 && ids.last() == Some(&1) => Ok(()),
        n if n == ours + 1 => Err(refuse(
            pid,
            format!(
                "it is pid {} of a PID namespace; that namespace moves whole, from its init (pid 1 there)",
                ids.last().copied().unwrap_or(0)
            ),
        )),
        _ => Err(refuse(
            pid,
            "it lives in a PID namespace nested in another one below ferry's",
        )),
    }
}

/// Host ids → the ids of the namespace whose init is the first process given.
pub(crate) struct Localizer {
    ids: HashMap<i32, i32>,
    host_init: i32,
}

impl Localizer {
    /// For `pids` (host ids, frozen or zombies, the root first) and their threads; `None`
    /// when the root lives in ferry's own namespace (ids stay as they are). Every process
    /// must live in the root's namespace.
    pub(crate) fn for_processes(pids: &[Pid]) -> Result<Option<Localizer>, CheckpointError> {
        let Some(&root) = pids.first() else {
            return Ok(None);
        };
        let ours = depth(host::self_pid())?;
        let mut statuses = Vec::with_capacity(pids.len());
        for &pid in pids {
            let status = proc::status(pid).map_err(CheckpointError::sys("reading status"))?;
            statuses.push((pid, status.nspid.unwrap_or_default(), status.state));
        }
        let theirs = statuses[0].1.len().max(1);
        for (pid, nspid, _) in &statuses[1..] {
            if nspid.len().max(1) != theirs {
                return Err(refuse(
                    *pid,
                    "it lives in another PID namespace than the root of its tree",
                ));
            }
        }
        if theirs == ours {
            return Ok(None);
        }
        // Every process of the namespace must be in the tree: one that joined it from outside
        // (`setns`) would be lost.
        let namespace = |p: Pid| proc::stat_link(p, "ns/pid").ok().map(|s| s.inode);
        let theirs_ns = namespace(root);
        for p in proc::pids().map_err(CheckpointError::sys("listing processes"))? {
            let ns = namespace(p);
            if ns.is_some() && ns == theirs_ns && !pids.contains(&p) {
                return Err(refuse(
                    root,
                    format!(
                        "pid {p} ({}) lives in its PID namespace without descending from it (it joined with setns)",
                        proc::read_text(p, "comm").unwrap_or_default().trim()
                    ),
                ));
            }
        }
        let mut ids = HashMap::new();
        for (pid, nspid, state) in statuses {
            ids.insert(pid.as_raw(), nspid[theirs - 1]);
            let zombie = state.starts_with('Z');
            for tid in proc::thread_ids(pid)
                .ok()
                .filter(|_| !zombie)
                .unwrap_or_default()
                .into_iter()
                .filter(|&t| t != pid)
            {
                let t = proc::thread_status(pid, tid)
                    .map_err(CheckpointError::sys("reading a thread's status"))?;
                if let Some(&inner) = t.nspid.as_ref().and_then(|n| n.get(theirs - 1)) {
                    ids.insert(tid.as_raw(), inner);
                }
            }
        }
        Ok(Some(Localizer {
            ids,
            host_init: root.as_raw(),
        }))
    }

    /// The id `host` has inside (0: outside the namespace).
    pub(crate) fn id(&self, host: i32) -> i32 {
        self.ids.get(&host).copied().unwrap_or(0)
    }

    /// Rewrites the ids of one process's image; the init's records its namespace.
    pub(crate) fn image(&self, image: &mut ProcessImage) {
        let host_pid = image.control.pid;
        let c = &mut image.control;
        c.pid = self.id(c.pid);
        c.ppid = self.id(c.ppid);
        c.pgid = self.id(c.pgid);
        c.sid = self.id(c.sid);
        for t in &mut image.threads {
            t.tid = self.id(t.tid);
        }
        if host_pid == self.host_init {
            image.pid_namespace = Some(PidNamespace { host_pid });
        }
    }

    /// Rewrites the ids of a tree's manifest.
    pub(crate) fn tree(&self, tree: &mut TreeImage) {
        for m in &mut tree.members {
            m.pid = self.id(m.pid);
            m.ppid = self.id(m.ppid);
            m.pgid = self.id(m.pgid);
            m.sid = self.id(m.sid);
        }
        for h in tree.shared.iter_mut().flat_map(|s| s.holders.iter_mut()) {
            h.pid = self.id(h.pid);
        }
        for h in tree
            .shared_memory
            .iter_mut()
            .flat_map(|s| s.holders.iter_mut())
        {
            h.pid = self.id(h.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_outside_the_namespace_are_zero() {
        let l = Localizer {
            ids: HashMap::from([(500, 1), (501, 2), (502, 3)]),
            host_init: 500,
        };
        let mut image = ferry_image::model::tests_support::sample_image();
        image.control.pid = 500;
        image.control.ppid = 77;
        image.control.pgid = 500;
        image.control.sid = 60;
        l.image(&mut image);
        assert_eq!(
            (
                image.control.pid,
                image.control.ppid,
                image.control.pgid,
                image.control.sid
            ),
            (1, 0, 1, 0)
        );
        assert_eq!(image.pid_namespace, Some(PidNamespace { host_pid: 500 }));
        let mut member = ferry_image::model::tests_support::sample_image();
        member.control.pid = 502;
        member.control.ppid = 500;
        l.image(&mut member);
        assert_eq!((member.control.pid, member.control.ppid), (3, 1));
        assert_eq!(member.pid_namespace, None);
    }

    #[test]
    fn ferrys_own_processes_stay_as_they_are() {
        let me = host::self_pid();
        check(me).unwrap();
        assert!(Localizer::for_processes(&[me]).unwrap().is_none());
    }
}
