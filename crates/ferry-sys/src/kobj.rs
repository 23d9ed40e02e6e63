//! Kernel objects behind a process's fds that are not plain files (pipes, epoll instances,
//! memfds): reading their state without changing it, from a copy of the fd that
//! `pidfd_getfd` gave ferry.
//!
//! - [`peek_pipe`]: the bytes in flight in a pipe, left where they are (`tee` into a pipe of
//!   ferry's own, which does not consume them).
//! - [`memfd_seals`]: a memfd's seals (`F_GET_SEALS`).
//! - [`pipe_capacity`]: a pipe's size (`F_GETPIPE_SZ`).
//! - [`epoll_watches_file`]: whether an epoll registration is of the file at an fd
//!   (`kcmp(KCMP_EPOLL_TFD)`).
//! - [`peek_unix_stream`]: the bytes queued in a unix stream socket, left where they are
//!   (`MSG_PEEK`); [`read_unix_messages`]: the messages queued in a unix datagram or
//!   seqpacket socket, boundaries kept (`MSG_PEEK` at a peek offset, then taken out and put
//!   back).
//! - [`path_of_handle`]: the path of the file an inotify watch names by file handle.
//! - [`holders`]: which of a process's pipes, FIFOs, sockets, memfds and deleted files other
//!   processes hold too.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::{Result, SysError};

/// The capacity in bytes of the pipe behind `fd` (`F_GETPIPE_SZ`). `pid` names the owner in
/// errors only.
pub fn pipe_capacity(fd: &impl AsFd, pid: Pid) -> Result<u32> {
    // SAFETY: fcntl with F_GETPIPE_SZ takes a valid borrowed fd and no further argument.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETPIPE_SZ) };
    if r < 0 {
        return Err(SysError::syscall("fcntl(F_GETPIPE_SZ)", pid, Errno::last()));
    }
    Ok(r as u32)
}

/// The seals of the memfd behind `fd` (`F_GET_SEALS`). `pid` names the owner in errors only.
pub fn memfd_seals(fd: &impl AsFd, pid: Pid) -> Result<u32> {
    // SAFETY: fcntl with F_GET_SEALS takes a valid borrowed fd and no further argument.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        return Err(SysError::syscall("fcntl(F_GET_SEALS)", pid, Errno::last()));
    }
    Ok(r as u32)
}

/// Bytes waiting to be read from the pipe or inotify instance behind `fd` (`FIONREAD`).
pub fn pending_bytes(fd: &impl AsFd, pid: Pid) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer we pass, on a valid borrowed fd.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(SysError::syscall("ioctl(FIONREAD)", pid, Errno::last()));
    }
    Ok(n.max(0) as usize)
}

fn own_pipe(pid: Pid) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the valid two-element array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(SysError::syscall("pipe2", pid, Errno::last()));
    }
    // SAFETY: the kernel just returned these two fds to us; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The bytes in flight in the pipe behind `read_end` (ferry's copy of a process's read end),
/// in order, without consuming them: the process later reads exactly what it would have.
/// The process must be frozen, and no other process may hold the pipe's write end, or the
/// bytes could change meanwhile.
pub fn peek_pipe(read_end: &impl AsFd, pid: Pid) -> Result<Vec<u8>> {
    let pending = pending_bytes(read_end, pid)?;
    if pending == 0 {
        return Ok(Vec::new());
    }
    let (r, w) = own_pipe(pid)?;
    let capacity = pipe_capacity(read_end, pid)?;
    // SAFETY: fcntl with F_SETPIPE_SZ takes a valid borrowed fd and an integer size.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as libc::c_int) } < 0 {
        return Err(SysError::syscall("fcntl(F_SETPIPE_SZ)", pid, Errno::last()));
    }
    // SAFETY: tee takes two valid borrowed pipe fds, a length and flags; it copies (does not
    // move) buffers from the first pipe to the second.
    let copied = unsafe {
        libc::tee(
            read_end.as_fd().as_raw_fd(),
            w.as_raw_fd(),
            pending,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if copied < 0 {
        return Err(SysError::syscall("tee", pid, Errno::last()));
    }
    if copied as usize != pending {
        return Err(SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: format!("a pipe holds {pending} bytes but only {copied} could be copied"),
        });
    }
    drop(w);
    let mut data = vec![0u8; pending];
    let mut at = 0;
    while at < pending {
        match nix::unistd::read(&r, &mut data[at..]) {
            Ok(0) => {
                return Err(SysError::UnexpectedStop {
                    pid: pid.as_raw(),
                    detail: format!("a copy of a pipe's {pending} bytes ended after {at}"),
                });
            }
            Ok(n) => at += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SysError::syscall("read", pid, e)),
        }
    }
    Ok(data)
}

