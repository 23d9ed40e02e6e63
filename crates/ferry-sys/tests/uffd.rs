//! Real-kernel tests of userfaultfd ([`ferry_sys::uffd`]) and uffd-wp dirty tracking
//! ([`ferry_sys::dirty`]): uffds made inside vessels and pulled out, faults resolved from
//! other threads, big copies, a dead pager and its guard, write tracking of a stopped vessel
//! and of a running program.
//!
//! The tests of this file run one at a time (`serial()`): every fork (a vessel, a guard)
//! inherits copies of all fds of the test process, uffds included, and a test that closes
//! its uffd must know that it held the last reference.

mod common;

use common::root;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use ferry_sys::dirty::{DirtyTracker, UffdWpTracker};
use ferry_sys::inject::{Injector, find_syscall_gadget};
use ferry_sys::ptrace::{Stop, Tracee};
use ferry_sys::uffd::{CopyOutcome, Event, PagerGuard, RegisterMode, Uffd, feature_names};
use ferry_sys::{Errno, PAGE_SIZE, Pid, SysError, abi, mem, proc, spawn};

const PAGE: usize = PAGE_SIZE as usize;

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with an injector on a fresh vessel, then kills the vessel (if still there).
fn with_vessel<T>(f: impl FnOnce(&mut Injector<'_>, Pid) -> T) -> T {
    let mut t: Tracee = spawn::vessel().expect("spawning a vessel");
    let pid = t.pid();
    let gadget = find_syscall_gadget(pid).expect("finding a syscall gadget");
    let template = t.regs().expect("reading registers");
    let out = {
        let mut inj = Injector::new(&mut t, gadget, template);
        f(&mut inj, pid)
    };
    if proc::exists(pid) {
        let _ = t.kill();
    }
    out
}

fn mmap(inj: &mut Injector<'_>, len: u64, flags: i32, fd: u64) -> u64 {
    inj.call(
        "mmap",
        libc::SYS_mmap,
        [
            0,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            flags as u64,
            fd,
            0,
        ],
    )
    .expect("mmap in the vessel")
}

/// An anonymous private mapping of `len` bytes made inside the tracee.
fn map_anon(inj: &mut Injector<'_>, len: u64) -> u64 {
    mmap(
        inj,
        len,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        u64::MAX,
    )
}

fn madvise(inj: &mut Injector<'_>, addr: u64, len: u64, advice: i32) {
    inj.call(
        "madvise",
        libc::SYS_madvise,
        [addr, len, advice as u64, 0, 0, 0],
    )
    .expect("madvise in the vessel");
}

/// Opens `path` read-write inside the tracee; returns the fd.
fn open_in(inj: &mut Injector<'_>, path: &str) -> u64 {
    let s = inj.map_scratch(None, 1).expect("scratch in the vessel");
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    inj.poke(s.addr, &b).expect("writing the path");
    let fd = inj
        .call(
            "open",
            libc::SYS_open,
            [s.addr, libc::O_RDWR as u64, 0, 0, 0, 0],
        )
        .expect("open in the vessel");
    inj.unmap(s).expect("unmapping the scratch");
    fd
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn read_remote(pid: Pid, addr: u64, len: usize) -> ferry_sys::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    mem::read(pid, &[(addr, len)], &mut buf)?;
    Ok(buf)
}

/// Waits for exactly one message on `uffd`, a page fault: `(addr, write, tid)`.
fn next_fault(uffd: &Uffd, within: Duration) -> (u64, bool, u32) {
    assert!(
        uffd.wait(Some(within)).expect("polling the uffd"),
        "no fault reported within {within:?}"
    );
    let mut ev = Vec::new();
    let n = uffd.read_events(&mut ev).expect("reading uffd events");
    assert_eq!(n, 1, "{ev:?}");
    match ev.pop() {
        Some(Event::PageFault {
            addr, write, tid, ..
        }) => (addr, write, tid),
        other => panic!("expected a page fault, got {other:?}"),
    }
}

/// Page-relative runs of `runs` within a mapping at `base`.
fn pages(base: u64, runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    runs.iter()
        .map(|&(s, e)| ((s - base) / PAGE_SIZE, (e - base) / PAGE_SIZE))
        .collect()
}

fn state(pid: Pid) -> char {
    proc::stat(pid).map(|s| s.state).unwrap_or('?')
}

#[test]
fn kernel_offers_what_ferry_needs() {
    if !root() {
        return;
    }
    let _s = serial();
    let f = Uffd::kernel_features().unwrap();
    eprintln!("userfaultfd features: {}", feature_names(f));
    for need in [
        abi::UFFD_FEATURE_WP_ASYNC,
        abi::UFFD_FEATURE_WP_UNPOPULATED,
        abi::UFFD_FEATURE_MISSING_SHMEM,
        abi::UFFD_FEATURE_EVENT_REMOVE,
        abi::UFFD_FEATURE_EVENT_UNMAP,
        abi::UFFD_FEATURE_EVENT_REMAP,
        abi::UFFD_FEATURE_THREAD_ID,
    ] {
        assert!(f & need != 0, "missing {}", feature_names(need));
    }
    // Both ways of making a local uffd work; the API is negotiated once.
    let mut u = Uffd::open_dev(0).unwrap();
    assert_eq!(
        u.api(abi::UFFD_FEATURE_WP_ASYNC).unwrap(),
        abi::UFFD_FEATURE_WP_ASYNC | abi::UFFD_FEATURE_WP_UNPOPULATED
    );
    assert!(u.api(0).is_err());
    let mut u = Uffd::new_local(0).unwrap();
    let err = u.api(1 << 40).unwrap_err();
    assert!(err.to_string().contains("lacks 0x10000000000"), "{err}");
}

#[test]
fn uffd_made_in_a_vessel_serves_its_faults() {
    if !root() {
        return;
    }
    let _s = serial();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    with_vessel(|inj, pid| {
        let mut uffd = Uffd::create_in_tracee(inj, 0).unwrap();
        assert_eq!(uffd.pid(), pid);
        // The vessel's copy is closed again: ferry holds the only one.
        let left: Vec<_> = proc::open_fds(pid)
            .unwrap()
            .into_iter()
            .filter(|f| String::from_utf8_lossy(&f.target).contains("userfaultfd"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        uffd.api(abi::UFFD_FEATURE_THREAD_ID).unwrap();
        let addr = map_anon(inj, 4 * PAGE_SIZE);
        let io = uffd
            .register(addr, 4 * PAGE_SIZE, RegisterMode::MISSING)
            .unwrap();
        assert!(io.copy() && io.zeropage() && io.wake() && !io.write_protect());
        let uffd = Arc::new(uffd);

        // 1. process_vm_readv of a missing page waits for the pager, like the process would.
        //    The fault is reported with the tid of *our* reading thread.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            tx.send((tid, read_remote(pid, addr, PAGE).unwrap()))
                .unwrap();
        });
        let (at, write, tid) = next_fault(&uffd, Duration::from_secs(5));
        assert_eq!((at, write), (addr, false));
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "process_vm_readv did not wait");
        let data = pattern(7, PAGE);
        assert_eq!(
            uffd.copy(addr, &data, true).unwrap(),
            CopyOutcome {
                copied: PAGE_SIZE,
                ..CopyOutcome::default()
            }
        );
        let (reader_tid, got) = rx.recv().unwrap();
        reader.join().unwrap();
        assert_eq!(tid, reader_tid);
        assert!(got == data);

        // 2. The vessel itself faults (an injected write(2) reads the page); a second thread
        //    resolves the fault. The tid is the vessel's.
        let handler = {
            let uffd = uffd.clone();
            let data = pattern(9, PAGE);
            std::thread::spawn(move || {
                let f = next_fault(&uffd, Duration::from_secs(5));
                uffd.copy(f.0, &data, true).unwrap();
                f
            })
        };
        let n = inj
            .call(
                "write(pipe)",
                libc::SYS_write,
                [
                    pipe_w.as_raw_fd() as u64,
                    addr + PAGE_SIZE,
                    PAGE_SIZE,
                    0,
                    0,
                    0,
                ],
            )
            .unwrap();
        assert_eq!(n, PAGE_SIZE);
        let (at, write, tid) = handler.join().unwrap();
        assert_eq!(
            (at, write, tid),
            (addr + PAGE_SIZE, false, pid.as_raw() as u32)
        );
        let mut back = vec![0u8; PAGE];
        nix::unistd::read(&pipe_r, &mut back).unwrap();
        assert!(back == pattern(9, PAGE));

        // 3. A copy without wake leaves the faulting thread waiting until `wake`.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            tx.send(read_remote(pid, addr + 2 * PAGE_SIZE, 8).unwrap())
                .unwrap()
        });
        let (at, _, _) = next_fault(&uffd, Duration::from_secs(5));
        uffd.zeropage(at, PAGE_SIZE, false).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        uffd.wake(at, PAGE_SIZE).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), [0u8; 8]);
        reader.join().unwrap();
        assert_eq!(
            uffd.copy(at, &data, true).unwrap().already_present,
            PAGE_SIZE
        );
    });
}

