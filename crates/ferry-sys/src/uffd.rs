//! userfaultfd: ferry serves the memory of another process (demand paging, and the page
//! streams of the file-server and freeze-free migrations) and tracks its writes (pre-copy,
//! see [`crate::dirty`]).
//!
//! A [`Uffd`] is made *inside* the process it serves, by an injected `userfaultfd` call while
//! the process is stopped under ptrace, and taken into ferry with `pidfd_getfd`; the process's
//! fd is closed again, so ferry holds the only reference ([`Uffd::create_in_tracee`]).
//! Everything else happens from ferry, while the process runs:
//!
//! ```text
//!  process (stopped)             ferry
//!  userfaultfd() = 5     ──────▶ pidfd_getfd(pidfd, 5) = uffd;  close(5) injected
//!                                UFFDIO_API, UFFDIO_REGISTER(MISSING, ranges), detach
//!  runs, touches a missing page: read(uffd) → PAGEFAULT addr
//!  its thread waits              UFFDIO_COPY(addr, bytes from ferry's memory)
//!  runs on               ◀────── (wake)
//! ```
//!
//! What this kernel (6.18, x86_64) does, as `tests/uffd.rs` shows:
//!
//! - **Creating**: `userfaultfd(0)` needs CAP_SYS_PTRACE in the *calling* process
//!   (`vm.unprivileged_userfaultfd` is 0): in a process that is not root it fails with EPERM;
//!   only `UFFD_USER_MODE_ONLY` works there. A user-mode-only uffd does not report faults the
//!   kernel takes on the process's behalf: a `read(2)`/`write(2)` whose buffer is a missing
//!   page fails with EFAULT at once, and so does ferry's `process_vm_readv`. **Demand paging
//!   needs a full uffd**: make it while the vessel still runs as root, before its credentials
//!   are set (it keeps working after the process drops them). Async write-protect tracking is
//!   not affected and uses user-mode-only uffds.
//! - **Features**: all that ferry uses (WP_ASYNC, WP_UNPOPULATED, MISSING_SHMEM,
//!   EVENT_REMOVE/UNMAP/REMAP/FORK, THREAD_ID, EXACT_ADDRESS, MOVE, POISON). WP_ASYNC turns on
//!   WP_UNPOPULATED. `UFFDIO_API` succeeds once per uffd.
//! - **Registering** MISSING works on private anonymous memory and shmem; on file mappings,
//!   private or shared, it fails with EINVAL: copied-on-write pages of a private file mapping
//!   must be written before the process runs. MINOR: shmem only. A MISSING range allows WAKE,
//!   COPY, ZEROPAGE, MOVE and POISON (not WRITEPROTECT, unless also registered WP).
//! - **Faults**: a thread touching a missing page waits (interruptibly; SIGKILL ends it) until
//!   the page is placed; the message gives the page address and, with THREAD_ID, the thread.
//!   ferry's own `process_vm_readv`/`writev` on a missing page are faults too: reported with
//!   *ferry's* thread id, and the call waits like the process would. So ferry never touches
//!   registered memory from a thread that serves its faults, and places pages with
//!   [`Uffd::copy`], not `process_vm_writev`.
//! - **UFFDIO_COPY** reads from any ferry memory; 32 MiB in one call took 9 ms (3.8 GB/s). It
//!   stops at a page already there (EEXIST): [`Uffd::copy`] skips it (about 4 µs per present
//!   page) and goes on, so streamed runs may overlap pages that faults brought first. A call
//!   that did part of the run reports the bytes done and fails with EAGAIN; the loop goes on.
//!   ZEROPAGE works on shmem too. Unregistered or unmapped range: ENOENT. Process gone: ESRCH.
//! - **Non-cooperative events** (EVENT_REMOVE, UNMAP, REMAP, FORK): the process's `madvise`,
//!   `munmap`, `mremap`, `fork` *wait until ferry has read the event*, and until then every
//!   COPY fails with EAGAIN without progress ([`CopyOutcome::retry`]). The thread that copies
//!   must therefore keep reading events; never retry a copy in a loop without reading them. A
//!   page dropped by `MADV_DONTNEED` is missing again and faults again.
//! - **The uffd never reports the process's death** (no POLLHUP): watch a pidfd.
//! - **When the pager goes away** (the last reference to the uffd closes: ferry dropped it or
//!   died), the kernel unregisters every range and wakes the waiting threads, whose faults are
//!   then served as ordinary ones: a missing anonymous page becomes zeros and the process runs
//!   on with wrong memory, silently. It does not hang. [`PagerGuard`] turns this into a
//!   SIGKILL with a message. Note that every child ferry forks (a vessel until it closes its
//!   fds, a guard for a moment) holds copies of ferry's uffds, which keep them open too.
//!
//! `UFFDIO_MOVE` and `UFFDIO_CONTINUE` are defined in [`crate::abi`] but not wrapped: MOVE only
//! moves pages within the served address space, CONTINUE serves MINOR faults of shmem.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;
use tracing::{debug, trace, warn};

