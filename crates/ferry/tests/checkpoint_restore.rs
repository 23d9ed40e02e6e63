//! Checkpoint a workload mid-run, restore it, and compare with an uninterrupted run.
//!
//! Each test runs its workload once uninterrupted (the reference), then again: it waits for a
//! marker in the output that says the process is mid-run (usually inside a sleep of the kind
//! the workload exercises), runs `ferry checkpoint PID --dir IMAGE` (the process must be dead
//! and is reaped when ferry returns), restores the image (`ferry restore`, attached, or
//! `--detach` when the test has to signal the new pid) and requires the same exit status and
//! byte-identical stdout and stderr. The workloads are in `workloads/c` (see the header
//! comment of each for what it exercises and prints) and `crates/ferry-workloads`.

mod support;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use support::*;

fn lit(s: &str) -> Arg {
    Arg::Lit(s.to_string())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// --- counter: short sleeps, stdout offset --------------------------------------------------------

#[test]
fn counter() {
    if !needs_root() {
        return;
    }
    Scenario::new("counter", c_workload("counter"), Marker::Text("\n5\n")).run();
}

#[test]
fn counter_detached() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "counter-detached",
        c_workload("counter"),
        Marker::Text("\n5\n"),
    )
    .detach()
    .run();
}

// --- sleeper: nanosleep / clock_nanosleep restarts -----------------------------------------------

#[test]
fn sleeper_in_glibc_nanosleep() {
    if !needs_root() {
        return;
    }
    // After "nanosleep 2:" the process is inside the fourth 250 ms nanosleep.
    Scenario::new(
        "sleeper-nanosleep",
        c_workload("sleeper"),
        Marker::Text("nanosleep 2:"),
    )
    .settle(ms(50))
    .run();
}

#[test]
fn sleeper_in_raw_nanosleep() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "sleeper-raw-nanosleep",
        c_workload("sleeper"),
        Marker::Text("raw nanosleep 1:"),
    )
    .settle(ms(50))
    .run();
}

#[test]
fn sleeper_in_clock_nanosleep_absolute() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "sleeper-abs",
        c_workload("sleeper"),
        Marker::Text("clock_nanosleep abs: start"),
    )
    .settle(ms(300))
    .run();
}

#[test]
fn sleeper_in_clock_nanosleep_relative() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "sleeper-rel",
        c_workload("sleeper"),
        Marker::Text("clock_nanosleep rel: start"),
    )
    .settle(ms(300))
    .run();
}

// --- poller: poll / ppoll --------------------------------------------------------------------------

#[test]
fn poller_in_poll() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "poller-poll",
        c_workload("poller"),
        Marker::Text("poll 3: ret="),
    )
    .args(&[Arg::File("poll.dat")])
    .settle(ms(50))
    .run();
}

#[test]
fn poller_in_ppoll() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "poller-ppoll",
        c_workload("poller"),
        Marker::Text("ppoll: start"),
    )
    .args(&[Arg::File("poll.dat")])
    .settle(ms(300))
    .run();
}

// --- waiter: select / pselect / sigtimedwait -------------------------------------------------------

#[test]
fn waiter_in_select() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "waiter-select",
        c_workload("waiter"),
        Marker::Text("select 1: start"),
    )
    .settle(ms(300))
    .run();
}

#[test]
fn waiter_in_pselect() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "waiter-pselect",
        c_workload("waiter"),
        Marker::Text("pselect: start"),
    )
    .settle(ms(300))
    .run();
}

/// The kernel does not restart sigtimedwait after a stop: a ptrace freeze makes it return
/// EINTR (signal(7)). The output only matches the reference if ferry makes up for that (or
/// freezes without interrupting the wait); this test says whether it does.
#[test]
fn waiter_in_sigtimedwait() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "waiter-sigtimedwait",
        c_workload("waiter"),
        Marker::Text("sigtimedwait: start"),
    )
    .settle(ms(300))
    .run();
}

// --- sigsuspend: woken by a signal sent to the restored pid ---------------------------------------

#[test]
fn sigsuspend_woken_after_restore() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "sigsuspend",
        c_workload("sigsuspend"),
        Marker::Text("ready"),
    )
    .settle(ms(300))
    .wake(Signal::SIGUSR1)
    .run();
}

