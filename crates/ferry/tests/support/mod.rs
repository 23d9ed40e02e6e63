//! Harness shared by ferry's integration tests.
//!
//! - [`needs_root`]: every test starts with it (skips loudly, or panics under `CI=true`).
//! - Workloads: [`c_workload`] (built once per test binary with the system gcc),
//!   [`rust_workload`], [`python_workload`].
//! - [`Launch`] / [`Proc`]: spawn a process with its output in regular files, in a session of
//!   its own, with no fd above 2; every [`Proc`] is killed and reaped in `Drop`, with all its
//!   descendants, even when the test panics.
//! - [`ferry`], [`checkpoint_and_kill`], [`restore_attached`], [`restore_detached`]: run the
//!   binary under test with a timeout; failures panic with ferry's stdout/stderr and the
//!   workload's output so far.
//! - [`Scenario`]: "run once uninterrupted, run again, checkpoint mid-run, restore, compare".
//!
//! The test process makes itself a child subreaper, so processes that `ferry restore
//! --detach` leaves behind are reparented to it and reaped here with their exit status.
#![allow(dead_code)] // every test file uses a different part of this

pub mod cluster;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Upper bound for any single wait (a workload to finish, ferry to return, a marker).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How often waits look again.
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------
// Root and process-wide setup

/// True if the test may go on. Without root: panics when `CI=true`, else says "skipped" on
/// stderr and returns false (the test then returns without asserting anything).
pub fn needs_root() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI must run as root: {test} checkpoints processes with ptrace");
        }
        // Straight to fd 2: libtest would swallow eprintln! output of a passing test.
        let _ = writeln!(
            io::stderr().lock(),
            "skipped: needs root ({test}: ferry checkpoints processes with ptrace)"
        );
        return false;
    }
    init();
    true
}

fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        nix::sys::prctl::set_child_subreaper(true)
            .expect("prctl(PR_SET_CHILD_SUBREAPER) on the test process");
    });
}

// ---------------------------------------------------------------------------------------------
// Paths and workloads

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// A binary of the `ferry-workloads` crate, next to the ferry binary (target/debug/).
pub fn rust_workload(name: &str) -> PathBuf {
    let bin = ferry_bin();
    let dir = bin.parent().expect("the ferry binary has a directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "Rust workload {} is missing: run `cargo build --workspace` (or `cargo test \
         --workspace`, which builds it) before these tests",
        path.display()
    );
    path
}

/// An unmodified system program, found in PATH.
pub fn system_program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not installed (not in PATH)"))
}

/// `workloads/python/NAME`.
/// What `workloads/python/sysv_tree.py` prints when its segments behaved.
pub const SYSV_TREE_OUTPUT: &[u8] =
    b"ready\ncounter 30 seen read-only 30\npattern ok\nkey finds the same id: True\ndone\n";

