//! ferry's only window on the Linux kernel.
//!
//! Every `unsafe` block and every raw system call of ferry lives in this crate, behind safe,
//! narrow wrappers. What it owns:
//!
//! - [`ptrace`]: a traced process ([`ptrace::Tracee`]): seize, interrupt, stops, registers,
//!   extended state, signal masks and queues, detach.
//! - [`inject`]: running system calls inside a stopped tracee ([`inject::Injector`]).
//! - [`kobj`]: pipes, sockets and epoll instances of a process, read without changing them.
//! - [`sockdiag`]: unix sockets and their peers (`sock_diag`).
//! - [`mem`]: bulk reads and writes of another process's memory (`process_vm_readv/writev`,
//!   `/proc/PID/mem` for pages without read permission).
//! - [`pagemap`]: which pages of a range hold data (`PAGEMAP_SCAN`, `/proc/PID/pagemap`).
//! - [`proc`]: what `/proc` tells about a process (maps with VmFlags, status, fds, limits).
//! - [`host`]: facts about this machine (kernel release, vDSO, XSAVE layout).
//! - [`spawn`]: an empty, traced child process to restore into.
//! - [`sysv`]: SysV shared memory segments of an IPC namespace.
//! - [`load`]: run-queue length and CPU capacity of the host (machine-wide or its cgroup).
//! - [`aio`]: kernel fds (userfaultfd, pidfd) watched by tokio.
//! - [`abi`]: kernel structures and constants that libc does not define (yet).
//! - [`file`]: mapped image files.
//!
//! Missing kernel interfaces (PAGEMAP_SCAN, PTRACE_GET_RSEQ_CONFIGURATION, PR_SET_MM_MAP, …)
//! are defined once, in [`abi`].

pub mod abi;
pub mod aio;
pub mod dirty;
pub mod file;
pub mod host;
pub mod inject;
pub mod kobj;
pub mod load;
pub mod mem;
pub mod pagemap;
pub mod pidfd;
pub mod proc;
pub mod ptrace;
pub mod sockdiag;
pub mod spawn;
pub mod sysv;
pub mod uffd;

pub use libc;
pub use nix::errno::Errno;
pub use nix::unistd::Pid;

/// The x86_64 register set as `PTRACE_GETREGS` returns it.
pub type Regs = libc::user_regs_struct;

/// Errors of the kernel-facing layer: each names the operation, the process and the errno.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{op} (pid {pid}): {errno}")]
    Syscall {
        op: &'static str,
        pid: i32,
        errno: Errno,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse: {detail}")]
    Parse { path: String, detail: String },
    #[error("pid {pid}: {detail}")]
    UnexpectedStop { pid: i32, detail: String },
    #[error("pid {pid} {how} while ferry was working on it")]
    Gone { pid: i32, how: String },
    #[error("{call} inside pid {pid} failed: {errno}")]
    Injected {
        call: &'static str,
        pid: i32,
        errno: Errno,
    },
    #[error("SysV segment {id}: {detail}")]
    Segment { id: i32, detail: String },
    #[error("pid {pid}: memory at {addr:#x} (+{len}): {errno}")]
    Memory {
        pid: i32,
        addr: u64,
        len: u64,
        errno: Errno,
    },
}

impl SysError {
    pub(crate) fn syscall(op: &'static str, pid: Pid, errno: Errno) -> SysError {
        SysError::Syscall {
            op,
            pid: pid.as_raw(),
            errno,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> SysError {
        SysError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SysError::Syscall { errno, .. }
            | SysError::Injected { errno, .. }
            | SysError::Memory { errno, .. } => Some(*errno),
            SysError::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
