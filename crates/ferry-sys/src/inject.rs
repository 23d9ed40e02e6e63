//! System calls executed *inside* a stopped tracee.
//!
//! The tracee's instruction pointer is set to a `syscall` instruction (a *gadget*: two bytes
//! `0f 05` anywhere in executable memory, found by [`find_syscall_gadget`]), the registers
//! are loaded with the call, and the tracee runs exactly that one instruction under
//! `PTRACE_SYSCALL` (entry stop, exit stop). Nothing is written into the tracee's memory to
//! do this, and no trap instruction is used: an `int3` would raise a forced SIGTRAP, which the
//! kernel turns into a reset of the process's SIGTRAP disposition when it is blocked.
//!
//! Pointer arguments point into a [`Scratch`] area: a private mapping created in the tracee
//! for the duration of the work (`MAP_SHARED | MAP_ANONYMOUS`, so the kernel never merges it
//! with a neighbouring mapping of the process).
//!
//! The caller saves and restores the tracee's real registers; an injector only ever starts
//! from a template register set (segments, flags) and leaves the tracee at a syscall-exit
//! stop.

use nix::errno::Errno;
use tracing::trace;

use crate::ptrace::{Stop, Tracee};
use crate::{PAGE_SIZE, Regs, Result, SysError, mem, proc};

/// A memory area inside the tracee that ferry uses for syscall arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratch {
    pub addr: u64,
    pub len: u64,
}

/// Runs system calls inside a tracee.
pub struct Injector<'t> {
    tracee: &'t mut Tracee,
    gadget: u64,
    template: Regs,
    calls: u64,
}

fn is_syscall_stop(s: &Stop) -> bool {
    matches!(s, Stop::Syscall)
}

impl<'t> Injector<'t> {
    /// `gadget` is the address of a `syscall` instruction in the tracee; `template` supplies
    /// the registers that injection does not set (segment selectors, flags).
    pub fn new(tracee: &'t mut Tracee, gadget: u64, template: Regs) -> Injector<'t> {
        Injector {
            tracee,
            gadget,
            template,
            calls: 0,
        }
    }

    pub fn tracee(&mut self) -> &mut Tracee {
        self.tracee
    }

    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
    }

    /// Number of system calls injected so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    fn load(&self, nr: i64, args: [u64; 6]) -> Regs {
        let mut r = self.template;
        r.rip = self.gadget;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r
    }

    /// Enters the call and stops at its syscall-entry stop (the caller decides what follows).
    pub fn enter(&mut self, nr: i64, args: [u64; 6]) -> Result<()> {
        let regs = self.load(nr, args);
        self.tracee.set_regs(&regs)?;
        self.tracee.resume_to_syscall(0)?;
        self.tracee
            .wait_for("syscall entry", is_syscall_stop, Tracee::resume_to_syscall)?;
        Ok(())
    }

    /// Executes one system call and returns its raw result (a negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.enter(nr, args)?;
        self.tracee.resume_to_syscall(0)?;
        self.tracee
            .wait_for("syscall exit", is_syscall_stop, Tracee::resume_to_syscall)?;
        let ret = self.tracee.regs()?.rax as i64;
        self.calls += 1;
        trace!(pid = self.tracee.pid().as_raw(), nr, ?args, ret, "injected");
        Ok(ret)
    }

    /// Executes one system call; a kernel error becomes [`SysError::Injected`] naming `call`.
    pub fn call(&mut self, call: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let ret = self.raw(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(SysError::Injected {
                call,
                pid: self.tracee.pid().as_raw(),
                errno: Errno::from_raw(-ret as i32),
            });
        }
        Ok(ret as u64)
    }

    /// Maps a scratch area of `pages` pages (read/write) anywhere in the tracee, or at `at`.
    pub fn map_scratch(&mut self, at: Option<u64>, pages: u64) -> Result<Scratch> {
        let len = pages * PAGE_SIZE;
        let mut flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        if at.is_some() {
            flags |= libc::MAP_FIXED_NOREPLACE;
        }
        let addr = self.call(
            "mmap(scratch)",
            libc::SYS_mmap,
            [
                at.unwrap_or(0),
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                flags as u64,
                u64::MAX,
                0,
            ],
        )?;
        if let Some(want) = at
            && addr != want
        {
            return Err(SysError::UnexpectedStop {
                pid: self.tracee.pid().as_raw(),
                detail: format!("scratch mapped at {addr:#x}, wanted {want:#x}"),
            });
        }
        Ok(Scratch { addr, len })
    }

    pub fn unmap(&mut self, scratch: Scratch) -> Result<()> {
        self.call(
            "munmap(scratch)",
            libc::SYS_munmap,
            [scratch.addr, scratch.len, 0, 0, 0, 0],
        )
        .map(drop)
    }

    /// Writes `data` into the tracee at `addr`.
    pub fn poke(&self, addr: u64, data: &[u8]) -> Result<()> {
        mem::write(self.tracee.pid(), addr, data)
    }

    /// Reads `len` bytes of the tracee at `addr`.
    pub fn peek(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        mem::read(self.tracee.pid(), &[(addr, len)], &mut buf)?;
        Ok(buf)
    }
}

/// Finds a `syscall` instruction in the tracee: in `[vdso]` first, else in any executable
/// mapping. Only the two bytes at the address matter, since the tracee executes exactly one
/// instruction from there.
pub fn find_syscall_gadget(pid: nix::unistd::Pid) -> Result<u64> {
    let maps = proc::read_maps(pid)?;
    let vdso = maps.iter().filter(|m| m.path_is("[vdso]"));
    let others = maps
        .iter()
        .filter(|m| m.exec && !m.path_is("[vdso]") && !m.path_is("[vsyscall]"));
    let memfile = mem::ProcMem::open(pid)?;
    for m in vdso.chain(others) {
        let len = (m.end - m.start).min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        if memfile.read_at(m.start, &mut buf).is_err() {
            continue;
        }
        if let Some(off) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(m.start + off as u64);
        }
    }
    Err(SysError::UnexpectedStop {
        pid: pid.as_raw(),
        detail: "no syscall instruction found in any executable mapping".into(),
    })
}
