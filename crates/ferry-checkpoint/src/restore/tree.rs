//! Restore of a process tree (`tree.img` beside the root's image; see `crate::tree`).
//!
//! ```text
//!  vessels     the root's vessel with the root's pid (clone3 set_tid); each other member forked
//!              from its parent's vessel, parents first, with its pid and exit signal; each
//!              leads its session or group as it did (setsid / setpgid) before it forks, and
//!              joins its group once every vessel exists
//!  build       every living member in tree order, as a single process is built; an open file
//!              description several members share is made by the first holder and taken by
//!              the others with pidfd_getfd; shared anonymous memory is made by the first
//!              member mapping it and mapped by the others through the first one's
//!              /proc/PID/map_files entry; a pipe or socket pair between members is made
//!              whole by the first member holding an end of it, the ends it does not hold
//!              parked at spare fds until the others took them
//!  zombies     each zombie's vessel ends as it ended (exit_group, or its signal), and waits
//!              for its parent to reap it; the SIGCHLD its parent got is taken back
//!  start       children before parents
//! ```
//!
//! Pids must be free: a tree's processes know each other by pid (a shell waits for its
//! children's), so a member whose pid is taken fails the restore with the name of the holder.
//! A tree whose root was the init of a PID namespace of its own (a job of `ferry run`) is
//! rebuilt in a new namespace, where every pid it needs is free (see `crate::pidns`).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_image::{ExitStatus, MemRef, TreeImage, TreeMember};

use super::*;
use crate::imagedir::{self, LoadedImage};

/// A restored process tree. Its root is a child of the calling process.
#[derive(Debug)]
pub struct RestoredTree {
    pub root: Pid,
    /// Every process, in tree order: its pid, and its report (`None` for a zombie).
    pub members: Vec<(Pid, Option<RestoreReport>)>,
    pub total: Duration,
    pub load: Duration,
}

/// How long a pid the tree needs may still be held by the process it was checkpointed from
/// (a root whose parent has not reaped it yet).
const PID_WAIT: Duration = Duration::from_secs(2);

/// Restores the tree whose manifest is `tree`, every image under `dir` (verified here).
pub fn restore_tree(
    dir: &Path,
    tree: &TreeImage,
    started: Instant,
) -> Result<RestoredTree, RestoreError> {
    let elsewhere = tree.split_ends();
    let mut loaded: Vec<Option<LoadedImage>> = Vec::with_capacity(tree.members.len());
    for (i, m) in tree.members.iter().enumerate() {
        if m.zombie.is_some() {
            loaded.push(None);
            continue;
        }
        let at = if i == 0 {
            dir.to_path_buf()
        } else {
            imagedir::member_dir(dir, m.pid)
        };
        let image = LoadedImage::open_in_tree(&at, &elsewhere)?;
        if image.image.control.pid != m.pid {
            return Err(invalid(
                &at,
                format!(
                    "holds the image of pid {}, the tree says pid {}",
                    image.image.control.pid, m.pid
                ),
            ));
        }
        loaded.push(Some(image));
    }
    let load = started.elapsed();
    let images: Vec<Option<&ProcessImage>> = loaded
        .iter()
        .map(|l| l.as_ref().map(|l| &l.image))
        .collect();
    let mut rebuild = TreeRebuild::new(dir, tree, &images)?;
    for (i, image) in loaded.iter().enumerate() {
        if let (Some(image), Some(b)) = (image, rebuild.member_mut(i)) {
            let segments: Vec<(u64, &[u8])> = image.runs().collect();
            b.write_pages(&segments)?;
        }
    }
    rebuild.finish()?;
    let members = rebuild.start()?;
    let total = started.elapsed();
    info!(
        root = tree.root().pid,
        processes = members.len(),
        ?total,
        "tree restored"
    );
    Ok(RestoredTree {
        root: members[0].0,
        members,
        total,
        load,
    })
}

/// A process tree being rebuilt: every vessel made, sessions and groups formed, every living
/// member's mappings in place; page data comes next (written with
/// [`Builder::write_pages`], or through a userfaultfd), then [`TreeRebuild::finish`] and
/// [`TreeRebuild::start`]. Dropped before the start, every process ends (children first).
pub struct TreeRebuild {
    // Dropped first: vessels are members built after (below or beside) those with builders.
    vessels: ChildrenFirst<Vessel>,
    builders: ChildrenFirst<Builder>,
    tree: TreeImage,
    /// Per member: the fds parked for others (closed once all took theirs).
    parked: Vec<Vec<u64>>,
    host_pids: Vec<Pid>,
}

