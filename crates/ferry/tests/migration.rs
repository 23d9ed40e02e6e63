//! Live migration between test hosts (`scripts/testnet.sh`: network namespaces, real daemons,
//! real sockets): every algorithm on the workloads of the checkpoint tests, each compared byte
//! for byte with an uninterrupted run; chains n1 -> n2 -> n3 -> n1; a destination that is down
//! or refuses; a peer without the cluster secret; the old host dying after the move; a
//! page-store node.
//!
//! One cluster at a time (the tests of this file take turns); each test brings its own up.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::cluster::{ALGORITHMS, Cluster, migrate_scenario};
use support::*;

fn lit(s: &str) -> Arg {
    Arg::Lit(s.to_string())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// SCENARIO on n1, moved to n2 mid-run with each algorithm in turn.
fn with_every_algorithm(scenario: Scenario) {
    let scenario = scenario.stderr_to_stdout();
    let scratch = Scratch::new(scenario.label);
    let reference = scenario.reference(&scratch);
    let cluster = Cluster::up(2, &[]);
    for algorithm in ALGORITHMS {
        migrate_scenario(
            &cluster,
            &scratch,
            &scenario,
            &reference,
            algorithm,
            &["n2"],
            &[],
        );
    }
}

// --- the checkpoint issue's workloads, with every algorithm ------------------------------------

#[test]
fn counter_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(Scenario::new(
        "mig-counter",
        c_workload("counter"),
        Marker::Text("\n5\n"),
    ));
}

#[test]
fn nanosleep_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-sleeper",
            c_workload("sleeper"),
            Marker::Text("nanosleep 2:"),
        )
        .settle(ms(50)),
    );
}

#[test]
fn poll_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-poller",
            c_workload("poller"),
            Marker::Text("poll 3: ret="),
        )
        .args(&[Arg::File("poll.dat")])
        .settle(ms(50)),
    );
}

#[test]
fn sigsuspend_woken_after_migration_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-sigsuspend",
            c_workload("sigsuspend"),
            Marker::Text("ready"),
        )
        .settle(ms(300))
        .wake(Signal::SIGUSR1),
    );
}

/// The event loop of `workloads/c/event_loop.c` (pipes with data in flight, eventfds, a
/// timerfd, a signalfd, epoll), moved mid-run with each algorithm.
#[test]
fn event_loop_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-event-loop",
            c_workload("event_loop"),
            Marker::Text("ready\n"),
        )
        .settle(ms(100))
        .wake(Signal::SIGUSR1),
    );
}

/// Datagram and seqpacket socket pairs, a FIFO with data in flight, /proc files and inotify
/// watches (`workloads/c/channels.c`), moved mid-run with each algorithm.
#[test]
fn channels_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-channels",
            c_workload("channels"),
            Marker::Text("ready\n"),
        )
        .settle(ms(100))
        .wake(Signal::SIGUSR1),
    );
}

/// A thread pool fed by an epoll loop (`workloads/c/thread_pool.c`: 8 workers on a mutex and
/// condition variable, a thread in `sigwaitinfo` with its own alternate stack, a sleeper in
/// `clock_nanosleep`; 11 threads), moved mid-run with each algorithm. The workload checks
/// every result, each worker's name, the alternate stack and `pthread_kill` on every worker
/// (glibc's cached thread ids) itself.
#[test]
fn thread_pool_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-thread-pool",
            c_workload("thread_pool"),
            Marker::Text("ready\n"),
        )
        .settle(ms(100))
        .wake(Signal::SIGUSR1),
    );
}

/// The ids a process and its threads have in its own PID namespace (the last `NSpid` of
/// each), the process's first.
fn own_ids(pid: i32) -> Vec<i32> {
    let last = |status: String| -> Option<i32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    tids.into_iter()
        .filter_map(|t| last(fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).ok()?))
        .collect()
}

