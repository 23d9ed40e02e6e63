//! ferry-managed processes ("jobs") of this node: started by `ferry run` (remote execution) or
//! migrated here. A job keeps its cluster-wide id (`ORIGIN.N`) across migrations; its record
//! travels in the migration offer's tag. This module starts jobs, reaps them, and describes
//! them (CPU time, state, mobility) for `ferry ps` and for the balancer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use ferry_sys::Pid;
use ferry_sys::host::ExitStatus;

use crate::placement::Candidate;

/// What `ferry run` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory (must exist on the node that runs it: shared file system).
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// Output files (absolute); `None`: `CWD/ferry-ID.out` and `.err`.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

/// What travels with a job when it migrates (the offer's tag, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTag {
    pub id: String,
    /// Node where it was submitted.
    pub origin: String,
    pub command: String,
    /// Start, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// CPU time used on previous nodes.
    pub cpu_before_ms: u64,
    /// Migrations so far.
    pub hops: u32,
    pub stdout: String,
    pub stderr: String,
}

/// A job as `ferry ps` shows it (and as gossip carries it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub node: String,
    pub pid: i32,
    pub origin: String,
    pub command: String,
    pub started_ms: u64,
    pub cpu_ms: u64,
    /// running (R), sleeping, stopped, moving, exited N, killed by signal N.
    pub state: String,
    /// Why ferry cannot move it, if it cannot.
    pub immobile: Option<String>,
    pub hops: u32,
    pub stdout: String,
    pub stderr: String,
    pub ended_ms: Option<u64>,
    pub exit_code: Option<i32>,
}

struct Job {
    tag: JobTag,
    pid: i32,
    /// When it arrived here by migration.
    arrived: Option<Instant>,
    ended: Option<(u64, ExitStatus)>,
    moving: bool,
    /// CPU time used here when last looked at (what remains known once it is reaped).
    cpu_seen_ms: u64,
    /// Cached mobility verdict and when it was taken.
    mobility: Option<(Instant, Option<String>)>,
}

/// Jobs that ended stay listed this long.
const KEEP_ENDED: Duration = Duration::from_secs(600);
/// A mobility verdict is reused this long.
const MOBILITY_TTL: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The jobs of this node.
pub struct Jobs {
    node: String,
    counter_file: PathBuf,
    inner: Mutex<Vec<Job>>,
    next: Mutex<u64>,
    /// The message service, whose links do not pin a job.
    messages: std::sync::OnceLock<std::sync::Arc<crate::messages::Service>>,
}

/// Starts a job's shell (ARGV, the whole environment ENV) as the init of a PID namespace of
/// its own, so that its pids and thread ids restore exactly wherever it migrates; where the
/// kernel refuses a new namespace (no `CAP_SYS_ADMIN`), as a plain child in a session of its
/// own. Returns its pid.
fn start_job(argv: &[String], env: &[String], spec: &RunSpec) -> Result<i32, String> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
    let cmd = ferry_sys::spawn::JobCommand {
        program: c(&argv[0])?,
        argv: argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|e| c(e)).collect::<Result<_, _>>()?,
        cwd: c(&spec.cwd)?,
        uid: spec.uid,
        gid: spec.gid,
    };
    match ferry_sys::spawn::job_in_new_pid_namespace(&cmd) {
        Ok(pid) => return Ok(pid.as_raw()),
        Err(e)
            if matches!(
                e.errno(),
                Some(ferry_sys::Errno::EPERM | ferry_sys::Errno::EINVAL)
            ) =>
        {
            warn!(error = %e, "no PID namespace for the job: its pids will change when it migrates");
        }
        Err(e) => return Err(e.to_string()),
    }
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .uid(spec.uid)
        .gid(spec.gid);
    ferry_sys::spawn::isolate(&mut command, None);
    let child = command.spawn().map_err(|e| e.to_string())?;
    // Not waited through `child`: the daemon reaps it (see `watch`).
    Ok(child.id() as i32)
}

