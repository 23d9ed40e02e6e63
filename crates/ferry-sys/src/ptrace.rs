//! A traced process: seize, interrupt, wait for stops, read and write its registers, extended
//! state and signal state, and let it go.
//!
//! ptrace requests must come from the thread that attached; a [`Tracee`] is therefore `!Send`
//! and lives on one thread. Dropping a [`Tracee`] that is still attached detaches it (the
//! kernel would do the same when ferry exits), so a process is never left traced.
//!
//! Stops are decoded from raw wait statuses here rather than through nix, whose `Signal` enum
//! cannot represent real-time signals (a tracee may stop for any of them).

use std::marker::PhantomData;

use nix::errno::Errno;
use nix::unistd::Pid;
use tracing::trace;

use crate::abi::{self, Siginfo};
use crate::{Regs, Result, SysError};

/// Why a tracee stopped (or that it is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP`: after `PTRACE_INTERRUPT`, or a group-stop of a seized tracee
    /// (`sig` is then the stopping signal).
    Event {
        sig: i32,
    },
    /// Syscall entry or exit (`PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// A signal is about to be delivered; it is suppressed unless passed to the next resume.
    Signal {
        sig: i32,
    },
    /// Another `PTRACE_EVENT_*` (fork, exec, …), which ferry never asks for.
    OtherEvent {
        event: i32,
        sig: i32,
    },
    Exited {
        code: i32,
    },
    Killed {
        sig: i32,
    },
}

impl Stop {
    fn decode(status: i32) -> Stop {
        if libc::WIFEXITED(status) {
            return Stop::Exited {
                code: libc::WEXITSTATUS(status),
            };
        }
        if libc::WIFSIGNALED(status) {
            return Stop::Killed {
                sig: libc::WTERMSIG(status),
            };
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if event == libc::PTRACE_EVENT_STOP {
            Stop::Event { sig }
        } else if event != 0 {
            Stop::OtherEvent { event, sig }
        } else if sig == libc::SIGTRAP | 0x80 {
            Stop::Syscall
        } else {
            Stop::Signal { sig }
        }
    }

    pub fn is_gone(&self) -> bool {
        matches!(self, Stop::Exited { .. } | Stop::Killed { .. })
    }
}

/// Options every ferry tracee gets.
fn base_options(kill_on_tracer_exit: bool) -> libc::c_long {
    let mut o = libc::PTRACE_O_TRACESYSGOOD;
    if kill_on_tracer_exit {
        o |= libc::PTRACE_O_EXITKILL;
    }
    o as libc::c_long
}

/// A thread traced by this thread (for a single-threaded process: the process).
pub struct Tracee {
    pid: Pid,
    /// The thread group (process) it belongs to.
    tgid: Pid,
    attached: bool,
    /// Signals dequeued for delivery while ferry was driving the tracee; they were suppressed
    /// and must be queued again (capture records them as pending).
    deferred: Vec<Siginfo>,
    _not_send: PhantomData<*const ()>,
}

fn ptrace_raw(
    req: libc::c_uint,
    pid: Pid,
    addr: *mut libc::c_void,
    data: *mut libc::c_void,
) -> std::result::Result<libc::c_long, Errno> {
    Errno::clear();
    // SAFETY: every caller passes `addr`/`data` that are either integers the request takes by
    // value or pointers to live, correctly sized buffers owned by the caller for the duration
    // of the call.
    let r = unsafe { libc::ptrace(req, pid.as_raw(), addr, data) };
    if r == -1 {
        let e = Errno::last();
        if e != Errno::UnknownErrno {
            return Err(e);
        }
    }
    Ok(r)
}

impl Tracee {
    /// Attaches with `PTRACE_SEIZE`. The process keeps running until [`Tracee::interrupt`].
    /// With `kill_on_tracer_exit`, the kernel kills the tracee if ferry dies (used for
    /// processes under construction, never for a process being checkpointed).
    pub fn seize(pid: Pid, kill_on_tracer_exit: bool) -> Result<Tracee> {
        Tracee::seize_thread(pid, pid, kill_on_tracer_exit)
    }