/// What a unix stream socket holds for its reader, read without consuming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQueue {
    pub data: Vec<u8>,
    /// Some of the bytes carry file descriptors (`SCM_RIGHTS`) or credentials: none were
    /// taken (no control buffer was offered), but the queue cannot be carried as bytes.
    pub ancillary: bool,
}

/// The `len` bytes waiting in the unix stream socket behind `sock` (ferry's copy of a
/// process's socket), in order, without consuming them (`MSG_PEEK`, which for a stream socket
/// walks every queued buffer, stopping at one that carries fds). The process must be frozen
/// and its peer may not be written by anyone else meanwhile. Refuses a socket whose peek
/// offset is on (`SO_PEEK_OFF`: peeking would move it).
pub fn peek_unix_stream(sock: &impl AsFd, pid: Pid, len: usize) -> Result<StreamQueue> {
    if socket_option(sock, pid, libc::SOL_SOCKET, libc::SO_PEEK_OFF)? >= 0 {
        return Err(SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: "the socket uses a peek offset (SO_PEEK_OFF), which peeking would move".into(),
        });
    }
    let mut data = vec![0u8; len];
    if len == 0 {
        return Ok(StreamQueue {
            data,
            ancillary: false,
        });
    }
    // A stream peek walks every queued buffer, stopping at one that carries fds.
    let (got, flags) = recv_once(sock, pid, &mut data, libc::MSG_PEEK)?.unwrap_or((0, 0));
    let ancillary = flags & libc::MSG_CTRUNC != 0;
    if got != len && !ancillary {
        return Err(SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: format!("a socket holds {len} bytes but only {got} could be read"),
        });
    }
    data.truncate(got);
    Ok(StreamQueue { data, ancillary })
}

/// What a unix datagram or seqpacket socket holds for its reader, read without consuming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageQueue {
    /// Each message, in order, boundaries kept.
    pub messages: Vec<Vec<u8>>,
    /// The next message carries file descriptors (`SCM_RIGHTS`) or credentials: the queue
    /// cannot be carried as bytes (`messages` stops before it).
    pub ancillary: bool,
    /// More than the budget waits (`messages` stops before the message that would exceed it).
    pub over_budget: bool,
}

/// The messages waiting in the unix datagram or seqpacket socket behind `sock` (ferry's copy
/// of a process's socket), in order, without consuming them: at most `budget` bytes in all.
/// Each is peeked at the socket's peek offset (`SO_PEEK_OFF`, set to 0 for the walk and
/// switched off after), first with no room to learn its length (`MSG_TRUNC`), then whole. The
/// process must be frozen and nobody may write to its peer meanwhile. Refuses a socket whose
/// peek offset is on already.
fn peek_unix_messages(sock: &impl AsFd, pid: Pid, budget: usize) -> Result<MessageQueue> {
    if socket_option(sock, pid, libc::SOL_SOCKET, libc::SO_PEEK_OFF)? >= 0 {
        return Err(SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: "the socket uses a peek offset (SO_PEEK_OFF), which peeking would move".into(),
        });
    }
    set_socket_option(sock, pid, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let walked = walk_messages(sock, pid, budget);
    let off = set_socket_option(sock, pid, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1);
    let queue = walked?;
    off.map(|()| queue)
}

/// The messages waiting in the unix datagram or seqpacket socket behind `sock`, exactly: as
/// [`peek_unix_messages`] sees them first (nothing taken if it finds fds, credentials or more
/// than `budget` bytes), then taken out one by one and sent back, in order, from `peer`
/// (ferry's copy of the other end of the pair, so that the same socket is charged for them).
/// A walk at a peek offset cannot see a zero-length message that was peeked before (the
/// kernel then passes over it); taking the queue out can. The process must be frozen and hold
/// both ends. Between the two steps the messages exist only in ferry (microseconds).
pub fn read_unix_messages(
    sock: &impl AsFd,
    peer: &impl AsFd,
    pid: Pid,
    budget: usize,
) -> Result<MessageQueue> {
    let seen = peek_unix_messages(sock, pid, budget)?;
    if seen.ancillary || seen.over_budget {
        return Ok(seen);
    }
    let mut taken: Vec<Vec<u8>> = Vec::with_capacity(seen.messages.len());
    let drained = take_messages(sock, pid, budget, &mut taken);
    // Whatever happened, what was taken goes back, in order.
    for m in &taken {
        send_message(peer, pid, m)?;
    }
    match drained {
        Ok(()) => Ok(MessageQueue {
            messages: taken,
            ancillary: false,
            over_budget: false,
        }),
        Err(e) => Err(SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: format!(
                "reading a socket's queue: {e}; the {} messages read were put back at its end",
                taken.len()
            ),
        }),
    }
}

