//! A process held still for capture, and the one path back to running.
//!
//! ```text
//!  running ──seize+interrupt──▶ stopped in get_signal (raw registers read here)
//!     ▲                               │ first injected call: kernel restores a sigsuspend mask
//!     │                               ▼
//!     │                        scratch mapped, all signals blocked: injected queries
//!     │                               │
//!     │   park(): re-queue deferred signals, unmap scratch, registers and mask back,
//!     │           interrupt+cont: stopped in get_signal again, exactly as found
//!     │                               │ long work (pages) happens here
//!     └──────── resume(): detach: the kernel itself restarts the interrupted call
//!                                     │
//!                              kill(): SIGKILL (after the image is safely written)
//! ```
//!
//! Every thread is held: the main thread first, then each other thread of `/proc/PID/task`
//! (listed again until no new one appears, since a thread not yet stopped may create more).
//! Each thread goes through the same states; the scratch area belongs to the process and is
//! used from one thread at a time. Threads report what only they can (their alternate signal
//! stack, their tid address) by a small batch run in each.
//!
//! Once parked, the process is in the state it was found in; if ferry itself dies, the kernel's
//! automatic detach resumes it exactly as `resume()` would. Only the short query phase (a
//! few milliseconds of injected calls) runs with borrowed registers. Dropping a [`Frozen`]
//! that was neither resumed nor killed resumes it: any error in capture leaves the process
//! running as it was.

use std::time::Instant;

use ferry_sys::abi::{self, Fields, Siginfo, StackT};
use ferry_sys::inject::{Batch, BatchArea, Injector, Scratch, code_page, find_syscall_gadget};
use ferry_sys::libc;
use ferry_sys::ptrace::{Stop, Tracee};
use ferry_sys::{PAGE_SIZE, Pid, Regs, SysError};
use tracing::{debug, warn};

use crate::{CheckpointError, restart};

/// Pages of scratch memory mapped in a frozen process: the batch code page, call table and
/// data (see `ferry_sys::inject::BatchArea`).
pub const SCRATCH_PAGES: u64 = 16;
/// Every signal but SIGKILL and SIGSTOP (which cannot be blocked anyway).
pub const BLOCK_ALL: u64 = !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
/// Rounds of listing `/proc/PID/task` before giving up on a process whose threads keep
/// appearing faster than they can be stopped.
const SEIZE_ROUNDS: usize = 64;

/// A thread of a frozen process other than its main thread.
pub struct FrozenThread {
    tracee: Option<Tracee>,
    /// Registers exactly as the kernel reported them at the interrupt stop.
    pub regs: Regs,
    /// Its blocked mask (sigsuspend's temporary mask undone).
    pub blocked: u64,
    /// Its `set_tid_address` pointer (`PR_GET_TID_ADDRESS`).
    pub tid_address: u64,
    /// Its alternate signal stack.
    pub altstack: StackT,
    mask_changed: bool,
    /// Signals dequeued from it while frozen; they belong to it.
    deferred: Vec<Siginfo>,
    requeued: Vec<Siginfo>,
}

impl FrozenThread {
    pub fn tid(&self) -> Pid {
        self.tracee().pid()
    }

    pub fn tracee(&self) -> &Tracee {
        self.tracee
            .as_ref()
            .expect("Frozen is used only until resume() or kill()")
    }

    /// Signals that arrived for this thread while the process was frozen.
    pub fn arrived_while_frozen(&self) -> Vec<Siginfo> {
        let mut all = self.requeued.clone();
        all.extend(self.deferred.iter().copied());
        all
    }
}

/// A seized, stopped process with a scratch area, ready for injected calls.
pub struct Frozen {
    /// The main thread, whose id is the process id.
    tracee: Option<Tracee>,
    /// Every other thread.
    threads: Vec<FrozenThread>,
    pid: Pid,
    /// Registers exactly as the kernel reported them at the interrupt stop.
    pub regs: Regs,
    /// The blocked mask the process really has (sigsuspend's temporary mask undone).
    pub blocked: u64,
    gadget: u64,
    scratch: Option<Scratch>,
    mask_changed: bool,
    /// Signals dequeued while frozen; they belong to the process.
    pub deferred: Vec<Siginfo>,
    pub frozen_at: Instant,
    /// In a job-control stop before ferry touched it (or stopped while frozen).
    pub was_stopped: bool,
    injected: u64,
    parked: bool,
    requeued: Vec<Siginfo>,
}

