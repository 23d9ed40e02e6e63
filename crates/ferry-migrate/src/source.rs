//! The source side of a migration: offer, freeze, send, commit, then serve what the new host
//! still needs until it needs nothing.
//!
//! ```text
//!  Offer ─▶ Accept ─▶ [pre-copy rounds] ─▶ freeze (excise) ─▶ State + pages ─▶ Ready
//!    │ Reject: next target                                        │ Abort / error / timeout:
//!    ▼                                                            ▼   resume here, next target
//!  (all refused: Rejected)                                    Commit ─▶ Started: running there
//!                                        [lazy: faults, stream, store flush] ─▶ release (kill)
//! ```
//!
//! The frozen process lives on a thread of its own (ptrace); its pages are read from other
//! threads with `process_vm_readv`. Before `Commit` every failure resumes the process here;
//! after it, ferry never resumes it on its own (see `protocol`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_checkpoint::mobility::LinkFd;
use ferry_checkpoint::pagecopy::Segment;
use ferry_checkpoint::{CheckpointError, Excised, MobilityOptions};
use ferry_image::{Backing, PAGE_SIZE, ProcessImage, TreeImage};
use ferry_sys::dirty::{DirtyTracker, UffdWpTracker};
use ferry_sys::{Pid, mem};
use ferry_wire::{ClusterSecret, Connection, Mode, Received, Receiver, Role, Sender};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, error, info, warn};

use crate::hot::hot_pages;
use crate::pages::PageMap;
use crate::pinned::Pinned;
use crate::protocol::{self, Offer, PROTOCOL, State, ToDest, ToSource, tag};
use crate::report::{Algorithm, MigrationReport, Timeline};
use crate::store::PageStore;

mod tree;

/// How the source behaves.
#[derive(Clone)]
pub struct SourceConfig {
    pub node: String,
    pub secret: ClusterSecret,
    /// Encrypt the page streams (control traffic always is).
    pub encrypt_pages: bool,
    /// The page store (file-server, freeze-free).
    pub store: Option<PageStore>,
    pub precopy: PreCopyLimits,
    /// How long to wait for any answer of the destination.
    pub timeout: Duration,
}

/// When pre-copy stops copying and freezes.
#[derive(Debug, Clone, Copy)]
pub struct PreCopyLimits {
    pub max_rounds: u32,
    /// Freeze once a round finds less than this many dirty bytes.
    pub stop_below: u64,
}