#[test]
fn big_runs_are_copied_in_one_call_and_present_pages_skipped() {
    if !root() {
        return;
    }
    let _s = serial();
    with_vessel(|inj, pid| {
        let mut uffd = Uffd::create_in_tracee(inj, 0).unwrap();
        uffd.api(0).unwrap();
        let len = 64usize << 20;
        let addr = map_anon(inj, len as u64);
        uffd.register(addr, len as u64, RegisterMode::MISSING)
            .unwrap();
        let data = pattern(3, len);
        let t0 = Instant::now();
        let half = len / 2;
        let out = uffd.copy(addr, &data[..half], true).unwrap();
        let took = t0.elapsed();
        eprintln!(
            "UFFDIO_COPY of {} MiB: {took:?} ({:.2} GB/s)",
            half >> 20,
            half as f64 / took.as_secs_f64() / 1e9
        );
        assert_eq!(out.copied, half as u64);
        let back = read_remote(pid, addr, half).unwrap();
        assert!(back == data[..half]);

        // Twice: everything is already there (EEXIST page by page), nothing overwritten.
        let t0 = Instant::now();
        let out = uffd.copy(addr, &pattern(4, half), true).unwrap();
        eprintln!("second copy (all present): {:?}", t0.elapsed());
        assert_eq!(
            out,
            CopyOutcome {
                already_present: half as u64,
                ..CopyOutcome::default()
            }
        );
        assert!(read_remote(pid, addr, PAGE).unwrap() == data[..PAGE]);

        // Overlapping: the present half is skipped, the rest copied.
        let q = len / 4;
        let out = uffd
            .copy(addr + q as u64, &data[q..q + half], true)
            .unwrap();
        assert_eq!((out.copied, out.already_present), (q as u64, q as u64));
        let back = read_remote(pid, addr, len - q).unwrap();
        assert!(back == data[..len - q]);

        // Zero pages for the last quarter (one skipped page in the middle).
        let z = addr + (len - q) as u64;
        uffd.copy(z + PAGE_SIZE, &data[..PAGE], true).unwrap();
        let out = uffd.zeropage(z, q as u64, true).unwrap();
        assert_eq!(
            (out.copied, out.already_present),
            (q as u64 - PAGE_SIZE, PAGE_SIZE)
        );
        let back = read_remote(pid, z, 2 * PAGE).unwrap();
        assert!(back[..PAGE].iter().all(|&b| b == 0) && back[PAGE..] == data[..PAGE]);

        // Errors: unregistered range, then a process that is gone.
        uffd.unregister(addr, len as u64).unwrap();
        let e = uffd.copy(addr, &data[..PAGE], true).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT), "{e}");
        let e = uffd.copy(addr + 1, &data[..PAGE], true).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL), "{e}");
        let other = map_anon(inj, PAGE_SIZE);
        uffd.register(other, PAGE_SIZE, RegisterMode::MISSING)
            .unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let t0 = Instant::now();
        loop {
            match uffd.copy(other, &data[..PAGE], true) {
                Err(e) if e.errno() == Some(Errno::ESRCH) => break,
                other => assert!(t0.elapsed() < Duration::from_secs(5), "{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The uffd itself never reports the death: ferry watches a pidfd for that.
        assert!(!uffd.wait(Some(Duration::from_millis(50))).unwrap());
    });
}