use crate::abi::{self, UffdMsg};
use crate::inject::Injector;
use crate::{PAGE_SIZE, Result, SysError, pidfd};

/// How a range is registered: any combination of the modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterMode(u64);

impl RegisterMode {
    /// Faults on pages that are not there (never touched, or dropped) are reported.
    pub const MISSING: RegisterMode = RegisterMode(abi::UFFDIO_REGISTER_MODE_MISSING);
    /// Writes to write-protected pages are reported (or, with `UFFD_FEATURE_WP_ASYNC`,
    /// resolved by the kernel and recorded for `PAGEMAP_SCAN`).
    pub const WRITE_PROTECT: RegisterMode = RegisterMode(abi::UFFDIO_REGISTER_MODE_WP);
    /// Faults on pages present in the page cache but not mapped (shmem, hugetlbfs only).
    pub const MINOR: RegisterMode = RegisterMode(abi::UFFDIO_REGISTER_MODE_MINOR);

    pub fn bits(self) -> u64 {
        self.0
    }
}

impl std::ops::BitOr for RegisterMode {
    type Output = RegisterMode;
    fn bitor(self, rhs: RegisterMode) -> RegisterMode {
        RegisterMode(self.0 | rhs.0)
    }
}

/// The ioctls the kernel allows on a registered range (`uffdio_register.ioctls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeIoctls(pub u64);

impl RangeIoctls {
    fn has(self, nr: u64) -> bool {
        self.0 & (1 << nr) != 0
    }
    pub fn wake(self) -> bool {
        self.has(abi::UFFDIO_WAKE_NR)
    }
    pub fn copy(self) -> bool {
        self.has(abi::UFFDIO_COPY_NR)
    }
    pub fn zeropage(self) -> bool {
        self.has(abi::UFFDIO_ZEROPAGE_NR)
    }
    pub fn write_protect(self) -> bool {
        self.has(abi::UFFDIO_WRITEPROTECT_NR)
    }
    pub fn continue_(self) -> bool {
        self.has(abi::UFFDIO_CONTINUE_NR)
    }
    pub fn move_(self) -> bool {
        self.has(abi::UFFDIO_MOVE_NR)
    }
}

/// What [`Uffd::copy`] or [`Uffd::zeropage`] did with a run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyOutcome {
    /// Bytes placed by this call.
    pub copied: u64,
    /// Bytes skipped because their page was already there (`EEXIST`: an earlier copy, a
    /// racing fault resolved first). Their content was left alone.
    pub already_present: u64,
    /// Bytes at the end of the run not placed because the address space is changing
    /// (`EAGAIN` without progress: a remove/unmap/remap/fork event is waiting to be read). Read
    /// the events ([`Uffd::read_events`]), then copy what is still wanted of
    /// `[dst + len - retry, dst + len)` again. 0 when the whole run was handled.
    pub retry: u64,
}

impl CopyOutcome {
    /// Whether every page of the run is now present (copied now or before).
    pub fn is_complete(&self) -> bool {
        self.retry == 0
    }
}

