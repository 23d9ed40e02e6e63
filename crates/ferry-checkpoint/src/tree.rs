//! Process trees: a process and its descendants checkpointed together.
//!
//! The tree is frozen from the top: a frozen process cannot fork, so once a parent is held its
//! list of children is final (a child may still end, and then waits as a zombie, because its
//! parent cannot reap it). Children that already ended are recorded with their wait status.
//! Each living process is captured as an image of its own (`pid-N/` beside the root's),
//! with the other members' pids as allowed co-holders of pipes and files; the manifest
//! (`tree.img`, [`ferry_image::TreeImage`]) adds parent links, sessions, groups, exit signals,
//! the open file descriptions several members share (found with `kcmp`), the shared anonymous
//! memory they map together and the unix socket pairs whose ends two members hold.
//!
//! A checkpoint that kills the tree frees every pid for the restore: each member is killed
//! after its children, and its parent (still frozen) reaps it by an injected `wait4` — left to
//! the reaper of orphans, the pids could stay taken.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use ferry_image::{
    FdKind, FdRef, MemRef, Platform, ProcessImage, SharedFile, SharedMemory, TreeImage, TreeMember,
};
use ferry_sys::inject::Injector;
use ferry_sys::libc;
use ferry_sys::proc::{self, OpenFd};
use ferry_sys::{Pid, SysError};
use tracing::{debug, info, warn};

use crate::capture::{CheckpointOptions, CheckpointReport, capture_frozen};
use crate::freeze::Frozen;
use crate::imagedir::{self, ImageWriter};
use crate::mobility::{self, refuse};
use crate::{CheckpointError, pagecopy, restart};

/// One process of the tree while it is held.
struct Held {
    member: TreeMember,
    /// `None` for a zombie.
    frozen: Option<Frozen>,
}