#[test]
fn copies_wait_for_unread_events() {
    if !root() {
        return;
    }
    let _s = serial();
    with_vessel(|inj, _pid| {
        let mut uffd = Uffd::create_in_tracee(inj, 0).unwrap();
        uffd.api(abi::UFFD_FEATURE_EVENT_REMOVE).unwrap();
        let a = map_anon(inj, 16 * PAGE_SIZE);
        uffd.register(a, 16 * PAGE_SIZE, RegisterMode::MISSING)
            .unwrap();
        uffd.copy(a, &pattern(1, 4 * PAGE), true).unwrap();
        let uffd = Arc::new(uffd);
        // madvise(DONTNEED) in the process waits until ferry has *read* the remove event;
        // meanwhile copies fail with EAGAIN (reported as `retry`).
        let bg = {
            let uffd = uffd.clone();
            std::thread::spawn(move || {
                assert!(uffd.wait(Some(Duration::from_secs(5))).unwrap());
                let o = uffd
                    .copy(a + 8 * PAGE_SIZE, &pattern(1, 4 * PAGE), true)
                    .unwrap();
                assert_eq!(
                    o,
                    CopyOutcome {
                        retry: 4 * PAGE_SIZE,
                        ..CopyOutcome::default()
                    }
                );
                assert!(!o.is_complete());
                let mut ev = Vec::new();
                uffd.read_events(&mut ev).unwrap();
                ev
            })
        };
        madvise(inj, a, PAGE_SIZE, libc::MADV_DONTNEED);
        let ev = bg.join().unwrap();
        assert!(
            matches!(ev[..], [Event::Remove { start, end }] if start == a && end == a + PAGE_SIZE),
            "{ev:?}"
        );
        let o = uffd
            .copy(a + 8 * PAGE_SIZE, &pattern(1, 4 * PAGE), true)
            .unwrap();
        assert!(o.is_complete() && o.copied == 4 * PAGE_SIZE);
        // The removed page is missing again; the others are still there.
        let o = uffd.copy(a, &pattern(1, 4 * PAGE), true).unwrap();
        assert_eq!((o.copied, o.already_present), (PAGE_SIZE, 3 * PAGE_SIZE));
    });
}

