//! Which processes ferry can move, and why not.
//!
//! Every refusal carries a reason a user can act on ("fd 1 is a pipe shared with pid 812"). The
//! checks run twice: before the process is touched, and again once it is frozen (threads and
//! files may appear in between).

use std::os::unix::ffi::OsStrExt;

use ferry_image::{Backing, FdKind, FileIdentity, MAX_CARRIED_BYTES, UnnamedOrigin};
use ferry_sys::libc;
use ferry_sys::proc::{self, Mapping, OpenFd};
use ferry_sys::{Pid, host};

use crate::CheckpointError;
use crate::objects::{Depth, FdScan};

pub(crate) fn refuse(pid: Pid, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::NotMigratable {
        pid: pid.as_raw(),
        reason: reason.into(),
    }
}

const PF_KTHREAD: u32 = 0x0020_0000;

/// Checks that need no ptrace: existence, permission, kind of process, threads, terminal,
/// namespaces. Run before anything touches the process.
pub fn preflight(pid: Pid) -> Result<(), CheckpointError> {
    preflight_checks(pid, true)
}

/// [`preflight`] for a member of a process tree below its root: it may be any process of
/// the root's PID namespace.
pub(crate) fn preflight_member(pid: Pid) -> Result<(), CheckpointError> {
    preflight_checks(pid, false)
}

fn preflight_checks(pid: Pid, root: bool) -> Result<(), CheckpointError> {
    let me = host::self_pid();
    if pid == me {
        return Err(refuse(pid, "ferry cannot checkpoint itself"));
    }
    let stat = proc::stat(pid).map_err(|_| CheckpointError::NoSuchProcess { pid: pid.as_raw() })?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(refuse(pid, "it is a kernel thread"));
    }
    match stat.state {
        'Z' if stat.num_threads > 1 => {
            return Err(refuse(
                pid,
                format!(
                    "its main thread has exited ({} other threads run on)",
                    stat.num_threads - 1
                ),
            ));
        }
        'Z' => return Err(refuse(pid, "it is a zombie (exited, not yet reaped)")),
        'X' | 'x' => return Err(refuse(pid, "it is exiting")),
        _ => {}
    }
    let status = proc::status(pid).map_err(CheckpointError::sys("reading status"))?;
    let euid = host::euid();
    if euid != 0 && (status.ruid != euid || status.euid != euid || status.suid != euid) {
        return Err(CheckpointError::PermissionDenied {
            pid: pid.as_raw(),
            detail: format!(
                "pid {pid} belongs to uid {}; only root or its owner may checkpoint it",
                status.ruid
            ),
        });
    }
    if status.tracerpid != 0 {
        return Err(refuse(
            pid,
            format!("it is already traced by pid {}", status.tracerpid),
        ));
    }
    if stat.tty_nr != 0 {
        return Err(refuse(
            pid,
            format!(
                "it has a controlling terminal (tty {}:{})",
                (stat.tty_nr >> 8) & 0xfff,
                (stat.tty_nr & 0xff) | ((stat.tty_nr >> 12) & 0xfff00)
            ),
        ));
    }
    if let Some(mode) = status.seccomp
        && mode != 0
    {
        return Err(refuse(pid, "it runs under a seccomp filter"));
    }
    // A PID namespace of its own, of which it is the init, moves with it.
    if root {
        crate::pidns::check(pid)?;
    }
    for ns in ["mnt", "user"] {
        let theirs = proc::stat_link(pid, &format!("ns/{ns}")).ok();
        let ours = proc::stat_link(me, &format!("ns/{ns}")).ok();
        if theirs.map(|s| s.inode) != ours.map(|s| s.inode) {
            return Err(refuse(
                pid,
                format!("it lives in another {ns} namespace than ferry"),
            ));
        }
    }
    let root = proc::readlink(pid, "root").map_err(CheckpointError::sys("reading root"))?;
    if root != b"/" {
        return Err(refuse(
            pid,
            format!("it is chrooted to {}", String::from_utf8_lossy(&root)),
        ));
    }
    let timers = proc::read_text(pid, "timers").unwrap_or_default();
    if !timers.is_empty() {
        return Err(refuse(pid, "it has POSIX timers (timer_create)"));
    }
    check_threads(pid, &status)
}