    /// [`Tracee::seize`] for thread `tid` of process `tgid`.
    pub fn seize_thread(tid: Pid, tgid: Pid, kill_on_tracer_exit: bool) -> Result<Tracee> {
        let pid = tid;
        ptrace_raw(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut(),
            base_options(kill_on_tracer_exit) as *mut libc::c_void,
        )
        .map_err(|e| SysError::syscall("PTRACE_SEIZE", pid, e))?;
        trace!(pid = pid.as_raw(), "seized");
        Ok(Tracee {
            pid,
            tgid,
            attached: true,
            deferred: Vec::new(),
            _not_send: PhantomData,
        })
    }

    /// The thread id (for a process's main thread, the process id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The process the thread belongs to.
    pub fn tgid(&self) -> Pid {
        self.tgid
    }

    /// Makes every thread and child process this tracee creates from now on a tracee too
    /// (`PTRACE_O_TRACECLONE`, `PTRACE_O_TRACEFORK`), starting in `PTRACE_EVENT_STOP`; see
    /// [`Tracee::adopt_clone`].
    pub fn trace_clones(&self, on: bool, kill_on_tracer_exit: bool) -> Result<()> {
        let mut o = base_options(kill_on_tracer_exit);
        if on {
            o |= (libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_TRACEFORK) as libc::c_long;
        }
        self.req("PTRACE_SETOPTIONS", libc::PTRACE_SETOPTIONS, 0, o as u64)
            .map(drop)
    }

    /// The message of the last `PTRACE_EVENT_*` stop (the new thread's id after a clone).
    pub fn event_msg(&self) -> Result<u64> {
        let mut msg: libc::c_ulong = 0;
        self.req(
            "PTRACE_GETEVENTMSG",
            libc::PTRACE_GETEVENTMSG,
            0,
            &mut msg as *mut libc::c_ulong as u64,
        )?;
        Ok(msg as u64)
    }

    /// Takes over thread `tid` (of process `tgid`; a new process: `tid` itself), which the
    /// kernel attached to this tracer when a tracee with [`Tracee::trace_clones`] created it,
    /// and waits for its first stop (before it runs any instruction).
    pub fn adopt_clone(tid: Pid, tgid: Pid) -> Result<Tracee> {
        let t = Tracee {
            pid: tid,
            tgid,
            attached: true,
            deferred: Vec::new(),
            _not_send: PhantomData,
        };
        match t.wait()? {
            Stop::Event { .. } => Ok(t),
            other => Err(SysError::UnexpectedStop {
                pid: tid.as_raw(),
                detail: format!("a new thread's first stop was {other:?}"),
            }),
        }
    }

    fn req(&self, op: &'static str, req: libc::c_uint, addr: u64, data: u64) -> Result<i64> {
        ptrace_raw(
            req,
            self.pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
        .map_err(|e| SysError::syscall(op, self.pid, e))
    }

    pub fn interrupt(&self) -> Result<()> {
        self.req("PTRACE_INTERRUPT", libc::PTRACE_INTERRUPT, 0, 0)
            .map(drop)
    }

    /// Waits for the next stop of this tracee.
    pub fn wait(&self) -> Result<Stop> {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer for the duration of the call.
            let r = unsafe { libc::waitpid(self.pid.as_raw(), &mut status, libc::__WALL) };
            if r == -1 {
                let e = Errno::last();
                if e == Errno::EINTR {
                    continue;
                }
                return Err(SysError::syscall("waitpid", self.pid, e));
            }
            let stop = Stop::decode(status);
            trace!(pid = self.pid.as_raw(), ?stop, "stop");
            if stop.is_gone() {
                return Err(SysError::Gone {
                    pid: self.pid.as_raw(),
                    how: match stop {
                        Stop::Exited { code } => format!("exited with status {code}"),
                        Stop::Killed { sig } => format!("was killed by signal {sig}"),
                        _ => unreachable!("is_gone"),
                    },
                });
            }
            return Ok(stop);
        }
    }

    /// Resumes with `PTRACE_CONT`, delivering `sig` (0 for none).
    pub fn cont(&self, sig: i32) -> Result<()> {
        self.req("PTRACE_CONT", libc::PTRACE_CONT, 0, sig as u64)
            .map(drop)
    }

