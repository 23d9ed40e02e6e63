//! Load sharing end to end on the test cluster (real daemons, real gossip over UDP, real
//! processes): membership and failure detection, remote execution and `ferry ps`, placement by
//! bidding, drafting and hybrid, automatic migration, drain, and the owner's return.
//!
//! One cluster at a time (shared with the migration tests); each test brings its own up.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::Cluster;
use support::*;

/// `ferry ARGS` on NODE of the cluster that is up (through `testnet.sh exec`), in `cwd`.
fn ferry(node: &str, cwd: &std::path::Path, args: &[&str]) -> Output {
    let bin = ferry_bin();
    let bin = bin.to_string_lossy();
    let mut all = vec!["exec", node, "--", &*bin];
    all.extend_from_slice(args);
    std::process::Command::new(repo_root().join("scripts/testnet.sh"))
        .args(&all)
        .env("FERRY", ferry_bin())
        .env("FERRY_RUN", "/run/ferry-tests")
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running scripts/testnet.sh exec")
}

fn json_of(cluster: &Cluster, out: &Output) -> Value {
    assert!(
        out.status.success(),
        "ferry failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn nodes(cluster: &Cluster, node: &str) -> Vec<Value> {
    let out = ferry(node, std::path::Path::new("/"), &["nodes", "--json"]);
    json_of(cluster, &out)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ps(cluster: &Cluster, node: &str) -> Vec<Value> {
    let out = ferry(node, std::path::Path::new("/"), &["ps", "--json"]);
    json_of(cluster, &out)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `ferry run ARGS -- ferry bench spin --units UNITS` on NODE; the job's JSON.
fn run_spin(
    cluster: &Cluster,
    node: &str,
    dir: &std::path::Path,
    args: &[&str],
    units: u64,
) -> Value {
    let bin = ferry_bin();
    let bin = bin.to_string_lossy();
    let u = units.to_string();
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", &*bin, "bench", "spin", "--units", &u]);
    json_of(cluster, &ferry(node, dir, &all))
}

fn wait_until(what: &str, cluster: &Cluster, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node of the view alive, with a figure younger than 2 s.
fn settled(view: &[Value]) -> bool {
    view.len() == 3
        && view.iter().all(|n| {
            n["status"] != "dead"
                && !n["advert"].is_null()
                && n["age_ms"].as_u64().is_some_and(|a| a < 2000)
        })
}

fn job<'a>(jobs: &'a [Value], id: &str) -> Option<&'a Value> {
    jobs.iter().find(|j| j["id"] == id)
}

/// What `ferry bench spin --units UNITS` prints, from an uninterrupted run here.
fn spin_reference(units: u64) -> String {
    let out = std::process::Command::new(ferry_bin())
        .args(["bench", "spin", "--units", &units.to_string()])
        .output()
        .expect("running ferry bench spin");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gossip_finds_every_node_and_drops_a_dead_one() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &[]);
    wait_until(
        "n1 sees three live nodes with figures",
        &cluster,
        Duration::from_secs(15),
        || {
            let v = nodes(&cluster, "n1");
            v.len() == 3
                && v.iter()
                    .all(|n| n["status"] != "dead" && !n["advert"].is_null())
                && v.iter()
                    .all(|n| n["age_ms"].as_u64().is_some_and(|a| a < 5000))
        },
    );
    // The figures carry what the issue asks for.
    let v = nodes(&cluster, "n2");
    let n3 = v
        .iter()
        .find(|n| n["name"] == "n3")
        .expect("n3 in n2's view");
    let a = &n3["advert"];
    for key in ["run_queue", "capacity", "mem_free", "jobs", "cpus"] {
        assert!(!a[key].is_null(), "advert lacks {key}: {a}");
    }
    assert!(
        a["measured"].as_str().unwrap_or("").contains("ferry/n3"),
        "{a}"
    );

    cluster.testnet_ok(&["kill", "n3", "--host"]);
    wait_until(
        "n1 declares n3 dead",
        &cluster,
        Duration::from_secs(30),
        || {
            nodes(&cluster, "n1")
                .iter()
                .any(|n| n["name"] == "n3" && n["status"] == "dead")
        },
    );
    // Placement never picks the dead node.
    let scratch = Scratch::new("sharing-dead");
    for _ in 0..3 {
        let j = run_spin(
            &cluster,
            "n1",
            scratch.path(),
            &["--policy", "bidding"],
            3000,
        );
        assert_ne!(j["node"], "n3", "{j}");
    }
}

#[test]
fn run_on_a_node_shows_in_ps_everywhere_and_moves_with_its_id() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &[]);
    let scratch = Scratch::new("sharing-run");
    let units = 1500;
    let reference = spin_reference(units);
    let j = run_spin(&cluster, "n1", scratch.path(), &["--on", "n2"], units);
    let id = j["id"].as_str().expect("job id").to_string();
    assert!(id.starts_with("n1."), "{j}");
    assert_eq!(j["node"], "n2");
    let pid = j["pid"].as_i64().expect("pid");
    // Every node lists it (n3 through gossip), with its node and pid.
    wait_until(
        "n3 lists the job on n2",
        &cluster,
        Duration::from_secs(10),
        || job(&ps(&cluster, "n3"), &id).is_some_and(|x| x["node"] == "n2" && x["pid"] == pid),
    );
    // Moved by hand, it keeps its id and counts the move.
    let out = ferry(
        "n2",
        scratch.path(),
        &["migrate", &pid.to_string(), "--to", "n3", "--json"],
    );
    json_of(&cluster, &out);
    wait_until(
        "n1 lists the job on n3",
        &cluster,
        Duration::from_secs(10),
        || job(&ps(&cluster, "n1"), &id).is_some_and(|x| x["node"] == "n3" && x["hops"] == 1),
    );
    wait_until("the job ends", &cluster, Duration::from_secs(60), || {
        job(&ps(&cluster, "n1"), &id).is_some_and(|x| !x["ended_ms"].is_null())
    });
    let last = ps(&cluster, "n1");
    let x = job(&last, &id).expect("job listed");
    assert_eq!(x["exit_code"], 0, "{x}");
    assert!(x["cpu_ms"].as_u64().unwrap_or(0) > 0, "{x}");
    let out = std::fs::read_to_string(scratch.join(&format!("ferry-{id}.out"))).expect("output");
    assert_eq!(out, reference, "the moved job computed something else");
}

