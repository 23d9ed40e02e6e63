//! A process tree: a process and its descendants checkpointed together (`tree.img`).
//!
//! Each living member has an ordinary process image of its own; this manifest adds what links
//! them: who is whose parent, sessions and process groups, the signal each sends its parent at
//! exit, members that exited but were not yet reaped (zombies: a wait status, no image), and
//! the open file descriptions several members hold (as `fork` left them shared). Pipes between
//! members need no entry: their ends carry the pipe's inode number in each member's image.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

/// Upper bound on the processes of one tree.
pub const MAX_MEMBERS: usize = 4096;

/// The manifest of a process tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeImage {
    /// The root first, then every process after its parent (pre-order).
    pub members: Vec<TreeMember>,
    /// Open file descriptions held by more than one member (other than pipe ends).
    pub shared: Vec<SharedFile>,
    /// Shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`, as a fork leaves it) mapped by
    /// more than one member.
    pub shared_memory: Vec<SharedMemory>,
    /// Unix socket pairs whose two ends different members hold: the ends' inode numbers.
    pub split_pairs: Vec<(u64, u64)>,
}

/// One process of the tree, with ids as the kernel numbered them at the checkpoint (restore
/// gives every process the same ids again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeMember {
    pub pid: i32,
    /// The parent (for the root: the process outside the tree it had, which stays behind).
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The signal its parent gets when it ends (`SIGCHLD` as `fork` sets it; 0: none).
    pub exit_signal: i32,
    /// Exited and waiting for its parent to reap it: its status as `waitpid` reports it.
    /// Such a member has no process image.
    pub zombie: Option<i32>,
    /// Its command name (what a zombie shows; a living member's image has its own).
    pub comm: String,
}

/// One open file description and the members' fds that hold it, in tree order: the first
/// holder makes it at restore, the others take it from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFile {
    pub holders: Vec<FdRef>,
}

/// One shared anonymous memory object and the members' mappings of it (each the whole object),
/// in tree order: the first holder's mapping makes it, the others map the same object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMemory {
    pub holders: Vec<MemRef>,
}

/// A member's mapping, by its start address (a mapping of its image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemRef {
    pub pid: i32,
    pub start: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdRef {
    pub pid: i32,
    pub fd: i32,
}

/// How a zombie ended, decoded from its wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(u8),
    Killed { signal: i32, core: bool },
}

impl ExitStatus {
    /// Decodes a `waitpid` status of an ended process (`None`: not such a status).
    pub fn from_wait(status: i32) -> Option<ExitStatus> {
        let signal = status & 0x7f;
        if signal == 0 {
            (status & !0xff00 == 0).then_some(ExitStatus::Exited((status >> 8) as u8))
        } else if signal < 0x7f && status & !0xff == 0 && signal <= 64 {
            Some(ExitStatus::Killed {
                signal,
                core: status & 0x80 != 0,
            })
        } else {
            None
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with status {code}"),
            ExitStatus::Killed { signal, core } => write!(
                f,
                "killed by signal {signal}{}",
                if *core { " (core dumped)" } else { "" }
            ),
        }
    }
}

impl TreeImage {
    /// Every end of a socket pair whose other end another member holds.
    pub fn split_ends(&self) -> HashSet<u64> {
        self.split_pairs.iter().flat_map(|&(a, b)| [a, b]).collect()
    }

    pub fn root(&self) -> &TreeMember {
        &self.members[0]
    }

    pub fn member(&self, pid: i32) -> Option<&TreeMember> {
        self.members.iter().find(|m| m.pid == pid)
    }

    /// The members that have a process image (not zombies), in tree order.
    pub fn living(&self) -> impl Iterator<Item = &TreeMember> {
        self.members.iter().filter(|m| m.zombie.is_none())
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(ValidationError(format!($($fmt)+)));
        }
    };
}

