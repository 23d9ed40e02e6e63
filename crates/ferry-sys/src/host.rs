//! Facts about this machine that decide whether an image can run here: architecture, kernel
//! release, the vDSO this kernel maps, and the CPU's XSAVE layout.

use nix::unistd::Pid;

use crate::{Result, SysError, mem, proc};

/// This process's pid.
pub fn self_pid() -> Pid {
    nix::unistd::getpid()
}

/// Effective uid of ferry.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

pub fn is_root() -> bool {
    euid() == 0
}

/// Major and minor numbers of a `dev_t`, and back.
pub fn dev_major(dev: u64) -> u32 {
    nix::sys::stat::major(dev) as u32
}

pub fn dev_minor(dev: u64) -> u32 {
    nix::sys::stat::minor(dev) as u32
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    nix::sys::stat::makedev(major as u64, minor as u64)
}

/// Highest capability number of this kernel (`/proc/sys/kernel/cap_last_cap`).
pub fn cap_last_cap() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Sends signal `sig` (any number, real-time included) to `pid`.
pub fn send_signal(pid: Pid, sig: i32) -> Result<()> {
    // SAFETY: kill(2) takes plain integers.
    let r = unsafe { libc::kill(pid.as_raw(), sig) };
    if r != 0 {
        return Err(SysError::syscall("kill", pid, nix::errno::Errno::last()));
    }
    Ok(())
}

/// Kills every descendant of `pid` (SIGKILL) and reaps those this process may wait for (its
/// children, the processes it traces), children after their own children. For the init of a
/// PID namespace whose processes ferry traces: the init ends only once they are reaped.
pub fn kill_and_reap_descendants(pid: Pid) {
    let mut all = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        let children = crate::proc::children(p).unwrap_or_default();
        next.extend(children.iter().copied());
        all.extend(children);
    }
    for &p in &all {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    }
    for &p in all.iter().rev() {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        // Until it is gone or not ours to wait for (ECHILD); stops on the way out are let go.
        while let Ok(status) = waitpid(p, Some(WaitPidFlag::__WALL)) {
            match status {
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => break,
                _ => {
                    let _ = nix::sys::ptrace::cont(p, None);
                }
            }
        }
    }
}

/// Sends signal `sig` to thread `tid` of process `pid` (`tgkill`).
pub fn send_thread_signal(pid: Pid, tid: Pid, sig: i32) -> Result<()> {
    // SAFETY: tgkill(2) takes plain integers.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid.as_raw(), tid.as_raw(), sig) };
    if r != 0 {
        return Err(SysError::syscall("tgkill", tid, nix::errno::Errno::last()));
    }
    Ok(())
}

/// `uname -m` and `uname -r`.
pub fn uname() -> (String, String) {
    let u = nix::sys::utsname::uname();
    match u {
        Ok(u) => (
            u.machine().to_string_lossy().into_owned(),
            u.release().to_string_lossy().into_owned(),
        ),
        Err(_) => (std::env::consts::ARCH.to_string(), String::new()),
    }
}

