//! Fds that are kernel objects rather than files — pipes, FIFOs, unix socket pairs and
//! listening unix sockets, eventfd,
//! timerfd, signalfd, epoll, inotify, memfd, deleted files: their state, read from `/proc/PID/fdinfo`,
//! from `sock_diag` and from a copy of the fd (`pidfd_getfd`), without changing it (a datagram
//! socket's queue is taken out and put back). Restore creates each object anew
//! (`restore::objects`).
//!
//! A pipe, FIFO or socket pair moves only when no other process holds it: its other end would
//! stay behind. `mobility::classify_fd` dispatches here after its common checks (links,
//! `O_ASYNC`).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_image::{EpollWatch, FdKind, InotifyWatch, MAX_CARRIED_BYTES, SocketKind, SocketName};
use ferry_sys::kobj::{self, Shared};
use ferry_sys::proc::{self, LinkStat, OpenFd};
use ferry_sys::sockdiag::{self, UnixSocket};
use ferry_sys::{Pid, libc, pidfd};

use crate::CheckpointError;
use crate::mobility::{refuse, utf8};

/// The anonymous-inode kinds ferry carries (as `/proc/PID/fd` names them).
const SUPPORTED_ANON: [&str; 5] = ["eventfd", "timerfd", "signalfd", "eventpoll", "inotify"];

/// What judging one process's fds needs once rather than per fd: its fd list, and the unix
/// sockets of ferry's network namespace (one `sock_diag` dump, taken when the first socket
/// fd needs it).
pub struct FdScan<'a> {
    pub open: &'a [OpenFd],
    sockets: OnceCell<HashMap<u64, UnixSocket>>,
}

impl<'a> FdScan<'a> {
    pub fn new(open: &'a [OpenFd]) -> FdScan<'a> {
        FdScan {
            open,
            sockets: OnceCell::new(),
        }
    }

    fn sockets(&self) -> Result<&HashMap<u64, UnixSocket>, CheckpointError> {
        if let Some(all) = self.sockets.get() {
            return Ok(all);
        }
        let all = ferry_sys::sockdiag::unix_sockets()
            .map_err(CheckpointError::sys("listing unix sockets"))?;
        Ok(self.sockets.get_or_init(|| all))
    }
}

/// How much of a kernel object behind an fd to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only whether it can move (its kind, access mode, size): no fdinfo, no copy of the fd.
    /// For a running process, which may hold the locks those reads take.
    Kind,
    /// Its whole state, for the image: the process must be frozen.
    State,
}

/// The state of fd `fd`, a `pipe:[…]` or `anon_inode:[…]` fd (`None` at [`Depth::Kind`]), or
/// the reason it pins the process. Pipe data is read too: the caller must have frozen the
/// process for it to be exact. Whether another process holds a pipe is
/// [`check_shared_objects`]'s question.
pub fn classify(
    pid: Pid,
    fd: &OpenFd,
    target: &str,
    depth: Depth,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let flags = fd.flags & !libc::O_CLOEXEC;
    if target.starts_with("pipe:") {
        return classify_pipe(pid, fd, target, flags, depth);
    }
    let kind = target
        .strip_prefix("anon_inode:")
        .unwrap_or(target)
        .trim_matches(['[', ']']);
    if !SUPPORTED_ANON.contains(&kind) {
        return Err(refuse(pid, format!("fd {n} is {kind} (not supported yet)")));
    }
    if depth == Depth::Kind {
        return Ok(None);
    }
    let info = ferry_sys::proc::read_text(pid, &format!("fdinfo/{n}"))
        .map_err(CheckpointError::sys(format!("reading fdinfo of fd {n}")))?;
    let bad = |what: &str| {
        refuse(
            pid,
            format!("fd {n} ({kind}): the kernel's fdinfo has no usable {what}"),
        )
    };
    match kind {
        "eventfd" => {
            let count = field(&info, "eventfd-count:")
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or_else(|| bad("eventfd-count"))?;
            let semaphore = field(&info, "eventfd-semaphore:")
                .and_then(|v| v.parse::<u8>().ok())
                .ok_or_else(|| bad("eventfd-semaphore"))?;
            Ok(Some(FdKind::EventFd {
                flags,
                count,
                semaphore: semaphore != 0,
            }))
        }
        "timerfd" => {
            let timer = parse_timerfd(&info).ok_or_else(|| bad("timer state"))?;
            Ok(Some(FdKind::TimerFd {
                flags,
                clock: timer.clock,
                value_ns: timer.value_ns,
                interval_ns: timer.interval_ns,
                ticks: timer.ticks,
            }))
        }
        "signalfd" => {
            let mask = field(&info, "sigmask:")
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or_else(|| bad("sigmask"))?;
            Ok(Some(FdKind::SignalFd { flags, mask }))
        }
        "eventpoll" => {
            let watches = parse_epoll(&info).ok_or_else(|| bad("registration list"))?;
            for w in &watches {
                let same = kobj::epoll_watches_file(pid, n, w.fd, w.fd)
                    .map_err(CheckpointError::sys("comparing epoll registrations"))?;
                if !same {
                    return Err(refuse(
                        pid,
                        format!(
                            "fd {n} (epoll) holds a registration made with fd {}, which no longer refers to the registered file",
                            w.fd
                        ),
                    ));
                }
            }
            Ok(Some(FdKind::Epoll { flags, watches }))
        }
        "inotify" => classify_inotify(pid, n, flags, &info).map(Some),
        other => Err(refuse(
            pid,
            format!("fd {n} is {other} (not supported yet)"),
        )),
    }
}