// --- kernel objects --------------------------------------------------------------------------------

/// An epoll loop over a timerfd, a semaphore eventfd and a signalfd, with a pipe holding 50 KiB
/// in flight (read through a non-blocking end and its dup), a plain eventfd holding a count and
/// a pipe whose writer is gone: the restored copy reads every byte and count as written.
#[test]
fn event_loop_objects() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "event-loop",
        c_workload("event_loop"),
        Marker::Text("ready\n"),
    )
    .settle(ms(100))
    .wake(Signal::SIGUSR1)
    .run();
}

/// Datagram and seqpacket socket pairs with 50 messages each in flight (empty ones among
/// them), a FIFO with 4000 bytes in flight, socket options, /proc files of the process itself
/// and an inotify instance whose first watch descriptor was given back
/// (`workloads/c/channels.c`): the restored copy reads every message with its boundaries, its
/// /proc files name its new pid, and its inotify events carry the old watch descriptors.
#[test]
fn channels_and_proc_files() {
    if !needs_root() {
        return;
    }
    Scenario::new("channels", c_workload("channels"), Marker::Text("ready\n"))
        .settle(ms(100))
        .wake(Signal::SIGUSR1)
        .run();
}

// --- process trees ---------------------------------------------------------------------------------

/// A process tree (`workloads/c/tree.c`): a session, a process group with a grandchild, two
/// zombies (an exit code, a signal), a child with exit signal SIGUSR2, a pipe with 500
/// records in flight between a grandchild and the root, a log file whose offset the root and
/// the grandchild share. The restored tree checks its ids, statuses, records and log.
#[test]
fn process_tree() {
    if !needs_root() {
        return;
    }
    Scenario::new("process-tree", c_workload("tree"), Marker::Text("ready\n"))
        .settle(ms(50))
        .wake(Signal::SIGUSR1)
        .detach()
        .run();
}

/// A python3 process and its child sharing 1 MiB of anonymous memory (`mmap(-1, …)` before
/// `fork`): they talk only through it, so restore must make one object of it again.
const PY_SHARED_MEMORY: &str = "\
import mmap, os, time
m = mmap.mmap(-1, 1 << 20)
m[:5] = b'hello'
child = os.fork()
if child == 0:
    while m[100] != 1:
        time.sleep(0.005)
    m[200:205] = b'child'
    m[101] = 1
    os._exit(0)
print('ready', flush=True)
time.sleep(0.5)
m[100] = 1
while m[101] != 1:
    time.sleep(0.005)
assert m[:5] == b'hello' and m[200:205] == b'child'
_, status = os.waitpid(child, 0)
print('done', status, flush=True)
";

/// Unmodified python3 with a `multiprocessing.Pool` of 2 workers (`workloads/python/pool.py`):
/// pipes between the three processes, the pool's threads, and its locks, POSIX semaphores
/// whose unlinked files all three map.
#[test]
fn python3_multiprocessing_pool() {
    if !needs_root() {
        return;
    }
    Scenario::new("py-pool", system_program("python3"), Marker::Text("\n8 "))
        .args(&[lit(&python_workload("pool.py").to_string_lossy())])
        .run();
}

/// Files without a name, mapped: a memfd and a deleted file, each mapped shared (python's
/// mmap keeps a dup of the fd: the fd and the mappings must stay one file), and a private
/// mapping of the memfd with a page changed.
const PY_MAPPED_UNNAMED: &str = "\
import mmap, os, time
fd = os.memfd_create('ferry-test')
os.write(fd, b'memfd bytes'.ljust(8192, b'.'))
shared = mmap.mmap(fd, 8192)
private = mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE)
private[:7] = b'private'
os.close(fd)
with open('scratch.bin', 'wb+') as f:
    f.write(b'deleted file'.ljust(4096, b'-'))
    f.flush()
    deleted = mmap.mmap(f.fileno(), 4096)
os.unlink('scratch.bin')
shared[8000:8005] = b'later'
print('ready', flush=True)
time.sleep(0.5)
assert shared[:11] == b'memfd bytes' and shared[8000:8005] == b'later'
assert private[:11] == b'privateytes' and shared[:7] == b'memfd b'
assert deleted[:12] == b'deleted file' and deleted[4095:] == b'-'
shared[0:5] = b'MEMFD'
assert shared[:5] == b'MEMFD' and private[:7] == b'private'
print('done', flush=True)
";