/// A job of `ferry run` is the init of a PID namespace of its own: moved n1 -> n2 -> n1 ...
/// with each algorithm in turn, it is pid 1 with the same 16 thread ids after every hop
/// (though the frozen original still holds its ids on the host each time), and ends as an
/// uninterrupted run does (`workloads/c/thread_pool.c 13`, which checks `pthread_kill` on
/// every worker itself).
#[test]
fn ferry_run_job_keeps_its_pid_and_thread_ids_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("mig-pidns");
    let sc = Scenario::new(
        "mig-pidns",
        c_workload("thread_pool"),
        Marker::Text("ready\n"),
    )
    .args(&[lit("13")])
    .wake(Signal::SIGUSR1)
    .stderr_to_stdout();
    let reference = sc.reference(&scratch);
    let cluster = Cluster::up(2, &[]);
    let dir = scratch.subdir("run");
    let out = dir.join("out");
    let bin = ferry_bin().to_string_lossy().into_owned();
    let program = c_workload("thread_pool").to_string_lossy().into_owned();
    let out_arg = out.to_string_lossy().into_owned();
    let started = cluster.testnet(&[
        "exec", "n1", "--", &bin, "run", "--on", "n1", "--json", "--stdout", &out_arg, "--stderr",
        &out_arg, "--", &program, "13",
    ]);
    assert!(
        started.status.success(),
        "ferry run failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&started.stdout).expect("JSON job");
    let mut pid = job["pid"].as_i64().expect("the job's pid") as i32;
    let deadline = Instant::now() + TIMEOUT;
    while !fs::read_to_string(&out).is_ok_and(|t| t.contains("ready\n")) {
        assert!(
            Instant::now() < deadline,
            "the job never got ready\n{}",
            cluster.logs()
        );
        std::thread::sleep(ms(20));
    }
    std::thread::sleep(ms(100));
    let ids = own_ids(pid);
    assert_eq!(ids.len(), 16, "thread_pool 13 runs 16 threads: {ids:?}");
    assert_eq!(ids[0], 1, "a job is the init of its PID namespace: {ids:?}");
    let mut here = "n1";
    let mut hops = Vec::new();
    for algorithm in ALGORITHMS {
        let to = if here == "n1" { "n2" } else { "n1" };
        let (moved, report) = cluster.migrate_ok(here, pid, to, algorithm, &[]);
        assert_ne!(moved.pid, pid, "{algorithm}: a new process on the host");
        assert_eq!(report["ids_kept"], true, "{algorithm}: {report}");
        assert_eq!(
            own_ids(moved.pid),
            ids,
            "{algorithm}: pid and thread ids in its namespace should be kept: {report}"
        );
        pid = moved.pid;
        here = to;
        hops.push(moved);
    }
    let last = hops.last().expect("five hops");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(last.pid), Signal::SIGUSR1)
        .expect("waking the job");
    let status = last.wait(&cluster, TIMEOUT);
    assert_eq!(status, support::cluster::logged_status(reference.exit));
    assert_same(
        "output of the job moved five times",
        &fs::read(&out).unwrap_or_default(),
        &reference.stdout,
        &cluster.logs(),
    );
}

// --- process trees: jobs of `ferry run` ----------------------------------------------------------

/// Namespace pids of PID's descendants, sorted (as the tree's namespace numbers them).
fn tree_ids(pid: i32) -> Vec<i32> {
    let mut ids: Vec<i32> = descendants(pid)
        .into_iter()
        .filter_map(|p| own_ids(p).first().copied())
        .collect();
    ids.sort_unstable();
    ids
}

