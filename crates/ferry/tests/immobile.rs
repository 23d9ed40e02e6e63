//! Processes ferry must refuse to move: `ferry checkpoint` exits 3 with `not migratable:
//! REASON` on stderr, the reason names the cause, and the process is left running untouched
//! (not stopped, not traced) and still finishes exactly as it would have.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// Runs `ferry checkpoint` on PROC, which must be refused with a reason containing one of
/// CAUSES (lowercase), and checks the process is untouched. Returns ferry's run.
fn assert_refused(scratch: &Scratch, proc: &mut Proc, causes: &[&str]) -> FerryRun {
    let image = scratch.join("image");
    let pid = proc.raw_pid().to_string();
    let run = ferry(
        scratch,
        &[os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()],
    );
    let context = format!("{}{}", run.describe(), proc.diagnostics());
    assert_eq!(
        run.code(),
        3,
        "ferry checkpoint of a process that cannot move must exit 3\n{context}"
    );
    let Some(at) = run.stderr.find("not migratable:") else {
        panic!("stderr must contain \"not migratable: REASON\"\n{context}");
    };
    let reason = run.stderr[at..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        causes.iter().any(|c| reason.contains(c)),
        "the reason should mention {causes:?}: {reason:?}\n{context}"
    );
    for _ in 0..4 {
        let stat = proc_stat(proc.raw_pid())
            .unwrap_or_else(|| panic!("the refused process is gone\n{context}"));
        assert!(
            !matches!(stat.state, 'T' | 't' | 'Z' | 'X'),
            "the refused process is in state {} (it must be left running)\n{context}",
            stat.state
        );
        assert_eq!(
            proc_status(proc.raw_pid(), "TracerPid").as_deref(),
            Some("0"),
            "the refused process is still traced\n{context}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run
}

/// Waits for PROC to finish and requires exit 0 and stdout WANT.
fn assert_finishes(proc: &mut Proc, want: &[u8], run: &FerryRun) {
    let exit = proc.wait(TIMEOUT);
    assert_eq!(
        exit,
        Exit::Code(0),
        "after the refusal the process ended with {exit}\n{}{}",
        run.describe(),
        proc.diagnostics()
    );
    assert_same(
        &format!("{}: stdout", proc.label),
        &proc.output_bytes(),
        want,
        &run.describe(),
    );
}

fn python3() -> PathBuf {
    system_program("python3")
}

#[test]
fn pipe_fd() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("immobile-pipe");
    // stdin is a pipe whose write end the test holds; the counter never reads it.
    let sc = Scenario::new("pipe", c_workload("counter"), Marker::Text("\n3\n"))
        .args(&[Arg::Lit("30".into()), Arg::Lit("100".into())]);
    let reference = sc.reference(&scratch);
    let dir = scratch.subdir("run");
    let mut proc = sc.launch("run", &dir).stdin(Input::Pipe).spawn();
    sc.wait_marker(&mut proc);
    let run = assert_refused(&scratch, &mut proc, &["is a pipe shared with pid"]);
    assert_finishes(&mut proc, &reference.stdout, &run);
}

/// A thread under a seccomp filter of its own, or with credentials of its own: ferry
/// captures seccomp (refused) and credentials once per process.
#[test]
fn thread_unlike_its_main_thread() {
    if !needs_root() {
        return;
    }
    for (mode, cause) in [
        ("seccomp", "runs under a seccomp filter"),
        ("creds", "has other credentials than its main thread"),
    ] {
        let scratch = Scratch::new(&format!("immobile-thread-{mode}"));
        let dir = scratch.subdir("run");
        let mut proc = Launch::new(
            &format!("odd-thread-{mode}"),
            c_workload("odd_thread"),
            &dir,
        )
        .args([mode, "3"])
        .cwd(&dir)
        .spawn();
        wait_for_text(&mut proc, "ready\n");
        let run = assert_refused(&scratch, &mut proc, &[cause]);
        assert_finishes(&mut proc, b"ready\ndone\n", &run);
    }
}

const PY_TCP_SOCKET: &str = "\
import socket, time
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen()
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

/// A listening unix socket with a connection it has not accepted yet (the connecting socket is
/// held by the process too: no process holds the server's end of it yet).
const PY_PENDING_CONNECTION: &str = "\
import os, socket, time
name = '\\0ferry-pending-' + os.urandom(6).hex()
s = socket.socket(socket.AF_UNIX)
s.bind(name)
s.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect(name)
print('ready', flush=True)
time.sleep(3)
conn, _ = s.accept()
print('done', flush=True)
";

/// A datagram socket bound to a name, connected to nothing (a datagram server).
const PY_DATAGRAM_SERVER: &str = "\
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0ferry-dgram-' + os.urandom(6).hex())
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

/// A socket pair whose ends a process outside the tree holds too (an orphaned grandchild:
/// no longer a descendant).
const PY_SHARED_SOCKETPAIR: &str = "\
import os, socket, time
a, b = socket.socketpair()
child = os.fork()
if child == 0:
    if os.fork() == 0:
        time.sleep(4)
        os._exit(0)
    os._exit(0)
os.waitpid(child, 0)
print('ready', flush=True)
time.sleep(3)
a.sendall(b'x')
assert b.recv(1) == b'x'
print('done', flush=True)
";

/// Runs python3 PROGRAM (which prints "ready", then "done" seconds later), requires ferry to
/// refuse it with CAUSE, and the program to finish untouched.
fn refused_python(label: &str, program: &str, cause: &str) {
    let scratch = Scratch::new(&format!("immobile-{label}"));
    let dir = scratch.subdir("run");
    let mut proc = Launch::new(label, python3(), &dir)
        .args(["-c", program])
        .cwd(&dir)
        .spawn();
    wait_for_text(&mut proc, "ready\n");
    let run = assert_refused(&scratch, &mut proc, &[cause]);
    assert_finishes(&mut proc, b"ready\ndone\n", &run);
}

/// A datagram socket pair with a file descriptor in flight (`SCM_RIGHTS`): the queue cannot
/// be carried as bytes.
const PY_DGRAM_WITH_FD: &str = "\
import os, socket, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.send(b'first')
socket.send_fds(a, [b'with an fd'], [0])
print('ready', flush=True)
time.sleep(3)
assert b.recv(64) == b'first'
msg, fds, _, _ = socket.recv_fds(b, 64, 1)
assert msg == b'with an fd' and len(fds) == 1
print('done', flush=True)
";

/// A FIFO whose write end a process outside the tree holds (a grandchild whose parent ended:
/// it was reparented away).
const PY_SHARED_FIFO: &str = "\
import os, time
os.mkfifo('shared.fifo')
r = os.open('shared.fifo', os.O_RDONLY | os.O_NONBLOCK)
child = os.fork()
if child == 0:
    if os.fork() == 0:
        w = os.open('shared.fifo', os.O_WRONLY)
        time.sleep(4)
    os._exit(0)
os.waitpid(child, 0)
time.sleep(0.5)
print('ready', flush=True)
time.sleep(4)
os.unlink('shared.fifo')
print('done', flush=True)
";

/// An inotify instance with an event not yet read.
const PY_INOTIFY_UNREAD: &str = "\
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
assert fd >= 0 and libc.inotify_add_watch(fd, b'.', 0x100) == 1
open('made', 'w').close()
print('ready', flush=True)
time.sleep(3)
assert len(os.read(fd, 4096)) > 16
print('done', flush=True)
";

/// A /proc file of another process (its parent's status).
const PY_OTHERS_PROC_FILE: &str = "\
import os, time
f = open('/proc/%d/status' % os.getppid())
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

#[test]
fn channel_shared_or_holding_what_cannot_move() {
    if !needs_root() {
        return;
    }
    for (label, program, cause) in [
        (
            "py-dgram-fd",
            PY_DGRAM_WITH_FD,
            "file descriptors or credentials in flight",
        ),
        (
            "py-shared-fifo",
            PY_SHARED_FIFO,
            "is a fifo shared with pid",
        ),
        (
            "py-others-proc",
            PY_OTHERS_PROC_FILE,
            "is a /proc file of process",
        ),
        (
            "py-inotify-unread",
            PY_INOTIFY_UNREAD,
            "bytes of unread events",
        ),
    ] {
        refused_python(label, program, cause);
    }
}

/// Memory shared (MAP_SHARED, anonymous) between a process and its child, of which the child
/// unmapped half: restore could not make one object of both views.
const PY_SHARED_MEMORY_IN_PART: &str = "\
import ctypes, mmap, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
m = mmap.mmap(-1, 8192)
child = os.fork()
if child == 0:
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    assert libc.munmap(addr + 4096, 4096) == 0
    time.sleep(3)
    m[0] = 7
    os._exit(0)
time.sleep(0.3)
print('ready', flush=True)
os.waitpid(child, 0)
assert m[0] == 7
print('done', flush=True)
";

/// A child (of a process tree) holding a TCP listener: the whole tree stays.
const PY_CHILD_WITH_TCP: &str = "\
import os, socket, time
child = os.fork()
if child == 0:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    s.listen()
    time.sleep(3)
    os._exit(0)
time.sleep(0.3)
print('ready', flush=True)
_, status = os.waitpid(child, 0)
assert status == 0
print('done', flush=True)
";

/// Process trees: one member that cannot move keeps the whole tree where it is, running.
#[test]
fn tree_member_that_cannot_move() {
    if !needs_root() {
        return;
    }
    for (label, program, cause) in [
        (
            "py-shared-memory-in-part",
            PY_SHARED_MEMORY_IN_PART,
            "but mapped differently",
        ),
        (
            "py-child-tcp",
            PY_CHILD_WITH_TCP,
            "socket other than a unix socket pair",
        ),
    ] {
        refused_python(label, program, cause);
    }
}

#[test]
fn socket_fd() {
    if !needs_root() {
        return;
    }
    for (label, program, cause) in [
        (
            "py-tcp",
            PY_TCP_SOCKET,
            "socket other than a unix socket pair",
        ),
        (
            "py-shared-pair",
            PY_SHARED_SOCKETPAIR,
            "is a socket shared with pid",
        ),
        (
            "py-pending-connection",
            PY_PENDING_CONNECTION,
            "connection(s) not accepted yet",
        ),
        (
            "py-datagram-server",
            PY_DATAGRAM_SERVER,
            "bound to a name but not connected",
        ),
    ] {
        refused_python(label, program, cause);
    }
}

/// An epoll registration made with fd 3 whose file lives on at fd 5 while fd 3 now refers to
/// another file: restore could not name the registered file.
const PY_STALE_EPOLL: &str = "\
import os, select, time
r, w = os.pipe()
ep = select.epoll()
ep.register(r, select.EPOLLIN)
keep = os.dup(r)
os.dup2(w, r)
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

/// An epoll registration whose fd was closed while a dup keeps its file (and so the
/// registration) alive.
const PY_CLOSED_EPOLL: &str = "\
import os, select, time
r, w = os.pipe()
ep = select.epoll()
ep.register(r, select.EPOLLIN)
keep = os.dup(r)
os.close(r)
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

/// A pipe end opened read-write through /proc: neither a read nor a write end.
const PY_RDWR_PIPE: &str = "\
import os, time
r, w = os.pipe()
both = os.open('/proc/self/fd/%d' % r, os.O_RDWR)
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

/// One memfd opened twice (two open file descriptions): restore would make two files.
const PY_MEMFD_TWICE: &str = "\
import os, time
m = os.memfd_create('twice')
again = os.open('/proc/self/fd/%d' % m, os.O_RDWR)
print('ready', flush=True)
time.sleep(3)
print('done', flush=True)
";

#[test]
fn kernel_objects_restore_cannot_rebuild() {
    if !needs_root() {
        return;
    }
    for (label, script, cause) in [
        (
            "stale-epoll",
            PY_STALE_EPOLL,
            "which no longer refers to the registered file",
        ),
        (
            "closed-epoll",
            PY_CLOSED_EPOLL,
            "which no longer refers to the registered file",
        ),
        (
            "rdwr-pipe",
            PY_RDWR_PIPE,
            "is a pipe opened for reading and writing",
        ),
        (
            "memfd-twice",
            PY_MEMFD_TWICE,
            "two separate openings of one file without a name",
        ),
    ] {
        refused_python(label, script, cause);
    }
}

/// A process whose session has a controlling terminal (a pty the test holds), but no fd on
/// it: only the controlling terminal pins it.
#[test]
fn controlling_terminal() {
    if !needs_root() {
        return;
    }
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

    let scratch = Scratch::new("immobile-ctty");
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).expect("posix_openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let slave = PathBuf::from(ptsname_r(&master).expect("ptsname_r"));

    let sc = Scenario::new("ctty", c_workload("counter"), Marker::Text("\n3\n"))
        .args(&[Arg::Lit("30".into()), Arg::Lit("100".into())]);
    let reference = sc.reference(&scratch);
    let dir = scratch.subdir("run");
    let mut proc = sc.launch("run", &dir).controlling_tty(&slave).spawn();
    sc.wait_marker(&mut proc);
    let tty = proc_stat(proc.raw_pid()).map(|s| s.tty_nr).unwrap_or(0);
    assert_ne!(
        tty,
        0,
        "test setup: the workload did not get {} as its controlling terminal\n{}",
        slave.display(),
        proc.diagnostics()
    );
    let run = assert_refused(&scratch, &mut proc, &["terminal", "tty"]);
    assert_finishes(&mut proc, &reference.stdout, &run);
    drop(master);
}

#[test]
fn kernel_thread() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("kthread");
    // kthreadd (pid 2) and its children carry PF_KTHREAD.
    let kthread = all_pids()
        .into_iter()
        .find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(6)?.parse::<u64>().ok()
                })
                .is_some_and(|flags| flags & 0x0020_0000 != 0)
        })
        .expect("a kernel thread");
    let pid = kthread.to_string();
    let run = ferry(
        &scratch,
        &[
            os("checkpoint"),
            os(&pid),
            os("--dir"),
            scratch.join("img").as_os_str(),
        ],
    );
    assert_eq!(run.code(), 3, "{}", run.describe());
    assert!(
        run.stderr.contains("not migratable: it is a kernel thread"),
        "{}",
        run.describe()
    );
}

