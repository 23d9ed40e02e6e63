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
//!   (`MSG_PEEK`).
//! - [`holders`]: which of a process's pipes, sockets, memfds and deleted files other
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

/// Bytes waiting to be read from the pipe behind `fd` (`FIONREAD`).
fn pipe_pending(fd: &impl AsFd, pid: Pid) -> Result<usize> {
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
    let pending = pipe_pending(read_end, pid)?;
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
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let got = loop {
        // SAFETY: `msg` points to one iovec over `data`, which outlives the call; there is no
        // control buffer, so the kernel installs no fd in ferry.
        let r = unsafe {
            libc::recvmsg(
                sock.as_fd().as_raw_fd(),
                &mut msg,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            break r as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => break 0,
            e => return Err(SysError::syscall("recvmsg(MSG_PEEK)", pid, e)),
        }
    };
    let ancillary = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if got != len && !ancillary {
        return Err(SysError::UnexpectedStop {
            pid: pid.as_raw(),
            detail: format!("a socket holds {len} bytes but only {got} could be read"),
        });
    }
    data.truncate(got);
    Ok(StreamQueue { data, ancillary })
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
}

/// Which of `objects` a process other than `except` holds an fd on (by `/proc/*/fd`): each
/// such object once, with one such process and its command name. One pass over every
/// process; processes that vanish or cannot be read meanwhile are skipped.
pub fn holders(objects: &[Shared], except: Pid) -> Vec<(Shared, Pid, String)> {
    let mut found: Vec<(Shared, Pid, String)> = Vec::new();
    if objects.is_empty() {
        return found;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .map(Pid::from_raw)
        else {
            continue;
        };
        if pid == except {
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
        assert!(holders(&objects, me).is_empty());
        let mut found = holders(
            &[objects[0], objects[1], Shared::Pipe(u64::MAX)],
            Pid::from_raw(1),
        );
        found.sort_by_key(|(o, ..)| matches!(o, Shared::File { .. }));
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].0, found[0].1), (objects[0], me));
        assert_eq!((found[1].0, found[1].1), (objects[1], me));
    }
}