/// A job that is a process tree: `sh -c SCRIPT sh DIR ARG` started with `ferry run` on n1 (its
/// shell is the init of a PID namespace of its own), moved to n2 once `mid_run(pid, out)` says
/// it is at work, with each algorithm in turn (a fresh job each time, in a directory DIR of its
/// own). Each must report at least `min_processes` processes moved with their ids, and end as
/// the uninterrupted reference did, byte for byte. `stable`: the tree does not change shape
/// while it runs, so its namespace pids after the move must be those before.
fn job_tree_with_every_algorithm(
    label: &str,
    script: &str,
    arg: &str,
    min_processes: u64,
    stable: bool,
    mid_run: impl Fn(i32, &std::path::Path) -> bool,
) {
    let scratch = Scratch::new(label);
    let sh = system_program("sh").to_string_lossy().into_owned();
    let ref_dir = scratch.subdir("reference");
    let ref_out = ref_dir.join("out");
    let out_file = fs::File::create(&ref_out).expect("reference output");
    let status = std::process::Command::new(&sh)
        .args(["-c", script, "sh"])
        .arg(&ref_dir)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .stderr(out_file.try_clone().expect("reference output"))
        .stdout(out_file)
        .status()
        .expect("running the reference");
    assert!(status.success(), "the reference run failed: {status}");
    let reference = fs::read(&ref_out).expect("reference output");
    let cluster = Cluster::up(2, &[]);
    let bin = ferry_bin().to_string_lossy().into_owned();
    for algorithm in ALGORITHMS {
        let dir = scratch.subdir(algorithm);
        let out = dir.join("out");
        let (dir_arg, out_arg) = (
            dir.to_string_lossy().into_owned(),
            out.to_string_lossy().into_owned(),
        );
        let started = cluster.testnet(&[
            "exec", "n1", "--", &bin, "run", "--on", "n1", "--json", "--stdout", &out_arg,
            "--stderr", &out_arg, "--", &sh, "-c", script, "sh", &dir_arg, arg,
        ]);
        assert!(
            started.status.success(),
            "ferry run failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let job: serde_json::Value = serde_json::from_slice(&started.stdout).expect("JSON job");
        let pid = job["pid"].as_i64().expect("the job's pid") as i32;
        let deadline = Instant::now() + TIMEOUT;
        while !mid_run(pid, &out) {
            assert!(
                Instant::now() < deadline,
                "{algorithm}: the job never got to work\n{}\n{}",
                String::from_utf8_lossy(&fs::read(&out).unwrap_or_default()),
                cluster.logs()
            );
            std::thread::sleep(ms(5));
        }
        let before = tree_ids(pid);
        // A stable tree is compared as soon as it runs there (not once it has all its memory:
        // by then it may have ended).
        let wait: &[&str] = if stable { &["--wait", "0"] } else { &[] };
        let (moved, report) = cluster.migrate_ok("n1", pid, "n2", algorithm, wait);
        let context = format!(
            "{algorithm}: {report}\n{} processes before the move: {before:?}",
            before.len()
        );
        assert!(
            report["processes"].as_u64().unwrap_or(0) >= min_processes,
            "{context}"
        );
        assert_eq!(report["ids_kept"], true, "{context}");
        if stable {
            assert_eq!(tree_ids(moved.pid), before, "namespace pids: {context}");
        }
        let status = moved.wait(&cluster, Duration::from_secs(180));
        assert_eq!(status, "Exited(0)", "{context}\n{}", cluster.logs());
        assert_same(
            &format!("output of the tree moved with {algorithm}"),
            &fs::read(&out).unwrap_or_default(),
            &reference,
            &format!("{context}\n{}", cluster.logs()),
        );
    }
}

/// A shell pipeline (`cat | gzip | sha256sum`, 48 MiB of input, output to a file) moved mid-run
/// with each algorithm: four processes, the pipes between them with data in flight.
#[test]
fn shell_pipeline_job_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("mig-pipeline-input");
    let input = repeated_block_file(scratch.join("input"), 48);
    job_tree_with_every_algorithm(
        "mig-pipeline",
        "cat \"$2\" | gzip -n -1 | sha256sum; echo \"pipeline done\"",
        &input.path.to_string_lossy(),
        4,
        true,
        // Once all three run and data flows.
        |pid, _| {
            descendants(pid).len() >= 3 && {
                std::thread::sleep(ms(300));
                true
            }
        },
    );
}

