//! Restore (insertion): rebuild a process from a verified image.
//!
//! The process is built inside a *vessel*: a fork of ferry, seized before it runs any code,
//! which the kernel kills if ferry dies (`PTRACE_O_EXITKILL`). Everything is done by system
//! calls injected into the vessel, so that the kernel — not ferry — creates every mapping,
//! opens every file and sets every credential, with its own checks:
//!
//! ```text
//!  vessel (copy of ferry) ─▶ scratch page at a free address, rseq of ferry unregistered,
//!  fds closed, every other mapping unmapped ─▶ vDSO at its old address (ARCH_MAP_VDSO_64)
//!  ─▶ as the image's fs uid/gid: every mapping (MAP_FIXED_NOREPLACE), files, cwd
//!  ─▶ pages written (process_vm_writev, in large batches) ─▶ final protections, madvise
//!  ─▶ mm layout + auxv + exe (PR_SET_MM_MAP) ─▶ signals, timers, limits, misc prctl
//!  ─▶ credentials (bounding set, securebits, groups, gids, uids, capabilities)
//!  ─▶ scratch unmapped, rseq registered, registers + XSAVE + mask set
//!  ─▶ interrupt into the kernel's signal path, detach: the kernel restarts the interrupted
//!     call (or delivers a pending signal) exactly as it would have on the old host.
//! ```
//!
//! Files are opened with the image's filesystem credentials, so a crafted image cannot hand a
//! process a file its owner could not open; limits and nice values are applied after the
//! credentials, so the kernel refuses any that exceed the owner's privilege.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_image::*;
use ferry_sys::abi::{self, Itimerval, KernelSigaction, PrctlMmMap, StackT, encode_capset};
use ferry_sys::inject::{Injector, Scratch};
use ferry_sys::libc;
use ferry_sys::ptrace::Tracee;
use ferry_sys::{Pid, SysError, host, mem, proc, spawn};
use tracing::{debug, info};

use crate::capture::from_model_regs;
use crate::freeze::{BLOCK_ALL, enter_signal_path_and_detach};
use crate::imagedir::LoadedImage;
use crate::{RestoreError, platform};

/// Pages of the restorer's scratch area: one page of code (`syscall`), the rest for arguments.
const SCRATCH_PAGES: u64 = 4;
/// Highest capability number this code knows to drop from the bounding set.
const CAP_LAST_CAP_MAX: u64 = 63;

/// A process brought back to life. It is a child of the calling process.
#[derive(Debug)]
pub struct RestoredProcess {
    pub pid: Pid,
    pub report: RestoreReport,
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// Request until the process runs again.
    pub total: Duration,
    /// Loading and verifying the image (checksums).
    pub load: Duration,
    /// Writing page data into the new process.
    pub memory_copy: Duration,
    pub memory_bytes: u64,
    pub mappings: usize,
    pub injected_calls: u64,
    pub old_pid: i32,
    /// Files the process held that its owner could not open any more (opened as root).
    pub privileged_opens: u32,
}

/// Loads, verifies and restores the image in `dir`.
pub fn restore(dir: &Path) -> Result<RestoredProcess, RestoreError> {
    let started = Instant::now();
    let loaded = LoadedImage::open(dir)?;
    let load = started.elapsed();
    restore_loaded(&loaded, started, load)
}

/// Restores an image that is already loaded and verified.
pub fn restore_loaded(
    loaded: &LoadedImage,
    started: Instant,
    load: Duration,
) -> Result<RestoredProcess, RestoreError> {
    let image = &loaded.image;
    if !host::is_root() {
        return Err(RestoreError::PermissionDenied(
            "restoring a process needs root (CAP_CHECKPOINT_RESTORE and the right to take the image's credentials)".into(),
        ));
    }
    let host = platform::host_platform().map_err(RestoreError::sys("fingerprinting this host"))?;
    image.origin.platform.check_runs_on(&host)?;
    precheck_files(image)?;

    let tracee = spawn::vessel().map_err(RestoreError::sys("creating the process"))?;
    let pid = tracee.pid();
    let mut builder = Builder {
        tracee: Some(tracee),
        image,
        scratch: Scratch { addr: 0, len: 0 },
        calls: 0,
        copy_time: Duration::ZERO,
        gadget: 0,
        privileged_opens: 0,
    };
    match builder.build(loaded) {
        Ok(()) => {
            let report = RestoreReport {
                total: started.elapsed(),
                load,
                memory_copy: builder.copy_time,
                memory_bytes: image.memory.pages.bytes,
                mappings: image.memory.vmas.len(),
                injected_calls: builder.calls,
                old_pid: image.control.pid,
                privileged_opens: builder.privileged_opens,
            };
            info!(pid = pid.as_raw(), ?report, "restored");
            Ok(RestoredProcess { pid, report })
        }
        Err(e) => {
            if let Some(t) = builder.tracee.take() {
                let _ = t.kill();
            }
            Err(e)
        }
    }
}