fn status_text(s: &ExitStatus) -> String {
    match s {
        ExitStatus::Exited(c) => format!("exited {c}"),
        ExitStatus::Signaled(n) => format!("killed by signal {n}"),
    }
}

impl Jobs {
    /// The registry of `node`; job numbers continue from `state_dir/next-job`.
    pub fn new(node: &str, state_dir: &Path) -> Jobs {
        let counter_file = state_dir.join("next-job");
        let next = std::fs::read_to_string(&counter_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1);
        Jobs {
            node: node.to_string(),
            counter_file,
            inner: Mutex::new(Vec::new()),
            next: Mutex::new(next),
            messages: std::sync::OnceLock::new(),
        }
    }

    /// Jobs' message links are mobile: the mobility check asks `messages` which fds they are.
    pub fn set_messages(&self, messages: std::sync::Arc<crate::messages::Service>) {
        let _ = self.messages.set(messages);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh cluster-wide id: `NODE.N`.
    pub fn new_id(&self) -> String {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let id = format!("{}.{}", self.node, *next);
        *next += 1;
        if let Err(e) = std::fs::write(&self.counter_file, format!("{}\n", *next)) {
            warn!(file = %self.counter_file.display(), error = %e, "cannot save the job counter");
        }
        id
    }

    /// Checks that `spec` can run here: the paths it names exist on this node.
    pub fn check(spec: &RunSpec) -> Result<(), String> {
        let Some(program) = spec.argv.first() else {
            return Err("no command".into());
        };
        let cwd = Path::new(&spec.cwd);
        if !cwd.is_absolute() || !cwd.is_dir() {
            return Err(format!(
                "working directory {} does not exist here (ferry run assumes a file system shared by every node)",
                spec.cwd
            ));
        }
        if program.contains('/') {
            let p = cwd.join(program);
            if !p.is_file() {
                return Err(format!("{} does not exist here", p.display()));
            }
        } else {
            let path = spec
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                .unwrap_or("/usr/local/bin:/usr/bin:/bin");
            if !path
                .split(':')
                .any(|d| Path::new(d).join(program).is_file())
            {
                return Err(format!("{program}: not found in PATH here ({path})"));
            }
        }
        for out in [&spec.stdout, &spec.stderr].into_iter().flatten() {
            let dir = Path::new(out).parent().unwrap_or(Path::new("/"));
            if !Path::new(out).is_absolute() || !dir.is_dir() {
                return Err(format!(
                    "output file {out}: its directory does not exist here"
                ));
            }
        }
        Ok(())
    }

    /// Starts `spec` as job `id` (submitted at `origin`) on this node, with the caller's
    /// credentials; its output goes to files it opens itself (as the caller).
    pub fn spawn(&self, id: &str, origin: &str, spec: &RunSpec) -> Result<JobInfo, String> {
        Self::check(spec)?;
        let default_out =
            |ext: &str| format!("{}/ferry-{id}.{ext}", spec.cwd.trim_end_matches('/'));
        let stdout = spec.stdout.clone().unwrap_or_else(|| default_out("out"));
        let stderr = spec.stderr.clone().unwrap_or_else(|| default_out("err"));
        // The shell opens the output files after the switch to the caller's credentials, so a
        // caller cannot make the daemon write where it may not; then it becomes the program.
        let script = if stdout == stderr {
            r#"o=$1; shift 2; exec "$@" >"$o" 2>&1"#
        } else {
            r#"o=$1; e=$2; shift 2; exec "$@" >"$o" 2>"$e""#
        };
        let mut argv: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            script.into(),
            "ferry-run".into(),
            stdout.clone(),
            stderr.clone(),
        ];
        argv.extend(spec.argv.iter().cloned());
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| k != "FERRY_JOB")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("FERRY_JOB={id}"));
        let pid = start_job(&argv, &env, spec)
            .map_err(|e| format!("starting {}: {e}", spec.argv.join(" ")))?;
        // The daemon runs at a raised priority; the job gets the ordinary one. (It is still
        // the single-threaded shell here: std returns once it has been exec'd.)
        if let Err(e) = ferry_sys::host::set_nice(pid, 0) {
            warn!(job = id, pid, error = %e, "cannot reset the job's nice value");
        }
        let tag = JobTag {
            id: id.to_string(),
            origin: origin.to_string(),
            command: spec.argv.join(" "),
            started_ms: now_ms(),
            cpu_before_ms: 0,
            hops: 0,
            stdout,
            stderr,
        };
        info!(job = id, pid, command = %tag.command, "job started");
        let job = Job {
            tag,
            pid,
            arrived: None,
            ended: None,
            moving: false,
            cpu_seen_ms: 0,
            mobility: None,
        };
        let mut job = job;
        let info = self.describe(&mut job);
        self.lock().push(job);
        Ok(info)
    }

    /// Registers a process that migrated in: the job its tag names, or a new job if it was
    /// not one (a process moved with `ferry migrate`).
    pub fn adopt(&self, pid: i32, tag: Option<&str>, from: &str, comm: &str) -> String {
        let tag = match tag.and_then(|t| serde_json::from_str::<JobTag>(t).ok()) {
            Some(mut t) => {
                t.hops += 1;
                t
            }
            None => JobTag {
                id: self.new_id(),
                origin: from.to_string(),
                command: comm.to_string(),
                started_ms: now_ms(),
                cpu_before_ms: 0,
                hops: 1,
                stdout: String::new(),
                stderr: String::new(),
            },
        };
        let id = tag.id.clone();
        info!(job = %id, pid, from, "job arrived");
        self.lock().push(Job {
            tag,
            pid,
            arrived: Some(Instant::now()),
            ended: None,
            moving: false,
            cpu_seen_ms: 0,
            mobility: None,
        });
        id
    }

    /// Job process `pid` ended with `status`, after using `cpu` here (if known).
    pub fn ended(&self, pid: i32, status: ExitStatus, cpu: Option<Duration>) {
        let mut jobs = self.lock();
        // A job that is moving ends here as the source copy of a migration: not its end.
        if let Some(j) = jobs
            .iter_mut()
            .find(|j| j.pid == pid && j.ended.is_none() && !j.moving)
        {
            info!(job = %j.tag.id, pid, status = %status_text(&status), "job ended");
            j.ended = Some((now_ms(), status));
            if let Some(cpu) = cpu {
                j.cpu_seen_ms = j.cpu_seen_ms.max(cpu.as_millis() as u64);
            }
        }
        let cutoff = now_ms().saturating_sub(KEEP_ENDED.as_millis() as u64);
        jobs.retain(|j| j.ended.is_none_or(|(t, _)| t >= cutoff));
    }

    /// The tag to send with job process `pid` when it migrates (its CPU time so far
    /// included), and marks it as moving. `None` if `pid` is no job of this node.
    pub fn begin_move(&self, pid: i32) -> Option<String> {
        let mut jobs = self.lock();
        let j = jobs
            .iter_mut()
            .find(|j| j.pid == pid && j.ended.is_none())?;
        j.moving = true;
        let mut tag = j.tag.clone();
        tag.cpu_before_ms += own_cpu_ms(pid);
        serde_json::to_string(&tag).ok()
    }

    /// The migration of job process `pid` ended: it left (`moved`), or it stays here.
    pub fn end_move(&self, pid: i32, moved: bool) {
        let mut jobs = self.lock();
        if moved {
            jobs.retain(|j| !(j.pid == pid && j.moving));
        } else if let Some(j) = jobs.iter_mut().find(|j| j.pid == pid) {
            j.moving = false;
        }
    }

    /// Number of live jobs.
    pub fn running(&self) -> u32 {
        self.lock().iter().filter(|j| j.ended.is_none()).count() as u32
    }

    fn mobility(&self, job: &mut Job) -> Option<String> {
        if let Some((t, verdict)) = &job.mobility
            && t.elapsed() < MOBILITY_TTL
        {
            return verdict.clone();
        }
        let pid = Pid::from_raw(job.pid);
        // A job with children moves with them (a tree): what it shares with them is fine.
        let verdict = ferry_checkpoint::mobility::preflight(pid)
            .and_then(|()| {
                let opts = ferry_checkpoint::MobilityOptions {
                    links: self
                        .messages
                        .get()
                        .map(|m| m.links_of(job.pid).into_iter().map(|(_, fd)| fd).collect())
                        .unwrap_or_default(),
                    tree: ferry_checkpoint::mobility::descendants(pid),
                    ..Default::default()
                };
                ferry_checkpoint::mobility::check_resources(pid, &opts)
            })
            .err()
            .map(|e| match e {
                ferry_checkpoint::CheckpointError::NotMigratable { reason, .. } => reason,
                other => other.to_string(),
            });
        job.mobility = Some((Instant::now(), verdict.clone()));
        verdict
    }

    fn describe(&self, j: &mut Job) -> JobInfo {
        let (cpu, state) = match &j.ended {
            Some((_, s)) => (Duration::from_millis(j.cpu_seen_ms), status_text(s)),
            None => match ferry_sys::proc::stat(Pid::from_raw(j.pid)) {
                Ok(st) => {
                    let cpu = ferry_sys::load::cpu_time(&st);
                    let state = if j.moving {
                        "moving".to_string()
                    } else {
                        match st.state {
                            'R' => "running".into(),
                            'S' | 'D' | 'I' => "sleeping".into(),
                            'T' | 't' => "stopped".into(),
                            'Z' => "exiting".into(),
                            c => c.to_string(),
                        }
                    };
                    (cpu, state)
                }
                Err(_) => (Duration::from_millis(j.cpu_seen_ms), "gone".into()),
            },
        };
        j.cpu_seen_ms = j.cpu_seen_ms.max(cpu.as_millis() as u64);
        JobInfo {
            id: j.tag.id.clone(),
            node: self.node.clone(),
            pid: j.pid,
            origin: j.tag.origin.clone(),
            command: j.tag.command.clone(),
            started_ms: j.tag.started_ms,
            cpu_ms: j.tag.cpu_before_ms + cpu.as_millis() as u64,
            state,
            immobile: match j.ended {
                None => j.mobility.as_ref().and_then(|(_, v)| v.clone()),
                Some(_) => None,
            },
            hops: j.tag.hops,
            stdout: j.tag.stdout.clone(),
            stderr: j.tag.stderr.clone(),
            ended_ms: j.ended.map(|(t, _)| t),
            exit_code: j.ended.map(|(_, s)| s.shell_code()),
        }
    }

    /// Every job here, described now (mobility re-checked when older than 2 s).
    pub fn snapshot(&self) -> Vec<JobInfo> {
        let mut jobs = self.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs.iter_mut() {
            if j.ended.is_none() && !j.moving {
                let _ = self.mobility(j);
            }
            out.push(self.describe(j));
        }
        out
    }

    /// Live jobs as the balancer weighs them, with their pid and where they were submitted.
    pub fn candidates(&self) -> Vec<(Candidate, i32, String)> {
        let now = now_ms();
        let mut jobs = self.lock();
        let mut out = Vec::new();
        for j in jobs.iter_mut() {
            if j.ended.is_some() || j.moving {
                continue;
            }
            let immobile = self.mobility(j);
            let (cpu, runnable) =
                ferry_sys::load::cpu_usage(Pid::from_raw(j.pid)).unwrap_or_default();
            out.push((
                Candidate {
                    id: j.tag.id.clone(),
                    age: Duration::from_millis(now.saturating_sub(j.tag.started_ms)),
                    cpu: cpu + Duration::from_millis(j.tag.cpu_before_ms),
                    runnable,
                    mobile: immobile.is_none(),
                    since_arrival: j.arrived.map(|a| a.elapsed()),
                },
                j.pid,
                j.tag.origin.clone(),
            ));
        }
        out
    }
}

