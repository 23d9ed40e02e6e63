//! Capture (excision): read a frozen process's state into an image.
//!
//! Order of work, all while the process is frozen:
//! 1. execution state (registers, XSAVE area, rseq, robust list),
//! 2. state only the process can report, by injected calls into the scratch area (signal
//!    dispositions, alternate stack, itimers, brk, tid address, prctl values),
//! 3. control information and credentials from `/proc`,
//! 4. files, then mappings, then pages: every page that differs from its backing, found with
//!    `PAGEMAP_SCAN` and read with `process_vm_readv` in large batches, streamed to `pages.img`,
//! 5. `core.img`, synced; only then is the process killed (or resumed with `--leave-running`).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_image::*;
use ferry_sys::abi::{self, Fields, Itimerval, KernelSigaction, StackT};
use ferry_sys::inject::{Batch, BatchArea, Injector};
use ferry_sys::libc;
use ferry_sys::pagemap::{PageScanner, Select};
use ferry_sys::proc::{self, Mapping};
use ferry_sys::ptrace::Tracee;
use ferry_sys::{Pid, Regs, SysError};
use tracing::{debug, info};

use crate::freeze::Frozen;
use crate::imagedir::ImageWriter;
use crate::pagecopy::{self, Segment};
use crate::{CheckpointError, mobility, platform, restart};

#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointOptions {
    /// Let the process continue after the image is written (default: kill it).
    pub leave_running: bool,
}

/// What a checkpoint did and how long it took.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    pub pid: i32,
    pub leave_running: bool,
    /// Request to return.
    pub total: Duration,
    /// Process not executing: interrupt stop until resumed or killed.
    pub freeze: Duration,
    /// Time spent reading and writing page data.
    pub memory_copy: Duration,
    pub memory_bytes: u64,
    pub mappings: usize,
    pub page_runs: usize,
    pub fds: usize,
    pub injected_calls: u64,
    /// How the thread was caught (e.g. inside a restartable system call).
    pub interrupted: String,
    /// Whether PAGEMAP_SCAN found the pages (else /proc/PID/pagemap).
    pub pagemap_scan: bool,
    /// The descendants checkpointed with the process, in tree order: pid, and whether it was
    /// a zombie (ended, not yet reaped).
    pub children: Vec<(i32, bool)>,
}

/// Checkpoints `pid` (and its descendants, if it has any: a process tree) into `dir`.
pub fn checkpoint(
    pid: Pid,
    dir: &Path,
    opts: CheckpointOptions,
) -> Result<CheckpointReport, CheckpointError> {
    checkpoint_with(pid, dir, opts, mobility::Options::default())
}

/// [`checkpoint`] with exceptions to the mobility rules (e.g. the process's links to the
/// message service, [`mobility::Options::links`]).
pub fn checkpoint_with(
    pid: Pid,
    dir: &Path,
    opts: CheckpointOptions,
    rules: mobility::Options,
) -> Result<CheckpointReport, CheckpointError> {
    let started = Instant::now();
    mobility::preflight(pid)?;
    let platform =
        platform::host_platform().map_err(CheckpointError::sys("fingerprinting this host"))?;
    if !proc::children(pid)
        .map_err(CheckpointError::sys("listing children"))?
        .is_empty()
    {
        // What the members share is judged once the whole tree is held.
        return crate::tree::checkpoint_tree(pid, dir, opts, rules, platform, started);
    }
    mobility::check_resources(pid, &rules)?;
    // Room for the pages, allocated while the process still runs: the freeze then only copies.
    let expected = proc::status(pid)
        .map(|s| (s.rssanon.unwrap_or(0) + s.rssshmem.unwrap_or(0)) * 1024)
        .unwrap_or(0);
    let mut writer = ImageWriter::create(dir, expected + expected / 16)?;

    let mut excised = excise_checked(pid, platform, &rules)?;
    let copy_time = pagecopy::copy_to_sink(pid, &excised.segments, &mut writer)?;
    writer.finish(&mut excised.image)?;
    let Excised {
        frozen,
        image,
        stats,
        ..
    } = excised;
    let interrupted = format!("{:?}", restart::classify(&frozen.regs));
    let injected_calls = frozen.injected_calls();
    let frozen_at = frozen.frozen_at;
    if opts.leave_running {
        frozen
            .resume()
            .map_err(CheckpointError::sys("resuming the process"))?;
    } else {
        frozen.kill().map_err(CheckpointError::sys(
            "ending the process after its checkpoint",
        ))?;
    }
    let freeze = frozen_at.elapsed();
    let report = CheckpointReport {
        pid: pid.as_raw(),
        leave_running: opts.leave_running,
        total: started.elapsed(),
        freeze,
        memory_copy: copy_time,
        memory_bytes: image.memory.pages.bytes,
        mappings: image.memory.vmas.len(),
        page_runs: image.memory.pages.runs.len(),
        fds: image.files.fds.len(),
        injected_calls,
        interrupted,
        pagemap_scan: stats.pagemap_scan,
        children: Vec::new(),
    };
    info!(?report, "checkpoint done");
    Ok(report)
}

