//! examples/echo.c compiled with `gcc` against include/ferry_msg.h and the cdylib of this build,
//! then run without a daemon. With real daemons it runs in `crates/ferry/tests/messages.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The directory holding `libferrymsg.so` of this build: `cargo test` builds it next to the
/// test executable (target/<profile>/deps), `cargo build` one level up.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let deps = exe.parent().expect("its directory").to_path_buf();
    let candidates = [
        deps.clone(),
        deps.parent().expect("the profile directory").into(),
    ];
    candidates
        .iter()
        .find(|dir| dir.join("libferrymsg.so").exists())
        .unwrap_or_else(|| panic!("no libferrymsg.so in {candidates:?}"))
        .clone()
}

/// The compiled example, or `None` (and a note) without a C compiler.
fn echo() -> Option<&'static Path> {
    static ECHO: OnceLock<Option<PathBuf>> = OnceLock::new();
    ECHO.get_or_init(|| {
        if Command::new("gcc").arg("--version").output().is_err() {
            eprintln!("skipped: no C compiler (gcc)");
            return None;
        }
        let lib = library_dir();
        let exe = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ferry-msg-c-echo-{}", std::process::id()));
        let out = Command::new("gcc")
            .current_dir(MANIFEST_DIR)
            .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"])
            .args(["-I", "include", "examples/echo.c", "-o"])
            .arg(&exe)
            .arg("-L")
            .arg(&lib)
            .arg("-lferrymsg")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "gcc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(exe)
    })
    .as_deref()
}

fn run(echo: &Path, socket: &str, args: &[&str]) -> Output {
    Command::new(echo)
        .args(args)
        .env("FERRY_MSG_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .expect("run echo")
}

#[test]
fn echo_c_without_a_daemon_says_so_and_exits_1() {
    let Some(echo) = echo() else { return };
    let socket = format!("ferry-msg-c-test-{}-nobody", std::process::id());
    for args in [&["srv", "3"][..], &["--ping", "cli", "srv", "3"]] {
        let out = run(echo, &socket, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no ferry message service"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(&socket), "{args:?}: {stderr}");
    }
    let out = run(echo, &socket, &["srv", "many"]);
    assert_eq!(out.status.code(), Some(2), "a bad count is a usage error");
}