/// Checks before any process exists that every file the image needs is there and, for
/// private file mappings, unchanged.
fn precheck_files(image: &ProcessImage) -> Result<(), RestoreError> {
    let stat = |what: &str, path: &str| {
        proc::stat_path(Path::new(path)).map_err(|e| RestoreError::MissingFile {
            what: what.to_string(),
            path: path.to_string(),
            detail: match e.errno() {
                Some(errno) => errno.desc().to_string(),
                None => e.to_string(),
            },
        })
    };
    for fd in &image.files.fds {
        let what = format!("fd {}", fd.number);
        let st = stat(&what, fd.kind.path())?;
        let kind_ok = match &fd.kind {
            FdKind::Regular { .. } => st.file_type() == libc::S_IFREG,
            FdKind::Directory { .. } => st.file_type() == libc::S_IFDIR,
            FdKind::CharDevice { major, minor, .. } => {
                st.file_type() == libc::S_IFCHR
                    && host::dev_major(st.rdev) == *major
                    && host::dev_minor(st.rdev) == *minor
            }
        };
        if !kind_ok {
            return Err(RestoreError::FileChanged {
                what,
                path: fd.kind.path().to_string(),
                detail: "it is no longer the same kind of file".into(),
            });
        }
    }
    for vma in &image.memory.vmas {
        if let Backing::File { path, identity, .. } = &vma.backing {
            let what = format!("mapping {:#x}", vma.start);
            let st = stat(&what, path)?;
            if !vma.shared && (st.size != identity.size || st.mtime_ns != identity.mtime_ns) {
                return Err(RestoreError::FileChanged {
                    what,
                    path: path.clone(),
                    detail: format!(
                        "size {} → {}, mtime differs: {}",
                        identity.size,
                        st.size,
                        st.mtime_ns != identity.mtime_ns
                    ),
                });
            }
        }
    }
    stat("working directory", &image.control.cwd)?;
    stat("executable", &image.control.exe)?;
    Ok(())
}

struct Builder<'a> {
    tracee: Option<Tracee>,
    image: &'a ProcessImage,
    scratch: Scratch,
    calls: u64,
    copy_time: Duration,
    gadget: u64,
    privileged_opens: u32,
}

/// Where arguments go inside the scratch area (page 0 holds the `syscall` instruction).
fn arg_area(s: &Scratch) -> u64 {
    s.addr + PAGE_SIZE
}