#[test]
fn mapped_memfd_and_deleted_file() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "py-mapped-unnamed",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit("-c"), lit(PY_MAPPED_UNNAMED)])
    .settle(ms(50))
    .run();
}

/// A FIFO a process and its child share (`workloads/python/fifo_tree.py`): the parent reads,
/// the child writes, with bytes in flight at the checkpoint and more written after the
/// restore. Each reopens it by its path; the bytes come back once.
#[test]
fn fifo_shared_by_a_process_and_its_child() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "py-fifo-tree",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit(&python_workload("fifo_tree.py").to_string_lossy())])
    .run();
}

/// A python3 server and its child, its client (`workloads/python/unix_server_tree.py`):
/// listening sockets on a path and on an abstract name, an accepted connection between them
/// with bytes in flight. Restored, the listeners are bound to their names again (the path
/// taken over from the original's socket file) and take new connections; the connection goes
/// on as a pair.
#[test]
fn python3_unix_server_and_its_client() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "py-unix-server",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit(
        &python_workload("unix_server_tree.py").to_string_lossy()
    )])
    .run();
}

/// A python3 process and its child talking over two socket pairs, one end each: a stream pair
/// with bytes in flight towards the child, a datagram pair with five datagrams in flight
/// towards the parent. Restore must make each pair whole again across the two processes.
const PY_SOCKET_PAIRS_ACROSS: &str = "\
import os, socket, time
a, b = socket.socketpair()
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
child = os.fork()
if child == 0:
    a.close(); d1.close()
    for i in range(5):
        d2.send(b'datagram %d' % i)
    time.sleep(0.6)
    assert b.recv(5) == b'hello'
    b.sendall(b'ok')
    os._exit(0)
b.close(); d2.close()
a.sendall(b'hello')
time.sleep(0.2)
print('ready', flush=True)
time.sleep(0.3)
for i in range(5):
    assert d1.recv(64) == b'datagram %d' % i
assert a.recv(2) == b'ok'
_, status = os.waitpid(child, 0)
print('done', status, flush=True)
";

#[test]
fn python3_socket_pairs_between_parent_and_child() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "py-pairs-across",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit("-c"), lit(PY_SOCKET_PAIRS_ACROSS)])
    .settle(ms(20))
    .run();
}

#[test]
fn python3_parent_and_child_sharing_memory() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "py-shared-memory",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit("-c"), lit(PY_SHARED_MEMORY)])
    .settle(ms(50))
    .run();
}

// --- threads ---------------------------------------------------------------------------------------

/// A thread pool fed by an epoll loop: 11 threads caught in a condition variable wait, a
/// `sigwaitinfo`, a `clock_nanosleep`, `epoll_wait` or computing; the restored copy checks
/// every result, the workers' names, the alternate stack and `pthread_kill` on every worker.
#[test]
fn thread_pool() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "thread-pool",
        c_workload("thread_pool"),
        Marker::Text("ready\n"),
    )
    .settle(ms(100))
    .wake(Signal::SIGUSR1)
    .run();
}

/// The same with 13 workers: 16 threads.
#[test]
fn thread_pool_16_threads() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "thread-pool-16",
        c_workload("thread_pool"),
        Marker::Text("ready\n"),
    )
    .args(&[lit("13")])
    .settle(ms(100))
    .wake(Signal::SIGUSR1)
    .run();
}

/// Unmodified python3 with worker threads on a `queue.Queue`.
#[test]
fn python3_threads() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "python-threads",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit(&python_workload("threads.py").to_string_lossy())])
    .settle(ms(100))
    .wake(Signal::SIGUSR1)
    .run();
}

/// Unmodified python3 running an asyncio event loop: its self-pipe is a unix socket pair
/// (SIGUSR1 arrives through it), and a socket pair of its own holds 50 records in flight.
#[test]
fn python3_asyncio() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "python-asyncio",
        system_program("python3"),
        Marker::Text("ready\n"),
    )
    .args(&[lit(&python_workload("asyncio_loop.py").to_string_lossy())])
    .settle(ms(100))
    .wake(Signal::SIGUSR1)
    .run();
}