impl TreeRebuild {
    /// Checks every image against this host, makes the vessels (parents first) and every
    /// living member's mappings (in tree order: shared memory's maker first). `images`: per
    /// member of `tree`, `None` for a zombie; `origin` names where they came from in errors.
    pub fn new(
        origin: &Path,
        tree: &TreeImage,
        images: &[Option<&ProcessImage>],
    ) -> Result<TreeRebuild, RestoreError> {
        for (m, image) in tree.members.iter().zip(images) {
            match image {
                Some(image) if m.zombie.is_none() && image.control.pid == m.pid => {
                    check_restorable(image)?
                }
                None if m.zombie.is_some() => {}
                _ => {
                    return Err(invalid(
                        origin,
                        format!("pid {}: no image, or one of another process", m.pid),
                    ));
                }
            }
        }
        let mut plan = Plan::new(origin, tree, images)?;

        // Vessels, parents first, sessions and groups formed on the way.
        let mut rebuild = TreeRebuild {
            vessels: ChildrenFirst(Vec::with_capacity(tree.members.len())),
            builders: ChildrenFirst(Vec::with_capacity(tree.members.len())),
            tree: tree.clone(),
            parked: std::mem::take(&mut plan.parked),
            host_pids: Vec::new(),
        };
        let in_namespace = images[0].is_some_and(|root| root.pid_namespace.is_some());
        let ipc = images[0].and_then(|root| root.ipc_namespace.as_ref());
        let vessels = &mut rebuild.vessels;
        for (i, m) in tree.members.iter().enumerate() {
            let mut vessel = if i == 0 {
                if in_namespace {
                    Vessel::prepare_as_init(ipc)?
                } else {
                    root_vessel(m)?
                }
            } else {
                let parent = tree
                    .members
                    .iter()
                    .position(|p| p.pid == m.ppid)
                    .and_then(|p| vessels[p].as_mut())
                    .ok_or_else(|| {
                        invalid(origin, format!("pid {}: no parent to fork it", m.pid))
                    })?;
                parent.fork_member(m)?
            };
            vessel.lead(m)?;
            vessels.push(Some(vessel));
        }
        // Host pids of the members (the image's are their namespace's, when they have one).
        rebuild.host_pids = vessels
            .iter()
            .map(|v| v.as_ref().map_or(Pid::from_raw(0), Vessel::pid))
            .collect();
        let host_pids = &rebuild.host_pids;
        let host_pid = |image_pid: i32| {
            tree.members
                .iter()
                .position(|m| m.pid == image_pid)
                .map_or(image_pid, |i| host_pids[i].as_raw())
        };
        for imports in &mut plan.imports {
            // Opened through /proc, which numbers processes as the host does.
            for (from, _, _) in imports.memory.values_mut() {
                *from = host_pid(*from);
            }
        }
        // A group outside the tree is the root vessel's; inside a PID namespace of the tree's
        // own, no group outside can be named: a member stays in the one it was born into.
        let outside_group = if in_namespace {
            None
        } else {
            Some(
                proc::stat(vessels[0].as_ref().map_or(host::self_pid(), Vessel::pid))
                    .map_err(RestoreError::sys("reading the root's process group"))?
                    .pgrp,
            )
        };
        for (m, vessel) in tree.members.iter().zip(vessels.iter_mut()) {
            if let Some(v) = vessel {
                v.join_group(m, tree, outside_group)?;
            }
        }

        // Every living member's mappings, in tree order (shared memory's maker first).
        for (i, m) in tree.members.iter().enumerate() {
            let (Some(image), Some(vessel)) = (
                images[i],
                rebuild.vessels[i].take_if(|_| m.zombie.is_none()),
            ) else {
                rebuild.builders.push(None);
                continue;
            };
            let b = Builder::with_imports(
                vessel,
                plan.image_of(i, image),
                std::mem::take(&mut plan.imports[i]),
            )?;
            rebuild.builders.push(Some(b));
        }
        Ok(rebuild)
    }

