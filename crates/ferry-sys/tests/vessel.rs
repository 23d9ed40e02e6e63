//! Real-kernel tests of the tracee layer on a vessel child.

mod common;

use common::root;

use ferry_sys::{host, spawn};

#[test]
fn vessel_stops_and_reports_its_state() {
    if !root() {
        return;
    }
    let mut t = spawn::vessel().unwrap();
    let regs = t.regs().unwrap();
    assert_eq!(regs.cs, 0x33);
    let xs = t.xstate().unwrap();
    let host_x = host::xsave().unwrap();
    eprintln!(
        "xstate {} bytes, sw bytes {:02x?}, header {:02x?}, host {:x?}",
        xs.len(),
        &xs[464..512],
        &xs[512..528],
        host_x
    );
    assert_eq!(host::xstate_features(&xs), host_x.features);
    assert_eq!(xs.len() as u32, host_x.size);
    assert!(host::xstate_features(&xs) & !host_x.features == 0);
    let _ = t.take_deferred_signals();
    t.kill().unwrap();
}

#[test]
fn injected_calls_run_inside_the_tracee() {
    use ferry_sys::inject::{Injector, find_syscall_gadget};
    if !root() {
        return;
    }
    let mut t = spawn::vessel().unwrap();
    let pid = t.pid();
    let gadget = find_syscall_gadget(pid).unwrap();
    let template = t.regs().unwrap();
    let mut inj = Injector::new(&mut t, gadget, template);
    let got = inj.call("getpid", libc::SYS_getpid, [0; 6]).unwrap();
    assert_eq!(got as i32, pid.as_raw());
    let s = inj.map_scratch(None, 2).unwrap();
    inj.poke(s.addr, b"hello").unwrap();
    assert_eq!(inj.peek(s.addr, 5).unwrap(), b"hello");
    let err = inj
        .call("close(bad)", libc::SYS_close, [999_999, 0, 0, 0, 0, 0])
        .unwrap_err();
    assert_eq!(err.errno(), Some(ferry_sys::Errno::EBADF));
    assert!(err.to_string().contains("close(bad)"), "{err}");
    inj.unmap(s).unwrap();
    assert!(inj.peek(s.addr, 5).is_err());
    t.kill().unwrap();
}

#[test]
fn pagemap_scan_and_pagemap_file_agree() {
    use ferry_sys::pagemap::{PageScanner, Select};
    // Scan our own heap-allocated buffer: some pages written, some never touched.
    let len = 64 * 4096;
    let buf = vec![0u8; len + 4096];
    let base = (buf.as_ptr() as u64).next_multiple_of(4096);
    for i in (0..64).step_by(3) {
        touch(base + i * 4096);
    }
    let me = ferry_sys::host::self_pid();
    let mut a = Vec::new();
    let mut b = Vec::new();
    PageScanner::open(me)
        .unwrap()
        .scan(base, base + len as u64, Select::Anonymous, &mut a)
        .unwrap();
    PageScanner::open(me)
        .unwrap()
        .without_scan_ioctl()
        .scan(base, base + len as u64, Select::Anonymous, &mut b)
        .unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

/// Writes one byte of our own memory with process_vm_writev (no unsafe code in tests).
fn touch(addr: u64) {
    ferry_sys::mem::write(ferry_sys::host::self_pid(), addr, &[1]).expect("writing own memory");
}

#[test]
fn batches_run_many_calls_in_one_round_trip() {
    use ferry_sys::inject::{Batch, BatchArea, Injector, code_page, find_syscall_gadget};
    if !root() {
        return;
    }
    let mut t = spawn::vessel().unwrap();
    let pid = t.pid();
    let gadget = find_syscall_gadget(pid).unwrap();
    let template = t.regs().unwrap();
    let mut inj = Injector::new(&mut t, gadget, template);
    let s = inj.map_scratch(None, 8).unwrap();
    inj.poke(s.addr, &code_page()).unwrap();
    inj.call(
        "mprotect",
        libc::SYS_mprotect,
        [
            s.addr,
            4096,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
            0,
            0,
            0,
        ],
    )
    .unwrap();
    let area = BatchArea::within(&s);
    inj.set_gadget(area.syscall_gadget());

    let mut b = Batch::new(area);
    for _ in 0..50 {
        b.push("getpid", libc::SYS_getpid, [0; 6]);
    }
    let out = b.out(24);
    b.push("sigaltstack", libc::SYS_sigaltstack, [0, out, 0, 0, 0, 0]);
    let r = inj.run_all(&b).unwrap();
    for i in 0..50 {
        assert_eq!(r.result(i), Some(pid.as_raw() as i64));
    }
    assert_eq!(r.result(50), Some(0));
    assert_eq!(r.read(out, 24).len(), 24);

    // The first error ends the batch and is named.
    let mut b = Batch::new(area);
    b.push("getpid", libc::SYS_getpid, [0; 6]);
    b.push("close(bad)", libc::SYS_close, [999_999, 0, 0, 0, 0, 0]);
    b.push("getpid", libc::SYS_getpid, [0; 6]);
    let r = inj.run(&b).unwrap();
    assert_eq!(r.result(0), Some(pid.as_raw() as i64));
    let (i, name, errno) = r.failure().unwrap();
    assert_eq!((i, name, errno), (1, "close(bad)", ferry_sys::Errno::EBADF));
    assert_eq!(r.result(2), None);
    // Single calls still work afterwards, from the code page.
    assert_eq!(
        inj.call("getpid", libc::SYS_getpid, [0; 6]).unwrap() as i32,
        pid.as_raw()
    );
    // More than the table holds is refused, not overrun.
    let mut b = Batch::new(area);
    for _ in 0..=area.table_entries {
        b.push("getpid", libc::SYS_getpid, [0; 6]);
    }
    assert!(!b.fits(0, 0));
    assert!(inj.run(&b).is_err());
    t.kill().unwrap();
}