/// Rust std threads: the main thread in `join` (a futex wait on the other thread's id), the
/// other in a sleep.
#[test]
fn rust_threads() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "wl-threads",
        rust_workload("wl-threads"),
        Marker::Text("ready\n"),
    )
    .args(&[lit("2")])
    .settle(ms(300))
    .run();
}

// --- memory ----------------------------------------------------------------------------------------

#[test]
fn heap_300_mib() {
    if !needs_root() {
        return;
    }
    Scenario::new("heap", c_workload("heap"), Marker::Text("ready"))
        .args(&[lit("300")])
        .settle(ms(300))
        .run();
}

#[test]
fn shared_file_mapping() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "shared-map",
        c_workload("shared_map"),
        Marker::Text("step 5\n"),
    )
    .args(&[Arg::File("shared.map")])
    .run();
}

#[test]
fn private_file_mapping() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "private-map",
        c_workload("private_map"),
        Marker::Text("step 5\n"),
    )
    .args(&[Arg::File("private.map")])
    .run();
}

// --- registers, signals, files, credentials --------------------------------------------------------

#[test]
fn fpu_sse_avx_avx512_registers() {
    if !needs_root() {
        return;
    }
    // "ready" comes just before the asm block; give it time to load the registers and sleep.
    Scenario::new("fpu-avx", c_workload("fpu_avx"), Marker::Text("ready"))
        .settle(ms(500))
        .run();
}

#[test]
fn signal_state() {
    if !needs_root() {
        return;
    }
    Scenario::new("signals", c_workload("signals"), Marker::Text("sleep 1\n")).run();
}

#[test]
fn files_cwd_umask() {
    if !needs_root() {
        return;
    }
    Scenario::new("files", c_workload("files"), Marker::Text("sleep 1\n"))
        .args(&[Arg::Dir])
        .run();
}

#[test]
fn dropped_credentials() {
    if !needs_root() {
        return;
    }
    Scenario::new("creds", c_workload("creds"), Marker::Text("sleep 1\n")).run();
}

// --- Rust workload: frozen in user space -----------------------------------------------------------

#[test]
fn rust_compute() {
    if !needs_root() {
        return;
    }
    Scenario::new(
        "wl-compute",
        rust_workload("wl-compute"),
        Marker::Text("step 3:"),
    )
    .run();
}

// --- the same process, ten times -------------------------------------------------------------------

/// Checkpoint (kill) and restore (--detach) the same counter ten times in a row, each time
/// checkpointing the newest pid after it has made progress; it must still end exactly like an
/// uninterrupted run.
#[test]
fn counter_ten_times_in_a_row() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("counter-x10");
    let sc = Scenario::new("counter-x10", c_workload("counter"), Marker::Lines(4))
        .args(&[lit("100"), lit("50")]);
    let reference = sc.reference(&scratch);

    let dir = scratch.subdir("run");
    let mut current = sc.launch("run", &dir).spawn();
    let (stdout, stderr) = (current.stdout.clone(), current.stderr.clone());
    sc.wait_marker(&mut current);
    for round in 0..10 {
        let image = scratch.join(&format!("image-{round}"));
        let ckpt = checkpoint_and_kill(&scratch, &mut current, &image);
        let out = current.output();
        assert!(
            !out.contains("done"),
            "round {round}: the counter finished before it was checkpointed; it is too short \
             for this test\n{}",
            ckpt.describe()
        );
        let lines = line_count(&out);
        let mut restored = restore_detached(
            &scratch,
            &image,
            &format!("counter-x10-restored-{round}"),
            stdout.clone(),
            stderr.clone(),
        );
        wait_until(
            &mut restored,
            &format!("round {round}: 3 more lines after restore"),
            TIMEOUT,
            |o| line_count(o) >= lines + 3,
        );
        current = restored;
    }
    let exit = current.wait(TIMEOUT);
    assert_eq!(
        exit.shell_code(),
        reference.exit.shell_code(),
        "after 10 restores the counter ended with {exit}\n{}",
        current.diagnostics()
    );
    assert_same(
        "counter after 10 checkpoints",
        &current.output_bytes(),
        &reference.stdout,
        &current.diagnostics(),
    );
}