    /// Every living member: the pid its image names, and its index in tree order.
    pub fn members(&self) -> Vec<(i32, usize)> {
        self.tree
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.zombie.is_none())
            .map(|(i, m)| (m.pid, i))
            .collect()
    }

    /// The index in tree order of the member whose image names `pid`.
    pub fn index_of(&self, pid: i32) -> Option<usize> {
        self.tree.members.iter().position(|m| m.pid == pid)
    }

    /// Member `i`'s pid on this host.
    pub fn pid(&self, i: usize) -> Pid {
        self.host_pids[i]
    }

    /// The builder of living member `i` (tree order), until the start.
    pub fn member_mut(&mut self, i: usize) -> Option<&mut Builder> {
        self.builders.get_mut(i).and_then(Option::as_mut)
    }

    /// Every living member completed in tree order (an open file description several share
    /// is made by the first holder and taken by the others), the ends parked for others
    /// closed, every zombie ended as it ended. Page data must be in (or registered with a
    /// userfaultfd) before.
    pub fn finish(&mut self) -> Result<(), RestoreError> {
        for b in self.builders.iter_mut().flatten() {
            b.finish()?;
        }
        for (i, parked) in self.parked.iter().enumerate() {
            if let (Some(&lo), Some(b)) = (parked.iter().min(), self.builders[i].as_mut()) {
                b.with_injector("closing parked ends", |inj| {
                    inj.call(
                        "close_range",
                        libc::SYS_close_range,
                        [lo, u32::MAX as u64, 0, 0, 0, 0],
                    )
                    .map(drop)
                })?;
            }
        }

        // Zombies end, then their parents forget the SIGCHLD this sent.
        let tree = &self.tree;
        for (i, m) in tree.members.iter().enumerate() {
            let Some(status) = m.zombie.and_then(ExitStatus::from_wait) else {
                continue;
            };
            let Some(vessel) = self.vessels[i].take() else {
                continue;
            };
            vessel.end_as(status, &m.comm)?;
            let parent = tree
                .members
                .iter()
                .position(|p| p.pid == m.ppid)
                .and_then(|p| self.builders[p].as_mut())
                .expect("validation: a zombie's parent lives");
            parent.await_zombie(m.pid)?;
        }
        Ok(())
    }

    /// Starts every living member, children first (a parent never runs without its
    /// children). Returns every member's pid in tree order, with its report (`None` for a
    /// zombie).
    pub fn start(mut self) -> Result<Vec<(Pid, Option<RestoreReport>)>, RestoreError> {
        let mut members: Vec<(Pid, Option<RestoreReport>)> =
            self.host_pids.iter().map(|&pid| (pid, None)).collect();
        for i in (0..self.tree.members.len()).rev() {
            if let Some(b) = self.builders[i].take() {
                let (pid, report) = b.start()?;
                members[i] = (pid, Some(report));
            }
        }
        Ok(members)
    }
}

/// Vessels or builders in tree order that, dropped on a failure, end the children before
/// their parents: the init of a PID namespace ends only once its children are reaped, which
/// a child ferry still traces never is.
struct ChildrenFirst<T>(Vec<Option<T>>);

impl<T> std::ops::Deref for ChildrenFirst<T> {
    type Target = Vec<Option<T>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> std::ops::DerefMut for ChildrenFirst<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<T> Drop for ChildrenFirst<T> {
    fn drop(&mut self) {
        while let Some(last) = self.0.pop() {
            drop(last);
        }
    }
}

fn invalid(path: &Path, detail: String) -> RestoreError {
    RestoreError::Image(crate::ImageError::Invalid {
        error: ferry_image::ValidationError(detail),
        path: path.to_path_buf(),
    })
}

fn pid_taken(pid: i32) -> RestoreError {
    RestoreError::PidInUse {
        pid,
        holder: proc::read_text(Pid::from_raw(pid), "comm")
            .unwrap_or_else(|_| "by a thread or a process group".into()),
    }
}

/// The root's vessel, with the root's pid: waits up to [`PID_WAIT`] for it to be free.
fn root_vessel(m: &TreeMember) -> Result<Vessel, RestoreError> {
    let waited = Instant::now();
    loop {
        match Vessel::prepare_at(Some(Pid::from_raw(m.pid))) {
            Err(RestoreError::Sys { source, .. })
                if source.errno() == Some(Errno::EEXIST) && waited.elapsed() < PID_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(RestoreError::Sys { source, .. }) if source.errno() == Some(Errno::EEXIST) => {
                return Err(pid_taken(m.pid));
            }
            other => return other,
        }
    }
}

impl Vessel {
    /// Forks member `m` from this vessel (its parent's): `clone3` with `m`'s pid and exit
    /// signal, traced from birth.
    fn fork_member(&mut self, m: &TreeMember) -> Result<Vessel, RestoreError> {
        let step = format!("creating pid {}", m.pid);
        self.tracee_mut()
            .trace_clones(true, true)
            .map_err(RestoreError::sys(&step))?;
        let data = self.area.data;
        let args = abi::CloneArgs {
            flags: 0,
            exit_signal: m.exit_signal as u64,
            set_tid: data + abi::CloneArgs::SIZE as u64,
            set_tid_size: 1,
        };
        let gadget = self.area.syscall_gadget();
        let made = self.single(&step, gadget, |inj| {
            let mut bytes = args.encode();
            bytes.extend_from_slice(&m.pid.to_le_bytes());
            inj.poke(data, &bytes)?;
            inj.clone3(data, false)
        });
        self.tracee_mut()
            .trace_clones(false, true)
            .map_err(RestoreError::sys(&step))?;
        let tracee = match made {
            Err(RestoreError::Sys { source, .. }) if source.errno() == Some(Errno::EEXIST) => {
                return Err(pid_taken(m.pid));
            }
            other => other?,
        };
        Ok(Vessel {
            tracee: Some(tracee),
            area: self.area,
            scratch: self.scratch,
            calls: 0,
            round_trips: 0,
            init: false,
            segments_to_remove: Vec::new(),
        })
    }