/// Freezes `root` and every descendant, parents first (pre-order, children by pid).
fn freeze_tree(root: Pid) -> Result<Vec<Held>, CheckpointError> {
    let mut held: Vec<Held> = Vec::new();
    let mut stack = vec![(root, 0)];
    while let Some((pid, ppid)) = stack.pop() {
        let stat = match proc::stat(pid) {
            Ok(s) => s,
            // Ended and reaped (its parent ignores SIGCHLD) before it was reached.
            Err(_) if pid != root => continue,
            Err(_) => return Err(CheckpointError::NoSuchProcess { pid: pid.as_raw() }),
        };
        let mut member = TreeMember {
            pid: pid.as_raw(),
            ppid: if pid == root { stat.ppid } else { ppid },
            pgid: stat.pgrp,
            sid: stat.session,
            exit_signal: stat.exit_signal.unwrap_or(libc::SIGCHLD),
            zombie: None,
            comm: stat.comm.chars().take(15).collect(),
        };
        if pid != root && stat.state == 'Z' {
            if stat.num_threads > 1 {
                return Err(refuse(
                    pid,
                    format!(
                        "the main thread of pid {pid} has exited ({} other threads run on)",
                        stat.num_threads - 1
                    ),
                ));
            }
            member.zombie = Some(zombie_status(pid)?);
            held.push(Held {
                member,
                frozen: None,
            });
            continue;
        }
        if pid != root {
            // In the root's PID namespace, whatever that is (checked with the ids).
            mobility::preflight_member(pid)?;
        }
        let frozen = match Frozen::freeze(pid) {
            Ok(f) => f,
            // It ended between the listing and the stop: a zombie now.
            Err(_) if pid != root && proc::stat(pid).is_ok_and(|s| s.state == 'Z') => {
                member.zombie = Some(zombie_status(pid)?);
                held.push(Held {
                    member,
                    frozen: None,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        // Held: its children can no longer change, except by ending.
        let children = proc::children(pid).map_err(CheckpointError::sys("listing children"))?;
        held.push(Held {
            member,
            frozen: Some(frozen),
        });
        for child in children.into_iter().rev() {
            stack.push((child, pid.as_raw()));
        }
    }
    Ok(held)
}

/// The wait status of zombie `pid` (`exit_code` of `/proc/PID/stat`).
fn zombie_status(pid: Pid) -> Result<i32, CheckpointError> {
    proc::stat(pid)
        .ok()
        .and_then(|s| s.exit_code)
        .ok_or_else(|| {
            refuse(
                pid,
                format!("the exit status of zombie {pid} is unreadable"),
            )
        })
}

/// The shared anonymous memory the tree's processes map together (as a `fork` after `mmap`
/// leaves it), restored as one object. Refuses what restore could not share again: an address
/// space (a `vfork` child not yet on its own), and shared memory that some member maps only in
/// part or more than once.
fn shared_memory(held: &[Held]) -> Result<Vec<SharedMemory>, CheckpointError> {
    let living: Vec<(Pid, i32)> = held
        .iter()
        .filter(|h| h.frozen.is_some())
        .map(|h| (Pid::from_raw(h.member.pid), h.member.ppid))
        .collect();
    // Each shared object (device, inode) with its mappings, in tree order.
    type Mappings = Vec<(Pid, proc::Mapping)>;
    let mut objects: BTreeMap<(u32, u32, u64), Mappings> = BTreeMap::new();
    for (i, &(pid, ppid)) in living.iter().enumerate() {
        if i > 0
            && proc::same_memory(pid, Pid::from_raw(ppid))
                .map_err(CheckpointError::sys("comparing address spaces"))?
        {
            return Err(refuse(
                pid,
                format!(
                    "pid {pid} shares its parent's memory (vfork, or clone with CLONE_VM) until it runs a program"
                ),
            ));
        }
        let maps = proc::read_maps(pid).map_err(CheckpointError::sys("reading mappings"))?;
        // (A SysV segment is attached by each member by its id.)
        for m in maps
            .into_iter()
            .filter(|m| m.shared && !is_file_mapping(m) && !m.path.starts_with(b"/SYSV"))
        {
            objects
                .entry((m.dev_major, m.dev_minor, m.inode))
                .or_default()
                .push((pid, m));
        }
    }
    let mut shared = Vec::new();
    for maps in objects.values() {
        if maps.iter().all(|(pid, _)| *pid == maps[0].0) {
            continue;
        }
        let (first, m0) = &maps[0];
        for (pid, m) in maps {
            let once = maps.iter().filter(|(p, _)| p == pid).count() == 1;
            if !once || m.offset != 0 || m.end - m.start != m0.end - m0.start {
                return Err(refuse(
                    *pid,
                    format!(
                        "the mapping at {:#x} of pid {pid} is memory shared with pid {first} but mapped differently (in part, or twice): such shared memory does not move yet",
                        m.start
                    ),
                ));
            }
        }
        shared.push(SharedMemory {
            holders: maps
                .iter()
                .map(|(pid, m)| MemRef {
                    pid: pid.as_raw(),
                    start: m.start,
                })
                .collect(),
        });
    }
    Ok(shared)
}

/// A mapping of a regular file by its path: shared through the file itself.
fn is_file_mapping(m: &proc::Mapping) -> bool {
    m.path.starts_with(b"/") && !m.path.ends_with(b" (deleted)") && !m.path.starts_with(b"/SYSV")
}

/// The open file descriptions held by more than one member, holders in tree order. Pipe ends
/// are left out (each member's image names its pipe). A memfd or deleted file the tree holds
/// through two descriptions is refused: restore would make two files of it.
fn shared_files(
    members: &[(Pid, &ProcessImage, &[OpenFd])],
) -> Result<Vec<SharedFile>, CheckpointError> {
    // Candidates by the identity (device, inode) of the file behind them: member, fd, and
    // whether the file has no name.
    type Holders = Vec<(usize, i32, bool)>;
    let mut by_file: HashMap<(u64, u64), Holders> = HashMap::new();
    for (i, (_, image, open)) in members.iter().enumerate() {
        for fd in image.files.fds.iter().filter(|f| f.dup_of.is_none()) {
            if matches!(fd.kind, FdKind::Pipe { .. } | FdKind::Link { .. }) {
                continue;
            }
            let Some(st) = open.iter().find(|o| o.fd == fd.number).and_then(|o| o.stat) else {
                continue;
            };
            let unnamed = matches!(fd.kind, FdKind::MemFd { .. } | FdKind::DeletedFile { .. });
            by_file
                .entry((st.dev, st.inode))
                .or_default()
                .push((i, fd.number, unnamed));
        }
    }
    let mut shared = Vec::new();
    let mut keys: Vec<_> = by_file.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let fds = &by_file[&key];
        if fds.iter().all(|&(i, ..)| i == fds[0].0) {
            continue;
        }
        // Split into open file descriptions.
        let mut descriptions: Vec<Vec<(usize, i32)>> = Vec::new();
        for &(i, n, _) in fds {
            let mut placed = false;
            for d in &mut descriptions {
                let (j, m) = d[0];
                if proc::same_file_of(members[j].0, m, members[i].0, n)
                    .map_err(CheckpointError::sys("comparing open files"))?
                {
                    d.push((i, n));
                    placed = true;
                    break;
                }
            }
            if !placed {
                descriptions.push(vec![(i, n)]);
            }
        }
        if fds[0].2 && descriptions.len() > 1 {
            let (i, n) = descriptions[1][0];
            return Err(refuse(
                members[i].0,
                format!(
                    "fd {n} of pid {} and fd {} of pid {} are two separate openings of one file without a name, which restore would turn into two files",
                    members[i].0, descriptions[0][0].1, members[descriptions[0][0].0].0
                ),
            ));
        }
        for d in descriptions {
            if d.iter().any(|&(i, _)| i != d[0].0) {
                shared.push(SharedFile {
                    holders: d
                        .into_iter()
                        .map(|(i, fd)| FdRef {
                            pid: members[i].0.as_raw(),
                            fd,
                        })
                        .collect(),
                });
            }
        }
    }
    Ok(shared)
}

/// The unix socket pairs whose ends are in different members' images (each pair once).
fn split_pairs(members: &[(Pid, &ProcessImage, &[OpenFd])]) -> Vec<(u64, u64)> {
    let mut pairs = std::collections::BTreeSet::new();
    for (_, image, _) in members {
        let own = |inode: u64| {
            image
                .files
                .fds
                .iter()
                .any(|f| matches!(f.kind, FdKind::UnixPair { socket, .. } if socket == inode))
        };
        for fd in &image.files.fds {
            if let FdKind::UnixPair { socket, peer, .. } = fd.kind
                && !own(peer)
            {
                pairs.insert((socket.min(peer), socket.max(peer)));
            }
        }
    }
    pairs.into_iter().collect()
}

/// A process tree frozen and captured but for the bytes of its pages (what a migration of a
/// tree starts from): every member stays parked, its pages readable, until the tree is
/// resumed or killed (dropped: resumed, children first).
pub struct ExcisedTree {
    held: Vec<Held>,
    /// The manifest, ids as the tree's own PID namespace numbers them if it has one.
    pub tree: TreeImage,
    /// Every living member in tree order (the root first).
    pub members: Vec<ExcisedMember>,
    namespace: Option<crate::pidns::Localizer>,
    /// When the root stopped.
    pub frozen_at: Instant,
    pub injected_calls: u64,
    /// From the root's stop to every member captured.
    pub excision: std::time::Duration,
}

/// One living member of an [`ExcisedTree`].
pub struct ExcisedMember {
    /// Its pid on this host (its image holds its namespace's, when the tree has one).
    pub pid: Pid,
    pub image: ProcessImage,
    /// Its page runs, with how to read each from the frozen process.
    pub segments: Vec<pagecopy::Segment>,
    pub pagemap_scan: bool,
}

impl ExcisedTree {
    /// Host pids of every member (zombies too), in tree order, as the caller knows them.
    pub fn host_pids(&self) -> Vec<(i32, bool)> {
        self.held
            .iter()
            .map(|h| (h.member.pid, h.member.zombie.is_some()))
            .collect()
    }

    /// How the root's thread was caught (e.g. inside a restartable system call).
    pub fn interrupted(&self) -> String {
        self.held[0]
            .frozen
            .as_ref()
            .map(|f| format!("{:?}", restart::classify(&f.regs)))
            .unwrap_or_default()
    }

    /// Puts every member back as it was and lets the tree run (children first).
    pub fn resume(mut self) -> Result<(), SysError> {
        self.resume_all()
    }

    fn resume_all(&mut self) -> Result<(), SysError> {
        for h in self.held.iter_mut().rev() {
            if let Some(f) = h.frozen.take() {
                f.resume()?;
            }
        }
        Ok(())
    }

    /// [`Frozen::release_fifos`] for every member: the tree moved and runs elsewhere.
    pub fn release_fifos(&mut self) -> Result<(), SysError> {
        for f in self.held.iter_mut().filter_map(|h| h.frozen.as_mut()) {
            f.release_fifos()?;
        }
        Ok(())
    }

    /// Ends the tree: each member after its children, reaped by its parent (its pids are free
    /// again at once).
    pub fn kill(mut self) -> Result<(), SysError> {
        let namespace = self.namespace.take();
        kill_tree(&mut self.held, |p| {
            namespace.as_ref().map_or(p, |ns| ns.id(p))
        })
    }
}

impl Drop for ExcisedTree {
    fn drop(&mut self) {
        if let Err(e) = self.resume_all() {
            warn!(error = %e, "could not resume a process tree cleanly");
        }
    }
}

/// Freezes `root` and every descendant and captures them (all but their page bytes), with
/// `rules` for each. Fails with every process left running.
pub fn excise_tree(
    root: Pid,
    rules: &mobility::Options,
    platform: Platform,
) -> Result<ExcisedTree, CheckpointError> {
    let mut held = freeze_tree(root)?;
    let frozen_at = held[0]
        .frozen
        .as_ref()
        .map_or_else(Instant::now, |f| f.frozen_at);
    for h in held.iter().filter(|h| h.frozen.is_some()) {
        mobility::frozen_checks(Pid::from_raw(h.member.pid))?;
    }
    let shared_memory = shared_memory(&held)?;
    let living: Vec<Pid> = held
        .iter()
        .filter(|h| h.frozen.is_some())
        .map(|h| Pid::from_raw(h.member.pid))
        .collect();

    // Every living member's state.
    let mut captured = Vec::new();
    let mut injected_calls = 0;
    for h in held.iter_mut() {
        let Some(frozen) = h.frozen.as_mut() else {
            continue;
        };
        let pid = frozen.pid();
        let mut rules = rules.clone();
        rules.tree = living.iter().copied().filter(|&p| p != pid).collect();
        if pid != root {
            // Links are named by the root's fd numbers.
            rules.links.clear();
        }
        let (image, segments, pagemap_scan) = capture_frozen(frozen, platform.clone(), &rules)?;
        let open = proc::open_fds(pid).map_err(CheckpointError::sys("listing fds"))?;
        injected_calls += frozen.injected_calls();
        debug!(pid = pid.as_raw(), interrupted = ?restart::classify(&frozen.regs), "member captured");
        captured.push((pid, image, segments, pagemap_scan, open));
    }
    let described: Vec<(Pid, &ProcessImage, &[OpenFd])> = captured
        .iter()
        .map(|(pid, image, _, _, open)| (*pid, image, open.as_slice()))
        .collect();
    // Ids as the tree's own PID namespace numbers them, if it has one.
    let all: Vec<Pid> = held.iter().map(|h| Pid::from_raw(h.member.pid)).collect();
    let namespace = crate::pidns::Localizer::for_processes(&all)?;
    let mut ipc = crate::ipcns::capture(&living, namespace.is_some())?;
    crate::ipcns::check_attachments(
        ipc.as_ref(),
        captured.iter().map(|(pid, image, ..)| (*pid, image)),
    )?;
    let mut tree = TreeImage {
        members: held.iter().map(|h| h.member.clone()).collect(),
        shared: shared_files(&described)?,
        shared_memory,
        split_pairs: split_pairs(&described),
    };
    drop(described);
    if let Some(ns) = &namespace {
        ns.tree(&mut tree);
    }
    let members = captured
        .into_iter()
        .map(|(pid, mut image, segments, pagemap_scan, _)| {
            if let Some(ns) = &namespace {
                ns.image(&mut image);
            }
            if pid == root {
                image.ipc_namespace = ipc.take();
            }
            ExcisedMember {
                pid,
                image,
                segments,
                pagemap_scan,
            }
        })
        .collect();
    Ok(ExcisedTree {
        held,
        tree,
        members,
        namespace,
        frozen_at,
        injected_calls,
        excision: frozen_at.elapsed(),
    })
}

/// Checkpoints `root` and its descendants into `dir`: the root's image in `dir`, every other
/// living member's in `dir/pid-N`, and `tree.img`. Fails with every process left running.
pub(crate) fn checkpoint_tree(
    root: Pid,
    dir: &Path,
    opts: CheckpointOptions,
    rules: mobility::Options,
    platform: Platform,
    started: Instant,
) -> Result<CheckpointReport, CheckpointError> {
    let mut root_writer = ImageWriter::create(dir, 0)?;
    let mut excised = excise_tree(root, &rules, platform)?;

    // Pages of every member, then the manifest, the root's core.img last: a directory with a
    // core.img holds a complete tree.
    let copy_started = Instant::now();
    let mut written = TreeFiles {
        dir,
        members: Vec::new(),
        done: false,
    };
    let mut root_image = None;
    let (mut memory_bytes, mut mappings, mut page_runs, mut fds) = (0, 0, 0, 0);
    let mut pagemap_scan_all = true;
    for m in std::mem::take(&mut excised.members) {
        let ExcisedMember {
            pid,
            mut image,
            segments,
            pagemap_scan,
        } = m;
        memory_bytes += image.memory.pages.bytes;
        mappings += image.memory.vmas.len();
        page_runs += image.memory.pages.runs.len();
        fds += image.files.fds.len();
        pagemap_scan_all &= pagemap_scan;
        if pid == root {
            pagecopy::copy_to_sink(pid, &segments, &mut root_writer)?;
            root_image = Some(image);
            continue;
        }
        let member_dir = imagedir::member_dir(dir, image.control.pid);
        let mut w = ImageWriter::create(&member_dir, 0)?;
        written.members.push(member_dir);
        pagecopy::copy_to_sink(pid, &segments, &mut w)?;
        w.finish(&mut image)?;
    }
    let mut root_image = root_image.expect("the root lives");
    imagedir::write_tree(dir, &excised.tree)?;
    root_writer.finish(&mut root_image)?;
    written.done = true;
    let memory_copy = copy_started.elapsed();

    let interrupted = excised.interrupted();
    let injected_calls = excised.injected_calls;
    let frozen_at = excised.frozen_at;
    // Host pids, as the caller knows them.
    let children = excised.host_pids()[1..].to_vec();
    if opts.leave_running {
        excised
            .resume()
            .map_err(CheckpointError::sys("resuming the process"))?;
    } else {
        excised.kill().map_err(CheckpointError::sys(
            "ending the process tree after its checkpoint",
        ))?;
    }
    let report = CheckpointReport {
        pid: root.as_raw(),
        leave_running: opts.leave_running,
        total: started.elapsed(),
        freeze: frozen_at.elapsed(),
        memory_copy,
        memory_bytes,
        mappings,
        page_runs,
        fds,
        injected_calls,
        interrupted,
        pagemap_scan: pagemap_scan_all,
        children,
    };
    info!(?report, "tree checkpoint done");
    Ok(report)
}

/// What a tree checkpoint wrote besides the root's files: removed unless `done` (the root's
/// writer removes its own).
struct TreeFiles<'a> {
    dir: &'a Path,
    members: Vec<std::path::PathBuf>,
    done: bool,
}

impl Drop for TreeFiles<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(self.dir.join(imagedir::TREE_FILE));
            for m in &self.members {
                let _ = std::fs::remove_dir_all(m);
            }
        }
    }
}