/// Takes every message out of `sock` into `taken`, each peeked at the head first (the peek
/// offset is off: the head is seen whatever was peeked before) so that one with fds or
/// credentials, or beyond `budget`, stops the walk untaken.
fn take_messages(
    sock: &impl AsFd,
    pid: Pid,
    budget: usize,
    taken: &mut Vec<Vec<u8>>,
) -> Result<()> {
    let mut total = 0usize;
    let stop = |detail: &str| SysError::UnexpectedStop {
        pid: pid.as_raw(),
        detail: detail.into(),
    };
    while let Some((len, flags)) = recv_once(sock, pid, &mut [], libc::MSG_PEEK | libc::MSG_TRUNC)?
    {
        if flags & libc::MSG_CTRUNC != 0 || total + len > budget {
            return Err(stop(
                "a message the walk could not see carries fds or credentials, or exceeds the budget",
            ));
        }
        let mut data = vec![0u8; len];
        // Taken for real now (no control buffer: the peek showed it carries nothing).
        let Some((n, f)) = recv_once(sock, pid, &mut data, 0)? else {
            return Err(stop("a message was gone between its peek and its read"));
        };
        data.truncate(n);
        taken.push(data);
        if n != len || f & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(stop("a message changed between its peek and its read"));
        }
        total += len;
    }
    Ok(())
}

/// Sends `data` as one message on `sock`, never blocking.
fn send_message(sock: &impl AsFd, pid: Pid, data: &[u8]) -> Result<()> {
    loop {
        // SAFETY: `data` is valid for reads of its length for the duration of the call; no
        // address is given (the socket is connected).
        let r = unsafe {
            libc::send(
                sock.as_fd().as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 && r as usize == data.len() {
            return Ok(());
        }
        if r >= 0 {
            return Err(SysError::UnexpectedStop {
                pid: pid.as_raw(),
                detail: format!("a message of {} bytes was sent as {r}", data.len()),
            });
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(SysError::syscall("send", pid, e)),
        }
    }
}

fn walk_messages(sock: &impl AsFd, pid: Pid, budget: usize) -> Result<MessageQueue> {
    let mut queue = MessageQueue {
        messages: Vec::new(),
        ancillary: false,
        over_budget: false,
    };
    let mut total = 0usize;
    loop {
        // The next message's length: nothing is copied, so the offset does not move (a
        // zero-length message is marked peeked, and the walk passes it next time).
        let (len, flags) = match recv_once(sock, pid, &mut [], libc::MSG_PEEK | libc::MSG_TRUNC)? {
            Some(r) => r,
            None => return Ok(queue),
        };
        if flags & libc::MSG_CTRUNC != 0 {
            queue.ancillary = true;
            return Ok(queue);
        }
        if total + len > budget {
            queue.over_budget = true;
            return Ok(queue);
        }
        let mut data = vec![0u8; len];
        if len > 0 {
            match recv_once(sock, pid, &mut data, libc::MSG_PEEK)? {
                Some((got, f)) if got == len && f & (libc::MSG_TRUNC | libc::MSG_CTRUNC) == 0 => {}
                other => {
                    return Err(SysError::UnexpectedStop {
                        pid: pid.as_raw(),
                        detail: format!(
                            "a socket's message of {len} bytes read back as {other:?} (length, flags)"
                        ),
                    });
                }
            }
        }
        total += len;
        queue.messages.push(data);
    }
}

/// One `recvmsg(MSG_DONTWAIT | flags)` into `buf`, with no control buffer (so no fd is ever
/// installed in ferry): the length the kernel returned and the message flags, or `None` when
/// nothing waits.
fn recv_once(
    sock: &impl AsFd,
    pid: Pid,
    buf: &mut [u8],
    flags: i32,
) -> Result<Option<(usize, i32)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    loop {
        // SAFETY: `msg` points to one iovec over `buf`, which outlives the call; there is no
        // control buffer, so the kernel installs no fd in ferry.
        let r = unsafe {
            libc::recvmsg(
                sock.as_fd().as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | flags,
            )
        };
        if r >= 0 {
            return Ok(Some((r as usize, msg.msg_flags)));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            e => return Err(SysError::syscall("recvmsg", pid, e)),
        }
    }
}

/// Sets an integer socket option of the socket behind `sock`.
pub fn set_socket_option(
    sock: &impl AsFd,
    pid: Pid,
    level: i32,
    name: i32,
    value: i32,
) -> Result<()> {
    // SAFETY: `value` is a valid int for the duration of the call, its size passed with it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(SysError::syscall("setsockopt", pid, Errno::last()));
    }
    Ok(())
}