#[test]
fn run_refuses_clearly_and_starts_nothing() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(2, &[]);
    let scratch = Scratch::new("sharing-refuse");
    let before = ps(&cluster, "n1").len();
    let cases: [(&[&str], &str); 3] = [
        (&["run", "--on", "n9", "--", "true"], "unknown node n9"),
        (
            &["run", "--stdout", "/nonexistent/dir/out", "--", "true"],
            "/nonexistent/dir/out",
        ),
        (&["run", "--", "no-such-program-here"], "not found in PATH"),
    ];
    for (args, want) in cases {
        let out = ferry("n1", scratch.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        ps(&cluster, "n1").len(),
        before,
        "a refused job was started"
    );
}

#[test]
fn policies_spread_new_processes() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &["--cpu-quota", "50", "--groups", "a,a,b"]);
    wait_until("gossip settles", &cluster, Duration::from_secs(15), || {
        settled(&nodes(&cluster, "n1"))
    });
    let scratch = Scratch::new("sharing-policies");
    for policy in ["bidding", "drafting", "hybrid"] {
        let mut on = Vec::new();
        let mut why = Vec::new();
        for _ in 0..3 {
            let j = run_spin(
                &cluster,
                "n1",
                scratch.path(),
                &["--policy", policy],
                1_000_000,
            );
            on.push(j["node"].as_str().unwrap_or("").to_string());
            why.push(j["placement"].to_string());
        }
        on.sort();
        assert_eq!(
            on,
            ["n1", "n2", "n3"],
            "{policy} placed 3 jobs on {on:?} ({why:?})\n{:?}",
            nodes(&cluster, "n1")
        );
        // Clear the cluster for the next policy, until every figure shows it.
        kill_jobs(&cluster);
        // Figures published after the kill (gossip every 500 ms, a 1 s average) must show it.
        std::thread::sleep(Duration::from_secs(3));
        wait_until(
            "the load is gone",
            &cluster,
            Duration::from_secs(20),
            || {
                nodes(&cluster, "n1")
                    .iter()
                    .all(|n| n["advert"]["run_queue"].as_f64().is_some_and(|r| r < 0.2))
            },
        );
    }
}