pub fn python_workload(name: &str) -> PathBuf {
    let path = repo_root().join("workloads/python").join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// `workloads/c/NAME.c`, compiled (all of them, once per test binary) with
/// `gcc -O2 -Wall -Werror` into a directory under the cargo target dir.
pub fn c_workload(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = match BUILT.get_or_init(build_c_workloads) {
        Ok(dir) => dir,
        Err(e) => panic!("building the C workloads failed:\n{e}"),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "no C workload {name} (workloads/c/{name}.c)"
    );
    path
}

fn build_c_workloads() -> Result<PathBuf, String> {
    let src_dir = repo_root().join("workloads/c");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-workloads");
    fs::create_dir_all(&out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
        .map_err(|e| format!("reading {}: {e}", src_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("c")))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(format!("no .c files in {}", src_dir.display()));
    }
    let mut jobs = Vec::new();
    for src in sources {
        let stem = src.file_stem().expect("a .c file has a stem").to_owned();
        let out = out_dir.join(&stem);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(&stem);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = out_dir.join(tmp_name);
        let child = Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running gcc (is it installed?): {e}"))?;
        jobs.push((src, out, tmp, child));
    }
    let mut errors = String::new();
    for (src, out, tmp, child) in jobs {
        let result = child
            .wait_with_output()
            .map_err(|e| format!("waiting for gcc: {e}"))?;
        if !result.status.success() {
            errors.push_str(&format!(
                "gcc -O2 -Wall -Werror {} failed ({}):\n{}{}\n",
                src.display(),
                result.status,
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            ));
            let _ = fs::remove_file(&tmp);
            continue;
        }
        // Keep the old file (and so its inode) when nothing changed: an image taken by another
        // test binary may still refer to it.
        let same = match (fs::read(&out), fs::read(&tmp)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            let _ = fs::remove_file(&tmp);
        } else {
            fs::rename(&tmp, &out).map_err(|e| format!("renaming to {}: {e}", out.display()))?;
        }
    }
    if errors.is_empty() {
        Ok(out_dir)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch directories

/// A directory for one test under the cargo target dir; removed at the end unless the test
/// failed and `FERRY_TEST_KEEP=1` is set.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(base).expect("creating CARGO_TARGET_TMPDIR");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(base)
            .expect("creating a scratch directory");
        Scratch { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("scratch directory").path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && std::thread::panicking()
        {
            if std::env::var("FERRY_TEST_KEEP").as_deref() == Ok("1") {
                eprintln!("keeping {} (FERRY_TEST_KEEP=1)", dir.keep().display());
                return;
            }
            eprintln!(
                "removing {} (set FERRY_TEST_KEEP=1 to keep a failed test's files)",
                dir.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// The few fields of `/proc/PID/stat` the tests look at.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub tty_nr: i32,
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        tty_nr: f.get(4)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// A `Key:` line of `/proc/PID/status`, value trimmed.
pub fn proc_status(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The `pos:` of `/proc/PID/fdinfo/FD`.
pub fn fd_pos(pid: i32, fd: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The fd of PID whose link points at PATH.
pub fn fd_of(pid: i32, path: &Path) -> Option<i32> {
    for e in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if fs::read_link(e.path()).ok().as_deref() == Some(path) {
            return e.file_name().to_str()?.parse().ok();
        }
    }
    None
}

/// All pids (processes, not threads) currently in /proc.
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of processes whose comm is COMM or whose executable is EXE.
pub fn processes_like(comm: &str, exe: &Path) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let c = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let e = fs::read_link(format!("/proc/{pid}/exe")).ok();
            c.trim_end() == comm || e.as_deref() == Some(exe)
        })
        .collect()
}

/// Every descendant of PID (children first found, then theirs).
pub fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, proc_stat(p)?.ppid)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(p, pp) in &parents {
            if pp == parent && !found.contains(&p) {
                found.push(p);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

// ---------------------------------------------------------------------------------------------
// Exit statuses

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// What a shell (and `ferry restore`) reports: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    fn from_std(status: std::process::ExitStatus) -> Exit {
        match status.code() {
            Some(c) => Exit::Code(c),
            None => Exit::Signal(status.signal().unwrap_or(0)),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process of the test: a child it spawned, or an orphan reparented to it (the process that
/// `ferry restore --detach` leaves). Killed, with its descendants, and reaped on drop.
pub struct Proc {
    pub label: String,
    pid: Pid,
    child: Option<Child>,
    start_time: Option<u64>,
    exit: Option<Exit>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn raw_pid(&self) -> i32 {
        self.pid.as_raw()
    }

    pub fn exit_status(&self) -> Option<Exit> {
        self.exit
    }

    /// Takes charge of PID, which must be a child of the test process by now (an orphan
    /// reparented to this subreaper). Its output is expected in STDOUT/STDERR.
    pub fn adopt(label: &str, pid: i32, stdout: Option<PathBuf>, stderr: Option<PathBuf>) -> Proc {
        let mut p = Proc {
            label: label.to_string(),
            pid: Pid::from_raw(pid),
            child: None,
            start_time: proc_stat(pid).map(|s| s.start_time),
            exit: None,
            stdout,
            stderr,
        };
        // It may have already exited: that is fine, as long as it is ours to reap.
        match waitpid(p.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => p.exit = Some(Exit::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => p.exit = Some(Exit::Signal(s as i32)),
            Ok(_) => {}
            Err(e) => panic!(
                "pid {pid} ({label}) is not a child of the test process ({e}); it should have \
                 been reparented to it (the test process is a child subreaper). {}",
                describe_pid(pid)
            ),
        }
        p
    }

    /// Reaps the process if it has exited.
    pub fn try_exit(&mut self) -> Result<Option<Exit>, String> {
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        if let Some(child) = self.child.as_mut() {
            let st = child
                .try_wait()
                .map_err(|e| format!("waiting for {}: {e}", self.label))?;
            self.exit = st.map(Exit::from_std);
            return Ok(self.exit);
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => self.exit = Some(Exit::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => self.exit = Some(Exit::Signal(s as i32)),
            Ok(_) => {}
            Err(Errno::ECHILD) => {
                return Err(format!(
                    "pid {} ({}) is not a child of the test process any more",
                    self.pid, self.label
                ));
            }
            Err(e) => return Err(format!("waitpid({}): {e}", self.pid)),
        }
        Ok(self.exit)
    }

    pub fn wait_result(&mut self, timeout: Duration) -> Result<Exit, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_exit()? {
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.label, self.pid
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the process to end; panics with its output on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Exit {
        match self.wait_result(timeout) {
            Ok(exit) => exit,
            Err(e) => panic!("{e}\n{}", self.diagnostics()),
        }
    }

    pub fn signal(&self, sig: Signal) {
        if self.exit.is_some() {
            panic!("sending {sig} to {}: it has already exited", self.label);
        }
        kill(self.pid, sig).unwrap_or_else(|e| {
            panic!(
                "sending {sig} to {} (pid {}): {e}\n{}",
                self.label,
                self.pid,
                self.diagnostics()
            )
        });
    }

    /// The process's stdout so far.
    pub fn output(&self) -> String {
        self.stdout
            .as_deref()
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned())
            .unwrap_or_default()
    }

    pub fn output_bytes(&self) -> Vec<u8> {
        self.stdout
            .as_deref()
            .map(|p| fs::read(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// "/proc/PID/stat" state letter, or None once it is gone (reaped).
    pub fn state(&self) -> Option<char> {
        if self.exit.is_some() {
            return None;
        }
        proc_stat(self.raw_pid()).map(|s| s.state)
    }

    /// Everything useful for a failure message: status, /proc state, stdout and stderr.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("--- {} (pid {}): ", self.label, self.pid);
        match self.exit {
            Some(e) => s.push_str(&format!("{e}\n")),
            None => s.push_str(&format!("running, {}\n", describe_pid(self.raw_pid()))),
        }
        for (what, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if let Some(p) = path {
                s.push_str(&format!("--- its {what} ({}):\n", p.display()));
                s.push_str(&tail_of_file(p, 6000));
                if !s.ends_with('\n') {
                    s.push('\n');
                }
            }
        }
        s
    }

    /// SIGKILL the process and all its descendants, then reap them.
    pub fn kill_tree(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let pid = self.raw_pid();
        // An adopted pid that is not ours any more (reaped elsewhere, maybe reused): only kill
        // it if it is still the very same process.
        if self.child.is_none() {
            let same = matches!(
                (proc_stat(pid), self.start_time),
                (Some(s), Some(t)) if s.start_time == t
            );
            if !same {
                return;
            }
        }
        let kids = descendants(pid);
        for &k in &kids {
            let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        if let Err(e) = self.wait_result(Duration::from_secs(10)) {
            eprintln!("cleanup: {e}");
        }
        // Orphaned descendants come to this subreaper: reap those that did.
        for k in kids {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match waitpid(Pid::from_raw(k), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        std::thread::sleep(POLL)
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_tree();
    }
}

fn describe_pid(pid: i32) -> String {
    match proc_stat(pid) {
        None => format!("/proc/{pid} is gone"),
        Some(s) => format!(
            "/proc/{pid}: state {} ppid {} TracerPid {}",
            s.state,
            s.ppid,
            proc_status(pid, "TracerPid").unwrap_or_else(|| "?".into())
        ),
    }
}

fn tail_of_file(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Err(e) => format!("(cannot read: {e})"),
        Ok(b) if b.is_empty() => "(empty)".to_string(),
        Ok(b) if b.len() > max => format!(
            "(... {} bytes before)\n{}",
            b.len() - max,
            String::from_utf8_lossy(&b[b.len() - max..])
        ),
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

/// What a launched process gets as stdin.
pub enum Input {
    Null,
    File(PathBuf),
    /// A pipe whose write end the test keeps (in the [`Proc`]) until the process is dropped.
    Pipe,
}

/// How to start a process: program, arguments, cwd, stdin, and the files stdout and stderr
/// go to. Every process starts in a new session (no controlling terminal, unless
/// [`Launch::controlling_tty`]) with only fds 0-2 open.
pub struct Launch {
    label: String,
    program: OsString,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    stdin: Input,
    stdout: PathBuf,
    stderr: PathBuf,
    ctty: Option<PathBuf>,
    stderr_to_stdout: bool,
}

impl Launch {
    /// Output goes to DIR/LABEL.stdout and DIR/LABEL.stderr.
    pub fn new(label: &str, program: impl AsRef<OsStr>, out_dir: &Path) -> Launch {
        Launch {
            label: label.to_string(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: None,
            stdin: Input::Null,
            stdout: out_dir.join(format!("{label}.stdout")),
            stderr: out_dir.join(format!("{label}.stderr")),
            ctty: None,
            stderr_to_stdout: false,
        }
    }

    /// stderr is the same open file description as stdout (`> out 2>&1`): one offset.
    pub fn stderr_to_stdout(mut self) -> Launch {
        self.stderr_to_stdout = true;
        self.stderr = self.stdout.clone();
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Launch {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Launch {
        self.cwd = Some(dir.to_owned());
        self
    }

    pub fn stdin(mut self, input: Input) -> Launch {
        self.stdin = input;
        self
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// The process opens this terminal right after `setsid`, which makes it its controlling
    /// terminal, and closes it again: a controlling terminal but no fd on it.
    pub fn controlling_tty(mut self, tty: &Path) -> Launch {
        self.ctty = Some(tty.to_owned());
        self
    }

    pub fn spawn(self) -> Proc {
        let out = File::create(&self.stdout)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.stdout.display()));
        let err = if self.stderr_to_stdout {
            out.try_clone()
                .unwrap_or_else(|e| panic!("duplicating {}: {e}", self.stdout.display()))
        } else {
            File::create(&self.stderr)
                .unwrap_or_else(|e| panic!("creating {}: {e}", self.stderr.display()))
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdout(out).stderr(err);
        cmd.env("LC_ALL", "C");
        match &self.stdin {
            Input::Null => {
                cmd.stdin(Stdio::null());
            }
            Input::File(p) => {
                let f = File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
                cmd.stdin(f);
            }
            Input::Pipe => {
                cmd.stdin(Stdio::piped());
            }
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        // New session, optional controlling terminal, no inherited fd above 2.
        ferry_sys::spawn::isolate(&mut cmd, self.ctty.as_deref());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {} ({}): {e}",
                self.label,
                Path::new(&self.program).display()
            )
        });
        let pid = Pid::from_raw(child.id() as i32);
        Proc {
            label: self.label,
            pid,
            start_time: proc_stat(pid.as_raw()).map(|s| s.start_time),
            child: Some(child),
            exit: None,
            stderr: (!self.stderr_to_stdout).then_some(self.stderr),
            stdout: Some(self.stdout),
        }
    }
}

/// Waits until COND holds for the process's stdout; panics if it exits first or on timeout.
pub fn wait_until(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond(&proc.output()) {
            return;
        }
        match proc.try_exit() {
            Ok(Some(_)) => {
                // The last lines may have landed just before it exited.
                if cond(&proc.output()) {
                    return;
                }
                panic!(
                    "{} exited before {what}\n{}",
                    proc.label,
                    proc.diagnostics()
                );
            }
            Ok(None) => {}
            Err(e) => panic!("{e}\n{}", proc.diagnostics()),
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                proc.diagnostics()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until the output contains NEEDLE.
pub fn wait_for_text(proc: &mut Proc, needle: &str) {
    wait_until(proc, &format!("{needle:?} in its output"), TIMEOUT, |out| {
        out.contains(needle)
    });
}

/// Waits until the output has at least N complete lines.
pub fn wait_for_lines(proc: &mut Proc, n: usize) {
    wait_until(proc, &format!("{n} lines of output"), TIMEOUT, |out| {
        out.bytes().filter(|&b| b == b'\n').count() >= n
    });
}

pub fn line_count(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'\n').count()
}

// ---------------------------------------------------------------------------------------------
// Running ferry

/// One finished `ferry` command.
pub struct FerryRun {
    pub args: Vec<String>,
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
}

impl FerryRun {
    pub fn code(&self) -> i32 {
        self.exit.shell_code()
    }

    pub fn describe(&self) -> String {
        format!(
            "--- ferry {}: {}\n--- ferry stdout:\n{}\n--- ferry stderr:\n{}\n",
            self.args.join(" "),
            self.exit,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn ferry_launch(scratch: &Scratch, args: &[&OsStr]) -> (Launch, Vec<String>) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let verb = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let logs = scratch.subdir("ferry-logs");
    let launch =
        Launch::new(&format!("ferry-{n}-{verb}"), ferry_bin(), &logs).args(args.iter().copied());
    let printable = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    (launch, printable)
}

/// Starts `ferry ARGS` (stdout and stderr into files under the scratch dir).
pub fn ferry_spawn(scratch: &Scratch, args: &[&OsStr]) -> (Proc, Vec<String>) {
    let (launch, printable) = ferry_launch(scratch, args);
    (launch.spawn(), printable)
}

/// Waits for a ferry started with [`ferry_spawn`].
pub fn ferry_finish(mut proc: Proc, args: Vec<String>, timeout: Duration) -> FerryRun {
    let exit = match proc.wait_result(timeout) {
        Ok(e) => e,
        Err(e) => panic!("ferry {}: {e}\n{}", args.join(" "), proc.diagnostics()),
    };
    let read = |p: &Option<PathBuf>| {
        p.as_deref()
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned())
            .unwrap_or_default()
    };
    FerryRun {
        args,
        exit,
        stdout: read(&proc.stdout),
        stderr: read(&proc.stderr),
    }
}

/// Runs `ferry ARGS` to completion (at most TIMEOUT).
pub fn ferry(scratch: &Scratch, args: &[&OsStr]) -> FerryRun {
    let (proc, printable) = ferry_spawn(scratch, args);
    ferry_finish(proc, printable, TIMEOUT)
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `ferry checkpoint PID --dir IMAGE [EXTRA]`, which must succeed. Returns ferry's run.
pub fn checkpoint(scratch: &Scratch, proc: &Proc, image: &Path, extra: &[&str]) -> FerryRun {
    let pid = proc.raw_pid().to_string();
    let mut args = vec![os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()];
    args.extend(extra.iter().map(|s| os(s)));
    let run = ferry(scratch, &args);
    if run.code() != 0 {
        panic!(
            "checkpoint failed\n{}{}",
            run.describe(),
            proc.diagnostics()
        );
    }
    run
}

/// Checkpoints PROC into IMAGE (default mode: ferry kills it), checks that the process is dead
/// when ferry returns, and reaps it.
pub fn checkpoint_and_kill(scratch: &Scratch, proc: &mut Proc, image: &Path) -> FerryRun {
    let run = checkpoint(scratch, proc, image, &[]);
    // The contract: ferry returns only after the process is dead. Dead is a zombie, or gone.
    if let Some(state) = proc.state()
        && state != 'Z'
        && state != 'X'
    {
        panic!(
            "ferry checkpoint returned, but {} is still alive (state {state})\n{}{}",
            proc.label,
            run.describe(),
            proc.diagnostics()
        );
    }
    match proc.wait_result(Duration::from_secs(10)) {
        Ok(_) => {}
        Err(e) => panic!(
            "after checkpoint: {e}\n{}{}",
            run.describe(),
            proc.diagnostics()
        ),
    }
    run
}

/// `ferry restore --dir IMAGE` (attached): waits for the restored process to end and returns
/// ferry's run; its exit code is the process's status.
pub fn restore_attached(scratch: &Scratch, image: &Path, timeout: Duration) -> FerryRun {
    let (proc, args) = ferry_spawn(scratch, &[os("restore"), os("--dir"), image.as_os_str()]);
    ferry_finish(proc, args, timeout)
}

/// `ferry restore --dir IMAGE --detach`, which must succeed and print only the new pid. The
/// restored process is adopted as a [`Proc`] whose output is expected in STDOUT/STDERR.
pub fn restore_detached(
    scratch: &Scratch,
    image: &Path,
    label: &str,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
) -> Proc {
    let run = ferry(
        scratch,
        &[
            os("restore"),
            os("--dir"),
            image.as_os_str(),
            os("--detach"),
        ],
    );
    let on_fail = |what: &str| -> ! {
        let out = stdout
            .as_deref()
            .map(|p| tail_of_file(p, 6000))
            .unwrap_or_default();
        panic!("{what}\n{}--- workload output:\n{out}", run.describe())
    };
    if run.code() != 0 {
        on_fail("restore --detach failed");
    }
    let text = run.stdout.as_str();
    let pid: i32 = match text.strip_suffix('\n').map(str::parse) {
        Some(Ok(pid)) if pid > 0 && text.bytes().filter(|b| *b == b'\n').count() == 1 => pid,
        _ => {
            // Do not leave a restored process behind: if something that looks like its pid
            // was printed and that process is ours, take it (Drop kills and reaps it).
            let _orphan = text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<i32>().ok())
                .filter(|&p| {
                    p > 0 && proc_stat(p).is_some_and(|s| s.ppid == std::process::id() as i32)
                })
                .map(|p| Proc::adopt(label, p, None, None));
            on_fail("restore --detach must print only the new pid and a newline")
        }
    };
    Proc::adopt(label, pid, stdout, stderr)
}

// ---------------------------------------------------------------------------------------------
// Comparing outputs

/// Panics unless GOT == WANT, showing where they first differ.
pub fn assert_same(what: &str, got: &[u8], want: &[u8], context: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let line = want[..at.min(want.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let show = |b: &[u8]| {
        if b.len() <= 8000 {
            String::from_utf8_lossy(b).into_owned()
        } else {
            let from = at.saturating_sub(400).min(b.len());
            let to = (at + 400).min(b.len());
            format!(
                "({} bytes; around byte {at}:)\n{}",
                b.len(),
                String::from_utf8_lossy(&b[from..to])
            )
        }
    };
    panic!(
        "{what} differs from the uninterrupted run: first difference at byte {at} (line \
         {line}); got {} bytes, want {} bytes\n--- got:\n{}\n--- want:\n{}\n{context}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    );
}

/// Compares two (possibly large) files in chunks.
pub fn assert_same_file(what: &str, got: &Path, want: &Path, context: &str) {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    let (mut a, mut b) = (open(got), open(want));
    let (la, lb) = (
        a.metadata().map(|m| m.len()).unwrap_or(0),
        b.metadata().map(|m| m.len()).unwrap_or(0),
    );
    let mut offset = 0u64;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let na = read_full(&mut a, &mut ba);
        let nb = read_full(&mut b, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            let at = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            panic!(
                "{what} differs from the uninterrupted run at byte {} ({} is {la} bytes, {} is \
                 {lb} bytes)\n{context}",
                offset + at as u64,
                got.display(),
                want.display()
            );
        }
        if na == 0 {
            return;
        }
        offset += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading for comparison: {e}"),
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// The standard scenario

/// An argument of a scenario's program.
#[derive(Clone)]
pub enum Arg {
    Lit(String),
    /// A file of this name in the run's own directory (which differs between runs).
    File(&'static str),
    /// The run's own directory.
    Dir,
}

/// When a run is "mid-run", ready to be checkpointed.
#[derive(Clone, Copy)]
pub enum Marker {
    /// Its stdout contains this text.
    Text(&'static str),
    /// Its stdout has at least this many lines.
    Lines(usize),
}

/// "Run the program once uninterrupted; run it again, checkpoint it mid-run (ferry kills it),
/// restore it, let it finish; the restored run must end like the uninterrupted one, with the
/// same exit status and byte-identical stdout and stderr."
pub struct Scenario {
    pub label: &'static str,
    pub program: PathBuf,
    pub args: Vec<Arg>,
    pub marker: Marker,
    /// Extra wait after the marker before checkpointing.
    pub settle: Duration,
    /// Sent once the marker is seen (uninterrupted run) or right after restore (checkpointed
    /// run, which then needs `detach`).
    pub wake: Option<Signal>,
    /// Restore with --detach (else attached, ferry's exit code being the process's status).
    pub detach: bool,
    /// Bound for each run to finish.
    pub timeout: Duration,
    /// stderr shares stdout's open file description (`2>&1`).
    pub stderr_to_stdout: bool,
}

/// What an uninterrupted run produced.
pub struct Reference {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Scenario {
    pub fn new(label: &'static str, program: PathBuf, marker: Marker) -> Scenario {
        Scenario {
            label,
            program,
            args: Vec::new(),
            marker,
            settle: Duration::ZERO,
            wake: None,
            detach: false,
            timeout: TIMEOUT,
            stderr_to_stdout: false,
        }
    }

    pub fn stderr_to_stdout(mut self) -> Scenario {
        self.stderr_to_stdout = true;
        self
    }

    pub fn args(mut self, args: &[Arg]) -> Scenario {
        self.args = args.to_vec();
        self
    }

    pub fn settle(mut self, d: Duration) -> Scenario {
        self.settle = d;
        self
    }

    pub fn wake(mut self, sig: Signal) -> Scenario {
        self.wake = Some(sig);
        self.detach = true;
        self
    }

    pub fn detach(mut self) -> Scenario {
        self.detach = true;
        self
    }

    /// The launch of one run, in DIR (its cwd, where its files and output go).
    pub fn launch(&self, run: &str, dir: &Path) -> Launch {
        let args: Vec<OsString> = self
            .args
            .iter()
            .map(|a| match a {
                Arg::Lit(s) => OsString::from(s),
                Arg::File(name) => dir.join(name).into_os_string(),
                Arg::Dir => dir.as_os_str().to_owned(),
            })
            .collect();
        let launch = Launch::new(&format!("{}-{run}", self.label), &self.program, dir)
            .args(args)
            .cwd(dir);
        if self.stderr_to_stdout {
            launch.stderr_to_stdout()
        } else {
            launch
        }
    }

    pub fn wait_marker(&self, proc: &mut Proc) {
        match self.marker {
            Marker::Text(t) => wait_for_text(proc, t),
            Marker::Lines(n) => wait_for_lines(proc, n),
        }
    }

    /// The uninterrupted run, then a second run (in SCRATCH/run) started and waited for until
    /// it is mid-run.
    pub fn reference_and_run(&self, scratch: &Scratch) -> (Reference, Proc) {
        let reference = self.reference(scratch);
        let dir = scratch.subdir("run");
        let mut proc = self.launch("run", &dir).spawn();
        self.wait_marker(&mut proc);
        (reference, proc)
    }

    /// The uninterrupted run, in SCRATCH/reference.
    pub fn reference(&self, scratch: &Scratch) -> Reference {
        let dir = scratch.subdir("reference");
        let mut proc = self.launch("reference", &dir).spawn();
        if let Some(sig) = self.wake {
            self.wait_marker(&mut proc);
            proc.signal(sig);
        }
        let exit = proc.wait(self.timeout);
        Reference {
            exit,
            stdout: proc.output_bytes(),
            stderr: proc
                .stderr
                .as_deref()
                .map(|p| fs::read(p).unwrap_or_default())
                .unwrap_or_default(),
        }
    }

    /// Reference run, checkpointed run, restore, comparison.
    pub fn run(&self) {
        let scratch = Scratch::new(self.label);
        let reference = self.reference(&scratch);

        let dir = scratch.subdir("run");
        let image = scratch.join("image");
        let mut proc = self.launch("run", &dir).spawn();
        self.wait_marker(&mut proc);
        std::thread::sleep(self.settle);
        let ckpt = checkpoint_and_kill(&scratch, &mut proc, &image);
        let at_checkpoint = proc.output_bytes();
        let context = format!(
            "{}--- output when checkpointed:\n{}",
            ckpt.describe(),
            String::from_utf8_lossy(&at_checkpoint)
        );
        assert!(
            at_checkpoint.len() < reference.stdout.len()
                && reference.stdout.starts_with(&at_checkpoint),
            "the checkpoint was not taken mid-run: the output at that time should be a strict \
             prefix of the uninterrupted run's\n{context}"
        );

        let (exit, restore_log, stdout, stderr) = if self.detach {
            let mut restored = restore_detached(
                &scratch,
                &image,
                &format!("{}-restored", self.label),
                proc.stdout.clone(),
                proc.stderr.clone(),
            );
            if let Some(sig) = self.wake {
                restored.signal(sig);
            }
            let exit = restored.wait(self.timeout);
            (
                exit,
                String::new(),
                restored.output_bytes(),
                proc_stderr(&proc),
            )
        } else {
            let run = restore_attached(&scratch, &image, self.timeout);
            let exit = if run.code() == reference.exit.shell_code() {
                reference.exit
            } else {
                Exit::Code(run.code())
            };
            (
                exit,
                run.describe(),
                proc.output_bytes(),
                proc_stderr(&proc),
            )
        };
        let context = format!("{context}\n{restore_log}");
        assert_eq!(
            exit.shell_code(),
            reference.exit.shell_code(),
            "the restored {} ended with {exit} (as ferry reports it), the uninterrupted run with \
             {}\n--- restored output:\n{}\n{context}",
            self.label,
            reference.exit,
            String::from_utf8_lossy(&stdout)
        );
        assert_same(
            &format!("{}: stdout", self.label),
            &stdout,
            &reference.stdout,
            &context,
        );
        assert_same(
            &format!("{}: stderr", self.label),
            &stderr,
            &reference.stderr,
            &context,
        );
    }
}

fn proc_stderr(proc: &Proc) -> Vec<u8> {
    proc.stderr
        .as_deref()
        .map(|p| fs::read(p).unwrap_or_default())
        .unwrap_or_default()
}

/// A small C project in DIR for `make -j2` (`ferry_workloads::write_c_project`).
pub fn c_project(dir: &Path) {
    ferry_workloads::write_c_project(dir).expect("writing the C project");
}

/// A generated input file, removed on drop whatever happens.
pub struct BigFile {
    pub path: PathBuf,
    pub len: u64,
}

impl Drop for BigFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// MIB MiB made of one pseudo-random 1 MiB block, repeated.
pub fn repeated_block_file(path: PathBuf, mib: u64) -> BigFile {
    let big = BigFile {
        path,
        len: mib << 20,
    };
    ferry_workloads::write_repeated_block_file(&big.path, mib).expect("writing the input file");
    big
}