/// Refuses a process with children (living or not yet reaped), for a capture of one process:
/// children left behind would lose their parent (and it them). A process that has children
/// when a checkpoint or migration begins moves with them, as a tree ([`crate::tree`]); this
/// catches children born after that.
pub fn check_no_children(pid: Pid) -> Result<(), CheckpointError> {
    let children = proc::children(pid).map_err(CheckpointError::sys("listing children"))?;
    let Some(&child) = children.first() else {
        return Ok(());
    };
    let comm = proc::read_text(child, "comm").unwrap_or_default();
    Err(refuse(
        pid,
        format!(
            "it started {} child process{} (pid {child} {comm}{}) after ferry looked at it; try again, and its tree moves whole",
            children.len(),
            if children.len() == 1 { "" } else { "es" },
            if children.len() > 1 { ", …" } else { "" }
        ),
    ))
}

/// Every descendant of `pid` (as far as they can be listed): the processes that move with
/// it.
pub fn descendants(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        let children = proc::children(p).unwrap_or_default();
        out.extend(children.iter().copied());
        next.extend(children);
    }
    out
}

/// Checks that must hold while the process is frozen (threads may have appeared since the
/// preflight).
pub fn frozen_checks(pid: Pid) -> Result<(), CheckpointError> {
    let status = proc::status(pid).map_err(CheckpointError::sys("reading status"))?;
    check_threads(pid, &status)
}