    /// Makes this vessel the leader of its session or process group if `m` was.
    fn lead(&mut self, m: &TreeMember) -> Result<(), RestoreError> {
        let gadget = self.area.syscall_gadget();
        if m.sid == m.pid {
            self.single("forming its session", gadget, |inj| {
                inj.call("setsid", libc::SYS_setsid, [0; 6]).map(drop)
            })
        } else if m.pgid == m.pid {
            self.single("forming its process group", gadget, |inj| {
                inj.call("setpgid", libc::SYS_setpgid, [0; 6]).map(drop)
            })
        } else {
            Ok(())
        }
    }

    /// Moves this vessel into `m`'s process group once every group exists: a member's group,
    /// or (a group outside the tree) the one the root's vessel was given, `outside`.
    fn join_group(
        &mut self,
        m: &TreeMember,
        tree: &TreeImage,
        outside: Option<i32>,
    ) -> Result<(), RestoreError> {
        if m.sid == m.pid || m.pgid == m.pid {
            return Ok(());
        }
        let group = if tree.member(m.pgid).is_some() {
            m.pgid
        } else {
            match outside {
                Some(g) => g,
                None => return Ok(()),
            }
        };
        let gadget = self.area.syscall_gadget();
        self.single("joining its process group", gadget, |inj| {
            inj.call("setpgid", libc::SYS_setpgid, [0, group as u64, 0, 0, 0, 0])
                .map(drop)
        })
    }

