//! An empty vessel to restore into: a forked child of ferry, seized and stopped before it
//! runs any of ferry's code.
//!
//! Between `fork` and the seize the child only executes raw, async-signal-safe system calls
//! (ferry may be multi-threaded), and asks to be killed if ferry dies meanwhile. Once seized
//! with `PTRACE_O_EXITKILL`, the kernel kills it if ferry exits before the restore is done: a
//! half-built process never runs.

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::ptrace::Tracee;
use crate::{Result, SysError};

/// Forks a child that waits, seizes it and interrupts it. The returned tracee sits in
/// `PTRACE_EVENT_STOP` with all of ferry's mappings and fds still in place.
pub fn vessel() -> Result<Tracee> {
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: after fork the child runs only the async-signal-safe raw syscalls below
    // (prctl, getppid, pause, _exit) and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SysError::syscall("fork", Pid::this(), Errno::last()));
    }
    if pid == 0 {
        // SAFETY: see above: raw syscalls only, no allocation, no locks.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                libc::_exit(127);
            }
            loop {
                libc::pause();
            }
        }
    }
    let pid = Pid::from_raw(pid);
    let mut tracee = match Tracee::seize(pid, true) {
        Ok(t) => t,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
    };
    if let Err(e) = tracee.interrupt_and_wait() {
        let _ = tracee.kill();
        return Err(e);
    }
    // Nothing can have been queued for a child nobody knows about yet.
    tracee.take_deferred_signals();
    Ok(tracee)
}