/// Kills every member after its children; each non-root member is reaped by its parent
/// (an injected `wait4`, which names it as the parent's PID namespace does: `own_id`), so
/// that its pid is free again at once.
fn kill_tree(held: &mut [Held], own_id: impl Fn(i32) -> i32) -> Result<(), SysError> {
    let index: HashMap<i32, usize> = held
        .iter()
        .enumerate()
        .map(|(i, h)| (h.member.pid, i))
        .collect();
    for i in (0..held.len()).rev() {
        let (pid, ppid) = (held[i].member.pid, held[i].member.ppid);
        if let Some(frozen) = held[i].frozen.take() {
            frozen.kill()?;
        }
        if i == 0 {
            break;
        }
        let Some(parent) = index.get(&ppid).and_then(|&p| held[p].frozen.as_mut()) else {
            continue;
        };
        // The parent is parked (its scratch area gone): the call runs from a `syscall`
        // instruction of its own code.
        let reaped = (|| {
            let gadget = ferry_sys::inject::find_syscall_gadget(Pid::from_raw(ppid))?;
            let tracee = parent.tracee_mut();
            let template = tracee.regs()?;
            Injector::new(tracee, gadget, template).raw(
                libc::SYS_wait4,
                [
                    own_id(pid) as u64,
                    0,
                    (libc::WNOHANG | libc::__WALL) as u64,
                    0,
                    0,
                    0,
                ],
            )
        })();
        match reaped {
            Ok(r) if r == i64::from(own_id(pid)) => {}
            other => warn!(
                pid,
                ppid,
                ?other,
                "a killed member was not reaped by its parent"
            ),
        }
    }
    Ok(())
}