    /// Ends this (empty) vessel as a zombie ended, named `comm`: `exit_group(code)`, or its
    /// signal's default action (no core is written: `RLIMIT_CORE` 0).
    fn end_as(mut self, status: ExitStatus, comm: &str) -> Result<(), RestoreError> {
        let step = "ending a zombie";
        let gadget = self.area.syscall_gadget();
        let pid = self.pid();
        let mut name = comm.as_bytes().to_vec();
        name.truncate(15);
        name.push(0);
        let mut b = Batch::new(self.area);
        let at = b.bytes(&name);
        b.push(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [abi::PR_SET_NAME, at, 0, 0, 0, 0],
        );
        let r = self.batch(step, &b)?;
        if let Some((_, call, errno)) = r.failure() {
            return Err(injected(step, pid, call, errno));
        }
        match status {
            ExitStatus::Exited(code) => {
                self.single(step, gadget, |inj| {
                    inj.enter(libc::SYS_exit_group, [u64::from(code), 0, 0, 0, 0, 0])
                })?;
            }
            ExitStatus::Killed { signal, .. } => {
                let mut b = Batch::new(self.area);
                let dfl = KernelSigaction::default().encode();
                let at = b.bytes(&dfl);
                b.push(
                    "rt_sigaction",
                    libc::SYS_rt_sigaction,
                    [signal as u64, at, 0, 8, 0, 0],
                );
                let at = b.bytes(&[0u8; 16]);
                b.push(
                    "prlimit64(RLIMIT_CORE)",
                    libc::SYS_prlimit64,
                    [0, libc::RLIMIT_CORE as u64, at, 0, 0, 0],
                );
                let r = self.batch(step, &b)?;
                if let Some((_, call, errno)) = r.failure() {
                    return Err(injected(step, pid, call, errno));
                }
                self.tracee_mut()
                    .set_sigmask(BLOCK_ALL & !(1u64 << (signal - 1)))
                    .map_err(RestoreError::sys(step))?;
                host::send_signal(pid, signal).map_err(RestoreError::sys(step))?;
            }
        }
        let tracee = self.tracee.take().expect("the vessel lives until here");
        tracee.detach(0).map_err(RestoreError::sys(step))
    }
}

impl Builder {
    /// Waits (from inside) until child `zombie` has ended, without reaping it, then takes the
    /// SIGCHLD that brought back unless the image had one pending.
    fn await_zombie(&mut self, zombie: i32) -> Result<(), RestoreError> {
        const P_PID: u64 = 1;
        let keep_sigchld = self
            .image
            .signals
            .pending
            .iter()
            .chain(self.image.threads.iter().flat_map(|t| t.pending.iter()))
            .any(|p| p.signo() == libc::SIGCHLD as u32);
        let data = self.vessel.area.data;
        self.with_injector("waiting for a zombie", |inj| {
            inj.call(
                "waitid",
                libc::SYS_waitid,
                [
                    P_PID,
                    zombie as u64,
                    data,
                    (libc::WEXITED | libc::WNOWAIT | libc::__WALL) as u64,
                    0,
                    0,
                ],
            )?;
            if keep_sigchld {
                return Ok(());
            }
            let set = 1u64 << (libc::SIGCHLD - 1);
            let mut bytes = set.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 16]);
            inj.poke(data, &bytes)?;
            // Taken once: SIGCHLD does not queue.
            let r = inj.raw(libc::SYS_rt_sigtimedwait, [data, 0, data + 8, 8, 0, 0])?;
            debug!(zombie, r, "SIGCHLD of a restored zombie taken");
            Ok(())
        })
    }
}

/// An object one member makes whole for all: a pipe, or a socket pair split between members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Whole {
    Pipe(u64),
    Pair(u64),
}

/// Who makes and who takes each shared object, and the images as the makers build them.
struct Plan {
    /// Per member: what it takes from others.
    imports: Vec<Imports>,
    /// Per member: the pipe and socket ends it holds only for others, as extra fds of its
    /// image.
    extra: Vec<Vec<Fd>>,
    /// Per member: the fd numbers of those ends (closed once everyone took theirs).
    parked: Vec<Vec<u64>>,
}

