//! Semantic checks on a decoded image: nothing in an image is trusted before it passes here.
//!
//! The checksum only proves that the bytes are the ones ferry wrote; it does not prove that a
//! hand-crafted image is sane. Every address, size, count and number that restore will hand to
//! the kernel is bounded here, so that restore can index and map without re-checking.

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use crate::model::*;

/// Highest user address on x86_64 with 4-level page tables (`TASK_SIZE`).
pub const USER_SPACE_END: u64 = 0x7fff_ffff_f000;
/// Lowest address a process may map (`vm.mmap_min_addr` default).
pub const USER_SPACE_START: u64 = 0x1000;
/// Upper bound on mappings (the kernel's default `vm.max_map_count`).
pub const MAX_VMAS: usize = 65_530;
/// Upper bound on restored file descriptors.
pub const MAX_FDS: usize = 1 << 16;
/// Highest fd number restore will create.
pub const MAX_FD_NUMBER: i32 = 1 << 20;
/// Largest `listen` backlog accepted (the kernel caps what it keeps at `somaxconn`).
pub const MAX_LISTEN_BACKLOG: u32 = 1 << 20;
/// Most SysV segments of one IPC namespace (the kernel's default `shmmni` is 4096).
pub const MAX_SYSV_SEGMENTS: usize = 1 << 15;
/// Kernel limit for the auxiliary vector kept in `mm_struct` (words).
pub const MAX_AUXV_WORDS: usize = 2 * (2 + 23 + 1 + 1);
/// x86_64 user code and stack segment selectors (64-bit mode).
pub const USER_CS: u64 = 0x33;
pub const USER_SS: u64 = 0x2b;
const XSAVE_MIN: usize = 576;
const XSAVE_MAX: usize = 64 << 10;
const SIGINFO_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid image: {0}")]
pub struct ValidationError(pub String);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(ValidationError(format!($($fmt)+)));
        }
    };
}

fn aligned(v: u64) -> bool {
    v.is_multiple_of(PAGE_SIZE)
}

fn check_path(what: &str, path: &str) -> Result<(), ValidationError> {
    ensure!(
        path.starts_with('/'),
        "{what} path {path:?} is not absolute"
    );
    ensure!(!path.contains('\0'), "{what} path {path:?} contains NUL");
    ensure!(path.len() < 4096, "{what} path is longer than PATH_MAX");
    Ok(())
}

/// Checks every invariant that capture guarantees and restore relies on.
pub fn validate(image: &ProcessImage) -> Result<(), ValidationError> {
    validate_in_tree(image, &HashSet::new())
}

/// [`validate`] for the image of a member of a process tree, whose socket ends `elsewhere`
/// (inode numbers) have their other end in another member's image.
pub fn validate_in_tree(
    image: &ProcessImage,
    elsewhere: &HashSet<u64>,
) -> Result<(), ValidationError> {
    validate_control(image)?;
    validate_execution(&image.execution)?;
    validate_memory(&image.memory)?;
    validate_files(&image.files, elsewhere)?;
    validate_mapped_fds(image)?;
    validate_signals(&image.signals)?;
    validate_threads(image)?;
    validate_ipc(image)?;
    Ok(())
}

/// An IPC namespace belongs to the init of a PID namespace; its segments are distinct, of
/// sane sizes, their bytes inside them and within [`MAX_SYSV_BYTES`]; a SysV mapping of the
/// image attaches one of them whole. (A tree member's mappings name its root's segments:
/// [`crate::validate_tree`] checks those.)
fn validate_ipc(image: &ProcessImage) -> Result<(), ValidationError> {
    let Some(ipc) = &image.ipc_namespace else {
        return Ok(());
    };
    ensure!(
        image.pid_namespace.is_some(),
        "an IPC namespace of its own, but no PID namespace"
    );
    ensure!(
        ipc.segments.len() <= MAX_SYSV_SEGMENTS,
        "{} SysV segments",
        ipc.segments.len()
    );
    let mut carried = 0usize;
    let mut ids = HashSet::new();
    for seg in &ipc.segments {
        ensure!(
            seg.id >= 0 && ids.insert(seg.id),
            "SysV segment id {} negative or repeated",
            seg.id
        );
        ensure!(
            seg.size > 0 && seg.size < USER_SPACE_END,
            "SysV segment {} of {} bytes",
            seg.id,
            seg.size
        );
        ensure!(
            seg.mode <= 0o777,
            "SysV segment {} with mode {:o}",
            seg.id,
            seg.mode
        );
        ensure!(
            !seg.removed || seg.key == 0,
            "SysV segment {} marked for removal keeps its key",
            seg.id
        );
        let mut next = 0u64;
        for run in &seg.runs {
            let end = run.offset.checked_add(run.bytes.len() as u64);
            ensure!(
                run.offset >= next
                    && run.offset.is_multiple_of(PAGE_SIZE)
                    && end.is_some_and(|e| e <= seg.size.next_multiple_of(PAGE_SIZE)),
                "SysV segment {}: bytes at {:#x} out of order or outside it",
                seg.id,
                run.offset
            );
            next = end.unwrap_or(u64::MAX);
            carried = carried.saturating_add(run.bytes.len());
        }
    }
    ensure!(
        carried <= MAX_SYSV_BYTES,
        "{carried} bytes of SysV segments (at most {MAX_SYSV_BYTES})"
    );
    for v in &image.memory.vmas {
        if let Backing::SysvShm { id, .. } = v.backing {
            check_sysv_attachment(v, ipc, id)?;
        }
    }
    Ok(())
}

/// A SysV mapping attaches segment `id` of `ipc` whole.
pub fn check_sysv_attachment(v: &Vma, ipc: &IpcNamespace, id: i32) -> Result<(), ValidationError> {
    let Some(seg) = ipc.segments.iter().find(|s| s.id == id) else {
        return Err(ValidationError(format!(
            "the mapping at {:#x} attaches SysV segment {id}, which the image lacks",
            v.start
        )));
    };
    ensure!(
        v.len() == seg.size.next_multiple_of(PAGE_SIZE) && v.shared,
        "the mapping at {:#x} attaches SysV segment {id} in part",
        v.start
    );
    Ok(())
}

/// A mapped file without a name that an fd holds too names a primary fd of the same kind.
fn validate_mapped_fds(image: &ProcessImage) -> Result<(), ValidationError> {
    for v in &image.memory.vmas {
        let Backing::UnnamedFile {
            fd: Some(n),
            origin,
            ..
        } = &v.backing
        else {
            continue;
        };
        let held = image.files.fds.iter().find(|f| f.number == *n);
        let agrees = held.is_some_and(|f| {
            f.dup_of.is_none()
                && matches!(
                    (&f.kind, origin),
                    (FdKind::MemFd { .. }, UnnamedOrigin::MemFd { .. })
                        | (FdKind::DeletedFile { .. }, UnnamedOrigin::Deleted { .. })
                )
        });
        ensure!(
            agrees,
            "mapping at {:#x}: fd {n} is no primary fd of its file's kind",
            v.start
        );
    }
    Ok(())
}