/// `make -j2` building a small C project, moved with each algorithm while two compilers run
/// (make, its jobserver pipe, the gcc drivers and their cc1 children; processes come and go
/// while it is moved). The build must finish, and its program print the same number.
#[test]
fn make_j2_job_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("mig-make-src");
    let src = scratch.join("src");
    c_project(&src);
    job_tree_with_every_algorithm(
        "mig-make",
        "cd \"$1\" && cp \"$2\"/* . && make -s -j2 && ./prog && echo \"build done\"",
        &src.to_string_lossy(),
        5,
        false,
        |pid, _| {
            descendants(pid)
                .into_iter()
                .filter(|&p| {
                    fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cc1")
                })
                .count()
                >= 2
        },
    );
}

/// Unmodified python3 with a `multiprocessing.Pool` of 2 workers (`workloads/python/pool.py`),
/// moved with each algorithm after its eighth result: pipes between the three processes, the
/// pool's threads, its locks (POSIX semaphores whose unlinked files all three map).
#[test]
fn python3_multiprocessing_pool_job_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let pool = python_workload("pool.py").to_string_lossy().into_owned();
    job_tree_with_every_algorithm("mig-pool", "python3 \"$2\"", &pool, 4, true, |_, out| {
        String::from_utf8_lossy(&fs::read(out).unwrap_or_default()).contains("\n8 ")
    });
}

/// A FIFO shared by a python3 process and its child (`workloads/python/fifo_tree.py`), bytes
/// in flight, moved with each algorithm: both reopen it by its path at the destination.
#[test]
fn fifo_shared_in_a_tree_job_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let program = python_workload("fifo_tree.py")
        .to_string_lossy()
        .into_owned();
    job_tree_with_every_algorithm(
        "mig-fifo-tree",
        "cd \"$1\" && python3 \"$2\"",
        &program,
        3,
        true,
        |_, out| String::from_utf8_lossy(&fs::read(out).unwrap_or_default()).contains("ready\n"),
    );
}

/// SysV shared memory between a process and its child (`workloads/python/sysv_tree.py`): a
/// segment marked for removal and a keyed one attached twice (once read-only) move with the
/// job's IPC namespace, with their ids and keys, shared again, with every algorithm.
#[test]
fn sysv_shared_memory_in_a_tree_job_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let program = python_workload("sysv_tree.py")
        .to_string_lossy()
        .into_owned();
    job_tree_with_every_algorithm(
        "mig-sysv-tree",
        "cd \"$1\" && python3 \"$2\"",
        &program,
        3,
        true,
        |_, out| String::from_utf8_lossy(&fs::read(out).unwrap_or_default()).contains("ready\n"),
    );
}

/// A server and its child, its client, over named unix sockets
/// (`workloads/python/unix_server_tree.py`): listening sockets on a path and on an abstract
/// name and a connection between the two with bytes in flight move with every algorithm;
/// after the move the child connects again by both names and reaches the moved server.
#[test]
fn unix_server_and_client_in_a_tree_job_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let program = python_workload("unix_server_tree.py")
        .to_string_lossy()
        .into_owned();
    job_tree_with_every_algorithm(
        "mig-unix-server",
        "cd \"$1\" && python3 \"$2\"",
        &program,
        3,
        true,
        |_, out| String::from_utf8_lossy(&fs::read(out).unwrap_or_default()).contains("ready\n"),
    );
}