impl Plan {
    fn new(
        dir: &Path,
        tree: &TreeImage,
        loaded: &[Option<&ProcessImage>],
    ) -> Result<Plan, RestoreError> {
        let n = tree.members.len();
        let mut plan = Plan {
            imports: vec![Imports::default(); n],
            extra: vec![Vec::new(); n],
            parked: vec![Vec::new(); n],
        };
        let index: HashMap<i32, usize> = tree
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.pid, i))
            .collect();
        // Every SysV attachment names a segment of the root's IPC namespace.
        let ipc = loaded
            .first()
            .copied()
            .flatten()
            .and_then(|r| r.ipc_namespace.as_ref());
        for image in loaded.iter().skip(1).flatten() {
            for v in &image.memory.vmas {
                let Backing::SysvShm { id, .. } = v.backing else {
                    continue;
                };
                let attached = match ipc {
                    Some(ipc) => validate::check_sysv_attachment(v, ipc, id),
                    None => Err(ferry_image::ValidationError(format!(
                        "the mapping at {:#x} attaches SysV segment {id} outside an IPC namespace of the tree's own",
                        v.start
                    ))),
                };
                attached
                    .map_err(|e| invalid(dir, format!("pid {}: {}", image.control.pid, e.0)))?;
            }
        }
        let primary = |i: usize, fd: i32| -> Option<&Fd> {
            loaded[i]?
                .files
                .fds
                .iter()
                .find(|f| f.number == fd && f.dup_of.is_none())
        };
        for s in &tree.shared {
            let maker = s.holders[0];
            for h in &s.holders {
                let fd = primary(index[&h.pid], h.fd).ok_or_else(|| {
                    invalid(
                        dir,
                        format!(
                            "pid {} fd {} is shared in the tree but is no fd of its image",
                            h.pid, h.fd
                        ),
                    )
                })?;
                if matches!(fd.kind, FdKind::Pipe { .. }) {
                    return Err(invalid(
                        dir,
                        format!(
                            "pid {} fd {}: a pipe end listed as a shared file",
                            h.pid, h.fd
                        ),
                    ));
                }
            }
            for h in &s.holders[1..] {
                plan.imports[index[&h.pid]]
                    .fds
                    .insert(h.fd, (maker.pid, maker.fd));
            }
        }
        let shared_vma = |h: &MemRef| -> Result<(u64, u64), RestoreError> {
            loaded[index[&h.pid]]
                .and_then(|l| {
                    l.memory.vmas.iter().find(|v| {
                        v.start == h.start
                            && v.shared
                            && matches!(
                                v.backing,
                                Backing::SharedAnonymous | Backing::UnnamedFile { .. }
                            )
                    })
                })
                .map(|v| (v.start, v.end))
                .ok_or_else(|| {
                    invalid(
                        dir,
                        format!(
                            "pid {} has no shared memory mapped at {:#x}",
                            h.pid, h.start
                        ),
                    )
                })
        };
        for s in &tree.shared_memory {
            let maker = s.holders[0];
            let (start, end) = shared_vma(&maker)?;
            for h in &s.holders[1..] {
                let (from, to) = shared_vma(h)?;
                if to - from != end - start {
                    return Err(invalid(
                        dir,
                        format!(
                            "pid {} maps shared memory at {from:#x} with another size than pid {}",
                            h.pid, maker.pid
                        ),
                    ));
                }
                plan.imports[index[&h.pid]]
                    .memory
                    .insert(from, (maker.pid, start, end));
            }
        }
        // Objects with ends, made whole by one member: pipes (by inode, an end by direction)
        // and socket pairs split between members (by their lower inode, an end by its own),
        // every end held anywhere in tree order.
        let split = tree.split_ends();
        let end_of = |kind: &FdKind| match kind {
            FdKind::Pipe { pipe, write, .. } => Some((Whole::Pipe(*pipe), u64::from(*write))),
            FdKind::UnixPair { socket, peer, .. } if split.contains(socket) => {
                Some((Whole::Pair(*socket.min(peer)), *socket))
            }
            _ => None,
        };
        let mut ends: BTreeMap<(Whole, u64), Vec<(usize, &Fd)>> = BTreeMap::new();
        let mut first_holder: HashMap<Whole, usize> = HashMap::new();
        for (i, image) in loaded.iter().enumerate() {
            let Some(image) = image else { continue };
            for fd in image.files.fds.iter().filter(|f| f.dup_of.is_none()) {
                if let Some((whole, end)) = end_of(&fd.kind) {
                    ends.entry((whole, end)).or_default().push((i, fd));
                    first_holder.entry(whole).or_insert(i);
                }
            }
        }
        for &(a, b) in &tree.split_pairs {
            let whole = Whole::Pair(a.min(b));
            for end in [a, b] {
                if !ends.contains_key(&(whole, end)) {
                    return Err(invalid(
                        dir,
                        format!("socket {end} of a split pair is held by no member"),
                    ));
                }
            }
        }
        let mut next_park: Vec<u64> = loaded
            .iter()
            .map(|l| {
                l.map_or(0, |l| {
                    l.files.fds.iter().map(|f| f.number).max().unwrap_or(0) as u64 + 1
                })
            })
            .collect();
        for (&(whole, _), holders) in &ends {
            let maker = first_holder[&whole];
            if holders.iter().all(|&(i, _)| i == maker) {
                continue;
            }
            // Where the maker has this end: its own fd, or a parked copy.
            let at = match holders.iter().find(|&&(i, _)| i == maker) {
                Some(&(_, fd)) => fd.number,
                None => {
                    let n = next_park[maker];
                    next_park[maker] += 1;
                    let mut parked = holders[0].1.clone();
                    parked.number = n as i32;
                    parked.cloexec = true;
                    plan.extra[maker].push(parked);
                    plan.parked[maker].push(n);
                    n as i32
                }
            };
            let maker_pid = tree.members[maker].pid;
            for &(i, fd) in holders.iter().filter(|&&(i, _)| i != maker) {
                plan.imports[i].fds.insert(fd.number, (maker_pid, at));
            }
        }
        Ok(plan)
    }

    /// Member `i`'s image as its builder takes it: with the pipe and socket ends it parks for
    /// others.
    fn image_of(&self, i: usize, image: &ProcessImage) -> Arc<ProcessImage> {
        let mut image = image.clone();
        image.files.fds.extend(self.extra[i].iter().cloned());
        Arc::new(image)
    }
}