/// A process frozen and captured but for the bytes of its pages, which can be read from it
/// (it stays parked) until it is killed or resumed.
pub struct Excised {
    /// The frozen, parked process.
    pub frozen: Frozen,
    /// Its state; `memory.pages.runs` and `.bytes` name the pages to move (`hash` is 0 until
    /// an image file is written).
    pub image: ProcessImage,
    /// The same page runs, with how to read each.
    pub segments: Vec<Segment>,
    pub stats: ExcisionStats,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ExcisionStats {
    /// From the stop to the state being captured (pages excepted).
    pub excision: Duration,
    /// Whether PAGEMAP_SCAN found the pages (else /proc/PID/pagemap).
    pub pagemap_scan: bool,
}

/// Freezes and captures `pid` (all but its page bytes): what every migration algorithm starts
/// from. Fails with the process left running as it was.
pub fn excise(pid: Pid, opts: mobility::Options) -> Result<Excised, CheckpointError> {
    mobility::preflight(pid)?;
    mobility::check_resources(pid, &opts)?;
    let platform =
        platform::host_platform().map_err(CheckpointError::sys("fingerprinting this host"))?;
    excise_checked(pid, platform, &opts)
}

/// [`excise`] for a caller that has just run the mobility checks itself (they are repeated
/// on the frozen process anyway: a process that changed meanwhile is still refused).
pub fn excise_checked_before(
    pid: Pid,
    opts: mobility::Options,
) -> Result<Excised, CheckpointError> {
    let platform =
        platform::host_platform().map_err(CheckpointError::sys("fingerprinting this host"))?;
    excise_checked(pid, platform, &opts)
}

fn excise_checked(
    pid: Pid,
    platform: Platform,
    opts: &mobility::Options,
) -> Result<Excised, CheckpointError> {
    let mut frozen = Frozen::freeze(pid)?;
    // Threads, children or files may have appeared between the preflight and the stop.
    mobility::frozen_checks(pid)?;
    if opts.tree.is_empty() {
        mobility::check_no_children(pid)?;
    }
    let (mut image, segments, pagemap_scan) = capture_frozen(&mut frozen, platform, opts)?;
    let namespace = crate::pidns::Localizer::for_processes(&[pid])?;
    let ipc = crate::ipcns::capture(&[pid], namespace.is_some())?;
    crate::ipcns::check_attachments(ipc.as_ref(), [(pid, &image)])?;
    if let Some(ns) = namespace {
        ns.image(&mut image);
    }
    image.ipc_namespace = ipc;
    Ok(Excised {
        stats: ExcisionStats {
            excision: frozen.frozen_at.elapsed(),
            pagemap_scan,
        },
        frozen,
        image,
        segments,
    })
}

pub(crate) fn capture_frozen(
    frozen: &mut Frozen,
    platform: Platform,
    opts: &mobility::Options,
) -> Result<(ProcessImage, Vec<Segment>, bool), CheckpointError> {
    let pid = frozen.pid();
    let raw_regs = frozen.regs;
    let sys = CheckpointError::sys;

    // 1. Execution state, of every thread (the others answered their queries when frozen).
    let main = PerThread::read(frozen.tracee())?;
    let mut threads = Vec::with_capacity(frozen.threads().len());
    for t in frozen.threads() {
        let tid = t.tid();
        let per = PerThread::read(t.tracee())?;
        let regs = to_model_regs(&restart::for_image(&t.regs));
        threads.push(Thread {
            tid: tid.as_raw(),
            comm: proc::read_text(pid, &format!("task/{tid}/comm"))
                .map_err(CheckpointError::sys(format!("reading thread {tid}'s name")))?,
            execution: per.execution(regs, t.tid_address, t.altstack),
            blocked: t.blocked,
            pending: t
                .tracee()
                .queued_signals(false)
                .map_err(CheckpointError::sys(format!(
                    "reading thread {tid}'s queued signals"
                )))?
                .iter()
                .map(|info| PendingSignal {
                    shared: false,
                    siginfo: info.to_vec(),
                })
                .collect(),
        });
    }
    let queued_private = frozen
        .tracee()
        .queued_signals(false)
        .map_err(sys("reading queued signals"))?;
    let queued_shared = frozen
        .tracee()
        .queued_signals(true)
        .map_err(sys("reading queued signals"))?;

    // 2. State only the process can report.
    let area = frozen.batch_area();
    let injected = frozen
        .with_injector(|inj| query_process(inj, area))
        .map_err(sys("querying the process"))?;
    // Everything ferry borrowed goes back now; the rest only reads.
    frozen.park().map_err(sys("putting the process back"))?;

    // 3. Control information and credentials.
    let stat = proc::stat(pid).map_err(sys("reading stat"))?;
    let status = proc::status(pid).map_err(sys("reading status"))?;
    let control = Control {
        pid: pid.as_raw(),
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        comm: proc::read_text(pid, "comm").map_err(sys("reading comm"))?,
        exe: path_string(
            pid,
            "exe",
            &proc::readlink(pid, "exe").map_err(sys("reading exe"))?,
        )?,
        argv: proc::read_bytes(pid, "cmdline")
            .map_err(sys("reading cmdline"))?
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        cwd: path_string(
            pid,
            "working directory",
            &proc::readlink(pid, "cwd").map_err(sys("reading cwd"))?,
        )?,
        umask: status.umask.unwrap_or(0o022),
        personality: u32::from_str_radix(
            &proc::read_text(pid, "personality").map_err(sys("reading personality"))?,
            16,
        )
        .unwrap_or(0),
        nice: stat.nice as i32,
        rlimits: injected.rlimits,
        dumpable: injected.dumpable,
        no_new_privs: status.nonewprivs.unwrap_or(0) != 0,
        child_subreaper: injected.child_subreaper,
        pdeathsig: injected.pdeathsig,
        thp_disable: injected.thp_disable,
        timer_slack_ns: proc::read_text(pid, "timerslack_ns")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(50_000),
        stopped: frozen.was_stopped
            || std::iter::once(frozen.arrived_while_frozen())
                .chain(frozen.threads().iter().map(|t| t.arrived_while_frozen()))
                .flatten()
                .any(|i| abi::siginfo_signo(&i) == libc::SIGSTOP),
    };
    let credentials = Credentials {
        uid: IdSet {
            real: status.ruid,
            effective: status.euid,
            saved: status.suid,
            fs: status.fuid,
        },
        gid: IdSet {
            real: status.rgid,
            effective: status.egid,
            saved: status.sgid,
            fs: status.fgid,
        },
        groups: status.groups.clone(),
        caps: Capabilities {
            inheritable: status.capinh,
            permitted: status.capprm,
            effective: status.capeff,
            bounding: status.capbnd.unwrap_or(u64::MAX),
            ambient: status.capamb.unwrap_or(0),
        },
        securebits: injected.securebits,
    };

    // Pending signals: both queues, plus any dequeued while ferry held the process (queued
    // again for the thread that dequeued them).
    for (thread, held) in threads.iter_mut().zip(frozen.threads()) {
        thread.pending.extend(
            held.arrived_while_frozen()
                .iter()
                .map(|info| PendingSignal {
                    shared: false,
                    siginfo: info.to_vec(),
                }),
        );
        thread.pending.retain(|p| !matches!(p.signo(), 9 | 19));
    }
    let mut pending: Vec<PendingSignal> = Vec::new();
    for (shared, list) in [(false, &queued_private), (true, &queued_shared)] {
        for info in list {
            pending.push(PendingSignal {
                shared,
                siginfo: info.to_vec(),
            });
        }
    }
    for info in &frozen.arrived_while_frozen() {
        pending.push(PendingSignal {
            shared: false,
            siginfo: info.to_vec(),
        });
    }
    pending.retain(|p| !matches!(p.signo(), 9 | 19));

    // 4. Files. Duplicates (`2>&1`) share one open file description: recorded as such, so
    // that restore shares it again (and with it the offset). A link is only ever a duplicate
    // of another fd of the same link, never of a file.
    let mut fds: Vec<Fd> = Vec::new();
    let open = proc::open_fds(pid).map_err(sys("listing fds"))?;
    crate::objects::check_shared_objects(pid, &open, &opts.tree)?;
    let scan = crate::objects::FdScan::new(&open);
    for fd in &open {
        let kind = mobility::classify_fd(pid, fd, opts, &scan)?;
        mobility::check_locks(pid, fd.fd)?;
        let mut dup_of = None;
        for earlier in fds.iter().filter(|e| {
            e.dup_of.is_none()
                && match (&e.kind, &kind) {
                    (FdKind::Link { socket: a, .. }, FdKind::Link { socket: b, .. }) => a == b,
                    (FdKind::Link { .. }, _) | (_, FdKind::Link { .. }) => false,
                    (a, b) => a.path() == b.path(),
                }
        }) {
            if proc::same_open_file(pid, earlier.number, fd.fd)
                .map_err(sys("comparing open files"))?
            {
                dup_of = Some(earlier.number);
                break;
            }
        }
        let kind = match dup_of.and_then(|n| fds.iter().find(|e| e.number == n)) {
            Some(primary) => primary.kind.clone(),
            None => kind,
        };
        fds.push(Fd {
            number: fd.fd,
            cloexec: fd.flags & libc::O_CLOEXEC != 0,
            kind,
            dup_of,
        });
    }

    // Mappings (ferry's scratch area is gone again).
    let maps = proc::read_smaps(pid).map_err(sys("reading mappings"))?;
    let mut vmas = Vec::new();
    let mut raw_maps = Vec::new();
    for m in maps {
        let Some((backing, anon_name)) = mobility::classify_mapping(pid, &m, opts)? else {
            continue;
        };
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: Prot {
                read: m.read,
                write: m.write,
                exec: m.exec,
            },
            shared: m.shared,
            backing,
            flags: VmaFlags {
                growsdown: m.has_flag("gd"),
                dontfork: m.has_flag("dc"),
                dontdump: m.has_flag("dd"),
                wipeonfork: m.has_flag("wf"),
                hugepage: m.has_flag("hg"),
                nohugepage: m.has_flag("nh"),
                locked: m.has_flag("lo"),
            },
            anon_name,
        });
        raw_maps.push(m);
    }
    carry_unnamed_files(pid, &mut vmas, &open, &fds)?;

    // Pages to move.
    let (segments, pagemap_scan) = plan_pages(pid, &vmas, &raw_maps)?;
    let runs: Vec<PageRun> = segments
        .iter()
        .map(|s| PageRun {
            addr: s.addr,
            pages: s.len / PAGE_SIZE,
        })
        .collect();
    let bytes = segments.iter().map(|s| s.len).sum();

    let auxv_bytes = proc::read_bytes(pid, "auxv").map_err(sys("reading auxv"))?;
    let auxv: Vec<u64> = auxv_bytes
        .chunks_exact(8)
        .map(|c| Fields::new(c).u64(0))
        .collect();
    let layout = MmLayout {
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: stat.start_data.unwrap_or(0) as u64,
        end_data: stat.end_data.unwrap_or(0) as u64,
        start_brk: stat.start_brk.unwrap_or(0) as u64,
        brk: injected.brk,
        start_stack: stat.startstack,
        arg_start: stat.arg_start.unwrap_or(0) as u64,
        arg_end: stat.arg_end.unwrap_or(0) as u64,
        env_start: stat.env_start.unwrap_or(0) as u64,
        env_end: stat.env_end.unwrap_or(0) as u64,
    };

    let image = ProcessImage {
        origin: Origin {
            image_id: new_image_id(pid),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: ferry_sys::host::hostname(),
            platform: Platform {
                xsave: XsaveLayout {
                    features: ferry_sys::host::xstate_features(&main.xstate),
                    size: main.xstate.len() as u32,
                },
                ..platform
            },
        },
        control,
        credentials,
        execution: main.execution(
            to_model_regs(&restart::for_image(&raw_regs)),
            injected.tid_address,
            injected.altstack,
        ),
        memory: AddressSpace {
            layout,
            auxv,
            vmas,
            pages: PageIndex {
                runs,
                bytes,
                hash: 0,
            },
        },
        files: Files { fds },
        signals: Signals {
            actions: injected.actions,
            blocked: frozen.blocked,
            pending,
        },
        timers: injected.timers,
        threads,
        // Set once the image's ids are its namespace's (see `pidns`).
        pid_namespace: None,
        ipc_namespace: None,
    };
    debug!(
        pid = pid.as_raw(),
        vmas = image.memory.vmas.len(),
        runs = image.memory.pages.runs.len(),
        "captured"
    );
    Ok((image, segments, pagemap_scan))
}