// --- --leave-running -------------------------------------------------------------------------------

/// Checks right after `ferry checkpoint --leave-running` that the process runs on: alive, not
/// stopped, not traced; and again a little later.
fn assert_left_running(proc: &Proc, context: &str) {
    for _ in 0..3 {
        let pid = proc.raw_pid();
        let stat = proc_stat(pid)
            .unwrap_or_else(|| panic!("--leave-running: the process is gone\n{context}"));
        assert!(
            !matches!(stat.state, 'T' | 't' | 'Z' | 'X'),
            "--leave-running: the process is in state {} after the checkpoint\n{context}{}",
            stat.state,
            proc.diagnostics()
        );
        assert_eq!(
            proc_status(pid, "TracerPid").as_deref(),
            Some("0"),
            "--leave-running: the process is still traced after the checkpoint\n{context}"
        );
        std::thread::sleep(ms(50));
    }
}

fn image_is_written(image: &Path) -> bool {
    fs::read_dir(image)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// A counter checkpointed with --leave-running mid-run keeps running and ends exactly like an
/// uninterrupted run.
///
/// The image is not restored here: after the checkpoint the original goes on appending to
/// the same output file, so that file is no longer the one the image recorded (its size and
/// mtime changed) and ferry may rightly refuse it. `leave_running_then_restore_the_image`
/// restores a --leave-running image after putting the file back.
/// A multi-threaded process checkpointed three times with `--leave-running`: every thread is
/// put back exactly as it was (the thread pool checks its results, names, alternate stack and
/// `pthread_kill` on every worker, and finishes as an uninterrupted run does).
#[test]
fn leave_running_thread_pool_finishes_unharmed() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("leave-running-threads");
    let sc = Scenario::new(
        "leave-running-threads",
        c_workload("thread_pool"),
        Marker::Text("ready\n"),
    )
    .wake(Signal::SIGUSR1);
    let (reference, mut proc) = sc.reference_and_run(&scratch);
    for i in 0..3 {
        let image = scratch.join(&format!("image-{i}"));
        let run = checkpoint(&scratch, &proc, &image, &["--leave-running"]);
        assert_left_running(&proc, &run.describe());
        std::thread::sleep(ms(50));
    }
    proc.signal(Signal::SIGUSR1);
    let exit = proc.wait(TIMEOUT);
    assert_eq!(
        exit,
        reference.exit,
        "the process left running ended with {exit}\n{}",
        proc.diagnostics()
    );
    assert_same(
        "output of the threads left running",
        &proc.output_bytes(),
        &reference.stdout,
        "",
    );
}

/// A process tree checkpointed with `--leave-running` runs on unharmed (every member put back,
/// its zombies still waiting); restoring the image while it runs is refused with the pid in
/// use named (a tree needs its own pids), and creates nothing.
#[test]
fn leave_running_tree_then_restore_is_refused_while_it_runs() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("leave-running-tree");
    let sc = Scenario::new(
        "leave-running-tree",
        c_workload("tree"),
        Marker::Text("ready\n"),
    )
    .wake(Signal::SIGUSR1);
    let (reference, mut proc) = sc.reference_and_run(&scratch);
    let image = scratch.join("image");
    let members = descendants(proc.raw_pid());
    let run = checkpoint(&scratch, &proc, &image, &["--leave-running"]);
    assert_left_running(&proc, &run.describe());
    let restore = ferry(&scratch, &[os("restore"), os("--dir"), image.as_os_str()]);
    let context = format!("{}{}", run.describe(), restore.describe());
    assert_ne!(
        restore.code(),
        0,
        "restoring a running tree must fail\n{context}"
    );
    assert!(
        restore.stderr.contains("is in use on this host"),
        "the refusal should name the pid in use\n{context}"
    );
    assert_eq!(
        descendants(proc.raw_pid()),
        members,
        "the tree changed\n{context}"
    );
    proc.signal(Signal::SIGUSR1);
    let exit = proc.wait(TIMEOUT);
    assert_eq!(
        exit,
        reference.exit,
        "the tree left running ended with {exit}\n{context}{}",
        proc.diagnostics()
    );
    assert_same(
        "output of the tree left running",
        &proc.output_bytes(),
        &reference.stdout,
        &context,
    );
}