#[test]
fn own_memory_faults_are_served_by_a_handler_thread() {
    if !root() {
        return;
    }
    let _s = serial();
    let n = 32;
    let map = memmap2::MmapMut::map_anon(n * PAGE).unwrap();
    let base = map.as_ptr() as u64;
    let mut uffd = Uffd::new_local(0).unwrap();
    uffd.api(abi::UFFD_FEATURE_THREAD_ID).unwrap();
    uffd.register(base, (n * PAGE) as u64, RegisterMode::MISSING)
        .unwrap();
    let uffd = Arc::new(uffd);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let (uffd, stop) = (uffd.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut served = Vec::new();
            let mut ev = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if !uffd.wait(Some(Duration::from_millis(20))).unwrap() {
                    continue;
                }
                ev.clear();
                uffd.read_events(&mut ev).unwrap();
                for e in ev.drain(..) {
                    let Event::PageFault { addr, tid, .. } = e else {
                        panic!("{e:?}")
                    };
                    let i = ((addr - base) / PAGE_SIZE) as usize;
                    // Odd pages get zeros, even ones a pattern.
                    if i % 2 == 1 {
                        uffd.zeropage(addr, PAGE_SIZE, true).unwrap();
                    } else {
                        uffd.copy(addr, &pattern(i as u8, PAGE), true).unwrap();
                    }
                    served.push((i, tid));
                }
            }
            served
        })
    };
    // Plain reads of our own memory fault and wait for the handler.
    let me = nix::unistd::gettid().as_raw() as u32;
    for i in 0..n {
        let page = &map[i * PAGE..(i + 1) * PAGE];
        if i % 2 == 1 {
            assert!(page.iter().all(|&b| b == 0));
        } else {
            assert!(page == pattern(i as u8, PAGE).as_slice(), "page {i}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = handler.join().unwrap();
    assert_eq!(served, (0..n).map(|i| (i, me)).collect::<Vec<_>>());
}

#[test]
fn a_dead_pager_lets_faults_read_zeros_unless_a_guard_kills_the_process() {
    if !root() {
        return;
    }
    let _s = serial();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    let w = pipe_w.as_raw_fd() as u64;
    // Without a guard: closing the last reference unregisters everything and wakes the
    // waiting thread, whose fault is then served as an ordinary one: zeros.
    with_vessel(|inj, pid| {
        let mut uffd = Uffd::create_in_tracee(inj, 0).unwrap();
        uffd.api(0).unwrap();
        let addr = map_anon(inj, PAGE_SIZE);
        uffd.register(addr, PAGE_SIZE, RegisterMode::MISSING)
            .unwrap();
        let closer = std::thread::spawn(move || {
            next_fault(&uffd, Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(100));
            drop(uffd);
        });
        let n = inj
            .call(
                "write(pipe)",
                libc::SYS_write,
                [w, addr, PAGE_SIZE, 0, 0, 0],
            )
            .unwrap();
        closer.join().unwrap();
        assert_eq!(n, PAGE_SIZE);
        let mut back = vec![1u8; PAGE];
        nix::unistd::read(&pipe_r, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        assert!(!smaps.contains(" um"), "still registered");
    });
    // With a guard: ferry's reference goes, the guard's keeps the thread waiting (no zeros);
    // dropping the guard (as when ferry dies) kills the process.
    with_vessel(|inj, pid| {
        let mut uffd = Uffd::create_in_tracee(inj, 0).unwrap();
        uffd.api(0).unwrap();
        let addr = map_anon(inj, PAGE_SIZE);
        uffd.register(addr, PAGE_SIZE, RegisterMode::MISSING)
            .unwrap();
        let guard = PagerGuard::new(&uffd).unwrap();
        let guard_pid = guard.guard_pid();
        let t0 = Instant::now();
        while proc::read_text(guard_pid, "comm").unwrap().trim() != "ferry-guard" {
            assert!(t0.elapsed() < Duration::from_secs(5), "guard not running");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ender = std::thread::spawn(move || {
            next_fault(&uffd, Duration::from_secs(5));
            drop(uffd);
            std::thread::sleep(Duration::from_millis(300));
            let waiting = state(pid);
            drop(guard);
            waiting
        });
        let r = inj.raw(libc::SYS_write, [w, addr, PAGE_SIZE, 0, 0, 0]);
        let waiting = ender.join().unwrap();
        assert!(
            matches!(waiting, 'S' | 'D'),
            "the faulting vessel should still wait, is {waiting}"
        );
        match r {
            Err(SysError::Gone { how, .. }) => assert!(how.contains("signal 9"), "{how}"),
            other => panic!("expected the vessel killed, got {other:?}"),
        }
        assert!(!proc::exists(guard_pid));
    });
    // Released: the guard exits and the process is left alone.
    with_vessel(|inj, pid| {
        let mut uffd = Uffd::create_in_tracee(inj, 0).unwrap();
        uffd.api(0).unwrap();
        let guard = PagerGuard::new(&uffd).unwrap();
        let guard_pid = guard.guard_pid();
        guard.release().unwrap();
        assert!(!proc::exists(guard_pid));
        assert_eq!(
            inj.call("getpid", libc::SYS_getpid, [0; 6]).unwrap(),
            pid.as_raw() as u64
        );
    });
}

#[test]
fn a_user_mode_only_uffd_fails_kernel_accesses() {
    if !root() {
        return;
    }
    let _s = serial();
    let (_pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    with_vessel(|inj, pid| {
        let mut uffd = Uffd::create_in_tracee(inj, abi::UFFD_USER_MODE_ONLY).unwrap();
        uffd.api(0).unwrap();
        let addr = map_anon(inj, PAGE_SIZE);
        uffd.register(addr, PAGE_SIZE, RegisterMode::MISSING)
            .unwrap();
        let e = inj
            .call(
                "write(pipe)",
                libc::SYS_write,
                [pipe_w.as_raw_fd() as u64, addr, PAGE_SIZE, 0, 0, 0],
            )
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EFAULT));
        let e = read_remote(pid, addr, 8).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EFAULT));
        assert!(!uffd.wait(Some(Duration::from_millis(10))).unwrap());
        // A process that is not root may only create user-mode-only uffds here.
        inj.call(
            "setresuid",
            libc::SYS_setresuid,
            [65534, 65534, 65534, 0, 0, 0],
        )
        .unwrap();
        let e = Uffd::create_in_tracee(inj, 0).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EPERM), "{e}");
        Uffd::create_in_tracee(inj, abi::UFFD_USER_MODE_ONLY).unwrap();
    });
}