/// Upper bound on the threads of a restored process.
pub const MAX_THREADS: usize = 1 << 14;

fn validate_threads(image: &ProcessImage) -> Result<(), ValidationError> {
    ensure!(
        image.threads.len() < MAX_THREADS,
        "{} threads",
        image.threads.len() + 1
    );
    let mut tids = HashSet::from([image.control.pid]);
    for t in &image.threads {
        ensure!(t.tid > 0, "thread id {}", t.tid);
        ensure!(tids.insert(t.tid), "thread id {} twice", t.tid);
        ensure!(
            t.comm.len() <= 15 && !t.comm.contains('\0'),
            "thread {}: name {:?} is longer than 15 bytes",
            t.tid,
            t.comm
        );
        validate_execution(&t.execution)
            .map_err(|e| ValidationError(format!("thread {}: {}", t.tid, e.0)))?;
        ensure!(
            t.execution.xstate.len() == image.execution.xstate.len(),
            "thread {}: XSAVE area of {} bytes, the main thread's has {}",
            t.tid,
            t.execution.xstate.len(),
            image.execution.xstate.len()
        );
        ensure!(
            t.pending.iter().all(|p| !p.shared),
            "thread {}: a signal queued for the whole process",
            t.tid
        );
        validate_pending(&t.pending)
            .map_err(|e| ValidationError(format!("thread {}: {}", t.tid, e.0)))?;
    }
    Ok(())
}

fn validate_control(image: &ProcessImage) -> Result<(), ValidationError> {
    let c = &image.control;
    ensure!(
        c.comm.len() <= 15 && !c.comm.contains('\0'),
        "comm {:?} is longer than 15 bytes",
        c.comm
    );
    check_path("executable", &c.exe)?;
    check_path("working directory", &c.cwd)?;
    ensure!(c.umask <= 0o777, "umask {:o} out of range", c.umask);
    if let Some(ns) = image.pid_namespace {
        ensure!(
            c.pid == 1 && c.ppid == 0,
            "pid {} (parent {}) as the init of its own PID namespace: an init is pid 1 of no parent there",
            c.pid,
            c.ppid
        );
        ensure!(
            ns.host_pid > 0,
            "host pid {} of a PID namespace",
            ns.host_pid
        );
    }
    ensure!(c.dumpable <= 2, "dumpable {} out of range", c.dumpable);
    ensure!(
        (0..=64).contains(&c.pdeathsig),
        "pdeathsig {} out of range",
        c.pdeathsig
    );
    let mut seen = HashSet::new();
    for r in &c.rlimits {
        ensure!(r.resource < 16, "unknown rlimit resource {}", r.resource);
        ensure!(seen.insert(r.resource), "rlimit {} twice", r.resource);
        ensure!(
            r.soft <= r.hard,
            "rlimit {}: soft {} above hard {}",
            r.resource,
            r.soft,
            r.hard
        );
    }
    let cr = &image.credentials;
    ensure!(
        cr.groups.len() <= 65_536,
        "{} supplementary groups",
        cr.groups.len()
    );
    let caps = &cr.caps;
    ensure!(
        caps.effective & !caps.permitted == 0,
        "effective capabilities exceed permitted ones"
    );
    ensure!(
        caps.ambient & !(caps.permitted & caps.inheritable) == 0,
        "ambient capabilities not both permitted and inheritable"
    );
    Ok(())
}

fn validate_execution(e: &Execution) -> Result<(), ValidationError> {
    ensure!(
        e.regs.cs == USER_CS && e.regs.ss == USER_SS,
        "segment selectors cs={:#x} ss={:#x} are not those of a 64-bit user process",
        e.regs.cs,
        e.regs.ss
    );
    ensure!(
        (XSAVE_MIN..=XSAVE_MAX).contains(&e.xstate.len()),
        "XSAVE area of {} bytes",
        e.xstate.len()
    );
    ensure!(
        e.regs.fs_base < USER_SPACE_END && e.regs.gs_base < USER_SPACE_END,
        "fs_base/gs_base outside user space"
    );
    if let Some(r) = &e.rseq {
        ensure!(
            r.address < USER_SPACE_END && r.length >= 32 && r.length <= 4096,
            "rseq area {:#x}+{} invalid",
            r.address,
            r.length
        );
    }
    Ok(())
}