/// An integer socket option of the socket behind `sock`.
pub fn socket_option(sock: &impl AsFd, pid: Pid, level: i32, name: i32) -> Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-pointers sized for an int option.
    let r = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(SysError::syscall("getsockopt", pid, Errno::last()));
    }
    Ok(value)
}

/// The path of the file that an inotify watch of process `pid` names by file handle
/// (`fhandle-type`, `f_handle` in fdinfo) on the filesystem of device `sdev` (the kernel's
/// encoding, as fdinfo shows it): the handle opened with `open_by_handle_at` against each of
/// the process's mounts of that device until one resolves it, its path read back from
/// `/proc/self/fd`. `None` when no mount resolves it or the file has no name any more.
pub fn path_of_handle(
    pid: Pid,
    sdev: u32,
    handle_type: i32,
    handle: &[u8],
) -> Result<Option<String>> {
    let majmin = format!("{}:{}", sdev >> 20, sdev & 0xf_ffff);
    let mounts = procfs::process::Process::new(pid.as_raw())
        .and_then(|p| p.mountinfo())
        .map_err(|e| SysError::Parse {
            path: format!("/proc/{pid}/mountinfo"),
            detail: e.to_string(),
        })?;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut fh = Vec::with_capacity(8 + handle.len());
    fh.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&handle_type.to_ne_bytes());
    fh.extend_from_slice(handle);
    for m in mounts.into_iter().filter(|m| m.majmin == majmin) {
        let at = format!("/proc/{pid}/root{}", m.mount_point.display());
        let Ok(dir) = fs::File::open(&at) else {
            continue;
        };
        // SAFETY: `fh` is a complete `struct file_handle` (header and `handle_bytes` bytes)
        // that outlives the call; `dir` is a valid fd; the returned fd is owned below.
        let r = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                dir.as_raw_fd(),
                fh.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if r < 0 {
            continue;
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let file = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
        let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| SysError::io("/proc/self/fd", e))?;
        let path = link.to_string_lossy().into_owned();
        let nameless = !path.starts_with('/') || path.ends_with(" (deleted)");
        return Ok((!nameless).then_some(path));
    }
    Ok(None)
}

/// Whether the registration of fd number `tfd` in epoll instance `epfd` of process `pid` is
/// of the same open file as the process's fd `fd` (`kcmp(KCMP_EPOLL_TFD)`). `Ok(false)` also
/// when the instance holds no registration for `tfd` or the process has no fd `fd`.
pub fn epoll_watches_file(pid: Pid, epfd: i32, tfd: i32, fd: i32) -> Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_int = 7;
    #[repr(C)]
    struct KcmpEpollSlot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = KcmpEpollSlot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: 0,
    };
    // SAFETY: kcmp takes two pids, a type, an fd number and, for KCMP_EPOLL_TFD, a pointer to
    // a `struct kcmp_epoll_slot` that stays valid for the call; it only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid.as_raw(),
            pid.as_raw(),
            KCMP_EPOLL_TFD,
            fd as libc::c_ulong,
            &slot as *const KcmpEpollSlot as libc::c_ulong,
        )
    };
    match r {
        0 => Ok(true),
        r if r > 0 => Ok(false),
        // ENOENT: no registration for `tfd`; EBADF: the process has no fd `fd` any more.
        _ => match Errno::last() {
            Errno::ENOENT | Errno::EBADF => Ok(false),
            e => Err(SysError::syscall("kcmp(KCMP_EPOLL_TFD)", pid, e)),
        },
    }
}

/// What an fd of another process may share with the process being moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// A pipe, by inode number (`pipe:[N]`).
    Pipe(u64),
    /// A memfd or a deleted file (an fd whose target starts with `/memfd:` or ends with
    /// ` (deleted)`), by device and inode number.
    File { dev: u64, inode: u64 },
    /// A socket, by inode number (`socket:[N]`).
    Socket(u64),
    /// A FIFO (an fd whose target is a path naming a FIFO), by device and inode number.
    Fifo { dev: u64, inode: u64 },
}