/// A tree started outside a PID namespace of its own (not by `ferry run`) keeps its pids when
/// it moves; where they are taken (here: the test hosts share one kernel, and the frozen
/// original holds them) the destination refuses it, and the tree runs on at the source and
/// ends as an uninterrupted run does.
#[test]
fn tree_whose_pids_are_taken_at_the_destination_runs_on() {
    if !needs_root() {
        return;
    }
    let scratch = Scratch::new("mig-tree-pids");
    let input = repeated_block_file(scratch.join("input"), 32);
    let dir = scratch.subdir("run");
    let script = "cat \"$1\" | gzip -n -1 | sha256sum";
    let reference = std::process::Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&input.path)
        .output()
        .expect("the reference");
    let cluster = Cluster::up(2, &[]);
    let launch = Launch::new("tree-pids", system_program("sh"), &dir)
        .args(["-c", script, "sh"])
        .arg(&input.path);
    let proc = cluster.spawn("n1", &launch);
    let deadline = Instant::now() + TIMEOUT;
    while descendants(proc.raw_pid()).len() < 3 {
        assert!(Instant::now() < deadline, "the pipeline never started");
        std::thread::sleep(ms(5));
    }
    let refused = cluster
        .migrate("n1", proc.raw_pid(), "n2", "total-copy", &[])
        .expect_err("the tree's pids are taken at the destination");
    assert!(
        refused.contains(&format!("pid {} is in use", proc.raw_pid())),
        "{refused}"
    );
    let mut proc = proc;
    assert_eq!(proc.wait(TIMEOUT), Exit::Code(0), "{}", proc.diagnostics());
    assert_same(
        "output of the tree that stayed",
        &proc.output_bytes(),
        &reference.stdout,
        &cluster.logs(),
    );
}

/// Unmodified python3 with four worker threads on a `queue.Queue` and a sleeping thread.
#[test]
fn python3_threads_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-python-threads",
            system_program("python3"),
            Marker::Text("ready\n"),
        )
        .args(&[lit(&python_workload("threads.py").to_string_lossy())])
        .settle(ms(100))
        .wake(Signal::SIGUSR1),
    );
}

/// Unmodified python3 running an asyncio event loop over unix socket pairs (its self-pipe,
/// through which SIGUSR1 arrives, and one holding 50 records in flight).
#[test]
fn python3_asyncio_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-python-asyncio",
            system_program("python3"),
            Marker::Text("ready\n"),
        )
        .args(&[lit(&python_workload("asyncio_loop.py").to_string_lossy())])
        .settle(ms(100))
        .wake(Signal::SIGUSR1),
    );
}

#[test]
fn heap_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new("mig-heap", c_workload("heap"), Marker::Text("ready"))
            .args(&[lit("128")])
            .settle(ms(300)),
    );
}

#[test]
fn file_mappings_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-shared-map",
            c_workload("shared_map"),
            Marker::Text("step 5\n"),
        )
        .args(&[Arg::File("shared.map")]),
    );
    with_every_algorithm(
        Scenario::new(
            "mig-private-map",
            c_workload("private_map"),
            Marker::Text("step 5\n"),
        )
        .args(&[Arg::File("private.map")]),
    );
}

#[test]
fn fpu_avx_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new("mig-fpu-avx", c_workload("fpu_avx"), Marker::Text("ready")).settle(ms(500)),
    );
}

#[test]
fn signal_state_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(Scenario::new(
        "mig-signals",
        c_workload("signals"),
        Marker::Text("sleep 1\n"),
    ));
}

#[test]
fn files_and_credentials_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new("mig-files", c_workload("files"), Marker::Text("sleep 1\n"))
            .args(&[Arg::Dir]),
    );
    with_every_algorithm(Scenario::new(
        "mig-creds",
        c_workload("creds"),
        Marker::Text("sleep 1\n"),
    ));
}

#[test]
fn python3_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-python",
            system_program("python3"),
            Marker::Text("step 3:"),
        )
        .args(&[lit(&python_workload("compute.py").to_string_lossy())]),
    );
}

/// Unmodified python3 running an event loop (`selectors`, i.e. epoll) over a pipe that always
/// holds data and two eventfds.
#[test]
fn python3_event_loop_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(
        Scenario::new(
            "mig-python-selector",
            system_program("python3"),
            Marker::Text("ready\n"),
        )
        .args(&[lit(&python_workload("selector_loop.py").to_string_lossy())])
        .settle(ms(100))
        .wake(Signal::SIGUSR1),
    );
}