fn validate_memory(m: &AddressSpace) -> Result<(), ValidationError> {
    ensure!(m.vmas.len() <= MAX_VMAS, "{} mappings", m.vmas.len());
    ensure!(
        m.auxv.len() <= MAX_AUXV_WORDS && m.auxv.len().is_multiple_of(2),
        "auxiliary vector of {} words",
        m.auxv.len()
    );
    let l = &m.layout;
    for (name, v) in [
        ("start_code", l.start_code),
        ("end_code", l.end_code),
        ("start_data", l.start_data),
        ("end_data", l.end_data),
        ("start_brk", l.start_brk),
        ("brk", l.brk),
        ("start_stack", l.start_stack),
        ("arg_start", l.arg_start),
        ("arg_end", l.arg_end),
        ("env_start", l.env_start),
        ("env_end", l.env_end),
    ] {
        ensure!(v < USER_SPACE_END, "{name} {v:#x} outside user space");
    }
    ensure!(
        l.start_code <= l.end_code && l.start_data <= l.end_data && l.start_brk <= l.brk,
        "inconsistent code/data/brk layout"
    );
    ensure!(
        l.arg_start <= l.arg_end && l.env_start <= l.env_end,
        "inconsistent argument/environment layout"
    );

    let mut prev_end = USER_SPACE_START;
    let mut vdso_parts = Vec::new();
    // Each unnamed file: its first mapping, and whether some mapping carries its bytes.
    let mut unnamed: HashMap<u64, (usize, bool)> = HashMap::new();
    for (i, v) in m.vmas.iter().enumerate() {
        ensure!(
            aligned(v.start) && aligned(v.end),
            "mapping {i} {:#x}-{:#x} not page-aligned",
            v.start,
            v.end
        );
        ensure!(
            v.start < v.end,
            "mapping {i} {:#x}-{:#x} is empty",
            v.start,
            v.end
        );
        ensure!(
            v.start >= prev_end,
            "mapping {i} at {:#x} overlaps or is out of order",
            v.start
        );
        ensure!(
            v.end <= USER_SPACE_END,
            "mapping {i} ends at {:#x}, outside user space",
            v.end
        );
        prev_end = v.end;
        if let Some(name) = &v.anon_name {
            ensure!(
                name.len() < 80 && name.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "mapping {i}: bad anonymous name"
            );
        }
        match &v.backing {
            Backing::File { path, offset, .. } => {
                check_path("mapped file", path)?;
                ensure!(
                    aligned(*offset),
                    "mapping {i}: file offset not page-aligned"
                );
                ensure!(
                    offset.checked_add(v.len()).is_some(),
                    "mapping {i}: file offset overflows"
                );
            }
            Backing::UnnamedFile {
                file,
                offset,
                origin,
                data,
                ..
            } => {
                ensure!(
                    aligned(*offset) && offset.checked_add(v.len()).is_some(),
                    "mapping {i}: file offset {offset:#x} not page-aligned or overflowing"
                );
                match origin {
                    UnnamedOrigin::MemFd { name, .. } => ensure!(
                        name.len() <= 249 && !name.contains('\0') && !name.contains('/'),
                        "mapping {i}: bad memfd name {name:?}"
                    ),
                    UnnamedOrigin::Deleted { path, mode } => {
                        check_path("deleted mapped file", path)?;
                        ensure!(
                            path.len() > 1 && !path.ends_with('/'),
                            "mapping {i}: deleted file path {path:?} names no file"
                        );
                        ensure!(*mode <= 0o7777, "mapping {i}: mode {mode:o}");
                    }
                }
                ensure!(
                    data.len() <= MAX_CARRIED_BYTES,
                    "mapping {i}: {} bytes of file carried (at most {MAX_CARRIED_BYTES})",
                    data.len()
                );
                match unnamed.get(file) {
                    Some(&(first, carried)) => {
                        let Backing::UnnamedFile { origin: o, .. } = &m.vmas[first].backing else {
                            unreachable!("recorded from an unnamed file mapping");
                        };
                        ensure!(
                            o == origin && (data.is_empty() || !carried),
                            "mappings {first} and {i} of file {file} disagree"
                        );
                        if !data.is_empty() {
                            unnamed.insert(*file, (first, true));
                        }
                    }
                    None => {
                        unnamed.insert(*file, (i, !data.is_empty()));
                    }
                }
            }
            Backing::Vvar | Backing::VvarVclock | Backing::Vdso => vdso_parts.push(i),
            Backing::Stack | Backing::Heap | Backing::Anonymous | Backing::SharedAnonymous => {}
            Backing::SysvShm { id, read_only } => ensure!(
                v.shared && *id >= 0 && !(*read_only && v.prot.write),
                "mapping {i}: a SysV attachment that is private, of a negative id, or writable though read-only"
            ),
        }
        ensure!(
            !v.flags.growsdown || !v.shared,
            "mapping {i}: shared mappings cannot grow down"
        );
    }
    if !vdso_parts.is_empty() {
        let kinds: Vec<&Backing> = vdso_parts.iter().map(|&i| &m.vmas[i].backing).collect();
        let contiguous = vdso_parts
            .windows(2)
            .all(|w| w[1] == w[0] + 1 && m.vmas[w[0]].end == m.vmas[w[1]].start);
        ensure!(
            contiguous
                && matches!(
                    kinds.as_slice(),
                    [Backing::Vvar, Backing::Vdso]
                        | [Backing::Vvar, Backing::VvarVclock, Backing::Vdso]
                ),
            "the vDSO area is not [vvar][vvar_vclock][vdso] in one piece"
        );
    }

    // Page runs: sorted, disjoint, each inside one VMA that carries pages.
    let mut total: u64 = 0;
    let mut prev_end = 0u64;
    let mut vi = 0usize;
    for (r, run) in m.pages.runs.iter().enumerate() {
        ensure!(run.pages > 0, "page run {r} is empty");
        ensure!(aligned(run.addr), "page run {r} not page-aligned");
        let len = run
            .pages
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| ValidationError(format!("page run {r} overflows")))?;
        let end = run
            .addr
            .checked_add(len)
            .ok_or_else(|| ValidationError(format!("page run {r} overflows")))?;
        ensure!(
            run.addr >= prev_end,
            "page run {r} out of order or overlapping"
        );
        prev_end = end;
        while vi < m.vmas.len() && m.vmas[vi].end <= run.addr {
            vi += 1;
        }
        let vma = m.vmas.get(vi);
        ensure!(
            vma.is_some_and(|v| v.start <= run.addr && end <= v.end),
            "page run {r} at {:#x} ({} pages) is not inside one mapping",
            run.addr,
            run.pages
        );
        ensure!(
            vma.is_some_and(Vma::carries_pages),
            "page run {r} at {:#x} lies in a mapping whose content comes from elsewhere",
            run.addr
        );
        total = total
            .checked_add(len)
            .ok_or_else(|| ValidationError("page data size overflows".into()))?;
    }
    ensure!(
        total == m.pages.bytes,
        "page runs cover {total} bytes, the index says {}",
        m.pages.bytes
    );
    Ok(())
}

fn validate_files(f: &Files, elsewhere: &HashSet<u64>) -> Result<(), ValidationError> {
    ensure!(f.fds.len() <= MAX_FDS, "{} file descriptors", f.fds.len());
    let mut numbers = HashSet::new();
    for fd in &f.fds {
        ensure!(numbers.insert(fd.number), "fd {} appears twice", fd.number);
    }
    // Per pipe: its capacity and the bytes on its first read end, which every end must match.
    let mut pipes: HashMap<u64, (i32, u32, Option<&Vec<u8>>)> = HashMap::new();
    for fd in &f.fds {
        ensure!(
            (0..=MAX_FD_NUMBER).contains(&fd.number),
            "fd number {} out of range",
            fd.number
        );
        match &fd.kind {
            FdKind::Link { socket, hello } => check_link(fd.number, socket, hello)?,
            kind if kind.is_file() => check_path(&format!("fd {}", fd.number), kind.path())?,
            kind => check_kernel_object(fd.number, kind, &numbers)?,
        }
        if let FdKind::Pipe {
            pipe,
            write,
            capacity,
            data,
            ..
        } = &fd.kind
        {
            let first = pipes.entry(*pipe).or_insert((fd.number, *capacity, None));
            let agree =
                first.1 == *capacity && (*write || first.2.is_none_or(|bytes| bytes == data));
            ensure!(
                agree,
                "fd {} and fd {}: ends of one pipe that disagree",
                first.0,
                fd.number
            );
            if !*write && first.2.is_none() {
                first.2 = Some(data);
            }
        }
        ensure!(
            fd.kind.flags() & libc_o_creat_trunc_excl() == 0,
            "fd {}: open-time flags (O_CREAT/O_TRUNC/O_EXCL) in the status flags",
            fd.number
        );
    }
    check_socket_pairs(f, elsewhere)?;
    for fd in &f.fds {
        if let Some(of) = fd.dup_of {
            let primary = f.fds.iter().find(|p| p.number == of);
            ensure!(
                primary.is_some_and(|p| p.dup_of.is_none()
                    && p.number < fd.number
                    && p.kind == fd.kind),
                "fd {} duplicates fd {of}, which is not a lower fd of the same file",
                fd.number
            );
        }
    }
    Ok(())
}

/// Largest pipe capacity restore will set (`/proc/sys/fs/pipe-max-size` cannot exceed 2 GiB).
pub const MAX_PIPE_CAPACITY: u32 = 1 << 31;
/// Most watches of one inotify instance.
pub const MAX_INOTIFY_WATCHES: usize = MAX_FDS;
/// Highest watch descriptor restore will recreate (each one below it that the image lacks
/// costs a watch added and removed).
pub const MAX_INOTIFY_WD: i32 = 1 << 16;
/// Most registrations of one epoll instance.
pub const MAX_EPOLL_WATCHES: usize = MAX_FDS;
/// Clocks a timerfd can use: `CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME`,
/// `CLOCK_REALTIME_ALARM`, `CLOCK_BOOTTIME_ALARM`.
pub const TIMERFD_CLOCKS: [i32; 5] = [0, 1, 7, 8, 9];

