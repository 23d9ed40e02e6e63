//! Process file descriptors: a stable handle on a process (`pidfd_open`), taking a copy of one
//! of its fds (`pidfd_getfd`), and signalling it without pid-reuse races
//! (`pidfd_send_signal`).
//!
//! `pidfd_getfd` needs `PTRACE_MODE_ATTACH_REALCREDS` over the target (ferry, as root and its
//! tracer, has it). The copy refers to the same open file description as the target's fd and
//! is close-on-exec in ferry; closing one side does not affect the other.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::{Result, SysError};

/// Opens a pidfd for `pid` (close-on-exec).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(SysError::syscall("pidfd_open", pid, Errno::last()));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Duplicates the target's fd `target_fd` into ferry (close-on-exec). `pid` names the target in
/// errors only.
pub fn pidfd_getfd(pidfd: &impl AsFd, pid: Pid, target_fd: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a valid fd (borrowed for the call), an integer fd number and a
    // flags word that must be 0; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_fd().as_raw_fd(),
            target_fd,
            0,
        )
    };
    if fd < 0 {
        return Err(SysError::syscall("pidfd_getfd", pid, Errno::last()));
    }
    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process behind `pidfd` (`pidfd_send_signal`, no siginfo). `pid` names the
/// target in errors only.
pub fn pidfd_send_signal(pidfd: &impl AsFd, pid: Pid, sig: i32) -> Result<()> {
    // SAFETY: a valid borrowed fd, a signal number, a null siginfo pointer (the kernel then
    // fills in a SI_USER siginfo) and flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(SysError::syscall("pidfd_send_signal", pid, Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_copy_of_our_own_fd() {
        use std::io::{Read, Seek, Write};
        let me = nix::unistd::getpid();
        let pidfd = pidfd_open(me).unwrap();
        let mut f = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"pidfd-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap(),
        );
        f.write_all(b"shared").unwrap();
        let copy = pidfd_getfd(&pidfd, me, f.as_raw_fd()).unwrap();
        assert_ne!(copy.as_raw_fd(), f.as_raw_fd());
        let mut c = std::fs::File::from(copy);
        // Same open file description: the offset is shared.
        assert_eq!(c.stream_position().unwrap(), 6);
        c.rewind().unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert_eq!(s, "shared");
        let err = pidfd_getfd(&pidfd, me, 999_999).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EBADF));
        pidfd_send_signal(&pidfd, me, 0).unwrap();
    }
}