impl Builder<'_> {
    fn tracee(&mut self) -> &mut Tracee {
        self.tracee
            .as_mut()
            .expect("the vessel lives until build() ends")
    }

    /// Runs `f` with an injector on the vessel; errors name `step`.
    fn inject<T>(
        &mut self,
        step: &str,
        f: impl FnOnce(&mut Injector<'_>, Scratch) -> Result<T, SysError>,
    ) -> Result<T, RestoreError> {
        let gadget = self.gadget;
        let scratch = self.scratch;
        let tracee = self
            .tracee
            .as_mut()
            .expect("the vessel lives until build() ends");
        let template = tracee.regs().map_err(RestoreError::sys(step))?;
        let mut inj = Injector::new(tracee, gadget, template);
        let out = f(&mut inj, scratch);
        self.calls += inj.calls();
        out.map_err(RestoreError::sys(step))
    }

    fn build(&mut self, loaded: &LoadedImage) -> Result<(), RestoreError> {
        let pid = self.tracee().pid();
        self.tracee()
            .set_sigmask(BLOCK_ALL)
            .map_err(RestoreError::sys("blocking signals"))?;
        self.gadget = ferry_sys::inject::find_syscall_gadget(pid)
            .map_err(RestoreError::sys("finding a syscall gadget"))?;

        self.empty_the_vessel()?;
        self.map_vdso()?;
        self.as_image_fs_user(true)?;
        self.map_memory()?;
        self.write_pages(loaded)?;
        self.finish_mappings()?;
        self.open_files()?;
        self.as_image_fs_user(false)?;
        self.set_mm_layout()?;
        self.restore_signals_and_timers()?;
        self.restore_misc()?;
        self.restore_credentials()?;
        self.restore_after_credentials()?;
        self.go()
    }

    /// Scratch page at a free address, ferry's rseq unregistered, fds closed, every other
    /// mapping gone.
    fn empty_the_vessel(&mut self) -> Result<(), RestoreError> {
        let pid = self.tracee().pid();
        let current =
            proc::read_maps(pid).map_err(RestoreError::sys("reading the vessel's maps"))?;
        let mut taken: Vec<(u64, u64)> = current.iter().map(|m| (m.start, m.end)).collect();
        taken.extend(self.image.memory.vmas.iter().map(|v| (v.start, v.end)));
        let len = SCRATCH_PAGES * PAGE_SIZE;
        let at = find_gap(&mut taken, len).ok_or_else(|| RestoreError::Sys {
            step: "placing the restorer".into(),
            source: SysError::UnexpectedStop {
                pid: pid.as_raw(),
                detail: "no free address range".into(),
            },
        })?;
        let rseq = self
            .tracee()
            .rseq_configuration()
            .map_err(RestoreError::sys("reading the vessel's rseq"))?;
        self.scratch = self.inject("mapping the restorer", |inj, _| {
            let s = inj.map_scratch(Some(at), SCRATCH_PAGES)?;
            inj.poke(s.addr, &[0x0f, 0x05])?;
            inj.call(
                "mprotect(restorer code)",
                libc::SYS_mprotect,
                [
                    s.addr,
                    PAGE_SIZE,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            Ok(s)
        })?;
        let s = self.scratch;
        self.gadget = s.addr;
        self.inject("emptying the vessel", |inj, _| {
            if let Some(r) = rseq {
                inj.call(
                    "rseq(unregister)",
                    libc::SYS_rseq,
                    [
                        r.rseq_abi_pointer,
                        r.rseq_abi_size as u64,
                        1,
                        r.signature as u64,
                        0,
                        0,
                    ],
                )?;
            }
            inj.call(
                "close_range",
                libc::SYS_close_range,
                [0, u32::MAX as u64, 0, 0, 0, 0],
            )?;
            inj.call("munmap(below)", libc::SYS_munmap, [0, s.addr, 0, 0, 0, 0])?;
            let top = s.addr + s.len;
            inj.call(
                "munmap(above)",
                libc::SYS_munmap,
                [top, validate::USER_SPACE_END - top, 0, 0, 0, 0],
            )?;
            Ok(())
        })
    }

    fn map_vdso(&mut self) -> Result<(), RestoreError> {
        let Some(start) = self
            .image
            .memory
            .vmas
            .iter()
            .find(|v| matches!(v.backing, Backing::Vvar | Backing::Vdso))
            .map(|v| v.start)
        else {
            return Ok(());
        };
        self.inject("mapping the vDSO", |inj, _| {
            inj.call(
                "arch_prctl(ARCH_MAP_VDSO_64)",
                libc::SYS_arch_prctl,
                [abi::ARCH_MAP_VDSO_64, start, 0, 0, 0, 0],
            )
            .map(drop)
        })
    }

    /// Switches the filesystem identity to the image's (`to_image`) or back to root. While it
    /// is the image's, the kernel checks every open and mmap against the image's owner.
    fn as_image_fs_user(&mut self, to_image: bool) -> Result<(), RestoreError> {
        let creds = &self.image.credentials;
        let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let (fsuid, fsgid) = if to_image {
            (creds.uid.fs as u64, creds.gid.fs as u64)
        } else {
            (0, 0)
        };
        let ngroups = creds.groups.len() as u64;
        self.inject("switching file-system identity", |inj, s| {
            if to_image {
                let buf = arg_area(&s);
                if groups.len() as u64 > s.len - PAGE_SIZE {
                    return Err(SysError::UnexpectedStop {
                        pid: inj.tracee().pid().as_raw(),
                        detail: format!("{ngroups} supplementary groups do not fit"),
                    });
                }
                inj.poke(buf, &groups)?;
                inj.call("setgroups", libc::SYS_setgroups, [ngroups, buf, 0, 0, 0, 0])?;
            }
            inj.call("setfsgid", libc::SYS_setfsgid, [fsgid, 0, 0, 0, 0, 0])?;
            inj.call("setfsuid", libc::SYS_setfsuid, [fsuid, 0, 0, 0, 0, 0])?;
            Ok(())
        })
    }

    /// Opens `path` in the vessel as the image's owner. A process may hold files its owner can
    /// no longer open (opened before it dropped privileges); those are opened with root's
    /// file-system identity instead, and counted (`privileged_opens`).
    fn open_as_owner(
        inj: &mut Injector<'_>,
        s: &Scratch,
        creds: &Credentials,
        path: &str,
        flags: i32,
        privileged_opens: &mut u32,
    ) -> Result<u64, SysError> {
        let p = Self::poke_path(inj, s, path)?;
        let args = [libc::AT_FDCWD as u64, p, flags as u64, 0, 0, 0];
        match inj.call("open", libc::SYS_openat, args) {
            Err(SysError::Injected { errno, .. })
                if matches!(errno, ferry_sys::Errno::EACCES | ferry_sys::Errno::EPERM)
                    && creds.uid.fs != 0 =>
            {
                inj.call("setfsuid", libc::SYS_setfsuid, [0; 6])?;
                inj.call("setfsgid", libc::SYS_setfsgid, [0; 6])?;
                let fd = inj.call("open (as root)", libc::SYS_openat, args);
                inj.call(
                    "setfsgid",
                    libc::SYS_setfsgid,
                    [creds.gid.fs as u64, 0, 0, 0, 0, 0],
                )?;
                inj.call(
                    "setfsuid",
                    libc::SYS_setfsuid,
                    [creds.uid.fs as u64, 0, 0, 0, 0, 0],
                )?;
                let fd = fd?;
                *privileged_opens += 1;
                info!(
                    path,
                    "opened with root's identity: its owner can no longer open it"
                );
                Ok(fd)
            }
            other => other,
        }
    }

    /// Writes a NUL-terminated path into the argument area.
    fn poke_path(inj: &Injector<'_>, s: &Scratch, path: &str) -> Result<u64, SysError> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        inj.poke(arg_area(s), &bytes)?;
        Ok(arg_area(s))
    }

    fn map_memory(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let has_pages = pages_per_vma(image);
        let creds = &image.credentials;
        let mut privileged_opens = 0;
        let privileged = &mut privileged_opens;
        let result = self.inject("mapping memory", |inj, s| {
            let mut open: HashMap<(&str, bool), u64> = HashMap::new();
            for (i, v) in image.memory.vmas.iter().enumerate() {
                let mut prot = prot_bits(v.prot);
                if has_pages[i] {
                    prot |= libc::PROT_READ | libc::PROT_WRITE;
                }
                let fixed = libc::MAP_FIXED_NOREPLACE;
                let (flags, fd, off) = match &v.backing {
                    Backing::Vvar | Backing::VvarVclock | Backing::Vdso => continue,
                    Backing::Anonymous | Backing::Heap | Backing::Stack => {
                        let mut f = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed;
                        if v.flags.growsdown {
                            f |= libc::MAP_GROWSDOWN;
                        }
                        (f, u64::MAX, 0)
                    }
                    Backing::SharedAnonymous => {
                        (libc::MAP_SHARED | libc::MAP_ANONYMOUS | fixed, u64::MAX, 0)
                    }
                    Backing::File { path, offset, .. } => {
                        let writable = v.shared && v.prot.write;
                        let fd = match open.get(&(path.as_str(), writable)) {
                            Some(&fd) => fd,
                            None => {
                                let mode = if writable {
                                    libc::O_RDWR
                                } else {
                                    libc::O_RDONLY
                                };
                                let fd = Self::open_as_owner(
                                    inj,
                                    &s,
                                    creds,
                                    path,
                                    mode | libc::O_CLOEXEC,
                                    privileged,
                                )?;
                                open.insert((path.as_str(), writable), fd);
                                fd
                            }
                        };
                        let share = if v.shared {
                            libc::MAP_SHARED
                        } else {
                            libc::MAP_PRIVATE
                        };
                        (share | fixed, fd, *offset)
                    }
                };
                let got = inj.call(
                    "mmap",
                    libc::SYS_mmap,
                    [v.start, v.len(), prot as u64, flags as u64, fd, off],
                )?;
                if got != v.start {
                    return Err(SysError::UnexpectedStop {
                        pid: inj.tracee().pid().as_raw(),
                        detail: format!("mapping {:#x} landed at {got:#x}", v.start),
                    });
                }
            }
            for (_, fd) in open {
                inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
            }
            Ok(())
        });
        self.privileged_opens += privileged_opens;
        result
    }

    /// Copies the page data from the mapped image with two threads; each faults in the fresh
    /// pages it writes, so page allocation runs on both cores.
    fn write_pages(&mut self, loaded: &LoadedImage) -> Result<(), RestoreError> {
        let pid = self.tracee().pid();
        let started = Instant::now();
        let segments: Vec<(u64, &[u8])> = loaded.runs().collect();
        parallel_write(pid, &segments).map_err(RestoreError::sys("writing memory"))?;
        self.copy_time = started.elapsed();
        Ok(())
    }

    /// Final protections, anonymous names, madvise flags.
    fn finish_mappings(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let has_pages = pages_per_vma(image);
        self.inject("finishing mappings", |inj, s| {
            for (i, v) in image.memory.vmas.iter().enumerate() {
                if matches!(
                    v.backing,
                    Backing::Vvar | Backing::VvarVclock | Backing::Vdso
                ) {
                    continue;
                }
                if has_pages[i] && (!v.prot.read || !v.prot.write) {
                    inj.call(
                        "mprotect",
                        libc::SYS_mprotect,
                        [v.start, v.len(), prot_bits(v.prot) as u64, 0, 0, 0],
                    )?;
                }
                if let Some(name) = &v.anon_name {
                    let p = Self::poke_path(inj, &s, name)?;
                    inj.call(
                        "prctl(PR_SET_VMA_ANON_NAME)",
                        libc::SYS_prctl,
                        [
                            abi::PR_SET_VMA,
                            abi::PR_SET_VMA_ANON_NAME,
                            v.start,
                            v.len(),
                            p,
                            0,
                        ],
                    )?;
                }
                for (on, advice) in [
                    (v.flags.dontfork, libc::MADV_DONTFORK),
                    (v.flags.dontdump, libc::MADV_DONTDUMP),
                    (v.flags.wipeonfork, libc::MADV_WIPEONFORK),
                    (v.flags.hugepage, libc::MADV_HUGEPAGE),
                    (v.flags.nohugepage, libc::MADV_NOHUGEPAGE),
                ] {
                    if on {
                        inj.call(
                            "madvise",
                            libc::SYS_madvise,
                            [v.start, v.len(), advice as u64, 0, 0, 0],
                        )?;
                    }
                }
            }
            Ok(())
        })
    }

    fn open_files(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let creds = &image.credentials;
        let mut fds: Vec<&Fd> = image.files.fds.iter().collect();
        // Primaries first, then their duplicates.
        fds.sort_by_key(|f| (f.dup_of.is_some(), f.number));
        let mut privileged_opens = 0;
        for fd in fds {
            if let Some(of) = fd.dup_of {
                let dflags = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
                self.inject(
                    &format!("duplicating fd {of} as fd {}", fd.number),
                    |inj, _| {
                        inj.call(
                            "dup3",
                            libc::SYS_dup3,
                            [of as u64, fd.number as u64, dflags as u64, 0, 0, 0],
                        )
                        .map(drop)
                    },
                )?;
                continue;
            }
            let step = format!("opening fd {} ({})", fd.number, fd.kind.path());
            let privileged = &mut privileged_opens;
            self.inject(&step, |inj, s| {
                let mut flags = fd.kind.flags();
                if fd.cloexec {
                    flags |= libc::O_CLOEXEC;
                }
                let opened =
                    Self::open_as_owner(inj, &s, creds, fd.kind.path(), flags, privileged)?;
                let n = fd.number as u64;
                if opened != n {
                    let dflags = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
                    inj.call("dup3", libc::SYS_dup3, [opened, n, dflags as u64, 0, 0, 0])?;
                    inj.call("close", libc::SYS_close, [opened, 0, 0, 0, 0, 0])?;
                }
                let pos = match &fd.kind {
                    FdKind::Regular { pos, .. } | FdKind::Directory { pos, .. } => *pos,
                    FdKind::CharDevice { .. } => 0,
                };
                if pos != 0 && fd.kind.flags() & libc::O_PATH == 0 {
                    inj.call(
                        "lseek",
                        libc::SYS_lseek,
                        [n, pos, libc::SEEK_SET as u64, 0, 0, 0],
                    )?;
                }
                Ok(())
            })?;
        }
        let cwd = image.control.cwd.clone();
        self.inject(
            &format!("entering the working directory {cwd}"),
            |inj, s| {
                let p = Self::poke_path(inj, &s, &cwd)?;
                inj.call("chdir", libc::SYS_chdir, [p, 0, 0, 0, 0, 0])
                    .map(drop)
            },
        )
    }

    fn set_mm_layout(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let l = image.memory.layout;
        let auxv: Vec<u8> = image
            .memory
            .auxv
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let exe = image.control.exe.clone();
        // The vessel's exe is ferry's. The kernel refuses to replace an exe that is still
        // mapped, which it is when the image is of ferry itself: then it is already right.
        let pid = self.tracee().pid();
        let same_exe = match (
            proc::stat_link(pid, "exe"),
            proc::stat_path(Path::new(&exe)),
        ) {
            (Ok(a), Ok(b)) => a.dev == b.dev && a.inode == b.inode,
            _ => false,
        };
        self.inject("setting the memory layout (PR_SET_MM_MAP)", |inj, s| {
            let exe_fd = if same_exe {
                u32::MAX as u64
            } else {
                let p = Self::poke_path(inj, &s, &exe)?;
                inj.call(
                    "open(executable)",
                    libc::SYS_openat,
                    [
                        libc::AT_FDCWD as u64,
                        p,
                        (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                        0,
                        0,
                        0,
                    ],
                )?
            };
            let auxv_at = arg_area(&s) + 1024;
            let map_at = arg_area(&s) + 2048;
            inj.poke(auxv_at, &auxv)?;
            let map = PrctlMmMap {
                start_code: l.start_code,
                end_code: l.end_code,
                start_data: l.start_data,
                end_data: l.end_data,
                start_brk: l.start_brk,
                brk: l.brk,
                start_stack: l.start_stack,
                arg_start: l.arg_start,
                arg_end: l.arg_end,
                env_start: l.env_start,
                env_end: l.env_end,
                auxv: auxv_at,
                auxv_size: auxv.len() as u32,
                exe_fd: exe_fd as u32,
            };
            inj.poke(map_at, &map.encode())?;
            inj.call(
                "prctl(PR_SET_MM_MAP)",
                libc::SYS_prctl,
                [
                    abi::PR_SET_MM,
                    abi::PR_SET_MM_MAP,
                    map_at,
                    PrctlMmMap::SIZE as u64,
                    0,
                    0,
                ],
            )?;
            if !same_exe {
                inj.call("close", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])?;
            }
            Ok(())
        })
    }

    fn restore_signals_and_timers(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let pid = self.tracee().pid().as_raw() as u64;
        self.inject("restoring signals", |inj, s| {
            let buf = arg_area(&s);
            let actions: HashMap<u32, &SigAction> =
                image.signals.actions.iter().map(|a| (a.signo, a)).collect();
            for sig in 1..=64u32 {
                if sig == 9 || sig == 19 {
                    continue;
                }
                let act = actions
                    .get(&sig)
                    .map(|a| KernelSigaction {
                        handler: a.handler,
                        flags: a.flags,
                        restorer: a.restorer,
                        mask: a.mask,
                    })
                    .unwrap_or_default();
                inj.poke(buf, &act.encode())?;
                inj.call(
                    "rt_sigaction",
                    libc::SYS_rt_sigaction,
                    [sig as u64, buf, 0, 8, 0, 0],
                )?;
            }
            let alt = image.execution.sigaltstack;
            let ss = StackT {
                sp: alt.sp,
                flags: alt.flags & libc::SS_DISABLE,
                size: alt.size,
            };
            inj.poke(buf, &ss.encode())?;
            inj.call("sigaltstack", libc::SYS_sigaltstack, [buf, 0, 0, 0, 0, 0])?;
            // Queued while every signal is blocked: delivered once the real mask is set.
            for p in &image.signals.pending {
                inj.poke(buf, &p.siginfo)?;
                let signo = p.signo() as u64;
                if p.shared {
                    inj.call(
                        "rt_sigqueueinfo",
                        libc::SYS_rt_sigqueueinfo,
                        [pid, signo, buf, 0, 0, 0],
                    )?;
                } else {
                    inj.call(
                        "rt_tgsigqueueinfo",
                        libc::SYS_rt_tgsigqueueinfo,
                        [pid, pid, signo, buf, 0, 0],
                    )?;
                }
            }
            for (which, t) in [
                (libc::ITIMER_REAL, image.timers.real),
                (libc::ITIMER_VIRTUAL, image.timers.virtual_),
                (libc::ITIMER_PROF, image.timers.prof),
            ] {
                if t.is_armed() {
                    let v = Itimerval {
                        interval_us: t.interval_us,
                        value_us: t.value_us,
                    };
                    inj.poke(buf, &v.encode())?;
                    inj.call(
                        "setitimer",
                        libc::SYS_setitimer,
                        [which as u64, buf, 0, 0, 0, 0],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn restore_misc(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let c = &image.control;
        let e = &image.execution;
        self.inject("restoring process settings", |inj, s| {
            let buf = arg_area(&s);
            let mut comm = c.comm.as_bytes().to_vec();
            comm.truncate(15);
            comm.push(0);
            inj.poke(buf, &comm)?;
            inj.call(
                "prctl(PR_SET_NAME)",
                libc::SYS_prctl,
                [abi::PR_SET_NAME, buf, 0, 0, 0, 0],
            )?;
            inj.call(
                "prctl(PR_SET_TIMERSLACK)",
                libc::SYS_prctl,
                [abi::PR_SET_TIMERSLACK, c.timer_slack_ns, 0, 0, 0, 0],
            )?;
            inj.call(
                "prctl(PR_SET_THP_DISABLE)",
                libc::SYS_prctl,
                [abi::PR_SET_THP_DISABLE, c.thp_disable as u64, 0, 0, 0, 0],
            )?;
            inj.call(
                "prctl(PR_SET_CHILD_SUBREAPER)",
                libc::SYS_prctl,
                [
                    abi::PR_SET_CHILD_SUBREAPER,
                    c.child_subreaper as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            )?;
            inj.call(
                "personality",
                libc::SYS_personality,
                [c.personality as u64, 0, 0, 0, 0, 0],
            )?;
            inj.call("umask", libc::SYS_umask, [c.umask as u64, 0, 0, 0, 0, 0])?;
            inj.call(
                "set_tid_address",
                libc::SYS_set_tid_address,
                [e.tid_address, 0, 0, 0, 0, 0],
            )?;
            if e.robust_list.head != 0 {
                inj.call(
                    "set_robust_list",
                    libc::SYS_set_robust_list,
                    [e.robust_list.head, e.robust_list.len, 0, 0, 0, 0],
                )?;
            }
            Ok(())
        })
    }

    fn restore_credentials(&mut self) -> Result<(), RestoreError> {
        let creds = self.image.credentials.clone();
        let pid = self.tracee().pid().as_raw();
        let last_cap = host::cap_last_cap().min(CAP_LAST_CAP_MAX);
        self.inject("restoring credentials", |inj, s| {
            let buf = arg_area(&s);
            for cap in 0..=last_cap {
                if creds.caps.bounding & (1 << cap) == 0 {
                    inj.call(
                        "prctl(PR_CAPBSET_DROP)",
                        libc::SYS_prctl,
                        [abi::PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
                    )?;
                }
            }
            // Keep capabilities across the uid change when the image had some as non-root.
            let keep = creds.uid.effective != 0 && creds.caps.permitted != 0;
            let securebits = creds.securebits | if keep { 1 << 4 } else { 0 };
            inj.call(
                "prctl(PR_SET_SECUREBITS)",
                libc::SYS_prctl,
                [abi::PR_SET_SECUREBITS, securebits as u64, 0, 0, 0, 0],
            )?;
            let groups: Vec<u8> = creds.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
            inj.poke(buf, &groups)?;
            inj.call(
                "setgroups",
                libc::SYS_setgroups,
                [creds.groups.len() as u64, buf, 0, 0, 0, 0],
            )?;
            let g = creds.gid;
            inj.call(
                "setresgid",
                libc::SYS_setresgid,
                [g.real as u64, g.effective as u64, g.saved as u64, 0, 0, 0],
            )?;
            let u = creds.uid;
            inj.call(
                "setresuid",
                libc::SYS_setresuid,
                [u.real as u64, u.effective as u64, u.saved as u64, 0, 0, 0],
            )?;
            inj.call("setfsgid", libc::SYS_setfsgid, [g.fs as u64, 0, 0, 0, 0, 0])?;
            inj.call("setfsuid", libc::SYS_setfsuid, [u.fs as u64, 0, 0, 0, 0, 0])?;
            let c = creds.caps;
            inj.poke(
                buf,
                &encode_capset(pid, c.effective, c.permitted, c.inheritable),
            )?;
            inj.call("capset", libc::SYS_capset, [buf, buf + 8, 0, 0, 0, 0])?;
            for cap in 0..=last_cap {
                if c.ambient & (1 << cap) != 0 {
                    inj.call(
                        "prctl(PR_CAP_AMBIENT_RAISE)",
                        libc::SYS_prctl,
                        [abi::PR_CAP_AMBIENT, abi::PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
                    )?;
                }
            }
            if keep && creds.securebits & (1 << 4) == 0 {
                inj.call(
                    "prctl(PR_SET_KEEPCAPS)",
                    libc::SYS_prctl,
                    [abi::PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
                )?;
            }
            Ok(())
        })
    }

    /// What the image's owner must be allowed to do: limits, nice, dumpable, parent-death
    /// signal, no_new_privs.
    fn restore_after_credentials(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let c = &image.control;
        self.inject("restoring limits and process flags", |inj, s| {
            let buf = arg_area(&s);
            for r in &c.rlimits {
                inj.poke(buf, &abi::Bytes::default().u64(r.soft).u64(r.hard).0)?;
                inj.call(
                    "prlimit64",
                    libc::SYS_prlimit64,
                    [0, r.resource as u64, buf, 0, 0, 0],
                )?;
            }
            inj.call(
                "setpriority",
                libc::SYS_setpriority,
                [libc::PRIO_PROCESS as u64, 0, c.nice as i64 as u64, 0, 0, 0],
            )?;
            inj.call(
                "prctl(PR_SET_DUMPABLE)",
                libc::SYS_prctl,
                [abi::PR_SET_DUMPABLE, c.dumpable.min(1) as u64, 0, 0, 0, 0],
            )?;
            inj.call(
                "prctl(PR_SET_PDEATHSIG)",
                libc::SYS_prctl,
                [abi::PR_SET_PDEATHSIG, c.pdeathsig as u64, 0, 0, 0, 0],
            )?;
            if c.no_new_privs {
                inj.call(
                    "prctl(PR_SET_NO_NEW_PRIVS)",
                    libc::SYS_prctl,
                    [abi::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
                )?;
            }
            Ok(())
        })
    }

    /// Unmaps the restorer, registers rseq, sets registers, extended state and mask, and lets
    /// the kernel take it from the signal-delivery path.
    fn go(&mut self) -> Result<(), RestoreError> {
        let image = self.image;
        let e = &image.execution;
        let scratch = self.scratch;
        // The last calls run from a `syscall` in the vDSO, which stays mapped.
        if let Some(vdso_gadget) = vdso_gadget(image) {
            self.gadget = vdso_gadget;
        }
        let in_vdso = self.gadget != scratch.addr;
        self.inject("removing the restorer", |inj, _| inj.unmap(scratch))?;
        if let Some(r) = e.rseq
            && in_vdso
        {
            self.inject("registering rseq", |inj, _| {
                inj.call(
                    "rseq",
                    libc::SYS_rseq,
                    [r.address, r.length as u64, 0, r.signature as u64, 0, 0],
                )
                .map(drop)
            })?;
        }
        let regs = from_model_regs(&e.regs);
        let tracee = self.tracee();
        tracee
            .set_xstate(&e.xstate)
            .map_err(RestoreError::sys("setting the FPU/AVX state"))?;
        tracee
            .set_regs(&regs)
            .map_err(RestoreError::sys("setting registers"))?;
        tracee
            .set_sigmask(image.signals.blocked)
            .map_err(RestoreError::sys("setting the signal mask"))?;
        let tracee = self
            .tracee
            .take()
            .expect("the vessel lives until build() ends");
        let pid = tracee.pid();
        enter_signal_path_and_detach(tracee).map_err(RestoreError::sys("starting the process"))?;
        if image.control.stopped {
            host::send_signal(pid, libc::SIGSTOP)
                .map_err(RestoreError::sys("stopping the process as it was"))?;
        }
        debug!(pid = pid.as_raw(), "running");
        Ok(())
    }
}

/// Writes `(address, bytes)` segments into `pid` from two threads (split by bytes).
fn parallel_write(pid: Pid, segments: &[(u64, &[u8])]) -> Result<(), SysError> {
    const THREADS: usize = 2;
    const PIECE: usize = 4 << 20;
    let mut pieces: Vec<(u64, &[u8])> = Vec::new();
    for &(addr, data) in segments {
        for (i, chunk) in data.chunks(PIECE).enumerate() {
            pieces.push((addr + (i * PIECE) as u64, chunk));
        }
    }
    let total: usize = pieces.iter().map(|p| p.1.len()).sum();
    if total < 8 * PIECE {
        return mem::write_scattered(pid, &pieces);
    }
    let per = total.div_ceil(THREADS);
    let mut groups: Vec<Vec<(u64, &[u8])>> = vec![Vec::new(); THREADS];
    let mut acc = 0usize;
    for p in pieces {
        let g = (acc / per).min(THREADS - 1);
        acc += p.1.len();
        groups[g].push(p);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| scope.spawn(move || mem::write_scattered(pid, g)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or(Err(SysError::Gone {
                    pid: pid.as_raw(),
                    how: "copy thread panicked".into(),
                }))
            })
            .collect::<Result<Vec<()>, SysError>>()
            .map(drop)
    })
}

/// Address of a `syscall` instruction inside the image's vDSO (same code as this host's).
fn vdso_gadget(image: &ProcessImage) -> Option<u64> {
    let vdso = image
        .memory
        .vmas
        .iter()
        .find(|v| v.backing == Backing::Vdso)?;
    let (_, code) = host::own_vdso().ok()??;
    let off = code.windows(2).position(|w| w == [0x0f, 0x05])?;
    Some(vdso.start + off as u64)
}

fn prot_bits(p: Prot) -> i32 {
    let mut b = libc::PROT_NONE;
    if p.read {
        b |= libc::PROT_READ;
    }
    if p.write {
        b |= libc::PROT_WRITE;
    }
    if p.exec {
        b |= libc::PROT_EXEC;
    }
    b
}

/// For each VMA, whether page data will be written into it.
fn pages_per_vma(image: &ProcessImage) -> Vec<bool> {
    let vmas = &image.memory.vmas;
    let mut out = vec![false; vmas.len()];
    let mut vi = 0;
    for run in &image.memory.pages.runs {
        while vi < vmas.len() && vmas[vi].end <= run.addr {
            vi += 1;
        }
        if let Some(flag) = out.get_mut(vi) {
            *flag = true;
        }
    }
    out
}

/// A free range of `len` bytes (with a guard page each side) among `taken` ranges, searched
/// from 1 TiB upwards, below the usual mmap area.
fn find_gap(taken: &mut [(u64, u64)], len: u64) -> Option<u64> {
    taken.sort_unstable();
    let guard = PAGE_SIZE;
    let mut candidate = 1u64 << 40;
    for &(s, e) in taken.iter() {
        if e + guard <= candidate {
            continue;
        }
        if candidate + len + guard <= s {
            return Some(candidate);
        }
        candidate = candidate.max(e + guard);
    }
    (candidate + len < validate::USER_SPACE_END).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_search_skips_taken_ranges() {
        let base = 1u64 << 40;
        let mut taken = vec![(base, base + 0x5000), (base + 0x9000, base + 0xa000)];
        assert_eq!(find_gap(&mut taken, 0x2000), Some(base + 0x6000));
        let mut taken = vec![(base, base + 0x5000), (base + 0x7000, base + 0xa000)];
        assert_eq!(find_gap(&mut taken, 0x2000), Some(base + 0xb000));
        let mut taken = vec![(0x1000, 0x2000)];
        assert_eq!(find_gap(&mut taken, 0x2000), Some(base));
        let mut taken = vec![(0, validate::USER_SPACE_END)];
        assert_eq!(find_gap(&mut taken, 0x2000), None);
    }

    #[test]
    fn pages_are_attributed_to_their_mapping() {
        let image = ferry_image::model::tests_support::sample_image();
        let flags = pages_per_vma(&image);
        let with: Vec<usize> = flags
            .iter()
            .enumerate()
            .filter(|f| *f.1)
            .map(|f| f.0)
            .collect();
        assert_eq!(with, vec![2, 3, 4]);
    }
}
