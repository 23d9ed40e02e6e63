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
use nix::unistd::Pid;
use tracing::trace;

use crate::ptrace::{Stop, Tracee};
use crate::{PAGE_SIZE, Regs, Result, SysError, abi, mem, proc};

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
    singles: u64,
    batches: u64,
    /// [`Injector::own_pid`], once read.
    own_pid: Option<i32>,
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
            singles: 0,
            batches: 0,
            own_pid: None,
        }
    }

    pub fn tracee(&mut self) -> &mut Tracee {
        self.tracee
    }

    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
    }

    /// Number of system calls injected so far (in batches or alone).
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
        self.singles += 1;
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

    /// The tracee's process id in its own PID namespace (what `getpid` returns there).
    fn own_pid(&mut self) -> i32 {
        let tgid = self.tracee.tgid();
        *self
            .own_pid
            .get_or_insert_with(|| proc::own_id(tgid, tgid).as_raw())
    }

    /// Creates a thread of the tracee's process with an injected `clone(flags)` (no stack, no
    /// TLS, no tid pointers: the caller sets the new thread's registers before it runs) and
    /// returns it as a tracee, stopped before its first instruction. The tracee must trace its
    /// clones ([`Tracee::trace_clones`]).
    pub fn clone_thread(&mut self, flags: u64) -> Result<Tracee> {
        let tgid = self.tracee.tgid();
        self.clone_traced(
            "clone(thread)",
            libc::SYS_clone,
            [flags, 0, 0, 0, 0, 0],
            |_| tgid,
        )
    }

    /// Creates a child process (or, with `thread`, a thread) of the tracee with an injected
    /// `clone3`, whose `struct clone_args` ([`abi::CloneArgs`]) the caller wrote at `args` in
    /// the tracee, and returns it as a tracee, stopped before its first instruction. The
    /// tracee must trace its clones.
    pub fn clone3(&mut self, args: u64, thread: bool) -> Result<Tracee> {
        let tgid = self.tracee.tgid();
        self.clone_traced(
            if thread {
                "clone3(thread)"
            } else {
                "clone3(process)"
            },
            libc::SYS_clone3,
            [args, abi::CloneArgs::SIZE as u64, 0, 0, 0, 0],
            |new| if thread { tgid } else { new },
        )
    }

    fn clone_traced(
        &mut self,
        call: &'static str,
        nr: i64,
        args: [u64; 6],
        tgid_of: impl FnOnce(Pid) -> Pid,
    ) -> Result<Tracee> {
        let pid = self.tracee.pid();
        self.enter(nr, args)?;
        self.tracee.resume_to_syscall(0)?;
        let clone_event = |s: &Stop| matches!(s, Stop::OtherEvent { event, .. } if [libc::PTRACE_EVENT_CLONE, libc::PTRACE_EVENT_FORK, libc::PTRACE_EVENT_VFORK].contains(event));
        let stop = self.tracee.wait_for(
            "the clone event",
            |s| clone_event(s) || is_syscall_stop(s),
            Tracee::resume_to_syscall,
        )?;
        if !clone_event(&stop) {
            // The call returned without creating anything: its error is in rax.
            let ret = self.tracee.regs()?.rax as i64;
            self.calls += 1;
            self.singles += 1;
            return Err(SysError::Injected {
                call,
                pid: pid.as_raw(),
                errno: Errno::from_raw(-ret as i32),
            });
        }
        let tid = Pid::from_raw(self.tracee.event_msg()? as i32);
        self.tracee.resume_to_syscall(0)?;
        self.tracee
            .wait_for("syscall exit", is_syscall_stop, Tracee::resume_to_syscall)?;
        self.calls += 1;
        self.singles += 1;
        let made = Tracee::adopt_clone(tid, tgid_of(tid))?;
        trace!(pid = pid.as_raw(), new = tid.as_raw(), call, "created");
        Ok(made)
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

/// The batch executor: position-independent x86-64 code that runs a table of system calls
/// inside the tracee and then stops itself, so that N calls cost one ptrace round trip instead
/// of N. Assembled from:
///
/// ```text
///  0: test r13,r13 ; jz stop            r12 = table (8 u64 per entry:
///  5: mov rax,[r12] ; mov rdi,[r12+8]        nr, a0..a5, result)
///     mov rsi,[r12+16] ; mov rdx,[r12+24]  r13 = entries left
///     mov r10,[r12+32] ; mov r8,[r12+40] ; mov r9,[r12+48]
/// 27: syscall ; mov [r12+56],rax
///     cmp rax,-4095 ; jae stop           (first error ends the batch)
///     add r12,64 ; dec r13 ; jmp 0
/// 3f: stop: getpid ; gettid ; tgkill(pid, tid, SIGSTOP) ; jmp stop
/// ```
///
/// SIGSTOP ends a batch because it can be neither blocked nor caught, and, unlike a trap
/// instruction, it is not a forced signal that would reset the process's dispositions.
pub const BATCH_CODE: [u8; 100] = [
    0x4d, 0x85, 0xed, 0x74, 0x3a, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b,
    0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44,
    0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48, 0x3d,
    0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x49, 0x83, 0xc4, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xc1, 0xb8,
    0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x89, 0xc3, 0xb8, 0xba, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x48, 0x89, 0xc6, 0x48, 0x89, 0xdf, 0xba, 0x13, 0x00, 0x00, 0x00, 0xb8, 0xea, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0xeb, 0xdb,
];

/// Where a lone `syscall` instruction sits in the code page (for single injected calls).
pub const CODE_SYSCALL_OFFSET: u64 = 0x80;

/// The code page ferry places in a tracee: the batch executor, and a lone `syscall`.
pub fn code_page() -> Vec<u8> {
    let mut page = vec![0xccu8; PAGE_SIZE as usize];
    page[..BATCH_CODE.len()].copy_from_slice(&BATCH_CODE);
    page[CODE_SYSCALL_OFFSET as usize..CODE_SYSCALL_OFFSET as usize + 2]
        .copy_from_slice(&[0x0f, 0x05]);
    page
}

/// A tracee memory area laid out for batches: one code page, a call table, a data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchArea {
    pub code: u64,
    pub table: u64,
    pub table_entries: usize,
    pub data: u64,
    pub data_len: usize,
}

