//! Restore (insertion): rebuild a process from a verified image.
//!
//! The process is built inside a *vessel* ([`Vessel`]): a fork of ferry, seized before it runs
//! any code, which the kernel kills if ferry dies (`PTRACE_O_EXITKILL`), with ferry's
//! restorer area mapped in it (a code page holding the batch executor, a call table, a data
//! area). Vessels can be prepared ahead of time ("warm"). Everything is then done by system
//! calls run inside the vessel in batches, so that the kernel — not ferry — creates every
//! mapping, opens every file and sets every credential, with its own checks:
//!
//! ```text
//!  Builder::new     ferry's rseq and fds gone, every mapping but the restorer unmapped,
//!                   vDSO at its old address (ARCH_MAP_VDSO_64), then as the image's owner
//!                   every mapping recreated (MAP_FIXED_NOREPLACE), files opened by path
//!  write_pages      page data into the new mappings (process_vm_writev, two threads) —
//!                   or none: demand paging registers the ranges with userfaultfd instead
//!  finish           final protections and madvise; fds, cwd; PR_SET_MM_MAP; signals,
//!                   timers, misc; credentials; what the owner must be allowed to do (limits)
//!                   → ready: complete but still stopped (the commit point of a migration)
//!  start            restorer unmapped, rseq registered, XSAVE + registers + mask set;
//!                   interrupt into the kernel's signal path and detach: the kernel restarts
//!                   the interrupted call exactly as it would have on the old host
//! ```
//!
//! Files are opened with the image's filesystem credentials, so a crafted image cannot hand a
//! process a file its owner could not open (except files the process held but its owner no
//! longer may open: opened with root's identity and counted, see `docs/checkpoint-restore.md`);
//! limits and nice values are applied after the credentials, so the kernel refuses any that
//! exceed the owner's privilege. Dropping a [`Builder`] that was not started kills the vessel.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_image::*;
use ferry_sys::abi::{self, Itimerval, KernelSigaction, PrctlMmMap, StackT, encode_capset};
use ferry_sys::inject::{Batch, BatchArea, BatchResult, Injector, Scratch, code_page};
use ferry_sys::libc;
use ferry_sys::ptrace::Tracee;
use ferry_sys::{Errno, Pid, SysError, host, mem, proc, spawn, sysv};
use tracing::{debug, info};

use crate::capture::from_model_regs;
use crate::freeze::{BLOCK_ALL, enter_signal_path_and_detach_all};
use crate::imagedir::LoadedImage;
use crate::{RestoreError, platform};

mod objects;
pub mod tree;

/// Pages of the restorer area: code page, call table, data.
const RESTORER_PAGES: u64 = 64;
/// Highest capability number this code knows to drop from the bounding set.
const CAP_LAST_CAP_MAX: u64 = 63;

/// A process brought back to life. It is a child of the calling process.
#[derive(Debug)]
pub struct RestoredProcess {
    pub pid: Pid,
    /// For a process tree, the sums over its processes (`old_pid`, `threads`: the root's).
    pub report: RestoreReport,
    /// The descendants restored with it (a process tree), in tree order: pid (the one they
    /// had), and whether it is a zombie.
    pub children: Vec<(i32, bool)>,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// Request until the process runs again.
    pub total: Duration,
    /// Loading and verifying the image (checksums).
    pub load: Duration,
    /// Writing page data into the new process.
    pub memory_copy: Duration,
    pub memory_bytes: u64,
    pub mappings: usize,
    pub injected_calls: u64,
    /// Round trips to the vessel (batches and single calls).
    pub round_trips: u64,
    pub old_pid: i32,
    /// Every thread but the main one: its id in the image, and its id now (threads get new
    /// ids, as the process does).
    pub threads: Vec<(i32, i32)>,
    /// Files the process held that its owner could not open any more (opened as root).
    pub privileged_opens: u32,
}

/// Loads, verifies and restores the image in `dir`: one process, or a process tree (with
/// the pids it had, see [`tree`]).
pub fn restore(dir: &Path) -> Result<RestoredProcess, RestoreError> {
    let started = Instant::now();
    if let Some(manifest) = crate::imagedir::load_tree(dir)? {
        let t = tree::restore_tree(dir, &manifest, started)?;
        let mut report = RestoreReport {
            total: t.total,
            load: t.load,
            ..RestoreReport::default()
        };
        for (i, (_, r)) in t.members.iter().enumerate() {
            let Some(r) = r else { continue };
            if i == 0 {
                report.old_pid = r.old_pid;
                report.threads = r.threads.clone();
            }
            report.memory_copy += r.memory_copy;
            report.memory_bytes += r.memory_bytes;
            report.mappings += r.mappings;
            report.injected_calls += r.injected_calls;
            report.round_trips += r.round_trips;
            report.privileged_opens += r.privileged_opens;
        }
        return Ok(RestoredProcess {
            pid: t.root,
            report,
            children: t.members[1..]
                .iter()
                .map(|(pid, r)| (pid.as_raw(), r.is_none()))
                .collect(),
        });
    }
    let loaded = LoadedImage::open(dir)?;
    let load = started.elapsed();
    restore_loaded(&loaded, started, load)
}

/// Restores an image that is already loaded and verified.
pub fn restore_loaded(
    loaded: &LoadedImage,
    started: Instant,
    load: Duration,
) -> Result<RestoredProcess, RestoreError> {
    let vessel = Vessel::prepare_for(&loaded.image)?;
    let mut builder = Builder::new(vessel, Arc::new(loaded.image.clone()))?;
    let segments: Vec<(u64, &[u8])> = loaded.runs().collect();
    builder.write_pages(&segments)?;
    builder.finish()?;
    let (pid, mut report) = builder.start()?;
    report.total = started.elapsed();
    report.load = load;
    info!(pid = pid.as_raw(), ?report, "restored");
    Ok(RestoredProcess {
        pid,
        report,
        children: Vec::new(),
    })
}

/// Checks that an image may be restored on this host at all: root, platform, files.
pub fn check_restorable(image: &ProcessImage) -> Result<(), RestoreError> {
    if !host::is_root() {
        return Err(RestoreError::PermissionDenied(
            "restoring a process needs root (CAP_CHECKPOINT_RESTORE and the right to take the image's credentials)".into(),
        ));
    }
    let host = platform::host_platform().map_err(RestoreError::sys("fingerprinting this host"))?;
    image.origin.platform.check_runs_on(&host)?;
    precheck_files(image)
}

/// Checks before any process exists that every file the image needs is there and, for
/// private file mappings, unchanged.
fn precheck_files(image: &ProcessImage) -> Result<(), RestoreError> {
    let stat = |what: &str, path: &str| {
        proc::stat_path(Path::new(path)).map_err(|e| RestoreError::MissingFile {
            what: what.to_string(),
            path: path.to_string(),
            detail: match e.errno() {
                Some(errno) => errno.desc().to_string(),
                None => e.to_string(),
            },
        })
    };
    // A deleted file is made again in the directory it was in; a listening socket is bound
    // in its own.
    let parent_dir = |who: &str, whose: &str, path: &str| {
        let dir = objects::parent_dir(path);
        let what = format!("{who} ({whose} directory)");
        if stat(&what, dir)?.file_type() != libc::S_IFDIR {
            return Err(RestoreError::FileChanged {
                what,
                path: dir.to_string(),
                detail: "it is not a directory".into(),
            });
        }
        Ok(())
    };
    // Links are connections, not files: whether the message service answers on this host
    // shows when the fd is created (connecting now would leave the service a connection
    // without its hello). Pipes and other kernel objects are created anew.
    for fd in image
        .files
        .fds
        .iter()
        .filter(|f| f.dup_of.is_none() && f.kind.is_file())
    {
        let what = format!("fd {}", fd.number);
        let st = stat(&what, fd.kind.path())?;
        let kind_ok = match &fd.kind {
            FdKind::Regular { .. } => st.file_type() == libc::S_IFREG,
            FdKind::Directory { .. } => st.file_type() == libc::S_IFDIR,
            FdKind::CharDevice { major, minor, .. } => {
                st.file_type() == libc::S_IFCHR
                    && host::dev_major(st.rdev) == *major
                    && host::dev_minor(st.rdev) == *minor
            }
            _ => true, // links and kernel objects are filtered out above
        };
        if !kind_ok {
            return Err(RestoreError::FileChanged {
                what,
                path: fd.kind.path().to_string(),
                detail: "it is no longer the same kind of file".into(),
            });
        }
    }
    for fd in &image.files.fds {
        if let FdKind::Fifo { path, .. } = &fd.kind {
            let what = format!("fd {}", fd.number);
            if stat(&what, path)?.file_type() != libc::S_IFIFO {
                return Err(RestoreError::FileChanged {
                    what,
                    path: path.clone(),
                    detail: "it is no longer a FIFO".into(),
                });
            }
        }
        if let FdKind::DeletedFile { path, .. } = &fd.kind {
            parent_dir(&format!("fd {}", fd.number), "a deleted file's", path)?;
        }
        if let FdKind::UnixListener {
            name: SocketName::Path { path, .. },
            ..
        } = &fd.kind
        {
            parent_dir(&format!("fd {}", fd.number), "a listening socket's", path)?;
        }
    }
    for vma in &image.memory.vmas {
        if let Backing::UnnamedFile {
            origin: UnnamedOrigin::Deleted { path, .. },
            ..
        } = &vma.backing
        {
            parent_dir(
                &format!("mapping {:#x}", vma.start),
                "a deleted file's",
                path,
            )?;
        }
        if let Backing::File { path, identity, .. } = &vma.backing {
            let what = format!("mapping {:#x}", vma.start);
            let st = stat(&what, path)?;
            if !vma.shared && (st.size != identity.size || st.mtime_ns != identity.mtime_ns) {
                return Err(RestoreError::FileChanged {
                    what,
                    path: path.clone(),
                    detail: format!(
                        "size {} → {}, mtime differs: {}",
                        identity.size,
                        st.size,
                        st.mtime_ns != identity.mtime_ns
                    ),
                });
            }
        }
    }
    stat("working directory", &image.control.cwd)?;
    stat("executable", &image.control.exe)?;
    Ok(())
}