/// The checks on a pipe end, eventfd, timerfd, signalfd, epoll instance, memfd or deleted
/// file at fd `n` (`numbers`: every fd number of the image): values restore hands to the
/// kernel. Whether the ends of one pipe agree is checked by the caller.
fn check_kernel_object(
    n: i32,
    kind: &FdKind,
    numbers: &HashSet<i32>,
) -> Result<(), ValidationError> {
    match kind {
        FdKind::Pipe {
            write,
            capacity,
            data,
            ..
        } => {
            check_pipe_buffer(n, "pipe", *capacity, data)?;
            ensure!(
                !*write || data.is_empty(),
                "fd {n}: data carried on a pipe's write end"
            );
        }
        FdKind::EventFd { count, .. } => {
            ensure!(*count < u64::MAX, "fd {n}: eventfd count {count:#x}");
        }
        FdKind::TimerFd { clock, .. } => {
            ensure!(
                TIMERFD_CLOCKS.contains(clock),
                "fd {n}: timerfd on clock {clock}"
            );
        }
        FdKind::SignalFd { .. } => {}
        FdKind::Epoll { watches, .. } => {
            ensure!(
                watches.len() <= MAX_EPOLL_WATCHES,
                "fd {n}: {} epoll registrations",
                watches.len()
            );
            let mut seen = HashSet::new();
            for w in watches {
                ensure!(
                    w.fd != n && numbers.contains(&w.fd),
                    "fd {n}: epoll registration of fd {}, which the image does not hold",
                    w.fd
                );
                ensure!(seen.insert(w.fd), "fd {n}: fd {} registered twice", w.fd);
            }
        }
        FdKind::MemFd { name, data, .. } => {
            ensure!(
                name.len() <= MAX_MEMFD_NAME && !name.contains('\0'),
                "fd {n}: memfd name {name:?}"
            );
            ensure!(
                data.len() <= MAX_CARRIED_BYTES,
                "fd {n}: memfd of {} bytes (at most {MAX_CARRIED_BYTES})",
                data.len()
            );
        }
        FdKind::DeletedFile { path, data, .. } => {
            check_path(&format!("fd {n}"), path)?;
            ensure!(
                path.len() > 1,
                "fd {n}: deleted file {path:?} has no directory"
            );
            ensure!(
                data.len() <= MAX_CARRIED_BYTES,
                "fd {n}: deleted file of {} bytes (at most {MAX_CARRIED_BYTES})",
                data.len()
            );
        }
        FdKind::UnixStream { .. } => {
            // The reader turns these into `UnixPair`s; a loaded image holds none.
            return Err(ValidationError(format!(
                "fd {n}: a socket pair in the form of format 1.2"
            )));
        }
        FdKind::UnixPair {
            socket,
            peer,
            kind,
            messages,
            ..
        } => {
            ensure!(socket != peer, "fd {n}: a socket paired with itself");
            let bytes: usize = messages.iter().map(Vec::len).sum();
            ensure!(
                bytes <= MAX_CARRIED_BYTES,
                "fd {n}: {bytes} bytes queued in a socket (at most {MAX_CARRIED_BYTES})"
            );
            ensure!(
                *kind != SocketKind::Stream
                    || (messages.len() <= 1 && messages.iter().all(|m| !m.is_empty())),
                "fd {n}: a stream socket's bytes as {} messages",
                messages.len()
            );
        }
        FdKind::Fifo {
            path,
            flags,
            capacity,
            data,
        } => {
            check_path(&format!("fd {n}"), path)?;
            check_pipe_buffer(n, "FIFO", *capacity, data)?;
            ensure!(
                data.is_empty() || flags & 0o3 != 0o1, // O_ACCMODE, O_WRONLY
                "fd {n}: data carried on a FIFO's write-only end"
            );
        }
        FdKind::Inotify { watches, .. } => {
            ensure!(
                watches.len() <= MAX_INOTIFY_WATCHES,
                "fd {n}: {} inotify watches",
                watches.len()
            );
            let mut last = 0;
            for w in watches {
                ensure!(
                    w.wd > last && w.wd <= MAX_INOTIFY_WD,
                    "fd {n}: inotify watch descriptor {} after {last}",
                    w.wd
                );
                ensure!(w.mask != 0, "fd {n}: inotify watch {} with no events", w.wd);
                check_path(&format!("fd {n} (inotify watch {})", w.wd), &w.path)?;
                last = w.wd;
            }
        }
        FdKind::ProcFile { path, .. } => {
            ensure!(
                !path.is_empty()
                    && !path.starts_with('/')
                    && !path.contains('\0')
                    && path.len() < 4096
                    && path
                        .split('/')
                        .all(|c| !c.is_empty() && c != "." && c != ".."),
                "fd {n}: /proc path {path:?}"
            );
        }
        FdKind::UnixListener {
            kind,
            name,
            backlog,
            ..
        } => {
            ensure!(
                *kind != SocketKind::Datagram,
                "fd {n}: a listening datagram socket"
            );
            ensure!(
                *backlog <= MAX_LISTEN_BACKLOG,
                "fd {n}: listen backlog {backlog}"
            );
            match name {
                SocketName::Abstract(bytes) => ensure!(
                    bytes.len() <= MAX_SOCKET_NAME,
                    "fd {n}: abstract socket name of {} bytes",
                    bytes.len()
                ),
                SocketName::Path { path, mode, .. } => {
                    check_path(&format!("fd {n}"), path)?;
                    ensure!(
                        path.len() <= MAX_SOCKET_NAME && path.len() > 1 && *mode <= 0o7777,
                        "fd {n}: socket path {path:?} (mode {mode:o})"
                    );
                }
            }
        }
        FdKind::Regular { .. }
        | FdKind::Directory { .. }
        | FdKind::CharDevice { .. }
        | FdKind::Link { .. } => {}
    }
    Ok(())
}

/// A pipe's or FIFO's capacity (what restore may set) and the bytes carried in it (which must
/// fit).
fn check_pipe_buffer(
    n: i32,
    what: &str,
    capacity: u32,
    data: &[u8],
) -> Result<(), ValidationError> {
    ensure!(
        (4096..=MAX_PIPE_CAPACITY).contains(&capacity),
        "fd {n}: {what} capacity of {capacity} bytes"
    );
    ensure!(
        data.len() as u64 <= u64::from(capacity),
        "fd {n}: {} bytes in a {what} of {capacity}",
        data.len()
    );
    Ok(())
}