#[test]
fn rust_workload_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    with_every_algorithm(Scenario::new(
        "mig-wl-compute",
        rust_workload("wl-compute"),
        Marker::Text("step 3:"),
    ));
}

// --- chains ------------------------------------------------------------------------------------

/// n1 -> n2 -> n3 -> n1 with each algorithm, on a process whose memory is needed slowly (so
/// that lazy algorithms still depend on the previous host when the next hop starts).
#[test]
fn chain_of_three_hosts_and_back_with_every_algorithm() {
    if !needs_root() {
        return;
    }
    let scenario = Scenario::new("mig-chain", c_workload("slowtouch"), Marker::Text("ready"))
        .args(&[lit("64"), lit("800"), lit("3")])
        .stderr_to_stdout();
    let scratch = Scratch::new(scenario.label);
    let reference = scenario.reference(&scratch);
    let cluster = Cluster::up(3, &[]);
    for algorithm in ALGORITHMS {
        migrate_scenario(
            &cluster,
            &scratch,
            &scenario,
            &reference,
            algorithm,
            &["n2", "n3", "n1"],
            &["--wait", "0"],
        );
    }
}

/// The page store on a third host (a daemon in page-store role): file-server and freeze-free
/// flush there, and faults after the flush are served from it.
#[test]
fn page_store_node_serves_file_server_and_freeze_free() {
    if !needs_root() {
        return;
    }
    let scenario = Scenario::new(
        "mig-store-node",
        c_workload("slowtouch"),
        Marker::Text("ready"),
    )
    .args(&[lit("64"), lit("1000"), lit("3")])
    .stderr_to_stdout();
    let scratch = Scratch::new(scenario.label);
    let reference = scenario.reference(&scratch);
    let cluster = Cluster::up(3, &["--store-node", "3"]);
    for algorithm in ["file-server", "freeze-free"] {
        let reports = migrate_scenario(
            &cluster,
            &scratch,
            &scenario,
            &reference,
            algorithm,
            &["n2", "n1"],
            &[],
        );
        for r in &reports {
            assert!(
                r["store_bytes"].as_u64().unwrap_or(0) >= 64 << 20,
                "{algorithm}: every page should have been flushed to the store node: {r}"
            );
            if algorithm == "file-server" {
                assert!(
                    r["store_faults"].as_u64().unwrap_or(0) > 0,
                    "file-server: faults after the flush should have been served by the store \
                     node: {r}"
                );
            }
        }
    }
    // Every migration ended, so the store node keeps nothing (files go as their processes end).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = fs::read_dir(cluster.store_dir())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store node still keeps {left:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(ms(100));
    }
}

// --- nothing lost ------------------------------------------------------------------------------