impl Default for PreCopyLimits {
    fn default() -> Self {
        PreCopyLimits {
            max_rounds: 30,
            stop_below: 2 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// What the caller hears while a migration runs.
#[derive(Debug, Clone)]
pub enum Update {
    Progress {
        phase: String,
        done: u64,
        total: u64,
    },
    /// The process is stopped and captured (its freeze window began).
    Frozen,
    /// The destination was told to start the process (it runs there from now on, unless a
    /// failure follows).
    Committed { to: String },
    /// The process runs at the destination (residual figures may still be open).
    Running(Box<MigrationReport>),
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("not migratable: {0}")]
    NotMigratable(String),
    #[error("{}", rejected_text(.0))]
    Rejected(Vec<(String, String)>),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Failed(String),
}

fn rejected_text(r: &[(String, String)]) -> String {
    let parts: Vec<String> = r.iter().map(|(n, why)| format!("{n}: {why}")).collect();
    format!("no destination accepted the process ({})", parts.join("; "))
}

/// Why one attempt at one target ended.
enum Attempt {
    /// The target refused (before anything committed): try the next.
    Rejected(String),
    Fatal(MigrateError),
}

impl From<MigrateError> for Attempt {
    fn from(e: MigrateError) -> Attempt {
        Attempt::Fatal(e)
    }
}

fn checkpoint_error(e: CheckpointError) -> MigrateError {
    match e {
        CheckpointError::NotMigratable { reason, .. } => MigrateError::NotMigratable(reason),
        CheckpointError::PermissionDenied { detail, .. } => MigrateError::PermissionDenied(detail),
        other => MigrateError::Failed(other.to_string()),
    }
}

/// A unique name for one migration.
pub fn migration_id(node: &str, pid: i32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{node}-{pid}-{:x}", nanos & 0xffff_ffff_ffff)
}

/// Moves `pid` to the first of `targets` that accepts it, with `algorithm`. Returns the final
/// report once nothing is needed from this host any more; `updates` hears progress and, as
/// soon as the process runs there, [`Update::Running`]. `tag` travels with the offer to the
/// destination's [`crate::dest::DestEvent::Started`]. `links`: the process's connections to
/// the daemon's message service, re-created at the destination.
pub async fn migrate_out(
    cfg: Arc<SourceConfig>,
    pid: i32,
    targets: Vec<Target>,
    algorithm: Algorithm,
    tag: Option<String>,
    links: Vec<LinkFd>,
    updates: mpsc::UnboundedSender<Update>,
) -> Result<MigrationReport, MigrateError> {
    let t0 = Instant::now();
    let id = migration_id(&cfg.node, pid);
    if algorithm.uses_store() && cfg.store.is_none() {
        return Err(MigrateError::Failed(format!(
            "{algorithm} needs a page store: configure page_store for this daemon"
        )));
    }
    let mut timeline = Timeline::new();
    let offer = make_offer(&cfg, &id, pid, algorithm, tag, &links)?;
    timeline.mark("offer");
    let mut rejected = Vec::new();
    for target in &targets {
        let run = Run {
            cfg: Arc::clone(&cfg),
            id: id.clone(),
            pid,
            target: target.clone(),
            algorithm,
            t0,
            updates: updates.clone(),
            rejected_before: rejected.clone(),
            links: links.clone(),
        };
        let attempt = if offer.processes > 1 {
            run.attempt_tree(&offer, &mut timeline).await
        } else {
            run.attempt(&offer, &mut timeline).await
        };
        match attempt {
            Ok(report) => return Ok(report),
            Err(Attempt::Rejected(reason)) => {
                info!(migration = %id, target = %target.name, %reason, "refused");
                rejected.push((target.name.clone(), reason));
            }
            Err(Attempt::Fatal(e)) => return Err(e),
        }
    }
    Err(MigrateError::Rejected(rejected))
}

/// What the destination must know before it accepts: checked while the process still runs.
/// A process with children offers its whole tree (every descendant moves with it).
fn make_offer(
    cfg: &SourceConfig,
    id: &str,
    pid: i32,
    algorithm: Algorithm,
    tag: Option<String>,
    links: &[LinkFd],
) -> Result<Offer, MigrateError> {
    let p = Pid::from_raw(pid);
    ferry_checkpoint::mobility::preflight(p).map_err(checkpoint_error)?;
    let members = ferry_checkpoint::mobility::descendants(p);
    let mut opts = MobilityOptions {
        links: links.to_vec(),
        tree: members.clone(),
        ..Default::default()
    };
    ferry_checkpoint::mobility::check_resources(p, &opts).map_err(checkpoint_error)?;
    opts.links.clear();
    let status = ferry_sys::proc::status(p).map_err(|e| MigrateError::Failed(e.to_string()))?;
    let mut memory_bytes = 0;
    let mut files: Vec<String> = Vec::new();
    for (i, &member) in std::iter::once(&p).chain(&members).enumerate() {
        if i > 0 {
            // Checked again, whole, once the tree is frozen; a member that ends meanwhile is
            // no reason to refuse.
            opts.tree = std::iter::once(p)
                .chain(members.iter().copied())
                .filter(|&m| m != member)
                .collect();
            match ferry_checkpoint::mobility::check_resources(member, &opts) {
                Err(CheckpointError::NotMigratable { reason, .. }) => {
                    return Err(MigrateError::NotMigratable(format!(
                        "process {member} of its tree: {reason}"
                    )));
                }
                Err(e) => debug!(pid = member.as_raw(), error = %e, "a member of the tree"),
                Ok(()) => {}
            }
        }
        if let Ok(s) = ferry_sys::proc::status(member) {
            memory_bytes += (s.rssanon.unwrap_or(0) + s.rssshmem.unwrap_or(0)) * 1024;
        }
        needed_files(member, &mut files);
    }
    files.sort();
    files.dedup();
    let platform = ferry_checkpoint::platform::host_platform()
        .map_err(|e| MigrateError::Failed(format!("fingerprinting this host: {e}")))?;
    Ok(Offer {
        protocol: PROTOCOL,
        migration: id.to_string(),
        from: cfg.node.clone(),
        algorithm,
        comm: status.name.clone(),
        pid,
        uid: status.ruid,
        memory_bytes,
        files,
        platform,
        tag,
        processes: 1 + members.len() as u32,
    })
}

/// Files `pid` has open or mapped, which the destination must have (a memfd's or deleted
/// file's contents travel in the image; a deleted file needs its directory).
fn needed_files(pid: Pid, files: &mut Vec<String>) {
    if let Ok(fds) = ferry_sys::proc::open_fds(pid) {
        for fd in fds.iter().filter(|f| f.target.starts_with(b"/")) {
            let target = String::from_utf8_lossy(&fd.target);
            if target.starts_with("/memfd:") {
                continue;
            }
            match target.strip_suffix(" (deleted)") {
                Some(gone) => files.push(match gone.rfind('/') {
                    Some(0) | None => "/".to_string(),
                    Some(slash) => gone[..slash].to_string(),
                }),
                None => files.push(target.into_owned()),
            }
        }
    }
    if let Ok(maps) = ferry_sys::proc::read_maps(pid) {
        files.extend(
            maps.iter()
                .filter(|m| m.path.starts_with(b"/") && !m.path.ends_with(b" (deleted)"))
                .map(|m| String::from_utf8_lossy(&m.path).into_owned()),
        );
    }
}

/// The frozen process, on its own thread.
type FrozenProc = Pinned<Excised>;

/// One process's connections to the destination, and its figures so far.
struct Flow {
    ctl_tx: Sender,
    ctl_rx: Receiver,
    pages: Sender,
    report: MigrationReport,
    precopy: Option<PreCopy>,
}

/// How a flow introduces itself to the destination.
enum Hello<'a> {
    /// A process, or a tree's root: the offer (freeze-free sends it with the state).
    Offer(&'a Offer),
    /// Another process of the tree migration `tree` (whose root made the offer).
    Member { tree: &'a str },
}

/// Why a commit did not end with the process running at the destination.
enum Uncommitted {
    /// It never will start there: the process may resume here.
    NotStarted(String),
    /// Nobody knows: it must stay frozen here.
    Unknown(MigrateError),
}

/// From here on the processes must never resume here unless the destination says it did
/// not start them. A pending SIGSTOP makes that hold even if this daemon dies: the kernel
/// then detaches each frozen process, which stops instead of running a second copy.
fn stop_for_commit(pids: &[i32]) {
    for &pid in pids {
        let _ = ferry_sys::host::send_signal(Pid::from_raw(pid), ferry_sys::libc::SIGSTOP);
    }
}

/// Undoes [`stop_for_commit`]: SIGCONT discards the pending SIGSTOP.
fn resume_after_commit(pids: &[i32]) {
    for &pid in pids {
        let _ = ferry_sys::host::send_signal(Pid::from_raw(pid), ferry_sys::libc::SIGCONT);
    }
}

struct Run {
    cfg: Arc<SourceConfig>,
    id: String,
    pid: i32,
    target: Target,
    algorithm: Algorithm,
    t0: Instant,
    updates: mpsc::UnboundedSender<Update>,
    /// Targets that refused before this one (in every report of this migration).
    rejected_before: Vec<(String, String)>,
    links: Vec<LinkFd>,
}

/// The control connection's sending half, shared by the tasks that answer faults and report
/// flushing.
type Control = Arc<Mutex<Sender>>;

impl Run {
    fn progress(&self, phase: &str, done: u64, total: u64) {
        let _ = self.updates.send(Update::Progress {
            phase: phase.to_string(),
            done,
            total,
        });
    }

    async fn connect(&self, role: Role, encrypted: bool) -> Result<Connection, Attempt> {
        let mode = if encrypted {
            Mode::Encrypted
        } else {
            Mode::Plain
        };
        Connection::connect(
            self.target.addr,
            &self.cfg.secret,
            role,
            mode,
            &self.cfg.node,
            self.cfg.timeout,
        )
        .await
        .map_err(|e| Attempt::Rejected(format!("unreachable: {e}")))
    }

    async fn recv(&self, rx: &mut Receiver, what: &str) -> Result<ToSource, Attempt> {
        match tokio::time::timeout(self.cfg.timeout, rx.recv_msg::<ToSource>()).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(Attempt::Rejected(format!(
                "lost while waiting for {what}: {e}"
            ))),
            Err(_) => Err(Attempt::Rejected(format!(
                "no answer within {:?} while waiting for {what}",
                self.cfg.timeout
            ))),
        }
    }

    async fn attempt(&self, offer: &Offer, tl: &mut Timeline) -> Result<MigrationReport, Attempt> {
        let mut flow = self.open(Hello::Offer(offer), tl).await?;

        // Pre-copy: copy while the process runs.
        if self.algorithm == Algorithm::PreCopy {
            flow.precopy = Some(self.precopy(&mut flow.pages, &mut flow.report).await?);
        }

        // Freeze.
        self.progress("freezing", 0, 0);
        let freeze_at = Instant::now();
        let pid = Pid::from_raw(self.pid);
        let opts = MobilityOptions {
            own_write_protect: flow.precopy.is_some(),
            links: self.links.clone(),
            ..MobilityOptions::default()
        };
        let frozen: FrozenProc =
            // The offer ran the mobility checks a moment ago; the capture checks again, frozen.
            Pinned::spawn("ferry-source", move || {
                ferry_checkpoint::capture::excise_checked_before(pid, opts)
            })
                .await
                .map_err(|e| Attempt::Fatal(MigrateError::Failed(e.to_string())))?
                .map_err(|e| Attempt::Fatal(checkpoint_error(e)))?;
        let (image, segments, excision) = frozen
            .call(|e| {
                let e = e.as_ref().expect("excised");
                (e.image.clone(), e.segments.clone(), e.stats.excision)
            })
            .await
            .map_err(|e| Attempt::Fatal(MigrateError::Failed(e.to_string())))?;
        flow.report.excision_ms = ms(excision);
        let _ = self.updates.send(Update::Frozen);
        tl.mark("freeze + excise");

        // Until `Commit`, any failure resumes the process here (dropping `frozen`).
        let eager = self.eager_pages(flow.precopy.as_mut(), &image, &segments)?;
        self.send_state(&mut flow, &image, None, &eager, offer)
            .await?;
        self.send_eager(&mut flow, &eager, &segments).await?;
        tl.mark("send state + first pages");
        self.await_ready(&mut flow).await?;
        tl.mark("destination ready");

        let (started, frozen) = self.commit_frozen(&mut flow, &[self.pid], frozen).await?;
        tl.mark("commit → started");
        debug!(migration = %self.id, timeline = %tl, "source timeline");
        self.running(&mut flow.report, started, freeze_at);
        // It never runs here again: the FIFOs it shares with its copy (by path) are the copy's.
        let released = frozen
            .call(|e| e.as_mut().map(|e| e.frozen.release_fifos()))
            .await;
        if let Ok(Some(Err(e))) = released {
            warn!(migration = %self.id, error = %e, "closing the frozen copy's FIFOs");
        }

        let served = self
            .after_start(flow, Arc::new(segments), Arc::new(eager), Arc::new(image))
            .await;
        // Nothing can be needed from here any more (or the lazy phase failed: the process ran
        // at the destination and must never resume here): release the process.
        let _ = frozen.call(|e| e.take().map(|e| e.frozen.kill())).await;
        let mut report = served.map_err(Attempt::Fatal)?;
        report.total_ms = Some(ms(self.t0.elapsed()));
        info!(migration = %self.id, ?report, "migration complete");
        Ok(report)
    }

    /// Connects to the target (control and pages) and introduces the process: its offer,
    /// answered before anything is frozen (freeze-free sends it with the state), or as a
    /// member of a tree already offered.
    async fn open(&self, hello: Hello<'_>, tl: &mut Timeline) -> Result<Flow, Attempt> {
        let control = self.connect(Role::Control, true).await?;
        tl.mark("connect (control)");
        let (mut ctl_tx, mut ctl_rx) = control.into_split();
        match hello {
            Hello::Offer(_) if self.algorithm == Algorithm::FreezeFree => {}
            Hello::Offer(offer) => {
                ctl_tx
                    .send_msg(&ToDest::Offer(Box::new(offer.clone())))
                    .await
                    .map_err(|e| Attempt::Rejected(format!("lost: {e}")))?;
                match self.recv(&mut ctl_rx, "the answer to the offer").await? {
                    ToSource::Accept => {}
                    ToSource::Reject { reason } => return Err(Attempt::Rejected(reason)),
                    other => {
                        return Err(Attempt::Rejected(format!("unexpected answer {other:?}")));
                    }
                }
            }
            Hello::Member { tree } => ctl_tx
                .send_msg(&ToDest::Member {
                    tree: tree.to_string(),
                    migration: self.id.clone(),
                })
                .await
                .map_err(|e| Attempt::Rejected(format!("lost: {e}")))?,
        }
        let pages_conn = self.connect(Role::Pages, self.cfg.encrypt_pages).await?;
        tl.mark("connect (pages)");
        let (mut pages, _pages_rx) = pages_conn.into_split();
        pages
            .send_msg(&ToDest::Attach {
                migration: self.id.clone(),
            })
            .await
            .map_err(|e| Attempt::Rejected(format!("lost: {e}")))?;
        let report = MigrationReport {
            id: self.id.clone(),
            algorithm: Some(self.algorithm),
            from: self.cfg.node.clone(),
            to: self.target.name.clone(),
            pid: self.pid,
            processes: 1,
            rejected: self.rejected_before.clone(),
            ..MigrationReport::default()
        };
        Ok(Flow {
            ctl_tx,
            ctl_rx,
            pages,
            report,
            precopy: None,
        })
    }

    /// The pages that go with the state (the others follow, or are fetched, as the algorithm
    /// says).
    fn eager_pages(
        &self,
        precopy: Option<&mut PreCopy>,
        image: &ProcessImage,
        segments: &[Segment],
    ) -> Result<Vec<(u64, u64)>, Attempt> {
        let map = PageMap::new(&image.memory.pages.runs);
        Ok(match (self.algorithm, precopy) {
            (Algorithm::PreCopy, Some(tracked)) => {
                tracked.final_pages(segments).map_err(Attempt::Fatal)?
            }
            // Pre-copy of a process that did not exist before the freeze, and total copy.
            (Algorithm::TotalCopy | Algorithm::PreCopy, _) => {
                segments.iter().map(|s| (s.addr, s.len)).collect()
            }
            (Algorithm::DemandPaging | Algorithm::FileServer, _) => {
                let mut e = not_faultable(image, segments);
                e.extend(touched_at_start(image, &map));
                merge_runs(e)
            }
            (Algorithm::FreezeFree, _) => {
                let mut hot: Vec<(u64, u64)> = hot_pages(image, &map)
                    .into_iter()
                    .filter_map(|off| map.addr_at(off).map(|a| (a, PAGE_SIZE)))
                    .collect();
                hot.extend(not_faultable(image, segments));
                hot.extend(touched_at_start(image, &map));
                merge_runs(hot)
            }
        })
    }

    /// Sends the frozen process's state (with a tree's manifest, for its root), and marks
    /// the end of the pre-copy rounds on the pages connection.
    async fn send_state(
        &self,
        flow: &mut Flow,
        image: &ProcessImage,
        tree: Option<TreeImage>,
        eager: &[(u64, u64)],
        offer: &Offer,
    ) -> Result<(), Attempt> {
        let state = State {
            migration: self.id.clone(),
            algorithm: self.algorithm,
            image: image.clone(),
            tree,
            eager_bytes: eager.iter().map(|r| r.1).sum(),
            offer: (self.algorithm == Algorithm::FreezeFree && flow.report.pid == offer.pid)
                .then(|| offer.clone()),
            store: self.cfg.store.as_ref().map(PageStore::describe),
        };
        flow.report.state_bytes = postcard_len(&state);
        flow.report.threads = image.threads.len() as u32 + 1;
        flow.report.ids_kept = image.pid_namespace.is_some();
        flow.ctl_tx
            .send_msg(&ToDest::State(Box::new(state)))
            .await
            .map_err(|e| Attempt::Rejected(format!("lost sending the state: {e}")))?;
        flow.pages
            .send_msg(&ToDest::Final)
            .await
            .map_err(|e| Attempt::Rejected(format!("lost: {e}")))
    }

    /// Sends the pages that go with the state, then `PagesEnd`.
    async fn send_eager(
        &self,
        flow: &mut Flow,
        eager: &[(u64, u64)],
        segments: &[Segment],
    ) -> Result<(), Attempt> {
        let phase = match self.algorithm {
            Algorithm::TotalCopy => "copying memory",
            Algorithm::PreCopy => "copying the last dirty pages",
            _ => "sending the first pages",
        };
        let sent = self
            .send_pages(&mut flow.pages, eager, segments, phase)
            .await
            .map_err(|e| Attempt::Rejected(format!("lost sending pages: {e}")))?;
        flow.pages
            .send_msg(&ToDest::PagesEnd { bytes: sent })
            .await
            .map_err(|e| Attempt::Rejected(format!("lost: {e}")))?;
        match self.algorithm {
            Algorithm::PreCopy => flow.report.resent_bytes += sent,
            _ => flow.report.page_bytes += sent,
        }
        Ok(())
    }

    /// Waits until the destination built the process (stopped, waiting for `Commit`).
    async fn await_ready(&self, flow: &mut Flow) -> Result<(), Attempt> {
        self.progress("waiting for the destination", 0, 0);
        match self
            .recv(&mut flow.ctl_rx, "the destination to be ready")
            .await?
        {
            ToSource::Ready { insertion_ms } => {
                flow.report.insertion_ms = insertion_ms;
                Ok(())
            }
            ToSource::Abort { reason } | ToSource::Reject { reason } => {
                Err(Attempt::Rejected(reason))
            }
            other => Err(Attempt::Rejected(format!("unexpected answer {other:?}"))),
        }
    }

    /// Tells the destination to start the process (for a tree: every process) and returns
    /// its pid there. The caller stopped the process ([`stop_for_commit`]) before.
    async fn commit(&self, flow: &mut Flow) -> Result<i32, Uncommitted> {
        let sent_commit = flow.ctl_tx.send_msg(&ToDest::Commit).await;
        if sent_commit.is_ok() {
            let _ = self.updates.send(Update::Committed {
                to: self.target.name.clone(),
            });
        }
        let answer = match sent_commit {
            Ok(()) => tokio::time::timeout(self.cfg.timeout, flow.ctl_rx.recv_msg::<ToSource>())
                .await
                .ok(),
            Err(_) => None,
        };
        match answer {
            Some(Ok(ToSource::Started { pid })) => Ok(pid),
            other => {
                warn!(migration = %self.id, ?other, "no Started after Commit; asking again");
                match self.query_outcome().await {
                    Ok(Some(pid)) => Ok(pid),
                    Ok(None) => Err(Uncommitted::NotStarted(
                        "the destination lost the process before starting it".into(),
                    )),
                    Err(e) => Err(Uncommitted::Unknown(e)),
                }
            }
        }
    }

    /// Stops `pids` ([`stop_for_commit`]), commits on `flow` and returns the pid there, with
    /// `frozen` back. If it will never start there, the processes resume here (`frozen`
    /// dropped); if nobody knows, they stay frozen (`frozen` and its thread forgotten) rather
    /// than risk two running copies: an operator decides.
    async fn commit_frozen<S>(
        &self,
        flow: &mut Flow,
        pids: &[i32],
        frozen: Pinned<S>,
    ) -> Result<(i32, Pinned<S>), Attempt> {
        stop_for_commit(pids);
        match self.commit(flow).await {
            Ok(pid) => Ok((pid, frozen)),
            Err(Uncommitted::NotStarted(why)) => {
                resume_after_commit(pids);
                drop(frozen);
                Err(Attempt::Rejected(why))
            }
            Err(Uncommitted::Unknown(e)) => {
                std::mem::forget(frozen);
                Err(Attempt::Fatal(e))
            }
        }
    }

    /// Figures of a process that now runs at the destination as `started`.
    fn running(&self, report: &mut MigrationReport, started: i32, freeze_at: Instant) {
        report.new_pid = started;
        report.latency_ms = ms(self.t0.elapsed());
        report.freeze_ms = ms(freeze_at.elapsed());
        info!(migration = %self.id, to = %self.target.name, pid = started, latency_ms = report.latency_ms, "running at the destination");
        let _ = self.updates.send(Update::Running(Box::new(report.clone())));
    }

    /// What the destination still needs from here once the process runs there; returns the
    /// flow's report. A failure means the process ran there but may have lost its memory.
    async fn after_start(
        &self,
        mut flow: Flow,
        segments: Arc<Vec<Segment>>,
        eager: Arc<Vec<(u64, u64)>>,
        image: Arc<ProcessImage>,
    ) -> Result<MigrationReport, MigrateError> {
        let running_at = Instant::now();
        if let Some(p) = flow.precopy.take() {
            p.stop();
        }
        let mut report = flow.report;
        if !self.algorithm.lazy() {
            report.residual_ms = Some(0.0);
            return Ok(report);
        }
        let control: Control = Arc::new(Mutex::new(flow.ctl_tx));
        let served = self
            .serve(
                &control,
                &mut flow.ctl_rx,
                flow.pages,
                &segments,
                &eager,
                &image,
                &mut report,
            )
            .await;
        if let Err(e) = served {
            let err = match e {
                Attempt::Rejected(why) => MigrateError::Failed(format!(
                    "the process ran at {}, but serving its memory from here failed: {why}",
                    self.target.name
                )),
                Attempt::Fatal(e) => e,
            };
            error!(migration = %self.id, error = %err, "the lazy phase failed; ending the frozen copy here");
            return Err(err);
        }
        report.residual_ms = Some(ms(running_at.elapsed()));
        Ok(report)
    }

    /// After a broken link right after `Commit`: reconnect and ask whether it started
    /// (`Some(pid)`) or was dropped (`None`, it never will start).
    async fn query_outcome(&self) -> Result<Option<i32>, MigrateError> {
        for attempt in 0..30 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Ok(conn) = self.connect(Role::Control, true).await else {
                continue;
            };
            let (mut tx, mut rx) = conn.into_split();
            if tx
                .send_msg(&ToDest::Query {
                    migration: self.id.clone(),
                })
                .await
                .is_err()
            {
                continue;
            }
            match tokio::time::timeout(self.cfg.timeout, rx.recv_msg::<ToSource>()).await {
                Ok(Ok(ToSource::Outcome(protocol::Outcome::Started { pid }))) => {
                    return Ok(Some(pid));
                }
                Ok(Ok(ToSource::Outcome(protocol::Outcome::NotStarted))) => return Ok(None),
                // Pending, or no answer: ask again.
                _ => {}
            }
        }
        Err(MigrateError::Failed(format!(
            "committed to {}, which then became unreachable: the process stays frozen here \
             (pid {}) until the outcome is known, so that it never runs twice",
            self.target.name, self.pid
        )))
    }

    /// Reads `ranges` from the (frozen or running) process and sends them as page frames.
    async fn send_pages(
        &self,
        pages: &mut Sender,
        ranges: &[(u64, u64)],
        segments: &[Segment],
        phase: &str,
    ) -> Result<u64, String> {
        self.send_pages_from(pages, ranges, segments, phase, None)
            .await
    }

    /// [`Run::send_pages`] from a process that runs (pre-copy's rounds): a range it unmapped
    /// meanwhile is not sent but added to `gone` (the final step sends whatever of it is
    /// there again).
    async fn send_running_pages(
        &self,
        pages: &mut Sender,
        ranges: &[(u64, u64)],
        phase: &str,
        gone: &mut Vec<(u64, u64)>,
    ) -> Result<u64, String> {
        self.send_pages_from(pages, ranges, &[], phase, Some(gone))
            .await
    }

    async fn send_pages_from(
        &self,
        pages: &mut Sender,
        ranges: &[(u64, u64)],
        segments: &[Segment],
        phase: &str,
        mut gone: Option<&mut Vec<(u64, u64)>>,
    ) -> Result<u64, String> {
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let pid = Pid::from_raw(self.pid);
        let unreadable: Vec<(u64, u64)> = segments
            .iter()
            .filter(|s| !s.readable)
            .map(|s| (s.addr, s.addr + s.len))
            .collect();
        let mut sent = 0u64;
        for chunk in chunks(ranges, CHUNK) {
            let unreadable = unreadable.clone();
            let lenient = gone.is_some();
            let read =
                tokio::task::spawn_blocking(move || match read_chunk(pid, &chunk, &unreadable) {
                    // A running process may have unmapped some of it: range by range then.
                    Err(_) if lenient => {
                        let mut read = (Vec::new(), Vec::new());
                        let mut missing = Vec::new();
                        for r in chunk {
                            match read_chunk(pid, &[r], &unreadable) {
                                Ok((_, b)) => {
                                    read.0.push(r);
                                    read.1.extend_from_slice(&b);
                                }
                                Err(_) => missing.push(r),
                            }
                        }
                        Ok((read, missing))
                    }
                    other => other.map(|r| (r, Vec::new())),
                })
                .await
                .map_err(|e| e.to_string())?;
            let ((addr, buf), missing) =
                read.map_err(|e| format!("reading the process's memory: {e}"))?;
            if let Some(gone) = gone.as_mut() {
                gone.extend(missing);
            }
            let mut at = 0usize;
            for &(a, len) in &addr {
                pages
                    .queue_pages(a, tag::STREAM, &buf[at..at + len as usize])
                    .await
                    .map_err(|e| e.to_string())?;
                at += len as usize;
            }
            sent += buf.len() as u64;
            self.progress(phase, sent, total);
        }
        pages.flush().await.map_err(|e| e.to_string())?;
        Ok(sent)
    }

    /// Pre-copy's rounds while the process runs; returns the tracker for the final step.
    async fn precopy(
        &self,
        pages: &mut Sender,
        report: &mut MigrationReport,
    ) -> Result<PreCopy, Attempt> {
        let pid = Pid::from_raw(self.pid);
        let ranges = tracked_ranges(pid).map_err(Attempt::Fatal)?;
        let r2 = ranges.clone();
        // Dirty tracking is set up inside the process: it stops for a moment.
        let mut tracker = tokio::task::spawn_blocking(move || {
            ferry_checkpoint::freeze::borrow(pid, |inj| UffdWpTracker::create_in_tracee(inj, &r2))
        })
        .await
        .map_err(|e| Attempt::Fatal(MigrateError::Failed(e.to_string())))?
        .map_err(|e| Attempt::Fatal(checkpoint_error(e)))?;
        tracker.arm().map_err(|e| {
            Attempt::Fatal(MigrateError::Failed(format!("arming dirty tracking: {e}")))
        })?;
        let mut state = PreCopy {
            tracker: Some(Box::new(tracker)),
            sent: Vec::new(),
            pending: Vec::new(),
            lost: false,
        };
        // Round 0: everything present now.
        let present = present_pages(pid, &ranges).map_err(Attempt::Fatal)?;
        pages
            .send_msg(&ToDest::Round { round: 0 })
            .await
            .map_err(|e| Attempt::Rejected(format!("lost: {e}")))?;
        let mut gone = Vec::new();
        let n = self
            .send_running_pages(pages, &present, "pre-copy round 0", &mut gone)
            .await
            .map_err(|e| Attempt::Rejected(format!("lost sending pages: {e}")))?;
        report.page_bytes += n;
        state.sent = subtract(&present, &gone);
        // Not sent: whatever is there at the freeze goes then.
        state.pending = std::mem::take(&mut gone);
        let mut round = 0u32;
        loop {
            round += 1;
            let mut dirty = Vec::new();
            state
                .tracker
                .as_mut()
                .expect("tracker")
                .take_dirty(&mut dirty)
                .map_err(|e| {
                    Attempt::Fatal(MigrateError::Failed(format!("dirty tracking: {e}")))
                })?;
            let dirty: Vec<(u64, u64)> = dirty.iter().map(|&(s, e)| (s, e - s)).collect();
            let bytes: u64 = dirty.iter().map(|r| r.1).sum();
            debug!(migration = %self.id, round, bytes, "pre-copy round");
            if bytes < self.cfg.precopy.stop_below || round >= self.cfg.precopy.max_rounds {
                // Give these back to the tracker's count: the final step sends them.
                state.pending.extend(dirty);
                break;
            }
            pages
                .send_msg(&ToDest::Round { round })
                .await
                .map_err(|e| Attempt::Rejected(format!("lost: {e}")))?;
            let n = self
                .send_running_pages(pages, &dirty, &format!("pre-copy round {round}"), &mut gone)
                .await
                .map_err(|e| Attempt::Rejected(format!("lost sending pages: {e}")))?;
            report.resent_bytes += n;
            state.pending.append(&mut gone);
        }
        report.precopy_rounds = round;
        Ok(state)
    }

    /// The lazy phase: answer faults, stream the rest, flush to the store, until the
    /// destination needs nothing from here.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        control: &Control,
        ctl_rx: &mut Receiver,
        mut pages: Sender,
        segments: &[Segment],
        eager: &[(u64, u64)],
        image: &ProcessImage,
        report: &mut MigrationReport,
    ) -> Result<(), Attempt> {
        let pid = Pid::from_raw(self.pid);
        let unreadable: Arc<Vec<(u64, u64)>> = Arc::new(
            segments
                .iter()
                .filter(|s| !s.readable)
                .map(|s| (s.addr, s.addr + s.len))
                .collect(),
        );
        let all: Vec<(u64, u64)> = segments.iter().map(|s| (s.addr, s.len)).collect();
        let total: u64 = all.iter().map(|r| r.1).sum();

        // Freeze-free: stream what was not sent eagerly, stack first.
        let stream = if self.algorithm == Algorithm::FreezeFree {
            let rest = stack_first(image, subtract(&all, eager));
            let cfg = self.clone_light();
            let segs = segments.to_vec();
            Some(tokio::spawn(async move {
                let n = cfg
                    .send_pages(&mut pages, &rest, &segs, "streaming memory")
                    .await;
                if n.is_ok() {
                    let _ = pages
                        .send_msg(&ToDest::StreamComplete {
                            bytes: *n.as_ref().unwrap_or(&0),
                        })
                        .await;
                }
                n
            }))
        } else {
            drop(pages);
            None
        };

        // File-server, freeze-free: flush everything to the page store.
        let flush = if self.algorithm.uses_store() {
            let store = self.cfg.store.clone().ok_or_else(|| {
                Attempt::Fatal(MigrateError::Failed("no page store configured".into()))
            })?;
            let control = Arc::clone(control);
            let id = self.id.clone();
            let image_id = image.origin.image_id;
            let unreadable = Arc::clone(&unreadable);
            let updates = self.updates.clone();
            Some(tokio::spawn(async move {
                flush_to_store(
                    pid,
                    &store,
                    &id,
                    image_id,
                    all,
                    &unreadable,
                    &control,
                    total,
                    &updates,
                )
                .await
            }))
        } else {
            None
        };

        // Faults, until the destination says Done (or, after a complete flush, drops us).
        let mut buf = vec![0u8; 64 << 10];
        let result = loop {
            match ctl_rx.recv::<ToSource>(&mut buf).await {
                Ok(Received::Msg(ToSource::Fault { id, addr, pages: n })) => {
                    let len = (n.max(1) as u64 * PAGE_SIZE) as usize;
                    let unreadable = Arc::clone(&unreadable);
                    let data = tokio::task::spawn_blocking(move || {
                        read_chunk(pid, &[(addr, len as u64)], &unreadable)
                    })
                    .await;
                    // A frozen process's memory is always readable; if it is not, the
                    // destination must not get made-up pages.
                    let data = match data {
                        Ok(Ok((_, d))) => d,
                        other => {
                            error!(migration = %self.id, addr, ?other, "cannot read a faulted page");
                            break Err(format!("cannot read the page at {addr:#x}"));
                        }
                    };
                    let mut tx = control.lock().await;
                    if let Err(e) = tx.send_pages(addr, protocol::fault_tag(id), &data).await {
                        break Err(format!("lost the destination: {e}"));
                    }
                }
                Ok(Received::Msg(ToSource::Done { figures })) => {
                    report.remote_faults = figures.remote_faults;
                    report.store_faults = figures.store_faults;
                    break Ok(figures.needs_store);
                }
                Ok(other) => debug!(migration = %self.id, ?other, "ignored during the lazy phase"),
                Err(e) => break Err(format!("lost the destination: {e}")),
            }
        };
        let streamed = match stream {
            Some(h) => h.await.ok().and_then(|r| r.ok()).unwrap_or(0),
            None => 0,
        };
        report.page_bytes += streamed;
        let flushed = match flush {
            Some(h) => match h.await {
                Ok(Ok(bytes)) => Some(bytes),
                Ok(Err(e)) => {
                    warn!(migration = %self.id, error = %e, "flushing to the page store failed: the process depends on this host until it has every page");
                    None
                }
                Err(e) => {
                    warn!(migration = %self.id, error = %e, "flushing to the page store failed");
                    None
                }
            },
            None => None,
        };
        if let Some(bytes) = flushed {
            report.store_bytes = bytes;
        }
        // The destination had every page before it needed the store: what was flushed is
        // nobody's any more.
        if let (Ok(false), Some(store)) = (&result, self.cfg.store.as_ref())
            && self.algorithm.uses_store()
            && let Err(e) = store.remove(&self.id).await
        {
            warn!(migration = %self.id, error = %e, "removing its pages from the store");
        }
        match result {
            Ok(_) => Ok(()),
            // Once every page is in the store, the destination does not need us.
            Err(_) if flushed.is_some() => Ok(()),
            Err(e) => {
                warn!(migration = %self.id, error = %e, "destination lost during the lazy phase");
                Err(Attempt::Fatal(MigrateError::Failed(format!(
                    "the process runs at {} but the link broke before it had all its memory: {e}",
                    self.target.name
                ))))
            }
        }
    }

