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
    vessel_at(None)
}

/// [`vessel`] with process id `pid` (`clone3` with `set_tid`, which needs `CAP_SYS_ADMIN`):
/// fails with `EEXIST` if a process (or thread, or group) holds that id now.
pub fn vessel_at(pid: Option<Pid>) -> Result<Tracee> {
    let parent = nix::unistd::getpid().as_raw();
    let want: [libc::pid_t; 1] = [pid.map_or(0, Pid::as_raw)];
    let args = crate::abi::CloneArgs {
        flags: 0,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            want.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
    }
    .encode();
    // SAFETY: `args` and `want` outlive the call, and `args` is a `struct clone_args` of the
    // size passed. Without CLONE_VM this is a fork: after it the child runs only the
    // async-signal-safe raw syscalls below (prctl, getppid, pause, _exit) and never returns
    // into Rust code.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), args.len()) } as libc::pid_t;
    if pid < 0 {
        return Err(SysError::syscall("clone3", Pid::this(), Errno::last()));
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

/// Makes `cmd` start its program detached from ferry: in a new session (no controlling
/// terminal, unless `controlling_tty` names one to take), with every fd above 2 closed on
/// exec, so that nothing ferry or its caller inherited (a jobserver pipe, a terminal) leaks
/// into a job.
pub fn isolate(cmd: &mut std::process::Command, controlling_tty: Option<&std::path::Path>) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let tty = controlling_tty.and_then(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).ok());
    // Runs in the child between fork and exec: only async-signal-safe system calls, no
    // allocation (the path was converted above), no lock.
    let hook = move || -> std::io::Result<()> {
        // SAFETY: setsid, open, close and close_range take plain integers or a NUL-terminated
        // string that outlives the call; all are async-signal-safe.
        unsafe {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(tty) = &tty {
                // Opening a terminal without O_NOCTTY as a session leader makes it the
                // controlling terminal.
                let fd = libc::open(tty.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: `hook` is async-signal-safe (see above), as pre_exec requires.
    unsafe {
        cmd.pre_exec(hook);
    }
}