/// A process asked to move to a host that is down, or that refuses it, keeps running where it
/// was, unharmed; with several targets it lands on the next one that accepts.
#[test]
fn unreachable_or_refusing_destination_leaves_the_process_running() {
    if !needs_root() {
        return;
    }
    let scenario = Scenario::new(
        "mig-refused",
        c_workload("slowtouch"),
        Marker::Text("ready"),
    )
    .args(&[lit("96"), lit("3000"), lit("3")])
    .stderr_to_stdout();
    let scratch = Scratch::new(scenario.label);
    let reference = scenario.reference(&scratch);
    let cluster = Cluster::up(3, &[]);
    // n3 accepts at most 32 MiB.
    cluster.testnet_ok(&["kill", "n3", "--term"]);
    // (A top-level key: it goes before the [[peer]] tables.)
    let cfg = fs::read_to_string("/run/ferry-tests/n3.toml").expect("n3.toml");
    let cfg = format!("memory_limit = 33554432\n{cfg}");
    fs::write("/run/ferry-tests/n3.toml", cfg).expect("rewriting n3.toml");
    cluster.testnet_ok(&["start", "n3"]);
    // n2's daemon is down (its host still answers: connections are refused at once).
    cluster.testnet_ok(&["kill", "n2"]);

    let dir = scratch.subdir("run");
    let launch = scenario.launch("run", &dir);
    let mut proc = cluster.spawn("n1", &launch);
    scenario.wait_marker(&mut proc);
    for algorithm in ALGORITHMS {
        for to in ["n2", "n3", "n2,n3"] {
            let before = proc.output_bytes().len();
            let err = cluster
                .migrate("n1", proc.raw_pid(), to, algorithm, &[])
                .expect_err(&format!("{algorithm} to {to} should fail"));
            if to == "n3" {
                assert!(
                    err.contains("memory"),
                    "{algorithm}: n3's refusal should name the reason (memory): {err}"
                );
            }
            let stat = proc_stat(proc.raw_pid()).expect("the process is gone after a failed move");
            assert!(
                matches!(stat.state, 'S' | 'R'),
                "{algorithm} to {to}: the process should run at n1 as before, but its state is \
                 {}\n{err}",
                stat.state
            );
            assert!(
                proc_status(proc.raw_pid(), "TracerPid").as_deref() == Some("0"),
                "{algorithm} to {to}: the process is still traced after a failed move"
            );
            assert!(proc.output_bytes().len() >= before);
        }
    }
    // Let n2 come back: `--to n3,n2` is refused by n3 and lands on n2.
    cluster.testnet_ok(&["start", "n2"]);
    let (moved, report) = cluster.migrate_ok("n1", proc.raw_pid(), "n3,n2", "freeze-free", &[]);
    assert_eq!(moved.node, "n2", "{report}");
    assert!(
        report["rejected"].to_string().contains("n3"),
        "the report should list n3's refusal: {report}"
    );
    let status = moved.wait(&cluster, TIMEOUT);
    assert_eq!(status, "Exited(0)");
    assert_same(
        "output after refusals",
        &proc.output_bytes(),
        &reference.stdout,
        &cluster.logs(),
    );
}

/// A peer that does not hold the cluster secret cannot make a daemon create a process: a real
/// ferry peer with a wrong secret fails its handshake, and an impostor that sends bytes shaped
/// like anything is dropped before a byte of it is read as a migration. (With the secret, the
/// same connection succeeds: the test can tell the difference.)
#[test]
fn peer_without_the_secret_cannot_create_a_process() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(1, &[]);
    let procs_before = host_processes("n1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let connect = |secret: &ferry_wire::ClusterSecret| {
        rt.block_on(ferry_wire::Connection::connect(
            "10.77.0.1:7070",
            secret,
            ferry_wire::Role::Control,
            ferry_wire::Mode::Encrypted,
            "impostor",
            Duration::from_secs(5),
        ))
    };
    let wrong = ferry_wire::ClusterSecret::generate().expect("a random secret");
    let refused = connect(&wrong);
    assert!(
        refused.is_err(),
        "a peer with a wrong secret got a connection"
    );
    let right = ferry_wire::ClusterSecret::load("/run/ferry-tests/secret").expect("the secret");
    let accepted = connect(&right);
    assert!(
        accepted.is_ok(),
        "the real secret should connect: {:?}",
        accepted.err()
    );
    drop(accepted);

    // Raw bytes: the right preamble with a made-up handshake (or a wrong preamble), then what
    // could pass for a process image.
    for attempt in 0..3u8 {
        let mut tcp = TcpStream::connect("10.77.0.1:7070").expect("connecting to n1's daemon");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut junk: Vec<u8> = b"FERRYW".to_vec();
        junk.extend([ferry_wire::WIRE_VERSION + attempt / 2, 0, 0, 48]);
        junk.extend((0..48).map(|i| i ^ attempt));
        junk.extend(std::iter::repeat_n(0x41, 64 << 10));
        let _ = tcp.write_all(&junk);
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(5);
        // The daemon closes the connection.
        while let Ok(n) = tcp.read(&mut buf) {
            if n == 0 || Instant::now() > deadline {
                break;
            }
        }
    }
    std::thread::sleep(ms(200));
    let log = cluster.log("n1");
    assert!(
        log.matches("refused a peer").count() >= 4,
        "n1 should log each refused peer (1 wrong secret + 3 impostors)\n{log}"
    );
    assert!(
        !log.contains("rebuilding") && !log.contains("running migration"),
        "n1 started restoring something\n{log}"
    );
    assert_eq!(
        host_processes("n1"),
        procs_before,
        "processes appeared on n1\n{log}"
    );
}