/// Every unix socket pair end names a peer that is another end of the image naming it back,
/// and each socket is one primary fd.
fn check_socket_pairs(f: &Files, elsewhere: &HashSet<u64>) -> Result<(), ValidationError> {
    let mut ends: HashMap<u64, (i32, u64, SocketKind)> = HashMap::new();
    for fd in f.fds.iter().filter(|fd| fd.dup_of.is_none()) {
        if let FdKind::UnixPair {
            socket, peer, kind, ..
        } = &fd.kind
        {
            ensure!(
                ends.insert(*socket, (fd.number, *peer, *kind)).is_none(),
                "fd {}: socket {socket} is held by two fds that are not duplicates",
                fd.number
            );
        }
    }
    for (socket, &(n, peer, kind)) in &ends {
        if elsewhere.contains(socket) {
            // Its peer is checked against the other member's image at restore.
            continue;
        }
        ensure!(
            ends.get(&peer)
                .is_some_and(|&(_, back, k)| back == *socket && k == kind),
            "fd {n}: its socket's peer {peer} is not an end of this image paired with it"
        );
    }
    Ok(())
}

/// The checks on a [`FdKind::Link`] of fd `fd`: a usable abstract socket name (non-empty, at
/// most [`MAX_LINK_SOCKET`] bytes, no NUL) and a hello of at most [`MAX_LINK_HELLO`] bytes.
pub fn check_link(fd: i32, socket: &str, hello: &[u8]) -> Result<(), ValidationError> {
    ensure!(
        !socket.is_empty(),
        "fd {fd}: link to an empty abstract socket name"
    );
    ensure!(
        socket.len() <= MAX_LINK_SOCKET,
        "fd {fd}: abstract socket name of {} bytes (at most {MAX_LINK_SOCKET})",
        socket.len()
    );
    ensure!(
        !socket.contains('\0'),
        "fd {fd}: abstract socket name {socket:?} contains NUL"
    );
    ensure!(
        hello.len() <= MAX_LINK_HELLO,
        "fd {fd}: link hello of {} bytes (at most {MAX_LINK_HELLO})",
        hello.len()
    );
    Ok(())
}

/// `O_CREAT | O_EXCL | O_TRUNC` on Linux; restore must never create or truncate a file.
const fn libc_o_creat_trunc_excl() -> i32 {
    0o100 | 0o200 | 0o1000
}

fn validate_signals(s: &Signals) -> Result<(), ValidationError> {
    let mut seen = HashSet::new();
    for a in &s.actions {
        ensure!(
            (1..=64).contains(&a.signo) && a.signo != 9 && a.signo != 19,
            "disposition for signal {}",
            a.signo
        );
        ensure!(
            seen.insert(a.signo),
            "signal {} has two dispositions",
            a.signo
        );
        ensure!(
            a.handler <= 1 || a.handler < USER_SPACE_END,
            "signal {} handler outside user space",
            a.signo
        );
    }
    validate_pending(&s.pending)
}

fn validate_pending(pending: &[PendingSignal]) -> Result<(), ValidationError> {
    ensure!(pending.len() <= 4096, "{} pending signals", pending.len());
    for p in pending {
        ensure!(
            p.siginfo.len() == SIGINFO_LEN,
            "pending siginfo of {} bytes",
            p.siginfo.len()
        );
        ensure!(
            (1..=64).contains(&p.signo()),
            "pending signal {}",
            p.signo()
        );
    }
    Ok(())
}

/// Why an image cannot run on this host.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlatformMismatch {
    #[error("the image is for {image}, this host is {host}")]
    Arch { image: String, host: String },
    #[error("the image was taken on kernel {image}, this host runs {host}")]
    Kernel { image: String, host: String },
    #[error("the vDSO of this kernel differs from the image's (another kernel build)")]
    Vdso,
    #[error(
        "the image uses CPU state features {image:#x} (XSAVE size {image_size}), this CPU enables {host:#x} (size {host_size})"
    )]
    Xsave {
        image: u64,
        host: u64,
        image_size: u32,
        host_size: u32,
    },
}