/// What ptrace reads of one thread directly.
struct PerThread {
    xstate: Vec<u8>,
    rseq: Option<Rseq>,
    robust: (u64, u64),
}

impl PerThread {
    fn read(tracee: &Tracee) -> Result<PerThread, CheckpointError> {
        let tid = tracee.pid();
        let sys = |what: &str| CheckpointError::sys(format!("reading {what} of thread {tid}"));
        Ok(PerThread {
            xstate: tracee.xstate().map_err(sys("the XSAVE area"))?,
            rseq: tracee
                .rseq_configuration()
                .map_err(sys("the rseq registration"))?
                .map(|c| Rseq {
                    address: c.rseq_abi_pointer,
                    length: c.rseq_abi_size,
                    signature: c.signature,
                }),
            robust: proc::robust_list(tid).map_err(sys("the robust list"))?,
        })
    }

    fn execution(&self, regs: Registers, tid_address: u64, altstack: StackT) -> Execution {
        Execution {
            regs,
            xstate: self.xstate.clone(),
            tid_address,
            robust_list: RobustList {
                head: self.robust.0,
                len: self.robust.1,
            },
            rseq: self.rseq,
            sigaltstack: SigAltStack {
                sp: altstack.sp,
                flags: altstack.flags,
                size: altstack.size,
            },
        }
    }
}