fn own_cpu_ms(pid: i32) -> u64 {
    ferry_sys::load::cpu_usage(Pid::from_raw(pid))
        .map(|(c, _)| c.as_millis() as u64)
        .unwrap_or(0)
}

/// Reaps job process `pid` (a child of the daemon) when it ends and records how.
pub fn watch(jobs: std::sync::Arc<Jobs>, pid: i32) {
    tokio::spawn(async move {
        let p = Pid::from_raw(pid);
        ferry_sys::aio::exited(p).await;
        // A zombie still shows its CPU time; read it before reaping.
        let cpu = ferry_sys::load::cpu_usage(p).ok().map(|(c, _)| c);
        // The pidfd turns readable at exit; the zombie is there to reap right after.
        for _ in 0..50 {
            match ferry_sys::host::try_reap(p) {
                Ok(Some(status)) => {
                    jobs.ended(pid, status, cpu);
                    return;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => return,
            }
        }
    });
}

/// Merges the jobs of every node's view: one entry per id, the one with the most hops (the
/// newest location); at the same hop an ended record wins (it is newer than a live one).
pub fn merge(lists: impl IntoIterator<Item = JobInfo>) -> Vec<JobInfo> {
    let mut by_id: HashMap<String, JobInfo> = HashMap::new();
    for j in lists {
        let better = match by_id.get(&j.id) {
            None => true,
            Some(old) => (j.hops, j.ended_ms.is_some()) > (old.hops, old.ended_ms.is_some()),
        };
        if better {
            by_id.insert(j.id.clone(), j);
        }
    }
    let mut out: Vec<JobInfo> = by_id.into_values().collect();
    out.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(id: &str, node: &str, hops: u32, ended: Option<u64>) -> JobInfo {
        JobInfo {
            id: id.into(),
            node: node.into(),
            pid: 1,
            origin: "n1".into(),
            command: "x".into(),
            started_ms: 5,
            cpu_ms: 0,
            state: "running".into(),
            immobile: None,
            hops,
            stdout: String::new(),
            stderr: String::new(),
            ended_ms: ended,
            exit_code: ended.map(|_| 0),
        }
    }

    #[test]
    fn merge_keeps_the_newest_location() {
        // n1 still lists it (stale gossip) after it moved to n2, then it ended on n2.
        let m = merge(vec![
            info("n1.1", "n1", 0, None),
            info("n1.1", "n2", 1, None),
            info("n1.2", "n3", 2, None),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].node, "n2");
        let m = merge(vec![
            info("n1.1", "n2", 1, Some(9)),
            info("n1.1", "n2", 1, None),
        ]);
        assert_eq!(m[0].ended_ms, Some(9));
        let m = merge(vec![
            info("n1.1", "n2", 1, None),
            info("n1.1", "n1", 0, Some(3)),
        ]);
        assert_eq!(
            m[0].node, "n2",
            "an ended record of an older hop is the source copy"
        );
    }

    #[test]
    fn ids_continue_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Jobs::new("n4", dir.path());
        assert_eq!(a.new_id(), "n4.1");
        assert_eq!(a.new_id(), "n4.2");
        let b = Jobs::new("n4", dir.path());
        assert_eq!(b.new_id(), "n4.3");
    }

    #[test]
    fn check_names_what_is_missing() {
        let spec = |argv: &[&str], cwd: &str, out: Option<&str>| RunSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            uid: 0,
            gid: 0,
            stdout: out.map(str::to_string),
            stderr: None,
        };
        Jobs::check(&spec(&["sh"], "/", None)).unwrap();
        let e = Jobs::check(&spec(&["sh"], "/nonexistent-dir", None)).unwrap_err();
        assert!(
            e.contains("/nonexistent-dir") && e.contains("shared"),
            "{e}"
        );
        let e = Jobs::check(&spec(&["no-such-program"], "/", None)).unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
        let e = Jobs::check(&spec(&["./nope"], "/", None)).unwrap_err();
        assert!(e.contains("/nope"), "{e}");
        let e = Jobs::check(&spec(&["sh"], "/", Some("/nonexistent-dir/out"))).unwrap_err();
        assert!(e.contains("/nonexistent-dir/out"), "{e}");
        assert!(Jobs::check(&spec(&[], "/", None)).is_err());
    }
}