/// Every thread other than the main one must share what ferry captures once per process:
/// credentials and `no_new_privs` (restore gives each thread the main thread's), and none may
/// run under seccomp. `main` is the main thread's status.
fn check_threads(pid: Pid, main: &proc::Status) -> Result<(), CheckpointError> {
    if main.threads <= 1 {
        return Ok(());
    }
    let tids = proc::thread_ids(pid).map_err(CheckpointError::sys("listing threads"))?;
    let creds = |s: &proc::Status| {
        (
            [s.ruid, s.euid, s.suid, s.fuid],
            [s.rgid, s.egid, s.sgid, s.fgid],
            s.groups.clone(),
            [
                s.capinh,
                s.capprm,
                s.capeff,
                s.capbnd.unwrap_or(0),
                s.capamb.unwrap_or(0),
            ],
            s.nonewprivs,
        )
    };
    let want = creds(main);
    for tid in tids.into_iter().filter(|&t| t != pid) {
        // A thread that exited since the listing has nothing to check.
        let Ok(status) = proc::thread_status(pid, tid) else {
            continue;
        };
        if status.seccomp.is_some_and(|m| m != 0) {
            return Err(refuse(
                pid,
                format!("its thread {tid} runs under a seccomp filter"),
            ));
        }
        if creds(&status) != want {
            return Err(refuse(
                pid,
                format!(
                    "its thread {tid} has other credentials than its main thread (uid {}, gid {})",
                    status.euid, status.egid
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn utf8(pid: Pid, what: &str, bytes: &[u8]) -> Result<String, CheckpointError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        refuse(
            pid,
            format!(
                "{what} has a path that is not valid UTF-8 ({})",
                String::from_utf8_lossy(bytes)
            ),
        )
    })
}

const DEVICES: [(&str, u32, u32); 4] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
];

/// Classifies an open fd of a frozen process with its whole state: a supported kind, or the
/// reason it pins the process. An fd that `opts.links` names is a link to the ferry message
/// service ([`FdKind::Link`]) if it is a socket, and refused if it is not.
pub fn classify_fd(
    pid: Pid,
    fd: &OpenFd,
    opts: &Options,
    scan: &FdScan<'_>,
) -> Result<FdKind, CheckpointError> {
    classify_fd_to(pid, fd, opts, Depth::State, scan)?.ok_or_else(|| CheckpointError::Sys {
        step: format!("reading fd {}", fd.fd),
        source: ferry_sys::SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: "a kernel object's state was not read".into(),
        },
    })
}

/// The checks of [`classify_fd`] on a running process: kernel objects are judged by their
/// kind only (`None`), since reading their state takes locks the process may hold.
fn check_fd(
    pid: Pid,
    fd: &OpenFd,
    opts: &Options,
    scan: &FdScan<'_>,
) -> Result<(), CheckpointError> {
    classify_fd_to(pid, fd, opts, Depth::Kind, scan).map(|_| ())
}

fn classify_fd_to(
    pid: Pid,
    fd: &OpenFd,
    opts: &Options,
    depth: Depth,
    scan: &FdScan<'_>,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let target = String::from_utf8_lossy(&fd.target).into_owned();
    if let Some(link) = opts.link(n) {
        return classify_link(pid, fd, link, &target).map(Some);
    }
    let unsupported = |what: &str| refuse(pid, format!("fd {n} is {what} ({target})"));
    if fd.flags & libc::O_ASYNC != 0 {
        return Err(refuse(
            pid,
            format!("fd {n} ({target}) uses O_ASYNC signal I/O"),
        ));
    }
    if target.starts_with("socket:") {
        return crate::objects::classify_socket(pid, fd, &target, depth, scan, &opts.tree);
    }
    if target.starts_with("pipe:") || target.starts_with("anon_inode:") {
        return crate::objects::classify(pid, fd, &target, depth);
    }
    if target.starts_with("/memfd:") {
        return crate::objects::classify_memfd(pid, fd, &target, depth);
    }
    if !target.starts_with('/') {
        return Err(unsupported("not a file"));
    }
    let Some(st) = fd.stat else {
        return Err(refuse(pid, format!("fd {n} ({target}) cannot be examined")));
    };
    let path = utf8(pid, &format!("fd {n}"), &fd.target)?;
    // O_CLOEXEC is carried separately.
    let flags = fd.flags & !libc::O_CLOEXEC;
    if let Some(below) = path.strip_prefix("/proc/") {
        return proc_file(pid, n, below, flags, fd.pos, &st).map(Some);
    }
    match st.file_type() {
        libc::S_IFREG => {
            if st.nlink == 0 || path.ends_with(" (deleted)") {
                return crate::objects::classify_deleted(pid, fd, &path, &st, depth);
            }
            Ok(Some(FdKind::Regular {
                path,
                flags,
                pos: fd.pos,
                identity: FileIdentity {
                    dev: st.dev,
                    inode: st.inode,
                    size: st.size,
                    mtime_ns: st.mtime_ns,
                },
            }))
        }
        libc::S_IFDIR => Ok(Some(FdKind::Directory {
            path,
            flags,
            pos: fd.pos,
        })),
        libc::S_IFCHR => {
            let (maj, min) = (host::dev_major(st.rdev), host::dev_minor(st.rdev));
            if DEVICES.iter().any(|&(_, a, b)| a == maj && b == min) {
                Ok(Some(FdKind::CharDevice {
                    path,
                    flags,
                    major: maj,
                    minor: min,
                }))
            } else if maj == 4 || maj == 5 || (136..=143).contains(&maj) {
                Err(unsupported("a terminal"))
            } else {
                Err(unsupported("a character device"))
            }
        }
        libc::S_IFIFO => crate::objects::classify_fifo(pid, fd, &path, depth),
        libc::S_IFSOCK => Err(unsupported("a socket")),
        libc::S_IFBLK => Err(unsupported("a block device")),
        _ => Err(unsupported("of an unknown kind")),
    }
}

/// Fd `n`, a file of `/proc` at `below` (the path after `/proc/`): a file of the process
/// itself is carried as `self/…` (its pid changes), of its main thread as `thread-self/…`;
/// one of another process or of another thread pins it (restore could not name it).
fn proc_file(
    pid: Pid,
    n: i32,
    below: &str,
    flags: i32,
    pos: u64,
    st: &ferry_sys::proc::LinkStat,
) -> Result<FdKind, CheckpointError> {
    let (first, rest) = below.split_once('/').unwrap_or((below, ""));
    let path = match first.parse::<i32>() {
        Err(_) => below.to_string(),
        Ok(p) if p != pid.as_raw() => {
            let ours =
                ferry_sys::proc::thread_ids(pid).is_ok_and(|tids| tids.contains(&Pid::from_raw(p)));
            let whose = if ours {
                format!("thread {p} of the process")
            } else {
                format!("process {p}")
            };
            return Err(refuse(
                pid,
                format!("fd {n} is a /proc file of {whose} (/proc/{below})"),
            ));
        }
        Ok(_) => {
            let main_thread = format!("task/{}", pid.as_raw());
            match rest.strip_prefix(&main_thread) {
                Some(t) if t.is_empty() || t.starts_with('/') => {
                    format!("thread-self{t}")
                }
                _ if rest.starts_with("task/") => {
                    return Err(refuse(
                        pid,
                        format!(
                            "fd {n} is a /proc file of one of the process's threads (/proc/{below}); thread ids change"
                        ),
                    ));
                }
                _ if rest.is_empty() => "self".to_string(),
                _ => format!("self/{rest}"),
            }
        }
    };
    Ok(FdKind::ProcFile {
        path,
        directory: st.file_type() == libc::S_IFDIR,
        flags,
        pos,
    })
}

/// A listed link fd: the socket the daemon says it is, in a state restore can reproduce.
fn classify_link(
    pid: Pid,
    fd: &OpenFd,
    link: &LinkFd,
    target: &str,
) -> Result<FdKind, CheckpointError> {
    let n = fd.fd;
    if let Err(e) = ferry_image::validate::check_link(n, &link.socket, &link.hello) {
        return Err(refuse(pid, format!("invalid link: {}", e.0)));
    }
    if !target.starts_with("socket:") {
        return Err(refuse(
            pid,
            format!(
                "fd {n} is listed as a link to the ferry message service @{} but is not a socket ({target})",
                link.socket
            ),
        ));
    }
    // Restore creates a blocking socket with no signal I/O: refuse what it would not keep.
    for (flag, what) in [
        (libc::O_NONBLOCK, "non-blocking (O_NONBLOCK)"),
        (libc::O_ASYNC, "in O_ASYNC signal I/O mode"),
    ] {
        if fd.flags & flag != 0 {
            return Err(refuse(
                pid,
                format!(
                    "fd {n} (link @{}) is {what}, which a restored link does not keep",
                    link.socket
                ),
            ));
        }
    }
    Ok(FdKind::Link {
        socket: link.socket.clone(),
        hello: link.hello.clone(),
    })
}

/// Fails if an fd holds a file lock (fdinfo `lock:` lines): locks do not travel.
pub fn check_locks(pid: Pid, fd: i32) -> Result<(), CheckpointError> {
    let info = proc::read_text(pid, &format!("fdinfo/{fd}")).unwrap_or_default();
    if info.lines().any(|l| l.starts_with("lock:")) {
        return Err(refuse(pid, format!("fd {fd} holds a file lock")));
    }
    Ok(())
}

/// What a mapping is backed by, `None` for mappings that are not part of the image
/// (`[vsyscall]`), or the reason it pins the process.
pub fn classify_mapping(
    pid: Pid,
    m: &Mapping,
    opts: &Options,
) -> Result<Option<(Backing, Option<String>)>, CheckpointError> {
    let at = m.start;
    let path = m.path.as_slice();
    // The kernel's own special mappings are recreated, not copied; their flags (VM_IO and
    // VM_PFNMAP for [vvar]) are the kernel's business.
    match path {
        b"[vsyscall]" => return Ok(None),
        b"[vvar]" => return Ok(Some((Backing::Vvar, None))),
        b"[vvar_vclock]" => return Ok(Some((Backing::VvarVclock, None))),
        b"[vdso]" => return Ok(Some((Backing::Vdso, None))),
        _ => {}
    }
    for (flag, why) in [
        ("io", "a device (I/O) mapping"),
        ("pf", "a raw PFN mapping"),
        ("ht", "a hugetlb mapping"),
        ("ss", "a shadow stack"),
        ("um", "registered with userfaultfd"),
        ("uw", "registered with userfaultfd"),
    ] {
        if m.has_flag(flag) && !(opts.own_write_protect && flag == "uw") {
            return Err(refuse(pid, format!("the mapping at {at:#x} is {why}")));
        }
    }
    let backing = match path {
        b"" => Backing::Anonymous,
        b"[heap]" => Backing::Heap,
        b"[stack]" => Backing::Stack,
        b"/dev/zero (deleted)" if m.shared && m.dev_major == 0 => Backing::SharedAnonymous,
        p if p.starts_with(b"[anon:") && p.ends_with(b"]") => {
            let name = utf8(pid, &format!("mapping {at:#x}"), &p[6..p.len() - 1])?;
            return Ok(Some((
                if m.shared {
                    Backing::SharedAnonymous
                } else {
                    Backing::Anonymous
                },
                Some(name),
            )));
        }
        p if p.starts_with(b"[anon_shmem:") && p.ends_with(b"]") => {
            let name = utf8(pid, &format!("mapping {at:#x}"), &p[12..p.len() - 1])?;
            return Ok(Some((Backing::SharedAnonymous, Some(name))));
        }
        p if p.starts_with(b"/SYSV") => {
            // Its segment moves with the job whose IPC namespace holds it.
            if !crate::ipcns::has_own_namespace(pid)? || !crate::pidns::in_job(pid)? {
                return Err(refuse(
                    pid,
                    format!(
                        "the mapping at {at:#x} is SysV shared memory of an IPC namespace it shares with processes that stay; SysV memory moves with a `ferry run` job, whose IPC namespace is its own"
                    ),
                ));
            }
            if m.offset != 0 {
                return Err(refuse(
                    pid,
                    format!("the mapping at {at:#x} is part of a SysV shared memory segment"),
                ));
            }
            Backing::SysvShm {
                id: i32::try_from(m.inode).map_err(|_| {
                    refuse(
                        pid,
                        format!("the SysV segment at {at:#x} has id {}", m.inode),
                    )
                })?,
                read_only: !m.has_flag("mw"),
            }
        }
        p if p.starts_with(b"/memfd:") => unnamed_mapping(pid, m, true)?,
        p if p.starts_with(b"[") => {
            return Err(refuse(
                pid,
                format!(
                    "the mapping at {at:#x} is the special mapping {}",
                    String::from_utf8_lossy(p)
                ),
            ));
        }
        p if p.ends_with(b" (deleted)") && p.starts_with(b"/") => unnamed_mapping(pid, m, false)?,
        p if p.starts_with(b"/") => {
            let file = utf8(pid, &format!("mapping {at:#x}"), p)?;
            let st = proc::stat_path(std::path::Path::new(std::ffi::OsStr::from_bytes(p)))
                .map_err(|_| {
                    refuse(
                        pid,
                        format!(
                            "the file mapped at {at:#x} ({file}) is no longer reachable by its path"
                        ),
                    )
                })?;
            let want_dev = host::makedev(m.dev_major, m.dev_minor);
            if st.inode != m.inode || st.dev != want_dev {
                return Err(refuse(
                    pid,
                    format!("the file mapped at {at:#x} ({file}) was replaced since it was mapped"),
                ));
            }
            if st.file_type() != libc::S_IFREG {
                return Err(refuse(
                    pid,
                    format!("the mapping at {at:#x} is of a non-regular file ({file})"),
                ));
            }
            Backing::File {
                path: file,
                offset: m.offset,
                identity: FileIdentity {
                    dev: st.dev,
                    inode: st.inode,
                    size: st.size,
                    mtime_ns: st.mtime_ns,
                },
            }
        }
        other => {
            return Err(refuse(
                pid,
                format!(
                    "the mapping at {at:#x} ({}) is of an unknown kind",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    Ok(Some((backing, None)))
}

/// A mapping of a memfd or of a deleted file: its origin, read through
/// `/proc/PID/map_files` (its bytes are read by the capture, for the first mapping of each
/// file). Refused above [`MAX_CARRIED_BYTES`] or for anything but a regular file.
fn unnamed_mapping(pid: Pid, m: &Mapping, memfd: bool) -> Result<Backing, CheckpointError> {
    let at = m.start;
    let shown = String::from_utf8_lossy(&m.path).into_owned();
    let file = proc::open_mapped_file(pid, m.start, m.end).map_err(CheckpointError::sys(
        format!("opening the file mapped at {at:#x}"),
    ))?;
    let st = file
        .metadata()
        .map_err(|e| refuse(pid, format!("the file mapped at {at:#x} ({shown}): {e}")))?;
    if !st.is_file() || st.len() > MAX_CARRIED_BYTES as u64 {
        return Err(refuse(
            pid,
            format!(
                "the mapping at {at:#x} is of a file without a name ({shown}) of {} bytes; ferry carries regular files up to {} MiB",
                st.len(),
                MAX_CARRIED_BYTES >> 20
            ),
        ));
    }
    let name = shown.strip_suffix(" (deleted)").unwrap_or(&shown);
    let origin = if memfd {
        UnnamedOrigin::MemFd {
            name: name.trim_start_matches("/memfd:").to_string(),
            seals: ferry_sys::kobj::memfd_seals(&file, pid)
                .map_err(CheckpointError::sys("reading a memfd's seals"))?,
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        UnnamedOrigin::Deleted {
            path: name.to_string(),
            mode: st.permissions().mode() & 0o7777,
        }
    };
    Ok(Backing::UnnamedFile {
        file: m.inode,
        offset: m.offset,
        origin,
        data: Vec::new(),
        fd: None,
    })
}

/// Exceptions to the rules, for ferry's own use.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Mappings write-protected with userfaultfd are ferry's own dirty tracking (pre-copy):
    /// not a reason to refuse.
    pub own_write_protect: bool,
    /// The process's connections to the local daemon's message service (the daemon knows
    /// them): captured as [`FdKind::Link`], where any other socket is refused.
    pub links: Vec<LinkFd>,
    /// The other processes of the tree being captured with this one (its parent, children,
    /// siblings): pipes, open files, memfds and deleted files they share with it move with
    /// them.
    pub tree: Vec<Pid>,
}

impl Options {
    /// The link listed for fd `n`, if any.
    pub fn link(&self, n: i32) -> Option<&LinkFd> {
        self.links.iter().find(|l| l.fd == n)
    }
}

/// One fd of the process that is a link: a connected `AF_UNIX` `SOCK_SEQPACKET` socket to
/// the daemon's message service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFd {
    /// The fd number in the process.
    pub fd: i32,
    /// Abstract socket name of the service, without the leading NUL (`ferry-msg`).
    pub socket: String,
    /// The first datagram restore sends on the new connection (at most
    /// [`ferry_image::MAX_LINK_HELLO`] bytes).
    pub hello: Vec<u8>,
}

/// Runs every mapping and fd check (used by the preflight, before freezing).
///
/// Mappings come first: a process whose memory is still served through userfaultfd (a lazy
/// migration's destination) is refused before any of its fds is looked at. Reading its fds'
/// state (fdinfo of an epoll instance, a pipe's size or bytes) takes locks the process may
/// hold while it waits in a page fault for this very daemon to serve it: a deadlock.
pub fn check_resources(pid: Pid, opts: &Options) -> Result<(), CheckpointError> {
    let maps = proc::read_smaps(pid).map_err(CheckpointError::sys("reading mappings"))?;
    for m in &maps {
        classify_mapping(pid, m, opts)?;
    }
    let fds = proc::open_fds(pid).map_err(CheckpointError::sys("listing fds"))?;
    let scan = FdScan::new(&fds);
    for fd in &fds {
        check_fd(pid, fd, opts, &scan)?;
        check_locks(pid, fd.fd)?;
    }
    crate::objects::check_shared_objects(pid, &fds, &opts.tree)
}