    /// Resumes until the next syscall entry or exit.
    pub fn resume_to_syscall(&self, sig: i32) -> Result<()> {
        self.req("PTRACE_SYSCALL", libc::PTRACE_SYSCALL, 0, sig as u64)
            .map(drop)
    }

    /// Waits until the tracee reaches a stop that `accept` takes. Signal-delivery stops met on
    /// the way are suppressed and remembered (see [`Tracee::take_deferred_signals`]); the
    /// tracee is resumed with `resume` after each.
    pub fn wait_for(
        &mut self,
        what: &str,
        mut accept: impl FnMut(&Stop) -> bool,
        resume: fn(&Tracee, i32) -> Result<()>,
    ) -> Result<Stop> {
        // A process in a job-control stop reports it (and a stale interrupt trap may follow);
        // resuming from such a stop is how a seized tracee is driven anyway.
        let mut group_stops = 0;
        loop {
            let stop = self.wait()?;
            if accept(&stop) {
                return Ok(stop);
            }
            match stop {
                Stop::Signal { sig } => {
                    let info = self.siginfo()?;
                    trace!(pid = self.pid.as_raw(), sig, "deferring signal");
                    self.deferred.push(info);
                    resume(self, 0)?;
                }
                Stop::Event { .. } if group_stops < 16 => {
                    group_stops += 1;
                    trace!(
                        pid = self.pid.as_raw(),
                        ?stop,
                        "passing a group/interrupt stop"
                    );
                    resume(self, 0)?;
                }
                Stop::Event { .. } | Stop::OtherEvent { .. } | Stop::Syscall => {
                    return Err(SysError::UnexpectedStop {
                        pid: self.pid.as_raw(),
                        detail: format!("waiting for {what}, got {stop:?}"),
                    });
                }
                Stop::Exited { .. } | Stop::Killed { .. } => unreachable!("wait() maps these"),
            }
        }
    }

    /// Interrupts the tracee and waits until it sits in `PTRACE_EVENT_STOP` (inside the
    /// kernel's signal-delivery path, where syscall-restart decisions are still to be made).
    pub fn interrupt_and_wait(&mut self) -> Result<Stop> {
        self.interrupt()?;
        self.wait_for(
            "the interrupt stop",
            |s| matches!(s, Stop::Event { .. }),
            Tracee::cont,
        )
    }

    /// Remembers a signal suppressed at its delivery stop.
    pub fn defer(&mut self, info: Siginfo) {
        self.deferred.push(info);
    }

    /// Signals that arrived while ferry drove the tracee, suppressed at their delivery stop.
    pub fn take_deferred_signals(&mut self) -> Vec<Siginfo> {
        std::mem::take(&mut self.deferred)
    }

    pub fn regs(&self) -> Result<Regs> {
        // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
        let mut regs: Regs = unsafe { std::mem::zeroed() };
        self.req(
            "PTRACE_GETREGS",
            libc::PTRACE_GETREGS,
            0,
            &mut regs as *mut Regs as u64,
        )?;
        Ok(regs)
    }

    pub fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.req(
            "PTRACE_SETREGS",
            libc::PTRACE_SETREGS,
            0,
            regs as *const Regs as u64,
        )
        .map(drop)
    }

    /// The XSAVE area (`NT_X86_XSTATE`), exactly as long as the kernel reports.
    pub fn xstate(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 << 10];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        self.req(
            "PTRACE_GETREGSET(NT_X86_XSTATE)",
            libc::PTRACE_GETREGSET,
            abi::NT_X86_XSTATE as u64,
            &mut iov as *mut libc::iovec as u64,
        )?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub fn set_xstate(&self, xstate: &[u8]) -> Result<()> {
        let mut copy = xstate.to_vec();
        let mut iov = libc::iovec {
            iov_base: copy.as_mut_ptr().cast(),
            iov_len: copy.len(),
        };
        self.req(
            "PTRACE_SETREGSET(NT_X86_XSTATE)",
            libc::PTRACE_SETREGSET,
            abi::NT_X86_XSTATE as u64,
            &mut iov as *mut libc::iovec as u64,
        )
        .map(drop)
    }