pub fn hostname() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The vDSO area of a process: `[vvar]`, `[vvar_vclock]` (newer kernels) and `[vdso]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdsoArea {
    /// Start of `[vvar]`: what `ARCH_MAP_VDSO_64` takes.
    pub start: u64,
    pub vvar_pages: u64,
    pub vvar_vclock_pages: u64,
    pub vdso_start: u64,
    pub vdso_pages: u64,
}

/// Finds the vDSO area in a list of mappings.
pub fn vdso_area(maps: &[proc::Mapping]) -> Option<VdsoArea> {
    let pages = |m: &proc::Mapping| (m.end - m.start) / crate::PAGE_SIZE;
    let vvar = maps.iter().find(|m| m.path_is("[vvar]"));
    let vclock = maps.iter().find(|m| m.path_is("[vvar_vclock]"));
    let vdso = maps.iter().find(|m| m.path_is("[vdso]"))?;
    let start = vvar.map(|m| m.start).unwrap_or(vdso.start);
    Some(VdsoArea {
        start,
        vvar_pages: vvar.map(pages).unwrap_or(0),
        vvar_vclock_pages: vclock.map(pages).unwrap_or(0),
        vdso_start: vdso.start,
        vdso_pages: pages(vdso),
    })
}

/// The bytes of the `[vdso]` code pages of a process.
pub fn vdso_code(pid: Pid, area: &VdsoArea) -> Result<Vec<u8>> {
    let len = (area.vdso_pages * crate::PAGE_SIZE) as usize;
    let mut buf = vec![0u8; len];
    mem::read(pid, &[(area.vdso_start, len)], &mut buf)?;
    Ok(buf)
}

/// The vDSO area of ferry itself (the one this kernel gives every new process) and its code.
/// Read once: it does not change while ferry runs.
pub fn own_vdso() -> Result<Option<(VdsoArea, Vec<u8>)>> {
    static VDSO: std::sync::OnceLock<Option<(VdsoArea, Vec<u8>)>> = std::sync::OnceLock::new();
    if let Some(v) = VDSO.get() {
        return Ok(v.clone());
    }
    let me = nix::unistd::getpid();
    let maps = proc::read_maps(me)?;
    let v = match vdso_area(&maps) {
        Some(area) => Some((area, vdso_code(me, &area)?)),
        None => None,
    };
    Ok(VDSO.get_or_init(|| v).clone())
}

/// Enabled XSAVE features (XCR0) and the XSAVE area size for them (CPUID leaf 0xD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xsave {
    pub features: u64,
    pub size: u32,
}

pub fn xsave() -> Result<Xsave> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        let leaf1 = __cpuid(1);
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        if !osxsave {
            return Err(SysError::Parse {
                path: "cpuid".into(),
                detail: "the OS has not enabled XSAVE".into(),
            });
        }
        let features = xgetbv0();
        // Leaf 0xD exists when XSAVE is enabled (checked above).
        let d = __cpuid_count(0xd, 0);
        Ok(Xsave {
            features,
            size: d.ebx,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(SysError::Parse {
            path: "cpuid".into(),
            detail: "only x86_64 is supported".into(),
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn xgetbv0() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: XGETBV with ECX=0 reads XCR0; it is valid whenever CPUID.1:ECX.OSXSAVE is set,
    // which the caller checked. It touches no memory.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Enabled features (XCR0) recorded in an XSAVE area as `PTRACE_GETREGSET(NT_X86_XSTATE)`
/// returns it: the kernel stores XCR0 in the first software-reserved bytes, at offset 464 (the
/// same convention gdb reads).
pub fn xstate_features(xstate: &[u8]) -> u64 {
    match crate::abi::Fields::new(xstate).u64(464) {
        0 => 0x3, // a legacy area: x87 and SSE only
        xcr0 => xcr0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_a_vdso_and_xsave() {
        let (area, code) = own_vdso().unwrap().expect("vdso");
        assert!(area.vdso_pages >= 1);
        assert_eq!(code.len() as u64, area.vdso_pages * crate::PAGE_SIZE);
        assert_eq!(&code[..4], b"\x7fELF");
        let x = xsave().unwrap();
        assert!(x.features & 0x3 == 0x3);
        assert!(x.size >= 576);
    }
}

/// Signals that would end ferry in the middle of work on another process. While a
/// [`TerminationGuard`] lives they stay pending and take effect once it is dropped, when the
/// process ferry worked on is consistent again.
pub const TERMINATION_SIGNALS: [i32; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

pub struct TerminationGuard {
    old: nix::sys::signal::SigSet,
}

/// Blocks [`TERMINATION_SIGNALS`] for this thread until the guard is dropped.
pub fn defer_termination() -> Result<TerminationGuard> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    for s in TERMINATION_SIGNALS {
        if let Ok(sig) = Signal::try_from(s) {
            set.add(sig);
        }
    }
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(|e| SysError::syscall("pthread_sigmask", self_pid(), e))?;
    Ok(TerminationGuard { old })
}

impl Drop for TerminationGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&self.old),
            None,
        );
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The status a shell would report: the exit code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// Waits for child `pid` to end while relaying SIGTERM and SIGHUP sent to ferry, and letting
/// the terminal's SIGINT and SIGQUIT reach the child alone (as a shell does for a foreground
/// job).
pub fn wait_child_relaying_signals(pid: Pid) -> Result<ExitStatus> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installs SIG_IGN, which runs no code in ferry.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGQUIT, SigHandler::SigIgn);
    }
    let relay = std::thread::spawn(move || {
        use nix::sys::signal::SigSet;
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        while let Ok(sig) = set.wait() {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    });
    drop(relay); // detached: it ends with ferry
    wait_child(pid)
}

/// Waits until child `pid` exits. Raw statuses are decoded here: nix cannot represent a death
/// by a real-time signal.
pub fn wait_child(pid: Pid) -> Result<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if r == -1 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(SysError::syscall("waitpid", pid, e));
        }
        if libc::WIFEXITED(status) {
            return Ok(ExitStatus::Exited(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(ExitStatus::Signaled(libc::WTERMSIG(status)));
        }
    }
}

/// Blocks SIGTERM and SIGHUP in the calling thread (and threads it spawns later), so that
/// [`wait_child_relaying_signals`] receives them. Call before spawning threads.
pub fn route_termination_to_relay() -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| SysError::syscall("pthread_sigmask", self_pid(), e))
}

/// Who is at the other end of a connected Unix socket (`SO_PEERCRED`): pid, uid, gid.
pub fn peer_credentials(socket: &impl std::os::fd::AsFd) -> Result<(i32, u32, u32)> {
    let cred = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| SysError::syscall("getsockopt(SO_PEERCRED)", self_pid(), e))?;
    Ok((cred.pid(), cred.uid(), cred.gid()))
}

/// Reaps child `pid` if it has exited (`waitpid` with `WNOHANG`).
pub fn try_reap(pid: Pid) -> Result<Option<ExitStatus>> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
    if r == 0 {
        return Ok(None);
    }
    if r < 0 {
        return Err(SysError::syscall("waitpid", pid, nix::errno::Errno::last()));
    }
    if libc::WIFEXITED(status) {
        return Ok(Some(ExitStatus::Exited(libc::WEXITSTATUS(status))));
    }
    if libc::WIFSIGNALED(status) {
        return Ok(Some(ExitStatus::Signaled(libc::WTERMSIG(status))));
    }
    Ok(None)
}

/// Lets SIGPIPE end this process, as it ends other command-line tools (`ferry ps | head`):
/// Rust ignores it by default, which turns a closed pipe into a write error.
pub fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installs SIG_DFL, which runs no code in ferry.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

/// Sets the nice value of thread `tid` (a process's main thread has its pid as tid; 0: the
/// calling thread). Threads created afterwards by that thread inherit it.
pub fn set_nice(tid: i32, nice: i32) -> Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r != 0 {
        return Err(SysError::syscall(
            "setpriority",
            Pid::from_raw(tid),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Free memory the kernel can hand out without swapping (`MemAvailable`), in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
