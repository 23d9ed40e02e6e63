//! Real-kernel tests of the tracee layer on a vessel child.

use ferry_sys::{host, spawn};

fn root() -> bool {
    if host::is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must run as root"
    );
    eprintln!("skipped: needs root");
    false
}

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