fn classify_pipe(
    pid: Pid,
    fd: &OpenFd,
    target: &str,
    flags: i32,
    depth: Depth,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let inode = pipe_inode(target).ok_or_else(|| {
        refuse(
            pid,
            format!("fd {n} is a pipe of unknown identity ({target})"),
        )
    })?;
    if flags & libc::O_DIRECT != 0 {
        return Err(refuse(
            pid,
            format!("fd {n} is a pipe in packet mode (O_DIRECT), which ferry does not carry"),
        ));
    }
    let write = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => false,
        libc::O_WRONLY => true,
        _ => {
            return Err(refuse(
                pid,
                format!("fd {n} is a pipe opened for reading and writing ({target})"),
            ));
        }
    };
    if depth == Depth::Kind {
        return Ok(None);
    }
    let copy = copy_of_fd(pid, n)?;
    let capacity =
        kobj::pipe_capacity(&copy, pid).map_err(CheckpointError::sys("reading a pipe's size"))?;
    let data = if write {
        Vec::new()
    } else {
        kobj::peek_pipe(&copy, pid).map_err(CheckpointError::sys(format!(
            "reading the data in the pipe of fd {n}"
        )))?
    };
    Ok(Some(FdKind::Pipe {
        pipe: inode,
        write,
        flags,
        capacity,
        data,
    }))
}

/// A memfd at fd `fd` (target `/memfd:NAME (deleted)`): its name, offset, seals and contents
/// (read through a copy of the fd, at most [`MAX_CARRIED_BYTES`]).
pub fn classify_memfd(
    pid: Pid,
    fd: &OpenFd,
    target: &str,
    depth: Depth,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let name = target
        .strip_prefix("/memfd:")
        .and_then(|t| t.strip_suffix(" (deleted)"))
        .unwrap_or_default()
        .to_string();
    let Some(st) = fd.stat.filter(|st| st.file_type() == libc::S_IFREG) else {
        return Err(refuse(pid, format!("fd {n} ({target}) cannot be examined")));
    };
    if fd.flags & libc::O_ACCMODE != libc::O_RDWR {
        return Err(refuse(
            pid,
            format!("fd {n} is a memfd opened read-only or write-only ({target})"),
        ));
    }
    check_carried_size(pid, n, &st, target, "memfd")?;
    if depth == Depth::Kind {
        return Ok(None);
    }
    let copy = std::fs::File::from(copy_of_fd(pid, n)?);
    let seals =
        kobj::memfd_seals(&copy, pid).map_err(CheckpointError::sys("reading a memfd's seals"))?;
    let data = carried_contents(n, &st, target, "memfd", &copy)?;
    Ok(Some(FdKind::MemFd {
        name,
        flags: fd.flags & !libc::O_CLOEXEC,
        pos: fd.pos,
        seals,
        data,
    }))
}