impl BatchArea {
    /// Splits a scratch area: code page, then a quarter of the rest for the table.
    pub fn within(s: &Scratch) -> BatchArea {
        let rest = s.len.saturating_sub(PAGE_SIZE);
        let table_pages = (rest / PAGE_SIZE / 4).max(1);
        let table = s.addr + PAGE_SIZE;
        let data = table + table_pages * PAGE_SIZE;
        BatchArea {
            code: s.addr,
            table,
            table_entries: (table_pages * PAGE_SIZE / 64) as usize,
            data,
            data_len: (s.addr + s.len).saturating_sub(data) as usize,
        }
    }

    pub fn syscall_gadget(&self) -> u64 {
        self.code + CODE_SYSCALL_OFFSET
    }
}

/// Result slot value of an entry the batch did not reach.
const NOT_RUN: u64 = 0x7fff_ffff_ffff_fffe;

/// A list of system calls to run inside a tracee in one go, with the data they point to.
pub struct Batch {
    area: BatchArea,
    entries: Vec<[u64; 8]>,
    names: Vec<&'static str>,
    data: Vec<u8>,
}

impl Batch {
    pub fn new(area: BatchArea) -> Batch {
        Batch {
            area,
            entries: Vec::new(),
            names: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `calls` more entries and `bytes` more data still fit.
    pub fn fits(&self, calls: usize, bytes: usize) -> bool {
        self.entries.len() + calls <= self.area.table_entries
            && self.data.len() + bytes.next_multiple_of(8) <= self.area.data_len
    }

    /// Adds a call; returns its index.
    pub fn push(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> usize {
        self.entries.push([
            nr as u64, args[0], args[1], args[2], args[3], args[4], args[5], NOT_RUN,
        ]);
        self.names.push(name);
        self.entries.len() - 1
    }

    /// Places `bytes` in the data area; returns their address in the tracee.
    pub fn bytes(&mut self, bytes: &[u8]) -> u64 {
        let at = self.area.data + self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        self.data.resize(self.data.len().next_multiple_of(8), 0);
        at
    }

    /// A NUL-terminated copy of `s` in the data area.
    pub fn c_string(&mut self, s: &str) -> u64 {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.bytes(&b)
    }

    /// Reserves `len` zeroed bytes for the kernel to write into.
    pub fn out(&mut self, len: usize) -> u64 {
        self.bytes(&vec![0u8; len])
    }

    /// Number and arguments of entry `i`.
    pub fn call(&self, i: usize) -> (i64, [u64; 6]) {
        let e = self.entries[i];
        (e[0] as i64, [e[1], e[2], e[3], e[4], e[5], e[6]])
    }

    /// The entries from `from` on, with the same data (so their pointers stay valid).
    pub fn tail(&self, from: usize) -> Batch {
        Batch {
            area: self.area,
            entries: self.entries[from.min(self.entries.len())..].to_vec(),
            names: self.names[from.min(self.names.len())..].to_vec(),
            data: self.data.clone(),
        }
    }

    /// `other`'s calls with this batch's data area (for calls that point into it).
    pub fn with_data_of(&self, mut other: Batch) -> Batch {
        other.data = self.data.clone();
        other
    }
}

/// What a batch did.
pub struct BatchResult {
    area: BatchArea,
    results: Vec<u64>,
    data: Vec<u8>,
    names: Vec<&'static str>,
}

impl BatchResult {
    /// The raw result of entry `i` (`None` if the batch stopped before it).
    pub fn result(&self, i: usize) -> Option<i64> {
        self.results
            .get(i)
            .filter(|&&r| r != NOT_RUN)
            .map(|&r| r as i64)
    }

    /// The first failed entry, with its errno.
    pub fn failure(&self) -> Option<(usize, &'static str, Errno)> {
        self.results.iter().enumerate().find_map(|(i, &r)| {
            let r = r as i64;
            (-4095..0)
                .contains(&r)
                .then(|| (i, self.names[i], Errno::from_raw(-r as i32)))
        })
    }

    /// Bytes the kernel left at `addr` (an address from [`Batch::out`] or [`Batch::bytes`]).
    pub fn read(&self, addr: u64, len: usize) -> &[u8] {
        let off = addr.saturating_sub(self.area.data) as usize;
        self.data.get(off..off + len).unwrap_or(&[])
    }
}

impl Injector<'_> {
    /// Runs `batch` inside the tracee: one write of the table and data, one resume, one stop,
    /// one read back. Entries run in order until the first error, which
    /// [`BatchResult::failure`] names. The code page must already hold [`code_page`].
    pub fn run(&mut self, batch: &Batch) -> Result<BatchResult> {
        let pid = self.tracee.pid();
        if batch.entries.len() > batch.area.table_entries || batch.data.len() > batch.area.data_len
        {
            return Err(SysError::UnexpectedStop {
                pid: pid.as_raw(),
                detail: format!(
                    "batch of {} calls / {} bytes exceeds its area",
                    batch.entries.len(),
                    batch.data.len()
                ),
            });
        }
        let table: Vec<u8> = batch
            .entries
            .iter()
            .flat_map(|e| e.iter().flat_map(|w| w.to_le_bytes()))
            .collect();
        mem::write_scattered(
            pid,
            &[(batch.area.table, &table), (batch.area.data, &batch.data)],
        )?;
        let mut regs = self.template;
        regs.rip = batch.area.code;
        regs.r12 = batch.area.table;
        regs.r13 = batch.entries.len() as u64;
        regs.orig_rax = u64::MAX;
        self.tracee.set_regs(&regs)?;
        self.tracee.cont(0)?;
        loop {
            match self.tracee.wait()? {
                Stop::Signal { sig: libc::SIGSTOP } => {
                    let info = self.tracee.siginfo()?;
                    let f = crate::abi::Fields::new(&info);
                    // Our own tgkill: si_code SI_TKILL, si_pid the tracee's process as its
                    // own PID namespace numbers it (1 for the init of a namespace).
                    let from = f.i32(16);
                    if f.i32(8) == libc::SI_TKILL
                        && (from == self.tracee.tgid().as_raw() || from == self.own_pid())
                    {
                        break;
                    }
                    self.tracee.defer(info);
                    self.tracee.cont(0)?;
                }
                Stop::Signal { .. } => {
                    let info = self.tracee.siginfo()?;
                    self.tracee.defer(info);
                    self.tracee.cont(0)?;
                }
                Stop::Event { .. } => self.tracee.cont(0)?,
                other => {
                    return Err(SysError::UnexpectedStop {
                        pid: pid.as_raw(),
                        detail: format!("running a batch, got {other:?}"),
                    });
                }
            }
        }
        let mut back = vec![0u8; table.len() + batch.data.len()];
        mem::read(
            pid,
            &[
                (batch.area.table, table.len()),
                (batch.area.data, batch.data.len()),
            ],
            &mut back,
        )?;
        let results = back[..table.len()]
            .chunks_exact(64)
            .map(|e| crate::abi::Fields::new(e).u64(56))
            .collect();
        self.calls += batch.entries.len() as u64;
        self.batches += 1;
        trace!(pid = pid.as_raw(), calls = batch.entries.len(), "batch ran");
        Ok(BatchResult {
            area: batch.area,
            results,
            data: back[table.len()..].to_vec(),
            names: batch.names.clone(),
        })
    }

    /// [`Injector::run`], failing with the first failed call.
    pub fn run_all(&mut self, batch: &Batch) -> Result<BatchResult> {
        let r = self.run(batch)?;
        if let Some((_, call, errno)) = r.failure() {
            return Err(SysError::Injected {
                call,
                pid: self.tracee.pid().as_raw(),
                errno,
            });
        }
        Ok(r)
    }

    /// Round trips to the tracee so far (single calls and batches).
    pub fn round_trips(&self) -> u64 {
        self.batches + self.singles
    }
}