/// Checks what restore relies on: a root that lives, parents before children, unique ids,
/// sessions and groups that restore can form again, zombie statuses, shared files held by
/// living members in tree order.
pub fn validate_tree(tree: &TreeImage) -> Result<(), ValidationError> {
    ensure!(!tree.members.is_empty(), "a process tree without processes");
    ensure!(
        tree.members.len() <= MAX_MEMBERS,
        "{} processes in one tree (at most {MAX_MEMBERS})",
        tree.members.len()
    );
    let root = tree.root();
    ensure!(root.zombie.is_none(), "the root of the tree is a zombie");
    let mut order: HashMap<i32, usize> = HashMap::new();
    for (i, m) in tree.members.iter().enumerate() {
        ensure!(m.pid > 0, "process id {} in the tree", m.pid);
        ensure!(
            order.insert(m.pid, i).is_none(),
            "pid {} twice in the tree",
            m.pid
        );
        ensure!(
            (0..=64).contains(&m.exit_signal),
            "pid {}: exit signal {}",
            m.pid,
            m.exit_signal
        );
        ensure!(
            m.comm.len() <= 15 && !m.comm.contains('\0'),
            "pid {}: command name {:?} longer than 15 bytes",
            m.pid,
            m.comm
        );
        if let Some(status) = m.zombie {
            ensure!(
                ExitStatus::from_wait(status).is_some(),
                "pid {}: wait status {status:#x} of no ended process",
                m.pid
            );
        }
        if i == 0 {
            continue;
        }
        let parent = order
            .get(&m.ppid)
            .map(|&p| &tree.members[p])
            .ok_or_else(|| {
                ValidationError(format!(
                    "pid {}: its parent {} does not come before it in the tree",
                    m.pid, m.ppid
                ))
            })?;
        ensure!(
            parent.zombie.is_none(),
            "pid {}: its parent {} is a zombie",
            m.pid,
            m.ppid
        );
        ensure!(
            m.sid == m.pid || m.sid == parent.sid,
            "pid {}: session {} is neither its own nor its parent's",
            m.pid,
            m.sid
        );
    }
    for m in &tree.members {
        if m.pgid == m.pid {
            continue;
        }
        match tree.member(m.pgid) {
            Some(leader) => ensure!(
                leader.sid == m.sid && leader.pgid == leader.pid,
                "pid {}: process group {} is not one its leader formed in its session",
                m.pid,
                m.pgid
            ),
            // A group outside the tree: the root's, which restore gives the tree again.
            None => ensure!(
                m.pgid == root.pgid && m.sid == root.sid,
                "pid {}: process group {} has no leader in the tree and is not the root's",
                m.pid,
                m.pgid
            ),
        }
    }
    let mut seen: HashSet<FdRef> = HashSet::new();
    for s in &tree.shared {
        check_holders(tree, &order, "shared file", s.holders.iter().map(|h| h.pid))?;
        for h in &s.holders {
            ensure!(
                (0..crate::validate::MAX_FD_NUMBER).contains(&h.fd),
                "shared fd {} out of range",
                h.fd
            );
            ensure!(
                seen.insert(*h),
                "pid {} fd {} in two shared files",
                h.pid,
                h.fd
            );
        }
    }
    let mut ends = HashSet::new();
    for &(a, b) in &tree.split_pairs {
        ensure!(
            a != b && ends.insert(a) && ends.insert(b),
            "socket {a} or {b} in two split pairs"
        );
    }
    let mut seen: HashSet<MemRef> = HashSet::new();
    for s in &tree.shared_memory {
        check_holders(
            tree,
            &order,
            "shared memory",
            s.holders.iter().map(|h| h.pid),
        )?;
        for h in &s.holders {
            ensure!(
                h.start.is_multiple_of(crate::model::PAGE_SIZE),
                "shared memory of pid {} at unaligned {:#x}",
                h.pid,
                h.start
            );
            ensure!(
                seen.insert(*h),
                "pid {} mapping {:#x} in two shared memories",
                h.pid,
                h.start
            );
        }
    }
    Ok(())
}