    fn clone_light(&self) -> Run {
        Run {
            cfg: Arc::clone(&self.cfg),
            id: self.id.clone(),
            pid: self.pid,
            target: self.target.clone(),
            algorithm: self.algorithm,
            t0: self.t0,
            updates: self.updates.clone(),
            rejected_before: self.rejected_before.clone(),
            links: self.links.clone(),
        }
    }
}

/// Pre-copy's tracking state.
struct PreCopy {
    tracker: Option<Box<dyn DirtyTracker>>,
    /// Page ranges (address, length) sent at least once.
    sent: Vec<(u64, u64)>,
    /// Dirty ranges found by the last look, and ranges a round could not read (the process
    /// had unmapped them), not sent yet.
    pending: Vec<(u64, u64)>,
    /// Tracking failed: nothing sent counts as current.
    lost: bool,
}

impl PreCopy {
    /// The pages the frozen process has that the destination lacks or has stale: written since
    /// the last round, or never sent (new mappings, untracked memory).
    fn final_pages(&mut self, segments: &[Segment]) -> Result<Vec<(u64, u64)>, MigrateError> {
        let mut dirty = Vec::new();
        if let Some(t) = self.tracker.as_mut()
            && !self.lost
            && t.take_dirty(&mut dirty).is_err()
        {
            self.sent.clear();
        }
        let mut out: Vec<(u64, u64)> = dirty.iter().map(|&(s, e)| (s, e - s)).collect();
        out.extend(self.pending.iter().copied());
        let all: Vec<(u64, u64)> = segments.iter().map(|s| (s.addr, s.len)).collect();
        out.extend(subtract(&all, &self.sent));
        // Only what the process still has.
        Ok(intersect(&merge_runs(out), &all))
    }