/// An empty process to restore into, with ferry's restorer area mapped.
pub struct Vessel {
    tracee: Option<Tracee>,
    area: BatchArea,
    scratch: Scratch,
    calls: u64,
    round_trips: u64,
    /// The init of a PID namespace of its own: dropped, it ends the processes in it first.
    init: bool,
    /// SysV segments of its IPC namespace to mark for removal once every process of it has
    /// attached them (they were marked so at the checkpoint).
    segments_to_remove: Vec<i32>,
}

impl Vessel {
    /// Forks a vessel and maps the restorer area in it. Can be done before a migration
    /// arrives (a warm vessel).
    pub fn prepare() -> Result<Vessel, RestoreError> {
        Vessel::prepare_at(None)
    }

    /// [`Vessel::prepare`] with process id `pid` (see [`spawn::vessel_at`]).
    pub fn prepare_at(pid: Option<Pid>) -> Result<Vessel, RestoreError> {
        Vessel::around(spawn::vessel_at(pid).map_err(RestoreError::sys("creating the process"))?)
    }

    /// [`Vessel::prepare`] as the init of a new PID namespace (for an image with
    /// [`ProcessImage::pid_namespace`]; see [`spawn::vessel_in_new_pid_namespace`]), in a new
    /// IPC namespace holding the segments of `ipc` too if it is given
    /// ([`ProcessImage::ipc_namespace`]).
    pub fn prepare_as_init(ipc: Option<&IpcNamespace>) -> Result<Vessel, RestoreError> {
        let mut vessel =
            Vessel::around(spawn::vessel_in_new_pid_namespace(ipc.is_some()).map_err(
                RestoreError::sys("creating a PID namespace for the process"),
            )?)?;
        vessel.init = true;
        if let Some(ipc) = ipc {
            vessel.make_segments(ipc)?;
        }
        Ok(vessel)
    }

    /// Makes the segments of `ipc` in the vessel's IPC namespace, with their ids and bytes.
    fn make_segments(&mut self, ipc: &IpcNamespace) -> Result<(), RestoreError> {
        if ipc.segments.is_empty() {
            return Ok(());
        }
        sysv::in_namespace_of(self.pid(), || {
            for seg in &ipc.segments {
                let runs: Vec<(u64, &[u8])> = seg
                    .runs
                    .iter()
                    .map(|r| (r.offset, r.bytes.as_slice()))
                    .collect();
                let new = sysv::NewSegment {
                    id: seg.id,
                    key: seg.key,
                    size: seg.size,
                    mode: seg.mode,
                    uid: seg.uid,
                    gid: seg.gid,
                };
                sysv::create(&new, &runs)?;
            }
            Ok(())
        })
        .map_err(RestoreError::sys("making the SysV shared memory segments"))?;
        self.segments_to_remove = ipc
            .segments
            .iter()
            .filter(|s| s.removed)
            .map(|s| s.id)
            .collect();
        Ok(())
    }