fn path_string(pid: Pid, what: &str, bytes: &[u8]) -> Result<String, CheckpointError> {
    let s = String::from_utf8(bytes.to_vec()).map_err(|_| CheckpointError::NotMigratable {
        pid: pid.as_raw(),
        reason: format!("its {what} path is not valid UTF-8"),
    })?;
    if s.ends_with(" (deleted)") {
        return Err(CheckpointError::NotMigratable {
            pid: pid.as_raw(),
            reason: format!("its {what} was deleted ({s})"),
        });
    }
    Ok(s)
}

fn new_image_id(pid: Pid) -> u64 {
    let mut seed = [0u8; 8];
    if let Ok(bytes) = std::fs::read("/proc/sys/kernel/random/uuid") {
        seed.copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&bytes).to_le_bytes());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    u64::from_le_bytes(seed) ^ (nanos as u64) ^ ((pid.as_raw() as u64) << 32)
}

/// RLIMIT_CPU (0) … RLIMIT_RTTIME (15).
const RLIMIT_COUNT: u32 = 16;

/// What the process reports about itself through injected calls.
struct Injected {
    actions: Vec<SigAction>,
    rlimits: Vec<Rlimit>,
    timers: Timers,
    altstack: StackT,
    brk: u64,
    tid_address: u64,
    dumpable: u32,
    child_subreaper: bool,
    pdeathsig: i32,
    thp_disable: bool,
    securebits: u32,
}

