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
    vessel_with(0, pid)
}

/// [`vessel`] as the init (pid 1) of a new PID namespace (`CLONE_NEWPID`, which needs
/// `CAP_SYS_ADMIN`): the processes and threads it makes take the ids they ask for there, free
/// whatever this host's own namespace holds. With `ipc`, in a new IPC namespace too
/// (`CLONE_NEWIPC`). The returned tracee's pid is the one this namespace sees.
pub fn vessel_in_new_pid_namespace(ipc: bool) -> Result<Tracee> {
    let ipc = if ipc { libc::CLONE_NEWIPC as u64 } else { 0 };
    vessel_with(libc::CLONE_NEWPID as u64 | ipc, None)
}

fn vessel_with(flags: u64, pid: Option<Pid>) -> Result<Tracee> {
    let parent = nix::unistd::getpid().as_raw();
    // The init of a new namespace sees no parent (getppid() is 0).
    let seen_parent = if flags & libc::CLONE_NEWPID as u64 != 0 {
        0
    } else {
        parent
    };
    let want: [libc::pid_t; 1] = [pid.map_or(0, Pid::as_raw)];
    let args = crate::abi::CloneArgs {
        flags,
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
            // (In a new namespace a parent that died before the prctl goes unnoticed: the
            // vessel then waits untraced until killed; it never runs ferry's code.)
            if libc::getppid() != seen_parent {
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
            if !cloexec_above_stderr() {
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

/// Marks every fd above 2 close-on-exec; false on failure (errno set). Async-signal-safe:
/// for a child between fork and exec.
fn cloexec_above_stderr() -> bool {
    // SAFETY: close_range takes plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
    }
}

/// A program to start with [`job_in_new_pid_namespace`].
#[derive(Debug, Clone)]
pub struct JobCommand {
    /// Absolute path of the program.
    pub program: std::ffi::CString,
    pub argv: Vec<std::ffi::CString>,
    /// `NAME=value` entries: the whole environment.
    pub env: Vec<std::ffi::CString>,
    pub cwd: std::ffi::CString,
    pub uid: u32,
    pub gid: u32,
}

/// The steps the child takes before `execve`, named in the error of the one that fails.
const JOB_STEPS: [&str; 8] = [
    "setsid",
    "setgroups",
    "setgid",
    "setuid",
    "chdir",
    "open /dev/null",
    "close_range",
    "execve",
];

/// Starts `cmd` as the init (pid 1) of a new PID namespace, in a new IPC namespace (`clone3`
/// with `CLONE_NEWPID | CLONE_NEWIPC`, which needs `CAP_SYS_ADMIN`; its SysV objects are
/// its own and move with it): a child of this process, leading a session of its own, with
/// `cmd`'s credentials (no supplementary groups) and working directory, stdin, stdout and
/// stderr on `/dev/null` and every other fd closed on exec. Returns its pid here once it
/// exec'd, or the step that failed in the child.
pub fn job_in_new_pid_namespace(cmd: &JobCommand) -> Result<Pid> {
    // NULL-terminated arrays of pointers, as execve takes them.
    let pointers = |strings: &[std::ffi::CString]| -> Vec<*const libc::c_char> {
        strings
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let argv = pointers(&cmd.argv);
    let envp = pointers(&cmd.env);
    let dev_null = c"/dev/null";
    let root = nix::unistd::geteuid().is_root();
    let (report_rx, report_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SysError::syscall("pipe2", Pid::this(), e))?;
    let args = crate::abi::CloneArgs {
        flags: (libc::CLONE_NEWPID | libc::CLONE_NEWIPC) as u64,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: 0,
        set_tid_size: 0,
    }
    .encode();
    let tx = std::os::fd::AsRawFd::as_raw_fd(&report_tx);
    // SAFETY: `args` outlives the call and is a `struct clone_args` of the size passed.
    // Without CLONE_VM this is a fork: the child runs only the async-signal-safe raw syscalls
    // below on memory prepared before the call (`argv`, `envp`, the C strings of `cmd`), and
    // leaves by `execve` or `_exit`, never returning into Rust code.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), args.len()) } as libc::pid_t;
    if pid < 0 {
        return Err(SysError::syscall("clone3", Pid::this(), Errno::last()));
    }
    if pid == 0 {
        // SAFETY: see above: raw syscalls on prepared memory, no allocation, no locks.
        unsafe {
            let fail = |step: u8| -> ! {
                let errno = *libc::__errno_location();
                let mut msg = [0u8; 5];
                msg[0] = step;
                msg[1..].copy_from_slice(&errno.to_le_bytes());
                libc::write(tx, msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            };
            if libc::setsid() < 0 {
                fail(0);
            }
            if root && libc::setgroups(0, std::ptr::null()) < 0 {
                fail(1);
            }
            if libc::setgid(cmd.gid) < 0 {
                fail(2);
            }
            if libc::setuid(cmd.uid) < 0 {
                fail(3);
            }
            if libc::chdir(cmd.cwd.as_ptr()) < 0 {
                fail(4);
            }
            let null = libc::open(dev_null.as_ptr(), libc::O_RDWR);
            if null < 0 {
                fail(5);
            }
            for fd in 0..3 {
                if null != fd && libc::dup2(null, fd) < 0 {
                    fail(5);
                }
            }
            if null > 2 {
                libc::close(null);
            }
            if !cloexec_above_stderr() {
                fail(6);
            }
            libc::execve(cmd.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(7);
        }
    }
    let pid = Pid::from_raw(pid);
    drop(report_tx);
    let mut msg = [0u8; 5];
    let mut got = 0;
    let mut file = std::fs::File::from(report_rx);
    while got < msg.len() {
        match std::io::Read::read(&mut file, &mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SysError::io("the job's start report", e)),
        }
    }
    if got == 0 {
        // Closed on exec: it runs.
        return Ok(pid);
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    let step = JOB_STEPS
        .get(usize::from(msg[0]))
        .copied()
        .unwrap_or("start");
    let mut errno = [0u8; 4];
    errno.copy_from_slice(&msg[1..5]);
    Err(SysError::syscall(
        step,
        pid,
        Errno::from_raw(i32::from_le_bytes(errno)),
    ))
}