/// Holders of something shared: at least two, living members, in tree order.
fn check_holders(
    tree: &TreeImage,
    order: &HashMap<i32, usize>,
    what: &str,
    holders: impl ExactSizeIterator<Item = i32>,
) -> Result<(), ValidationError> {
    ensure!(
        holders.len() >= 2,
        "{what} with {} holder(s)",
        holders.len()
    );
    let mut last = None;
    for pid in holders {
        let at = order
            .get(&pid)
            .copied()
            .ok_or_else(|| ValidationError(format!("{what} held by pid {pid}, not in the tree")))?;
        ensure!(
            tree.members[at].zombie.is_none(),
            "{what} held by pid {pid}, a zombie"
        );
        ensure!(
            last.is_none_or(|l| l < at),
            "holders of {what} out of tree order"
        );
        last = Some(at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(pid: i32, ppid: i32, pgid: i32, sid: i32) -> TreeMember {
        TreeMember {
            pid,
            ppid,
            pgid,
            sid,
            exit_signal: 17,
            zombie: None,
            comm: "sh".into(),
        }
    }

    /// `sh -c 'a | b'` run in a session of its own: the shell leads session and group.
    fn pipeline() -> TreeImage {
        TreeImage {
            members: vec![
                member(100, 1, 100, 100),
                member(101, 100, 100, 100),
                member(102, 100, 100, 100),
            ],
            shared: vec![SharedFile {
                holders: vec![FdRef { pid: 100, fd: 2 }, FdRef { pid: 101, fd: 2 }],
            }],
            shared_memory: vec![SharedMemory {
                holders: vec![
                    MemRef {
                        pid: 100,
                        start: 0x7000_0000,
                    },
                    MemRef {
                        pid: 101,
                        start: 0x7000_0000,
                    },
                ],
            }],
            split_pairs: vec![(7, 8)],
        }
    }

    #[test]
    fn a_pipeline_is_valid() {
        validate_tree(&pipeline()).unwrap();
    }

    #[test]
    fn parents_come_first() {
        let mut t = pipeline();
        t.members.swap(0, 1);
        assert!(validate_tree(&t).is_err());
        let mut t = pipeline();
        t.members[2].ppid = 555;
        let e = validate_tree(&t).unwrap_err();
        assert!(e.0.contains("parent 555"), "{e}");
    }

    #[test]
    fn sessions_and_groups_must_be_formable() {
        let mut t = pipeline();
        t.members[1].sid = 7;
        assert!(validate_tree(&t).is_err());
        // A job-control shell puts the pipeline in the first child's group: fine.
        let mut t = pipeline();
        t.members[1].pgid = 101;
        t.members[2].pgid = 101;
        validate_tree(&t).unwrap();
        // A group whose leader is gone cannot be formed again.
        t.members[2].pgid = 103;
        let e = validate_tree(&t).unwrap_err();
        assert!(e.0.contains("no leader"), "{e}");
    }

    #[test]
    fn zombies_hold_a_real_status_and_nothing_else() {
        let mut t = pipeline();
        t.members[2].zombie = Some(3 << 8);
        validate_tree(&t).unwrap();
        t.members[2].zombie = Some(0x137f);
        assert!(validate_tree(&t).is_err());
        let mut t = pipeline();
        t.members[1].zombie = Some(9);
        let e = validate_tree(&t).unwrap_err();
        assert!(e.0.contains("zombie"), "{e}");
        let mut t = pipeline();
        t.members[0].zombie = Some(0);
        assert!(validate_tree(&t).is_err());
    }

    #[test]
    fn shared_files_are_held_in_tree_order() {
        let mut t = pipeline();
        t.shared[0].holders.reverse();
        assert!(validate_tree(&t).is_err());
        let mut t = pipeline();
        t.shared[0].holders[1].pid = 999;
        assert!(validate_tree(&t).is_err());
        let mut t = pipeline();
        t.shared.push(t.shared[0].clone());
        assert!(validate_tree(&t).is_err());
    }

    #[test]
    fn shared_memory_is_held_by_living_members() {
        let mut t = pipeline();
        t.shared_memory[0].holders[1].start += 1;
        assert!(validate_tree(&t).is_err());
        let mut t = pipeline();
        t.shared.clear();
        t.members[1].zombie = Some(0);
        let e = validate_tree(&t).unwrap_err();
        assert!(
            e.0.contains("shared memory held by pid 101, a zombie"),
            "{e}"
        );
        let mut t = pipeline();
        t.shared_memory[0].holders.truncate(1);
        assert!(validate_tree(&t).is_err());
    }

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(ExitStatus::from_wait(0), Some(ExitStatus::Exited(0)));
        assert_eq!(ExitStatus::from_wait(3 << 8), Some(ExitStatus::Exited(3)));
        assert_eq!(
            ExitStatus::from_wait(0x8b),
            Some(ExitStatus::Killed {
                signal: 11,
                core: true
            })
        );
        // A stopped status is no end.
        assert_eq!(ExitStatus::from_wait(0x137f), None);
    }
}