/// Ends every job of the cluster (SIGKILL through /proc: the test runs on the same kernel).
fn kill_jobs(cluster: &Cluster) {
    // Each node lists its own jobs at once (others' only after a gossip round).
    let own: Vec<Value> = ["n1", "n2", "n3"]
        .iter()
        .flat_map(|n| ps(cluster, n).into_iter().filter(move |j| j["node"] == *n))
        .collect();
    for j in own {
        if j["ended_ms"].is_null()
            && let Some(pid) = j["pid"].as_i64()
        {
            // The pid is that of the job's node; every test host shares this pid namespace.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn automatic_migration_balances_without_ping_pong() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &["--cpu-quota", "50", "--auto-migrate"]);
    wait_until("gossip settles", &cluster, Duration::from_secs(15), || {
        settled(&nodes(&cluster, "n1"))
    });
    let scratch = Scratch::new("sharing-auto");
    // A CPU-bound process that cannot move (a listening TCP socket): never picked.
    let immobile = json_of(
        &cluster,
        &ferry(
            "n1",
            scratch.path(),
            &[
                "run",
                "--json",
                "--on",
                "n1",
                "--",
                "python3",
                "-c",
                "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nopen('immobile.ready', 'w').close()\nwhile True: pass",
            ],
        ),
    );
    let immobile_id = immobile["id"].as_str().unwrap_or("").to_string();
    // Its socket must exist before the host is loaded: a python3 still starting up on a
    // starved host has no socket yet, and moving it then is right.
    let ready = scratch.path().join("immobile.ready");
    wait_until(
        "the immobile job has its socket",
        &cluster,
        Duration::from_secs(30),
        || ready.exists(),
    );
    let mut ids: Vec<String> = (0..6)
        .map(|_| {
            run_spin(&cluster, "n1", scratch.path(), &["--on", "n1"], 1_000_000)["id"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    ids.push(immobile_id.clone());
    let spread = |jobs: &[Value]| {
        let mut count = [0usize; 3];
        for j in jobs
            .iter()
            .filter(|j| ids.contains(&j["id"].as_str().unwrap_or("").to_string()))
        {
            if let Some(k) = j["node"]
                .as_str()
                .and_then(|n| n[1..].parse::<usize>().ok())
            {
                count[k - 1] += 1;
            }
        }
        count
    };
    let balanced = |c: [usize; 3]| {
        c.iter().sum::<usize>() == 7
            && c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) <= 1
    };
    wait_until(
        "7 jobs spread 3/2/2",
        &cluster,
        Duration::from_secs(40),
        || balanced(spread(&ps(&cluster, "n1"))),
    );
    // It stays balanced, and nothing moves back and forth.
    std::thread::sleep(Duration::from_secs(8));
    let jobs = ps(&cluster, "n1");
    assert!(balanced(spread(&jobs)), "{:?}: {jobs:?}", spread(&jobs));
    let moves: u64 = jobs.iter().map(|j| j["hops"].as_u64().unwrap_or(0)).sum();
    assert!(
        moves <= 6,
        "{moves} migrations to balance 7 jobs: {jobs:?}\n{}",
        cluster.logs()
    );
    assert!(
        jobs.iter().all(|j| j["hops"].as_u64().unwrap_or(0) <= 1),
        "a job moved twice: {jobs:?}"
    );
    let im = job(&jobs, &immobile_id).expect("the immobile job is listed");
    assert_eq!(im["node"], "n1", "{im}");
    assert_eq!(im["hops"], 0, "{im}");
    assert!(
        im["immobile"].as_str().unwrap_or("").contains("socket"),
        "ps shows why it cannot move: {im}"
    );
    kill_jobs(&cluster);
}

#[test]
fn owner_return_evicts_foreign_jobs_and_drain_empties_the_node() {
    if !needs_root() {
        return;
    }
    let cluster = Cluster::up(3, &[]);
    let scratch = Scratch::new("sharing-owner");
    let units = 4000;
    let reference = spin_reference(units);
    let foreign = run_spin(&cluster, "n1", scratch.path(), &["--on", "n2"], units);
    let own = run_spin(&cluster, "n2", scratch.path(), &["--on", "n2"], units);
    let (fid, oid) = (
        foreign["id"].as_str().unwrap_or("").to_string(),
        own["id"].as_str().unwrap_or("").to_string(),
    );
    let out = ferry("n3", scratch.path(), &["owner", "n2", "present"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the foreign job leaves n2",
        &cluster,
        Duration::from_secs(20),
        || job(&ps(&cluster, "n2"), &fid).is_some_and(|x| x["node"] != "n2"),
    );
    let jobs = ps(&cluster, "n2");
    assert_eq!(
        job(&jobs, &oid).map(|x| x["node"].clone()),
        Some("n2".into()),
        "{jobs:?}"
    );
    // No new process there while the owner is present.
    let out = ferry("n1", scratch.path(), &["run", "--on", "n2", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("owner"),
        "{out:?}"
    );

    let out = ferry("n1", scratch.path(), &["owner", "n2", "away"]);
    assert!(out.status.success());
    let out = ferry("n1", scratch.path(), &["drain", "n2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("n2 is empty", &cluster, Duration::from_secs(20), || {
        ps(&cluster, "n1")
            .iter()
            .all(|j| j["node"] != "n2" || !j["ended_ms"].is_null())
    });
    wait_until(
        "n1 sees n2 draining",
        &cluster,
        Duration::from_secs(10),
        || {
            nodes(&cluster, "n1")
                .iter()
                .any(|n| n["name"] == "n2" && n["advert"]["draining"] == true)
        },
    );
    // Both jobs finish where they went, with the right result.
    wait_until("both jobs end", &cluster, Duration::from_secs(90), || {
        let jobs = ps(&cluster, "n1");
        [&fid, &oid]
            .iter()
            .all(|id| job(&jobs, id).is_some_and(|x| !x["ended_ms"].is_null()))
    });
    let jobs = ps(&cluster, "n1");
    for id in [&fid, &oid] {
        let x = job(&jobs, id).expect("listed");
        assert_eq!(x["exit_code"], 0, "{x}");
        let out =
            std::fs::read_to_string(scratch.join(&format!("ferry-{id}.out"))).unwrap_or_default();
        assert_eq!(out, reference, "job {id} computed something else");
    }
}