    fn stop(mut self) {
        if let Some(t) = self.tracker.take()
            && let Err(e) = t.stop()
        {
            warn!(error = %e, "stopping dirty tracking");
        }
    }
}

impl Drop for PreCopy {
    fn drop(&mut self) {
        if let Some(t) = self.tracker.take() {
            let _ = t.stop();
        }
    }
}

/// Anonymous private ranges of a running process, for dirty tracking.
fn tracked_ranges(pid: Pid) -> Result<Vec<(u64, u64)>, MigrateError> {
    let maps = ferry_sys::proc::read_maps(pid).map_err(|e| MigrateError::Failed(e.to_string()))?;
    Ok(maps
        .iter()
        .filter(|m| {
            !m.shared
                && (m.path.is_empty() || m.path == b"[heap]" || m.path == b"[stack]")
                && m.write
        })
        .map(|m| (m.start, m.end))
        .collect())
}

/// Present pages of `ranges` of a running process (round 0 of pre-copy).
fn present_pages(pid: Pid, ranges: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, MigrateError> {
    let mut scanner = ferry_sys::pagemap::PageScanner::open(pid)
        .map_err(|e| MigrateError::Failed(e.to_string()))?;
    let mut out = Vec::new();
    for &(s, e) in ranges {
        scanner
            .scan(s, e, ferry_sys::pagemap::Select::Anonymous, &mut out)
            .map_err(|e| MigrateError::Failed(e.to_string()))?;
    }
    Ok(out.into_iter().map(|(s, e)| (s, e - s)).collect())
}

/// Pages that userfaultfd cannot deliver lazily (private file mappings, shared memory): they
/// go with the state.
fn not_faultable(image: &ProcessImage, segments: &[Segment]) -> Vec<(u64, u64)> {
    let vmas = &image.memory.vmas;
    segments
        .iter()
        .filter(|s| {
            vmas.iter()
                .find(|v| v.start <= s.addr && s.addr < v.end)
                .is_some_and(|v| {
                    !matches!(
                        v.backing,
                        Backing::Anonymous | Backing::Heap | Backing::Stack
                    ) || v.shared
                })
        })
        .map(|s| (s.addr, s.len))
        .collect()
}

/// Pages that the kernel or the restorer reads or writes while the destination starts the
/// process (before any pager runs): every thread's rseq area, and the word at every thread's
/// tid address (where restore renames a cached thread id). They must be there before the
/// start.
fn touched_at_start(image: &ProcessImage, map: &PageMap) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut take = |addr: u64, len: u64| {
        let first = addr & !(PAGE_SIZE - 1);
        let last = (addr + len.max(1) - 1) & !(PAGE_SIZE - 1);
        let mut p = first;
        while p <= last {
            if map.offset_of(p).is_some() {
                out.push((p, PAGE_SIZE));
            }
            p += PAGE_SIZE;
        }
    };
    for e in image.executions() {
        if let Some(r) = e.rseq {
            take(r.address, r.length as u64);
        }
        if e.tid_address != 0 {
            take(e.tid_address, 4);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Orders ranges so that those in the stack mapping come first.
fn stack_first(image: &ProcessImage, ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let stack = image
        .memory
        .vmas
        .iter()
        .find(|v| v.backing == Backing::Stack)
        .map(|v| (v.start, v.end));
    let (mut first, rest): (Vec<_>, Vec<_>) = ranges
        .into_iter()
        .partition(|r| stack.is_some_and(|(s, e)| s <= r.0 && r.0 < e));
    // Nearest the top of the stack (the live frames) first.
    first.sort_by_key(|r| std::cmp::Reverse(r.0));
    first.extend(rest);
    first
}

/// Sorted, merged ranges (address, length).
fn merge_runs(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (a, l) in r {
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= a => {
                let end = (last.0 + last.1).max(a + l);
                last.1 = end - last.0;
            }
            _ => out.push((a, l)),
        }
    }
    out
}

/// `a` minus `b` (both lists of ranges).
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let b = merge_runs(b.to_vec());
    let mut out = Vec::new();
    for &(start, len) in a {
        let mut at = start;
        let end = start + len;
        for &(bs, bl) in &b {
            let be = bs + bl;
            if be <= at || bs >= end {
                continue;
            }
            if bs > at {
                out.push((at, bs - at));
            }
            at = at.max(be);
        }
        if at < end {
            out.push((at, end - at));
        }
    }
    out
}

/// `a` ∩ `b`.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let b = merge_runs(b.to_vec());
    let mut out = Vec::new();
    for &(s, l) in a {
        for &(bs, bl) in &b {
            let lo = s.max(bs);
            let hi = (s + l).min(bs + bl);
            if lo < hi {
                out.push((lo, hi - lo));
            }
        }
    }
    merge_runs(out)
}