#[test]
fn zombie() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("zombie");
    let dir = scratch.subdir("run");
    let proc = Launch::new("zombie", system_program("true"), &dir).spawn();
    // Exited but not reaped (the test is its parent and has not waited yet).
    for _ in 0..400 {
        if proc.state() == Some('Z') {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(proc.state(), Some('Z'));
    let pid = proc.raw_pid().to_string();
    let run = ferry(
        &scratch,
        &[
            os("checkpoint"),
            os(&pid),
            os("--dir"),
            scratch.join("img").as_os_str(),
        ],
    );
    assert_eq!(run.code(), 3, "{}", run.describe());
    assert!(run.stderr.contains("zombie"), "{}", run.describe());
}

/// ferry run by an unprivileged user on root's process: refused, and the process unharmed.
#[test]
fn another_users_process_when_not_root() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("other-user");
    let dir = scratch.subdir("run");
    let mut proc = Launch::new("counter", c_workload("counter"), &dir)
        .args(["30", "50"])
        .spawn();
    wait_for_lines(&mut proc, 3);
    let pid = proc.raw_pid().to_string();
    // The image dir must be writable by nobody to reach the permission check.
    let img = scratch.subdir("nobody");
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let out = std::process::Command::new(system_program("setpriv"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(ferry_bin())
        .args(["checkpoint", &pid, "--dir"])
        .arg(img.join("image"))
        .output()
        .expect("running ferry as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("belongs to uid 0"),
        "{stderr}"
    );
    let exit = proc.wait(TIMEOUT);
    assert_eq!(exit.shell_code(), 0);
    assert!(proc.output().ends_with("done\n"), "{}", proc.output());
}

/// `ferry checkpoint PID` into SCRATCH/IMAGE, which must be refused (exit 3) with NEEDLE on
/// stderr.
fn refused_pid(scratch: &Scratch, pid: i32, image: &str, needle: &str) -> FerryRun {
    let image = scratch.join(image);
    let pid = pid.to_string();
    let run = ferry(
        scratch,
        &[os("checkpoint"), os(&pid), os("--dir"), image.as_os_str()],
    );
    assert_eq!(run.code(), 3, "{}", run.describe());
    assert!(run.stderr.contains(needle), "{}", run.describe());
    run
}

/// Descendant N of PROC (in `descendants` order), once it exists.
fn nth_descendant(proc: &Proc, n: usize) -> i32 {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(&p) = descendants(proc.raw_pid()).get(n) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has no descendant {n}\n{}",
            proc.label,
            proc.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process inside a PID namespace that is not the namespace's init cannot get its ids back
/// alone (the namespace moves whole, from its init): refused with its id there named, and
/// left running.
#[test]
fn process_inside_a_pid_namespace_it_does_not_lead() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("immobile-pidns");
    let dir = scratch.subdir("run");
    let mut outer = Launch::new("unshare", "unshare", &dir)
        .args(["--pid", "--fork", "/bin/sh", "-c", "sleep 60 & wait"])
        .spawn();
    let sleeper = nth_descendant(&outer, 1);
    let run = refused_pid(
        &scratch,
        sleeper,
        "image",
        "not migratable: it is pid 2 of a PID namespace; that namespace moves whole",
    );
    let stat = proc_stat(sleeper).expect("the refused process is gone");
    assert!(
        !matches!(stat.state, 'T' | 't' | 'Z' | 'X'),
        "{}",
        run.describe()
    );
    assert_eq!(
        proc_status(sleeper, "TracerPid").as_deref(),
        Some("0"),
        "{}",
        run.describe()
    );
    outer.kill_tree();

    // A tree of the host's namespace with a member in a namespace of its own: refused too
    // (its ids there would not come back).
    let mut shell = Launch::new("sh", "/bin/sh", &dir)
        .args(["-c", "unshare --pid --fork sleep 60; echo over"])
        .spawn();
    nth_descendant(&shell, 1);
    let run = refused_pid(
        &scratch,
        shell.raw_pid(),
        "image-tree",
        "it lives in another PID namespace than the root of its tree",
    );
    assert!(
        !matches!(
            proc_stat(shell.raw_pid()).map(|s| s.state),
            Some('T' | 't') | None
        ),
        "the refused tree must run on\n{}",
        run.describe()
    );
    shell.kill_tree();
}

/// The init of a PID namespace that a process outside its tree joined (`nsenter`, i.e.
/// `setns`): restoring the tree would lose that process, so the init is refused with the
/// joiner named, and left running.
#[test]
fn pid_namespace_joined_from_outside() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("immobile-pidns-joined");
    let dir = scratch.subdir("run");
    let mut outer = Launch::new("unshare", "unshare", &dir)
        .args(["--pid", "--fork", "sleep", "60"])
        .spawn();
    let init = nth_descendant(&outer, 0);
    let init_arg = init.to_string();
    let mut joiner = Launch::new("nsenter", "nsenter", &dir)
        .args(["--target", init_arg.as_str(), "--pid", "--", "sleep", "60"])
        .spawn();
    nth_descendant(&joiner, 0);
    let run = refused_pid(
        &scratch,
        init,
        "image",
        "without descending from it (it joined with setns)",
    );
    let stat = proc_stat(init).expect("the refused init is gone");
    assert!(
        !matches!(stat.state, 'T' | 't' | 'Z' | 'X'),
        "{}",
        run.describe()
    );
    joiner.kill_tree();
    outer.kill_tree();
}

/// SysV shared memory of the host's IPC namespace (a process not started by `ferry run`):
/// its id could be taken where it went, and processes that stay may attach it. Refused, and
/// the tree finishes as if untouched.
#[test]
fn sysv_shared_memory_outside_a_job() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("immobile-sysv");
    let dir = scratch.subdir("run");
    let mut proc = Launch::new("sysv-tree", python3(), &dir)
        .args([python_workload("sysv_tree.py")])
        .cwd(&dir)
        .spawn();
    wait_for_text(&mut proc, "ready\n");
    let run = assert_refused(&scratch, &mut proc, &["sysv shared memory"]);
    assert_finishes(&mut proc, SYSV_TREE_OUTPUT, &run);
}

/// A PID and IPC namespace of its own (as `ferry run` makes) holding a SysV semaphore set:
/// semaphores do not move yet. Refused, and left running.
#[test]
fn ipc_namespace_with_a_semaphore() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("immobile-sysv-sem");
    let dir = scratch.subdir("run");
    let program = "import ctypes, time\n\
                   libc = ctypes.CDLL(None, use_errno=True)\n\
                   assert libc.semget(0, 1, 0o600) >= 0\n\
                   print('ready', flush=True)\n\
                   time.sleep(60)\n";
    let mut outer = Launch::new("unshare", "unshare", &dir)
        .args([
            "--pid", "--fork", "unshare", "--ipc", "python3", "-c", program,
        ])
        .spawn();
    wait_for_text(&mut outer, "ready\n");
    let init = nth_descendant(&outer, 0);
    let run = refused_pid(
        &scratch,
        init,
        "image",
        "its IPC namespace holds 1 SysV semaphore set(s) and 0 message queue(s), which do not move yet",
    );
    let stat = proc_stat(init).expect("the refused init is gone");
    assert!(
        !matches!(stat.state, 'T' | 't' | 'Z' | 'X'),
        "{}",
        run.describe()
    );
    outer.kill_tree();
}
