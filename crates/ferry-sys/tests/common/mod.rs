//! What the real-kernel tests of this crate share.

use ferry_sys::host;

/// Whether the test may run: it needs root, which CI always has (a skip there is a failure).
pub fn root() -> bool {
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