/// One message read from a uffd.
#[derive(Debug)]
pub enum Event {
    /// A thread faulted at `addr` (page-aligned unless `UFFD_FEATURE_EXACT_ADDRESS`). `write`:
    /// a write access; `wp`: a write to a write-protected page (sync WP mode); `minor`: a
    /// minor fault. `tid`: the faulting thread with `UFFD_FEATURE_THREAD_ID`, else 0 — note:
    /// for a fault raised by another process's access (`process_vm_readv`), the tid of
    /// *that* process's thread.
    PageFault {
        addr: u64,
        write: bool,
        wp: bool,
        minor: bool,
        tid: u32,
    },
    /// The process forked (`UFFD_FEATURE_EVENT_FORK`): `uffd` serves the child's registered
    /// ranges; it needs no `UFFDIO_API`.
    Fork { uffd: OwnedFd },
    /// `mremap` moved `[from, from + len)` to `to` (`UFFD_FEATURE_EVENT_REMAP`).
    Remap { from: u64, to: u64, len: u64 },
    /// Pages of `[start, end)` were dropped (`MADV_DONTNEED`/`MADV_REMOVE`,
    /// `UFFD_FEATURE_EVENT_REMOVE`): they are missing again and fault again.
    Remove { start: u64, end: u64 },
    /// `[start, end)` was unmapped (`munmap`, `mmap` over it, `UFFD_FEATURE_EVENT_UNMAP`).
    Unmap { start: u64, end: u64 },
    /// An event this code does not know.
    Unknown { event: u8 },
}

/// A userfaultfd, owned by ferry, serving the registered ranges of one process's address
/// space (ferry's own, or another process's when made inside it).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    /// Whose address space this uffd serves (named in errors).
    pid: Pid,
    /// Features enabled by [`Uffd::api`] (`None` before).
    enabled: Option<u64>,
    /// Features this kernel offers, as `UFFDIO_API` reported them.
    available: u64,
}

/// Flags every uffd of ferry gets: close-on-exec, and non-blocking reads (`EAGAIN` = no
/// event), so that a handler can drain the queue and poll it (e.g. with tokio's `AsyncFd`).
const CREATE_FLAGS: u64 = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;