/// A FIFO at fd `fd` (`path` names it): reopened by its path at restore, with its capacity
/// and, on an end that reads, the bytes in flight. Whether another process holds it too is
/// [`check_shared_objects`]'s question.
pub fn classify_fifo(
    pid: Pid,
    fd: &OpenFd,
    path: &str,
    depth: Depth,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let flags = fd.flags & !libc::O_CLOEXEC;
    if flags & libc::O_DIRECT != 0 {
        return Err(refuse(
            pid,
            format!("fd {n} is a FIFO in packet mode (O_DIRECT), which ferry does not carry"),
        ));
    }
    if depth == Depth::Kind {
        return Ok(None);
    }
    let copy = copy_of_fd(pid, n)?;
    let capacity =
        kobj::pipe_capacity(&copy, pid).map_err(CheckpointError::sys("reading a FIFO's size"))?;
    let data = if flags & libc::O_ACCMODE == libc::O_WRONLY {
        Vec::new()
    } else {
        kobj::peek_pipe(&copy, pid).map_err(CheckpointError::sys(format!(
            "reading the data in the FIFO of fd {n}"
        )))?
    };
    Ok(Some(FdKind::Fifo {
        path: path.to_string(),
        flags,
        capacity,
        data,
    }))
}

/// A regular file deleted while open at fd `fd` (`path` as `/proc` shows it, ending in
/// ` (deleted)`): its former path, offset, mode and contents (at most [`MAX_CARRIED_BYTES`]).
pub fn classify_deleted(
    pid: Pid,
    fd: &OpenFd,
    path: &str,
    st: &LinkStat,
    depth: Depth,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let former = path.strip_suffix(" (deleted)").unwrap_or(path).to_string();
    if !former.starts_with('/') || former.len() < 2 {
        return Err(refuse(
            pid,
            format!("fd {n} is a deleted file without a directory ({path})"),
        ));
    }
    check_carried_size(pid, n, st, path, "deleted file")?;
    if depth == Depth::Kind {
        return Ok(None);
    }
    let copy = std::fs::File::from(copy_of_fd(pid, n)?);
    let data = carried_contents(n, st, path, "deleted file", &copy)?;
    Ok(Some(FdKind::DeletedFile {
        path: former,
        flags: fd.flags & !libc::O_CLOEXEC,
        pos: fd.pos,
        mode: st.mode & 0o7777,
        data,
    }))
}

