//! The promises ferry makes beyond "it comes back": a failed checkpoint leaves the process
//! running unharmed; duplicated fds stay one open file; a stopped process stays stopped.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// A small tmpfs mounted for one test, unmounted on drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(dir: &Path, size: &str) -> TinyFs {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(ok.success(), "mounting a tmpfs at {}", dir.display());
        TinyFs(dir.to_owned())
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn stdout_and_stderr_sharing_one_open_file() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "interleave",
        system_program("python3"),
        Marker::Text("err 9\n"),
    )
    .args(&[Arg::Lit(
        python_workload("interleave.py").display().to_string(),
    )])
    .stderr_to_stdout()
    .run();
}

/// The image directory fills up while pages are written: ferry must report it, remove what it
/// wrote, and leave the process running exactly as before (not stopped, not traced), so that
/// it ends with the output of an uninterrupted run.
#[test]
fn failed_checkpoint_leaves_the_process_running() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("enospc");
    let sc = Scenario::new("enospc", c_workload("heap"), Marker::Text("ready\n"))
        .args(&[Arg::Lit("64".into())]);
    let reference = sc.reference(&scratch);
    let fs = TinyFs::mount(&scratch.join("tiny"), "8m");
    let image = fs.0.join("image");
    let dir = scratch.subdir("run");
    let mut proc = sc.launch("run", &dir).spawn();
    sc.wait_marker(&mut proc);
    let pid = proc.raw_pid().to_string();
    let run = ferry(
        &scratch,
        &[os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()],
    );
    assert_eq!(run.code(), 1, "a full disk is an error\n{}", run.describe());
    assert!(
        run.stderr.contains("No space left on device"),
        "the error says why\n{}",
        run.describe()
    );
    assert!(
        !image.join("core.img").exists() && !image.join("pages.img").exists(),
        "a failed checkpoint leaves no image behind"
    );
    let state = proc.state().expect("the process is alive");
    assert!(
        !matches!(state, 'T' | 't' | 'Z'),
        "state {state} after a failed checkpoint"
    );
    assert_eq!(
        proc_status(proc.raw_pid(), "TracerPid").as_deref(),
        Some("0")
    );
    let exit = proc.wait(TIMEOUT);
    assert_eq!(exit.shell_code(), reference.exit.shell_code());
    assert_same(
        "output after a failed checkpoint",
        &proc.output_bytes(),
        &reference.stdout,
        &run.describe(),
    );
}

fn wait_state(proc: &Proc, want: char) {
    for _ in 0..400 {
        if proc.state() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "{} never reached state {want} (is {:?})",
        proc.label,
        proc.state()
    );
}

/// A process stopped by job control is captured as stopped, restored stopped, and continues
/// on SIGCONT; `--leave-running` leaves it stopped too.
#[test]
fn stopped_process_stays_stopped() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("stopped");
    let sc = Scenario::new("stopped", c_workload("counter"), Marker::Text("\n5\n"));
    let reference = sc.reference(&scratch);
    let dir = scratch.subdir("run");
    let mut proc = sc.launch("run", &dir).spawn();
    sc.wait_marker(&mut proc);
    proc.signal(Signal::SIGSTOP);
    wait_state(&proc, 'T');

    checkpoint(
        &scratch,
        &proc,
        &scratch.join("first"),
        &["--leave-running"],
    );
    wait_state(&proc, 'T');
    assert_eq!(
        proc_status(proc.raw_pid(), "TracerPid").as_deref(),
        Some("0")
    );

    let image = scratch.join("image");
    checkpoint_and_kill(&scratch, &mut proc, &image);
    let restored = restore_detached(
        &scratch,
        &image,
        "stopped-restored",
        proc_stdout(&proc),
        None,
    );
    wait_state(&restored, 'T');
    restored.signal(Signal::SIGCONT);
    let mut restored = restored;
    let exit = restored.wait(TIMEOUT);
    assert_eq!(exit.shell_code(), reference.exit.shell_code());
    assert_same(
        "output of a stopped process after restore",
        &restored.output_bytes(),
        &reference.stdout,
        "",
    );
}

fn proc_stdout(proc: &Proc) -> Option<PathBuf> {
    proc.stdout.clone()
}

/// ferry itself is killed (SIGKILL, nothing can catch it) while it copies pages. The kernel
/// detaches the process; since ferry put every register, the mask and queued signals back
/// before the copy, the process runs on as if nothing happened.
#[test]
fn ferry_killed_mid_copy_leaves_the_process_running() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("ferry-killed");
    let sc = Scenario::new("ferry-killed", c_workload("heap"), Marker::Text("ready\n"))
        .args(&[Arg::Lit("768".into())]);
    let reference = sc.reference(&scratch);
    let dir = scratch.subdir("run");
    let mut proc = sc.launch("run", &dir).spawn();
    sc.wait_marker(&mut proc);
    let image = scratch.join("image");
    let pid = proc.raw_pid().to_string();
    let (mut ferry, _args) = ferry_spawn(
        &scratch,
        &[os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()],
    );
    let partial = image.join("pages.img.tmp");
    let mut copying = false;
    for _ in 0..2000 {
        if std::fs::metadata(&partial).is_ok_and(|m| m.len() > (8 << 20)) {
            copying = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(copying, "ferry never started copying pages");
    ferry.signal(Signal::SIGKILL);
    let _ = ferry.wait(TIMEOUT);
    for _ in 0..3 {
        let state = proc.state().expect("the process survived");
        assert!(
            !matches!(state, 'T' | 't' | 'Z'),
            "state {state} after ferry died"
        );
        assert_eq!(
            proc_status(proc.raw_pid(), "TracerPid").as_deref(),
            Some("0")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit = proc.wait(TIMEOUT);
    assert_eq!(exit.shell_code(), reference.exit.shell_code());
    assert_same(
        "output after ferry was killed mid-checkpoint",
        &proc.output_bytes(),
        &reference.stdout,
        "",
    );
}