/// The pid a process has in its own PID namespace (the last of its `NSpid` ids).
fn own_pid(pid: i32) -> i32 {
    proc_status(pid, "NSpid")
        .and_then(|ids| ids.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no NSpid for pid {pid}"))
}

/// The same tree, started as the init of a PID namespace of its own (`unshare --pid --fork`,
/// as `ferry run` starts jobs), checkpointed while it keeps running: its image restores at
/// once, in a new namespace, with every pid as its namespace numbered it (1 for the root),
/// although the original still holds those ids in its own; the copy then finishes as an
/// uninterrupted run does.
#[test]
fn tree_in_its_own_pid_namespace_restores_while_the_original_runs() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("pidns-tree");
    let sc = Scenario::new("pidns-tree", c_workload("tree"), Marker::Text("ready\n"))
        .wake(Signal::SIGUSR1);
    let reference = sc.reference(&scratch);
    let dir = scratch.subdir("run");
    // stderr apart: unshare reports there when its child is killed.
    let mut outer = Launch::new("unshare", "unshare", &dir)
        .args([os("--pid"), os("--fork"), c_workload("tree").as_os_str()])
        .cwd(&dir)
        .spawn();
    wait_for_text(&mut outer, "ready\n");
    let init = match descendants(outer.raw_pid()).first() {
        Some(&p) => p,
        None => panic!("unshare has no child\n{}", outer.diagnostics()),
    };
    assert_eq!(
        own_pid(init),
        1,
        "the workload should be its namespace's init"
    );
    let inner_ids = |root: i32| {
        let mut ids: Vec<i32> = std::iter::once(root)
            .chain(descendants(root))
            .map(own_pid)
            .collect();
        ids.sort_unstable();
        ids
    };
    let original = inner_ids(init);
    let image = scratch.join("image");
    let run = ferry(
        &scratch,
        &[
            os("checkpoint"),
            os(&init.to_string()),
            os("--dir"),
            image.as_os_str(),
            os("--leave-running"),
        ],
    );
    assert_eq!(run.code(), 0, "checkpoint failed\n{}", run.describe());
    let inspect = ferry(&scratch, &[os("inspect"), image.as_os_str(), os("--json")]);
    let summary: serde_json::Value =
        serde_json::from_str(&inspect.stdout).expect("ferry inspect --json prints JSON");
    assert_eq!(
        (
            &summary["process"]["pid"],
            &summary["process"]["pid_namespace"]["host_pid"]
        ),
        (&serde_json::json!(1), &serde_json::json!(init)),
        "the image holds the ids of the namespace: {summary}"
    );
    let mut restored = restore_detached(
        &scratch,
        &image,
        "pidns-tree-restored",
        Some(outer.stdout.clone().expect("stdout file")),
        None,
    );
    let context = run.describe();
    assert_eq!(
        inner_ids(init),
        original,
        "the original tree changed\n{context}"
    );
    assert_ne!(restored.raw_pid(), init);
    assert_eq!(
        inner_ids(restored.raw_pid()),
        original,
        "the copy should have every pid its namespace gave the original\n{context}"
    );
    // The original goes (the whole namespace with its init); the copy finishes.
    outer.kill_tree();
    restored.signal(Signal::SIGUSR1);
    let exit = restored.wait(TIMEOUT);
    assert_eq!(
        exit,
        reference.exit,
        "the restored tree ended with {exit}\n{context}{}",
        restored.diagnostics()
    );
    assert_same(
        "output of the tree restored in a new PID namespace",
        &restored.output_bytes(),
        &reference.stdout,
        &context,
    );
}