/// Which of `objects` a process other than those in `except` holds an fd on (by
/// `/proc/*/fd`): each such object once, with one such process and its command name. One pass
/// over every process; processes that vanish or cannot be read meanwhile are skipped.
pub fn holders(objects: &[Shared], except: &[Pid]) -> Vec<(Shared, Pid, String)> {
    let mut found: Vec<(Shared, Pid, String)> = Vec::new();
    if objects.is_empty() {
        return found;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    // Only when a FIFO is asked for is every path an fd names examined.
    let fifos = objects.iter().any(|o| matches!(o, Shared::Fifo { .. }));
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .map(Pid::from_raw)
        else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.as_os_str().as_encoded_bytes();
            let inode = |rest: &[u8]| {
                std::str::from_utf8(rest)
                    .ok()
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            };
            let object = if let Some(rest) = target.strip_prefix(b"pipe:[") {
                inode(rest).map(Shared::Pipe)
            } else if let Some(rest) = target.strip_prefix(b"socket:[") {
                inode(rest).map(Shared::Socket)
            } else if target.starts_with(b"/memfd:") || target.ends_with(b" (deleted)") {
                fs::metadata(fd.path()).ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    Shared::File {
                        dev: m.dev(),
                        inode: m.ino(),
                    }
                })
            } else if fifos && target.starts_with(b"/") {
                fs::metadata(fd.path()).ok().and_then(|m| {
                    use std::os::unix::fs::{FileTypeExt, MetadataExt};
                    m.file_type().is_fifo().then(|| Shared::Fifo {
                        dev: m.dev(),
                        inode: m.ino(),
                    })
                })
            } else {
                None
            };
            let Some(object) = object else {
                continue;
            };
            if objects.contains(&object) && !found.iter().any(|(o, ..)| *o == object) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                found.push((object, pid, comm.trim_end().to_string()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn peeking_a_pipe_leaves_its_bytes() {
        let me = nix::unistd::getpid();
        let (r, w) = own_pipe(me).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"first ").unwrap();
        w.write_all(b"second").unwrap();
        assert_eq!(peek_pipe(&r, me).unwrap(), b"first second");
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"first second");
        assert_eq!(peek_pipe(&r, me).unwrap(), b"");
        assert_eq!(pipe_capacity(&r, me).unwrap(), 65536);
    }

    #[test]
    fn peeking_datagrams_keeps_boundaries_and_leaves_them() {
        use std::os::unix::net::UnixDatagram;
        let me = nix::unistd::getpid();
        let (a, b) = UnixDatagram::pair().unwrap();
        for m in [&b"one"[..], b"", b"three", b""] {
            a.send(m).unwrap();
        }
        let q = peek_unix_messages(&b, me, 1 << 20).unwrap();
        assert_eq!(
            q.messages,
            vec![b"one".to_vec(), Vec::new(), b"three".to_vec(), Vec::new()]
        );
        assert!(!q.ancillary && !q.over_budget);
        // Left in place, and the peek offset off again.
        assert_eq!(
            socket_option(&b, me, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        // A second walk passes over the zero-length messages the first one peeked (the
        // kernel's rule): taking the queue out and putting it back sees them all.
        let q2 = peek_unix_messages(&b, me, 1 << 20).unwrap();
        assert_eq!(q2.messages.len(), 2);
        let q3 = read_unix_messages(&b, &a, me, 1 << 20).unwrap();
        assert_eq!(q3.messages, q.messages);
        let q4 = read_unix_messages(&b, &a, me, 1 << 20).unwrap();
        assert_eq!(q4.messages, q.messages);
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"", b"three", b""] {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
        // A budget stops the walk before the message that exceeds it.
        a.send(b"12345").unwrap();
        let q5 = read_unix_messages(&b, &a, me, 4).unwrap();
        assert!(q5.messages.is_empty() && q5.over_budget);
        assert_eq!(b.recv(&mut buf).unwrap(), 5);
    }

    #[test]
    fn pipes_and_memfds_are_found_in_their_holders() {
        let me = nix::unistd::getpid();
        let (r, _w) = own_pipe(me).unwrap();
        let inode = crate::proc::stat_link(me, &format!("fd/{}", r.as_raw_fd()))
            .unwrap()
            .inode;
        let memfd =
            nix::sys::memfd::memfd_create(c"holders-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        let st = crate::proc::stat_link(me, &format!("fd/{}", memfd.as_raw_fd())).unwrap();
        let objects = [
            Shared::Pipe(inode),
            Shared::File {
                dev: st.dev,
                inode: st.inode,
            },
        ];
        assert!(holders(&objects, &[me]).is_empty());
        let mut found = holders(
            &[objects[0], objects[1], Shared::Pipe(u64::MAX)],
            &[Pid::from_raw(1)],
        );
        found.sort_by_key(|(o, ..)| matches!(o, Shared::File { .. }));
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].0, found[0].1), (objects[0], me));
        assert_eq!((found[1].0, found[1].1), (objects[1], me));
    }
}