/// Names of the feature bits in `features`, e.g. `"WP_ASYNC|WP_UNPOPULATED"`.
pub fn feature_names(features: u64) -> String {
    let mut names: Vec<String> = abi::UFFD_FEATURE_NAMES
        .iter()
        .filter(|(bit, _)| features & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = abi::UFFD_FEATURE_NAMES.iter().fold(0, |a, (b, _)| a | b);
    if features & !known != 0 {
        names.push(format!("{:#x}", features & !known));
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> std::result::Result<(), Errno> {
    // SAFETY: every caller passes the request number that belongs to `T` (a `#[repr(C)]`
    // uffdio_* structure of exactly the size encoded in the number), and `arg` is a live,
    // writable value of that type for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg as *mut T) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn check_range(pid: Pid, start: u64, len: u64) -> Result<()> {
    if !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
        return Err(SysError::Memory {
            pid: pid.as_raw(),
            addr: start,
            len,
            errno: Errno::EINVAL,
        });
    }
    Ok(())
}

impl Uffd {
    /// Creates a uffd for the address space of a stopped tracee: an injected
    /// `userfaultfd(flags | O_CLOEXEC | O_NONBLOCK)`, copied into ferry with `pidfd_getfd`, then
    /// closed in the tracee by an injected `close` (also when the copy failed). The tracee
    /// keeps no fd; ferry's copy is the only reference.
    ///
    /// `flags`: 0, or [`abi::UFFD_USER_MODE_ONLY`]. Without it the call needs CAP_SYS_PTRACE
    /// *in the tracee* (`vm.unprivileged_userfaultfd` is 0): create it while a vessel still
    /// runs as root, or pass `UFFD_USER_MODE_ONLY` for a process of another user (enough for
    /// write-protect tracking, wrong for demand paging: see the module doc).
    pub fn create_in_tracee(injector: &mut Injector<'_>, flags: u64) -> Result<Uffd> {
        let pid = injector.tracee().pid();
        let remote = injector.call(
            "userfaultfd",
            libc::SYS_userfaultfd,
            [flags | CREATE_FLAGS, 0, 0, 0, 0, 0],
        )? as i32;
        let taken = pidfd::pidfd_open(pid).and_then(|p| pidfd::pidfd_getfd(&p, pid, remote));
        let closed = injector.call(
            "close(userfaultfd)",
            libc::SYS_close,
            [remote as u64, 0, 0, 0, 0, 0],
        );
        let fd = taken?;
        closed?;
        debug!(
            pid = pid.as_raw(),
            remote,
            fd = fd.as_raw_fd(),
            "uffd taken from tracee"
        );
        Ok(Uffd::from_fd(fd, pid))
    }

    /// Creates a uffd for ferry's own address space (tests, and probing the kernel): the
    /// `userfaultfd` system call, or `/dev/userfaultfd` if the call is refused.
    pub fn new_local(flags: u64) -> Result<Uffd> {
        let me = nix::unistd::getpid();
        // SAFETY: userfaultfd takes one integer and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | CREATE_FLAGS) };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            return Ok(Uffd::from_fd(fd, me));
        }
        let errno = Errno::last();
        if errno != Errno::EPERM {
            return Err(SysError::syscall("userfaultfd", me, errno));
        }
        Uffd::open_dev(flags)
    }

    /// Creates a uffd for ferry's own address space through `/dev/userfaultfd`
    /// (`USERFAULTFD_IOC_NEW`), which needs access to the device instead of CAP_SYS_PTRACE.
    pub fn open_dev(flags: u64) -> Result<Uffd> {
        let me = nix::unistd::getpid();
        let dev = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
            .map_err(|e| SysError::io("/dev/userfaultfd", e))?;
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd or -1.
        let fd = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                abi::USERFAULTFD_IOC_NEW as libc::c_ulong,
                (flags | CREATE_FLAGS) as libc::c_ulong,
            )
        };
        if fd < 0 {
            return Err(SysError::syscall(
                "ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW)",
                me,
                Errno::last(),
            ));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Uffd::from_fd(fd, me))
    }

    /// Wraps a uffd ferry already owns (e.g. from [`Event::Fork`]); `pid` is the process
    /// whose address space it serves. [`Uffd::api`] must still be called unless the kernel
    /// made it already initialized (fork events).
    pub fn from_fd(fd: OwnedFd, pid: Pid) -> Uffd {
        Uffd {
            fd,
            pid,
            enabled: None,
            available: 0,
        }
    }

    /// The features this kernel's userfaultfd offers (probed on a throwaway uffd of ferry's
    /// own).
    pub fn kernel_features() -> Result<u64> {
        let mut probe = Uffd::new_local(0)?;
        probe.api(0)?;
        Ok(probe.available)
    }

    /// The process whose address space this uffd serves.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Negotiates the API (`UFFDIO_API`, once per uffd) and enables `features`
    /// (`abi::UFFD_FEATURE_*`). Returns the features now enabled: the requested ones, plus
    /// `WP_UNPOPULATED`, which the kernel adds to `WP_ASYNC`. Requesting a feature the kernel
    /// lacks fails and names it.
    pub fn api(&mut self, features: u64) -> Result<u64> {
        let mut arg = abi::UffdioApi {
            api: abi::UFFD_API,
            features,
            ioctls: 0,
        };
        if let Err(errno) = ioctl(self.fd.as_fd(), abi::UFFDIO_API, &mut arg) {
            if errno == Errno::EINVAL
                && self.enabled.is_none()
                && let Ok(available) = Uffd::kernel_features()
                && features & !available != 0
            {
                return Err(SysError::UnexpectedStop {
                    pid: self.pid.as_raw(),
                    detail: format!(
                        "this kernel's userfaultfd lacks {}",
                        feature_names(features & !available)
                    ),
                });
            }
            return Err(SysError::syscall("UFFDIO_API", self.pid, errno));
        }
        let mut enabled = features;
        if enabled & abi::UFFD_FEATURE_WP_ASYNC != 0 {
            enabled |= abi::UFFD_FEATURE_WP_UNPOPULATED;
        }
        self.enabled = Some(enabled);
        self.available = arg.features;
        debug!(
            pid = self.pid.as_raw(),
            enabled = %feature_names(enabled),
            available = %feature_names(arg.features),
            "UFFDIO_API"
        );
        Ok(enabled)
    }

    /// Features enabled by [`Uffd::api`] (`None` before it).
    pub fn features(&self) -> Option<u64> {
        self.enabled
    }

    /// Features the kernel reported as available in [`Uffd::api`] (0 before it).
    pub fn available_features(&self) -> u64 {
        self.available
    }

    /// Registers `[start, start + len)` (page-aligned, covered by mappings without holes) in
    /// `mode`; returns which range ioctls the kernel allows there. EINVAL: a hole, a kind of
    /// memory the mode does not support (see the module doc), or a range already registered
    /// with another uffd (EBUSY).
    pub fn register(&self, start: u64, len: u64, mode: RegisterMode) -> Result<RangeIoctls> {
        check_range(self.pid, start, len)?;
        let mut arg = abi::UffdioRegister {
            range: abi::UffdioRange { start, len },
            mode: mode.bits(),
            ioctls: 0,
        };
        ioctl(self.fd.as_fd(), abi::UFFDIO_REGISTER, &mut arg).map_err(|errno| {
            SysError::Memory {
                pid: self.pid.as_raw(),
                addr: start,
                len,
                errno,
            }
        })?;
        trace!(
            pid = self.pid.as_raw(),
            start,
            len,
            mode = mode.bits(),
            ioctls = arg.ioctls,
            "registered"
        );
        Ok(RangeIoctls(arg.ioctls))
    }

    /// Unregisters `[start, start + len)`: faults there become ordinary again, and
    /// write protection set through this uffd is removed. Threads waiting for a fault in the
    /// range are woken (and fault again, now ordinarily).
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        check_range(self.pid, start, len)?;
        let mut arg = abi::UffdioRange { start, len };
        ioctl(self.fd.as_fd(), abi::UFFDIO_UNREGISTER, &mut arg).map_err(|errno| SysError::Memory {
            pid: self.pid.as_raw(),
            addr: start,
            len,
            errno,
        })
    }

    /// Wakes threads waiting for faults in `[start, start + len)` (after copies made with
    /// `wake = false`).
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        check_range(self.pid, start, len)?;
        let mut arg = abi::UffdioRange { start, len };
        ioctl(self.fd.as_fd(), abi::UFFDIO_WAKE, &mut arg).map_err(|errno| SysError::Memory {
            pid: self.pid.as_raw(),
            addr: start,
            len,
            errno,
        })
    }

    /// Places `src` (page-multiple length, any alignment) at `dst` (page-aligned) in the
    /// served address space with `UFFDIO_COPY`, in as few calls as the kernel allows (one for
    /// a run of missing pages, however long). Pages already there are skipped, not
    /// overwritten (`EEXIST`). With `wake`, threads waiting on the copied pages run on.
    ///
    /// Errors: `ENOENT` the range is not (or no longer) registered / not mapped; `ESRCH` the
    /// process's address space is gone (it exited); `ENOMEM`, `EFAULT` (`src` unreadable).
    pub fn copy(&self, dst: u64, src: &[u8], wake: bool) -> Result<CopyOutcome> {
        let len = src.len() as u64;
        check_range(self.pid, dst, len)?;
        let mode = if wake {
            0
        } else {
            abi::UFFDIO_COPY_MODE_DONTWAKE
        };
        self.fill(dst, len, |at, left| {
            let off = (at - dst) as usize;
            let mut arg = abi::UffdioCopy {
                dst: at,
                src: src[off..].as_ptr() as u64,
                len: left,
                mode,
                copy: 0,
            };
            let r = ioctl(self.fd.as_fd(), abi::UFFDIO_COPY, &mut arg);
            (r, arg.copy)
        })
    }

    /// Maps zero pages at `[start, start + len)` (`UFFDIO_ZEROPAGE`), skipping pages already
    /// there; like [`Uffd::copy`] otherwise. Anonymous private memory only (shmem: use copy).
    pub fn zeropage(&self, start: u64, len: u64, wake: bool) -> Result<CopyOutcome> {
        check_range(self.pid, start, len)?;
        let mode = if wake {
            0
        } else {
            abi::UFFDIO_ZEROPAGE_MODE_DONTWAKE
        };
        self.fill(start, len, |at, left| {
            let mut arg = abi::UffdioZeropage {
                range: abi::UffdioRange {
                    start: at,
                    len: left,
                },
                mode,
                zeropage: 0,
            };
            let r = ioctl(self.fd.as_fd(), abi::UFFDIO_ZEROPAGE, &mut arg);
            (r, arg.zeropage)
        })
    }

    /// The loop shared by copy and zeropage: `call(at, left)` runs one ioctl and returns its
    /// result and the kernel's progress field (bytes done, or `-errno`).
    fn fill(
        &self,
        start: u64,
        len: u64,
        mut call: impl FnMut(u64, u64) -> (std::result::Result<(), Errno>, i64),
    ) -> Result<CopyOutcome> {
        let end = start + len;
        let mut at = start;
        let mut out = CopyOutcome::default();
        while at < end {
            let (r, progress) = call(at, end - at);
            if r.is_ok() {
                out.copied += end - at;
                break;
            }
            if progress > 0 {
                // Partial: the kernel stopped at a page it could not fill (reported by the
                // next call) or to let a signal in.
                let done = (progress as u64).min(end - at);
                out.copied += done;
                at += done;
                continue;
            }
            match r {
                Err(Errno::EEXIST) => {
                    out.already_present += PAGE_SIZE;
                    at += PAGE_SIZE;
                }
                Err(Errno::EAGAIN) => {
                    out.retry = end - at;
                    break;
                }
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(SysError::Memory {
                        pid: self.pid.as_raw(),
                        addr: at,
                        len: end - at,
                        errno,
                    });
                }
                Ok(()) => unreachable!("handled above"),
            }
        }
        trace!(pid = self.pid.as_raw(), start, len, ?out, "filled");
        Ok(out)
    }

    /// Write-protects (`on`) or unprotects `[start, start + len)` (`UFFDIO_WRITEPROTECT`;
    /// the range must be registered with [`RegisterMode::WRITE_PROTECT`]). Unprotecting
    /// wakes threads waiting on a write fault there.
    pub fn write_protect(&self, start: u64, len: u64, on: bool) -> Result<()> {
        check_range(self.pid, start, len)?;
        let mut arg = abi::UffdioWriteprotect {
            range: abi::UffdioRange { start, len },
            mode: if on {
                abi::UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        ioctl(self.fd.as_fd(), abi::UFFDIO_WRITEPROTECT, &mut arg).map_err(|errno| {
            SysError::Memory {
                pid: self.pid.as_raw(),
                addr: start,
                len,
                errno,
            }
        })
    }

    /// Appends every pending message to `out` without blocking; returns how many. Reads until
    /// the queue is empty (`EAGAIN`), as an edge-triggered poller (`AsyncFd`) requires.
    pub fn read_events(&self, out: &mut Vec<Event>) -> Result<usize> {
        const BATCH: usize = 64;
        let mut buf = [0u8; abi::UFFD_MSG_SIZE * BATCH];
        let mut count = 0;
        loop {
            // SAFETY: `buf` is a live, writable buffer of the length passed.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                match Errno::last() {
                    Errno::EAGAIN => return Ok(count),
                    Errno::EINTR => continue,
                    errno => return Err(SysError::syscall("read(userfaultfd)", self.pid, errno)),
                }
            }
            if n == 0 {
                return Ok(count);
            }
            for msg in buf[..n as usize].chunks_exact(abi::UFFD_MSG_SIZE) {
                let mut m = [0u8; abi::UFFD_MSG_SIZE];
                m.copy_from_slice(msg);
                out.push(self.event(UffdMsg::decode(&m)));
                count += 1;
            }
        }
    }

    fn event(&self, msg: UffdMsg) -> Event {
        match msg {
            UffdMsg::Pagefault {
                flags,
                address,
                ptid,
            } => Event::PageFault {
                addr: address,
                write: flags & abi::UFFD_PAGEFAULT_FLAG_WRITE != 0,
                wp: flags & abi::UFFD_PAGEFAULT_FLAG_WP != 0,
                minor: flags & abi::UFFD_PAGEFAULT_FLAG_MINOR != 0,
                tid: ptid,
            },
            UffdMsg::Fork { ufd } => Event::Fork {
                // SAFETY: for a fork event the kernel installed `ufd` in ferry's fd table
                // while we read the message; nothing else knows it.
                uffd: unsafe { OwnedFd::from_raw_fd(ufd as RawFd) },
            },
            UffdMsg::Remap { from, to, len } => Event::Remap { from, to, len },
            UffdMsg::Remove { start, end } => Event::Remove { start, end },
            UffdMsg::Unmap { start, end } => Event::Unmap { start, end },
            UffdMsg::Unknown { event } => Event::Unknown { event },
        }
    }

    /// Waits until a message is pending or `timeout` passes (`None`: forever); returns
    /// whether one is pending. For handler threads without an async runtime.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one live pollfd, count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                return Err(SysError::syscall(
                    "poll(userfaultfd)",
                    self.pid,
                    Errno::last(),
                ));
            }
            if pfd.revents & libc::POLLERR != 0 {
                return Err(SysError::syscall(
                    "poll(userfaultfd)",
                    self.pid,
                    Errno::EINVAL,
                ));
            }
            return Ok(r > 0 && pfd.revents & libc::POLLIN != 0);
        }
    }
}