    /// The blocked signal mask (bit `n-1` for signal `n`).
    pub fn sigmask(&self) -> Result<u64> {
        let mut mask = 0u64;
        self.req(
            "PTRACE_GETSIGMASK",
            abi::PTRACE_GETSIGMASK,
            8,
            &mut mask as *mut u64 as u64,
        )?;
        Ok(mask)
    }

    /// Sets the blocked mask. Note: this also clears a pending "restore saved mask" (as after
    /// `sigsuspend`), so read the true mask first.
    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        self.req(
            "PTRACE_SETSIGMASK",
            abi::PTRACE_SETSIGMASK,
            8,
            &mask as *const u64 as u64,
        )
        .map(drop)
    }

    /// The siginfo of the signal at a signal-delivery stop.
    pub fn siginfo(&self) -> Result<Siginfo> {
        let mut info = [0u8; abi::SIGINFO_SIZE];
        self.req(
            "PTRACE_GETSIGINFO",
            libc::PTRACE_GETSIGINFO,
            0,
            info.as_mut_ptr() as u64,
        )?;
        Ok(info)
    }

    /// Queued signals without dequeuing them: the thread's own queue, or the process-wide
    /// (shared) queue.
    pub fn queued_signals(&self, shared: bool) -> Result<Vec<Siginfo>> {
        let mut out = Vec::new();
        loop {
            let mut batch = [[0u8; abi::SIGINFO_SIZE]; 32];
            let args = abi::PeekSiginfoArgs {
                off: out.len() as u64,
                flags: if shared {
                    abi::PTRACE_PEEKSIGINFO_SHARED
                } else {
                    0
                },
                nr: batch.len() as i32,
            };
            let n = self.req(
                "PTRACE_PEEKSIGINFO",
                abi::PTRACE_PEEKSIGINFO,
                &args as *const abi::PeekSiginfoArgs as u64,
                batch.as_mut_ptr() as u64,
            )? as usize;
            out.extend_from_slice(&batch[..n.min(batch.len())]);
            if n < batch.len() {
                return Ok(out);
            }
        }
    }

    /// The rseq registration of the thread, if any (Linux 5.13+).
    pub fn rseq_configuration(&self) -> Result<Option<abi::RseqConfiguration>> {
        let mut conf = abi::RseqConfiguration::default();
        self.req(
            "PTRACE_GET_RSEQ_CONFIGURATION",
            abi::PTRACE_GET_RSEQ_CONFIGURATION,
            std::mem::size_of::<abi::RseqConfiguration>() as u64,
            &mut conf as *mut abi::RseqConfiguration as u64,
        )?;
        Ok((conf.rseq_abi_pointer != 0).then_some(conf))
    }

    /// Detaches; the tracee continues (delivering `sig` if non-zero).
    pub fn detach(mut self, sig: i32) -> Result<()> {
        self.attached = false;
        self.req("PTRACE_DETACH", libc::PTRACE_DETACH, 0, sig as u64)
            .map(drop)
    }

    /// Kills the tracee with SIGKILL and reaps its stops until it is gone.
    pub fn kill(self) -> Result<()> {
        nix::sys::signal::kill(self.tgid, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| SysError::syscall("kill", self.pid, e))?;
        self.reap()
    }

    /// Waits until the tracee, already sent SIGKILL, is gone. A process's main thread is
    /// reported gone only once its other threads are: reap those first.
    pub fn reap(mut self) -> Result<()> {
        self.attached = false;
        loop {
            match self.wait() {
                Err(SysError::Gone { .. }) => return Ok(()),
                // Stops can still be reported on the way out; keep reaping.
                Ok(_) => {
                    let _ = self.cont(0);
                }
                Err(SysError::Syscall {
                    errno: Errno::ECHILD,
                    ..
                }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.attached {
            // Best effort: the kernel detaches on our exit anyway; never leave it traced.
            let _ = ptrace_raw(
                libc::PTRACE_DETACH,
                self.pid,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }
}