/// A tree in a PID and an IPC namespace of its own (`unshare --pid --fork` then `unshare
/// --ipc` in the namespace's init: as `ferry run` starts jobs) sharing SysV memory (`workloads/python/sysv_tree.py`): the image carries
/// the namespace's two segments once each (one marked for removal, both with their data), and
/// the tree restored in new namespaces attaches them again by their ids and finishes as an
/// uninterrupted run does.
#[test]
fn tree_sharing_sysv_memory_in_its_own_ipc_namespace() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("sysv-tree");
    let dir = scratch.subdir("run");
    let python3 = system_program("python3");
    let program = python_workload("sysv_tree.py");
    let mut outer = Launch::new("unshare", "unshare", &dir)
        .args([
            os("--pid"),
            os("--fork"),
            os("unshare"),
            os("--ipc"),
            python3.as_os_str(),
            program.as_os_str(),
        ])
        .cwd(&dir)
        .spawn();
    wait_for_text(&mut outer, "ready\n");
    let init = match descendants(outer.raw_pid()).first() {
        Some(&p) => p,
        None => panic!("unshare has no child\n{}", outer.diagnostics()),
    };
    let image = scratch.join("image");
    let run = ferry(
        &scratch,
        &[
            os("checkpoint"),
            os(&init.to_string()),
            os("--dir"),
            image.as_os_str(),
        ],
    );
    assert_eq!(run.code(), 0, "checkpoint failed\n{}", run.describe());
    let inspect = ferry(&scratch, &[os("inspect"), image.as_os_str(), os("--json")]);
    let summary: serde_json::Value =
        serde_json::from_str(&inspect.stdout).expect("ferry inspect --json prints JSON");
    let segments = summary["process"]["ipc_namespace"]["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("the image has no IPC namespace: {summary}"));
    let mut seen: Vec<(bool, u64, bool)> = segments
        .iter()
        .map(|s| {
            (
                s["removed"].as_bool().unwrap_or_default(),
                s["size"].as_u64().unwrap_or_default(),
                s["carried"].as_u64().unwrap_or_default() > 0,
            )
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        vec![(false, 1 << 16, true), (true, (1 << 20) + 100, true)],
        "the keyed segment and the removed one, with data: {summary}"
    );
    let mut restored = restore_detached(
        &scratch,
        &image,
        "sysv-tree-restored",
        Some(outer.stdout.clone().expect("stdout file")),
        None,
    );
    let exit = restored.wait(TIMEOUT);
    assert_eq!(
        exit,
        Exit::Code(0),
        "the restored tree ended with {exit}\n{}{}",
        run.describe(),
        restored.diagnostics()
    );
    assert_same(
        "output of the SysV tree restored in new namespaces",
        &restored.output_bytes(),
        SYSV_TREE_OUTPUT,
        &run.describe(),
    );
}

#[test]
fn leave_running_counter_finishes_unharmed() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("leave-running");
    let sc = Scenario::new(
        "leave-running",
        c_workload("counter"),
        Marker::Text("\n5\n"),
    );
    let (reference, mut proc) = sc.reference_and_run(&scratch);
    let image = scratch.join("image");
    let run = checkpoint(&scratch, &proc, &image, &["--leave-running"]);
    assert_left_running(&proc, &run.describe());
    assert!(
        image_is_written(&image),
        "--leave-running wrote no image\n{}",
        run.describe()
    );
    let exit = proc.wait(TIMEOUT);
    assert_eq!(
        exit,
        reference.exit,
        "the process left running ended with {exit}\n{}{}",
        run.describe(),
        proc.diagnostics()
    );
    assert_same(
        "output of the process left running",
        &proc.output_bytes(),
        &reference.stdout,
        &run.describe(),
    );
}

/// Truncates and rewrites PATH with CONTENT and sets its mtime back: same inode, same size,
/// same mtime as when it was saved.
fn rewind_file(path: &Path, content: &[u8], mtime: SystemTime) {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("reopening {}: {e}", path.display()));
    f.write_all(content)
        .unwrap_or_else(|e| panic!("rewriting {}: {e}", path.display()));
    f.set_modified(mtime)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// `--leave-running` on a process parked in sigsuspend: the original, woken with SIGUSR1,