/// Ends the served process if its pager goes away with pages still missing.
///
/// When the last reference to a uffd is closed — ferry dropped it, or ferry died — the kernel
/// unregisters every range and wakes the waiting threads, which then fault *ordinarily*: a
/// missing anonymous page becomes a page of zeros and the process runs on with wrong memory.
/// A guard is a small forked process (`ferry-guard`) that holds a second reference to the
/// uffd, a pidfd of the process, a pidfd of ferry and the read end of a pipe from ferry. If
/// ferry drops the guard without [`PagerGuard::release`], or ferry's process ends (its pidfd
/// becomes readable), the guard kills the process with SIGKILL *before* its own reference
/// goes, writes one line naming the process to its stderr (ferry's), and exits. No thread of the process ever sees a page that was never
/// delivered. The guard runs only raw system calls after the fork; it is in its own session
/// and blocks every signal, so a Ctrl-C meant for ferry does not end it.
#[derive(Debug)]
pub struct PagerGuard {
    guard: Pid,
    target: Pid,
    release: Option<OwnedFd>,
}

/// The byte that tells a guard to exit without killing.
const RELEASE: u8 = b'R';
/// The byte that tells a guard to kill the process. (End of file means the same; but a
/// child forked meanwhile, e.g. a vessel, may hold a copy of the write end, so it is not
/// relied on.)
const KILL: u8 = b'K';