/// Asks the process everything only it can answer, in one batch of injected calls.
fn query_process(inj: &mut Injector<'_>, area: BatchArea) -> Result<Injected, SysError> {
    let mut b = Batch::new(area);
    let signals: Vec<(u64, u64)> = (1..=64u64)
        .filter(|&s| s != 9 && s != 19)
        .map(|sig| {
            let out = b.out(KernelSigaction::SIZE);
            b.push(
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                [sig, 0, out, 8, 0, 0],
            );
            (sig, out)
        })
        .collect();
    let timers: Vec<u64> = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF]
        .iter()
        .map(|&which| {
            let out = b.out(Itimerval::SIZE);
            b.push(
                "getitimer",
                libc::SYS_getitimer,
                [which as u64, out, 0, 0, 0, 0],
            );
            out
        })
        .collect();
    // Asked of the process itself: prlimit64 on another user's process needs
    // CAP_SYS_RESOURCE, which root may lack.
    let limits: Vec<(u32, u64)> = (0..RLIMIT_COUNT)
        .map(|resource| {
            let out = b.out(16);
            b.push(
                "prlimit64",
                libc::SYS_prlimit64,
                [0, resource as u64, 0, out, 0, 0],
            );
            (resource, out)
        })
        .collect();
    let altstack_out = b.out(StackT::SIZE);
    b.push(
        "sigaltstack",
        libc::SYS_sigaltstack,
        [0, altstack_out, 0, 0, 0, 0],
    );
    let brk = b.push("brk", libc::SYS_brk, [0; 6]);
    let prctl_out = |b: &mut Batch, op: u64, name: &'static str| {
        let out = b.out(8);
        b.push(name, libc::SYS_prctl, [op, out, 0, 0, 0, 0]);
        out
    };
    let tid_out = prctl_out(&mut b, abi::PR_GET_TID_ADDRESS, "prctl(PR_GET_TID_ADDRESS)");
    let subreaper_out = prctl_out(
        &mut b,
        abi::PR_GET_CHILD_SUBREAPER,
        "prctl(PR_GET_CHILD_SUBREAPER)",
    );
    let pdeath_out = prctl_out(&mut b, abi::PR_GET_PDEATHSIG, "prctl(PR_GET_PDEATHSIG)");
    let dumpable = b.push(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        [abi::PR_GET_DUMPABLE, 0, 0, 0, 0, 0],
    );
    let thp = b.push(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        [abi::PR_GET_THP_DISABLE, 0, 0, 0, 0, 0],
    );
    let securebits = b.push(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [abi::PR_GET_SECUREBITS, 0, 0, 0, 0, 0],
    );

    let r = inj.run_all(&b)?;
    let word = |addr: u64| Fields::new(r.read(addr, 8)).u64(0);
    let value = |i: usize| r.result(i).unwrap_or(0);
    let actions = signals
        .iter()
        .filter_map(|&(sig, out)| {
            let a = KernelSigaction::decode(r.read(out, KernelSigaction::SIZE));
            (a != KernelSigaction::default()).then_some(SigAction {
                signo: sig as u32,
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            })
        })
        .collect();
    let itimer = |out: u64| {
        let t = Itimerval::decode(r.read(out, Itimerval::SIZE));
        ITimer {
            interval_us: t.interval_us,
            value_us: t.value_us,
        }
    };
    let rlimits = limits
        .iter()
        .map(|&(resource, out)| {
            let f = Fields::new(r.read(out, 16));
            Rlimit {
                resource,
                soft: f.u64(0),
                hard: f.u64(8),
            }
        })
        .collect();
    Ok(Injected {
        actions,
        rlimits,
        timers: Timers {
            real: itimer(timers[0]),
            virtual_: itimer(timers[1]),
            prof: itimer(timers[2]),
        },
        altstack: StackT::decode(r.read(altstack_out, StackT::SIZE)),
        brk: value(brk) as u64,
        tid_address: word(tid_out),
        child_subreaper: word(subreaper_out) as u32 != 0,
        pdeathsig: word(pdeath_out) as i32,
        dumpable: value(dumpable) as u32,
        thp_disable: value(thp) != 0,
        securebits: value(securebits) as u32,
    })
}

