//! Interrupted system calls: what the registers must say when the process continues.
//!
//! When ptrace stops a thread inside a blocking system call, the kernel has already unwound
//! the call: `orig_rax` holds its number and `rax` one of the internal restart codes. On the
//! way back to user space the kernel then decides, from those two registers and from the
//! signal (if any) it is about to deliver, whether to restart the call or fail it with EINTR
//! (`arch_do_signal_or_restart`). ferry lets the kernel make that decision itself: every
//! resume — of the source after a failed or `--leave-running` checkpoint, and of a restored
//! process — ends in the kernel's signal-delivery path with these registers.
//!
//! | `rax` at the stop         | kernel, no handler     | what ferry hands back                   |
//! |---------------------------|------------------------|-----------------------------------------|
//! | `-ERESTARTSYS/NOINTR/NOHAND` | restart the call    | unchanged: the kernel restarts it       |
//! | `-ERESTART_RESTARTBLOCK`  | `restart_syscall` with a kernel-private restart block (remaining time) | `-ERESTARTNOHAND`: the original call restarts with its original arguments |
//! | anything else             | return it              | unchanged                               |
//!
//! The restart block (for relative `nanosleep`, `poll`, `futex` timeouts) cannot be read from
//! user space, and re-creating one would leave the process inside `restart_syscall`, whose
//! original call a later checkpoint could no longer name. Restarting the original call
//! instead never returns early and never fails with EINTR; a relative timeout starts over.
//! It is exact when the kernel already wrote the remaining time back into the request (glibc
//! `sleep()`: `nanosleep(&ts, &ts)`), and for absolute timeouts (Python's `time.sleep`).
//!
//! Some waits do not restart at all when merely stopped: the kernel fails them with EINTR even
//! without a signal handler (signal(7), "Interruption of system calls and library functions by
//! stop signals": `epoll_wait`, `sigtimedwait`, `semop`, `io_getevents`, …). At the stop the
//! program has not seen that EINTR yet; ferry turns it into `-ERESTARTNOHAND`, which the kernel
//! resolves exactly as it should have: restart when no handler runs, EINTR when one does.
//!
//! A thread stopped inside `restart_syscall` itself (it was interrupted before, e.g. by
//! SIGSTOP/SIGCONT) no longer says which call it restarts; the source kernel can still
//! continue it, but a restored copy sees EINTR, as the kernel does for any process without a
//! restart block.

use ferry_sys::abi::{ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS};
use ferry_sys::{Regs, libc};

const NR_RESTART_SYSCALL: u64 = 219;

/// x86_64 calls that fail with EINTR when the process is stopped and continued.
const EINTR_ON_STOP: [u64; 8] = [
    232, // epoll_wait
    281, // epoll_pwait
    441, // epoll_pwait2
    128, // rt_sigtimedwait
    65,  // semop
    220, // semtimedop
    208, // io_getevents
    333, // io_pgetevents
];

/// How the thread was caught, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// Running user code (or returning a finished call).
    NotInSyscall,
    /// Inside a call the kernel restarts as it was.
    Restartable { nr: u64 },
    /// Inside a call with a kernel restart block: restarts with its original arguments.
    RestartBlock { nr: u64 },
    /// A wait the stop itself failed with EINTR: restarts as if `-ERESTARTNOHAND`.
    EintrOnStop { nr: u64 },
    /// Inside `restart_syscall`: a restored copy sees EINTR.
    InRestartSyscall,
}

fn restart_code(regs: &Regs) -> Option<i64> {
    if (regs.orig_rax as i64) < 0 {
        return None;
    }
    let err = -(regs.rax as i64);
    [
        ERESTARTSYS,
        ERESTARTNOINTR,
        ERESTARTNOHAND,
        ERESTART_RESTARTBLOCK,
    ]
    .contains(&err)
    .then_some(err)
}