impl PagerGuard {
    /// Forks a guard for the process `uffd` serves.
    pub fn new(uffd: &Uffd) -> Result<PagerGuard> {
        let target = uffd.pid();
        let me = nix::unistd::getpid();
        let pidfd = pidfd::pidfd_open(target)?;
        let ferry = pidfd::pidfd_open(me)?;
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SysError::syscall("pipe2", me, e))?;
        let message = format!(
            "ferry-guard: the pager of pid {target} is gone while pages were still missing: \
             killed pid {target} (SIGKILL)\n"
        );
        let mut keep = [
            uffd.as_raw_fd(),
            pidfd.as_raw_fd(),
            read_end.as_raw_fd(),
            ferry.as_raw_fd(),
        ];
        keep.sort_unstable();
        let fds = GuardFds {
            target: pidfd.as_raw_fd(),
            command: read_end.as_raw_fd(),
            ferry: ferry.as_raw_fd(),
        };
        // SAFETY: after fork the child runs only the raw, async-signal-safe system calls of
        // `guard_main` on memory prepared before the fork, and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(SysError::syscall("fork(pager guard)", me, Errno::last()));
        }
        if pid == 0 {
            guard_main(&keep, fds, message.as_bytes());
        }
        drop((read_end, pidfd, ferry));
        debug!(target = target.as_raw(), guard = pid, "pager guard started");
        Ok(PagerGuard {
            guard: Pid::from_raw(pid),
            target,
            release: Some(write_end),
        })
    }

    /// The guard process.
    pub fn guard_pid(&self) -> Pid {
        self.guard
    }

    /// The process is on its own (every page delivered, or its ranges unregistered): the
    /// guard exits without touching it.
    pub fn release(mut self) -> Result<()> {
        self.tell(RELEASE)
    }

    fn tell(&mut self, command: u8) -> Result<()> {
        if let Some(w) = self.release.take() {
            let r = nix::unistd::write(&w, &[command]);
            drop(w);
            self.reap();
            r.map_err(|e| SysError::syscall("write(pager guard)", self.guard, e))?;
        }
        Ok(())
    }

    fn reap(&self) {
        // ECHILD (someone else reaped it) is fine; the guard exits at once in both cases.
        let _ = nix::sys::wait::waitpid(self.guard, None);
    }
}