impl Platform {
    /// Homogeneous migration only: same architecture, same kernel, same vDSO, same CPU state
    /// layout.
    pub fn check_runs_on(&self, host: &Platform) -> Result<(), PlatformMismatch> {
        if self.arch != host.arch {
            return Err(PlatformMismatch::Arch {
                image: self.arch.clone(),
                host: host.arch.clone(),
            });
        }
        if self.kernel_release != host.kernel_release {
            return Err(PlatformMismatch::Kernel {
                image: self.kernel_release.clone(),
                host: host.kernel_release.clone(),
            });
        }
        if let Some(v) = &self.vdso
            && host.vdso.as_ref() != Some(v)
        {
            return Err(PlatformMismatch::Vdso);
        }
        if self.xsave.features & !host.xsave.features != 0 || self.xsave.size > host.xsave.size {
            return Err(PlatformMismatch::Xsave {
                image: self.xsave.features,
                host: host.xsave.features,
                image_size: self.xsave.size,
                host_size: host.xsave.size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests_support::sample_image;

    fn invalid(f: impl FnOnce(&mut ProcessImage)) -> String {
        let mut img = sample_image();
        f(&mut img);
        validate(&img).unwrap_err().to_string()
    }

    #[test]
    fn sample_is_valid() {
        validate(&sample_image()).unwrap();
    }

    /// The sample with a memfd mapped twice (shared, then private), its bytes carried by the
    /// first mapping.
    fn with_mapped_memfd(i: &mut ProcessImage) {
        let last = i.memory.vmas.len() - 1;
        let top = i.memory.vmas[last].start;
        for (n, shared) in [(2u64, true), (1, false)] {
            let start = top - n * 0x10_0000;
            i.memory.vmas.insert(
                last,
                Vma {
                    start,
                    end: start + 0x2000,
                    prot: Prot {
                        read: true,
                        write: true,
                        exec: false,
                    },
                    shared,
                    backing: Backing::UnnamedFile {
                        file: 99,
                        offset: 0,
                        origin: UnnamedOrigin::MemFd {
                            name: "buf".into(),
                            seals: 0,
                        },
                        data: if shared { vec![1; 100] } else { Vec::new() },
                        fd: None,
                    },
                    flags: VmaFlags::default(),
                    anon_name: None,
                },
            );
        }
        i.memory.vmas.sort_by_key(|v| v.start);
    }

    #[test]
    fn mapped_unnamed_files() {
        let mut img = sample_image();
        with_mapped_memfd(&mut img);
        validate(&img).unwrap();
        // Both mappings carrying the bytes, or disagreeing on the origin.
        let e = invalid(|i| {
            with_mapped_memfd(i);
            for v in &mut i.memory.vmas {
                if let Backing::UnnamedFile { data, .. } = &mut v.backing {
                    *data = vec![2; 10];
                }
            }
        });
        assert!(e.contains("disagree"), "{e}");
        let e = invalid(|i| {
            with_mapped_memfd(i);
            for v in &mut i.memory.vmas {
                if let Backing::UnnamedFile { origin, .. } = &mut v.backing
                    && !v.shared
                {
                    *origin = UnnamedOrigin::Deleted {
                        path: "/tmp/x".into(),
                        mode: 0o600,
                    };
                }
            }
        });
        assert!(e.contains("disagree"), "{e}");
        // An fd link must name a memfd fd of the image.
        let e = invalid(|i| {
            with_mapped_memfd(i);
            for v in &mut i.memory.vmas {
                if let Backing::UnnamedFile { fd, .. } = &mut v.backing {
                    *fd = Some(0);
                }
            }
        });
        assert!(e.contains("is no primary fd of its file's kind"), "{e}");
    }

    #[test]
    fn rejects_overlapping_vmas() {
        let e = invalid(|i| i.memory.vmas[1].start = i.memory.vmas[0].start);
        assert!(e.contains("overlaps or is out of order"), "{e}");
    }

    #[test]
    fn rejects_kernel_addresses() {
        let e = invalid(|i| {
            let v = i.memory.vmas.last_mut().unwrap();
            v.end = 0xffff_8000_0000_0000;
        });
        assert!(e.contains("outside user space"), "{e}");
    }

    #[test]
    fn rejects_unaligned_mapping() {
        let e = invalid(|i| i.memory.vmas[0].start += 1);
        assert!(e.contains("not page-aligned"), "{e}");
    }

    #[test]
    fn rejects_page_run_outside_mappings() {
        let e = invalid(|i| i.memory.pages.runs[0].addr = 0x1000);
        assert!(e.contains("not inside one mapping"), "{e}");
    }

    #[test]
    fn rejects_page_run_in_shared_file_mapping() {
        let e = invalid(|i| {
            let file_vma = i
                .memory
                .vmas
                .iter()
                .position(|v| matches!(v.backing, Backing::File { .. }))
                .unwrap();
            i.memory.vmas[file_vma].shared = true;
            let start = i.memory.vmas[file_vma].start;
            i.memory.pages.runs = vec![PageRun {
                addr: start,
                pages: 1,
            }];
            i.memory.pages.bytes = PAGE_SIZE;
        });
        assert!(e.contains("content comes from elsewhere"), "{e}");
    }

    #[test]
    fn rejects_overflowing_page_run() {
        let e = invalid(|i| i.memory.pages.runs[0].pages = u64::MAX / 2);
        assert!(e.contains("overflows"), "{e}");
    }

    #[test]
    fn rejects_wrong_page_total() {
        let e = invalid(|i| i.memory.pages.bytes += PAGE_SIZE);
        assert!(e.contains("page runs cover"), "{e}");
    }

    #[test]
    fn rejects_relative_paths_and_duplicate_fds() {
        let e = invalid(|i| {
            if let FdKind::Regular { path, .. } = &mut i.files.fds[0].kind {
                *path = "relative".into();
            }
        });
        assert!(e.contains("not absolute"), "{e}");
        let e = invalid(|i| {
            let fd = i.files.fds[0].clone();
            i.files.fds.push(fd);
        });
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn rejects_broken_dup_groups() {
        let e = invalid(|i| i.files.fds[1].dup_of = Some(7));
        assert!(e.contains("duplicates fd 7"), "{e}");
        let e = invalid(|i| i.files.fds[0].dup_of = Some(2));
        assert!(e.contains("duplicates fd 2"), "{e}");
    }

    fn link(socket: &str, hello: &[u8]) -> FdKind {
        FdKind::Link {
            socket: socket.into(),
            hello: hello.to_vec(),
        }
    }

    /// The sample image with fd 5 a link and fd 6 its duplicate.
    fn with_link(kind: FdKind) -> ProcessImage {
        let mut img = sample_image();
        img.files.fds.push(Fd {
            number: 5,
            cloexec: true,
            kind: kind.clone(),
            dup_of: None,
        });
        img.files.fds.push(Fd {
            number: 6,
            cloexec: false,
            kind,
            dup_of: Some(5),
        });
        img
    }

    #[test]
    fn accepts_links_and_their_duplicates() {
        validate(&with_link(link("ferry-msg", b"hello"))).unwrap();
        validate(&with_link(link("m", b""))).unwrap();
        validate(&with_link(link(
            &"x".repeat(MAX_LINK_SOCKET),
            &[7; MAX_LINK_HELLO],
        )))
        .unwrap();
        // Not a file: no path, read-write.
        let k = link("ferry-msg", b"");
        assert_eq!(k.path(), "");
        assert_eq!(k.flags(), 0o2);
        assert!(!k.is_file());
    }

    #[test]
    fn rejects_bad_links() {
        let bad = |kind: FdKind| validate(&with_link(kind)).unwrap_err().to_string();
        let e = bad(link("", b"hi"));
        assert!(
            e.contains("fd 5: link to an empty abstract socket name"),
            "{e}"
        );
        let e = bad(link(&"x".repeat(MAX_LINK_SOCKET + 1), b"hi"));
        assert!(e.contains("abstract socket name of 108 bytes"), "{e}");
        let e = bad(link("ferry\0msg", b"hi"));
        assert!(e.contains("contains NUL"), "{e}");
        let e = bad(link("ferry-msg", &[0; MAX_LINK_HELLO + 1]));
        assert!(e.contains("link hello of 4097 bytes"), "{e}");
        // A duplicate must name the same link.
        let e = invalid(|i| {
            *i = with_link(link("ferry-msg", b"a"));
            i.files.fds[4].kind = link("ferry-msg", b"b");
        });
        assert!(e.contains("duplicates fd 5"), "{e}");
        // A link is not a file a duplicate could share.
        let e = invalid(|i| {
            *i = with_link(link("ferry-msg", b"a"));
            i.files.fds[4].kind = i.files.fds[0].kind.clone();
        });
        assert!(e.contains("duplicates fd 5"), "{e}");
    }

    fn pipe_end(write: bool, data: &[u8]) -> FdKind {
        FdKind::Pipe {
            pipe: 77,
            write,
            flags: if write { 1 } else { 0o4000 },
            capacity: 65536,
            data: data.to_vec(),
        }
    }

    /// The sample image with kernel objects at fds 5..: a pipe (read end, write end), an
    /// eventfd, a timerfd, a signalfd and an epoll instance watching 5, 7 and 8.
    fn with_objects() -> ProcessImage {
        let mut img = sample_image();
        let kinds = [
            pipe_end(false, b"in flight"),
            pipe_end(true, b""),
            FdKind::EventFd {
                flags: 2,
                count: 5,
                semaphore: true,
            },
            FdKind::TimerFd {
                flags: 2,
                clock: 1,
                value_ns: 4_000_000,
                interval_ns: 5_000_000,
                ticks: 2,
            },
            FdKind::SignalFd {
                flags: 2,
                mask: 1 << 9,
            },
            FdKind::Epoll {
                flags: 2,
                watches: [5, 7, 8]
                    .map(|fd| EpollWatch {
                        fd,
                        events: 1,
                        data: fd as u64,
                    })
                    .to_vec(),
            },
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            img.files.fds.push(Fd {
                number: 5 + i as i32,
                cloexec: true,
                kind,
                dup_of: None,
            });
        }
        img
    }

    #[test]
    fn accepts_kernel_objects() {
        let img = with_objects();
        validate(&img).unwrap();
        for fd in &img.files.fds[3..] {
            assert!(!fd.kind.is_file());
            assert_eq!(fd.kind.path(), "");
        }
        assert_eq!(img.files.fds[3].kind.flags(), 0o4000);
    }

    #[test]
    fn rejects_bad_kernel_objects() {
        let bad = |f: &dyn Fn(&mut ProcessImage)| {
            let mut img = with_objects();
            f(&mut img);
            validate(&img).unwrap_err().to_string()
        };
        let e = bad(&|i| i.files.fds[4].kind = pipe_end(true, b"x"));
        assert!(
            e.contains("fd 6: data carried on a pipe's write end"),
            "{e}"
        );
        let e = bad(&|i| {
            i.files.fds.push(Fd {
                number: 11,
                cloexec: false,
                kind: pipe_end(false, b"other bytes"),
                dup_of: None,
            })
        });
        assert!(e.contains("ends of one pipe that disagree"), "{e}");
        let e = bad(&|i| {
            if let FdKind::Pipe { capacity, .. } = &mut i.files.fds[3].kind {
                *capacity = 4;
            }
        });
        assert!(e.contains("pipe capacity of 4 bytes"), "{e}");
        let e = bad(&|i| {
            if let FdKind::Pipe { capacity, data, .. } = &mut i.files.fds[3].kind {
                *capacity = 4096;
                *data = vec![0; 4097];
            }
        });
        assert!(e.contains("4097 bytes in a pipe of 4096"), "{e}");
        let e = bad(&|i| {
            if let FdKind::TimerFd { clock, .. } = &mut i.files.fds[6].kind {
                *clock = 3;
            }
        });
        assert!(e.contains("timerfd on clock 3"), "{e}");
        let e = bad(&|i| {
            if let FdKind::EventFd { count, .. } = &mut i.files.fds[5].kind {
                *count = u64::MAX;
            }
        });
        assert!(e.contains("eventfd count"), "{e}");
        let e = bad(&|i| {
            if let FdKind::Epoll { watches, .. } = &mut i.files.fds[8].kind {
                watches[0].fd = 99;
            }
        });
        assert!(
            e.contains("epoll registration of fd 99, which the image does not hold"),
            "{e}"
        );
        let e = bad(&|i| {
            if let FdKind::Epoll { watches, .. } = &mut i.files.fds[8].kind {
                watches[1].fd = 5;
            }
        });
        assert!(e.contains("fd 5 registered twice"), "{e}");
        let memfd = |name: &str, len: usize| FdKind::MemFd {
            name: name.into(),
            flags: 2,
            pos: 0,
            seals: 1,
            data: vec![0; len],
        };
        let push = |i: &mut ProcessImage, kind: FdKind| {
            i.files.fds.push(Fd {
                number: 20,
                cloexec: false,
                kind,
                dup_of: None,
            })
        };
        let mut ok = with_objects();
        push(&mut ok, memfd("a/b c", MAX_CARRIED_BYTES));
        validate(&ok).unwrap();
        let e = bad(&|i| push(i, memfd("x", MAX_CARRIED_BYTES + 1)));
        assert!(e.contains("fd 20: memfd of 16777217 bytes"), "{e}");
        let e = bad(&|i| push(i, memfd("nul\0", 1)));
        assert!(e.contains("fd 20: memfd name"), "{e}");
        let e = bad(&|i| push(i, memfd(&"n".repeat(MAX_MEMFD_NAME + 1), 1)));
        assert!(e.contains("fd 20: memfd name"), "{e}");
        let deleted = |path: &str, len: usize| FdKind::DeletedFile {
            path: path.into(),
            flags: 2,
            pos: 0,
            mode: 0o600,
            data: vec![0; len],
        };
        let mut ok = with_objects();
        push(&mut ok, deleted("/tmp/x", MAX_CARRIED_BYTES));
        validate(&ok).unwrap();
        let e = bad(&|i| push(i, deleted("/tmp/x", MAX_CARRIED_BYTES + 1)));
        assert!(e.contains("fd 20: deleted file of 16777217 bytes"), "{e}");
        let e = bad(&|i| push(i, deleted("tmp/x", 1)));
        assert!(e.contains("not absolute"), "{e}");
        let e = bad(&|i| push(i, deleted("/", 1)));
        assert!(e.contains("has no directory"), "{e}");
    }

    #[test]
    fn rejects_truncating_flags() {
        let e = invalid(|i| {
            if let FdKind::Regular { flags, .. } = &mut i.files.fds[0].kind {
                *flags |= 0o1000;
            }
        });
        assert!(e.contains("O_TRUNC"), "{e}");
    }

    #[test]
    fn rejects_sigkill_disposition_and_bad_siginfo() {
        let e = invalid(|i| i.signals.actions[0].signo = 9);
        assert!(e.contains("disposition for signal 9"), "{e}");
        let e = invalid(|i| i.signals.pending[0].siginfo.truncate(10));
        assert!(e.contains("pending siginfo"), "{e}");
    }

    #[test]
    fn rejects_compat_mode_registers() {
        let e = invalid(|i| i.execution.regs.cs = 0x23);
        assert!(e.contains("64-bit user process"), "{e}");
    }

    #[test]
    fn rejects_split_vdso() {
        let e = invalid(|i| {
            let idx = i
                .memory
                .vmas
                .iter()
                .position(|v| v.backing == Backing::VvarVclock)
                .unwrap();
            i.memory.vmas.remove(idx);
        });
        assert!(e.contains("vDSO area"), "{e}");
    }

    #[test]
    fn rejects_escalating_capabilities() {
        let e = invalid(|i| i.credentials.caps.effective = 1);
        assert!(e.contains("exceed permitted"), "{e}");
    }

    #[test]
    fn socket_pairs() {
        let end = |number, socket, peer, data: &[u8]| Fd {
            number,
            cloexec: true,
            kind: FdKind::UnixPair {
                socket,
                peer,
                kind: SocketKind::Stream,
                flags: 0o4002,
                pass_credentials: false,
                send_buffer: 212992,
                messages: if data.is_empty() {
                    Vec::new()
                } else {
                    vec![data.to_vec()]
                },
            },
            dup_of: None,
        };
        let mut ok = sample_image();
        ok.files.fds.push(end(4, 100, 101, b"queued"));
        ok.files.fds.push(end(5, 101, 100, b""));
        let mut dup = end(6, 101, 100, b"");
        dup.dup_of = Some(5);
        ok.files.fds.push(dup);
        validate(&ok).unwrap();
        let bad = |f: &dyn Fn(&mut ProcessImage)| {
            let mut i = ok.clone();
            f(&mut i);
            validate(&i).unwrap_err().to_string()
        };
        // The other end missing, or naming a third socket.
        assert!(
            bad(&|i| i.files.fds.retain(|f| f.number != 5 && f.number != 6)).contains("peer 101")
        );
        assert!(bad(&|i| i.files.fds[4] = end(5, 101, 102, b"")).contains("peer"));
        assert!(bad(&|i| i.files.fds.push(end(7, 100, 101, b""))).contains("two fds"));
        assert!(bad(&|i| i.files.fds.push(end(7, 103, 103, b""))).contains("paired with itself"));
        let big = vec![0u8; MAX_CARRIED_BYTES + 1];
        assert!(bad(&|i| i.files.fds[3] = end(4, 100, 101, &big)).contains("queued in a socket"));
        // A stream's bytes are one message; the two ends are of one type.
        let set = |i: &mut ProcessImage, n: usize, k: SocketKind, m: Vec<Vec<u8>>| {
            if let FdKind::UnixPair { kind, messages, .. } = &mut i.files.fds[n].kind {
                *kind = k;
                *messages = m;
            }
        };
        let two = vec![b"a".to_vec(), b"b".to_vec()];
        assert!(bad(&|i| set(i, 3, SocketKind::Stream, two.clone())).contains("as 2 messages"));
        assert!(bad(&|i| set(i, 3, SocketKind::Datagram, two.clone())).contains("peer"));
        let mut dgram = ok.clone();
        for n in 3..=5 {
            set(&mut dgram, n, SocketKind::Datagram, Vec::new());
        }
        set(
            &mut dgram,
            3,
            SocketKind::Datagram,
            vec![Vec::new(), b"x".to_vec()],
        );
        validate(&dgram).unwrap();
        // The old form never reaches validation.
        assert!(
            bad(&|i| i.files.fds[3].kind = FdKind::UnixStream {
                socket: 100,
                peer: 101,
                flags: 2,
                data: Vec::new()
            })
            .contains("format 1.2")
        );
    }

    #[test]
    fn inotify_watches() {
        let watch = |wd, path: &str| InotifyWatch {
            wd,
            path: path.into(),
            mask: 0x100,
        };
        let mut ok = sample_image();
        ok.files.fds.push(Fd {
            number: 4,
            cloexec: true,
            kind: FdKind::Inotify {
                flags: 0,
                watches: vec![watch(2, "/tmp"), watch(3, "/tmp/x")],
            },
            dup_of: None,
        });
        validate(&ok).unwrap();
        let bad = |w: Vec<InotifyWatch>| {
            let mut i = ok.clone();
            i.files.fds[3].kind = FdKind::Inotify {
                flags: 0,
                watches: w,
            };
            validate(&i).unwrap_err().to_string()
        };
        assert!(bad(vec![watch(3, "/a"), watch(2, "/b")]).contains("after 3"));
        assert!(bad(vec![watch(0, "/a")]).contains("descriptor 0"));
        assert!(bad(vec![watch(MAX_INOTIFY_WD + 1, "/a")]).contains("descriptor"));
        assert!(bad(vec![watch(1, "a")]).contains("not absolute"));
        let mut none = watch(1, "/a");
        none.mask = 0;
        assert!(bad(vec![none]).contains("no events"));
    }

    #[test]
    fn fifos_and_proc_files() {
        let mut ok = sample_image();
        let fd = |number, kind| Fd {
            number,
            cloexec: false,
            kind,
            dup_of: None,
        };
        let fifo = |flags, data: &[u8]| FdKind::Fifo {
            path: "/tmp/f".into(),
            flags,
            capacity: 65536,
            data: data.to_vec(),
        };
        let proc_file = |path: &str| FdKind::ProcFile {
            path: path.into(),
            directory: false,
            flags: 0,
            pos: 0,
        };
        ok.files.fds.push(fd(4, fifo(0, b"in flight")));
        ok.files.fds.push(fd(5, proc_file("self/status")));
        validate(&ok).unwrap();
        let bad = |n: usize, kind: FdKind| {
            let mut i = ok.clone();
            i.files.fds[n].kind = kind;
            validate(&i).unwrap_err().to_string()
        };
        assert!(bad(3, fifo(1, b"x")).contains("write-only end"));
        assert!(
            bad(
                3,
                FdKind::Fifo {
                    path: "/tmp/f".into(),
                    flags: 0,
                    capacity: 4096,
                    data: vec![0; 4097]
                }
            )
            .contains("bytes in a FIFO")
        );
        for p in ["", "/etc/passwd", "self/../../etc", "self//x", "./x"] {
            assert!(bad(4, proc_file(p)).contains("/proc path"), "{p}");
        }
    }

    #[test]
    fn an_init_of_its_own_pid_namespace_is_pid_1() {
        let mut image = sample_image();
        image.pid_namespace = Some(crate::model::PidNamespace { host_pid: 900 });
        image.control.pid = 1;
        image.control.ppid = 0;
        validate(&image).unwrap();
        image.control.pid = 7;
        let err = validate(&image).unwrap_err().to_string();
        assert!(err.contains("pid 7 (parent 0) as the init"), "{err}");
    }

    fn with_thread(tid: i32) -> ProcessImage {
        let mut img = sample_image();
        let mut siginfo = vec![0u8; 128];
        siginfo[0] = 12;
        img.threads.push(Thread {
            tid,
            comm: "worker-0".into(),
            execution: img.execution.clone(),
            blocked: 1 << 9,
            pending: vec![PendingSignal {
                shared: false,
                siginfo,
            }],
        });
        img
    }

    #[test]
    fn threads() {
        let ok = with_thread(4243);
        validate(&ok).unwrap();
        let bad = |f: &dyn Fn(&mut ProcessImage)| {
            let mut i = ok.clone();
            f(&mut i);
            validate(&i).unwrap_err().to_string()
        };
        assert!(bad(&|i| i.threads[0].tid = 4242).contains("thread id 4242 twice"));
        assert!(bad(&|i| i.threads[0].tid = 0).contains("thread id 0"));
        assert!(
            bad(&|i| {
                let t = i.threads[0].clone();
                i.threads.push(t)
            })
            .contains("thread id 4243 twice")
        );
        assert!(bad(&|i| i.threads[0].comm = "x".repeat(16)).contains("longer than 15"));
        assert!(bad(&|i| i.threads[0].pending[0].shared = true).contains("whole process"));
        assert!(bad(&|i| i.threads[0].pending[0].siginfo[0] = 65).contains("pending signal 65"));
        assert!(bad(&|i| i.threads[0].execution.xstate.push(0)).contains("thread 4243: XSAVE"));
        assert!(bad(&|i| i.threads[0].execution.regs.cs = 0x23).contains("thread 4243: segment"));
    }

    #[test]
    fn platform_checks() {
        let img = sample_image().origin.platform;
        img.check_runs_on(&img).unwrap();
        let mut other = img.clone();
        other.kernel_release = "5.10.0".into();
        assert_eq!(
            img.check_runs_on(&other).unwrap_err().to_string(),
            format!(
                "the image was taken on kernel {}, this host runs 5.10.0",
                img.kernel_release
            )
        );
        let mut other = img.clone();
        other.arch = "aarch64".into();
        assert!(matches!(
            img.check_runs_on(&other),
            Err(PlatformMismatch::Arch { .. })
        ));
        let mut other = img.clone();
        other.vdso.as_mut().unwrap().code_hash ^= 1;
        assert_eq!(img.check_runs_on(&other), Err(PlatformMismatch::Vdso));
        let mut other = img.clone();
        other.xsave.features &= !0xe0;
        assert!(matches!(
            img.check_runs_on(&other),
            Err(PlatformMismatch::Xsave { .. })
        ));
    }
}