/// The pids in host NODE's cgroup.
fn host_processes(node: &str) -> Vec<i32> {
    let cg = fs::read_to_string(format!("/run/ferry-tests/{node}.toml"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("cgroup = \"")
                    .map(|s| s.trim_end_matches('"').to_string())
            })
        })
        .expect("the host's cgroup in its config");
    let mut pids: Vec<i32> = fs::read_to_string(format!("{cg}/cgroup.procs"))
        .or_else(|_| fs::read_to_string(format!("{cg}/tasks")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Demand paging leaves the process depending on its old host: when that host dies, the
/// process is ended with a clear log line (never left hanging, never running on zero pages).
/// File-server and freeze-free no longer depend on it once their flush completed: the process
/// finishes correctly after the old host died.
#[test]
fn old_host_death_ends_demand_paging_but_not_file_server_or_freeze_free() {
    if !needs_root() {
        return;
    }
    let scenario = Scenario::new(
        "mig-old-host",
        c_workload("slowtouch"),
        Marker::Text("ready"),
    )
    .args(&[lit("64"), lit("1500"), lit("3")])
    .stderr_to_stdout();
    let scratch = Scratch::new(scenario.label);
    let reference = scenario.reference(&scratch);
    let cluster = Cluster::up(2, &[]);

    for algorithm in ["demand-paging", "file-server", "freeze-free"] {
        let dir = scratch.subdir(algorithm);
        let launch = scenario.launch(algorithm, &dir);
        let mut proc = cluster.spawn("n1", &launch);
        scenario.wait_marker(&mut proc);
        // demand-paging: return as soon as it runs at n2; the others: once the flush completed.
        let wait = if algorithm == "demand-paging" {
            "0"
        } else {
            "30"
        };
        let (moved, report) =
            cluster.migrate_ok("n1", proc.raw_pid(), "n2", algorithm, &["--wait", wait]);
        if algorithm != "demand-paging" {
            assert!(
                report["residual_ms"].is_number(),
                "{algorithm}: the residual dependency should have ended: {report}"
            );
        }
        cluster.testnet_ok(&["kill", "n1", "--host"]);
        let status = moved.wait(&cluster, TIMEOUT);
        let output = proc.output_bytes();
        if algorithm == "demand-paging" {
            assert_eq!(status, "Signaled(9)", "{}", cluster.logs());
            assert!(
                cluster
                    .log("n2")
                    .contains("the process's memory lives on a host that is no longer reachable"),
                "n2 should say why it ended the process\n{}",
                cluster.logs()
            );
            assert!(
                !String::from_utf8_lossy(&output).contains("done"),
                "the demand-paged process finished before its old host died: the test proves \
                 nothing (make slowtouch run longer)"
            );
            // The frozen source did not come back to life when its daemon died: it is stopped.
            let state = proc_stat(proc.raw_pid()).map(|s| s.state);
            assert!(
                matches!(state, Some('T') | Some('t') | Some('Z') | None),
                "the source copy runs again after its daemon died: {state:?}"
            );
        } else {
            assert_eq!(status, "Exited(0)", "{algorithm}\n{}", cluster.logs());
            assert_same(
                &format!("{algorithm} after the old host died"),
                &output,
                &reference.stdout,
                &cluster.logs(),
            );
        }
        proc.kill_tree();
        drop(moved);
        cluster.testnet_ok(&["start", "n1"]);
    }
}