/// Bytes per read from the process (and per batch of page frames).
const CHUNK: u64 = 1 << 20;

/// Splits ranges into groups of at most `max` bytes.
fn chunks(ranges: &[(u64, u64)], max: u64) -> Vec<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(u64, u64)> = Vec::new();
    let mut fill = 0u64;
    for &(a, l) in ranges {
        let mut at = a;
        let end = a + l;
        while at < end {
            let take = (end - at).min(max - fill);
            cur.push((at, take));
            fill += take;
            at += take;
            if fill == max {
                out.push(std::mem::take(&mut cur));
                fill = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Ranges read, and their bytes back to back.
type Chunk = (Vec<(u64, u64)>, Vec<u8>);

/// Reads `ranges` of `pid` back to back; pages without read permission via /proc/PID/mem.
fn read_chunk(
    pid: Pid,
    ranges: &[(u64, u64)],
    unreadable: &[(u64, u64)],
) -> Result<Chunk, ferry_sys::SysError> {
    let len: u64 = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; len as usize];
    let protected = |a: u64| unreadable.iter().any(|&(s, e)| s <= a && a < e);
    if ranges.iter().any(|r| protected(r.0)) {
        let memfile = mem::ProcMem::open(pid)?;
        let mut at = 0usize;
        for &(a, l) in ranges {
            memfile.read_at(a, &mut buf[at..at + l as usize])?;
            at += l as usize;
        }
    } else {
        let r: Vec<(u64, usize)> = ranges.iter().map(|&(a, l)| (a, l as usize)).collect();
        mem::read(pid, &r, &mut buf)?;
    }
    Ok((ranges.to_vec(), buf))
}

/// Writes every page to the store in stream order, syncing and reporting progress.
#[allow(clippy::too_many_arguments)]
async fn flush_to_store(
    pid: Pid,
    store: &PageStore,
    id: &str,
    image_id: u64,
    all: Vec<(u64, u64)>,
    unreadable: &[(u64, u64)],
    control: &Control,
    total: u64,
    updates: &mpsc::UnboundedSender<Update>,
) -> Result<u64, String> {
    let mut writer = store
        .create(id, image_id)
        .await
        .map_err(|e| e.to_string())?;
    let mut since_sync = 0u64;
    for chunk in chunks(&all, CHUNK) {
        let unreadable = unreadable.to_vec();
        let (_, buf) = tokio::task::spawn_blocking(move || read_chunk(pid, &chunk, &unreadable))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        writer.append(&buf).await.map_err(|e| e.to_string())?;
        since_sync += buf.len() as u64;
        if since_sync >= 16 << 20 {
            writer.sync().await.map_err(|e| e.to_string())?;
            since_sync = 0;
            let upto = writer.written();
            let _ = control
                .lock()
                .await
                .send_msg(&ToDest::FlushProgress { upto })
                .await;
            let _ = updates.send(Update::Progress {
                phase: "flushing to the page store".into(),
                done: upto,
                total,
            });
        }
    }
    let bytes = writer.finish().await.map_err(|e| e.to_string())?;
    let _ = control
        .lock()
        .await
        .send_msg(&ToDest::FlushComplete { bytes })
        .await;
    Ok(bytes)
}

fn postcard_len<T: serde::Serialize>(v: &T) -> u64 {
    postcard::to_stdvec(v).map(|b| b.len() as u64).unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        assert_eq!(
            merge_runs(vec![(10, 5), (0, 10), (20, 1)]),
            vec![(0, 15), (20, 1)]
        );
        assert_eq!(
            subtract(&[(0, 100)], &[(10, 10), (50, 60)]),
            vec![(0, 10), (20, 30)]
        );
        assert_eq!(subtract(&[(0, 10)], &[]), vec![(0, 10)]);
        assert_eq!(
            intersect(&[(0, 100)], &[(50, 100), (10, 5)]),
            vec![(10, 5), (50, 50)]
        );
        let c = chunks(&[(0, 5), (100, 7)], 4);
        assert_eq!(
            c,
            vec![vec![(0, 4)], vec![(4, 1), (100, 3)], vec![(103, 4)]]
        );
    }
}