#[test]
fn wp_async_tracks_writes_to_every_kind_of_memory() {
    if !root() {
        return;
    }
    let _s = serial();
    let path = std::env::temp_dir().join(format!("ferry-uffd-wp-{}", std::process::id()));
    std::fs::write(&path, vec![0x55u8; 16 * PAGE]).unwrap();
    with_vessel(|inj, pid| {
        let fd = open_in(inj, &path.to_string_lossy());
        let len = 16 * PAGE_SIZE;
        for (kind, flags, mfd) in [
            ("anon", libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, u64::MAX),
            ("shmem", libc::MAP_SHARED | libc::MAP_ANONYMOUS, u64::MAX),
            ("private file", libc::MAP_PRIVATE, fd),
            ("shared file", libc::MAP_SHARED, fd),
        ] {
            let addr = mmap(inj, len, flags, mfd);
            // Pages 0..8 populated (written) before tracking, 8..16 never touched.
            for i in 0..8 {
                mem::write(pid, addr + i * PAGE_SIZE, &[1]).unwrap();
            }
            let mut t = UffdWpTracker::create_in_tracee(inj, &[(addr, addr + len)]).unwrap();
            assert_eq!(t.ranges(), [(addr, addr + len)]);
            t.arm().unwrap();
            let mut d = Vec::new();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(d, [], "{kind}: clean after arm");
            // process_vm_writev writes count; so does a read of a never-touched page not.
            for i in [3, 7, 8] {
                mem::write(pid, addr + i * PAGE_SIZE, &[2]).unwrap();
            }
            read_remote(pid, addr + 10 * PAGE_SIZE, 8).unwrap();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(pages(addr, &d), [(3, 4), (7, 9)], "{kind}");
            d.clear();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(d, [], "{kind}: reset by the previous take");
            // A write by the kernel on the process's behalf (pread into the buffer) counts.
            inj.call(
                "pread64",
                libc::SYS_pread64,
                [fd, addr + 12 * PAGE_SIZE, 100, 0, 0, 0],
            )
            .unwrap();
            mem::write(pid, addr + 3 * PAGE_SIZE, &[3]).unwrap();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(pages(addr, &d), [(3, 4), (12, 13)], "{kind}");
            // MADV_DONTNEED of a clean page: for private anonymous memory its content is now
            // zeros and it is reported; shmem and shared files keep their content. A private
            // file page reverts to the file's content and is NOT reported (see dirty.rs).
            madvise(inj, addr + 5 * PAGE_SIZE, PAGE_SIZE, libc::MADV_DONTNEED);
            d.clear();
            t.take_dirty(&mut d).unwrap();
            let want: &[(u64, u64)] = if kind == "anon" { &[(5, 6)] } else { &[] };
            assert_eq!(pages(addr, &d), want, "{kind}: after MADV_DONTNEED");
            // An unmapped hole is skipped; a new mapping inside a tracked range is refused.
            inj.call(
                "munmap",
                libc::SYS_munmap,
                [addr + 14 * PAGE_SIZE, PAGE_SIZE, 0, 0, 0, 0],
            )
            .unwrap();
            d.clear();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(d, [], "{kind}: hole");
            inj.call(
                "mmap(fixed)",
                libc::SYS_mmap,
                [
                    addr + 14 * PAGE_SIZE,
                    PAGE_SIZE,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .unwrap();
            let e = t.take_dirty(&mut d).unwrap_err();
            assert_eq!(e.errno(), Some(Errno::EPERM), "{kind}: {e}");
            // The new mapping can be added (its content is dirty by definition).
            t.add_ranges(&[(addr + 14 * PAGE_SIZE, addr + 15 * PAGE_SIZE)])
                .unwrap();
            t.protect(addr + 14 * PAGE_SIZE, addr + 15 * PAGE_SIZE)
                .unwrap();
            d.clear();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(d, [], "{kind}");
            mem::write(pid, addr + 14 * PAGE_SIZE, &[4]).unwrap();
            t.take_dirty(&mut d).unwrap();
            assert_eq!(pages(addr, &d), [(14, 15)], "{kind}");
            Box::new(t).stop().unwrap();
            let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
            assert!(
                !smaps.contains(" uw"),
                "{kind}: still registered after stop"
            );
        }
    });
    let _ = std::fs::remove_file(&path);
}

#[test]
fn wp_async_reports_huge_pages_page_by_page() {
    if !root() {
        return;
    }
    let _s = serial();
    with_vessel(|inj, pid| {
        let len = 64u64 << 20;
        let raw = map_anon(inj, len + (2 << 20));
        let addr = raw.next_multiple_of(2 << 20);
        madvise(inj, addr, len, libc::MADV_HUGEPAGE);
        mem::write(pid, addr, &vec![1u8; len as usize]).unwrap();
        let huge = |pid: Pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        eprintln!("AnonHugePages before tracking: {} kB", huge(pid));
        let t0 = Instant::now();
        let mut t = UffdWpTracker::create_in_tracee(inj, &[(addr, addr + len)]).unwrap();
        let made = t0.elapsed();
        t.arm().unwrap();
        let armed = t0.elapsed();
        let mut d = Vec::new();
        t.take_dirty(&mut d).unwrap();
        let clean = t0.elapsed();
        assert_eq!(d, []);
        mem::write(pid, addr + (5 << 20) + 100, &[9]).unwrap();
        t.take_dirty(&mut d).unwrap();
        assert_eq!(d, [(addr + (5 << 20), addr + (5 << 20) + PAGE_SIZE)]);
        eprintln!("AnonHugePages after one write: {} kB", huge(pid));
        mem::write(pid, addr, &vec![2u8; len as usize]).unwrap();
        d.clear();
        let t1 = Instant::now();
        t.take_dirty(&mut d).unwrap();
        let all = t1.elapsed();
        assert_eq!(d, [(addr, addr + len)]);
        eprintln!(
            "64 MiB: create+register {made:?}, arm {:?}, take (clean) {:?}, take (all written) {all:?}",
            armed - made,
            clean - armed
        );
    });
}

/// The program the running-process test tracks: it writes the pages named by a command word
/// (in its .bss, outside the tracked mapping) and acknowledges.
const WRITER_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
volatile unsigned long cmd[3]; /* sequence, page mask, acknowledged sequence */
int main(void) {
    char *m = mmap(0, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 1, 16 * 4096);
    printf("%lx %lx\n", (unsigned long)m, (unsigned long)cmd);
    fflush(stdout);
    unsigned long seen = 0;
    for (;;) {
        if (cmd[0] != seen) {
            seen = cmd[0];
            for (int i = 0; i < 16; i++)
                if (cmd[1] >> i & 1) m[i * 4096 + 17]++;
            cmd[2] = seen;
        } else {
            usleep(200);
        }
    }
}
"#;

#[test]
fn wp_async_tracks_a_running_program() {
    if !root() {
        return;
    }
    let _s = serial();
    let dir = std::env::temp_dir().join(format!("ferry-uffd-writer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("writer.c");
    let exe = dir.join("writer");
    std::fs::write(&src, WRITER_C).unwrap();
    let cc = std::process::Command::new("gcc")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("gcc is needed (scripts/setup.sh installs it)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mut child = std::process::Command::new(&exe)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let words: Vec<u64> = line
        .split_whitespace()
        .map(|w| u64::from_str_radix(w, 16).unwrap())
        .collect();
    let (m, cmd) = (words[0], words[1]);
    let pid = Pid::from_raw(child.id() as i32);

    // Stop it, make the uffd inside it, put it back exactly as it was, let it run.
    let mut tracee = Tracee::seize(pid, true).unwrap();
    tracee.interrupt_and_wait().unwrap();
    let regs = tracee.regs().unwrap();
    let gadget = find_syscall_gadget(pid).unwrap();
    let mut t = {
        let mut inj = Injector::new(&mut tracee, gadget, regs);
        UffdWpTracker::create_in_tracee(&mut inj, &[(m, m + 16 * PAGE_SIZE)]).unwrap()
    };
    tracee.set_regs(&regs).unwrap();
    tracee.interrupt().unwrap();
    tracee.cont(0).unwrap();
    while !matches!(tracee.wait().unwrap(), Stop::Event { .. }) {
        tracee.cont(0).unwrap();
    }
    tracee.detach(0).unwrap();

    let mut seq = 0u64;
    let mut command = |mask: u64| {
        seq += 1;
        let mut b = mask.to_le_bytes().to_vec();
        mem::write(pid, cmd + 8, &b).unwrap();
        b = seq.to_le_bytes().to_vec();
        mem::write(pid, cmd, &b).unwrap();
        let t0 = Instant::now();
        while read_remote(pid, cmd + 16, 8).unwrap() != b {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "writer not responding"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    t.arm().unwrap();
    let mut d = Vec::new();
    t.take_dirty(&mut d).unwrap();
    assert_eq!(d, []);
    command(1 << 3 | 1 << 7 | 1 << 8);
    t.take_dirty(&mut d).unwrap();
    assert_eq!(pages(m, &d), [(3, 4), (7, 9)]);
    d.clear();
    std::thread::sleep(Duration::from_millis(20));
    t.take_dirty(&mut d).unwrap();
    assert_eq!(d, []);
    command(1 << 3 | 1 << 15);
    t.take_dirty(&mut d).unwrap();
    assert_eq!(pages(m, &d), [(3, 4), (15, 16)]);
    Box::new(t).stop().unwrap();
    // Still running normally without the tracker.
    command(1);
    let page0 = read_remote(pid, m + 17, 1).unwrap();
    assert_eq!(page0, [2]);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