/// Refuses a memfd or deleted file (fd `n`) larger than an image carries.
fn check_carried_size(
    pid: Pid,
    n: i32,
    st: &LinkStat,
    target: &str,
    what: &str,
) -> Result<(), CheckpointError> {
    if st.size > MAX_CARRIED_BYTES as u64 {
        return Err(refuse(
            pid,
            format!(
                "fd {n} is a {what} of {} bytes ({target}); ferry carries at most {} MiB",
                st.size,
                MAX_CARRIED_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

/// The contents of the file at fd `n` (a memfd or a deleted file: no path to reopen it by),
/// read through `copy`, ferry's copy of the fd (its size checked already).
fn carried_contents(
    n: i32,
    st: &LinkStat,
    target: &str,
    what: &str,
    copy: &std::fs::File,
) -> Result<Vec<u8>, CheckpointError> {
    let mut data = vec![0u8; st.size as usize];
    copy.read_exact_at(&mut data, 0)
        .map_err(|e| CheckpointError::Sys {
            step: format!("reading the {what} at fd {n}"),
            source: ferry_sys::SysError::Io {
                path: target.to_string(),
                source: e,
            },
        })?;
    Ok(data)
}

/// A copy of the process's fd `n` in ferry (`pidfd_getfd`).
/// The state of fd `fd`, a `socket:[…]` fd that is no message link: one end of a unix socket
/// pair (stream, datagram or seqpacket) whose other end the process holds too (`None` at
/// [`Depth::Kind`]), with what waits at it; or the reason it pins the process. The queue is
/// read too (a datagram or seqpacket queue taken out and put back, see
/// `kobj::read_unix_messages`): the caller must have frozen the process.
pub fn classify_socket(
    pid: Pid,
    fd: &OpenFd,
    target: &str,
    depth: Depth,
    scan: &FdScan<'_>,
    tree: &[Pid],
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    let socket = object_inode(target, "socket:[")
        .ok_or_else(|| refuse(pid, format!("fd {n} is a socket ({target})")))?;
    let all = scan.sockets()?;
    let Some(s) = all.get(&socket) else {
        return Err(refuse(
            pid,
            format!(
                "fd {n} is a socket other than a unix socket pair (of ferry's network namespace) ({target})"
            ),
        ));
    };
    let Some(kind) = SocketKind::from_number(i32::from(s.kind)) else {
        return Err(refuse(
            pid,
            format!("fd {n} is a unix socket of type {} ({target})", s.kind),
        ));
    };
    if s.state == sockdiag::TCP_LISTEN {
        return classify_listener(pid, fd, socket, s, kind, depth);
    }
    // A connected socket bound to a name (an accepted connection shows its listener's) moves
    // as one end of a pair, without its name; a bound socket that is not connected does not.
    if s.named && s.peer.is_none() {
        return Err(refuse(
            pid,
            format!(
                "fd {n} is a socket bound to a name but not connected ({target}); only listening sockets and connected ones move"
            ),
        ));
    }
    // A socket pair's ends name each other; a datagram socket merely connected to another
    // (which does not name it back) is no pair.
    let peer = s.peer.filter(|p| {
        (s.state == TCP_ESTABLISHED || kind == SocketKind::Datagram)
            && s.shutdown == 0
            && all
                .get(p)
                .is_some_and(|q| q.shutdown == 0 && q.peer == Some(socket))
    });
    let Some(peer) = peer else {
        return Err(refuse(
            pid,
            format!("fd {n} is a socket whose other end was closed or shut down ({target})"),
        ));
    };
    let holds_peer =
        |o: &OpenFd| object_inode(&String::from_utf8_lossy(&o.target), "socket:[") == Some(peer);
    // The other end: in this process, or in another process of the tree moving with it.
    let held = match scan.open.iter().find(|o| holds_peer(o)) {
        Some(o) => Some((pid, o.fd)),
        None => tree.iter().find_map(|&member| {
            let fds = ferry_sys::proc::open_fds(member).ok()?;
            fds.iter().find(|o| holds_peer(o)).map(|o| (member, o.fd))
        }),
    };
    let Some((peer_pid, peer_fd)) = held else {
        let whom = match kobj::holders(&[Shared::Socket(peer)], &[pid])
            .into_iter()
            .next()
        {
            Some((_, other, comm)) => format!("pid {other} ({comm})"),
            None => "a socket outside the process".into(),
        };
        return Err(refuse(
            pid,
            format!(
                "fd {n} is a socket connected to {whom}; it moves only with every process that holds an end"
            ),
        ));
    };
    if depth == Depth::Kind {
        return Ok(None);
    }
    let copy = copy_of_fd(pid, n)?;
    let reading = || format!("reading the data queued at the socket of fd {n}");
    let too_much = |held: String| {
        refuse(
            pid,
            format!(
                "fd {n} is a socket holding {held} (at most {} MiB are carried)",
                MAX_CARRIED_BYTES >> 20
            ),
        )
    };
    let in_flight = || {
        refuse(
            pid,
            format!("fd {n} is a socket with file descriptors or credentials in flight"),
        )
    };
    let messages = if kind == SocketKind::Stream {
        let queue = kobj::peek_unix_stream(&copy, pid, s.rqueue as usize)
            .map_err(CheckpointError::sys(reading()))?;
        if queue.ancillary {
            return Err(in_flight());
        }
        if queue.data.len() > MAX_CARRIED_BYTES {
            return Err(too_much(format!("{} bytes", queue.data.len())));
        }
        if queue.data.is_empty() {
            Vec::new()
        } else {
            vec![queue.data]
        }
    } else {
        let peer_copy = copy_of_fd(peer_pid, peer_fd)?;
        let queue = kobj::read_unix_messages(&copy, &peer_copy, pid, MAX_CARRIED_BYTES)
            .map_err(CheckpointError::sys(reading()))?;
        if queue.ancillary {
            return Err(in_flight());
        }
        if queue.over_budget {
            return Err(too_much(format!(
                "more than {} MiB of messages",
                MAX_CARRIED_BYTES >> 20
            )));
        }
        queue.messages
    };
    let option = |name: i32, what: &str| {
        kobj::socket_option(&copy, pid, libc::SOL_SOCKET, name).map_err(CheckpointError::sys(
            format!("reading {what} of the socket of fd {n}"),
        ))
    };
    Ok(Some(FdKind::UnixPair {
        socket,
        peer,
        kind,
        flags: fd.flags & !libc::O_CLOEXEC,
        pass_credentials: option(libc::SO_PASSCRED, "SO_PASSCRED")? != 0,
        send_buffer: option(libc::SO_SNDBUF, "SO_SNDBUF")?.max(0) as u32,
        messages,
    }))
}

/// The state of listening socket `socket` (`s`) at fd `fd`, or the reason it pins the
/// process: it must have no connection waiting to be accepted (those are sockets no process
/// holds yet), and a path name must be absolute (a relative one names a file relative to a
/// directory the process may have left).
fn classify_listener(
    pid: Pid,
    fd: &OpenFd,
    socket: u64,
    s: &UnixSocket,
    kind: SocketKind,
    depth: Depth,
) -> Result<Option<FdKind>, CheckpointError> {
    let n = fd.fd;
    if s.rqueue > 0 {
        return Err(refuse(
            pid,
            format!(
                "fd {n} is a listening socket with {} connection(s) not accepted yet; try again",
                s.rqueue
            ),
        ));
    }
    let name = match &s.name {
        Some(sockdiag::UnixName::Abstract(bytes)) => SocketName::Abstract(bytes.clone()),
        Some(sockdiag::UnixName::Path(path)) => {
            let path = utf8(pid, &format!("fd {n}'s socket path"), path)?;
            if !path.starts_with('/') {
                return Err(refuse(
                    pid,
                    format!("fd {n} is a socket listening at the relative path {path:?}"),
                ));
            }
            let Some((dev, inode)) = s.file else {
                return Err(refuse(
                    pid,
                    format!("fd {n} is a socket listening at {path}, whose file is unknown"),
                ));
            };
            let st = proc::stat_path(Path::new(&path)).ok();
            if st.is_none_or(|st| (st.dev, st.inode) != (dev, inode)) {
                return Err(refuse(
                    pid,
                    format!(
                        "fd {n} is a socket listening at {path}, whose file was removed or replaced: no process could connect to it by that path"
                    ),
                ));
            }
            SocketName::Path {
                path,
                dev,
                inode,
                mode: st.map_or(0, |st| st.mode & 0o7777),
            }
        }
        None => {
            return Err(refuse(
                pid,
                format!("fd {n} is a listening socket without a name"),
            ));
        }
    };
    if depth == Depth::Kind {
        return Ok(None);
    }
    let copy = copy_of_fd(pid, n)?;
    let pass_credentials =
        kobj::socket_option(&copy, pid, libc::SOL_SOCKET, libc::SO_PASSCRED).map_err(
            CheckpointError::sys(format!("reading SO_PASSCRED of the socket of fd {n}")),
        )? != 0;
    Ok(Some(FdKind::UnixListener {
        socket,
        kind,
        name,
        backlog: s.backlog,
        flags: fd.flags & !libc::O_CLOEXEC,
        pass_credentials,
    }))
}

/// `TCP_ESTABLISHED`: the state of a connected unix stream or seqpacket socket.
const TCP_ESTABLISHED: u8 = 1;

/// The inode number of an fd target `PREFIX N]` (`pipe:[N]`, `socket:[N]`).
fn object_inode(target: &str, prefix: &str) -> Option<u64> {
    target
        .strip_prefix(prefix)
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<u64>().ok())
}

fn copy_of_fd(pid: Pid, n: i32) -> Result<std::os::fd::OwnedFd, CheckpointError> {
    let pidfd = pidfd::pidfd_open(pid).map_err(CheckpointError::sys("opening a pidfd"))?;
    pidfd::pidfd_getfd(&pidfd, pid, n)
        .map_err(CheckpointError::sys(format!("taking a copy of fd {n}")))
}

/// Fails if a process outside `tree` (the processes moving with `pid`, possibly none) holds
/// one of the pipes, sockets, FIFOs, memfds or deleted files among `fds` (the process's fds):
/// its end or view would stay behind. (A FIFO the tree shares is opened again by its path by
/// every member that holds it, its bytes in flight written once.) Also fails if one memfd or
/// deleted file is open in the process through two open file descriptions (restore would
/// make them two files). One pass over `/proc`.
pub fn check_shared_objects(pid: Pid, fds: &[OpenFd], tree: &[Pid]) -> Result<(), CheckpointError> {
    let mut objects: Vec<(i32, Shared)> = Vec::new();
    for fd in fds {
        let target = String::from_utf8_lossy(&fd.target);
        if let Some(inode) = pipe_inode(&target) {
            objects.push((fd.fd, Shared::Pipe(inode)));
        } else if let Some(inode) = object_inode(&target, "socket:[") {
            objects.push((fd.fd, Shared::Socket(inode)));
        } else if let Some(st) = fd.stat.filter(|st| st.file_type() == libc::S_IFIFO) {
            objects.push((
                fd.fd,
                Shared::Fifo {
                    dev: st.dev,
                    inode: st.inode,
                },
            ));
        } else if (target.starts_with("/memfd:") || target.ends_with(" (deleted)"))
            && let Some(st) = fd.stat
        {
            let object = Shared::File {
                dev: st.dev,
                inode: st.inode,
            };
            if let Some(&(first, _)) = objects.iter().find(|(_, o)| *o == object) {
                let same = ferry_sys::proc::same_open_file(pid, first, fd.fd)
                    .map_err(CheckpointError::sys("comparing open files"))?;
                if !same {
                    return Err(refuse(
                        pid,
                        format!(
                            "fd {first} and fd {} are two separate openings of one file without a name ({target}), which restore would turn into two files",
                            fd.fd
                        ),
                    ));
                }
            }
            objects.push((fd.fd, object));
        }
    }
    let list: Vec<Shared> = objects.iter().map(|&(_, o)| o).collect();
    let mut except = tree.to_vec();
    except.push(pid);
    match kobj::holders(&list, &except).into_iter().next() {
        Some((object, other, comm)) => {
            let n = objects
                .iter()
                .find(|&&(_, o)| o == object)
                .map_or(-1, |&(n, _)| n);
            let what = match object {
                Shared::Pipe(_) => "a pipe",
                Shared::File { .. } => "a file without a name (memfd or deleted)",
                Shared::Socket(_) => "a socket",
                Shared::Fifo { .. } => "a FIFO",
            };
            Err(refuse(
                pid,
                format!(
                    "fd {n} is {what} shared with pid {other} ({comm}); it moves only with every process that holds it"
                ),
            ))
        }
        None => Ok(()),
    }
}

/// The inode number of a `pipe:[N]` fd target.
fn pipe_inode(target: &str) -> Option<u64> {
    object_inode(target, "pipe:[")
}

/// The value after `key` on the line that starts with it.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

struct TimerState {
    clock: i32,
    ticks: u64,
    value_ns: u64,
    interval_ns: u64,
}

/// `clockid`, `ticks`, `it_value: (s, ns)`, `it_interval: (s, ns)` of a timerfd's fdinfo.
fn parse_timerfd(info: &str) -> Option<TimerState> {
    let timespec = |key: &str| -> Option<u64> {
        let v = field(info, key)?;
        let (s, ns) = v.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
        let s: u64 = s.trim().parse().ok()?;
        let ns: u64 = ns.trim().parse().ok()?;
        s.checked_mul(1_000_000_000)?.checked_add(ns)
    };
    Some(TimerState {
        clock: field(info, "clockid:")?.parse().ok()?,
        ticks: field(info, "ticks:")?.parse().ok()?,
        value_ns: timespec("it_value:")?,
        interval_ns: timespec("it_interval:")?,
    })
}

/// The `tfd: N events: X data: Y …` lines of an epoll instance's fdinfo.
/// An inotify instance at fd `n` (its fdinfo `info`): each watch by the path its file handle
/// resolves to. Refused while events wait unread (they cannot be carried) and for a watch
/// whose file has no name any more.
fn classify_inotify(pid: Pid, n: i32, flags: i32, info: &str) -> Result<FdKind, CheckpointError> {
    let marks = parse_inotify(info).ok_or_else(|| {
        refuse(
            pid,
            format!("fd {n} (inotify): the kernel's fdinfo has no usable watch list"),
        )
    })?;
    let copy = copy_of_fd(pid, n)?;
    let unread = kobj::pending_bytes(&copy, pid)
        .map_err(CheckpointError::sys("reading an inotify queue's length"))?;
    if unread > 0 {
        return Err(refuse(
            pid,
            format!("fd {n} (inotify) holds {unread} bytes of unread events"),
        ));
    }
    let mut watches = Vec::with_capacity(marks.len());
    for m in marks {
        if m.wd > ferry_image::validate::MAX_INOTIFY_WD {
            return Err(refuse(
                pid,
                format!(
                    "fd {n} (inotify) has watch descriptor {}, beyond what restore recreates",
                    m.wd
                ),
            ));
        }
        let path = kobj::path_of_handle(pid, m.sdev, m.handle_type, &m.handle)
            .map_err(CheckpointError::sys("resolving an inotify watch"))?
            .ok_or_else(|| {
                refuse(
                    pid,
                    format!(
                        "fd {n} (inotify) watches inode {} of device {:#x}, which has no name ferry can reach",
                        m.inode, m.sdev
                    ),
                )
            })?;
        watches.push(InotifyWatch {
            wd: m.wd,
            path,
            mask: m.mask,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(FdKind::Inotify { flags, watches })
}

/// One line of an inotify instance's fdinfo.
#[derive(Debug, PartialEq, Eq)]
struct InotifyMark {
    wd: i32,
    inode: u64,
    sdev: u32,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_inotify(info: &str) -> Option<Vec<InotifyMark>> {
    let mut marks = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("inotify ")) {
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
        };
        let hex = |key: &str| u64::from_str_radix(value(key)?, 16).ok();
        let handle_hex = value("f_handle")?;
        let handle = (0..handle_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(handle_hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        if hex("fhandle-bytes")? != handle.len() as u64 {
            return None;
        }
        marks.push(InotifyMark {
            wd: i32::try_from(hex("wd")?).ok()?,
            inode: hex("ino")?,
            sdev: u32::try_from(hex("sdev")?).ok()?,
            mask: u32::try_from(hex("mask")?).ok()?,
            handle_type: i32::try_from(hex("fhandle-type")?).ok()?,
            handle,
        });
    }
    Some(marks)
}

fn parse_epoll(info: &str) -> Option<Vec<EpollWatch>> {
    let mut watches = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let mut words = line.split_whitespace();
        let mut after = |key: &str| -> Option<&str> {
            words.by_ref().find(|w| *w == key)?;
            words.next()
        };
        let fd = after("tfd:")?.parse().ok()?;
        let events = u32::from_str_radix(after("events:")?, 16).ok()?;
        let data = u64::from_str_radix(after("data:")?, 16).ok()?;
        watches.push(EpollWatch { fd, events, data });
    }
    Some(watches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_fdinfo_is_read() {
        let info = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\ninotify wd:3 ino:1a2b sdev:800001 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b1a00000f00aa01\n";
        let marks = parse_inotify(info).unwrap();
        assert_eq!(
            marks,
            vec![InotifyMark {
                wd: 3,
                inode: 0x1a2b,
                sdev: 0x80_0001,
                mask: 0x300,
                handle_type: 1,
                handle: vec![0x2b, 0x1a, 0, 0, 0x0f, 0, 0xaa, 1],
            }]
        );
        assert!(
            parse_inotify(
                "inotify wd:1 ino:2 sdev:3 mask:4 fhandle-bytes:8 fhandle-type:1 f_handle:00"
            )
            .is_none()
        );
        assert_eq!(parse_inotify("pos:\t0\n").unwrap(), Vec::new());
    }

    #[test]
    fn timerfd_fdinfo_is_read() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\nsettime flags: 00\nit_value: (4, 999683097)\nit_interval: (2, 0)\n";
        let t = parse_timerfd(info).unwrap();
        assert_eq!(t.clock, 1);
        assert_eq!(t.ticks, 3);
        assert_eq!(t.value_ns, 4_999_683_097);
        assert_eq!(t.interval_ns, 2_000_000_000);
        assert!(parse_timerfd("clockid: 1\nticks: 0\n").is_none());
    }

    #[test]
    fn epoll_fdinfo_is_read() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\ntfd:        3 events:       19 data:                3  pos:0 ino:40e sdev:10\ntfd:       14 events: 80000019 data: ffffffffffffffff  pos:0 ino:160ab4 sdev:f\n";
        assert_eq!(
            parse_epoll(info).unwrap(),
            vec![
                EpollWatch {
                    fd: 3,
                    events: 0x19,
                    data: 3
                },
                EpollWatch {
                    fd: 14,
                    events: 0x8000_0019,
                    data: u64::MAX
                }
            ]
        );
        assert_eq!(parse_epoll("pos:\t0\n").unwrap(), vec![]);
        assert!(parse_epoll("tfd: x events: 1 data: 0\n").is_none());
    }

    #[test]
    fn fields_are_trimmed() {
        let info = "eventfd-count:                5\neventfd-semaphore: 1\n";
        assert_eq!(field(info, "eventfd-count:"), Some("5"));
        assert_eq!(field(info, "eventfd-semaphore:"), Some("1"));
        assert_eq!(field(info, "sigmask:"), None);
    }
}