pub fn classify(regs: &Regs) -> Interrupted {
    if (regs.orig_rax as i64) >= 0
        && regs.rax as i64 == -(libc::EINTR as i64)
        && EINTR_ON_STOP.contains(&regs.orig_rax)
    {
        return Interrupted::EintrOnStop { nr: regs.orig_rax };
    }
    match restart_code(regs) {
        None => Interrupted::NotInSyscall,
        Some(_) if regs.orig_rax == NR_RESTART_SYSCALL => Interrupted::InRestartSyscall,
        Some(ERESTART_RESTARTBLOCK) => Interrupted::RestartBlock { nr: regs.orig_rax },
        Some(_) => Interrupted::Restartable { nr: regs.orig_rax },
    }
}

/// Registers for the process restored elsewhere.
pub fn for_image(regs: &Regs) -> Regs {
    let mut r = *regs;
    match classify(regs) {
        Interrupted::RestartBlock { .. } | Interrupted::EintrOnStop { .. } => {
            r.rax = (-ERESTARTNOHAND) as u64
        }
        Interrupted::InRestartSyscall => {
            r.rax = (-(libc::EINTR as i64)) as u64;
            r.orig_rax = u64::MAX;
        }
        Interrupted::NotInSyscall | Interrupted::Restartable { .. } => {}
    }
    r
}

/// Registers for the source process when it resumes where it is.
pub fn for_source(regs: &Regs) -> Regs {
    match classify(regs) {
        // The source kernel still holds the restart block: let it continue exactly.
        Interrupted::InRestartSyscall => *regs,
        _ => for_image(regs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig: i64, rax: i64) -> Regs {
        // SAFETY-free: a zeroed plain-data struct built field by field.
        let mut r: Regs = Regs {
            r15: 0,
            r14: 0,
            r13: 0,
            r12: 0,
            rbp: 0,
            rbx: 0,
            r11: 0,
            r10: 0,
            r9: 0,
            r8: 0,
            rax: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            orig_rax: 0,
            rip: 0x1000,
            cs: 0x33,
            eflags: 0,
            rsp: 0,
            ss: 0x2b,
            fs_base: 0,
            gs_base: 0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        };
        r.orig_rax = orig as u64;
        r.rax = rax as u64;
        r
    }

    #[test]
    fn classifies_like_the_kernel() {
        assert_eq!(classify(&regs(-1, 5)), Interrupted::NotInSyscall);
        assert_eq!(classify(&regs(0, 12)), Interrupted::NotInSyscall);
        assert_eq!(classify(&regs(0, -512)), Interrupted::Restartable { nr: 0 });
        assert_eq!(
            classify(&regs(61, -514)),
            Interrupted::Restartable { nr: 61 }
        );
        assert_eq!(
            classify(&regs(230, -516)),
            Interrupted::RestartBlock { nr: 230 }
        );
        assert_eq!(classify(&regs(219, -516)), Interrupted::InRestartSyscall);
        // A genuine EINTR is a result, not a restart…
        assert_eq!(classify(&regs(0, -4)), Interrupted::NotInSyscall);
        // …except from waits that the stop itself failed.
        assert_eq!(
            classify(&regs(128, -4)),
            Interrupted::EintrOnStop { nr: 128 }
        );
        assert_eq!(for_image(&regs(232, -4)).rax as i64, -514);
        assert_eq!(for_source(&regs(232, -4)).rax as i64, -514);
    }

    #[test]
    fn restart_block_becomes_a_plain_restart() {
        let r = for_image(&regs(230, -516));
        assert_eq!(r.rax as i64, -514);
        assert_eq!(r.orig_rax, 230);
        assert_eq!(r.rip, 0x1000);
        assert_eq!(for_source(&regs(230, -516)).rax as i64, -514);
    }

    #[test]
    fn restart_syscall_fails_with_eintr_elsewhere_but_continues_at_home() {
        let r = for_image(&regs(219, -516));
        assert_eq!(r.rax as i64, -4);
        assert_eq!(r.orig_rax, u64::MAX);
        assert_eq!(for_source(&regs(219, -516)).rax as i64, -516);
    }

    #[test]
    fn other_states_are_untouched() {
        for (o, a) in [(0, -512), (0, -513), (7, -514), (-1, 0), (1, 100)] {
            assert_eq!(for_image(&regs(o, a)), regs(o, a));
        }
    }
}