/// Reads the bytes of every mapped file without a name into its first mapping (the others
/// name it by inode), and links it to the fd that holds the same file, if one does (restore
/// then makes one file for both). Two fds holding it through different open file descriptions
/// are refused by the shared-object check before.
fn carry_unnamed_files(
    pid: Pid,
    vmas: &mut [Vma],
    open: &[proc::OpenFd],
    fds: &[Fd],
) -> Result<(), CheckpointError> {
    let mut carried = std::collections::HashSet::new();
    for v in vmas.iter_mut() {
        let Backing::UnnamedFile { file, data, fd, .. } = &mut v.backing else {
            continue;
        };
        *fd = open
            .iter()
            .find(|o| {
                o.stat.is_some_and(|st| st.inode == *file)
                    && (o.target.starts_with(b"/memfd:") || o.target.ends_with(b" (deleted)"))
            })
            .and_then(|o| fds.iter().find(|f| f.number == o.fd))
            .map(|f| f.dup_of.unwrap_or(f.number));
        if !carried.insert(*file) {
            continue;
        }
        let f = proc::open_mapped_file(pid, v.start, v.end).map_err(CheckpointError::sys(
            format!("opening the file mapped at {:#x}", v.start),
        ))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_CARRIED_BYTES as u64 {
            return Err(mobility::refuse(
                pid,
                format!(
                    "the file mapped at {:#x} grew to {len} bytes; ferry carries at most {} MiB",
                    v.start,
                    MAX_CARRIED_BYTES >> 20
                ),
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut bytes, 0)
            .map_err(|e| CheckpointError::Sys {
                step: format!("reading the file mapped at {:#x}", v.start),
                source: SysError::Io {
                    path: format!("/proc/{pid}/map_files"),
                    source: e,
                },
            })?;
        *data = bytes;
    }
    Ok(())
}

/// Finds the pages to move in every mapping: those whose content differs from the backing.
fn plan_pages(
    pid: Pid,
    vmas: &[Vma],
    maps: &[Mapping],
) -> Result<(Vec<Segment>, bool), CheckpointError> {
    let sys = CheckpointError::sys;
    let mut scanner = PageScanner::open(pid).map_err(sys("opening pagemap"))?;
    let mut segments = Vec::new();
    let mut found = Vec::new();
    for (vma, m) in vmas.iter().zip(maps) {
        if !vma.carries_pages() {
            continue;
        }
        let select = match vma.backing {
            Backing::File { .. } | Backing::UnnamedFile { .. } => Select::PrivateFileDirty,
            Backing::SharedAnonymous => Select::SharedAnonymous,
            _ => Select::Anonymous,
        };
        found.clear();
        if select == Select::SharedAnonymous && m.swap_kb > 0 {
            // Swapped-out shmem pages are invisible to the page tables: take the whole area.
            found.push((vma.start, vma.end));
        } else {
            scanner
                .scan(vma.start, vma.end, select, &mut found)
                .map_err(sys("scanning page tables"))?;
        }
        segments.extend(found.iter().map(|&(s, e)| Segment {
            addr: s,
            len: e - s,
            readable: vma.prot.read,
        }));
    }
    Ok((segments, scanner.uses_scan_ioctl()))
}

/// Field-for-field conversions between the kernel's register set and the image's.
macro_rules! convert_regs {
    ($from:ident: $src:ty => $dst:ident { $($f:ident),* $(,)? }) => {
        $dst { $($f: $from.$f),* }
    };
}

pub(crate) fn to_model_regs(r: &Regs) -> Registers {
    convert_regs!(r: Regs => Registers {
        r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax,
        rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs,
    })
}

pub(crate) fn from_model_regs(r: &Registers) -> Regs {
    convert_regs!(r: Registers => Regs {
        r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax,
        rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs,
    })
}