impl Frozen {
    /// Seizes and stops `pid`, maps a scratch area and blocks all signals.
    pub fn freeze(pid: Pid) -> Result<Frozen, CheckpointError> {
        // Once traced, a stopped process shows state `t`: read the job-control state first.
        let was_stopped = ferry_sys::proc::stat(pid).is_ok_and(|s| s.state == 'T');
        let mut tracee = Tracee::seize(pid, false).map_err(|e| match e.errno() {
            Some(ferry_sys::Errno::ESRCH) => CheckpointError::NoSuchProcess { pid: pid.as_raw() },
            Some(ferry_sys::Errno::EPERM) => CheckpointError::PermissionDenied {
                pid: pid.as_raw(),
                detail: format!("cannot trace pid {pid} ({e})"),
            },
            _ => CheckpointError::sys("seizing the process")(e),
        })?;
        tracee
            .interrupt_and_wait()
            .map_err(CheckpointError::sys("stopping the process"))?;
        let frozen_at = Instant::now();
        let regs = tracee
            .regs()
            .map_err(CheckpointError::sys("reading registers"))?;
        let deferred = tracee.take_deferred_signals();
        let mut frozen = Frozen {
            tracee: Some(tracee),
            threads: Vec::new(),
            pid,
            regs,
            blocked: 0,
            gadget: 0,
            scratch: None,
            mask_changed: false,
            deferred,
            frozen_at,
            was_stopped,
            injected: 0,
            parked: false,
            requeued: Vec::new(),
        };
        // From here on, an error drops `frozen`, which resumes the process.
        frozen.seize_threads()?;
        frozen.gadget =
            find_syscall_gadget(pid).map_err(CheckpointError::sys("finding a syscall gadget"))?;
        let scratch = frozen
            .with_injector(|inj| {
                let s = inj.map_scratch(None, SCRATCH_PAGES)?;
                inj.poke(s.addr, &code_page())?;
                inj.call(
                    "mprotect(code page)",
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
            })
            .map_err(CheckpointError::sys("mapping scratch memory"))?;
        frozen.scratch = Some(scratch);
        // From now on calls run from ferry's code page, alone or in batches.
        frozen.gadget = BatchArea::within(&scratch).syscall_gadget();
        // The first injected call went through the kernel's signal path, which put back a
        // mask saved by sigsuspend/ppoll/pselect: only now is the blocked mask the real one.
        let tracee = frozen.tracee_mut();
        let blocked = tracee
            .sigmask()
            .map_err(CheckpointError::sys("reading the signal mask"))?;
        frozen.blocked = blocked;
        frozen
            .tracee_mut()
            .set_sigmask(BLOCK_ALL)
            .map_err(CheckpointError::sys("blocking signals"))?;
        frozen.mask_changed = true;
        for i in 0..frozen.threads.len() {
            frozen.query_thread(i)?;
        }
        Ok(frozen)
    }

    /// Seizes and stops every thread but the main one, listing them again until a listing
    /// shows no thread that is not held yet (only a running thread can create one).
    fn seize_threads(&mut self) -> Result<(), CheckpointError> {
        let pid = self.pid;
        for _round in 0..SEIZE_ROUNDS {
            let tids = ferry_sys::proc::thread_ids(pid)
                .map_err(CheckpointError::sys("listing threads"))?;
            let new: Vec<Pid> = tids
                .into_iter()
                .filter(|&t| t != pid && !self.threads.iter().any(|h| h.tid() == t))
                .collect();
            if new.is_empty() {
                return Ok(());
            }
            for tid in new {
                let mut tracee = match Tracee::seize_thread(tid, pid, false) {
                    Ok(t) => t,
                    // It exited since the listing.
                    Err(e) if e.errno() == Some(ferry_sys::Errno::ESRCH) => continue,
                    Err(e) => {
                        return Err(CheckpointError::sys(format!("seizing thread {tid}"))(e));
                    }
                };
                match tracee.interrupt_and_wait() {
                    Ok(_) => {}
                    Err(SysError::Gone { .. }) => continue,
                    Err(e) => {
                        return Err(CheckpointError::sys(format!("stopping thread {tid}"))(e));
                    }
                }
                let regs = tracee.regs().map_err(CheckpointError::sys(format!(
                    "reading thread {tid}'s registers"
                )))?;
                let deferred = tracee.take_deferred_signals();
                self.threads.push(FrozenThread {
                    tracee: Some(tracee),
                    regs,
                    blocked: 0,
                    tid_address: 0,
                    altstack: StackT::default(),
                    mask_changed: false,
                    deferred,
                    requeued: Vec::new(),
                });
            }
        }
        Err(CheckpointError::NotMigratable {
            pid: pid.as_raw(),
            reason: format!(
                "it kept creating threads while ferry stopped them ({} stopped)",
                self.threads.len() + 1
            ),
        })
    }

    /// Asks thread `i` what only it can report (alternate stack, tid address), which also
    /// takes it once through the kernel's signal path: only then is its blocked mask the real
    /// one. Then blocks every signal in it, as in the main thread.
    fn query_thread(&mut self, i: usize) -> Result<(), CheckpointError> {
        let area = self.batch_area();
        let mut b = Batch::new(area);
        let alt_out = b.out(StackT::SIZE);
        b.push(
            "sigaltstack",
            libc::SYS_sigaltstack,
            [0, alt_out, 0, 0, 0, 0],
        );
        let tid_out = b.out(8);
        b.push(
            "prctl(PR_GET_TID_ADDRESS)",
            libc::SYS_prctl,
            [abi::PR_GET_TID_ADDRESS, tid_out, 0, 0, 0, 0],
        );
        let gadget = self.gadget;
        let t = &mut self.threads[i];
        let tid = t.tid();
        let step = |what: &str| CheckpointError::sys(format!("{what} of thread {tid}"));
        let template = t.regs;
        let tracee = t.tracee.as_mut().expect("held until resume() or kill()");
        let mut inj = Injector::new(tracee, gadget, template);
        let r = inj.run_all(&b).map_err(step("querying"));
        self.injected += inj.calls();
        let r = r?;
        t.deferred.extend(tracee.take_deferred_signals());
        t.altstack = StackT::decode(r.read(alt_out, StackT::SIZE));
        t.tid_address = Fields::new(r.read(tid_out, 8)).u64(0);
        t.blocked = tracee.sigmask().map_err(step("reading the signal mask"))?;
        tracee
            .set_sigmask(BLOCK_ALL)
            .map_err(step("blocking signals"))?;
        t.mask_changed = true;
        Ok(())
    }

    /// The threads besides the main one.
    pub fn threads(&self) -> &[FrozenThread] {
        &self.threads
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The batch layout of the scratch area.
    pub fn batch_area(&self) -> BatchArea {
        BatchArea::within(&self.scratch.unwrap_or(Scratch { addr: 0, len: 0 }))
    }

    /// Injected system calls so far.
    pub fn injected_calls(&self) -> u64 {
        self.injected
    }

    pub fn tracee_mut(&mut self) -> &mut Tracee {
        self.tracee
            .as_mut()
            .expect("Frozen is used only until resume() or kill()")
    }

    pub fn tracee(&self) -> &Tracee {
        self.tracee
            .as_ref()
            .expect("Frozen is used only until resume() or kill()")
    }

    /// Runs `f` with an injector on this process.
    pub fn with_injector<T>(
        &mut self,
        f: impl FnOnce(&mut Injector<'_>) -> Result<T, SysError>,
    ) -> Result<T, SysError> {
        let gadget = self.gadget;
        let template = self.regs;
        let tracee = self
            .tracee
            .as_mut()
            .expect("Frozen is used only until resume() or kill()");
        let mut inj = Injector::new(tracee, gadget, template);
        let out = f(&mut inj);
        self.injected += inj.calls();
        let more = tracee.take_deferred_signals();
        self.deferred.extend(more);
        out
    }

    /// Puts the process back exactly as it was and lets it run.
    pub fn resume(mut self) -> Result<(), SysError> {
        self.resume_inner()
    }

    fn resume_inner(&mut self) -> Result<(), SysError> {
        if self.tracee.is_none() {
            return Ok(());
        }
        self.park()?;
        for t in &mut self.threads {
            if let Some(tracee) = t.tracee.take() {
                tracee.detach(0)?;
            }
        }
        match self.tracee.take() {
            Some(t) => t.detach(0),
            None => Ok(()),
        }
    }

    /// Undoes everything ferry changed (queued signals back, scratch unmapped, registers and
    /// mask restored) and leaves the process stopped in the kernel's signal-delivery path.
    /// No injected call is possible afterwards.
    pub fn park(&mut self) -> Result<(), SysError> {
        if self.parked || self.tracee.is_none() {
            return Ok(());
        }
        // Signals that arrived while frozen go back into the queue of the thread that
        // dequeued them (still blocked there), all sent from the main thread: a thread may
        // queue any signal for a thread of its own process.
        if let Some(scratch) = self.scratch {
            for _round in 0..8 {
                let mut pending: Vec<(Pid, Siginfo)> = std::mem::take(&mut self.deferred)
                    .into_iter()
                    .map(|info| (self.pid, info))
                    .collect();
                self.requeued.extend(pending.iter().map(|(_, info)| *info));
                for t in &mut self.threads {
                    let theirs = std::mem::take(&mut t.deferred);
                    t.requeued.extend(theirs.iter().copied());
                    pending.extend(theirs.into_iter().map(|info| (t.tid(), info)));
                }
                if pending.is_empty() {
                    break;
                }
                // Queued by ids as the process's own PID namespace numbers them.
                let pid = ferry_sys::proc::own_id(self.pid, self.pid).as_raw() as u64;
                let pending: Vec<(u64, Siginfo)> = pending
                    .into_iter()
                    .map(|(tid, info)| {
                        (ferry_sys::proc::own_id(self.pid, tid).as_raw() as u64, info)
                    })
                    .collect();
                let area = BatchArea::within(&scratch);
                for chunk in pending.chunks(area.table_entries.min(16)) {
                    let mut batch = Batch::new(area);
                    for (tid, info) in chunk {
                        let at = batch.bytes(info);
                        batch.push(
                            "rt_tgsigqueueinfo",
                            libc::SYS_rt_tgsigqueueinfo,
                            [pid, *tid, abi::siginfo_signo(info) as u64, at, 0, 0],
                        );
                    }
                    self.with_injector(|inj| inj.run_all(&batch).map(drop))?;
                }
            }
            self.with_injector(|inj| inj.unmap(scratch))?;
            self.scratch = None;
        }
        for t in &mut self.threads {
            let regs = restart::for_source(&t.regs);
            let (blocked, mask_changed) = (t.blocked, t.mask_changed);
            let tracee = t.tracee.as_mut().expect("held until resume() or kill()");
            tracee.set_regs(&regs)?;
            if mask_changed {
                tracee.set_sigmask(blocked)?;
            }
            enter_signal_path(tracee)?;
            // A signal met on the way into the final stop stays with its thread.
            t.deferred.extend(tracee.take_deferred_signals());
        }
        let regs = restart::for_source(&self.regs);
        let blocked = self.blocked;
        let mask_changed = self.mask_changed;
        let tracee = self.tracee_mut();
        tracee.set_regs(&regs)?;
        if mask_changed {
            tracee.set_sigmask(blocked)?;
        }
        enter_signal_path(tracee)?;
        self.parked = true;
        Ok(())
    }

    /// Signals that arrived while the process was frozen (queued again by [`Frozen::park`]).
    pub fn arrived_while_frozen(&self) -> Vec<Siginfo> {
        let mut all = self.requeued.clone();
        all.extend(self.deferred.iter().copied());
        all
    }

    /// Closes the process's FIFO fds once it is parked and will never run here again (its
    /// copy runs elsewhere and opened the same FIFOs again by their paths): a frozen end must
    /// not keep the copy's readers from ever seeing the last writer go, while the frozen
    /// process stays to serve its pages. Each `close` runs from a `syscall` instruction of
    /// the process's own code.
    pub fn release_fifos(&mut self) -> Result<(), SysError> {
        let fifos: Vec<i32> = ferry_sys::proc::open_fds(self.pid)?
            .iter()
            .filter(|f| f.stat.is_some_and(|st| st.file_type() == libc::S_IFIFO))
            .map(|f| f.fd)
            .collect();
        if fifos.is_empty() || self.tracee.is_none() {
            return Ok(());
        }
        let gadget = find_syscall_gadget(self.pid)?;
        let tracee = self.tracee_mut();
        let template = tracee.regs()?;
        let mut inj = Injector::new(tracee, gadget, template);
        for fd in fifos {
            inj.raw(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Kills the process (its image is safely written).
    pub fn kill(mut self) -> Result<(), SysError> {
        let Some(main) = self.tracee.take() else {
            return Ok(());
        };
        ferry_sys::host::send_signal(self.pid, libc::SIGKILL)?;
        // The main thread is reported gone only after every other thread was reaped.
        for t in &mut self.threads {
            if let Some(tracee) = t.tracee.take() {
                tracee.reap()?;
            }
        }
        main.reap()
    }
}

/// Stops `pid` just long enough to run `f` with calls injected into it (for instance to set up
/// dirty tracking), then lets it go exactly as it was.
pub fn borrow<T>(
    pid: Pid,
    f: impl FnOnce(&mut Injector<'_>) -> Result<T, SysError>,
) -> Result<T, CheckpointError> {
    let mut frozen = Frozen::freeze(pid)?;
    let out = frozen
        .with_injector(f)
        .map_err(CheckpointError::sys("working inside the process"))?;
    frozen
        .resume()
        .map_err(CheckpointError::sys("resuming the process"))?;
    Ok(out)
}

/// Moves a tracee from wherever it stopped into the kernel's signal-delivery path (an
/// interrupt stop), where a detach lets the kernel apply its own syscall-restart and signal
/// rules to the registers it now has.
pub fn enter_signal_path(tracee: &mut Tracee) -> Result<(), SysError> {
    tracee.interrupt()?;
    tracee.cont(0)?;
    loop {
        match tracee.wait()? {
            Stop::Event { .. } => return Ok(()),
            Stop::Signal { sig } => {
                // A signal became deliverable before the trap: keep it for after the detach.
                debug!(pid = tracee.pid().as_raw(), sig, "signal at the final stop");
                let info = tracee.siginfo()?;
                tracee.defer(info);
                tracee.cont(0)?;
            }
            other => {
                warn!(
                    pid = tracee.pid().as_raw(),
                    ?other,
                    "unexpected stop while resuming"
                );
                tracee.cont(0)?;
            }
        }
    }
}

/// [`enter_signal_path`] for every thread of a process, then detach them all together (the
/// other threads before the main one). A signal a thread met on the way is sent to that
/// thread again once it runs.
pub fn enter_signal_path_and_detach_all(
    mut main: Tracee,
    mut threads: Vec<Tracee>,
) -> Result<(), SysError> {
    for t in &mut threads {
        enter_signal_path(t)?;
    }
    enter_signal_path(&mut main)?;
    let mut late = Vec::new();
    for mut t in threads.into_iter().chain(std::iter::once(main)) {
        let (pid, tid) = (t.tgid(), t.pid());
        late.extend(t.take_deferred_signals().into_iter().map(|i| (pid, tid, i)));
        t.detach(0)?;
    }
    for (pid, tid, info) in late {
        let sig = abi::siginfo_signo(&info);
        if tid == pid {
            ferry_sys::host::send_signal(pid, sig)?;
        } else {
            ferry_sys::host::send_thread_signal(pid, tid, sig)?;
        }
    }
    Ok(())
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.tracee.is_some()
            && let Err(e) = self.resume_inner()
        {
            warn!(pid = self.pid.as_raw(), error = %e, "could not resume cleanly; detached");
        }
    }
}