    /// Marks for removal the segments that were so marked at the checkpoint: every process of
    /// the namespace has attached its own by now.
    fn remove_segments(&mut self) -> Result<(), RestoreError> {
        if self.segments_to_remove.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.segments_to_remove);
        sysv::in_namespace_of(self.pid(), || {
            ids.iter().try_for_each(|&id| sysv::remove(id))
        })
        .map_err(RestoreError::sys("marking SysV segments for removal"))
    }

    /// The vessel for `image`: in a new PID namespace if it had one of its own, else one
    /// with its pid if that is free here, else any.
    pub fn prepare_for(image: &ProcessImage) -> Result<Vessel, RestoreError> {
        if image.pid_namespace.is_some() {
            return Vessel::prepare_as_init(image.ipc_namespace.as_ref());
        }
        match Vessel::prepare_at(Some(Pid::from_raw(image.control.pid))) {
            Err(RestoreError::Sys { source, .. }) if source.errno() == Some(Errno::EEXIST) => {
                Vessel::prepare()
            }
            other => other,
        }
    }

    fn around(tracee: Tracee) -> Result<Vessel, RestoreError> {
        let mut vessel = Vessel {
            tracee: Some(tracee),
            area: BatchArea::within(&Scratch { addr: 0, len: 0 }),
            scratch: Scratch { addr: 0, len: 0 },
            calls: 0,
            round_trips: 0,
            init: false,
            segments_to_remove: Vec::new(),
        };
        let pid = vessel.pid();
        vessel
            .tracee_mut()
            .set_sigmask(BLOCK_ALL)
            .map_err(RestoreError::sys("blocking signals"))?;
        let maps = proc::read_maps(pid).map_err(RestoreError::sys("reading the vessel's maps"))?;
        let mut taken: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
        let at = find_gap(&mut taken, RESTORER_PAGES * PAGE_SIZE)
            .ok_or_else(|| no_room(pid, "no free address range for the restorer"))?;
        let gadget = ferry_sys::inject::find_syscall_gadget(pid)
            .map_err(RestoreError::sys("finding a syscall gadget"))?;
        vessel.scratch = vessel.single("mapping the restorer", gadget, |inj| {
            let s = inj.map_scratch(Some(at), RESTORER_PAGES)?;
            inj.poke(s.addr, &code_page())?;
            inj.call(
                "mprotect(restorer code)",
                libc::SYS_mprotect,
                [
                    s.addr,
                    PAGE_SIZE,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            Ok(s)
        })?;
        vessel.area = BatchArea::within(&vessel.scratch);
        // Nothing ferry had open may stay with a vessel that waits (a warm one would otherwise
        // keep, for instance, other migrations' userfaultfds alive).
        let gadget = vessel.area.syscall_gadget();
        vessel.single("closing inherited files", gadget, |inj| {
            inj.call(
                "close_range",
                libc::SYS_close_range,
                [0, u32::MAX as u64, 0, 0, 0, 0],
            )
            .map(drop)
        })?;
        Ok(vessel)
    }

    pub fn pid(&self) -> Pid {
        self.tracee
            .as_ref()
            .map(Tracee::pid)
            .unwrap_or(Pid::from_raw(0))
    }

    fn tracee_mut(&mut self) -> &mut Tracee {
        self.tracee
            .as_mut()
            .expect("the vessel lives until started or dropped")
    }

    /// Runs `f` with an injector whose single calls use `gadget`.
    fn single<T>(
        &mut self,
        step: &str,
        gadget: u64,
        f: impl FnOnce(&mut Injector<'_>) -> Result<T, SysError>,
    ) -> Result<T, RestoreError> {
        let tracee = self
            .tracee
            .as_mut()
            .expect("the vessel lives until started or dropped");
        let template = tracee.regs().map_err(RestoreError::sys(step))?;
        let mut inj = Injector::new(tracee, gadget, template);
        let out = f(&mut inj);
        self.calls += inj.calls();
        self.round_trips += inj.round_trips();
        out.map_err(RestoreError::sys(step))
    }

    /// Runs one batch; returns its result (failures are the caller's to judge).
    fn batch(&mut self, step: &str, batch: &Batch) -> Result<BatchResult, RestoreError> {
        let gadget = self.area.syscall_gadget();
        self.single(step, gadget, |inj| inj.run(batch))
    }

    /// Moves the restorer area out of the image's way if they overlap.
    fn clear_of(&mut self, image: &ProcessImage) -> Result<(), RestoreError> {
        let s = self.scratch;
        let overlaps = image
            .memory
            .vmas
            .iter()
            .any(|v| v.start < s.addr + s.len + PAGE_SIZE && s.addr < v.end + PAGE_SIZE);
        if !overlaps {
            return Ok(());
        }
        let pid = self.pid();
        let maps = proc::read_maps(pid).map_err(RestoreError::sys("reading the vessel's maps"))?;
        let mut taken: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
        taken.extend(image.memory.vmas.iter().map(|v| (v.start, v.end)));
        let at = find_gap(&mut taken, s.len)
            .ok_or_else(|| no_room(pid, "no free address range for the restorer"))?;
        let old = self.area.syscall_gadget();
        let new = self.single("moving the restorer", old, |inj| {
            let n = inj.map_scratch(Some(at), s.len / PAGE_SIZE)?;
            inj.poke(n.addr, &code_page())?;
            inj.call(
                "mprotect(restorer code)",
                libc::SYS_mprotect,
                [
                    n.addr,
                    PAGE_SIZE,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            Ok(n)
        })?;
        let gadget = BatchArea::within(&new).syscall_gadget();
        self.single("moving the restorer", gadget, |inj| inj.unmap(s))?;
        self.scratch = new;
        self.area = BatchArea::within(&new);
        Ok(())
    }
}

impl Drop for Vessel {
    fn drop(&mut self) {
        if let Some(t) = self.tracee.take() {
            if self.init {
                // An init ends only once its children are reaped, and ferry, their tracer,
                // reaps them first.
                host::kill_and_reap_descendants(t.pid());
            }
            let _ = t.kill();
        }
    }
}

fn no_room(pid: Pid, detail: &str) -> RestoreError {
    RestoreError::Sys {
        step: "placing the restorer".into(),
        source: SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: detail.into(),
        },
    }
}

/// What a member of a process tree takes from members built before it (see [`tree`]).
#[derive(Debug, Clone, Default)]
struct Imports {
    /// fd number → (pid, fd) that holds the open file description.
    fds: HashMap<i32, (i32, i32)>,
    /// Start of a shared anonymous mapping → (pid, start, end) of a mapping of the same
    /// object.
    memory: HashMap<u64, (i32, u64, u64)>,
}

/// The fd numbers of the vessel, as the kernel will hand them out (lowest free first), so
/// that batched calls can name fds opened earlier in the same batch.
#[derive(Default)]
struct FdTable(BTreeSet<u64>);

impl FdTable {
    fn open(&mut self) -> u64 {
        let mut n = 0;
        while self.0.contains(&n) {
            n += 1;
        }
        self.0.insert(n);
        n
    }
    /// The lowest free number at or above `min` (as `F_DUPFD` picks it), now taken.
    fn open_from(&mut self, min: u64) -> u64 {
        let mut n = min;
        while self.0.contains(&n) {
            n += 1;
        }
        self.0.insert(n);
        n
    }
    fn close(&mut self, fd: u64) {
        self.0.remove(&fd);
    }
    fn place(&mut self, fd: u64) {
        self.0.insert(fd);
    }
}

/// What may go wrong with a call of a batch, beyond failing the restore.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    Plain,
    /// An open as the image's owner, to retry with root's identity on EACCES/EPERM.
    OwnerOpen,
}

/// Calls queued for the vessel; runs them whenever the restorer area is full.
struct Queue {
    batch: Batch,
    tags: Vec<Tag>,
    step: String,
}

/// Builds a process from an image in a [`Vessel`] (see the module doc for the phases).
pub struct Builder {
    vessel: Vessel,
    image: Arc<ProcessImage>,
    /// What a member of a process tree takes from other members rather than making it.
    imports: Imports,
    /// Files without a name that mappings were made from and an fd holds too: fd number →
    /// the file, kept (above every fd of the image) until the fd takes it.
    mapped_unnamed: HashMap<i32, u64>,
    fds: FdTable,
    copy_time: Duration,
    privileged_opens: u32,
    has_pages: Vec<bool>,
    ready: bool,
    /// Listening sockets bound beside their path, which the original's socket file holds:
    /// (where bound, the path), renamed over the path as the process starts, removed if it
    /// never does.
    bound_aside: Vec<(String, String)>,
}

impl Builder {
    /// Checks the image against this host, empties the vessel, recreates the vDSO and every
    /// mapping. Page data comes next ([`Builder::write_pages`], or userfaultfd).
    pub fn new(vessel: Vessel, image: Arc<ProcessImage>) -> Result<Builder, RestoreError> {
        check_restorable(&image)?;
        Builder::with_imports(vessel, image, Imports::default())
    }

    /// [`Builder::new`] for a member of a process tree, which takes `imports` from other
    /// members (already built). The caller has checked the image against this host
    /// ([`check_restorable`]) before making any vessel.
    fn with_imports(
        mut vessel: Vessel,
        image: Arc<ProcessImage>,
        imports: Imports,
    ) -> Result<Builder, RestoreError> {
        vessel.clear_of(&image)?;
        let has_pages = pages_per_vma(&image);
        let mut b = Builder {
            vessel,
            image,
            imports,
            mapped_unnamed: HashMap::new(),
            fds: FdTable::default(),
            copy_time: Duration::ZERO,
            privileged_opens: 0,
            has_pages,
            ready: false,
            bound_aside: Vec::new(),
        };
        b.empty_the_vessel()?;
        b.map_memory()?;
        Ok(b)
    }

    pub fn pid(&self) -> Pid {
        self.vessel.pid()
    }

    fn queue(&self, step: &str) -> Queue {
        Queue {
            batch: Batch::new(self.vessel.area),
            tags: Vec::new(),
            step: step.to_string(),
        }
    }

    /// Makes room for `calls` calls and `bytes` bytes of data, running what is queued if
    /// needed.
    fn room(&mut self, q: &mut Queue, calls: usize, bytes: usize) -> Result<(), RestoreError> {
        if !q.batch.fits(calls, bytes) {
            self.flush(q)?;
            if !q.batch.fits(calls, bytes) {
                return Err(no_room(
                    self.pid(),
                    "a single call needs more room than the restorer has",
                ));
            }
        }
        Ok(())
    }

    fn push(&mut self, q: &mut Queue, tag: Tag, name: &'static str, nr: i64, args: [u64; 6]) {
        q.batch.push(name, nr, args);
        q.tags.push(tag);
    }

    /// Runs the queued calls. An open refused to the owner is retried with root's file-system
    /// identity, then the rest of the batch goes on.
    fn flush(&mut self, q: &mut Queue) -> Result<(), RestoreError> {
        let mut from = 0usize;
        while from < q.batch.len() {
            let part = if from == 0 {
                None
            } else {
                Some(q.batch.tail(from))
            };
            let r = self
                .vessel
                .batch(&q.step, part.as_ref().unwrap_or(&q.batch))?;
            let Some((i, call, errno)) = r.failure() else {
                break;
            };
            let at = from + i;
            let creds = &self.image.credentials;
            if q.tags[at] == Tag::OwnerOpen
                && matches!(errno, Errno::EACCES | Errno::EPERM)
                && creds.uid.fs != 0
            {
                let (nr, args) = q.batch.call(at);
                let mut retry = Batch::new(self.vessel.area);
                retry.push("setfsuid", libc::SYS_setfsuid, [0; 6]);
                retry.push("setfsgid", libc::SYS_setfsgid, [0; 6]);
                retry.push("open (as root)", nr, args);
                retry.push(
                    "setfsgid",
                    libc::SYS_setfsgid,
                    [creds.gid.fs as u64, 0, 0, 0, 0, 0],
                );
                retry.push(
                    "setfsuid",
                    libc::SYS_setfsuid,
                    [creds.uid.fs as u64, 0, 0, 0, 0, 0],
                );
                // The retried open reads its path from the data area of the original batch.
                let retry = q.batch.with_data_of(retry);
                let r = self.vessel.batch(&q.step, &retry)?;
                if let Some((_, call, errno)) = r.failure() {
                    return Err(injected(&q.step, self.pid(), call, errno));
                }
                self.privileged_opens += 1;
                info!(step = %q.step, "opened with root's identity: its owner can no longer open it");
                from = at + 1;
                continue;
            }
            return Err(injected(&q.step, self.pid(), call, errno));
        }
        q.batch = Batch::new(self.vessel.area);
        q.tags.clear();
        Ok(())
    }

    /// ferry's rseq registration, fds and mappings go; the vDSO comes back at its address.
    fn empty_the_vessel(&mut self) -> Result<(), RestoreError> {
        let rseq = self
            .vessel
            .tracee_mut()
            .rseq_configuration()
            .map_err(RestoreError::sys("reading the vessel's rseq"))?;
        let s = self.vessel.scratch;
        let mut q = self.queue("emptying the vessel");
        if let Some(r) = rseq {
            self.push(
                &mut q,
                Tag::Plain,
                "rseq(unregister)",
                libc::SYS_rseq,
                [
                    r.rseq_abi_pointer,
                    r.rseq_abi_size as u64,
                    1,
                    r.signature as u64,
                    0,
                    0,
                ],
            );
        }
        self.push(
            &mut q,
            Tag::Plain,
            "close_range",
            libc::SYS_close_range,
            [0, u32::MAX as u64, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "munmap(below)",
            libc::SYS_munmap,
            [0, s.addr, 0, 0, 0, 0],
        );
        let top = s.addr + s.len;
        self.push(
            &mut q,
            Tag::Plain,
            "munmap(above)",
            libc::SYS_munmap,
            [top, validate::USER_SPACE_END - top, 0, 0, 0, 0],
        );
        if let Some(start) = self
            .image
            .memory
            .vmas
            .iter()
            .find(|v| matches!(v.backing, Backing::Vvar | Backing::Vdso))
            .map(|v| v.start)
        {
            self.push(
                &mut q,
                Tag::Plain,
                "arch_prctl(ARCH_MAP_VDSO_64)",
                libc::SYS_arch_prctl,
                [abi::ARCH_MAP_VDSO_64, start, 0, 0, 0, 0],
            );
        }
        self.flush(&mut q)
    }

    /// As the image's owner: every mapping, files opened by path.
    fn map_memory(&mut self) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        let creds = &image.credentials;
        let mut q = self.queue("mapping memory");
        let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        self.room(&mut q, 3, groups.len())?;
        let g = q.batch.bytes(&groups);
        self.push(
            &mut q,
            Tag::Plain,
            "setgroups",
            libc::SYS_setgroups,
            [creds.groups.len() as u64, g, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "setfsgid",
            libc::SYS_setfsgid,
            [creds.gid.fs as u64, 0, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "setfsuid",
            libc::SYS_setfsuid,
            [creds.uid.fs as u64, 0, 0, 0, 0, 0],
        );

        let mut open: HashMap<(&str, bool), u64> = HashMap::new();
        let mut shared_fds: Vec<u64> = Vec::new();
        // Files without a name made so far: inode at the checkpoint → (fd, seals to add).
        let mut unnamed: HashMap<u64, (u64, u32)> = HashMap::new();
        // Those an fd holds too: inode → that fd's number.
        let linked: HashMap<u64, i32> = image
            .memory
            .vmas
            .iter()
            .filter_map(|v| match &v.backing {
                Backing::UnnamedFile {
                    file, fd: Some(n), ..
                } => Some((*file, *n)),
                _ => None,
            })
            .collect();
        let unnamed_data: HashMap<u64, &[u8]> = image
            .memory
            .vmas
            .iter()
            .filter_map(|v| match &v.backing {
                Backing::UnnamedFile { file, data, .. } if !data.is_empty() => {
                    Some((*file, data.as_slice()))
                }
                _ => None,
            })
            .collect();
        for (i, v) in image.memory.vmas.iter().enumerate() {
            let mut prot = prot_bits(v.prot);
            if self.has_pages[i] {
                prot |= libc::PROT_READ | libc::PROT_WRITE;
            }
            let fixed = libc::MAP_FIXED_NOREPLACE;
            let (flags, fd, off) = match &v.backing {
                Backing::Vvar | Backing::VvarVclock | Backing::Vdso => continue,
                Backing::Anonymous | Backing::Heap | Backing::Stack => {
                    let mut f = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed;
                    if v.flags.growsdown {
                        f |= libc::MAP_GROWSDOWN;
                    }
                    (f, u64::MAX, 0)
                }
                Backing::SharedAnonymous | Backing::UnnamedFile { .. }
                    if self.imports.memory.contains_key(&v.start) =>
                {
                    // The object another member of the tree made: opened through its mapping.
                    let (from, start, end) = self.imports.memory[&v.start];
                    let path = format!("/proc/{from}/map_files/{start:x}-{end:x}");
                    self.room(&mut q, 2, path.len() + 8)?;
                    let p = q.batch.c_string(&path);
                    let fd = self.fds.open();
                    self.push(
                        &mut q,
                        Tag::Plain,
                        "open(shared memory of another process)",
                        libc::SYS_openat,
                        [
                            libc::AT_FDCWD as u64,
                            p,
                            (libc::O_RDWR | libc::O_CLOEXEC) as u64,
                            0,
                            0,
                            0,
                        ],
                    );
                    shared_fds.push(fd);
                    (libc::MAP_SHARED | fixed, fd, 0)
                }
                Backing::SharedAnonymous => {
                    (libc::MAP_SHARED | libc::MAP_ANONYMOUS | fixed, u64::MAX, 0)
                }
                Backing::SysvShm { id, read_only } => {
                    // Attached whole at its address, by the id it keeps in the job's IPC
                    // namespace; its bytes are in the segment already.
                    let mut flags = 0;
                    if *read_only {
                        flags |= libc::SHM_RDONLY;
                    }
                    if v.prot.exec {
                        flags |= libc::SHM_EXEC;
                    }
                    self.room(&mut q, 1, 0)?;
                    self.push(
                        &mut q,
                        Tag::Plain,
                        "shmat",
                        libc::SYS_shmat,
                        [*id as u64, v.start, flags as u64, 0, 0, 0],
                    );
                    continue;
                }
                Backing::UnnamedFile {
                    file,
                    offset,
                    origin,
                    ..
                } => {
                    let fd = match unnamed.get(file) {
                        Some(&(fd, _)) => fd,
                        None => {
                            let data = unnamed_data.get(file).copied().unwrap_or(&[]);
                            let fd = self.make_unnamed_file(&mut q, origin, data)?;
                            let seals = match origin {
                                UnnamedOrigin::MemFd { seals, .. }
                                    if !linked.contains_key(file) =>
                                {
                                    *seals
                                }
                                _ => 0,
                            };
                            unnamed.insert(*file, (fd, seals));
                            fd
                        }
                    };
                    let share = if v.shared {
                        libc::MAP_SHARED
                    } else {
                        libc::MAP_PRIVATE
                    };
                    (share | fixed, fd, *offset)
                }
                Backing::File { path, offset, .. } => {
                    let writable = v.shared && v.prot.write;
                    let fd = match open.get(&(path.as_str(), writable)) {
                        Some(&fd) => fd,
                        None => {
                            self.room(&mut q, 2, path.len() + 8)?;
                            let p = q.batch.c_string(path);
                            let mode = if writable {
                                libc::O_RDWR
                            } else {
                                libc::O_RDONLY
                            };
                            let fd = self.fds.open();
                            self.push(
                                &mut q,
                                Tag::OwnerOpen,
                                "open(mapped file)",
                                libc::SYS_openat,
                                [
                                    libc::AT_FDCWD as u64,
                                    p,
                                    (mode | libc::O_CLOEXEC) as u64,
                                    0,
                                    0,
                                    0,
                                ],
                            );
                            open.insert((path.as_str(), writable), fd);
                            fd
                        }
                    };
                    let share = if v.shared {
                        libc::MAP_SHARED
                    } else {
                        libc::MAP_PRIVATE
                    };
                    (share | fixed, fd, *offset)
                }
            };
            self.room(&mut q, 1, 0)?;
            self.push(
                &mut q,
                Tag::Plain,
                "mmap",
                libc::SYS_mmap,
                [v.start, v.len(), prot as u64, flags as u64, fd, off],
            );
        }
        // A memfd's seals last: a write seal would have stopped its filling (one an fd holds
        // too gets them with the fd).
        for &(fd, seals) in unnamed.values().filter(|(_, seals)| *seals != 0) {
            self.room(&mut q, 1, 0)?;
            self.push(
                &mut q,
                Tag::Plain,
                "fcntl(F_ADD_SEALS)",
                libc::SYS_fcntl,
                [fd, libc::F_ADD_SEALS as u64, u64::from(seals), 0, 0, 0],
            );
        }
        let mut made = Vec::new();
        let above = objects::above_every_fd(&image.files);
        for (file, (fd, _)) in unnamed {
            match linked.get(&file) {
                Some(&n) => {
                    self.room(&mut q, 2, 0)?;
                    let [kept] = self.move_above(&mut q, [fd], above);
                    self.mapped_unnamed.insert(n, kept);
                }
                None => made.push(fd),
            }
        }
        self.close_all(&mut q, open.into_values().chain(shared_fds).chain(made))?;
        self.flush(&mut q)
    }

    /// The private ranges that page data goes into (for userfaultfd registration).
    pub fn image(&self) -> &ProcessImage {
        &self.image
    }

    pub fn page_ranges(&self) -> Vec<(u64, u64)> {
        self.image
            .memory
            .vmas
            .iter()
            .zip(&self.has_pages)
            .filter(|(_, has)| **has)
            .map(|(v, _)| (v.start, v.end))
            .collect()
    }

    /// Private anonymous mappings that hold page data: the ranges a userfaultfd can fill
    /// lazily (missing-page faults).
    pub fn lazy_ranges(&self) -> Vec<(u64, u64)> {
        self.image
            .memory
            .vmas
            .iter()
            .zip(&self.has_pages)
            .filter(|(v, has)| {
                **has
                    && !v.shared
                    && matches!(
                        v.backing,
                        Backing::Anonymous | Backing::Heap | Backing::Stack
                    )
            })
            .map(|(v, _)| (v.start, v.end))
            .collect()
    }

    /// Writes `(address, bytes)` segments into the new process (from two threads).
    pub fn write_pages(&mut self, segments: &[(u64, &[u8])]) -> Result<(), RestoreError> {
        let started = Instant::now();
        parallel_write(self.pid(), segments).map_err(RestoreError::sys("writing memory"))?;
        self.copy_time += started.elapsed();
        Ok(())
    }

    /// Runs `f` with an injector on the (stopped) vessel: for callers that set up more inside
    /// it, e.g. a userfaultfd.
    pub fn with_injector<T>(
        &mut self,
        step: &str,
        f: impl FnOnce(&mut Injector<'_>) -> Result<T, SysError>,
    ) -> Result<T, RestoreError> {
        let gadget = self.vessel.area.syscall_gadget();
        self.vessel.single(step, gadget, f)
    }

    /// Everything but the registers: the process is complete and still stopped.
    pub fn finish(&mut self) -> Result<(), RestoreError> {
        self.finish_mappings()?;
        self.vessel.remove_segments()?;
        self.open_files()?;
        self.set_mm_layout()?;
        self.restore_process_state()?;
        self.restore_credentials()?;
        self.ready = true;
        Ok(())
    }

    /// Final protections, anonymous names, madvise flags.
    fn finish_mappings(&mut self) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        let mut q = self.queue("finishing mappings");
        for (i, v) in image.memory.vmas.iter().enumerate() {
            if matches!(
                v.backing,
                Backing::Vvar | Backing::VvarVclock | Backing::Vdso
            ) {
                continue;
            }
            self.room(&mut q, 7, v.anon_name.as_ref().map_or(0, |n| n.len() + 8))?;
            // shmat maps a segment readable, writable unless read-only, executable if asked.
            let attached_otherwise = matches!(
                v.backing,
                Backing::SysvShm { read_only, .. } if !v.prot.read || v.prot.write == read_only
            );
            if (self.has_pages[i] && (!v.prot.read || !v.prot.write)) || attached_otherwise {
                self.push(
                    &mut q,
                    Tag::Plain,
                    "mprotect",
                    libc::SYS_mprotect,
                    [v.start, v.len(), prot_bits(v.prot) as u64, 0, 0, 0],
                );
            }
            if let Some(name) = &v.anon_name {
                let p = q.batch.c_string(name);
                self.push(
                    &mut q,
                    Tag::Plain,
                    "prctl(PR_SET_VMA_ANON_NAME)",
                    libc::SYS_prctl,
                    [
                        abi::PR_SET_VMA,
                        abi::PR_SET_VMA_ANON_NAME,
                        v.start,
                        v.len(),
                        p,
                        0,
                    ],
                );
            }
            for (on, advice) in [
                (v.flags.dontfork, libc::MADV_DONTFORK),
                (v.flags.dontdump, libc::MADV_DONTDUMP),
                (v.flags.wipeonfork, libc::MADV_WIPEONFORK),
                (v.flags.hugepage, libc::MADV_HUGEPAGE),
                (v.flags.nohugepage, libc::MADV_NOHUGEPAGE),
            ] {
                if on {
                    self.push(
                        &mut q,
                        Tag::Plain,
                        "madvise",
                        libc::SYS_madvise,
                        [v.start, v.len(), advice as u64, 0, 0, 0],
                    );
                }
            }
        }
        self.flush(&mut q)
    }

    /// Fds at their numbers, flags and offsets (duplicates shared again); the cwd.
    fn open_files(&mut self) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        let mut fds: Vec<&Fd> = image.files.fds.iter().collect();
        // Primaries first, then their duplicates.
        fds.sort_by_key(|f| (f.dup_of.is_some(), f.number));
        let mut q = self.queue("opening files");
        let mut made = HashSet::new();
        for fd in fds {
            let n = fd.number as u64;
            let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
            self.room(&mut q, 4, fd.kind.path().len() + 8)?;
            if let Some(of) = fd.dup_of {
                self.push(
                    &mut q,
                    Tag::Plain,
                    "dup3",
                    libc::SYS_dup3,
                    [of as u64, n, cloexec as u64, 0, 0, 0],
                );
                self.fds.place(n);
                continue;
            }
            if let Some(&(from, from_fd)) = self.imports.fds.get(&fd.number) {
                self.import_fd(&mut q, fd, from, from_fd)?;
                continue;
            }
            if let FdKind::Link { socket, hello } = &fd.kind {
                self.connect_link(&mut q, fd, socket, hello)?;
                continue;
            }
            let path = match &fd.kind {
                FdKind::ProcFile { path, .. } => format!("/proc/{path}"),
                kind if kind.is_file() => kind.path().to_string(),
                _ => {
                    self.create_object(&mut q, fd, &image.files, &mut made)?;
                    continue;
                }
            };
            self.room(&mut q, 4, path.len() + 8)?;
            let p = q.batch.c_string(&path);
            let opened = self.fds.open();
            self.push(
                &mut q,
                Tag::OwnerOpen,
                "open",
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    p,
                    (fd.kind.flags() | cloexec) as u64,
                    0,
                    0,
                    0,
                ],
            );
            self.settle(&mut q, opened, fd);
            let pos = match &fd.kind {
                FdKind::Regular { pos, .. }
                | FdKind::Directory { pos, .. }
                | FdKind::ProcFile { pos, .. } => *pos,
                _ => 0,
            };
            if pos != 0 && fd.kind.flags() & libc::O_PATH == 0 {
                self.push(
                    &mut q,
                    Tag::Plain,
                    "lseek",
                    libc::SYS_lseek,
                    [n, pos, libc::SEEK_SET as u64, 0, 0, 0],
                );
            }
        }
        self.add_epoll_watches(&mut q, &image.files)?;
        let kept = std::mem::take(&mut self.mapped_unnamed);
        self.close_all(&mut q, kept.into_values())?;
        let cwd = &image.control.cwd;
        self.room(&mut q, 3, cwd.len() + 8)?;
        let p = q.batch.c_string(cwd);
        self.push(
            &mut q,
            Tag::Plain,
            "chdir",
            libc::SYS_chdir,
            [p, 0, 0, 0, 0, 0],
        );
        // Back to root's file-system identity for what follows.
        self.push(&mut q, Tag::Plain, "setfsuid", libc::SYS_setfsuid, [0; 6]);
        self.push(&mut q, Tag::Plain, "setfsgid", libc::SYS_setfsgid, [0; 6]);
        self.flush(&mut q)
    }

    /// Puts at `fd`'s number the open file description that fd `from_fd` of process `from`
    /// holds (`pidfd_getfd`, as `fork` would have shared it), with `fd`'s close-on-exec flag.
    fn import_fd(
        &mut self,
        q: &mut Queue,
        fd: &Fd,
        from: i32,
        from_fd: i32,
    ) -> Result<(), RestoreError> {
        self.room(q, 6, 0)?;
        let pidfd = self.fds.open();
        self.push(
            q,
            Tag::Plain,
            "pidfd_open",
            libc::SYS_pidfd_open,
            [from as u64, 0, 0, 0, 0, 0],
        );
        let got = self.fds.open();
        self.push(
            q,
            Tag::Plain,
            "pidfd_getfd",
            libc::SYS_pidfd_getfd,
            [pidfd, from_fd as u64, 0, 0, 0, 0],
        );
        // Closed first: the pidfd may sit at the number the fd goes to.
        self.push(
            q,
            Tag::Plain,
            "close",
            libc::SYS_close,
            [pidfd, 0, 0, 0, 0, 0],
        );
        self.fds.close(pidfd);
        if got == fd.number as u64 && !fd.cloexec {
            // pidfd_getfd sets close-on-exec.
            self.push(
                q,
                Tag::Plain,
                "fcntl(F_SETFD)",
                libc::SYS_fcntl,
                [got, libc::F_SETFD as u64, 0, 0, 0, 0],
            );
        }
        self.settle(q, got, fd);
        Ok(())
    }

    /// Moves a new fd from `opened`, where the kernel put it, to `fd`'s number (which it may
    /// already be), with `fd`'s close-on-exec flag. Queues at most two calls.
    fn settle(&mut self, q: &mut Queue, opened: u64, fd: &Fd) {
        let n = fd.number as u64;
        if opened == n {
            return;
        }
        let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        self.push(
            q,
            Tag::Plain,
            "dup3",
            libc::SYS_dup3,
            [opened, n, cloexec as u64, 0, 0, 0],
        );
        self.push(
            q,
            Tag::Plain,
            "close",
            libc::SYS_close,
            [opened, 0, 0, 0, 0, 0],
        );
        self.fds.close(opened);
        self.fds.place(n);
    }

    /// A link at fd `fd.number`: a new `AF_UNIX` `SOCK_SEQPACKET` socket connected to the
    /// abstract name `socket` (the message service of this host's daemon), `hello` sent on it
    /// first. Runs at once, so that a failure names the link.
    fn connect_link(
        &mut self,
        q: &mut Queue,
        fd: &Fd,
        socket: &str,
        hello: &[u8],
    ) -> Result<(), RestoreError> {
        // What is queued runs first: from here on, a failing call is this link's.
        self.flush(q)?;
        let sock_cloexec = if fd.cloexec { libc::SOCK_CLOEXEC } else { 0 };
        let addr = abstract_sockaddr(socket);
        self.room(q, 5, addr.len() + hello.len() + 16)?;
        let addr_at = q.batch.bytes(&addr);
        let sock = self.fds.open();
        self.push(
            q,
            Tag::Plain,
            LINK_SOCKET,
            libc::SYS_socket,
            [
                libc::AF_UNIX as u64,
                (libc::SOCK_SEQPACKET | sock_cloexec) as u64,
                0,
                0,
                0,
                0,
            ],
        );
        self.push(
            q,
            Tag::Plain,
            LINK_CONNECT,
            libc::SYS_connect,
            [sock, addr_at, addr.len() as u64, 0, 0, 0],
        );
        if !hello.is_empty() {
            let hello_at = q.batch.bytes(hello);
            self.push(
                q,
                Tag::Plain,
                LINK_HELLO,
                libc::SYS_sendto,
                [
                    sock,
                    hello_at,
                    hello.len() as u64,
                    libc::MSG_NOSIGNAL as u64,
                    0,
                    0,
                ],
            );
        }
        self.settle(q, sock, fd);
        self.flush(q).map_err(|e| match e {
            RestoreError::Sys {
                source: SysError::Injected { call, errno, .. },
                ..
            } if [LINK_SOCKET, LINK_CONNECT, LINK_HELLO].contains(&call) => RestoreError::Link {
                fd: fd.number,
                socket: socket.to_string(),
                action: match call {
                    LINK_SOCKET => "cannot create a socket for",
                    LINK_CONNECT => "cannot reach",
                    _ => "cannot send the hello to",
                },
                errno,
            },
            other => other,
        })
    }

    /// `PR_SET_MM_MAP`: mm boundaries, auxv, exe link.
    fn set_mm_layout(&mut self) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        let l = image.memory.layout;
        let auxv: Vec<u8> = image
            .memory
            .auxv
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let exe = &image.control.exe;
        // The vessel's exe is ferry's. The kernel refuses to replace an exe that is still
        // mapped, which it is when the image is of ferry itself: then it is already right.
        let pid = self.pid();
        let same_exe = match (proc::stat_link(pid, "exe"), proc::stat_path(Path::new(exe))) {
            (Ok(a), Ok(b)) => a.dev == b.dev && a.inode == b.inode,
            _ => false,
        };
        let mut q = self.queue("setting the memory layout (PR_SET_MM_MAP)");
        self.room(&mut q, 3, exe.len() + auxv.len() + PrctlMmMap::SIZE + 32)?;
        let exe_fd = if same_exe {
            u32::MAX as u64
        } else {
            let p = q.batch.c_string(exe);
            let fd = self.fds.open();
            self.push(
                &mut q,
                Tag::Plain,
                "open(executable)",
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    p,
                    (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                    0,
                    0,
                    0,
                ],
            );
            fd
        };
        let auxv_at = q.batch.bytes(&auxv);
        let map = PrctlMmMap {
            start_code: l.start_code,
            end_code: l.end_code,
            start_data: l.start_data,
            end_data: l.end_data,
            start_brk: l.start_brk,
            brk: l.brk,
            start_stack: l.start_stack,
            arg_start: l.arg_start,
            arg_end: l.arg_end,
            env_start: l.env_start,
            env_end: l.env_end,
            auxv: auxv_at,
            auxv_size: auxv.len() as u32,
            exe_fd: exe_fd as u32,
        };
        let map_at = q.batch.bytes(&map.encode());
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            [
                abi::PR_SET_MM,
                abi::PR_SET_MM_MAP,
                map_at,
                PrctlMmMap::SIZE as u64,
                0,
                0,
            ],
        );
        if !same_exe {
            self.push(
                &mut q,
                Tag::Plain,
                "close",
                libc::SYS_close,
                [exe_fd, 0, 0, 0, 0, 0],
            );
            self.fds.close(exe_fd);
        }
        self.flush(&mut q)
    }

    /// Signal dispositions, the alternate stack, queued signals, itimers and per-process
    /// settings.
    fn restore_process_state(&mut self) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        let c = &image.control;
        let e = &image.execution;
        let mut q = self.queue("restoring signals and settings");
        let actions: HashMap<u32, &SigAction> =
            image.signals.actions.iter().map(|a| (a.signo, a)).collect();
        for sig in (1..=64u32).filter(|&s| s != 9 && s != 19) {
            let act = actions
                .get(&sig)
                .map(|a| KernelSigaction {
                    handler: a.handler,
                    flags: a.flags,
                    restorer: a.restorer,
                    mask: a.mask,
                })
                .unwrap_or_default();
            self.room(&mut q, 1, KernelSigaction::SIZE)?;
            let at = q.batch.bytes(&act.encode());
            self.push(
                &mut q,
                Tag::Plain,
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                [sig as u64, at, 0, 8, 0, 0],
            );
        }
        let alt = e.sigaltstack;
        let ss = StackT {
            sp: alt.sp,
            flags: alt.flags & libc::SS_DISABLE,
            size: alt.size,
        };
        self.room(&mut q, 1, StackT::SIZE)?;
        let at = q.batch.bytes(&ss.encode());
        self.push(
            &mut q,
            Tag::Plain,
            "sigaltstack",
            libc::SYS_sigaltstack,
            [at, 0, 0, 0, 0, 0],
        );
        // Queued while every signal is blocked: delivered once the real mask is set.
        for p in &image.signals.pending {
            // Queued by the id the process's own PID namespace gives it.
            let pid = proc::own_id(self.pid(), self.pid()).as_raw() as u64;
            self.room(&mut q, 1, p.siginfo.len())?;
            let at = q.batch.bytes(&p.siginfo);
            let signo = p.signo() as u64;
            if p.shared {
                self.push(
                    &mut q,
                    Tag::Plain,
                    "rt_sigqueueinfo",
                    libc::SYS_rt_sigqueueinfo,
                    [pid, signo, at, 0, 0, 0],
                );
            } else {
                self.push(
                    &mut q,
                    Tag::Plain,
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    [pid, pid, signo, at, 0, 0],
                );
            }
        }
        for (which, t) in [
            (libc::ITIMER_REAL, image.timers.real),
            (libc::ITIMER_VIRTUAL, image.timers.virtual_),
            (libc::ITIMER_PROF, image.timers.prof),
        ] {
            if t.is_armed() {
                let v = Itimerval {
                    interval_us: t.interval_us,
                    value_us: t.value_us,
                };
                self.room(&mut q, 1, Itimerval::SIZE)?;
                let at = q.batch.bytes(&v.encode());
                self.push(
                    &mut q,
                    Tag::Plain,
                    "setitimer",
                    libc::SYS_setitimer,
                    [which as u64, at, 0, 0, 0, 0],
                );
            }
        }
        let mut comm = c.comm.as_bytes().to_vec();
        comm.truncate(15);
        comm.push(0);
        self.room(&mut q, 9, comm.len())?;
        let at = q.batch.bytes(&comm);
        let prctl = |op: u64, arg: u64| [op, arg, 0, 0, 0, 0];
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            prctl(abi::PR_SET_NAME, at),
        );
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_TIMERSLACK)",
            libc::SYS_prctl,
            prctl(abi::PR_SET_TIMERSLACK, c.timer_slack_ns),
        );
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            prctl(abi::PR_SET_THP_DISABLE, c.thp_disable as u64),
        );
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            prctl(abi::PR_SET_CHILD_SUBREAPER, c.child_subreaper as u64),
        );
        self.push(
            &mut q,
            Tag::Plain,
            "personality",
            libc::SYS_personality,
            [c.personality as u64, 0, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "umask",
            libc::SYS_umask,
            [c.umask as u64, 0, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "set_tid_address",
            libc::SYS_set_tid_address,
            [e.tid_address, 0, 0, 0, 0, 0],
        );
        if e.robust_list.head != 0 {
            self.push(
                &mut q,
                Tag::Plain,
                "set_robust_list",
                libc::SYS_set_robust_list,
                [e.robust_list.head, e.robust_list.len, 0, 0, 0, 0],
            );
        }
        self.flush(&mut q)
    }

    /// Credentials, then what the owner must be allowed to do: limits, nice, dumpable,
    /// parent-death signal, no_new_privs.
    fn restore_credentials(&mut self) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        let creds = &image.credentials;
        let c = &image.control;
        let last_cap = host::cap_last_cap().min(CAP_LAST_CAP_MAX);
        let mut q = self.queue("restoring credentials");
        for cap in 0..=last_cap {
            if creds.caps.bounding & (1 << cap) == 0 {
                self.room(&mut q, 1, 0)?;
                self.push(
                    &mut q,
                    Tag::Plain,
                    "prctl(PR_CAPBSET_DROP)",
                    libc::SYS_prctl,
                    [abi::PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
                );
            }
        }
        // Keep capabilities across the uid change when the image had some as non-root.
        let keep = creds.uid.effective != 0 && creds.caps.permitted != 0;
        let securebits = creds.securebits | if keep { 1 << 4 } else { 0 };
        let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let caps = creds.caps;
        // Header pid 0: the calling thread, whatever its PID namespace numbers it.
        let capset = encode_capset(0, caps.effective, caps.permitted, caps.inheritable);
        self.room(&mut q, 8, groups.len() + capset.len())?;
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_SECUREBITS)",
            libc::SYS_prctl,
            [abi::PR_SET_SECUREBITS, securebits as u64, 0, 0, 0, 0],
        );
        let g_at = q.batch.bytes(&groups);
        self.push(
            &mut q,
            Tag::Plain,
            "setgroups",
            libc::SYS_setgroups,
            [creds.groups.len() as u64, g_at, 0, 0, 0, 0],
        );
        let (g, u) = (creds.gid, creds.uid);
        self.push(
            &mut q,
            Tag::Plain,
            "setresgid",
            libc::SYS_setresgid,
            [g.real as u64, g.effective as u64, g.saved as u64, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "setresuid",
            libc::SYS_setresuid,
            [u.real as u64, u.effective as u64, u.saved as u64, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "setfsgid",
            libc::SYS_setfsgid,
            [g.fs as u64, 0, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "setfsuid",
            libc::SYS_setfsuid,
            [u.fs as u64, 0, 0, 0, 0, 0],
        );
        let cap_at = q.batch.bytes(&capset);
        self.push(
            &mut q,
            Tag::Plain,
            "capset",
            libc::SYS_capset,
            [cap_at, cap_at + 8, 0, 0, 0, 0],
        );
        for cap in 0..=last_cap {
            if caps.ambient & (1 << cap) != 0 {
                self.room(&mut q, 1, 0)?;
                self.push(
                    &mut q,
                    Tag::Plain,
                    "prctl(PR_CAP_AMBIENT_RAISE)",
                    libc::SYS_prctl,
                    [abi::PR_CAP_AMBIENT, abi::PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
                );
            }
        }
        if keep && creds.securebits & (1 << 4) == 0 {
            self.room(&mut q, 1, 0)?;
            self.push(
                &mut q,
                Tag::Plain,
                "prctl(PR_SET_KEEPCAPS)",
                libc::SYS_prctl,
                [abi::PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
            );
        }
        for r in &c.rlimits {
            self.room(&mut q, 1, 16)?;
            let at = q
                .batch
                .bytes(&abi::Bytes::default().u64(r.soft).u64(r.hard).0);
            self.push(
                &mut q,
                Tag::Plain,
                "prlimit64",
                libc::SYS_prlimit64,
                [0, r.resource as u64, at, 0, 0, 0],
            );
        }
        self.room(&mut q, 4, 0)?;
        self.push(
            &mut q,
            Tag::Plain,
            "setpriority",
            libc::SYS_setpriority,
            [libc::PRIO_PROCESS as u64, 0, c.nice as i64 as u64, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [abi::PR_SET_DUMPABLE, c.dumpable.min(1) as u64, 0, 0, 0, 0],
        );
        self.push(
            &mut q,
            Tag::Plain,
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [abi::PR_SET_PDEATHSIG, c.pdeathsig as u64, 0, 0, 0, 0],
        );
        if c.no_new_privs {
            self.push(
                &mut q,
                Tag::Plain,
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [abi::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
            );
        }
        self.flush(&mut q)
    }

    /// Creates every thread but the main one, each by a `clone` injected into the main
    /// thread (so that it shares everything the process shares, and inherits the credentials,
    /// limits and all-blocked mask the main thread has by now), then gives each, from inside,
    /// what belongs to the thread: robust list, tid address, alternate stack, name, and the
    /// signals queued for it alone. Threads get new ids.
    fn make_threads(&mut self, made: &mut VesselThreads) -> Result<(), RestoreError> {
        let image = Arc::clone(&self.image);
        if image.threads.is_empty() {
            return Ok(());
        }
        let step = "creating threads";
        self.vessel
            .tracee_mut()
            .trace_clones(true, true)
            .map_err(RestoreError::sys(step))?;
        let gadget = self.vessel.area.syscall_gadget();
        let data = self.vessel.area.data;
        for t in &image.threads {
            // The id it had, if free and if the kernel lets this process choose (set_tid needs
            // CAP_SYS_ADMIN, which the owner's credentials may no longer hold): else any.
            let args = abi::CloneArgs {
                flags: THREAD_CLONE_FLAGS,
                exit_signal: 0,
                set_tid: data + abi::CloneArgs::SIZE as u64,
                set_tid_size: 1,
            };
            let exact = self.vessel.single(step, gadget, |inj| {
                let mut bytes = args.encode();
                bytes.extend_from_slice(&t.tid.to_le_bytes());
                inj.poke(data, &bytes)?;
                inj.clone3(data, true)
            });
            let thread = match exact {
                Err(RestoreError::Sys { source, .. })
                    if matches!(source.errno(), Some(Errno::EEXIST | Errno::EPERM)) =>
                {
                    self.vessel
                        .single(step, gadget, |inj| inj.clone_thread(THREAD_CLONE_FLAGS))?
                }
                other => other?,
            };
            made.list.push(thread);
            let tracee = made.list.last_mut().expect("just pushed");
            let e = &t.execution;
            let mut b = Batch::new(self.vessel.area);
            if e.robust_list.head != 0 {
                b.push(
                    "set_robust_list",
                    libc::SYS_set_robust_list,
                    [e.robust_list.head, e.robust_list.len, 0, 0, 0, 0],
                );
            }
            b.push(
                "set_tid_address",
                libc::SYS_set_tid_address,
                [e.tid_address, 0, 0, 0, 0, 0],
            );
            let alt = e.sigaltstack;
            let ss = StackT {
                sp: alt.sp,
                flags: alt.flags & libc::SS_DISABLE,
                size: alt.size,
            };
            let at = b.bytes(&ss.encode());
            b.push("sigaltstack", libc::SYS_sigaltstack, [at, 0, 0, 0, 0, 0]);
            if t.comm != image.control.comm {
                let mut comm = t.comm.as_bytes().to_vec();
                comm.truncate(15);
                comm.push(0);
                let at = b.bytes(&comm);
                b.push(
                    "prctl(PR_SET_NAME)",
                    libc::SYS_prctl,
                    [abi::PR_SET_NAME, at, 0, 0, 0, 0],
                );
            }
            for p in &t.pending {
                if !b.fits(1, p.siginfo.len()) {
                    return Err(no_room(
                        self.pid(),
                        "too many signals queued for one thread",
                    ));
                }
                let at = b.bytes(&p.siginfo);
                // Queued by the ids the process's own PID namespace gives.
                let pid = proc::own_id(self.pid(), self.pid()).as_raw() as u64;
                let tid = proc::own_id(self.pid(), tracee.pid()).as_raw() as u64;
                b.push(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    [pid, tid, p.signo() as u64, at, 0, 0],
                );
            }
            self.in_thread(tracee, "setting up a thread", gadget, |inj| {
                inj.run_all(&b).map(drop)
            })?;
        }
        self.vessel
            .tracee_mut()
            .trace_clones(false, true)
            .map_err(RestoreError::sys(step))
    }

    /// Runs `f` with an injector on `thread`, a thread of the vessel made by
    /// [`Builder::make_threads`].
    fn in_thread<T>(
        &mut self,
        thread: &mut Tracee,
        step: &str,
        gadget: u64,
        f: impl FnOnce(&mut Injector<'_>) -> Result<T, SysError>,
    ) -> Result<T, RestoreError> {
        let template = thread.regs().map_err(RestoreError::sys(step))?;
        let mut inj = Injector::new(thread, gadget, template);
        let out = f(&mut inj);
        self.vessel.calls += inj.calls();
        self.vessel.round_trips += inj.round_trips();
        out.map_err(RestoreError::sys(step))
    }

    /// Rewrites, for every thread with a new id, the copy of its old id that its thread
    /// library keeps where the kernel clears the id at exit (glibc's `struct pthread.tid`,
    /// which `pthread_kill`, `pthread_setname_np` and robust mutexes use). Only a word that
    /// holds exactly the old id, in a page the image carries (present before the start), is
    /// changed.
    fn rename_cached_tids(&self, threads: &[Tracee]) -> Result<(), RestoreError> {
        let image = &self.image;
        // Runs are sorted by address: the one that could hold `addr` is the first ending
        // after it.
        let runs = &image.memory.pages.runs;
        let carried = |addr: u64| {
            runs.get(runs.partition_point(|r| r.end() <= addr))
                .is_some_and(|r| r.addr <= addr && addr + 4 <= r.end())
        };
        let pid = self.pid();
        let mains = std::iter::once((image.control.pid, pid.as_raw(), &image.execution));
        let others = image
            .threads
            .iter()
            .zip(threads)
            .map(|(t, tracee)| (t.tid, tracee.pid().as_raw(), &t.execution));
        for (old, host_id, e) in mains.chain(others) {
            let at = e.tid_address;
            if old == host_id || at == 0 || !carried(at) {
                continue;
            }
            // The id as the process sees it (in a PID namespace of its own, not the host's).
            let new = proc::own_id(pid, Pid::from_raw(host_id)).as_raw();
            if old == new {
                continue;
            }
            let mut word = [0u8; 4];
            mem::read(pid, &[(at, 4)], &mut word)
                .map_err(RestoreError::sys("reading a cached thread id"))?;
            if i32::from_ne_bytes(word) == old {
                mem::write(pid, at, &new.to_ne_bytes())
                    .map_err(RestoreError::sys("renaming a cached thread id"))?;
            }
        }
        Ok(())
    }

    /// Lets the finished process run: its other threads are made, the restorer goes, rseq is
    /// registered, registers, XSAVE and mask of every thread are set, and the kernel takes
    /// each from its signal-delivery path.
    pub fn start(mut self) -> Result<(Pid, RestoreReport), RestoreError> {
        if !self.ready {
            self.finish()?;
        }
        let image = Arc::clone(&self.image);
        let mut threads = VesselThreads {
            pid: self.pid(),
            list: Vec::new(),
        };
        self.make_threads(&mut threads)?;
        self.take_over_socket_paths()?;
        let scratch = self.vessel.scratch;
        // The last calls run from a `syscall` in the vDSO, which stays mapped.
        let vdso = vdso_gadget(&image);
        let gadget = vdso.unwrap_or(self.vessel.area.syscall_gadget());
        self.vessel
            .single("removing the restorer", gadget, |inj| inj.unmap(scratch))?;
        self.rename_cached_tids(&threads.list)?;
        for (t, tracee) in image.threads.iter().zip(&mut threads.list) {
            if let (Some(r), true) = (t.execution.rseq, vdso.is_some()) {
                self.in_thread(tracee, "registering rseq", gadget, |inj| {
                    register_rseq(inj, r)
                })?;
            }
            set_thread_state(tracee, &t.execution, t.blocked)?;
        }
        let e = &image.execution;
        if let (Some(r), true) = (e.rseq, vdso.is_some()) {
            // Last, so that the kernel's rseq fixup sees the final instruction pointer.
            self.vessel
                .single("registering rseq", gadget, |inj| register_rseq(inj, r))?;
        }
        set_thread_state(self.vessel.tracee_mut(), e, image.signals.blocked)?;
        let report = RestoreReport {
            memory_copy: self.copy_time,
            memory_bytes: image.memory.pages.bytes,
            mappings: image.memory.vmas.len(),
            injected_calls: self.vessel.calls,
            round_trips: self.vessel.round_trips,
            old_pid: image.control.pid,
            threads: image
                .threads
                .iter()
                .zip(&threads.list)
                .map(|(t, tracee)| (t.tid, tracee.pid().as_raw()))
                .collect(),
            privileged_opens: self.privileged_opens,
            ..RestoreReport::default()
        };
        let tracee = self
            .vessel
            .tracee
            .take()
            .expect("the vessel lives until started");
        let pid = tracee.pid();
        enter_signal_path_and_detach_all(tracee, std::mem::take(&mut threads.list))
            .map_err(RestoreError::sys("starting the process"))?;
        if image.control.stopped {
            host::send_signal(pid, libc::SIGSTOP)
                .map_err(RestoreError::sys("stopping the process as it was"))?;
        }
        debug!(pid = pid.as_raw(), "running");
        Ok((pid, report))
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        // A process that never started leaves no socket file behind.
        for (aside, _) in self.bound_aside.drain(..) {
            let _ = std::fs::remove_file(aside);
        }
    }
}

/// The threads of a vessel under construction. Dropped before the start (an error), they are
/// killed with their process and reaped (the main thread is reaped only after them), never
/// let go half-built.
struct VesselThreads {
    pid: Pid,
    list: Vec<Tracee>,
}

impl Drop for VesselThreads {
    fn drop(&mut self) {
        if self.list.is_empty() {
            return;
        }
        let _ = host::send_signal(self.pid, libc::SIGKILL);
        for t in self.list.drain(..) {
            let _ = t.reap();
        }
    }
}

/// How restore makes a thread: it shares everything a POSIX thread shares.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Registers a thread's rseq area (from inside the thread).
fn register_rseq(inj: &mut Injector<'_>, r: Rseq) -> Result<(), SysError> {
    inj.call(
        "rseq",
        libc::SYS_rseq,
        [r.address, r.length as u64, 0, r.signature as u64, 0, 0],
    )
    .map(drop)
}

/// The last state of a thread before it runs: XSAVE area, registers, blocked mask.
fn set_thread_state(tracee: &mut Tracee, e: &Execution, blocked: u64) -> Result<(), RestoreError> {
    let tid = tracee.pid();
    let step = |what: &str| RestoreError::sys(format!("setting {what} of thread {tid}"));
    tracee
        .set_xstate(&e.xstate)
        .map_err(step("the FPU/AVX state"))?;
    tracee
        .set_regs(&from_model_regs(&e.regs))
        .map_err(step("the registers"))?;
    tracee.set_sigmask(blocked).map_err(step("the signal mask"))
}

/// Names of the calls that re-create a link (see [`Builder::connect_link`]).
const LINK_SOCKET: &str = "socket(link)";
const LINK_CONNECT: &str = "connect(link)";
const LINK_HELLO: &str = "sendto(link hello)";

/// A `struct sockaddr_un` for the abstract name `name`, as long as `connect` must be told:
/// family, the NUL that makes the name abstract, the name (no terminating NUL: every byte of
/// the length is part of an abstract name).
fn abstract_sockaddr(name: &str) -> Vec<u8> {
    unix_sockaddr(&[&[0], name.as_bytes()])
}

/// A `sockaddr_un` (`AF_UNIX`) whose `sun_path` is `parts` joined: a path (its terminating
/// NUL added) or an abstract name (a NUL byte first, no terminator).
fn unix_sockaddr(parts: &[&[u8]]) -> Vec<u8> {
    let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    for p in parts {
        addr.extend_from_slice(p);
    }
    if parts.first().is_none_or(|p| p.first() != Some(&0)) {
        addr.push(0);
    }
    addr
}

fn injected(step: &str, pid: Pid, call: &'static str, errno: Errno) -> RestoreError {
    RestoreError::Sys {
        step: step.to_string(),
        source: SysError::Injected {
            call,
            pid: pid.as_raw(),
            errno,
        },
    }
}

/// Writes `(address, bytes)` segments into a process being built (any thread may, no ptrace
/// involved): for page data that arrives after [`Builder::new`].
pub fn write_segments(pid: Pid, segments: &[(u64, &[u8])]) -> Result<(), RestoreError> {
    parallel_write(pid, segments).map_err(RestoreError::sys("writing memory"))
}

/// Writes `(address, bytes)` segments into `pid` from two threads (split by bytes).
fn parallel_write(pid: Pid, segments: &[(u64, &[u8])]) -> Result<(), SysError> {
    const THREADS: usize = 2;
    const PIECE: usize = 4 << 20;
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    for &(addr, data) in segments {
        for (i, chunk) in data.chunks(PIECE).enumerate() {
            pieces.push((addr + (i * PIECE) as u64, chunk));
        }
    }
    let total: usize = pieces.iter().map(|p| p.1.len()).sum();
    if total < 8 * PIECE {
        return mem::write_scattered(pid, &pieces);
    }
    let per = total.div_ceil(THREADS);
    let mut groups: Vec<Vec<(u64, &[u8])>> = vec![Vec::new(); THREADS];
    let mut acc = 0usize;
    for p in pieces {
        let g = (acc / per).min(THREADS - 1);
        acc += p.1.len();
        groups[g].push(p);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| scope.spawn(move || mem::write_scattered(pid, g)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or(Err(SysError::Gone {
                    pid: pid.as_raw(),
                    how: "copy thread panicked".into(),
                }))
            })
            .collect::<Result<Vec<()>, SysError>>()
            .map(drop)
    })
}

/// Address of a `syscall` instruction inside the image's vDSO (same code as this host's).
fn vdso_gadget(image: &ProcessImage) -> Option<u64> {
    let vdso = image
        .memory
        .vmas
        .iter()
        .find(|v| v.backing == Backing::Vdso)?;
    let (_, code) = host::own_vdso().ok()??;
    let off = code.windows(2).position(|w| w == [0x0f, 0x05])?;
    Some(vdso.start + off as u64)
}

fn prot_bits(p: Prot) -> i32 {
    let mut b = libc::PROT_NONE;
    if p.read {
        b |= libc::PROT_READ;
    }
    if p.write {
        b |= libc::PROT_WRITE;
    }
    if p.exec {
        b |= libc::PROT_EXEC;
    }
    b
}

/// For each VMA, whether page data will be written into it.
fn pages_per_vma(image: &ProcessImage) -> Vec<bool> {
    let vmas = &image.memory.vmas;
    let mut out = vec![false; vmas.len()];
    let mut vi = 0;
    for run in &image.memory.pages.runs {
        while vi < vmas.len() && vmas[vi].end <= run.addr {
            vi += 1;
        }
        if let Some(flag) = out.get_mut(vi) {
            *flag = true;
        }
    }
    out
}

/// A free range of `len` bytes (with a guard page each side) among `taken` ranges, searched
/// from 1 TiB upwards, below the usual mmap area.
fn find_gap(taken: &mut [(u64, u64)], len: u64) -> Option<u64> {
    taken.sort_unstable();
    let guard = PAGE_SIZE;
    let mut candidate = 1u64 << 40;
    for &(s, e) in taken.iter() {
        if e + guard <= candidate {
            continue;
        }
        if candidate + len + guard <= s {
            return Some(candidate);
        }
        candidate = candidate.max(e + guard);
    }
    (candidate + len < validate::USER_SPACE_END).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_search_skips_taken_ranges() {
        let base = 1u64 << 40;
        let mut taken = vec![(base, base + 0x5000), (base + 0x9000, base + 0xa000)];
        assert_eq!(find_gap(&mut taken, 0x2000), Some(base + 0x6000));
        let mut taken = vec![(base, base + 0x5000), (base + 0x7000, base + 0xa000)];
        assert_eq!(find_gap(&mut taken, 0x2000), Some(base + 0xb000));
        let mut taken = vec![(0x1000, 0x2000)];
        assert_eq!(find_gap(&mut taken, 0x2000), Some(base));
        let mut taken = vec![(0, validate::USER_SPACE_END)];
        assert_eq!(find_gap(&mut taken, 0x2000), None);
    }

    #[test]
    fn pages_are_attributed_to_their_mapping() {
        let image = ferry_image::model::tests_support::sample_image();
        let flags = pages_per_vma(&image);
        let with: Vec<usize> = flags
            .iter()
            .enumerate()
            .filter(|f| *f.1)
            .map(|f| f.0)
            .collect();
        assert_eq!(with, vec![2, 3, 4]);
    }

    #[test]
    fn abstract_addresses_have_no_terminating_nul() {
        let a = abstract_sockaddr("ferry-msg");
        assert_eq!(a.len(), 2 + 1 + 9);
        assert_eq!(&a[..2], &(libc::AF_UNIX as u16).to_le_bytes());
        assert_eq!(a[2], 0);
        assert_eq!(&a[3..], b"ferry-msg");
        let p = unix_sockaddr(&[b"/tmp/s"]);
        assert_eq!(&p[2..], b"/tmp/s\0");
    }

    #[test]
    fn link_errors_name_the_service() {
        let e = RestoreError::Link {
            fd: 3,
            socket: "ferry-msg".into(),
            action: "cannot reach",
            errno: Errno::ECONNREFUSED,
        };
        assert_eq!(
            e.to_string(),
            "fd 3: cannot reach the ferry message service @ferry-msg on this host: Connection refused"
        );
    }

    #[test]
    fn fd_numbers_follow_the_kernel() {
        let mut t = FdTable::default();
        assert_eq!(t.open(), 0);
        assert_eq!(t.open(), 1);
        t.place(5);
        t.close(0);
        assert_eq!(t.open(), 0);
        assert_eq!(t.open(), 2);
        assert_eq!(t.open(), 3);
        assert_eq!(t.open(), 4);
        assert_eq!(t.open(), 6);
    }
}