/// finishes like the reference; then the output files are put back exactly as they were at
/// checkpoint time (the process wrote nothing while parked, so the state right after ferry
/// returned is the state at the checkpoint) and the image, restored and woken the same way,
/// must finish like the reference too.
#[test]
fn leave_running_then_restore_the_image() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("leave-running-restore");
    let sc = Scenario::new(
        "leave-running-restore",
        c_workload("sigsuspend"),
        Marker::Text("ready"),
    )
    .wake(Signal::SIGUSR1);
    let (reference, mut proc) = sc.reference_and_run(&scratch);
    let image = scratch.join("image");
    std::thread::sleep(ms(300));
    let run = checkpoint(&scratch, &proc, &image, &["--leave-running"]);
    assert_left_running(&proc, &run.describe());

    let stdout = proc.stdout.clone().expect("stdout path");
    let stderr = proc.stderr.clone().expect("stderr path");
    let saved: Vec<(Vec<u8>, SystemTime)> = [&stdout, &stderr]
        .iter()
        .map(|p| {
            let meta = fs::metadata(p).expect("stat of an output file");
            (
                fs::read(p).expect("reading an output file"),
                meta.modified().expect("mtime"),
            )
        })
        .collect();

    proc.signal(Signal::SIGUSR1);
    let exit = proc.wait(TIMEOUT);
    assert_eq!(
        exit,
        reference.exit,
        "{}{}",
        run.describe(),
        proc.diagnostics()
    );
    assert_same(
        "output of the process left running",
        &proc.output_bytes(),
        &reference.stdout,
        &run.describe(),
    );

    rewind_file(&stdout, &saved[0].0, saved[0].1);
    rewind_file(&stderr, &saved[1].0, saved[1].1);
    let mut restored = restore_detached(
        &scratch,
        &image,
        "leave-running-restored",
        Some(stdout.clone()),
        Some(stderr.clone()),
    );
    restored.signal(Signal::SIGUSR1);
    let exit = restored.wait(TIMEOUT);
    assert_eq!(
        exit,
        reference.exit,
        "the image of a process left running, restored, ended with {exit}\n{}",
        restored.diagnostics()
    );
    assert_same(
        "output of the restored image",
        &restored.output_bytes(),
        &reference.stdout,
        &restored.diagnostics(),
    );
}

// --- what `ferry restore` (attached) reports -------------------------------------------------------

const PY_EXIT_7: &str = "\
import sys, time
print('ready', flush=True)
time.sleep(1.5)
print('bye', flush=True)
sys.exit(7)
";

/// Attached `ferry restore` exits with the restored process's exit code.
#[test]
fn restore_passes_the_exit_code_through() {
    if !needs_root() {
        return;
    }
    Scenario::new("exit-7", system_program("python3"), Marker::Text("ready\n"))
        .args(&[lit("-c"), lit(PY_EXIT_7)])
        .settle(ms(200))
        .run();
}

/// Attached `ferry restore` exits with 128 + N when the restored process is killed by signal N.
#[test]
fn restore_reports_death_by_signal() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("killed");
    let dir = scratch.subdir("run");
    let mut proc = Launch::new("sigsuspend", c_workload("sigsuspend"), &dir)
        .cwd(&dir)
        .spawn();
    wait_for_text(&mut proc, "ready\n");
    std::thread::sleep(ms(200));
    let image = scratch.join("image");
    checkpoint_and_kill(&scratch, &mut proc, &image);

    let (ferry_proc, args) =
        ferry_spawn(&scratch, &[os("restore"), os("--dir"), image.as_os_str()]);
    // The restored process: a descendant of ferry running the sigsuspend binary.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let restored = loop {
        let found = descendants(ferry_proc.raw_pid()).into_iter().find(|&p| {
            fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim_end() == "sigsuspend")
                && proc_stat(p).is_some_and(|s| s.state != 't' && s.state != 'T')
                && proc_status(p, "TracerPid").as_deref() == Some("0")
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restored sigsuspend process under ferry (pid {})\n{}",
            ferry_proc.raw_pid(),
            ferry_proc.diagnostics()
        );
        std::thread::sleep(ms(5));
    };
    // Let it get back into sigsuspend, then kill it with SIGTERM (default action).
    std::thread::sleep(ms(200));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(restored), Signal::SIGTERM)
        .expect("kill SIGTERM");
    let run = ferry_finish(ferry_proc, args, TIMEOUT);
    assert_eq!(
        run.code(),
        128 + Signal::SIGTERM as i32,
        "ferry restore must exit 128+15 when the process dies of SIGTERM\n{}",
        run.describe()
    );
    assert_eq!(
        proc.output(),
        "sigsuspend start\nready\n",
        "the restored process wrote something before dying\n{}",
        run.describe()
    );
}