impl Drop for PagerGuard {
    /// Not released: the guard kills the process, then exits.
    fn drop(&mut self) {
        if self.release.is_some() {
            warn!(
                pid = self.target.as_raw(),
                "pager guard dropped without release: killing the process"
            );
            let _ = self.tell(KILL);
        }
    }
}

/// The fds a guard works with (numbers inherited from ferry).
#[derive(Clone, Copy)]
struct GuardFds {
    target: RawFd,
    command: RawFd,
    ferry: RawFd,
}

/// The guard's whole life, in the forked child: raw system calls only (no allocation, no
/// locks, no Rust runtime), then `_exit`.
fn guard_main(keep: &[RawFd; 4], fds: GuardFds, message: &[u8]) -> ! {
    // SAFETY: every call takes integers or pointers to memory that lives for the whole child
    // (the stack frame of this never-returning function, or `message`, prepared before fork);
    // all are async-signal-safe system calls.
    unsafe {
        libc::setsid();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_NAME,
            c"ferry-guard".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // Close everything but stdio and the kept fds, gap by gap (`keep` is sorted).
        let mut from = 3u32;
        for &fd in keep {
            let fd = fd as u32;
            if fd > from {
                libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32);
            }
            from = from.max(fd + 1);
        }
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
        let mut polled = [
            libc::pollfd {
                fd: fds.command,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fds.ferry,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let n = libc::poll(polled.as_mut_ptr(), 2, -1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n > 0 && polled[0].revents != 0 && polled[1].revents == 0 {
                let mut byte = 0u8;
                let r = libc::read(fds.command, (&mut byte as *mut u8).cast(), 1);
                if r == 1 && byte == RELEASE {
                    libc::_exit(0);
                }
                if r < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
            }
            // KILL, end of file, ferry's process ended, or any failure.
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fds.target,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            );
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(1);
        }
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Uffd> for OwnedFd {
    fn from(u: Uffd) -> OwnedFd {
        u.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_features() {
        assert_eq!(feature_names(0), "none");
        assert_eq!(
            feature_names(abi::UFFD_FEATURE_WP_ASYNC | abi::UFFD_FEATURE_WP_UNPOPULATED),
            "WP_UNPOPULATED|WP_ASYNC"
        );
        assert_eq!(feature_names(1 << 40), "0x10000000000");
    }

    #[test]
    fn refuses_unaligned_ranges_without_a_call() {
        let me = nix::unistd::getpid();
        assert!(check_range(me, 4096, 8192).is_ok());
        for (s, l) in [(1, 4096), (4096, 1), (4096, 0)] {
            let e = check_range(me, s, l).unwrap_err();
            assert_eq!(e.errno(), Some(Errno::EINVAL));
        }
    }
}
